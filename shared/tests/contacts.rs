//! Contacts found by phone number: the HTTP lookup (against a fake lookup service on
//! loopback) with its cache, and the worker keeping its answer with the call so that the call
//! maps the same way every time.

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use callbridge_shared::adapters::contact_http::HttpContactLookup;
use callbridge_shared::adapters::memory::MemoryStore;
use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::providers;
use callbridge_shared::domain::record::CallKey;
use callbridge_shared::domain::time::Timestamp;
use callbridge_shared::engine::apply;
use callbridge_shared::ports::{CallStore, ContactLookup, QueuedWebhook};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A contact service: `GET /lookup?phone=<E.164>`.
#[derive(Default)]
struct Directory {
    asked: Mutex<Vec<String>>,
    /// Numbers it answers 500 for.
    failing: Mutex<Vec<String>>,
}

async fn lookup(
    State(directory): State<Arc<Directory>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let phone = query.get("phone").cloned().unwrap_or_default();
    directory.asked.lock().unwrap().push(phone.clone());
    if directory.failing.lock().unwrap().contains(&phone) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    match phone.as_str() {
        "+3228992675" => Json(json!({"contact_id": "contact_123"})).into_response(),
        "+3225559999" => Json(json!({"contact_id": null})).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn directory() -> (String, Arc<Directory>) {
    let directory = Arc::new(Directory::default());
    let app = Router::new()
        .route("/lookup", get(lookup))
        .with_state(Arc::clone(&directory));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, directory)
}

fn connection(lookup_url: &str) -> Connection {
    let config = Config::parse(&format!(
        r#"
        [[connections]]
        id = "acme"
        provider = "telsmart"
        token = "acme-token-0123456789"
        connector_id = "conn"
        owner_id = "owner"
        users = {{ "200" = "usr_john" }}
        default_country = "BE"
        contact_lookup_url = "{lookup_url}/lookup?phone={{number}}"
        contacts = {{ "02 555 00 00" = "contact_static" }}
        "#
    ))
    .unwrap();
    config.connections().unwrap().remove(0)
}

#[tokio::test]
async fn the_lookup_answers_by_e164_number_and_remembers_for_a_while() {
    let (url, directory) = directory().await;
    let c = connection(&url);
    let lookup = HttpContactLookup::default();

    assert_eq!(
        lookup.contact(&c, "+3228992675").await.unwrap().as_deref(),
        Some("contact_123")
    );
    assert_eq!(lookup.contact(&c, "+3225559999").await.unwrap(), None);
    assert_eq!(lookup.contact(&c, "+3225551234").await.unwrap(), None);
    for _ in 0..3 {
        lookup.contact(&c, "+3228992675").await.unwrap();
        lookup.contact(&c, "+3225551234").await.unwrap();
    }
    // `+` arrives intact (URL-encoded on the way), and every answer, none included, is kept.
    assert_eq!(
        *directory.asked.lock().unwrap(),
        ["+3228992675", "+3225559999", "+3225551234"]
    );

    directory.failing.lock().unwrap().push("+3226666666".into());
    let failed = lookup.contact(&c, "+3226666666").await.unwrap_err();
    assert!(failed.to_string().contains("500"), "{failed}");
    assert!(
        !failed.to_string().contains("3226666666"),
        "the error shows no number: {failed}"
    );
    // A failure is not remembered: the next ask goes out again.
    lookup.contact(&c, "+3226666666").await.unwrap_err();
    assert_eq!(directory.asked.lock().unwrap().len(), 5);
}

#[tokio::test]
async fn lookups_of_one_number_at_once_share_one_request() {
    let (url, directory) = directory().await;
    let c = connection(&url);
    let lookup = HttpContactLookup::default();

    let answers = tokio::join!(
        lookup.contact(&c, "+3228992675"),
        lookup.contact(&c, "+3228992675"),
        lookup.contact(&c, "+3228992675"),
        lookup.contact(&c, "+3225551234"),
    );
    assert_eq!(answers.0.unwrap().as_deref(), Some("contact_123"));
    assert_eq!(answers.1.unwrap().as_deref(), Some("contact_123"));
    assert_eq!(answers.2.unwrap().as_deref(), Some("contact_123"));
    assert_eq!(answers.3.unwrap(), None);
    let mut asked = directory.asked.lock().unwrap().clone();
    asked.sort();
    assert_eq!(asked, ["+3225551234", "+3228992675"]);
}

fn ringing(caller_number: &str, id: &str, timestamp: u64) -> Value {
    json!({
        "tenant_id": "t1", "caller_number": caller_number, "direction": "in",
        "state": "RINGING", "callee_number": "200", "user_extension": "200",
        "id": id, "timestamp": timestamp.to_string(),
    })
}

async fn apply(store: &MemoryStore, c: &Connection, lookup: &HttpContactLookup, webhook: Value) {
    let parsed = providers::parse(Provider::Telsmart, &webhook).unwrap();
    let queued = QueuedWebhook {
        connection_id: c.id.clone(),
        received_at: Timestamp::from_micros(1_765_209_366_386_177).unwrap(),
        event: parsed.event,
        raw: webhook,
    };
    apply::apply(store, c, lookup, &queued).await.unwrap();
}

async fn contacts_of(store: &MemoryStore, call: &str) -> Value {
    let key = CallKey::new("acme", Provider::Telsmart, call);
    let (record, _) = store.load(&key).await.unwrap().unwrap();
    record.outbox.last().unwrap().body["data"]["fields"]["contacts"].clone()
}

#[tokio::test]
async fn the_worker_keeps_the_answer_with_the_call() {
    let (url, directory) = directory().await;
    let c = connection(&url);
    let store = MemoryStore::default();
    let lookup = HttpContactLookup::default();

    // A national number, normalised with the connection's country before the lookup.
    apply(
        &store,
        &c,
        &lookup,
        ringing("02 899 26 75", "c1", 1_765_209_366_386_177),
    )
    .await;
    assert_eq!(
        contacts_of(&store, "c1").await,
        json!([{"object": "resourceRef", "model": "genericContact", "id": "contact_123"}])
    );
    let key = CallKey::new("acme", Provider::Telsmart, "c1");
    let (record, _) = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        record.contact_lookups.get("+3228992675"),
        Some(&Some("contact_123".to_string()))
    );
    // A re-fold of what the record keeps gives the same resource, without asking.
    let asked = directory.asked.lock().unwrap().len();
    let mut again = record.clone();
    again.resource = None;
    again.revision = 0;
    again.outbox.clear();
    assert!(again.refresh(&c));
    assert_eq!(again.resource, record.resource);
    assert_eq!(directory.asked.lock().unwrap().len(), asked);

    // The static directory needs no lookup.
    apply(
        &store,
        &c,
        &lookup,
        ringing("+3225550000", "c2", 1_765_209_366_386_178),
    )
    .await;
    assert_eq!(contacts_of(&store, "c2").await[0]["id"], "contact_static");
    assert_eq!(directory.asked.lock().unwrap().len(), asked);

    // A lookup that fails holds nothing up; the call's next event asks again.
    directory.failing.lock().unwrap().push("+3226666666".into());
    apply(
        &store,
        &c,
        &lookup,
        ringing("+3226666666", "c3", 1_765_209_366_386_179),
    )
    .await;
    assert_eq!(contacts_of(&store, "c3").await, Value::Null);
    directory.failing.lock().unwrap().clear();
    let mut answered = ringing("+3226666666", "c3", 1_765_209_376_386_179);
    answered["state"] = json!("ACTIVE");
    apply(&store, &c, &lookup, answered).await;
    let key = CallKey::new("acme", Provider::Telsmart, "c3");
    let (record, _) = store.load(&key).await.unwrap().unwrap();
    assert_eq!(record.contact_lookups.get("+3226666666"), Some(&None));
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_number_that_cannot_be_read_is_passed_on_as_sent_and_logged_once_masked() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::warn!("capture works");
    // No `default_country`: a Belgian national number cannot be read.
    let config = Config::parse(
        r#"
        [[connections]]
        id = "acme"
        provider = "telsmart"
        token = "acme-token-0123456789"
        connector_id = "conn"
        owner_id = "owner"
        users = { "200" = "usr_john" }
        "#,
    )
    .unwrap();
    let c = config.connections().unwrap().remove(0);
    let store = MemoryStore::default();
    let lookup = HttpContactLookup::default();
    for timestamp in [
        1_765_209_366_386_177,
        1_765_209_366_386_177,
        1_765_209_375_906_227,
    ] {
        apply(
            &store,
            &c,
            &lookup,
            ringing("02 899 26 75", "c1", timestamp),
        )
        .await;
    }
    let key = CallKey::new("acme", Provider::Telsmart, "c1");
    let (record, _) = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        record.outbox.last().unwrap().body["data"]["fields"]["externalNumber"],
        "02 899 26 75"
    );
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("not a phone number"))
        .collect();
    assert!(logs.contains("capture works"), "{logs}");
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(!warnings[0].contains("899"), "{}", warnings[0]);
    assert!(warnings[0].contains("75"), "{}", warnings[0]);

    // A number that reads is written in E.164 and not logged.
    apply(
        &store,
        &c,
        &lookup,
        ringing("3228992675", "c2", 1_765_209_366_386_177),
    )
    .await;
    let key = CallKey::new("acme", Provider::Telsmart, "c2");
    let (record, _) = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        record.outbox.last().unwrap().body["data"]["fields"]["externalNumber"],
        "+3228992675"
    );
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert_eq!(logs.matches("not a phone number").count(), 1, "{logs}");
}
