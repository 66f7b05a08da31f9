//! Delivery: a record's outbox goes to the CRM oldest first, and stops at the first delivery
//! that does not go through, so a call's events never overtake each other. What to do with a
//! delivery that must wait is the runner's choice (the local server retries it on the
//! [`RetryPolicy`]; the AWS worker has SQS redeliver the message after the same schedule's
//! wait).

use super::crash::{CrashPoint, crash_point};
use super::rest_delivery::push_revision;
use crate::domain::connection::{Connection, DeliveryMode};
use crate::domain::record::{CallKey, Delivery};
use crate::ports::{CallStore, Crm, DeliveryOutcome};
use crate::telemetry::Telemetry;
use rand::Rng;
use std::time::{Duration, Instant};

/// What pushing an outbox achieved.
#[derive(Clone, Debug, PartialEq)]
pub struct Pushed {
    /// The highest revision the CRM took, if any.
    pub delivered_up_to: Option<u64>,
    /// The delivery that did not go through, and why; the ones after it were not tried.
    pub stopped_at: Option<(Delivery, DeliveryOutcome)>,
}

/// Pushes the outbox of `call` in order until one delivery does not go through; every attempt
/// is logged and counted. A connection in REST mode writes what Morph gives back (its ids) to
/// the call in `store` as it goes ([`super::rest_delivery`]); the runner then marks the delivered
/// revisions as usual.
pub async fn push_outbox(
    crm: &dyn Crm,
    store: &dyn CallStore,
    connection: &Connection,
    call: &CallKey,
    outbox: &[Delivery],
    telemetry: &Telemetry,
) -> Pushed {
    let mut delivered_up_to = None;
    for delivery in outbox {
        let started = Instant::now();
        let outcome = match connection.delivery {
            DeliveryMode::Events => crm.deliver(connection, delivery).await,
            DeliveryMode::Rest => push_revision(crm, store, connection, call, delivery).await,
        };
        telemetry.delivery_attempt(connection, call, delivery, &outcome, started.elapsed());
        match outcome {
            DeliveryOutcome::Delivered => {
                crash_point(CrashPoint::DeliveredNotMarked);
                delivered_up_to = Some(delivery.revision);
            }
            outcome => {
                return Pushed {
                    delivered_up_to,
                    stopped_at: Some((delivery.clone(), outcome)),
                };
            }
        }
    }
    Pushed {
        delivered_up_to,
        stopped_at: None,
    }
}

/// The retry schedule: exponential backoff from `initial` doubling up to `max`, each wait drawn
/// between half and all of it (jitter), never sooner than the CRM's `Retry-After` (itself capped
/// at `max`), for at most `max_attempts` attempts. With the defaults (12 attempts, 250 ms, 60 s)
/// the 11 waits add up to at most 243.75 s ([`RetryPolicy::worst_case_total`]; at least half
/// that), so with every attempt taking the whole 5 s timeout a delivery is parked at most about
/// 5 minutes after its first try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, after `attempt` failed attempts (1-based), or
    /// `None` when the attempts are used up.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        self.delay_with_jitter(attempt, retry_after, rand::rng().random_range(0.5..=1.0))
    }

    /// [`RetryPolicy::delay`] with its jitter given: the share of the full wait taken, from
    /// 0.5 to 1 (a share outside takes the nearest bound).
    pub fn delay_with_jitter(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let jittered = self.full_wait(attempt).mul_f64(jitter.clamp(0.5, 1.0));
        Some(match retry_after {
            Some(asked) => jittered.max(asked.min(self.max)),
            None => jittered,
        })
    }

    /// The longest the whole schedule can take, jitter aside.
    pub fn worst_case_total(&self) -> Duration {
        (1..self.max_attempts)
            .map(|attempt| self.full_wait(attempt))
            .sum()
    }

    /// The wait after `attempt` failed attempts before the jitter takes its share.
    fn full_wait(&self, attempt: u32) -> Duration {
        self.initial
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_stops() {
        let p = policy();
        for _ in 0..100 {
            let first = p.delay(1, None).unwrap();
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let fourth = p.delay(4, None).unwrap();
            assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800));
        }
        assert_eq!(p.delay(5, None), None);
        assert_eq!(
            p.worst_case_total(),
            Duration::from_millis(100 + 200 + 400 + 800)
        );
    }

    #[test]
    fn the_default_schedule_is_the_documented_one() {
        let crm = crate::config::CrmConfig::default();
        let defaults = RetryPolicy {
            max_attempts: crm.max_attempts,
            initial: Duration::from_millis(crm.initial_backoff_ms),
            max: Duration::from_millis(crm.max_backoff_ms),
        };
        assert_eq!(
            defaults,
            RetryPolicy {
                max_attempts: 12,
                initial: Duration::from_millis(250),
                max: Duration::from_secs(60),
            }
        );
        assert_eq!(defaults.worst_case_total(), Duration::from_millis(243_750));
        assert_eq!(crm.timeout_ms, 5_000);
    }

    #[test]
    fn the_jitter_given_is_the_share_of_the_full_wait_taken() {
        let p = policy();
        assert_eq!(
            p.delay_with_jitter(4, None, 0.5),
            Some(Duration::from_millis(400))
        );
        assert_eq!(
            p.delay_with_jitter(4, None, 1.0),
            Some(Duration::from_millis(800))
        );
        assert_eq!(
            p.delay_with_jitter(4, None, 3.0),
            Some(Duration::from_millis(800))
        );
        assert_eq!(p.delay_with_jitter(5, None, 1.0), None);
    }

    #[test]
    fn retry_after_is_a_floor_within_the_cap() {
        let p = policy();
        assert!(
            p.delay(1, Some(Duration::from_millis(700))).unwrap() >= Duration::from_millis(700)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(30))),
            Some(Duration::from_secs(1))
        );
    }
}
