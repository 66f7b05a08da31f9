//! The engine's own steps as [`Telemetry`] reports them: a webhook answered, a webhook applied.
//! Here rather than in `telemetry`, which must not know the engine's types.

use crate::domain::event::Provider;
use crate::engine::apply::Applied;
use crate::engine::ingest::{Accepted, Rejection};
use crate::ports::QueuedWebhook;
use crate::telemetry::{
    EVENTS_APPLIED, EVENTS_DEDUPLICATED, Telemetry, WEBHOOKS_ACCEPTED, WEBHOOKS_REJECTED,
    mask_numbers_in, millis,
};
use serde_json::json;
use std::time::Duration;
use tracing::Level;

impl Telemetry {
    /// One line and one count per webhook, accepted or refused, as the HTTP stack got it:
    /// `provider` and `connection` are those of the URL, `latency` the time to answer. The
    /// accepted line is the one a webhook writes at the default level: what an operator looks
    /// for (the call, its resource, how long the answer took), nothing more (the event's id is
    /// in the worker's `debug` line).
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
                self.count(WEBHOOKS_ACCEPTED, &[("Provider", provider)]);
                // On Lambda the line goes in the metric line of the count: one line a webhook.
                let carried = self.carry_info(&mut || {
                    [
                        ("level", json!("INFO")),
                        ("message", json!("webhook accepted")),
                        ("connection", json!(connection)),
                        ("provider", json!(provider)),
                        ("call_key", json!(accepted.call_key)),
                        ("resource_id", json!(accepted.resource_id)),
                        ("outcome", json!("accepted")),
                        ("latency_ms", json!(latency_ms)),
                    ]
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect()
                });
                if !carried {
                    tracing::info!(
                        connection,
                        provider,
                        call_key = accepted.call_key,
                        resource_id = accepted.resource_id,
                        outcome = "accepted",
                        latency_ms,
                        "webhook accepted"
                    );
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::facade::tests::telemetry;
    use crate::telemetry::logs::tests::json_lines;

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
    }
}
