//! Delivery: a record's outbox goes to the CRM oldest first, and stops at the first delivery
//! that does not go through, so a call's events never overtake each other; what the CRM took
//! is written down, and what it did not is classified ([`Failure`]). When to try again is the
//! host's choice (the local server retries on the [`RetryPolicy`]; the AWS worker has SQS
//! redeliver the message after the same schedule's wait).

use super::crash::{CrashPoint, crash_point};
use super::failure::Failure;
use super::rest_delivery::push_revision;
use crate::domain::connection::{Connection, DeliveryMode};
use crate::domain::record::{CallKey, CallRecord, Delivery};
use crate::ports::{CallStore, Clock, Crm, DeliveryOutcome};
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
/// the call in `store` as it goes ([`super::rest_delivery`], its claims dated by `clock`); the
/// runner then marks the delivered revisions as usual.
pub async fn push_outbox(
    crm: &dyn Crm,
    store: &dyn CallStore,
    clock: &dyn Clock,
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
            DeliveryMode::Rest => {
                push_revision(crm, store, clock, connection, call, delivery).await
            }
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

/// What delivering a call's outbox came to.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// The highest revision the CRM took, if any.
    pub up_to: Option<u64>,
    /// The call as stored after the writes, with whatever came in meanwhile.
    pub record: CallRecord,
    /// The delivery the outbox stopped at, and what that means for the call.
    pub stopped: Option<(Delivery, Failure)>,
}

