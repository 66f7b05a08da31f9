//! Checking the outcome of a `callbridge` command run as an operator would run it.

use std::process::Output;

/// The standard output of a command that had to succeed.
pub fn succeeded(args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "callbridge {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// The standard error of a command that had to fail.
pub fn failed(args: &[&str], output: Output) -> String {
    assert!(!output.status.success(), "callbridge {args:?} succeeded");
    String::from_utf8(output.stderr).expect("UTF-8")
}
