//! The AWS adapters: DynamoDB and SQS behind the [`crate::ports`] traits.
//!
//! - [`sqs_queue::SqsQueue`]: the SQS FIFO queue of webhooks, one message group per call.
//! - [`dynamo_calls::DynamoCalls`]: the calls' records.
//! - [`dynamo_connections::DynamoConnections`]: the connections, read by both functions,
//!   written by `callbridge connections import`.
//! - [`dynamo_users::DynamoUsers`]: the users activated through Telsmart's onboarding, written
//!   by the Telsmart ingest function, read by the worker.
//! - [`sqs_dead_letters::DeadLetters`]: where a call that cannot go on is parked.
//!
//! Every adapter counts what it asks of AWS in a shared [`Usage`], so tests can assert the cost
//! of an event and a benchmark can price it.
//!
//! The SDK crates are re-exported: their types are part of this module's interface.

pub mod dynamo_calls;
pub mod dynamo_connections;
pub mod dynamo_users;
pub mod sdk;
pub mod sqs_dead_letters;
pub mod sqs_queue;
pub mod usage;

pub use aws_config;
pub use aws_sdk_dynamodb;
pub use aws_sdk_sqs;
pub use usage::{Usage, UsageCounts};

/// Reads a setting from `vars` (the process environment on Lambda, where the template sets
/// it), naming it when it is missing.
pub(crate) fn required(
    vars: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> anyhow::Result<String> {
    vars(name)
        .filter(|value| !value.is_empty())
        .ok_or_else(|| anyhow::anyhow!("the environment variable {name} is not set"))
}

/// Reads a number setting, or its default when it is not set.
pub(crate) fn number_or(
    vars: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
) -> anyhow::Result<u64> {
    match vars(name).filter(|value| !value.is_empty()) {
        Some(value) => value
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} must be a whole number, not `{value}`")),
        None => Ok(default),
    }
}

/// The process environment, as the settings read it.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
