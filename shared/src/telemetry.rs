//! Logs and metrics, the same locally and on Lambda.
//!
//! Logs are structured (`tracing`), JSON when asked (always on Lambda). [`Telemetry`] writes the
//! lines and counts of the pipeline once for both runtimes: the local server and the Lambda
//! handlers call it at the same points, so an operator reads the same fields everywhere. One
//! line per webhook (`webhook accepted`, `webhook refused`) and one per delivery attempt
//! (`delivery attempt`), each with `connection`, `provider`, `call_key`, `resource_id`, the
//! `revision` where there is one, `outcome` and `latency_ms`. Tokens are never logged; phone
//! numbers are masked unless a connection opts in (`log_numbers`).
//!
//! Metrics are CloudWatch Embedded Metric Format lines on Lambda (no API calls: the log line is
//! the metric) and in-memory counters locally (served at `GET /metrics`):
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

use crate::domain::connection::Connection;
use crate::domain::event::Provider;
use crate::domain::record::{CallKey, Delivery};
use crate::engine::apply::Applied;
use crate::engine::ingest::{Accepted, Rejection};
use crate::ports::{DeliveryOutcome, QueuedWebhook};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Level;
use tracing_subscriber::EnvFilter;

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

/// Shortest run of digits taken for a phone number in free text: anything shorter (a status,
/// a size, an extension) stays readable.
const MIN_NUMBER_DIGITS: usize = 6;

/// What may stand between the digits of one phone number in free text (`+32 470 11 12 22`,
/// `+32 (0)470/11.12.22`). Not `-`: dates and times are written with it, and stay readable.
fn joins_digits(c: char) -> bool {
    matches!(c, ' ' | '\u{a0}' | '.' | '/' | '(' | ')')
}

/// Free text (a refusal's message, which may quote the payload) with every phone number
/// masked as [`mask_number`] masks one: a run of [`MIN_NUMBER_DIGITS`] or more digits, counted
/// across the spaces, dots, slashes and brackets numbers are written with (one or two of them
/// at a time), all but the last three digits masked.
pub fn mask_numbers_in(text: &str) -> String {
    const KEEP: usize = 3;
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let mut end = i;
        loop {
            while end < chars.len() && chars[end].is_ascii_digit() {
                end += 1;
            }
            let gap = chars[end..]
                .iter()
                .take(2)
                .take_while(|c| joins_digits(**c))
                .count();
            if gap > 0 && chars.get(end + gap).is_some_and(char::is_ascii_digit) {
                end += gap;
            } else {
                break;
            }
        }
        let number = &chars[i..end];
        let digits = number.iter().filter(|c| c.is_ascii_digit()).count();
        let mut seen = 0;
        for c in number {
            if c.is_ascii_digit() {
                seen += 1;
                let masked = digits >= MIN_NUMBER_DIGITS && seen <= digits - KEEP;
                out.push(if masked { '*' } else { *c });
            } else {
                out.push(*c);
            }
        }
        i = end;
    }
    out
}

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

/// The EMF line of a measurement in `namespace` at `timestamp_ms`.
pub fn emf_line(measurement: &Measurement<'_>, namespace: &str, timestamp_ms: i64) -> String {
    let mut line = Map::new();
    line.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
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

/// Metrics as EMF lines on standard output, which Lambda sends to CloudWatch Logs, where they
/// become metrics without a `PutMetricData` call.
pub struct EmfStdout {
    namespace: String,
}

impl EmfStdout {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
        }
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
}

impl Metrics for EmfStdout {
    fn record(&self, measurement: &Measurement<'_>) {
        println!(
            "{}",
            emf_line(
                measurement,
                &self.namespace,
                chrono::Utc::now().timestamp_millis()
            )
        );
    }
}

/// What one series (a name and its dimensions) added up to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Series {
    pub unit: Unit,
    /// Measurements recorded.
    pub count: u64,
    pub sum: f64,
    pub max: f64,
}

/// Counters and timings kept in memory (the local server), keyed by name and dimensions.
#[derive(Default)]
pub struct InMemoryMetrics {
    series: Mutex<BTreeMap<String, Series>>,
}

/// `Name{Dimension=value,...}`, or `Name` without dimensions.
pub fn series_key(name: &str, dimensions: &[(&str, &str)]) -> String {
    if dimensions.is_empty() {
        return name.to_string();
    }
    let dimensions: Vec<String> = dimensions.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", dimensions.join(","))
}

impl InMemoryMetrics {
    /// Every series so far, by [`series_key`].
    pub fn snapshot(&self) -> BTreeMap<String, Series> {
        self.series.lock().expect("metrics lock").clone()
    }

