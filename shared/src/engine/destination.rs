//! What a CRM destination lets through, asked before every delivery of both hosts (issue 11):
//! its circuit breaker ([`super::breaker`]), whose state a [`BreakerStore`] keeps (in memory
//! locally; one small DynamoDB item per destination on AWS, shared by every worker), then its
//! rate limit ([`super::rate_limit`]), kept per process. The decisions are the pure modules';
//! this one reads, decides and writes them back, conditionally, once for both hosts.

use super::breaker::{Answer, Breaker, BreakerEvent, BreakerSettings, Permit};
use super::rate_limit::{Limiter, Pace, RateLimit};
use crate::domain::time::Timestamp;
use crate::ports::{Clock, DeliveryOutcome};
use crate::telemetry::Telemetry;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Where each destination's breaker is kept, versioned like a call's record.
#[async_trait]
pub trait BreakerStore: Send + Sync {
    /// The breaker of `destination` and the version read (`None`: never written, which reads
    /// as closed with no failure).
    async fn load(&self, destination: &str) -> anyhow::Result<(Breaker, Option<u64>)>;
    /// Writes `breaker` if the version is still `read`; `Ok(false)`: another writer was first.
    async fn save(
        &self,
        destination: &str,
        breaker: &Breaker,
        read: Option<u64>,
    ) -> anyhow::Result<bool>;
}

/// Reads, decisions and conditional writes of one breaker before giving up: many workers
/// deciding at once on one destination all get through within a few.
const MAX_CONFLICTS: usize = 16;

/// May a delivery go?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Send it, under this permit (give it back with the answer to [`Destinations::answered`]).
    Send(Permit),
    /// The destination's breaker is open: send nothing before `until`, the next probe.
    Hold { until: Timestamp },
}

/// The closings of one destination's breaker this process has seen, and their signal.
#[derive(Default)]
struct Closings {
    count: AtomicU64,
    signal: Notify,
}

/// The destinations' breakers and rate limits, shared by every delivery of a process.
pub struct Destinations {
    breakers: Arc<dyn BreakerStore>,
    settings: BreakerSettings,
    rate: RateLimit,
    limiters: Mutex<HashMap<String, Limiter>>,
    /// Woken when this process sees a destination's breaker close, so that the deliveries
    /// waiting on it go at once rather than at their next try.
    closed: Mutex<HashMap<String, Arc<Closings>>>,
    telemetry: Telemetry,
}

impl Destinations {
    pub fn new(
        breakers: Arc<dyn BreakerStore>,
        settings: BreakerSettings,
        rate: RateLimit,
        telemetry: Telemetry,
    ) -> Self {
        Self {
            breakers,
            settings,
            rate,
            limiters: Mutex::default(),
            closed: Mutex::default(),
            telemetry,
        }
    }

    /// The same destinations, counting their breakers' openings and closings into `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Whether a delivery to `destination` may go now; when it may and is `paced` (a call
    /// catching up after an outage), it waits its turn under the rate limit first. Live calls
    /// are not paced: an incoming call's popup does not queue behind a catch-up.
    pub async fn admit(
        &self,
        destination: &str,
        paced: bool,
        clock: &dyn Clock,
    ) -> anyhow::Result<Admission> {
        let permit = self
            .change(destination, clock, |breaker, now| {
                let permit = breaker.permit(&self.settings, now);
                (permit, None)
            })
            .await?;
        if let Permit::Wait { until } = permit {
            return Ok(Admission::Hold { until });
        }
        if !paced {
            return Ok(Admission::Send(permit));
        }
        loop {
            let now = clock.now();
            let pace = self
                .limiters
                .lock()
                .expect("limiters lock")
                .entry(destination.to_owned())
                .or_default()
                .take(&self.rate, now);
            match pace {
                Pace::Go => return Ok(Admission::Send(permit)),
                Pace::Wait { until } => tokio::time::sleep(now.until(until)).await,
            }
        }
    }

    /// Takes what the CRM made of a delivery sent under `permit`: a failure retrying can fix
    /// counts towards opening the breaker, any other answer shows the CRM is up.
    pub async fn answered(
        &self,
        destination: &str,
        permit: Permit,
        outcome: &DeliveryOutcome,
        clock: &dyn Clock,
    ) -> anyhow::Result<()> {
        let answer = match outcome {
            DeliveryOutcome::Delivered | DeliveryOutcome::Reject { .. } => Answer::Answered,
            DeliveryOutcome::Retry { .. } | DeliveryOutcome::Uncertain { .. } => Answer::Failed,
        };
        self.change(destination, clock, |breaker, now| {
            let (_, event) = breaker.record(&self.settings, permit, answer, now);
            ((), event)
        })
        .await
    }

