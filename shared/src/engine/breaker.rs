//! A circuit breaker per CRM destination (issue 11): when the CRM a connection delivers to
//! fails call after call, the calls stop sending their own retries and one request at a time
//! probes it; when a probe goes through, every waiting delivery resumes. Pure: the state and
//! the instant in, the decision out; the hosts keep the state (locally in memory, one per
//! destination; on AWS in a DynamoDB item all workers share, below).
//!
//! Asked before every delivery by [`super::destination::Destinations`].
//!
//! # The rule
//!
//! - **Closed**: every delivery is sent. A failure that retrying can fix (connection error,
//!   timeout, 5xx, 408, 409, 425, 429) counts one; any answer the CRM gave otherwise (taken,
//!   or refused with another 4xx: the CRM is up, the delivery is wrong) resets the count.
//!   [`BreakerSettings::open_after`] failures in a row, across every call of the destination,
//!   open it. Counting a run rather than a ratio in a window keeps the state to one number,
//!   and a CRM that answered nothing well that many times in a row is down for our purpose.
//! - **Open**: no call sends, not even its first attempt; every delivery waits. Once every
//!   [`BreakerSettings::probe_every`] one delivery is let through as the probe. Taking the
//!   probe moves the next probe on by the same interval, so a prober that dies (a Lambda timed
//!   out) holds it up for one interval at most, and two workers never probe at once.
//! - The probe goes through: closed, and everything waiting resumes. It fails: still open,
//!   the next probe an interval after the failure.
//!
//! A CRM down for an hour thus costs `open_after` requests, then 2 a minute (the default 30 s),
//! whatever the number of calls waiting.
//!
//! # On AWS: one DynamoDB item per destination
//!
//! The workers share the state in the calls table (or a table of its own, the wiring's choice)
//! as one small item:
//!
//! | attribute | type | holds |
//! |---|---|---|
//! | `pk` | S | `breaker#` + [`destination_key`] (a SHA-256 of the CRM URL: the URL may carry a secret) |
//! | `state` | S | this [`Breaker`] as JSON (`{"closed":{"failures":3}}`, `{"open":{"since":…,"next_probe_at":…}}`) |
//! | `version` | N | incremented by every write |
//! | `expires_at` | N | the TTL, epoch seconds: a day after the write |
//!
//! No item reads as [`Breaker::default`] (closed, no failure), so a healthy CRM costs a
//! `GetItem` per batch and no write: a success on a closed breaker with no failure counted
//! changes nothing ([`Breaker::record`] returns no change). Every change is a `PutItem` with
//! `ConditionExpression: attribute_not_exists(pk) OR version = :read`; on
//! `ConditionalCheckFailedException` the worker reads again and decides again, so exactly one
//! worker takes each probe. The TTL removes the item of a CRM no connection uses any more; a
//! breaker left open by its last worker reads back open and probes as usual.

use crate::domain::time::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How a breaker opens and probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Failures retrying can fix, in a row across calls, that open the breaker.
    pub open_after: u32,
    /// How often an open breaker lets one delivery through (whole seconds in configuration).
    #[serde(with = "whole_seconds")]
    pub probe_every: Duration,
}

impl Default for BreakerSettings {
    /// 5 failures in a row: with the first retries 0.25–2 s apart, one failing call opens it
    /// within about 4 s, and five unrelated calls failing are unlikely to be chance (a lone call
    /// failing on a quiet destination may open it too; the next probe, likely another call's,
    /// closes it within 30 s). A probe
    /// every 30 s: the issue's figure; locally a recovered CRM hears from everyone waiting
    /// within half a minute.
    fn default() -> Self {
        Self {
            open_after: 5,
            probe_every: Duration::from_secs(30),
        }
    }
}

/// A breaker's state, as a host keeps it (small, serialisable: the AWS item above).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Breaker {
    Closed {
        /// Failures retrying can fix in a row.
        failures: u32,
    },
    Open {
        /// When it opened: how long the CRM has been down, for the log line and the metric.
        since: Timestamp,
        /// When the next probe may go.
        next_probe_at: Timestamp,
    },
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::Closed { failures: 0 }
    }
}

/// May a delivery be sent now?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Send it.
    Send,
    /// Send it: it is the probe of an open breaker, the only request to the CRM until it is
    /// answered or the next probe is due.
    Probe,
    /// Do not send it; ask again at `until` (the next probe's time: it may be this delivery).
    Wait { until: Timestamp },
}

/// What a sent delivery came to, as far as the CRM's health is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The CRM answered: took it, or refused it for a reason retrying cannot fix.
    Answered,
    /// A failure retrying can fix.
    Failed,
}

