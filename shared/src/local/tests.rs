//! The runtime end to end over a real store, with a scripted CRM.

use super::{LocalRuntime, Settings};
use crate::adapters::config_directory::ConfigDirectory;
use crate::adapters::contact_http::HttpContactLookup;
use crate::adapters::sqlite::SqliteStore;
use crate::domain::connection::Connection;
use crate::domain::event::{CallEvent, EventKind, Provider};
use crate::domain::record::{CallKey, Delivery};
use crate::domain::resource::MorphEventType;
use crate::domain::time::Timestamp;
use crate::pipeline::delivery::RetryPolicy;
use crate::pipeline::worker::apply;
use crate::ports::{CallStore, Crm, DeliveryOutcome, Queue, QueuedWebhook};
use crate::telemetry::{
    DELIVERIES, DELIVERIES_PARKED, DELIVERY_LATENCY, EVENTS_APPLIED, EVENTS_DEDUPLICATED,
    InMemoryMetrics, RETRIES, Telemetry,
};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn connection() -> Connection {
    crate::config::test_connection("").unwrap()
}

fn resource(call: &str) -> String {
    CallKey::new("acme", Provider::Telsmart, call).resource_id()
}

/// The `n`-th event of `call`, `n` seconds into it.
fn webhook(call: &str, n: i64, kind: EventKind) -> QueuedWebhook {
    let at = Timestamp::from_micros(1_700_000_000_000_000 + n * 1_000_000).unwrap();
    let mut event = CallEvent::new(Provider::Telsmart, call, at, kind);
    event.id = format!("{call}-{n}");
    event.external_number = Some("+3228992675".into());
    QueuedWebhook {
        connection_id: "acme".into(),
        received_at: at,
        event,
        raw: serde_json::json!({}),
    }
}

/// Ringing, answered, ended: three revisions of the call.
fn whole_call(call: &str) -> [QueuedWebhook; 3] {
    [
        webhook(call, 1, EventKind::Ringing),
        webhook(call, 2, EventKind::Answered),
        webhook(call, 3, EventKind::Ended(Default::default())),
    ]
}

struct Attempt {
    delivery: Delivery,
    outcome: DeliveryOutcome,
}

/// A CRM that answers each resource from a script (then takes everything) and records every
/// attempt.
#[derive(Default)]
struct ScriptedCrm {
    script: Mutex<HashMap<String, VecDeque<DeliveryOutcome>>>,
    attempts: Mutex<Vec<Attempt>>,
}

impl ScriptedCrm {
    fn answering(call: &str, outcomes: impl IntoIterator<Item = DeliveryOutcome>) -> Self {
        let crm = Self::default();
        crm.script
            .lock()
            .unwrap()
            .insert(resource(call), outcomes.into_iter().collect());
        crm
    }

    /// The idempotency keys sent for `call`, every attempt.
    fn attempted(&self, call: &str) -> Vec<String> {
        self.select(call, |_| true)
    }

    fn delivered(&self, call: &str) -> Vec<String> {
        self.select(call, |outcome| *outcome == DeliveryOutcome::Delivered)
    }

    fn select(&self, call: &str, keep: impl Fn(&DeliveryOutcome) -> bool) -> Vec<String> {
        let resource = resource(call);
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.delivery.resource_id == resource && keep(&a.outcome))
            .map(|a| a.delivery.idempotency_key.clone())
            .collect()
    }
}

#[async_trait]
impl Crm for ScriptedCrm {
    async fn deliver(&self, _: &Connection, delivery: &Delivery) -> DeliveryOutcome {
        let outcome = self
            .script
            .lock()
            .unwrap()
            .get_mut(&delivery.resource_id)
            .and_then(VecDeque::pop_front)
            .unwrap_or(DeliveryOutcome::Delivered);
        self.attempts.lock().unwrap().push(Attempt {
            delivery: delivery.clone(),
            outcome: outcome.clone(),
        });
        outcome
    }
}

/// `{resource}-r1` .. `{resource}-r{n}`.
fn keys(call: &str, revisions: impl IntoIterator<Item = u64>) -> Vec<String> {
    revisions
        .into_iter()
        .map(|r| format!("{}-r{r}", resource(call)))
        .collect()
}

fn retry_soon() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial: Duration::from_millis(1),
        max: Duration::from_millis(10),
    }
}

fn retry_in_an_hour() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
    }
}

fn retry(reason: &str) -> DeliveryOutcome {
    DeliveryOutcome::Retry {
        reason: reason.into(),
        retry_after: None,
    }
}

