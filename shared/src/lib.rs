//! callbridge: telephony webhooks in, Morph `telephonyCall` events out.
//!
//! Data flows one way, and each step has one home:
//!
//! 1. [`engine::ingest`]: an HTTP request is authenticated against its [`domain::connection`],
//!    parsed by its provider's module in [`domain::providers`] into one provider-neutral
//!    [`domain::event::CallEvent`], and put on a [`ports::Queue`].
//! 2. [`engine::apply`]: a queued event is added to its call's [`domain::record::CallRecord`]
//!    (kept in a [`ports::CallStore`]); the record folds its events ([`domain::fold`]), maps the
//!    state to a `telephonyCall` resource ([`domain::resource`]) and, when the resource changed,
//!    queues one Morph event in its outbox.
//! 3. [`engine::deliver`]: the outbox is pushed to the CRM through a [`ports::Crm`], in order
//!    per call.
//!
//! The layers, each importing only from those listed before it:
//!
//! - [`domain`]: pure (no I/O, no clock, no AWS or HTTP types).
//! - [`ports`]: the small traits the engine talks to (store, queue, CRM, clock, ...).
//! - [`telemetry`]: logs and metrics, the same for both hosts.
//! - [`engine`]: the steps above, written once over the ports, and what a failure means
//!   ([`engine::failure`]).
//! - [`adapters`]: the I/O behind the ports (SQLite, DynamoDB and SQS, the CRM over HTTP).
//! - [`config`]: one typed configuration for both hosts, read from the file or the environment.
//! - [`http`]: the webhooks' front door, one axum router over the ports that both hosts mount.
//! - [`hosts`]: what schedules the engine: `hosts::local` (the local server's tasks, feature
//!   `local`) and `hosts::lambda` (the Lambda handlers, feature `aws`).

pub mod adapters;
pub mod config;
pub mod domain;
pub mod engine;
pub mod hosts;
pub mod http;
pub mod ports;
pub mod telemetry;