/// A change of state worth a log line and a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerEvent {
    Opened { at: Timestamp },
    Closed { at: Timestamp, open_for: Duration },
}

impl Breaker {
    /// Whether a delivery may be sent at `now`. An open breaker whose probe is due hands the
    /// probe out and moves the next one on, so ask once per delivery and keep the state it
    /// leaves (on AWS: write it, conditionally, before sending).
    pub fn permit(&mut self, settings: &BreakerSettings, now: Timestamp) -> Permit {
        match *self {
            Breaker::Closed { .. } => Permit::Send,
            Breaker::Open {
                since,
                next_probe_at,
            } if now >= next_probe_at => {
                *self = Breaker::Open {
                    since,
                    next_probe_at: now.saturating_add(settings.probe_every),
                };
                Permit::Probe
            }
            Breaker::Open { next_probe_at, .. } => Permit::Wait {
                until: next_probe_at,
            },
        }
    }

    /// Takes the answer of a delivery sent under `permit` at `now`. Returns whether the state
    /// changed (a host writes only then) and the event, if it opened or closed.
    pub fn record(
        &mut self,
        settings: &BreakerSettings,
        permit: Permit,
        answer: Answer,
        now: Timestamp,
    ) -> (bool, Option<BreakerEvent>) {
        let before = *self;
        let event = match (before, answer) {
            (Breaker::Closed { failures: 0 }, Answer::Answered) => None,
            (Breaker::Closed { .. }, Answer::Answered) => {
                *self = Breaker::default();
                None
            }
            (Breaker::Closed { failures }, Answer::Failed) => {
                let failures = failures.saturating_add(1);
                if failures >= settings.open_after {
                    *self = Breaker::Open {
                        since: now,
                        next_probe_at: now.saturating_add(settings.probe_every),
                    };
                    Some(BreakerEvent::Opened { at: now })
                } else {
                    *self = Breaker::Closed { failures };
                    None
                }
            }
            // Any answer shows the CRM is back, the probe's or a request sent before it opened.
            (Breaker::Open { since, .. }, Answer::Answered) => {
                *self = Breaker::default();
                Some(BreakerEvent::Closed {
                    at: now,
                    open_for: since.until(now),
                })
            }
            (Breaker::Open { since, .. }, Answer::Failed) if permit == Permit::Probe => {
                *self = Breaker::Open {
                    since,
                    next_probe_at: now.saturating_add(settings.probe_every),
                };
                None
            }
            // A request sent before it opened, failing late, tells nothing new.
            (Breaker::Open { .. }, Answer::Failed) => None,
        };
        (*self != before, event)
    }
}

/// The key of a CRM destination: the SHA-256 (hex) of the URL deliveries go to, so that a
/// secret in the URL never reaches a table, a log line or a metric label.
pub fn destination_key(crm_url: &str) -> String {
    hex::encode(Sha256::digest(crm_url.as_bytes()))
}