    /// The total of one counter (0 when nothing was counted).
    pub fn total(&self, name: &str, dimensions: &[(&str, &str)]) -> f64 {
        self.snapshot()
            .get(&series_key(name, dimensions))
            .map_or(0.0, |s| s.sum)
    }

    /// What `GET /metrics` answers: `{"WebhooksAccepted{Provider=voys}": 3, ...}`, timings as
    /// `{"count": 3, "sum": 120.0, "max": 60.0}` (milliseconds).
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.snapshot()
                .into_iter()
                .map(|(key, series)| {
                    let value = match series.unit {
                        Unit::Count => json!(series.sum),
                        Unit::Milliseconds => {
                            json!({ "count": series.count, "sum": series.sum, "max": series.max })
                        }
                    };
                    (key, value)
                })
                .collect(),
        )
    }
}

impl Metrics for InMemoryMetrics {
    fn record(&self, measurement: &Measurement<'_>) {
        let key = series_key(measurement.name, measurement.dimensions);
        let mut series = self.series.lock().expect("metrics lock");
        let series = series.entry(key).or_insert(Series {
            unit: measurement.unit,
            count: 0,
            sum: 0.0,
            max: f64::MIN,
        });
        series.count += 1;
        series.sum += measurement.value;
        series.max = series.max.max(measurement.value);
    }
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

    fn count(&self, name: &str, dimensions: &[(&str, &str)]) {
        self.metrics.record(&Measurement {
            name,
            value: 1.0,
            unit: Unit::Count,
            dimensions,
        });
    }

    /// One line and one count per webhook, accepted or refused, as the HTTP stack got it:
    /// `provider` and `connection` are those of the URL, `latency` the time to answer.
    pub fn webhook(
        &self,
        provider: &str,
        connection: &str,
        answer: Result<&Accepted, &Rejection>,
        latency: Duration,
    ) {
        // The URL's provider is anyone's to write: only known ones become a dimension.
        let provider = provider
            .parse::<Provider>()
            .map_or("unknown", Provider::as_str);
        let latency_ms = millis(latency);
        match answer {
            Ok(accepted) => {
                tracing::info!(
                    connection,
                    provider,
                    call_key = accepted.call_key,
                    resource_id = accepted.resource_id,
                    event_id = accepted.event_id,
                    outcome = "accepted",
                    status = 202,
                    latency_ms,
                    "webhook accepted"
                );
                self.count(WEBHOOKS_ACCEPTED, &[("Provider", provider)]);
            }
            Err(rejection) => {
                // The message may quote the payload, numbers included. (`message` is the log
                // line's own.)
                let detail = mask_numbers_in(&rejection.message);
                macro_rules! refused {
                    ($level:expr) => {
                        tracing::event!(
                            $level,
                            connection,
                            provider,
                            outcome = "refused",
                            status = rejection.status,
                            reason = rejection.error,
                            field = rejection.field,
                            detail,
                            latency_ms,
                            "webhook refused"
                        )
                    };
                }
                // A 5xx is ours to fix (AWS or the store unavailable); a 4xx the sender's.
                if rejection.status >= 500 {
                    refused!(Level::ERROR);
                } else {
                    refused!(Level::INFO);
                }
                self.count(
                    WEBHOOKS_REJECTED,
                    &[("Provider", provider), ("Reason", rejection.error)],
                );
            }
        }
    }

    /// A queued webhook applied to its call: a new event, or a repeat that changed nothing.
    pub fn applied(&self, webhook: &QueuedWebhook, applied: &Applied) {
        let name = if applied.new_event {
            EVENTS_APPLIED
        } else {
            EVENTS_DEDUPLICATED
        };
        tracing::debug!(
            connection = webhook.connection_id,
            provider = webhook.provider().as_str(),
            call_key = webhook.event.call_key,
            event_id = webhook.event.id,
            new_event = applied.new_event,
            "webhook applied"
        );
        self.count(name, &[("Provider", webhook.provider().as_str())]);
    }

