//! The Lambda host: the handlers of the ingest functions (one per provider) and of the worker,
//! over the AWS adapters ([`crate::adapters::aws`]).
//!
//! - [`webhook_function::Ingest`]: one Lambda per provider behind the HTTP API; a webhook is
//!   checked by [`crate::engine::ingest`] and sent to the SQS FIFO queue, one message group
//!   per call.
//! - [`worker_function::Worker`]: the queue's consumer; each message is applied to its call's
//!   record in DynamoDB and the record's outbox is pushed to the CRM; a message handed back for
//!   another try comes again on the retry schedule ([`redelivery`]).
//!
//! The runtime crates are re-exported: their types are part of this module's interface.

pub mod redelivery;
pub mod webhook_function;
pub mod worker_function;

pub use aws_lambda_events;
pub use lambda_http;
pub use lambda_runtime;
