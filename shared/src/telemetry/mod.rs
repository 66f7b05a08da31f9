//! Logs and metrics, the same locally and on Lambda.
//!
//! Logs are structured (`tracing`), JSON when asked (always on Lambda). [`Telemetry`] writes the
//! lines and counts of the pipeline once for both runtimes: the local server and the Lambda
//! handlers call it at the same points, so an operator reads the same fields everywhere. At the
//! default level (`info`), one line per webhook (`webhook accepted`, `webhook refused`) and one
//! per delivery attempt the CRM did not take (`delivery attempt`), each with `connection`,
//! `provider`, `call_key`, `resource_id`, the `revision` where there is one, `outcome` and
//! `latency_ms`; the deliveries that went through are counted, and logged at `debug`. On
//! Lambda every byte of it is billed (BENCHMARKS.md, cost). Tokens are never logged; phone
//! numbers are masked unless a connection opts in (`log_numbers`).
//!
//! Metrics are counted through the `metrics` crate: CloudWatch Embedded Metric Format lines on
//! Lambda (no API calls: the log line is the metric), the Prometheus text format locally
//! (`GET /metrics`):
//!
//! | metric | dimensions | counts |
//! |---|---|---|
//! | `WebhooksAccepted` | `Provider` | webhooks queued (202) |
//! | `WebhooksRejected` | `Provider`, `Reason` | webhooks refused, by their `error` code |
//! | `EventsApplied` | `Provider` | queued webhooks that added an event to their call |
//! | `EventsDeduplicated` | `Provider` | queued webhooks that were repeats and changed nothing |
//! | `Deliveries` | `Outcome` (`delivered`, `retry`, `refused`) | attempts to deliver to the CRM |
//! | `DeliveryLatency` | | milliseconds from the webhook's receipt to the CRM taking its revision |
//! | `Retries` | | deliveries (locally) or messages (AWS) handed back to be tried again |
//! | `DeliveriesParked` | | deliveries the CRM refused or that ran out of attempts (AWS: refused, each time their message comes) |
//!
//! One file per job: [`logs`] (the subscriber), [`masking`] (numbers fit for a log), [`metrics`]
//! (names, units, the in-memory sink of the tests), [`emf`] (Lambda), [`prometheus`] (the local
//! server, feature `local`), [`facade`] ([`Telemetry`]). Nothing here imports from
//! the engine or the hosts: the engine's own steps are reported by `engine::observe`.

#[cfg(feature = "aws")]
pub mod emf;
pub mod facade;
pub mod logs;
pub mod masking;
pub mod metrics;
#[cfg(feature = "local")]
pub mod prometheus;

#[cfg(feature = "aws")]
pub use emf::EmfStdout;
pub use facade::Telemetry;
pub(crate) use facade::millis;
pub use logs::{LogFormat, init_logging, init_logging_to};
pub use masking::{mask_number, mask_numbers_in};
pub use metrics::*;
#[cfg(feature = "local")]
pub use prometheus::PrometheusMetrics;
