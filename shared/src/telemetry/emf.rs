//! Metrics as CloudWatch Embedded Metric Format lines on standard output, which Lambda sends to
//! CloudWatch Logs, where they become metrics without a `PutMetricData` call. The lines are
//! written by `metrics_cloudwatch_embedded` at the end of each invocation, before its answer
//! (a container may be frozen after any answer): one line per set of dimensions counted in it,
//! so a batch's webhooks share their lines, in the shape the template's alarms and dashboard
//! read: the namespace, the metric's name and unit, its dimensions. CloudWatch bills these
//! lines as log bytes like any other. Between two flushes the exporter keeps at most 100
//! values of a histogram (`DeliveryLatency`: one per revision the CRM took), far above what a
//! batch of 10 messages delivers.

use super::metrics::{Metrics, NAMESPACE, describe};
use metrics::Recorder;
use metrics_cloudwatch_embedded::{Builder, Collector};
use std::io::Write;
use std::sync::OnceLock;

/// The exporter is the process's global recorder, set once: a Lambda container runs one
/// handler. `None` if another recorder was set first.
static COLLECTOR: OnceLock<Option<&'static Collector>> = OnceLock::new();

pub struct EmfStdout {
    collector: Option<&'static Collector>,
    /// Where the lines go: standard output, which Lambda sends to CloudWatch Logs.
    out: Box<dyn Fn() -> Box<dyn Write> + Send + Sync>,
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
        Self {
            collector,
            out: Box::new(|| Box::new(std::io::stdout().lock())),
        }
    }

    /// Writes its lines with `out` rather than on standard output (a test counts them).
    pub fn writing_to<W: Write + 'static>(
        mut self,
        out: impl Fn() -> W + Send + Sync + 'static,
    ) -> Self {
        self.out = Box::new(move || Box::new(out()));
        self
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
        if let Err(e) = self.flush_into((self.out)()) {
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
