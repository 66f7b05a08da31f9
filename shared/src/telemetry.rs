//! Logs and metrics, the same locally and on Lambda.
//!
//! Logs are structured (`tracing`), one line per webhook and per delivery, JSON when asked
//! (always on Lambda). Tokens are never logged; phone numbers are masked unless a connection
//! opts in. Metrics are CloudWatch Embedded Metric Format lines on Lambda (no API calls: the
//! log line is the metric) and in-memory counters locally (served at `GET /metrics`).

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use tracing_subscriber::EnvFilter;

/// The CloudWatch namespace of every callbridge metric.
pub const NAMESPACE: &str = "callbridge";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    #[default]
    Text,
    /// One JSON object per line, for CloudWatch Logs Insights and other log stores.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format `{other}` (text or json)")),
        }
    }
}

/// Installs the global subscriber: logs to stderr (stdout stays free for events and metrics),
/// filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// A phone number fit for a log: its last three digits, the rest masked. Short internal
/// extensions (up to four characters) are not personal data and stay readable.
pub fn mask_number(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() <= 4 {
        return number.to_string();
    }
    let keep = 3;
    let masked = chars.len() - keep;
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < masked && c.is_ascii_alphanumeric() {
                '*'
            } else {
                *c
            }
        })
        .collect()
}

/// The unit of a metric, as CloudWatch names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// One measurement: a name, a value, and the dimensions it is counted by.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement<'a> {
    pub name: &'a str,
    pub value: f64,
    pub unit: Unit,
    pub dimensions: &'a [(&'a str, &'a str)],
}

/// Where measurements go.
pub trait Metrics: Send + Sync {
    fn record(&self, measurement: &Measurement<'_>);
}

/// The EMF line of a measurement at `timestamp_ms`.
pub fn emf_line(measurement: &Measurement<'_>, timestamp_ms: i64) -> String {
    let mut line = Map::new();
    line.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [measurement.dimensions.iter().map(|(k, _)| *k).collect::<Vec<_>>()],
                "Metrics": [{ "Name": measurement.name, "Unit": measurement.unit.as_str() }],
            }],
        }),
    );
    for (key, value) in measurement.dimensions {
        line.insert((*key).into(), Value::String((*value).into()));
    }
    line.insert(measurement.name.into(), json!(measurement.value));
    Value::Object(line).to_string()
}

/// Metrics as EMF lines on standard output, which Lambda sends to CloudWatch Logs.
pub struct EmfStdout;

impl Metrics for EmfStdout {
    fn record(&self, measurement: &Measurement<'_>) {
        println!(
            "{}",
            emf_line(measurement, chrono::Utc::now().timestamp_millis())
        );
    }
}

/// Counters and sums kept in memory (the local server), keyed by name and dimensions.
#[derive(Default)]
pub struct InMemoryMetrics {
    totals: Mutex<BTreeMap<String, f64>>,
}

impl InMemoryMetrics {
    /// `{"webhooks_accepted{provider=telsmart}": 3.0, ...}`
    pub fn snapshot(&self) -> BTreeMap<String, f64> {
        self.totals.lock().expect("metrics lock").clone()
    }
}

impl Metrics for InMemoryMetrics {
    fn record(&self, measurement: &Measurement<'_>) {
        let dimensions: Vec<String> = measurement
            .dimensions
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let key = format!("{}{{{}}}", measurement.name, dimensions.join(","));
        *self
            .totals
            .lock()
            .expect("metrics lock")
            .entry(key)
            .or_default() += measurement.value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_all_but_the_last_digits() {
        assert_eq!(mask_number("+3228992675"), "+*******675");
        assert_eq!(mask_number("200"), "200");
    }

    #[test]
    fn emf_lines_declare_their_metric_and_dimensions() {
        let line = emf_line(
            &Measurement {
                name: "WebhooksAccepted",
                value: 1.0,
                unit: Unit::Count,
                dimensions: &[("Provider", "voys")],
            },
            1_700_000_000_000,
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], NAMESPACE);
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "Provider"
        );
        assert_eq!(v["Provider"], "voys");
        assert_eq!(v["WebhooksAccepted"], 1.0);
    }

    #[test]
    fn in_memory_metrics_add_up_per_dimension() {
        let m = InMemoryMetrics::default();
        for provider in ["voys", "voys", "teltel"] {
            m.record(&Measurement {
                name: "WebhooksAccepted",
                value: 1.0,
                unit: Unit::Count,
                dimensions: &[("Provider", provider)],
            });
        }
        assert_eq!(m.snapshot()["WebhooksAccepted{Provider=voys}"], 2.0);
    }
}
