//! A provider's text cannot forge a line of the local server's log (issue 13, Low;
//! `docs/security.md`, "Logs and configuration"): a Telsmart call `id` holding a newline goes
//! through the worker and the delivery task, whose lines name the call, and every line logged
//! (at TRACE, in the text format `callbridge serve` writes) is one of ours.

use async_trait::async_trait;
use callbridge_shared::adapters::config_directory::ConfigDirectory;
use callbridge_shared::adapters::sqlite::SqliteStore;
use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::{CallEvent, EventKind, Provider};
use callbridge_shared::domain::record::{CallKey, Delivery};
use callbridge_shared::domain::time::Timestamp;
use callbridge_shared::engine::breaker::BreakerSettings;
use callbridge_shared::engine::rate_limit::RateLimit;
use callbridge_shared::engine::schedule::RetrySchedule;
use callbridge_shared::hosts::local::{LocalRuntime, Settings};
use callbridge_shared::ports::{CallStore, Crm, DeliveryOutcome, Queue, QueuedWebhook};
use callbridge_shared::telemetry::{InMemoryMetrics, Telemetry};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a hostile `id` tries to write as a line of its own.
const FORGED: &str = "ERROR callbridge: connection acme: token leaked";
const CALL: &str = "c1\nERROR callbridge: connection acme: token leaked";

/// Everything logged, as the text format wrote it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A CRM that is always busy: the call's delivery stays waiting.
struct Busy;

#[async_trait]
impl Crm for Busy {
    async fn deliver(&self, _: &Connection, _: &Delivery) -> DeliveryOutcome {
        DeliveryOutcome::Retry {
            reason: "HTTP 503".into(),
            retry_after: None,
        }
    }
}

fn acme() -> Connection {
    Config::parse(
        r#"
        [[connections]]
        id = "acme"
        provider = "telsmart"
        token = "acme-token-0123456789"
        connector_id = "conn"
        owner_id = "owner"
        "#,
    )
    .unwrap()
    .connections()
    .unwrap()
    .remove(0)
}

fn settings() -> Settings {
    Settings {
        retry: RetrySchedule {
            horizon: Duration::from_secs(3600),
            initial: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        },
        breaker: BreakerSettings::default(),
        rate_limit: RateLimit::default(),
        poll_interval: Duration::from_millis(50),
    }
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not happen in 5 s");
}

// One thread: the runtime's tasks log through this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_call_id_with_a_newline_forges_no_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("callbridge.db"))
            .await
            .unwrap(),
    );
    let at = Timestamp::from_micros(1_700_000_000_000_000).unwrap();
    let mut event = CallEvent::new(Provider::Telsmart, CALL, at, EventKind::Ringing);
    event.id = "e1".into();
    store
        .enqueue(&QueuedWebhook {
            connection_id: "acme".into(),
            received_at: at,
            event,
            raw: serde_json::json!({}),
        })
        .await
        .unwrap();

    // The worker folds the call and its delivery waits on the busy CRM...
    let runtime = LocalRuntime::start(
        Arc::clone(&store),
        Arc::new(ConfigDirectory::new([acme()])),
        Arc::new(Busy),
        settings(),
        Telemetry::new(Arc::new(InMemoryMetrics::default())),
    );
    let call = CallKey::new("acme", Provider::Telsmart, CALL);
    eventually("the call's record", async || {
        matches!(store.load(&call).await, Ok(Some((record, _))) if !record.outbox.is_empty())
    })
    .await;
    runtime.stop().await;
    // ...then the connection goes from the configuration: the delivery task names the call.
    let runtime = LocalRuntime::start(
        Arc::clone(&store),
        Arc::new(ConfigDirectory::new([])),
        Arc::new(Busy),
        settings(),
        Telemetry::new(Arc::new(InMemoryMetrics::default())),
    );
    eventually("the delivery task's line", async || {
        captured.text().contains("connection is not configured")
    })
    .await;
    runtime.stop().await;

    let logged = captured.text();
    assert!(
        logged.contains("token leaked"),
        "the call was not logged:\n{logged}"
    );
    for line in logged.lines() {
        assert!(
            !line.trim_start().starts_with(FORGED),
            "a forged line:\n{logged}"
        );
    }
}
