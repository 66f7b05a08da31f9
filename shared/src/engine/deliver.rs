//! Delivery: a record's outbox goes to the CRM oldest first, and stops at the first delivery
//! that does not go through, so a call's events never overtake each other; what the CRM took
//! is written down, and what it did not is classified ([`Failure`]). Before each delivery its
//! destination is asked ([`Destinations`]: an open breaker holds it back, the rate limit paces
//! it); after a failure retrying can fix, the retry schedule ([`RetrySchedule`]) says when to
//! try again, or to park it once its horizon is past. The hosts only wait (the local server
//! sleeps; the AWS worker hides the message until then) and park.

use super::crash::{CrashPoint, crash_point};
use super::destination::{Admission, Destinations};
use super::failure::Failure;
use super::rest_delivery::push_revision;
use super::schedule::{Jitter, NextTry, RetrySchedule};
use crate::domain::connection::{Connection, DeliveryMode};
use crate::domain::record::{CallKey, CallRecord, Delivery, Waiting};
use crate::domain::time::Timestamp;
use crate::ports::{CallStore, Clock, Crm, DeliveryOutcome};
use crate::telemetry::Telemetry;
use rand::Rng;
use std::time::{Duration, Instant};

/// How a host waits: the retry schedule, and what its waiting costs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Waits {
    pub schedule: RetrySchedule,
    /// Each wait taken whole rather than a random share of it: on AWS, where every try is a
    /// receive of the message and SQS counts at most 1,000 (the schedule's 874 whole waits in
    /// 72 hours fit; its shortest waits would not).
    pub whole: bool,
    /// How long a call waits on its CRM before it catches up: its intermediate updates never
    /// sent are superseded by its latest state ([`CallRecord::outbox_to_send`]). The breaker's
    /// probe interval: a call held up that long is in an outage, not a hiccup.
    pub catch_up_after: Duration,
    /// The shortest wait of a delivery held back by an open breaker: none locally (the closing
    /// wakes it); on AWS the schedule's cap, so that a held message too is received at most
    /// once per cap while the CRM is down.
    pub hold_at_least: Duration,
}

impl Waits {
    /// The local server's: random shares, held deliveries woken by the closing.
    pub fn local(schedule: RetrySchedule, catch_up_after: Duration) -> Self {
        Self {
            schedule,
            catch_up_after,
            whole: false,
            hold_at_least: Duration::ZERO,
        }
    }

    /// The AWS worker's: whole waits, held messages back once per cap.
    pub fn aws(schedule: RetrySchedule, catch_up_after: Duration) -> Self {
        Self {
            schedule,
            catch_up_after,
            whole: true,
            hold_at_least: schedule.cap,
        }
    }

    fn jitter(&self) -> Jitter {
        if self.whole {
            Jitter::NONE
        } else {
            Jitter::share(rand::rng().random_range(0.5..=1.0))
        }
    }
}

/// Why a push stopped at a delivery.
#[derive(Debug)]
pub enum Stop {
    /// The CRM's answer, other than taking it.
    Answer(DeliveryOutcome),
    /// Not sent: the destination's breaker is open until `until`.
    Held { until: Timestamp },
    /// Not sent: the breaker's state could not be read or written.
    Unavailable(anyhow::Error),
}

/// What pushing an outbox achieved.
#[derive(Debug)]
pub struct Pushed {
    /// The highest revision the CRM took, if any.
    pub delivered_up_to: Option<u64>,
    /// The delivery that did not go through, and why; the ones after it were not tried.
    pub stopped_at: Option<(Delivery, Stop)>,
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

/// The deliver step with what it needs; hosts build one per call or batch (it only borrows).
pub struct Deliverer<'a> {
    pub crm: &'a dyn Crm,
    pub store: &'a dyn CallStore,
    pub clock: &'a dyn Clock,
    pub destinations: &'a Destinations,
    pub waits: &'a Waits,
    pub telemetry: &'a Telemetry,
}

