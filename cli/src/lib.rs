//! The `callbridge` command: the local server, scenario replay, a CRM recorder for local runs
//! and tests, and the operator commands.

#[cfg(feature = "aws")]
pub mod connections;
pub mod deliveries;
pub mod recorder;
pub mod replay;
pub mod serve;