/// Waits until `done` holds; fails the test after 10 s.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Bridge {
    store: Arc<SqliteStore>,
    crm: Arc<ScriptedCrm>,
    metrics: Arc<InMemoryMetrics>,
    _dir: tempfile::TempDir,
}

impl Bridge {
    async fn new(crm: ScriptedCrm) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("callbridge.db"))
            .await
            .unwrap();
        Self {
            store: Arc::new(store),
            crm: Arc::new(crm),
            metrics: Arc::default(),
            _dir: dir,
        }
    }

    /// Starts the runtime; with an hour between polls, only wake-ups (and the look at start)
    /// move anything.
    fn start(&self, retry: RetryPolicy, poll_interval: Duration) -> LocalRuntime {
        LocalRuntime::start(
            Arc::clone(&self.store),
            Arc::new(ConfigDirectory::new([connection()])),
            Arc::clone(&self.crm) as Arc<dyn Crm>,
            Settings {
                retry,
                poll_interval,
            },
            Telemetry::new(Arc::clone(&self.metrics) as _),
        )
    }

    fn counted(&self, name: &str, dimensions: &[(&str, &str)]) -> f64 {
        self.metrics.total(name, dimensions)
    }

    async fn enqueue(&self, webhooks: impl IntoIterator<Item = QueuedWebhook>) {
        for webhook in webhooks {
            self.store.enqueue(&webhook).await.unwrap();
        }
    }

    async fn delivered(&self, call: &str, revisions: impl IntoIterator<Item = u64> + Clone) {
        let expected = keys(call, revisions);
        eventually(&format!("{call} is delivered"), async || {
            self.crm.delivered(call) == expected
        })
        .await;
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn retries_then_delivers_in_order_under_the_same_key() {
    let crm = ScriptedCrm::answering(
        "c1",
        [
            retry("HTTP 503"),
            DeliveryOutcome::Retry {
                reason: "HTTP 429".into(),
                retry_after: Some(Duration::from_millis(2)),
            },
        ],
    );
    let bridge = Bridge::new(crm).await;
    let runtime = bridge.start(retry_soon(), HOUR);

    bridge.enqueue(whole_call("c1")).await;

    bridge.delivered("c1", 1..=3).await;
    assert_eq!(bridge.crm.attempted("c1"), keys("c1", [1, 1, 1, 2, 3]));
    let retries_are_identical = {
        let attempts = bridge.crm.attempts.lock().unwrap();
        attempts[..3]
            .iter()
            .all(|a| a.delivery == attempts[0].delivery)
    };
    assert!(retries_are_identical, "every retry sends the same bytes");
    eventually("the deliveries are recorded", async || {
        bridge.store.health().await.unwrap().undelivered_calls == 0
    })
    .await;
    runtime.stop().await;
    let telsmart = [("Provider", "telsmart")];
    assert_eq!(bridge.counted(EVENTS_APPLIED, &telsmart), 3.0);
    assert_eq!(bridge.counted(DELIVERIES, &[("Outcome", "retry")]), 2.0);
    assert_eq!(bridge.counted(DELIVERIES, &[("Outcome", "delivered")]), 3.0);
    assert_eq!(bridge.counted(RETRIES, &[]), 2.0);
    assert_eq!(bridge.metrics.snapshot()[DELIVERY_LATENCY].count, 3);
}

#[tokio::test]
async fn a_refused_delivery_is_parked_and_holds_up_only_its_call() {
    let refusal = DeliveryOutcome::Reject {
        status: 422,
        body: "{\"error\":\"unknown owner\"}".into(),
    };
    let bridge = Bridge::new(ScriptedCrm::answering("c1", [refusal])).await;
    let runtime = bridge.start(retry_soon(), Duration::from_millis(20));

    bridge.enqueue(whole_call("c1")).await;
    bridge.enqueue(whole_call("c2")).await;

    bridge.delivered("c2", 1..=3).await;
    eventually("c1 is parked and the queue is empty", async || {
        let health = bridge.store.health().await.unwrap();
        health.parked == 1 && health.queued == 0
    })
    .await;
    let parked = bridge.store.parked_deliveries().await.unwrap();
    assert_eq!((parked[0].revision, parked[0].crm_status), (1, Some(422)));
    assert_eq!(
        parked[0].crm_answer.as_deref(),
        Some("{\"error\":\"unknown owner\"}")
    );
    assert_eq!(bridge.crm.attempted("c1"), keys("c1", [1]));
    assert_eq!(bridge.counted(DELIVERIES, &[("Outcome", "refused")]), 1.0);
    assert_eq!(bridge.counted(DELIVERIES_PARKED, &[]), 1.0);

    // Un-parked, the call goes out in order from the delivery it was held at.
    assert_eq!(bridge.store.unpark(Some(&resource("c1"))).await.unwrap(), 1);
    bridge.delivered("c1", 1..=3).await;
    assert_eq!(bridge.crm.attempted("c1"), keys("c1", [1, 1, 2, 3]));
    runtime.stop().await;
}

#[tokio::test]
async fn other_calls_flow_while_one_call_waits_to_retry() {
    let bridge = Bridge::new(ScriptedCrm::answering("c1", [retry("timed out")])).await;
    let runtime = bridge.start(retry_in_an_hour(), HOUR);

    let [ringing, answered, ended] = whole_call("c1");
    bridge.enqueue([ringing]).await;
    eventually("c1 was attempted", async || {
        !bridge.crm.attempted("c1").is_empty()
    })
    .await;
    bridge.enqueue([answered, ended]).await;
    bridge.enqueue(whole_call("c2")).await;

    bridge.delivered("c2", 1..=3).await;
    eventually("c1's later events are applied", async || {
        bridge.store.health().await.unwrap().queued == 0
    })
    .await;
    assert_eq!(bridge.crm.attempted("c1"), keys("c1", [1]));
    runtime.stop().await;
}

#[tokio::test]
async fn what_a_crash_left_is_done_on_start() {
    let bridge = Bridge::new(ScriptedCrm::default()).await;
    // c1 was queued and never applied; c2 was applied and never delivered.
    bridge.enqueue(whole_call("c1")).await;
    let [ringing, ..] = whole_call("c2");
    apply(
        &*bridge.store,
        &connection(),
        &HttpContactLookup::default(),
        &ringing,
    )
    .await
    .unwrap();

    let runtime = bridge.start(retry_soon(), HOUR);

    bridge.delivered("c1", 1..=3).await;
    bridge.delivered("c2", [1]).await;
    runtime.stop().await;
}

/// An operator's erasure, as `callbridge calls erase` queues it.
fn erasure(call: &str) -> QueuedWebhook {
    let at = Timestamp::from_micros(1_700_000_100_000_000).unwrap();
    let mut event = CallEvent::new(Provider::Telsmart, call, at, EventKind::Erased);
    event.id = format!("erase-{call}");
    QueuedWebhook {
        connection_id: "acme".into(),
        received_at: at,
        event,
        raw: serde_json::Value::Null,
    }
}

#[tokio::test]
async fn an_erased_call_is_deleted_then_forgotten_and_stays_erased() {
    let bridge = Bridge::new(ScriptedCrm::default()).await;
    let runtime = bridge.start(retry_soon(), HOUR);
    bridge.enqueue(whole_call("c1")).await;
    bridge.delivered("c1", 1..=3).await;

    bridge.enqueue([erasure("c1")]).await;
    bridge.delivered("c1", 1..=4).await;
    let key = CallKey::new("acme", Provider::Telsmart, "c1");
    eventually("only the tombstone is left", async || {
        let record = bridge.store.load(&key).await.unwrap().unwrap().0;
        record.outbox.is_empty() && record.events.is_empty()
    })
    .await;
    let attempts = bridge.crm.attempts.lock().unwrap().len();
    assert_eq!(
        bridge.crm.attempts.lock().unwrap()[attempts - 1]
            .delivery
            .event,
        MorphEventType::Deleted
    );

    // A late webhook, and a repeat of an old one, bring nothing back.
    bridge
        .enqueue([
            webhook("c1", 9, EventKind::Answered),
            whole_call("c1")[0].clone(),
        ])
        .await;
    eventually("the late webhooks are applied", async || {
        bridge.store.health().await.unwrap().queued == 0
    })
    .await;
    runtime.stop().await;
    let (tombstone, _) = bridge.store.load(&key).await.unwrap().unwrap();
    assert!(tombstone.events.is_empty() && tombstone.resource.is_none());
    assert_eq!((tombstone.revision, tombstone.deleted), (4, true));
    assert_eq!(bridge.crm.attempted("c1").len(), 4);
    assert_eq!(
        bridge.counted(EVENTS_DEDUPLICATED, &[("Provider", "telsmart")]),
        2.0
    );
}
