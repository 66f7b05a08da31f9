//! [`Telemetry`]: the lines and counts of the pipeline, written once for both hosts. The engine's
//! own steps (a webhook answered, a webhook applied) are reported from the engine
//! (`engine::observe`), which knows their types; this module knows only the domain's and the
//! ports'.

use super::masking::mask_number;
use super::metrics::{
    BREAKER_CLOSED, BREAKER_OPEN_SECONDS, BREAKER_OPENED, DELIVERIES, DELIVERIES_HELD,
    DELIVERIES_PARKED, DELIVERY_LATENCY, Metrics, RETRIES,
};
use crate::domain::connection::Connection;
use crate::domain::record::{CallKey, Delivery};
use crate::ports::DeliveryOutcome;
use metrics::{Label, counter, histogram, with_local_recorder};
use std::sync::Arc;
use std::time::Duration;
use tracing::Level;

/// A number of a connection's call, as its logs may show it.
fn loggable(connection: &Connection, number: Option<&str>) -> Option<String> {
    number.map(|n| {
        if connection.log_numbers {
            n.to_string()
        } else {
            mask_number(n)
        }
    })
}

/// The pipeline's log lines and metrics, for both runtimes. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    metrics: Arc<dyn Metrics>,
}

impl Telemetry {
    pub fn new(metrics: Arc<dyn Metrics>) -> Self {
        Self { metrics }
    }

    pub(crate) fn count(&self, name: &'static str, dimensions: &[(&'static str, &str)]) {
        let labels: Vec<Label> = dimensions
            .iter()
            .map(|(key, value)| Label::new(*key, value.to_string()))
            .collect();
        self.measure(|| counter!(name, labels).increment(1));
    }

    fn measure(&self, measure: impl FnOnce()) {
        match self.metrics.recorder() {
            Some(recorder) => with_local_recorder(recorder, measure),
            None => measure(),
        }
    }

    /// Whether the sink takes the log line `line` makes to write it with the invocation's
    /// counts ([`Metrics::carry`]); only when its level is on, as for any line.
    pub(crate) fn carry_info(
        &self,
        line: &mut dyn FnMut() -> serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        tracing::enabled!(Level::INFO) && self.metrics.carry(line)
    }

    /// Writes what was counted since the last flush, for a sink that writes lines (EMF on
    /// Lambda): once per invocation, at its end, so that a batch's counts share a line per
    /// dimension set rather than taking a line each.
    pub fn flush(&self) {
        self.metrics.flush();
    }

    /// One count per attempt at delivering a revision, `took` long, and one line: at `debug`
    /// when the CRM took it (with the time since its webhook was received, which is also
    /// measured), at `warn` or `error` when it did not.
    pub fn delivery_attempt(
        &self,
        connection: &Connection,
        call: &CallKey,
        delivery: &Delivery,
        outcome: &DeliveryOutcome,
        took: Duration,
    ) {
        let fields = &delivery.body["data"]["fields"];
        let external_number = loggable(connection, fields["externalNumber"].as_str());
        let internal_number = loggable(connection, fields["internalNumber"].as_str());
        let latency_ms = millis(took);
        macro_rules! attempt {
            ($level:expr, $outcome:expr, $($extra:tt)*) => {
                tracing::event!(
                    $level,
                    connection = connection.id,
                    provider = call.provider.as_str(),
                    call_key = call.call_key,
                    resource_id = delivery.resource_id,
                    revision = delivery.revision,
                    event = delivery.event.as_str(),
                    idempotency_key = delivery.idempotency_key,
                    external_number,
                    internal_number,
                    outcome = $outcome,
                    latency_ms,
                    $($extra)*
                )
            };
        }
        let outcome_name = match outcome {
            DeliveryOutcome::Delivered => {
                let since_received_ms = delivery.received_at.map(|received| {
                    let now = chrono::Utc::now().timestamp_micros();
                    (now - received.as_micros()).max(0) as f64 / 1000.0
                });
                attempt!(
                    Level::DEBUG,
                    "delivered",
                    since_received_ms,
                    "delivery attempt"
                );
                if let Some(ms) = since_received_ms {
                    self.measure(|| histogram!(DELIVERY_LATENCY).record(ms));
                }
                "delivered"
            }
            DeliveryOutcome::Retry { reason, .. } => {
                attempt!(Level::WARN, "retry", reason, "delivery attempt");
                "retry"
            }
            DeliveryOutcome::Reject { status, .. } => {
                attempt!(Level::WARN, "refused", status, "delivery attempt");
                "refused"
            }
            DeliveryOutcome::Uncertain { reason } => {
                attempt!(Level::ERROR, "uncertain", reason, "delivery attempt");
                "uncertain"
            }
        };
        self.count(DELIVERIES, &[("Outcome", outcome_name)]);
    }

    /// A delivery (locally) or message (AWS) handed back to be tried again.
    pub fn retried(&self) {
        self.count(RETRIES, &[]);
    }

    /// A delivery set aside until an operator acts on it.
    pub fn parked(&self) {
        self.count(DELIVERIES_PARKED, &[]);
    }

    /// A delivery held back by its destination's open breaker (not an attempt).
    pub fn held(&self) {
        self.count(DELIVERIES_HELD, &[]);
    }

    /// A CRM destination's breaker opened (the log line is the engine's, which knows the
    /// settings).
    pub fn breaker_opened(&self) {
        self.count(BREAKER_OPENED, &[]);
    }

    /// A CRM destination's breaker closed after `open_for`.
    pub fn breaker_closed(&self, open_for: Duration) {
        self.count(BREAKER_CLOSED, &[]);
        self.measure(|| histogram!(BREAKER_OPEN_SECONDS).record(open_for.as_secs_f64()));
    }
}

