//! callbridge: telephony webhooks in, Morph `telephonyCall` events out.
//!
//! Data flows one way, and each step has one home:
//!
//! 1. [`pipeline::ingest`]: an HTTP request is authenticated against its [`domain::connection`],
//!    parsed by its provider's module in [`domain::providers`] into one provider-neutral
//!    [`domain::event::CallEvent`], and put on a [`ports::Queue`].
//! 2. [`pipeline::worker`]: a queued event is added to its call's [`domain::record::CallRecord`]
//!    (kept in a [`ports::CallStore`]); the record folds its events ([`domain::fold`]), maps the
//!    state to a `telephonyCall` resource ([`domain::resource`]) and, when the resource changed,
//!    queues one Morph event in its outbox.
//! 3. [`pipeline::delivery`]: the outbox is pushed to the CRM through a [`ports::Crm`], in order
//!    per call.
//!
//! [`domain`] is pure (no I/O, no clock); [`adapters`] hold the I/O. The same pipeline runs in the
//! local server, in AWS Lambda (feature `aws`) and in the tests.

pub mod adapters;
#[cfg(feature = "aws")]
pub mod aws;
pub mod config;
pub mod domain;
pub mod local;
pub mod pipeline;
pub mod ports;
pub mod telemetry;
