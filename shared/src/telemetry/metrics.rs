//! The metrics' names and units, where counts go ([`Metrics`]), and an in-memory sink for tests
//! and tools ([`InMemoryMetrics`]). Counting goes through the `metrics` facade; the sinks are its
//! recorders: CloudWatch's Embedded Metric Format on Lambda ([`super::emf`]), the Prometheus text
//! of the local server's `GET /metrics` ([`super::prometheus`]).

use metrics::{Recorder, Unit, describe_counter, describe_histogram, with_local_recorder};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The CloudWatch namespace of the metrics when `METRICS_NAMESPACE` does not name another (the
/// template sets it to the stack's name prefix, so two stacks in one account stay apart).
pub const NAMESPACE: &str = "callbridge";

pub const WEBHOOKS_ACCEPTED: &str = "WebhooksAccepted";
pub const WEBHOOKS_REJECTED: &str = "WebhooksRejected";
pub const EVENTS_APPLIED: &str = "EventsApplied";
pub const EVENTS_DEDUPLICATED: &str = "EventsDeduplicated";
pub const DELIVERIES: &str = "Deliveries";
pub const DELIVERY_LATENCY: &str = "DeliveryLatency";
pub const RETRIES: &str = "Retries";
pub const DELIVERIES_PARKED: &str = "DeliveriesParked";
pub const DELIVERIES_HELD: &str = "DeliveriesHeld";
pub const BREAKER_OPENED: &str = "CrmBreakerOpened";
pub const BREAKER_CLOSED: &str = "CrmBreakerClosed";
pub const BREAKER_OPEN_SECONDS: &str = "CrmBreakerOpenSeconds";

/// The `Outcome`s of [`DELIVERIES`].
pub const DELIVERY_OUTCOMES: [&str; 4] = ["delivered", "retry", "refused", "uncertain"];

/// Where counts go: a recorder of the `metrics` crate.
pub trait Metrics: Send + Sync {
    /// The recorder counts go to; `None`: the process's global one.
    fn recorder(&self) -> Option<&dyn Recorder>;

    /// Called at the end of each invocation ([`super::Telemetry::flush`]), so that a sink
    /// writing lines writes what the invocation counted before the container may be frozen.
    fn flush(&self) {}

    /// Takes a log line (its members, made by `line`) to write it with the invocation's
    /// counts, when this sink writes lines (EMF on Lambda): a line and a count in one, billed
    /// once. `false`: the caller logs it.
    fn carry(&self, _line: &mut dyn FnMut() -> Map<String, Value>) -> bool {
        false
    }
}

/// Tells `recorder` each metric's unit and meaning (CloudWatch's `Unit`, Prometheus' `HELP`).
pub fn describe(recorder: &dyn Recorder) {
    with_local_recorder(recorder, || {
        describe_counter!(WEBHOOKS_ACCEPTED, Unit::Count, "webhooks queued (202)");
        describe_counter!(
            WEBHOOKS_REJECTED,
            Unit::Count,
            "webhooks refused, by their error code"
        );
        describe_counter!(
            EVENTS_APPLIED,
            Unit::Count,
            "queued webhooks that added an event to their call"
        );
        describe_counter!(
            EVENTS_DEDUPLICATED,
            Unit::Count,
            "queued webhooks that were repeats and changed nothing"
        );
        describe_counter!(DELIVERIES, Unit::Count, "attempts to deliver to the CRM");
        describe_histogram!(
            DELIVERY_LATENCY,
            Unit::Milliseconds,
            "milliseconds from the webhook's receipt to the CRM taking its revision"
        );
        describe_counter!(
            RETRIES,
            Unit::Count,
            "deliveries (locally) or messages (AWS) handed back to be tried again"
        );
        describe_counter!(
            DELIVERIES_PARKED,
            Unit::Count,
            "deliveries set aside until an operator acts on them"
        );
        describe_counter!(
            DELIVERIES_HELD,
            Unit::Count,
            "deliveries held back while their CRM destination's breaker is open"
        );
        describe_counter!(
            BREAKER_OPENED,
            Unit::Count,
            "CRM destinations whose breaker opened (the CRM failing call after call)"
        );
        describe_counter!(
            BREAKER_CLOSED,
            Unit::Count,
            "CRM destinations whose breaker closed (a probe went through)"
        );
        describe_histogram!(
            BREAKER_OPEN_SECONDS,
            Unit::Seconds,
            "how long a CRM destination's breaker stayed open"
        );
    });
}

/// What one series (a name and its dimensions) added up to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Series {
    /// Measurements recorded (a counter's total).
    pub count: u64,
    pub sum: f64,
}

/// `Name{Dimension=value,...}`, or `Name` without dimensions.
pub fn series_key(name: &str, dimensions: &[(&str, &str)]) -> String {
    if dimensions.is_empty() {
        return name.to_string();
    }
    let dimensions: Vec<String> = dimensions.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", dimensions.join(","))
}

/// Counts kept in memory, by `metrics-util`'s debugging recorder: what a test reads back.
pub struct InMemoryMetrics {
    recorder: DebuggingRecorder,
    snapshotter: Snapshotter,
    /// A snapshot takes the counts out of the recorder: they add up here.
    totals: Mutex<BTreeMap<String, Series>>,
}

impl Default for InMemoryMetrics {
    fn default() -> Self {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        Self {
            recorder,
            snapshotter,
            totals: Mutex::default(),
        }
    }
}

impl InMemoryMetrics {
    /// Every series so far, by [`series_key`].
    pub fn snapshot(&self) -> BTreeMap<String, Series> {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (_, key) = key.into_parts();
            let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            let (count, sum) = match value {
                DebugValue::Counter(count) => (count, count as f64),
                DebugValue::Histogram(values) => (
                    values.len() as u64,
                    values.iter().map(|v| v.into_inner()).sum(),
                ),
                DebugValue::Gauge(_) => continue,
            };
            let total = totals
                .entry(series_key(key.name(), &labels))
                .or_insert(Series { count: 0, sum: 0.0 });
            total.count += count;
            total.sum += sum;
        }
        totals.clone()
    }

    /// The total of one counter (0 when nothing was counted).
    pub fn total(&self, name: &str, dimensions: &[(&str, &str)]) -> f64 {
        self.snapshot()
            .get(&series_key(name, dimensions))
            .map_or(0.0, |s| s.sum)
    }
}

impl Metrics for InMemoryMetrics {
    fn recorder(&self) -> Option<&dyn Recorder> {
        Some(&self.recorder)
    }
}