/// Milliseconds to the microsecond (`4.107`, not `4.106774000000001`: a log line's bytes).
pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::event::Provider;
    use crate::domain::record::CallRecord;
    use crate::domain::resource::MorphEventType;
    use crate::domain::time::Timestamp;
    use crate::telemetry::InMemoryMetrics;
    use crate::telemetry::logs::tests::json_lines;
    use serde_json::{Value, json};

    /// A telemetry counting into memory, and its counts.
    pub(crate) fn telemetry() -> (Arc<InMemoryMetrics>, Telemetry) {
        let metrics = Arc::new(InMemoryMetrics::default());
        (metrics.clone(), Telemetry::new(metrics))
    }

    #[test]
    fn deliveries_are_counted_by_outcome_with_their_latency() {
        let (metrics, telemetry) = telemetry();
        let connection = crate::config::Config::parse(
            r#"
            [[connections]]
            id = "acme"
            provider = "voys"
            token = "acme-token-0123456789"
            connector_id = "conn"
            owner_id = "owner"
            "#,
        )
        .unwrap()
        .connections()
        .unwrap()
        .remove(0);
        let call = CallKey::new("acme", Provider::Voys, "c1");
        let received = Timestamp::from_micros(chrono::Utc::now().timestamp_micros() - 250_000);
        let delivery = Delivery {
            resource_id: CallRecord::new(call.clone()).resource_id,
            revision: 1,
            event: MorphEventType::Created,
            idempotency_key: "k".into(),
            body: json!({"data": {"fields": {"externalNumber": "+3228992675"}}}),
            closed: None,
            received_at: Some(received.unwrap()),
            attempted: false,
            waiting: None,
        };
        let took = Duration::from_millis(20);
        let attempt = |outcome: &DeliveryOutcome| {
            json_lines(|| telemetry.delivery_attempt(&connection, &call, &delivery, outcome, took))
        };
        // At the default level a delivery the CRM took writes no line: its count and latency
        // are metrics. One it did not take writes one.
        assert_eq!(attempt(&DeliveryOutcome::Delivered), Vec::<Value>::new());
        let lines = attempt(&DeliveryOutcome::Retry {
            reason: "HTTP 503".into(),
            retry_after: None,
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["message"], "delivery attempt");
        assert_eq!(
            (&line["connection"], &line["provider"], &line["call_key"]),
            (&json!("acme"), &json!("voys"), &json!("c1"))
        );
        assert_eq!(line["resource_id"], json!(delivery.resource_id));
        assert_eq!(
            (&line["revision"], &line["outcome"], &line["reason"]),
            (&json!(1), &json!("retry"), &json!("HTTP 503"))
        );
        assert!(line["latency_ms"].as_f64().unwrap() >= 20.0, "{line}");
        assert_eq!(line["external_number"], "+*******675");
        for outcome in [
            DeliveryOutcome::Reject {
                status: 422,
                body: String::new(),
            },
            DeliveryOutcome::Delivered,
        ] {
            telemetry.delivery_attempt(&connection, &call, &delivery, &outcome, took);
        }
        telemetry.retried();
        telemetry.parked();
        assert_eq!(metrics.total(DELIVERIES, &[("Outcome", "delivered")]), 2.0);
        for outcome in ["retry", "refused"] {
            assert_eq!(metrics.total(DELIVERIES, &[("Outcome", outcome)]), 1.0);
        }
        let latency = metrics.snapshot()[DELIVERY_LATENCY];
        assert_eq!(latency.count, 2);
        assert!(latency.sum >= 250.0, "{latency:?}");
        assert_eq!(metrics.total(RETRIES, &[]), 1.0);
        assert_eq!(metrics.total(DELIVERIES_PARKED, &[]), 1.0);
    }
}
