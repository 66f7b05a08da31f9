//! The local server's metrics in the Prometheus text format (`GET /metrics`), which every
//! scraper reads, kept by `metrics-exporter-prometheus`.

use super::metrics::{
    DELIVERIES, DELIVERIES_PARKED, DELIVERY_OUTCOMES, EVENTS_APPLIED, EVENTS_DEDUPLICATED, Metrics,
    RETRIES, WEBHOOKS_ACCEPTED, describe,
};
use crate::domain::event::Provider;
use metrics::{Recorder, counter, with_local_recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::time::Duration;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// How often the timings' recent values are folded into their summaries between scrapes, so
/// that a server nobody scrapes keeps them bounded.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

pub struct PrometheusMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Default for PrometheusMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PrometheusMetrics {
    /// Every series known in advance is there from the start, at zero, so that a scraper sees
    /// it before the first webhook. (`WebhooksRejected` appears with its first refusal: its
    /// `Reason`s are the refusals' codes.)
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        with_local_recorder(&recorder, || {
            for provider in Provider::ALL {
                for name in [WEBHOOKS_ACCEPTED, EVENTS_APPLIED, EVENTS_DEDUPLICATED] {
                    counter!(name, "Provider" => provider.as_str()).absolute(0);
                }
            }
            for outcome in DELIVERY_OUTCOMES {
                counter!(DELIVERIES, "Outcome" => outcome).absolute(0);
            }
            counter!(RETRIES).absolute(0);
            counter!(DELIVERIES_PARKED).absolute(0);
        });
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            })
            .expect("a thread for the metrics' upkeep");
        Self { recorder, handle }
    }

    /// Everything counted since the start, in the text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

impl Metrics for PrometheusMetrics {
    fn recorder(&self) -> Option<&dyn Recorder> {
        Some(&self.recorder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;
    use std::sync::Arc;

    /// The value of `series` in the text format's `series value` lines.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter_map(|line| line.rsplit_once(' '))
            .find(|(name, _)| *name == series)
            .map(|(_, value)| value.parse().unwrap())
    }

    #[test]
    fn counters_are_there_at_zero_before_anything_is_counted() {
        let metrics = Arc::new(PrometheusMetrics::new());
        let text = metrics.render();
        for series in [
            r#"WebhooksAccepted{Provider="telecmi"}"#,
            r#"EventsDeduplicated{Provider="voys"}"#,
            r#"Deliveries{Outcome="retry"}"#,
            "DeliveriesParked",
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in {text}");
        }
        assert!(text.contains("# TYPE Retries counter"), "{text}");

        let telemetry = Telemetry::new(Arc::clone(&metrics) as _);
        telemetry.parked();
        telemetry.parked();
        assert_eq!(sample(&metrics.render(), "DeliveriesParked"), Some(2.0));
    }
}
