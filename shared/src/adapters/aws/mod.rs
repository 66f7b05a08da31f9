//! The AWS adapters: DynamoDB and SQS behind the [`crate::ports`] traits.
//!
//! - [`sqs_queue::SqsQueue`]: the SQS FIFO queue of webhooks, one message group per call.
//! - [`dynamo_calls::DynamoCalls`]: the calls' records.
//! - [`dynamo_breakers::DynamoBreakers`]: the CRM destinations' breakers, shared by the
//!   workers, in the calls table.
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

pub mod dynamo_breakers;
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