    /// How many times this process has seen `destination`'s breaker close: read it before
    /// delivering, and give it to [`Destinations::wait`].
    pub fn closings(&self, destination: &str) -> u64 {
        self.closings_of(destination).count.load(Ordering::SeqCst)
    }

    /// Waits until `until`, or until this process sees `destination`'s breaker close, or has
    /// seen it close since it counted `seen` closings ([`Destinations::closings`]): a delivery
    /// held back just as another call's probe closed the breaker goes at once too.
    pub async fn wait(&self, destination: &str, until: Timestamp, seen: u64, clock: &dyn Clock) {
        let closings = self.closings_of(destination);
        let closed = closings.signal.notified();
        tokio::pin!(closed);
        // Listening from here on, then looking: a closing in between is not missed.
        closed.as_mut().enable();
        if closings.count.load(Ordering::SeqCst) != seen {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(clock.now().until(until)) => {}
            () = closed => {}
        }
    }

    /// Reads the breaker, lets `decide` change it, and writes it back if it changed, again
    /// from a fresh read when another writer was first; reports an opening or a closing.
    async fn change<T>(
        &self,
        destination: &str,
        clock: &dyn Clock,
        decide: impl Fn(&mut Breaker, Timestamp) -> (T, Option<BreakerEvent>),
    ) -> anyhow::Result<T> {
        for _ in 0..MAX_CONFLICTS {
            let (mut breaker, version) = self.breakers.load(destination).await?;
            let before = breaker;
            let (decided, event) = decide(&mut breaker, clock.now());
            if breaker == before || self.breakers.save(destination, &breaker, version).await? {
                if let Some(event) = event {
                    self.report(destination, event);
                }
                return Ok(decided);
            }
        }
        anyhow::bail!("the breaker of CRM destination {destination} kept changing under us")
    }

    fn report(&self, destination: &str, event: BreakerEvent) {
        match event {
            BreakerEvent::Opened { .. } => {
                tracing::warn!(
                    destination,
                    open_after = self.settings.open_after,
                    probe_every_s = self.settings.probe_every.as_secs(),
                    "CRM destination failing: breaker opened; its deliveries wait, one probe at a time"
                );
                self.telemetry.breaker_opened();
            }
            BreakerEvent::Closed { open_for, .. } => {
                tracing::info!(
                    destination,
                    open_for_s = open_for.as_secs(),
                    "CRM destination answered: breaker closed; its deliveries resume"
                );
                self.telemetry.breaker_closed(open_for);
                let closings = self.closings_of(destination);
                closings.count.fetch_add(1, Ordering::SeqCst);
                closings.signal.notify_waiters();
            }
        }
    }

    fn closings_of(&self, destination: &str) -> Arc<Closings> {
        Arc::clone(
            self.closed
                .lock()
                .expect("closings lock")
                .entry(destination.to_owned())
                .or_default(),
        )
    }
}

/// Breakers in this process's memory: the local server's store, and the tests'.
#[derive(Default)]
pub struct MemoryBreakers {
    breakers: Mutex<HashMap<String, (Breaker, u64)>>,
}

#[async_trait]
impl BreakerStore for MemoryBreakers {
    async fn load(&self, destination: &str) -> anyhow::Result<(Breaker, Option<u64>)> {
        let breakers = self.breakers.lock().expect("breakers lock");
        Ok(match breakers.get(destination) {
            Some((breaker, version)) => (*breaker, Some(*version)),
            None => (Breaker::default(), None),
        })
    }