impl Deliverer<'_> {
    /// Pushes `outbox` of `call` in order until one delivery does not go through; each is let
    /// through by its destination first, and every attempt is logged and counted. A connection
    /// in REST mode writes what Morph gives back (its ids) to the call as it goes
    /// ([`super::rest_delivery`]); the caller then marks the delivered revisions. A call
    /// catching up is `paced` by its destination's rate limit.
    pub async fn push_outbox(
        &self,
        connection: &Connection,
        call: &CallKey,
        outbox: &[Delivery],
        paced: bool,
    ) -> Pushed {
        let destination = self.crm.destination(connection);
        let mut delivered_up_to = None;
        for delivery in outbox {
            let stop = |stop| Pushed {
                delivered_up_to,
                stopped_at: Some((delivery.clone(), stop)),
            };
            let permit = match self
                .destinations
                .admit(&destination, paced, self.clock)
                .await
            {
                Ok(Admission::Send(permit)) => permit,
                Ok(Admission::Hold { until }) => return stop(Stop::Held { until }),
                Err(e) => return stop(Stop::Unavailable(e)),
            };
            let started = Instant::now();
            let outcome = match connection.delivery {
                DeliveryMode::Events => self.crm.deliver(connection, delivery).await,
                DeliveryMode::Rest => {
                    push_revision(self.crm, self.store, self.clock, connection, call, delivery)
                        .await
                }
            };
            self.telemetry.delivery_attempt(
                connection,
                call,
                delivery,
                &outcome,
                started.elapsed(),
            );
            if let Err(e) = self
                .destinations
                .answered(&destination, permit, &outcome, self.clock)
                .await
            {
                // The answer stands; only the breaker misses one count.
                tracing::warn!(destination, error = %e, "cannot record the CRM's answer in its breaker");
            }
            match outcome {
                DeliveryOutcome::Delivered => {
                    crash_point(CrashPoint::DeliveredNotMarked);
                    delivered_up_to = Some(delivery.revision);
                }
                outcome => return stop(Stop::Answer(outcome)),
            }
        }
        Pushed {
            delivered_up_to,
            stopped_at: None,
        }
    }

    /// Delivers what of `record`'s outbox is to be sent ([`CallRecord::outbox_to_send`]: all of
    /// it, or the latest state only once the call has waited [`Waits::catch_up_after`]) past
    /// revision `after` (what the host delivered already) with [`Deliverer::push_outbox`],
    /// then writes down in one write what the CRM took ([`CallRecord::mark_delivered`]) and
    /// how long the delivery it stopped at has waited. An erased call's deletion that the CRM
    /// refused is dropped, since the erasure does not wait on a refusal. An error is the
    /// store's; what the CRM did not take is in [`Delivered::stopped`].
    pub async fn deliver_outbox(
        &self,
        connection: &Connection,
        record: CallRecord,
        after: u64,
    ) -> anyhow::Result<Delivered> {
        let catch_up = record.waiting_since().is_some_and(|since| {
            since.saturating_add(self.waits.catch_up_after) <= self.clock.now()
        });
        let outbox: Vec<Delivery> = record
            .outbox_to_send(catch_up)
            .into_iter()
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
        let pushed = self.push_outbox(connection, &call, &outbox, catch_up).await;
        let now = self.clock.now();
        let erased = record.erased_at.is_some();
        let refused_erasure =
            |stop: &Stop| erased && matches!(stop, Stop::Answer(DeliveryOutcome::Reject { .. }));
        let stopped_at = pushed.stopped_at;
        let mut waited: Option<Waiting> = None;
        let mut record = record;
        let stopped_revision = stopped_at.as_ref().map(|(d, _)| d.revision);
        if pushed.delivered_up_to.is_some() || stopped_at.is_some() {
            record = self
                .store
                .update(&call, &mut |record| {
                    let mut changed = false;
                    if let Some(revision) = pushed.delivered_up_to {
                        let waiting = record.outbox.len();
                        record.mark_delivered(revision);
                        changed |= record.outbox.len() != waiting;
                    }
                    waited = None;
                    match (&stopped_at, stopped_revision) {
                        (Some((_, stop)), Some(revision)) if refused_erasure(stop) => {
                            changed |= record.drop_refused(revision);
                        }
                        (
                            Some((_, Stop::Answer(DeliveryOutcome::Retry { .. }))),
                            Some(revision),
                        ) => {
                            waited = record.note_failed(revision, now);
                            changed |= waited.is_some();
                        }
                        (Some((_, Stop::Held { .. })), Some(revision)) => {
                            if let Some((waiting, first)) = record.note_held(revision, now) {
                                waited = Some(waiting);
                                changed |= first;
                            }
                        }
                        _ => {}
                    }
                    changed
                })
                .await?
                .record;
        }
        let stopped = match stopped_at {
            None => None,
            Some((delivery, stop)) if refused_erasure(&stop) => {
                if let Stop::Answer(DeliveryOutcome::Reject { status, .. }) = stop {
                    tracing::warn!(resource_id = %delivery.resource_id, revision = delivery.revision, status, "the CRM refused the deletion of an erased call: the call is forgotten all the same");
                }
                None
            }
            Some((delivery, stop)) => {
                let failure = self.failure(&delivery, stop, waited, now);
                Some((delivery, failure))
            }
        };
        Ok(Delivered {
            up_to: pushed.delivered_up_to,
            record,
            stopped,
        })
    }

    /// What a stop means for the call: a wait until the next try or probe, or parked (a
    /// refusal, an uncertain create, or the horizon past). Past the horizon the delivery keeps
    /// how long it has waited: the call's later messages, and a redrive while the CRM still
    /// fails, are parked after one more try rather than given another horizon; once the CRM
    /// takes it, the call goes on.
    fn failure(
        &self,
        delivery: &Delivery,
        stop: Stop,
        waited: Option<Waiting>,
        now: Timestamp,
    ) -> Failure {
        let (reason, retry_after, until) = match stop {
            Stop::Unavailable(e) => return Failure::retry(e),
            Stop::Held { until } => {
                self.telemetry.held();
                let until = until.max(now.saturating_add(self.waits.hold_at_least));
                (
                    format!(
                        "the CRM destination's breaker is open: {} is held back",
                        delivery.idempotency_key
                    ),
                    None,
                    Some(until),
                )
            }
            Stop::Answer(outcome) => match Failure::of_delivery(delivery, outcome) {
                Failure::Retry {
                    reason,
                    retry_after,
                } => (reason, retry_after, None),
                settled => return settled,
            },
        };
        // The store lost the revision meanwhile (delivered by another worker): try at once.
        let Some(waiting) = waited else {
            return Failure::Wait { reason, until: now };
        };
        let stopped_by_failure = until.is_none();
        let next = match until {
            Some(until) if until <= self.horizon_end(waiting) => NextTry::At(until),
            Some(_) => NextTry::Park {
                ended: self.horizon_end(waiting),
            },
            None => self.waits.schedule.next_try(
                waiting.since,
                waiting.failed_attempts,
                now,
                retry_after,
                self.waits.jitter(),
            ),
        };
        match next {
            NextTry::At(until) => {
                if stopped_by_failure {
                    self.telemetry.retried();
                }
                Failure::Wait { reason, until }
            }
            NextTry::Park { ended } => Failure::Park {
                reason: format!(
                    "tried since {} until the retry horizon ended at {}: {reason}",
                    waiting.since, ended
                ),
                crm_status: None,
                crm_answer: None,
            },
        }
    }

    fn horizon_end(&self, waiting: Waiting) -> Timestamp {
        waiting.since.saturating_add(self.waits.schedule.horizon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::MemoryStore;
    use crate::domain::event::Provider;
    use crate::domain::resource::MorphEventType;
    use crate::domain::time::Timestamp;
    use crate::engine::breaker::BreakerSettings;
    use crate::engine::destination::MemoryBreakers;
    use crate::engine::rate_limit::RateLimit;
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
                } else if Some(&revision) == revisions.first() {
                    MorphEventType::Created
                } else {
                    MorphEventType::Updated
                },
                idempotency_key: format!("{}-r{revision}", record.resource_id),
                body: serde_json::Value::Null,
                closed: None,
                received_at: None,
                attempted: false,
                waiting: None,
            });
        }
        store.save(&record, None).await.unwrap();
        record
    }

    fn destinations() -> Destinations {
        Destinations::new(
            Arc::new(MemoryBreakers::default()),
            BreakerSettings::default(),
            RateLimit {
                per_second: 1e6,
                burst: 1_000,
            },
            Telemetry::new(Arc::new(InMemoryMetrics::default())),
        )
    }

    async fn deliver_with(
        crm: &Scripted,
        store: &MemoryStore,
        destinations: &Destinations,
        waits: &Waits,
        record: CallRecord,
        after: u64,
    ) -> Delivered {
        let connection = crate::config::test_connection("").unwrap();
        let telemetry = Telemetry::new(Arc::new(InMemoryMetrics::default()));
        Deliverer {
            crm,
            store,
            clock: &SetClock,
            destinations,
            waits,
            telemetry: &telemetry,
        }
        .deliver_outbox(&connection, record, after)
        .await
        .unwrap()
    }

    async fn deliver(
        crm: &Scripted,
        store: &MemoryStore,
        record: CallRecord,
        after: u64,
    ) -> Delivered {
        let waits = Waits::aws(RetrySchedule::default(), Duration::from_secs(30));
        deliver_with(crm, store, &destinations(), &waits, record, after).await
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

    fn unavailable() -> DeliveryOutcome {
        DeliveryOutcome::Retry {
            reason: "HTTP 503".into(),
            retry_after: None,
        }
    }

    fn seconds_after(at: Timestamp, seconds: f64) -> Timestamp {
        Timestamp::from_micros(at.as_micros() + (seconds * 1e6) as i64).unwrap()
    }

    #[tokio::test]
    async fn a_failure_retrying_can_fix_waits_on_the_schedule_counted_in_the_record() {
        let store = MemoryStore::default();
        let record = waiting(&store, &[1], MorphEventType::Created).await;
        let crm = Scripted::new(vec![unavailable(), unavailable()]);
        let first = deliver(&crm, &store, record, 0).await;
        let (_, failure) = first.stopped.expect("stopped");
        // The whole first wait of the schedule: 250 ms after the failure.
        assert!(
            matches!(failure, Failure::Wait { until, .. } if until == seconds_after(SetClock.now(), 0.25)),
            "{failure:?}"
        );
        let kept = store.records()[0].outbox[0].clone();
        assert!(kept.attempted);
        assert_eq!(
            kept.waiting,
            Some(Waiting {
                since: SetClock.now(),
                failed_attempts: 1
            })
        );
        let second = deliver(&crm, &store, store.records()[0].clone(), 0).await;
        let (_, failure) = second.stopped.expect("stopped");
        assert!(
            matches!(failure, Failure::Wait { until, .. } if until == seconds_after(SetClock.now(), 0.5)),
            "the second wait doubles: {failure:?}"
        );
    }

    #[tokio::test]
    async fn past_the_horizon_it_is_parked_and_parked_again_at_once_until_the_crm_takes_it() {
        let store = MemoryStore::default();
        let mut record = waiting(&store, &[1], MorphEventType::Created).await;
        // Failing since 71 h 58 min: the next whole wait (5 min) falls past 72 h.
        let since = seconds_after(SetClock.now(), -(71.0 * 3600.0 + 58.0 * 60.0));
        record.outbox[0].waiting = Some(Waiting {
            since,
            failed_attempts: 800,
        });
        let version = store.load(&record.key).await.unwrap().unwrap().1;
        store.save(&record, Some(version)).await.unwrap();
        let crm = Scripted::new(vec![
            unavailable(),
            unavailable(),
            DeliveryOutcome::Delivered,
        ]);
        let parked_past_horizon = |delivered: &Delivered| matches!(&delivered.stopped, Some((_, Failure::Park { reason, .. })) if reason.contains("retry horizon"));
        let delivered = deliver(&crm, &store, record, 0).await;
        assert!(parked_past_horizon(&delivered), "{:?}", delivered.stopped);
        // A later message of the call, or a redrive while the CRM still fails: one more try,
        // parked again, not another 72 hours.
        let again = deliver(&crm, &store, store.records()[0].clone(), 0).await;
        assert!(parked_past_horizon(&again), "{:?}", again.stopped);
        let kept = &store.records()[0].outbox[0];
        assert_eq!(kept.waiting.unwrap().since, since);
        // The CRM back: the call goes on.
        let through = deliver(&crm, &store, store.records()[0].clone(), 0).await;
        assert_eq!(through.up_to, Some(1));
        assert!(stored_outbox(&store).is_empty());
    }

    #[tokio::test]
    async fn an_open_breaker_holds_every_call_without_sending_until_its_probe() {
        let store = MemoryStore::default();
        let destinations = destinations();
        let waits = Waits::local(RetrySchedule::default(), Duration::from_secs(30));
        let crm = Scripted::new(vec![unavailable(); 5]);
        // Five calls failing once each open the breaker of their one destination.
        for call in 0..5 {
            let mut record = CallRecord::new(CallKey::new(
                "acme",
                Provider::Telsmart,
                &format!("call-{call}"),
            ));
            record.outbox = waiting(&MemoryStore::default(), &[1], MorphEventType::Created)
                .await
                .outbox;
            store.save(&record, None).await.unwrap();
            deliver_with(&crm, &store, &destinations, &waits, record, 0).await;
        }
        let mut sixth = CallRecord::new(CallKey::new("acme", Provider::Telsmart, "call-5"));
        sixth.outbox = waiting(&MemoryStore::default(), &[1], MorphEventType::Created)
            .await
            .outbox;
        store.save(&sixth, None).await.unwrap();
        let held = deliver_with(&crm, &store, &destinations, &waits, sixth.clone(), 0).await;
        assert_eq!(
            crm.got.lock().unwrap().len(),
            5,
            "the sixth call sends nothing"
        );
        let (_, failure) = held.stopped.expect("held");
        assert!(
            matches!(failure, Failure::Wait { until, .. } if until == seconds_after(SetClock.now(), 30.0)),
            "held until the probe: {failure:?}"
        );
        let kept = store.load(&sixth.key).await.unwrap().unwrap().0;
        assert_eq!(
            kept.outbox[0].waiting,
            Some(Waiting {
                since: SetClock.now(),
                failed_attempts: 0
            }),
            "the horizon counts from the first hold"
        );
        assert!(
            !kept.outbox[0].attempted,
            "never sent: it may be superseded"
        );
        // On AWS a held message comes back once per cap at most.
        let aws = deliver_with(
            &crm,
            &store,
            &destinations,
            &Waits::aws(RetrySchedule::default(), Duration::from_secs(30)),
            kept,
            0,
        )
        .await;
        assert!(
            matches!(aws.stopped, Some((_, Failure::Wait { until, .. })) if until == seconds_after(SetClock.now(), 300.0))
        );
    }

    #[tokio::test]
    async fn a_call_catching_up_sends_its_created_and_its_latest_state_only() {
        let store = MemoryStore::default();
        let mut record = waiting(&store, &[1, 2, 3, 4], MorphEventType::Updated).await;
        // Held back by an open breaker for the probe interval: catching up.
        record.outbox[0].waiting = Some(Waiting {
            since: seconds_after(SetClock.now(), -30.0),
            failed_attempts: 0,
        });
        let version = store.load(&record.key).await.unwrap().unwrap().1;
        store.save(&record, Some(version)).await.unwrap();
        let crm = Scripted::new(vec![DeliveryOutcome::Delivered; 2]);
        let delivered = deliver(&crm, &store, record, 0).await;
        assert_eq!(*crm.got.lock().unwrap(), [1, 4]);
        assert_eq!(delivered.up_to, Some(4));
        assert!(
            stored_outbox(&store).is_empty(),
            "the superseded ones are dropped"
        );
    }
}
