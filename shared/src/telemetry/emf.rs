//! Metrics as CloudWatch Embedded Metric Format lines on standard output, which Lambda sends to
//! CloudWatch Logs, where they become metrics without a `PutMetricData` call. The lines are
//! written by `metrics_cloudwatch_embedded` at the end of each invocation, before its answer
//! (a container may be frozen after any answer), so a batch's webhooks share them, in the shape
//! the template's alarms and dashboard read: the namespace, the metric's name and unit, its
//! dimensions. The exporter writes a document per set of dimensions counted; CloudWatch bills
//! them as log bytes like any other, so they are joined into as few lines as their dimensions
//! allow ([`joined`]): a worker's batch that applied an event and delivered its revision
//! writes one line, not three. The ingest's `webhook accepted` line is carried into its
//! metric line ([`Metrics::carry`]): a webhook's one line is also its count. Between two flushes the exporter keeps at most 100 values of a
//! histogram (`DeliveryLatency`: one per revision the CRM took), far above what a batch of 10
//! messages delivers.

use super::metrics::{Metrics, NAMESPACE, describe};
use metrics::Recorder;
use metrics_cloudwatch_embedded::{Builder, Collector};
use serde_json::{Map, Value};
use std::io::Write;
use std::sync::{Mutex, OnceLock};

/// The exporter is the process's global recorder, set once: a Lambda container runs one
/// handler. `None` if another recorder was set first.
static COLLECTOR: OnceLock<Option<&'static Collector>> = OnceLock::new();

pub struct EmfStdout {
    collector: Option<&'static Collector>,
    /// Where the lines go: standard output, which Lambda sends to CloudWatch Logs.
    out: Box<dyn Fn() -> Box<dyn Write> + Send + Sync>,
    /// Log lines to write with the next flush, in its metric line.
    carried: Mutex<Vec<Map<String, Value>>>,
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
            carried: Mutex::default(),
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
    pub fn flush_into(&self, mut writer: impl std::io::Write) -> std::io::Result<()> {
        let Some(collector) = self.collector else {
            return Ok(());
        };
        let mut lines = Vec::new();
        collector.flush(&mut lines)?;
        let carried = std::mem::take(&mut *self.carried.lock().unwrap_or_else(|e| e.into_inner()));
        for document in joined(&String::from_utf8_lossy(&lines), carried) {
            writeln!(writer, "{document}")?;
        }
        Ok(())
    }
}

/// EMF documents joined where they can share a line, and the `carried` log lines joined into
/// them: one document holds several metric directives (`_aws.CloudWatchMetrics`), each naming
/// its own dimensions, and any other members, but one value per member, so documents whose
/// members disagree (`Outcome` `delivered` and `retry`, two providers) stay apart. A document
/// line starts with `_aws`, as the exporter writes it; a line that is not an EMF document
/// passes as it is, and a carried line that agrees with no document is written alone.
fn joined(lines: &str, carried: Vec<Map<String, Value>>) -> Vec<String> {
    let mut documents: Vec<Map<String, Value>> = Vec::new();
    let mut others = Vec::new();
    for line in lines.lines().filter(|line| !line.is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(document)) if is_emf(&document) => join(&mut documents, document),
            _ => others.push(line.to_owned()),
        }
    }
    for line in carried {
        join(&mut documents, line);
    }
    documents
        .into_iter()
        .map(|mut document| {
            let Some(aws) = document.remove("_aws") else {
                return Value::Object(document).to_string();
            };
            let rest = Value::Object(document).to_string();
            let rest = rest.trim_start_matches('{').trim_end_matches('}');
            let comma = if rest.is_empty() { "" } else { "," };
            format!("{{\"_aws\":{aws}{comma}{rest}}}")
        })
        .chain(others)
        .collect()
}

fn is_emf(document: &Map<String, Value>) -> bool {
    document
        .get("_aws")
        .and_then(|aws| aws.get("CloudWatchMetrics"))
        .is_some_and(Value::is_array)
}