mod whole_seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_micros(1_765_209_600_000_000 + micros).unwrap()
    }

    fn fail(breaker: &mut Breaker, now: Timestamp) -> Option<BreakerEvent> {
        let settings = BreakerSettings::default();
        let permit = breaker.permit(&settings, now);
        breaker.record(&settings, permit, Answer::Failed, now).1
    }

    fn opened_at(now: Timestamp) -> Breaker {
        let mut breaker = Breaker::default();
        for _ in 0..5 {
            fail(&mut breaker, now);
        }
        breaker
    }

    #[test]
    fn five_failures_in_a_row_open_it_and_an_answer_between_resets_the_count() {
        let settings = BreakerSettings::default();
        let mut breaker = Breaker::default();
        for i in 0..4 {
            assert_eq!(fail(&mut breaker, at(i)), None);
            assert_eq!(breaker.permit(&settings, at(i)), Permit::Send);
        }
        // A 4xx refusal is an answer: the CRM is up.
        assert_eq!(
            breaker.record(&settings, Permit::Send, Answer::Answered, at(4)),
            (true, None)
        );
        for i in 0..4 {
            assert_eq!(fail(&mut breaker, at(10 + i)), None);
        }
        assert_eq!(
            fail(&mut breaker, at(14)),
            Some(BreakerEvent::Opened { at: at(14) })
        );
        assert_eq!(
            breaker,
            Breaker::Open {
                since: at(14),
                next_probe_at: at(14 + 30 * SECOND)
            }
        );
    }

    #[test]
    fn while_open_everyone_waits_for_one_probe_every_30_seconds() {
        let settings = BreakerSettings::default();
        let mut breaker = opened_at(at(0));
        let next = at(30 * SECOND);
        assert_eq!(
            breaker.permit(&settings, at(0)),
            Permit::Wait { until: next }
        );
        assert_eq!(
            breaker.permit(&settings, at(30 * SECOND - 1)),
            Permit::Wait { until: next }
        );
        assert_eq!(breaker.permit(&settings, next), Permit::Probe);
        // The probe is out: the others wait for the next interval, not for its answer.
        let after = at(60 * SECOND);
        assert_eq!(
            breaker.permit(&settings, next),
            Permit::Wait { until: after }
        );
        assert_eq!(
            breaker.permit(&settings, at(45 * SECOND)),
            Permit::Wait { until: after }
        );
    }

    #[test]
    fn a_failed_probe_keeps_it_open_and_the_next_comes_30_seconds_after_it() {
        let settings = BreakerSettings::default();
        let mut breaker = opened_at(at(0));
        let permit = breaker.permit(&settings, at(31 * SECOND));
        assert_eq!(permit, Permit::Probe);
        // The probe timed out after 5 s.
        let answered = at(36 * SECOND);
        assert_eq!(
            breaker.record(&settings, permit, Answer::Failed, answered),
            (true, None)
        );
        assert_eq!(
            breaker,
            Breaker::Open {
                since: at(0),
                next_probe_at: at(66 * SECOND)
            }
        );
    }

    #[test]
    fn a_successful_probe_closes_it_and_everyone_is_sent_again() {
        let settings = BreakerSettings::default();
        let mut breaker = opened_at(at(0));
        let permit = breaker.permit(&settings, at(30 * SECOND));
        assert_eq!(
            breaker.record(&settings, permit, Answer::Answered, at(31 * SECOND)),
            (
                true,
                Some(BreakerEvent::Closed {
                    at: at(31 * SECOND),
                    open_for: Duration::from_secs(31)
                })
            )
        );
        assert_eq!(breaker, Breaker::default());
        assert_eq!(breaker.permit(&settings, at(31 * SECOND)), Permit::Send);
    }

    #[test]
    fn a_late_failure_sent_before_it_opened_changes_nothing() {
        let settings = BreakerSettings::default();
        let mut breaker = opened_at(at(0));
        let before = breaker;
        assert_eq!(
            breaker.record(&settings, Permit::Send, Answer::Failed, at(20 * SECOND)),
            (false, None)
        );
        assert_eq!(breaker, before);
    }

    #[test]
    fn a_healthy_crm_changes_nothing_to_write() {
        let settings = BreakerSettings::default();
        let mut breaker = Breaker::default();
        assert_eq!(
            breaker.record(&settings, Permit::Send, Answer::Answered, at(0)),
            (false, None)
        );
    }

    /// A CRM down for an hour with 1,000 calls waiting: 5 failures open it, then one probe
    /// every 30 s: 5 + 120 requests, not one per call per backoff step.
    #[test]
    fn an_hour_down_costs_a_probe_every_30_seconds_whatever_waits() {
        let settings = BreakerSettings::default();
        let mut breaker = opened_at(at(0));
        let mut sent = 5;
        // Every waiting delivery asks every second; each probe fails at once.
        for second in 1..=3600 {
            let now = at(second * SECOND);
            for _ in 0..1000 {
                let permit = breaker.permit(&settings, now);
                if permit == Permit::Probe {
                    sent += 1;
                    breaker.record(&settings, permit, Answer::Failed, now);
                }
            }
        }
        assert_eq!(sent, 5 + 120);
    }

    #[test]
    fn the_state_is_small_and_reads_back() {
        for breaker in [Breaker::Closed { failures: 3 }, opened_at(at(0))] {
            let json = serde_json::to_string(&breaker).unwrap();
            assert!(json.len() < 80, "{json}");
            assert_eq!(serde_json::from_str::<Breaker>(&json).unwrap(), breaker);
        }
        assert_eq!(
            serde_json::to_string(&Breaker::Closed { failures: 3 }).unwrap(),
            r#"{"closed":{"failures":3}}"#
        );
    }

    #[test]
    fn settings_read_from_configuration() {
        let read: BreakerSettings = serde_json::from_str(r#"{ "probe_every": 5 }"#).unwrap();
        assert_eq!(read.probe_every, Duration::from_secs(5));
        assert_eq!(read.open_after, 5);
    }

    #[test]
    fn the_destination_key_hides_the_url() {
        let key = destination_key("https://crm.example/hooks?token=s3cret");
        assert_eq!(key.len(), 64);
        assert!(!key.contains("s3cret"));
        assert_eq!(
            key,
            destination_key("https://crm.example/hooks?token=s3cret")
        );
        assert_ne!(
            key,
            destination_key("https://crm.example/hooks?token=other")
        );
        // SHA-256 of the empty string, as FIPS 180-2 gives it.
        assert_eq!(
            destination_key(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