    /// One line and one count per attempt at delivering a revision, `took` long; when the CRM
    /// took it, the time since its webhook was received too.
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
                    Level::INFO,
                    "delivered",
                    since_received_ms,
                    "delivery attempt"
                );
                if let Some(ms) = since_received_ms {
                    self.metrics.record(&Measurement {
                        name: DELIVERY_LATENCY,
                        value: ms,
                        unit: Unit::Milliseconds,
                        dimensions: &[],
                    });
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
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::record::CallRecord;
    use crate::domain::resource::MorphEventType;
    use crate::domain::time::Timestamp;

    #[test]
    fn masks_all_but_the_last_digits() {
        assert_eq!(mask_number("+3228992675"), "+*******675");
        assert_eq!(mask_number("200"), "200");
        assert_eq!(
            mask_numbers_in("`from` is `+32 28992675` not 2024, HTTP 422"),
            "`from` is `+** *****675` not 2024, HTTP 422"
        );
        // However a number is written, only its last three digits show.
        for (written, shown) in [
            ("+32 470 11 12 22", "+** *** ** *2 22"),
            ("0470/11.12.22", "****/**.*2.22"),
            ("+32 (0)470 111 222", "+** (*)*** *** 222"),
            ("+32\u{a0}470\u{a0}111222", "+**\u{a0}***\u{a0}***222"),
        ] {
            assert_eq!(
                mask_numbers_in(&format!("`to` is `{written}`")),
                format!("`to` is `{shown}`")
            );
        }
        // Short numbers and dates stay readable.
        assert_eq!(
            mask_numbers_in("HTTP 422 at 2026-12-07 12:30, 3 of 12 tries"),
            "HTTP 422 at 2026-12-07 12:30, 3 of 12 tries"
        );
    }

    #[test]
    fn emf_lines_declare_their_metric_and_dimensions() {
        let line = emf_line(
            &Measurement {
                name: WEBHOOKS_ACCEPTED,
                value: 1.0,
                unit: Unit::Count,
                dimensions: &[("Provider", "voys")],
            },
            "callbridge-test",
            1_700_000_000_000,
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "callbridge-test"
        );
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "Provider"
        );
        assert_eq!(v["Provider"], "voys");
        assert_eq!(v["WebhooksAccepted"], 1.0);
    }

    fn telemetry() -> (Arc<InMemoryMetrics>, Telemetry) {
        let metrics = Arc::new(InMemoryMetrics::default());
        (metrics.clone(), Telemetry::new(metrics))
    }

    #[test]
    fn webhooks_are_counted_per_provider_and_reason() {
        let (metrics, telemetry) = telemetry();
        let accepted = Accepted {
            status: "accepted",
            event_id: "e1".into(),
            resource_id: "call_1".into(),
            call_key: "c1".into(),
        };
        let refused = Rejection::new(400, "invalid_payload", "`from` `+3228992675` is no number");
        let lines = json_lines(|| {
            telemetry.webhook("voys", "acme", Err(&refused), Duration::from_millis(3))
        });
        assert_eq!(lines[0]["message"], "webhook refused");
        assert_eq!(lines[0]["reason"], "invalid_payload");
        assert_eq!(lines[0]["detail"], "`from` `+*******675` is no number");
        let refused = Rejection::new(401, "unauthorized", "no token");
        for (provider, answer) in [
            ("voys", Ok(&accepted)),
            ("voys", Ok(&accepted)),
            ("teltel", Err(&refused)),
            ("made-up", Err(&refused)),
        ] {
            telemetry.webhook(provider, "acme", answer, Duration::from_millis(3));
        }
        assert_eq!(
            metrics.total(WEBHOOKS_ACCEPTED, &[("Provider", "voys")]),
            2.0
        );
        assert_eq!(
            metrics.total(
                WEBHOOKS_REJECTED,
                &[("Provider", "voys"), ("Reason", "invalid_payload")]
            ),
            1.0
        );
        for provider in ["teltel", "unknown"] {
            assert_eq!(
                metrics.total(
                    WEBHOOKS_REJECTED,
                    &[("Provider", provider), ("Reason", "unauthorized")]
                ),
                1.0
            );
        }
        assert_eq!(
            metrics.to_json()["WebhooksAccepted{Provider=voys}"],
            json!(2.0)
        );
    }

    /// What a JSON subscriber writes, as on Lambda.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The JSON lines `log` writes.
    fn json_lines(log: impl FnOnce()) -> Vec<Value> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
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
        };
        let took = Duration::from_millis(20);
        let lines = json_lines(|| {
            telemetry.delivery_attempt(
                &connection,
                &call,
                &delivery,
                &DeliveryOutcome::Delivered,
                took,
            )
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
            (&line["revision"], &line["outcome"]),
            (&json!(1), &json!("delivered"))
        );
        assert!(line["latency_ms"].as_f64().unwrap() >= 20.0, "{line}");
        assert_eq!(line["external_number"], "+*******675");
        for outcome in [
            DeliveryOutcome::Retry {
                reason: "HTTP 503".into(),
                retry_after: None,
            },
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
        assert_eq!(metrics.to_json()[DELIVERY_LATENCY]["count"], 2);
    }
}