/// Adds `document` to the first of `documents` it agrees with, or after them.
fn join(documents: &mut Vec<Map<String, Value>>, mut document: Map<String, Value>) {
    let agrees = |kept: &Map<String, Value>| {
        document
            .iter()
            .all(|(name, value)| name == "_aws" || kept.get(name).is_none_or(|v| v == value))
    };
    let Some(kept) = documents.iter_mut().find(|kept| agrees(kept)) else {
        documents.push(document);
        return;
    };
    match (kept.get_mut("_aws"), document.remove("_aws")) {
        (Some(aws), Some(added)) => {
            if let (Some(Value::Array(directives)), Some(Value::Array(more))) = (
                aws.get_mut("CloudWatchMetrics"),
                added.get("CloudWatchMetrics"),
            ) {
                directives.extend(more.iter().cloned());
            }
        }
        (None, Some(added)) => {
            kept.insert("_aws".into(), added);
        }
        (_, None) => {}
    }
    kept.extend(document);
}

impl Metrics for EmfStdout {
    fn recorder(&self) -> Option<&dyn Recorder> {
        None
    }

    fn carry(&self, line: &mut dyn FnMut() -> Map<String, Value>) -> bool {
        if self.collector.is_none() {
            return false;
        }
        let line = line();
        self.carried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
        true
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
    use serde_json::json;

    fn document(dimensions: &[(&str, &str)], metric: &str, value: Value) -> String {
        let mut document = json!({
            "_aws": {
                "Timestamp": 1,
                "CloudWatchMetrics": [{
                    "Namespace": "callbridge",
                    "Dimensions": [dimensions.iter().map(|(name, _)| *name).collect::<Vec<_>>()],
                    "Metrics": [{"Name": metric, "Unit": "Count"}],
                }],
            },
        });
        for (name, dimension) in dimensions {
            document[*name] = json!(dimension);
        }
        document[metric] = value;
        document.to_string()
    }

    #[test]
    fn documents_that_agree_share_a_line_and_those_that_disagree_do_not() {
        let lines = [
            document(&[("Provider", "voys")], "EventsApplied", json!(2)),
            document(&[("Outcome", "delivered")], "Deliveries", json!(2)),
            document(&[], "DeliveryLatency", json!([12.5, 30.0])),
            document(&[("Outcome", "retry")], "Deliveries", json!(1)),
        ]
        .join("\n");
        let joined = joined(&lines, Vec::new());
        assert_eq!(joined.len(), 2, "{joined:#?}");
        assert!(joined.iter().all(|line| line.starts_with("{\"_aws\":")));
        let first: Value = serde_json::from_str(&joined[0]).unwrap();
        let directives = first["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        let names: Vec<&Value> = directives
            .iter()
            .map(|d| &d["Metrics"][0]["Name"])
            .collect();
        assert_eq!(names, ["EventsApplied", "Deliveries", "DeliveryLatency"]);
        assert_eq!(directives[2]["Dimensions"], json!([[]]));
        assert_eq!(
            (&first["Provider"], &first["Outcome"], &first["Deliveries"]),
            (&json!("voys"), &json!("delivered"), &json!(2))
        );
        assert_eq!(first["DeliveryLatency"], json!([12.5, 30.0]));
        let second: Value = serde_json::from_str(&joined[1]).unwrap();
        assert_eq!(second["Outcome"], "retry");
        assert_eq!(
            second["_aws"]["CloudWatchMetrics"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

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

    #[test]
    fn a_carried_log_line_is_written_in_the_metric_line() {
        let lines = document(&[("Provider", "voys")], "WebhooksAccepted", json!(1));
        let Value::Object(carried) =
            json!({"level": "INFO", "message": "webhook accepted", "provider": "voys"})
        else {
            unreachable!()
        };
        let joined_lines = joined(&lines, vec![carried.clone()]);
        assert_eq!(joined_lines.len(), 1, "{joined_lines:#?}");
        assert!(
            joined_lines[0].starts_with("{\"_aws\":"),
            "{joined_lines:?}"
        );
        let line: Value = serde_json::from_str(&joined_lines[0]).unwrap();
        assert_eq!(line["message"], "webhook accepted");
        assert_eq!(
            (&line["Provider"], &line["WebhooksAccepted"]),
            (&json!("voys"), &json!(1))
        );
        // With no metric line to go into, it is written alone.
        assert_eq!(
            joined("", vec![carried.clone()]),
            [Value::Object(carried).to_string()]
        );
    }
}