    async fn save(
        &self,
        destination: &str,
        breaker: &Breaker,
        read: Option<u64>,
    ) -> anyhow::Result<bool> {
        let mut breakers = self.breakers.lock().expect("breakers lock");
        let current = breakers.get(destination).map(|(_, version)| *version);
        if current != read {
            return Ok(false);
        }
        breakers.insert(destination.to_owned(), (*breaker, read.unwrap_or(0) + 1));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::InMemoryMetrics;
    use std::time::Duration;

    /// A clock the test moves.
    struct Manual(Mutex<Timestamp>);

    impl Manual {
        fn at(seconds: i64) -> Self {
            Self(Mutex::new(instant(seconds)))
        }
        fn set(&self, seconds: i64) {
            *self.0.lock().unwrap() = instant(seconds);
        }
    }

    impl Clock for Manual {
        fn now(&self) -> Timestamp {
            *self.0.lock().unwrap()
        }
    }

    fn instant(seconds: i64) -> Timestamp {
        Timestamp::from_micros(1_765_209_600_000_000 + seconds * 1_000_000).unwrap()
    }

    /// Destinations over `breakers`, the default breaker, pacing at `rate`.
    fn over(breakers: Arc<MemoryBreakers>, rate: RateLimit) -> Destinations {
        Destinations::new(
            breakers,
            BreakerSettings::default(),
            rate,
            Telemetry::new(Arc::new(InMemoryMetrics::default())),
        )
    }

    fn destinations() -> Destinations {
        let unpaced = RateLimit {
            per_second: 1_000_000.0,
            burst: 1_000,
        };
        over(Arc::default(), unpaced)
    }

    fn down() -> DeliveryOutcome {
        DeliveryOutcome::Retry {
            reason: "HTTP 503".into(),
            retry_after: None,
        }
    }

    #[tokio::test]
    async fn five_failures_hold_every_delivery_until_one_probe_closes_it() {
        let (d, clock) = (destinations(), Manual::at(0));
        for _ in 0..5 {
            let Admission::Send(permit) = d.admit("crm", true, &clock).await.unwrap() else {
                panic!("closed: sent");
            };
            d.answered("crm", permit, &down(), &clock).await.unwrap();
        }
        assert_eq!(
            d.admit("crm", true, &clock).await.unwrap(),
            Admission::Hold { until: instant(30) }
        );
        assert_eq!(
            d.admit("other-crm", true, &clock).await.unwrap(),
            Admission::Send(Permit::Send),
            "another destination keeps flowing"
        );
        clock.set(30);
        assert_eq!(
            d.admit("crm", true, &clock).await.unwrap(),
            Admission::Send(Permit::Probe)
        );
        assert_eq!(
            d.admit("crm", true, &clock).await.unwrap(),
            Admission::Hold { until: instant(60) },
            "one probe at a time"
        );
        d.answered("crm", Permit::Probe, &DeliveryOutcome::Delivered, &clock)
            .await
            .unwrap();
        assert_eq!(
            d.admit("crm", true, &clock).await.unwrap(),
            Admission::Send(Permit::Send)
        );
    }

    #[tokio::test]
    async fn a_closing_wakes_the_deliveries_waiting_on_it() {
        let (d, clock) = (Arc::new(destinations()), Arc::new(Manual::at(0)));
        for _ in 0..5 {
            d.answered("crm", Permit::Send, &down(), &*clock)
                .await
                .unwrap();
        }
        let waiting = {
            let (d, clock) = (Arc::clone(&d), Arc::clone(&clock));
            // A wait of an hour, cut short by the closing.
            let seen = d.closings("crm");
            tokio::spawn(async move { d.wait("crm", instant(3600), seen, &*clock).await })
        };
        tokio::task::yield_now().await;
        d.answered("crm", Permit::Probe, &DeliveryOutcome::Delivered, &*clock)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the closing")
            .unwrap();
    }

    #[tokio::test]
    async fn a_closing_between_the_hold_and_the_wait_is_not_missed() {
        let (d, clock) = (destinations(), Manual::at(0));
        for _ in 0..5 {
            d.answered("crm", Permit::Send, &down(), &clock)
                .await
                .unwrap();
        }
        let seen = d.closings("crm");
        assert!(matches!(
            d.admit("crm", false, &clock).await.unwrap(),
            Admission::Hold { .. }
        ));
        // Another call's probe goes through before this one starts waiting.
        d.answered("crm", Permit::Probe, &DeliveryOutcome::Delivered, &clock)
            .await
            .unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            d.wait("crm", instant(3600), seen, &clock),
        )
        .await
        .expect("an hour's wait cut short by the closing it would have missed");
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_the_requests_past_the_burst() {
        let d = over(
            Arc::default(),
            RateLimit {
                per_second: 50.0,
                burst: 2,
            },
        );
        let clock = crate::adapters::clock::SystemClock;
        let started = std::time::Instant::now();
        for _ in 0..4 {
            d.admit("crm", true, &clock).await.unwrap();
        }
        // Two at once, then one every 20 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(35),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_rival_writer_is_read_again_and_only_one_takes_the_probe() {
        let store = Arc::new(MemoryBreakers::default());
        let (a, b) = (
            over(store.clone(), RateLimit::default()),
            over(store, RateLimit::default()),
        );
        let clock = Manual::at(0);
        for _ in 0..5 {
            a.answered("crm", Permit::Send, &down(), &clock)
                .await
                .unwrap();
        }
        clock.set(31);
        let admitted = [
            a.admit("crm", true, &clock).await.unwrap(),
            b.admit("crm", true, &clock).await.unwrap(),
        ];
        assert_eq!(
            admitted,
            [
                Admission::Send(Permit::Probe),
                Admission::Hold { until: instant(61) }
            ]
        );
    }
}
