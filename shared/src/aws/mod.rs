//! The AWS side: DynamoDB and SQS behind the [`crate::ports`] traits, and the Lambda handlers
//! that run the [`crate::pipeline`] steps over them.
//!
//! - [`ingest::Ingest`]: one Lambda per provider behind the HTTP API; a webhook is checked by
//!   [`crate::pipeline::ingest`] and sent to the SQS FIFO queue ([`queue::SqsQueue`]), one
//!   message group per call.
//! - [`worker::Worker`]: the queue's consumer; each message is applied to its call's record in
//!   DynamoDB ([`calls::DynamoCalls`]) and the record's outbox is pushed to the CRM; a message
//!   handed back for another try comes again on the retry schedule ([`redelivery`]).
//! - [`connections::DynamoConnections`]: the connections, read by both, written by
//!   `callbridge connections import`.
//! - [`users::DynamoUsers`]: the users activated through Telsmart's onboarding, written by
//!   the Telsmart ingest function, read by the worker.
//!
//! Every adapter counts what it asks of AWS in a shared [`Usage`], so tests can assert the cost
//! of an event and a benchmark can price it.
//!
//! The SDK crates are re-exported: their types are part of this module's interface.

pub mod calls;
pub mod connections;
pub mod dead_letters;
pub mod ingest;
pub mod queue;
pub mod redelivery;
pub mod sdk;
pub mod usage;
pub mod users;
pub mod worker;

pub use aws_config;
pub use aws_lambda_events;
pub use aws_sdk_dynamodb;
pub use aws_sdk_sqs;
pub use lambda_http;
pub use lambda_runtime;
pub use usage::{Usage, UsageCounts};

/// Reads a setting from `vars` (the process environment on Lambda, where the template sets
/// it), naming it when it is missing.
fn required(vars: &impl Fn(&str) -> Option<String>, name: &str) -> anyhow::Result<String> {
    vars(name)
        .filter(|value| !value.is_empty())
        .ok_or_else(|| anyhow::anyhow!("the environment variable {name} is not set"))
}

/// Reads a number setting, or its default when it is not set.
fn number_or(
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
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
