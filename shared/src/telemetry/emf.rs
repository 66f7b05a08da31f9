//! Metrics as CloudWatch Embedded Metric Format lines on standard output, which Lambda sends to
//! CloudWatch Logs, where they become metrics without a `PutMetricData` call. The lines are
//! written by `metrics_cloudwatch_embedded`, one per measurement as it is counted (a container
//! may be frozen after any answer), in the shape the template's alarms and dashboard read:
//! the namespace, the metric's name and unit, its dimensions.

use super::metrics::{Metrics, NAMESPACE, describe};
use metrics::Recorder;
use metrics_cloudwatch_embedded::{Builder, Collector};
use std::sync::OnceLock;

/// The exporter is the process's global recorder, set once: a Lambda container runs one
/// handler. `None` if another recorder was set first.
static COLLECTOR: OnceLock<Option<&'static Collector>> = OnceLock::new();

pub struct EmfStdout {
    collector: Option<&'static Collector>,
}

impl EmfStdout {
    /// In `namespace`, unless an earlier one in this process named another.
    pub fn new(namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        let collector = *COLLECTOR.get_or_init(|| {
            match Builder::new().cloudwatch_namespace(namespace).init() {
                Ok(collector) => {
                    metrics::with_recorder(describe);
                    Some(collector)
                }
                Err(e) => {
                    tracing::error!(error = %e, "no CloudWatch metrics: a recorder was set before");
                    None
                }
            }
        });
        Self { collector }
    }

    /// In the namespace of `METRICS_NAMESPACE`, or [`NAMESPACE`].
    pub fn from_env() -> Self {
        Self::new(
            std::env::var("METRICS_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| NAMESPACE.into()),
        )
    }

    /// Writes what was counted since the last time into `writer`.
    pub fn flush_into(&self, writer: impl std::io::Write) -> std::io::Result<()> {
        match self.collector {
            Some(collector) => collector.flush(writer),
            None => Ok(()),
        }
    }
}

impl Metrics for EmfStdout {
    fn recorder(&self) -> Option<&dyn Recorder> {
        None
    }

    fn flush(&self) {
        if let Err(e) = self.flush_into(std::io::stdout().lock()) {
            tracing::warn!(error = %e, "metrics not written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::WEBHOOKS_ACCEPTED;
    use serde_json::{Value, json};

    #[test]
    fn a_line_names_its_namespace_metric_unit_and_dimensions() {
        let emf = EmfStdout::new("callbridge-test");
        metrics::counter!(WEBHOOKS_ACCEPTED, "Provider" => "emf-test").increment(1);
        let mut written = Vec::new();
        emf.flush_into(&mut written).unwrap();
        let written = String::from_utf8(written).unwrap();
        let line = written
            .lines()
            .find(|line| line.contains("emf-test"))
            .unwrap_or_else(|| panic!("no line of the count in {written:?}"));
        let mut line: Value = serde_json::from_str(line).unwrap();
        assert!(line["_aws"]["Timestamp"].as_u64().unwrap() > 1_700_000_000_000);
        line["_aws"]["Timestamp"] = json!(0);
        // The specification's shape: what the template's alarms and dashboard select by.
        assert_eq!(
            line,
            json!({
                "_aws": {
                    "Timestamp": 0,
                    "CloudWatchMetrics": [{
                        "Namespace": "callbridge-test",
                        "Dimensions": [["Provider"]],
                        "Metrics": [{"Name": "WebhooksAccepted", "Unit": "Count"}],
                    }],
                },
                "Provider": "emf-test",
                "WebhooksAccepted": 1,
            })
        );
    }
}