/// Delivers `record`'s outbox past revision `after` (what the host delivered already) with
/// [`push_outbox`], then writes down what the CRM took ([`CallRecord::mark_delivered`]); an
/// erased call's deletion that the CRM refused is dropped, since the erasure does not wait on a
/// refusal. An error is the store's; what the CRM did not take is in [`Delivered::stopped`].
pub async fn deliver_outbox(
    crm: &dyn Crm,
    store: &dyn CallStore,
    clock: &dyn Clock,
    connection: &Connection,
    record: CallRecord,
    after: u64,
    telemetry: &Telemetry,
) -> anyhow::Result<Delivered> {
    let outbox: Vec<Delivery> = record
        .outbox
        .iter()
        .filter(|d| d.revision > after)
        .cloned()
        .collect();
    if outbox.is_empty() {
        return Ok(Delivered {
            up_to: None,
            record,
            stopped: None,
        });
    }
    let call = record.key.clone();
    let pushed = push_outbox(crm, store, clock, connection, &call, &outbox, telemetry).await;
    let mut record = record;
    if let Some(revision) = pushed.delivered_up_to {
        record = store
            .update(&call, &mut |record| {
                let waiting = record.outbox.len();
                record.mark_delivered(revision);
                record.outbox.len() != waiting
            })
            .await?
            .record;
    }
    let stopped = match pushed.stopped_at {
        None => None,
        Some((delivery, DeliveryOutcome::Reject { status, .. })) if record.erased_at.is_some() => {
            tracing::warn!(resource_id = %delivery.resource_id, revision = delivery.revision, status, "the CRM refused the deletion of an erased call: the call is forgotten all the same");
            record = store
                .update(&call, &mut |record| record.drop_refused(delivery.revision))
                .await?
                .record;
            None
        }
        Some((delivery, outcome)) => {
            let failure = Failure::of_delivery(&delivery, outcome);
            Some((delivery, failure))
        }
    };
    Ok(Delivered {
        up_to: pushed.delivered_up_to,
        record,
        stopped,
    })
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
    use crate::adapters::memory::MemoryStore;
    use crate::domain::event::Provider;
    use crate::domain::resource::MorphEventType;
    use crate::domain::time::Timestamp;
    use crate::telemetry::InMemoryMetrics;
    use async_trait::async_trait;
    use std::sync::{Arc, Mutex};

    /// A CRM that answers each delivery with the next of its answers, and notes what it got.
    struct Scripted {
        answers: Mutex<Vec<DeliveryOutcome>>,
        got: Mutex<Vec<u64>>,
    }

    impl Scripted {
        fn new(mut answers: Vec<DeliveryOutcome>) -> Self {
            answers.reverse();
            Self {
                answers: Mutex::new(answers),
                got: Mutex::default(),
            }
        }
    }

    #[async_trait]
    impl Crm for Scripted {
        async fn deliver(&self, _: &Connection, delivery: &Delivery) -> DeliveryOutcome {
            self.got.lock().unwrap().push(delivery.revision);
            self.answers.lock().unwrap().pop().expect("an answer")
        }
    }

    struct SetClock;

    impl Clock for SetClock {
        fn now(&self) -> Timestamp {
            Timestamp::from_micros(1_765_209_900_000_000).unwrap()
        }
    }

    /// A stored call with revisions `revisions` waiting, the last one of `last` kind.
    async fn waiting(store: &MemoryStore, revisions: &[u64], last: MorphEventType) -> CallRecord {
        let mut record = CallRecord::new(CallKey::new("acme", Provider::Telsmart, "call-1"));
        for &revision in revisions {
            record.outbox.push(Delivery {
                resource_id: record.resource_id.clone(),
                revision,
                event: if Some(&revision) == revisions.last() {
                    last
                } else {
                    MorphEventType::Updated
                },
                idempotency_key: format!("{}-r{revision}", record.resource_id),
                body: serde_json::Value::Null,
                closed: None,
                received_at: None,
                attempted: false,
            });
        }
        store.save(&record, None).await.unwrap();
        record
    }

    async fn deliver(
        crm: &Scripted,
        store: &MemoryStore,
        record: CallRecord,
        after: u64,
    ) -> Delivered {
        let connection = crate::config::test_connection("").unwrap();
        let telemetry = Telemetry::new(Arc::new(InMemoryMetrics::default()));
        deliver_outbox(
            crm,
            store,
            &SetClock,
            &connection,
            record,
            after,
            &telemetry,
        )
        .await
        .unwrap()
    }

    fn stored_outbox(store: &MemoryStore) -> Vec<u64> {
        store.records()[0]
            .outbox
            .iter()
            .map(|d| d.revision)
            .collect()
    }

    #[tokio::test]
    async fn what_the_crm_took_is_marked_and_its_refusal_parks_the_rest() {
        let store = MemoryStore::default();
        let record = waiting(&store, &[1, 2, 3], MorphEventType::Updated).await;
        let crm = Scripted::new(vec![
            DeliveryOutcome::Delivered,
            DeliveryOutcome::Reject {
                status: 422,
                body: "no".into(),
            },
        ]);
        let delivered = deliver(&crm, &store, record, 0).await;
        assert_eq!(delivered.up_to, Some(1));
        assert_eq!(*crm.got.lock().unwrap(), [1, 2]);
        assert_eq!(stored_outbox(&store), [2, 3]);
        let (stopped_at, failure) = delivered.stopped.expect("stopped at the refusal");
        assert_eq!(stopped_at.revision, 2);
        assert!(
            matches!(
                failure,
                Failure::Park {
                    crm_status: Some(422),
                    ..
                }
            ),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn what_the_host_delivered_already_is_not_sent_again() {
        let store = MemoryStore::default();
        let record = waiting(&store, &[1, 2], MorphEventType::Updated).await;
        let crm = Scripted::new(vec![DeliveryOutcome::Delivered]);
        let delivered = deliver(&crm, &store, record, 1).await;
        assert_eq!(*crm.got.lock().unwrap(), [2]);
        assert_eq!(delivered.up_to, Some(2));
        assert!(delivered.stopped.is_none());
        assert!(stored_outbox(&store).is_empty());
    }

    #[tokio::test]
    async fn an_erased_call_does_not_wait_on_a_refused_deletion() {
        let store = MemoryStore::default();
        let mut record = waiting(&store, &[4], MorphEventType::Deleted).await;
        record.erased_at = Some(SetClock.now());
        let version = store.load(&record.key).await.unwrap().unwrap().1;
        store.save(&record, Some(version)).await.unwrap();
        let crm = Scripted::new(vec![DeliveryOutcome::Reject {
            status: 404,
            body: "gone".into(),
        }]);
        let delivered = deliver(&crm, &store, record, 0).await;
        assert!(delivered.stopped.is_none(), "{:?}", delivered.stopped);
        assert_eq!(delivered.up_to, None);
        assert!(stored_outbox(&store).is_empty());
        assert!(delivered.record.outbox.is_empty());
    }

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
