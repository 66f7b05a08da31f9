//! Delivery over Morph's REST API, against a fake Morph on loopback: the call is created once
//! and patched after, its summary becomes a transcript, and no retry or crash creates it twice.
//! The pipeline functions here are the ones both runners (the local server and the AWS worker)
//! call.

use async_trait::async_trait;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use callbridge_shared::adapters::clock::SystemClock;
use callbridge_shared::adapters::contact_http::HttpContactLookup;
use callbridge_shared::adapters::memory::MemoryStore;
use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::providers;
use callbridge_shared::domain::record::{CallKey, CallRecord};
use callbridge_shared::domain::rest::RestModel;
use callbridge_shared::domain::time::Timestamp;
use callbridge_shared::engine::apply;
use callbridge_shared::engine::breaker::BreakerSettings;
use callbridge_shared::engine::deliver::{Deliverer, Pushed, Stop, Waits};
use callbridge_shared::engine::destination::{Destinations, MemoryBreakers};
use callbridge_shared::engine::rate_limit::RateLimit;
use callbridge_shared::engine::rest_delivery::{CLAIM_PATIENCE, resolve_uncertain_create};
use callbridge_shared::engine::schedule::RetrySchedule;
use callbridge_shared::ports::{
    CallStore, Clock, Crm, DeliveryOutcome, QueuedWebhook, StoreError, Version,
};
use callbridge_shared::telemetry::{InMemoryMetrics, Telemetry};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CALL: &str = "590e9492-cbbc-4252-8205-7eb595099b5f";

/// What the fake Morph does with the next create.
#[derive(Clone, Copy, Debug)]
enum OnCreate {
    /// Creates it and answers with its id.
    Create,
    /// Refuses it before doing anything (503).
    Unavailable,
    /// Creates it, then fails to answer (500).
    CreateThenFail,
    /// Creates it, then answers too late for the client.
    CreateThenStall,
}

#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Default)]
struct MorphState {
    requests: Mutex<Vec<Recorded>>,
    /// Resources Morph holds: (model, id).
    created: Mutex<Vec<(String, String)>>,
    on_create: Mutex<VecDeque<OnCreate>>,
}

/// A fake of Morph's REST API on loopback.
struct FakeMorph {
    url: String,
    state: Arc<MorphState>,
}

impl FakeMorph {
    async fn start() -> Self {
        let state = Arc::new(MorphState::default());
        let app = Router::new()
            .route("/v1/resources/{model}", post(create))
            .route("/v1/resources/{model}/{id}", patch(update))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    fn then(&self, behaviours: impl IntoIterator<Item = OnCreate>) {
        self.state.on_create.lock().unwrap().extend(behaviours);
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The method and path of every request, in order.
    fn calls(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    fn created(&self, model: &str) -> Vec<String> {
        let created = self.state.created.lock().unwrap();
        created
            .iter()
            .filter(|(m, _)| m == model)
            .map(|(_, id)| id.clone())
            .collect()
    }
}

fn record(state: &MorphState, method: Method, path: String, headers: HeaderMap, body: Value) {
    state.requests.lock().unwrap().push(Recorded {
        method,
        path,
        headers,
        body,
    });
}

async fn create(
    State(state): State<Arc<MorphState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(
        &state,
        Method::POST,
        format!("/v1/resources/{model}"),
        headers,
        body,
    );
    let behaviour = state
        .on_create
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(OnCreate::Create);
    if let OnCreate::Unavailable = behaviour {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let id = {
        let mut created = state.created.lock().unwrap();
        let n = created.iter().filter(|(m, _)| *m == model).count() + 1;
        let id = format!("morph_{model}_{n}");
        created.push((model.clone(), id.clone()));
        id
    };
    match behaviour {
        OnCreate::CreateThenFail => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        OnCreate::CreateThenStall => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        _ => Json(json!({
            "object": "resourceRef",
            "model": model,
            "id": id,
            "remote": { "id": format!("remote_{id}") },
        }))
        .into_response(),
    }
}

async fn update(
    State(state): State<Arc<MorphState>>,
    Path((model, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(
        &state,
        Method::PATCH,
        format!("/v1/resources/{model}/{id}"),
        headers,
        body,
    );
    let known = state
        .created
        .lock()
        .unwrap()
        .iter()
        .any(|(m, i)| *m == model && *i == id);
    if known {
        Json(json!({"object": "resourceRef", "model": model, "id": id})).into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// A REST connection delivering to `morph`, and its CRM.
fn rest_connection(morph: &FakeMorph) -> (Connection, Arc<dyn Crm>) {
    let config = Config::parse(&format!(
        r#"
        [crm]
        rest_url = "{}"
        timeout_ms = 500
        api_key = "global-key"
        api_secret = "global-secret"

        [[connections]]
        id = "acme"
        provider = "telsmart"
        token = "acme-token-0123456789"
        connector_id = "conn_acme"
        owner_id = "owner_acme"
        delivery = "rest"
        api_key = "acme-key"
        api_secret = "acme-secret"
        users = {{ "200" = "usr_john" }}
        "#,
        morph.url
    ))
    .unwrap();
    let connection = config.connections().unwrap().remove(0);
    let crm = callbridge_shared::hosts::local::crm(&config.crm).unwrap();
    (connection, crm)
}

/// Telsmart's example 1 (ringing, answered, hung up) and its summary.
fn webhooks() -> Vec<Value> {
    let state = |state: &str, timestamp: &str| {
        json!({
            "tenant_id": "b11d749b-8eb7-4236-a068-3d94ba3860d6",
            "caller_number": "+3228992675", "direction": "in", "callee_name": "John Doe",
            "state": state, "caller_name": "+3228992675", "callee_number": "200",
            "user_extension": "200", "id": CALL, "timestamp": timestamp,
        })
    };
    let mut summary = state("SUMMARY_REPORTING", "1765209708105127");
    summary["summary"] = json!({
        "language": "en-GB",
        "content": {"meeting_title": "A test call", "quick_summary": ["A test.", "It worked."]},
    });
    vec![
        state("RINGING", "1765209366386177"),
        state("ACTIVE", "1765209375906227"),
        state("HANGUP", "1765209400106173"),
        summary,
    ]
}

fn key() -> CallKey {
    CallKey::new("acme", Provider::Telsmart, CALL)
}

struct Bridge {
    store: Arc<dyn CallStore>,
    connection: Connection,
    crm: Arc<dyn Crm>,
    telemetry: Telemetry,
    clock: SetClock,
}

/// A clock that stands still until a test moves it.
struct SetClock(Mutex<Timestamp>);

impl SetClock {
    fn new() -> Self {
        Self(Mutex::new(
            Timestamp::from_micros(1_765_209_900_000_000).unwrap(),
        ))
    }

    fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap();
        *now = Timestamp::from_micros(now.as_micros() + i64::try_from(by.as_micros()).unwrap())
            .unwrap();
    }
}

impl Clock for SetClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
}

impl Bridge {
    fn new(morph: &FakeMorph, store: Arc<dyn CallStore>) -> Self {
        let (connection, crm) = rest_connection(morph);
        Self {
            store,
            connection,
            crm,
            telemetry: Telemetry::new(Arc::new(InMemoryMetrics::default())),
            clock: SetClock::new(),
        }
    }

    async fn apply(&self, webhook: &Value) {
        let parsed = providers::parse(Provider::Telsmart, webhook).unwrap();
        let queued = QueuedWebhook {
            connection_id: "acme".into(),
            received_at: Timestamp::from_micros(1_765_209_800_000_000).unwrap(),
            event: parsed.event,
            raw: webhook.clone(),
        };
        apply::apply(
            &*self.store,
            &self.connection,
            &HttpContactLookup::default(),
            &queued,
        )
        .await
        .unwrap();
    }

    async fn record(&self) -> (CallRecord, Version) {
        self.store.load(&key()).await.unwrap().unwrap()
    }

    /// Makes the claimed create older than any request under way: the process that sent it
    /// is long gone.
    async fn age_claim(&self) {
        assert!(
            self.record().await.0.remote.create_sent.is_some(),
            "a claimed create"
        );
        self.clock
            .advance(CLAIM_PATIENCE + Duration::from_micros(1));
    }

    /// Pushes the outbox as a runner does, without marking anything delivered (a runner that
    /// crashed right after).
    async fn push(&self) -> Pushed {
        let (record, _) = self.record().await;
        let destinations = no_breaker(&self.telemetry);
        Deliverer {
            crm: &*self.crm,
            store: &*self.store,
            clock: &self.clock,
            destinations: &destinations,
            waits: &waits(),
            telemetry: &self.telemetry,
        }
        .push_outbox(&self.connection, &key(), &record.outbox, false)
        .await
    }

    /// Pushes the outbox and marks what went through, as a runner does.
    async fn deliver(&self) -> Pushed {
        let pushed = self.push().await;
        if let Some(revision) = pushed.delivered_up_to {
            self.store
                .update_stored(&key(), &mut |record| {
                    record.mark_delivered(revision);
                    true
                })
                .await
                .unwrap();
        }
        pushed
    }
}

/// Destinations that never hold a delivery back: these tests are about REST, not outages.
fn no_breaker(telemetry: &Telemetry) -> Destinations {
    Destinations::new(
        Arc::new(MemoryBreakers::default()),
        BreakerSettings {
            open_after: u32::MAX,
            ..BreakerSettings::default()
        },
        RateLimit {
            per_second: 1e6,
            burst: 1_000,
        },
        telemetry.clone(),
    )
}

fn waits() -> Waits {
    Waits::local(RetrySchedule::default(), Duration::from_secs(30))
}

fn stopped_with(pushed: &Pushed) -> Option<&DeliveryOutcome> {
    pushed.stopped_at.as_ref().map(|(_, stop)| match stop {
        Stop::Answer(outcome) => outcome,
        other => panic!("not sent: {other:?}"),
    })
}

#[tokio::test]
async fn a_call_is_created_once_then_patched_and_its_summary_becomes_its_transcript() {
    let morph = FakeMorph::start().await;
    let bridge = Bridge::new(&morph, Arc::new(MemoryStore::default()));
    for webhook in webhooks() {
        bridge.apply(&webhook).await;
        assert_eq!(stopped_with(&bridge.deliver().await), None);
    }

    let call_id = "morph_telephonyCall_1";
    assert_eq!(
        morph.calls(),
        [
            "POST /v1/resources/telephonyCall".to_string(),
            format!("PATCH /v1/resources/telephonyCall/{call_id}"),
            format!("PATCH /v1/resources/telephonyCall/{call_id}"),
            format!("PATCH /v1/resources/telephonyCall/{call_id}"),
            "POST /v1/resources/telephonyCallTranscript".to_string(),
        ]
    );
    let requests = morph.requests();
    let created = &requests[0];
    assert_eq!(created.body["fields"]["status"], "inProgress");
    assert_eq!(created.body["fields"]["externalNumber"], "+3228992675");
    assert_eq!(created.body["fields"]["users"][0]["id"], "usr_john");
    let ended = &requests[2].body["fields"];
    assert_eq!(
        (&ended["status"], &ended["duration"]),
        (&json!("completed"), &json!(24))
    );
    // The connection's own credentials win over the deployment's.
    for request in &requests {
        let header = |name: &str| request.headers[name].to_str().unwrap().to_string();
        assert_eq!(header("x-api-key"), "acme-key");
        assert_eq!(header("x-api-secret"), "acme-secret");
        assert_eq!(header("x-connector-id"), "conn_acme");
        assert_eq!(header("x-owner-id"), "owner_acme");
    }
    let transcript = &requests[4].body;
    assert_eq!(
        transcript["fields"],
        json!({
            "call": {"object": "resourceRef", "model": "telephonyCall", "id": call_id},
            "language": "en-GB",
            "title": "A test call",
            "text": "A test.\nIt worked.",
        })
    );
    assert_eq!(transcript["rawResource"]["summary"]["language"], "en-GB");

    let (record, _) = bridge.record().await;
    assert!(record.outbox.is_empty());
    assert_eq!(record.remote.call_id.as_deref(), Some(call_id));
    assert_eq!(
        record.remote.transcript_id.as_deref(),
        Some("morph_telephonyCallTranscript_1")
    );
    assert_eq!(record.remote.create_sent, None);

    // Everything again (a queue's redelivery): nothing new reaches Morph.
    for webhook in webhooks() {
        bridge.apply(&webhook).await;
        bridge.deliver().await;
    }
    assert_eq!(morph.requests().len(), 5);
}

#[tokio::test]
async fn a_runner_that_crashed_after_the_create_patches_rather_than_creates_again() {
    let morph = FakeMorph::start().await;
    let bridge = Bridge::new(&morph, Arc::new(MemoryStore::default()));
    bridge.apply(&webhooks()[0]).await;
    // The create went through and its id was saved; the runner died before marking it.
    assert_eq!(stopped_with(&bridge.push().await), None);
    assert_eq!(bridge.record().await.0.outbox.len(), 1);

    assert_eq!(stopped_with(&bridge.deliver().await), None);
    assert_eq!(morph.created("telephonyCall").len(), 1);
    assert_eq!(
        morph.calls()[1],
        "PATCH /v1/resources/telephonyCall/morph_telephonyCall_1"
    );
}

#[tokio::test]
async fn a_create_morph_refused_before_doing_anything_is_sent_again() {
    let morph = FakeMorph::start().await;
    let bridge = Bridge::new(&morph, Arc::new(MemoryStore::default()));
    morph.then([OnCreate::Unavailable]);
    bridge.apply(&webhooks()[0]).await;

    let first = bridge.deliver().await;
    assert!(
        matches!(stopped_with(&first), Some(DeliveryOutcome::Retry { .. })),
        "{first:?}"
    );
    assert_eq!(bridge.record().await.0.remote.create_sent, None);
    assert_eq!(stopped_with(&bridge.deliver().await), None);
    assert_eq!(morph.created("telephonyCall").len(), 1);
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_never_sent_again_until_an_operator_resolves_it() {
    for lost in [OnCreate::CreateThenFail, OnCreate::CreateThenStall] {
        let morph = FakeMorph::start().await;
        let bridge = Bridge::new(&morph, Arc::new(MemoryStore::default()));
        morph.then([lost]);
        bridge.apply(&webhooks()[0]).await;

        let pushed = bridge.deliver().await;
        assert!(
            matches!(
                stopped_with(&pushed),
                Some(DeliveryOutcome::Uncertain { .. })
            ),
            "{lost:?}: {pushed:?}"
        );
        // Tried again at once, it may be another worker's create under way: it waits the
        // whole patience (the clock stands still), and still waits just before it runs out.
        let pushed = bridge.deliver().await;
        assert!(
            matches!(
                stopped_with(&pushed),
                Some(DeliveryOutcome::Retry {
                    retry_after: Some(wait),
                    ..
                }) if *wait == CLAIM_PATIENCE
            ),
            "{lost:?}: {pushed:?}"
        );
        bridge
            .clock
            .advance(CLAIM_PATIENCE - Duration::from_secs(1));
        let pushed = bridge.deliver().await;
        assert!(
            matches!(
                stopped_with(&pushed),
                Some(DeliveryOutcome::Retry {
                    retry_after: Some(wait),
                    ..
                }) if *wait == Duration::from_secs(1)
            ),
            "{lost:?}: {pushed:?}"
        );
        // Later, it is an uncertain create for good.
        bridge.age_claim().await;
        let pushed = bridge.deliver().await;
        assert!(
            matches!(
                stopped_with(&pushed),
                Some(DeliveryOutcome::Uncertain { .. })
            ),
            "{lost:?}: {pushed:?}"
        );
        assert_eq!(
            morph.calls(),
            ["POST /v1/resources/telephonyCall"],
            "{lost:?}"
        );
        assert_eq!(
            bridge
                .record()
                .await
                .0
                .remote
                .create_sent
                .map(|sent| sent.model),
            Some(RestModel::TelephonyCall)
        );

        // The operator finds the call in Morph: it becomes the call's, and is patched.
        let found = morph.created("telephonyCall").remove(0);
        assert!(
            resolve_uncertain_create(&*bridge.store, &key(), Some(&found))
                .await
                .unwrap()
        );
        bridge.apply(&webhooks()[1]).await;
        assert_eq!(stopped_with(&bridge.deliver().await), None);
        assert_eq!(morph.created("telephonyCall").len(), 1, "{lost:?}");
        assert_eq!(
            morph.calls().last().unwrap(),
            &format!("PATCH /v1/resources/telephonyCall/{found}")
        );
    }
}

#[tokio::test]
async fn an_operator_who_finds_nothing_in_morph_has_it_created_again() {
    let morph = FakeMorph::start().await;
    let bridge = Bridge::new(&morph, Arc::new(MemoryStore::default()));
    morph.then([OnCreate::CreateThenFail]);
    bridge.apply(&webhooks()[0]).await;
    bridge.deliver().await;

    assert!(
        resolve_uncertain_create(&*bridge.store, &key(), None)
            .await
            .unwrap()
    );
    assert!(
        !resolve_uncertain_create(&*bridge.store, &key(), None)
            .await
            .unwrap()
    );
    assert_eq!(stopped_with(&bridge.deliver().await), None);
    assert_eq!(morph.created("telephonyCall").len(), 2);
}

/// A store that fails (as a crash would end the process) the first write after `armed`.
#[derive(Default)]
struct CrashingStore {
    inner: MemoryStore,
    armed: AtomicBool,
}

#[async_trait]
impl CallStore for CrashingStore {
    async fn load(&self, key: &CallKey) -> anyhow::Result<Option<(CallRecord, Version)>> {
        self.inner.load(key).await
    }

    async fn save(
        &self,
        record: &CallRecord,
        read: Option<Version>,
    ) -> Result<Version, StoreError> {
        if record.remote.call_id.is_some() && self.armed.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Other(anyhow::anyhow!("the process died")));
        }
        self.inner.save(record, read).await
    }
}

#[tokio::test]
async fn a_crash_between_morph_creating_the_call_and_its_id_being_saved_never_creates_twice() {
    let morph = FakeMorph::start().await;
    let store = Arc::new(CrashingStore::default());
    let bridge = Bridge::new(&morph, store.clone());
    bridge.apply(&webhooks()[0]).await;
    store.armed.store(true, Ordering::SeqCst);

    let pushed = bridge.deliver().await;
    assert!(
        matches!(stopped_with(&pushed), Some(DeliveryOutcome::Retry { .. })),
        "{pushed:?}"
    );
    // Restarted: the claim is there, the id is not. Nothing is sent again.
    bridge.age_claim().await;
    bridge.apply(&webhooks()[1]).await;
    let pushed = bridge.deliver().await;
    assert!(
        matches!(
            stopped_with(&pushed),
            Some(DeliveryOutcome::Uncertain { .. })
        ),
        "{pushed:?}"
    );
    assert_eq!(morph.created("telephonyCall").len(), 1);
    assert_eq!(morph.requests().len(), 1);
}

#[tokio::test]
async fn two_workers_pushing_one_call_at_once_create_it_once() {
    let morph = FakeMorph::start().await;
    let bridge = Arc::new(Bridge::new(&morph, Arc::new(MemoryStore::default())));
    bridge.apply(&webhooks()[0]).await;
    let (a, b) = tokio::join!(bridge.push(), bridge.push());
    let mut outcomes = [stopped_with(&a).cloned(), stopped_with(&b).cloned()];
    outcomes.sort_by_key(Option::is_some);
    assert_eq!(morph.created("telephonyCall").len(), 1, "{outcomes:?}");
    // The one that found the other's claim waits for its next attempt, which patches.
    assert!(
        matches!(outcomes, [None, Some(DeliveryOutcome::Retry { .. })]),
        "{outcomes:?}"
    );
    assert_eq!(stopped_with(&bridge.deliver().await), None);
    assert_eq!(morph.created("telephonyCall").len(), 1);
}

#[tokio::test]
async fn a_deleted_call_sends_nothing_over_rest() {
    let morph = FakeMorph::start().await;
    let bridge = Bridge::new(&morph, Arc::new(MemoryStore::default()));
    bridge.apply(&webhooks()[0]).await;
    bridge.deliver().await;
    let (mut record, version) = bridge.record().await;
    assert!(record.delete());
    bridge.store.save(&record, Some(version)).await.unwrap();

    assert_eq!(stopped_with(&bridge.deliver().await), None);
    assert!(bridge.record().await.0.outbox.is_empty());
    assert_eq!(morph.requests().len(), 1);
}

/// Voys' attended transfer in which Voys keeps the consultation call's id
/// (`tests/scenarios/voys/10-attended-transfer-keeps-consultation.json`), delivered over REST:
/// Morph has no delete, so the consultation is closed by a PATCH that ends it at the transfer,
/// and the customer's call is the one that ends completed.
#[tokio::test]
async fn a_call_a_transfer_closes_is_patched_as_ended_at_the_transfer() {
    let morph = FakeMorph::start().await;
    let config = Config::parse(&format!(
        r#"
        [crm]
        rest_url = "{}"
        timeout_ms = 500
        api_key = "global-key"
        api_secret = "global-secret"

        [[connections]]
        id = "acme-voys"
        provider = "voys"
        token = "acme-voys-token-0123456789"
        connector_id = "conn_acme"
        owner_id = "owner_acme"
        delivery = "rest"
        users = {{ "201" = "usr_piet", "piet@example.com" = "usr_piet", "202" = "usr_anna", "anna@example.com" = "usr_anna" }}
        "#,
        morph.url
    ))
    .unwrap();
    let connection = config.connections().unwrap().remove(0);
    let crm = callbridge_shared::hosts::local::crm(&config.crm).unwrap();
    let telemetry = Telemetry::new(Arc::new(InMemoryMetrics::default()));
    let store = MemoryStore::default();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/scenarios/voys/10-attended-transfer-keeps-consultation.json");
    let webhooks: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let customer = CallKey::new(
        "acme-voys",
        Provider::Voys,
        "ua9-grq-prd-1693580412.23011521",
    );
    let consultation = CallKey::new(
        "acme-voys",
        Provider::Voys,
        "ua9-grq-prd-1693580437.23011689",
    );
    for webhook in &webhooks {
        let parsed = providers::parse(Provider::Voys, webhook).unwrap();
        let queued = QueuedWebhook {
            connection_id: "acme-voys".into(),
            received_at: Timestamp::from_micros(1_765_209_800_000_000).unwrap(),
            event: parsed.event,
            raw: webhook.clone(),
        };
        let applied = apply::apply(&store, &connection, &HttpContactLookup::default(), &queued)
            .await
            .unwrap();
        for call in applied.to_deliver {
            let (record, _) = store.load(&call).await.unwrap().unwrap();
            let destinations = no_breaker(&telemetry);
            let pushed = Deliverer {
                crm: &*crm,
                store: &store,
                clock: &SystemClock,
                destinations: &destinations,
                waits: &waits(),
                telemetry: &telemetry,
            }
            .push_outbox(&connection, &call, &record.outbox, false)
            .await;
            let (mut record, version) = store.load(&call).await.unwrap().unwrap();
            record.mark_delivered(pushed.delivered_up_to.expect("delivered"));
            store.save(&record, Some(version)).await.unwrap();
        }
    }
    let requests = morph.requests();
    let bodies_of = |id: &str| -> Vec<Value> {
        requests
            .iter()
            .filter(|r| r.path == format!("/v1/resources/telephonyCall/{id}"))
            .map(|r| r.body["fields"].clone())
            .collect()
    };
    let mut morph_ids = Vec::new();
    for call in [&consultation, &customer] {
        let (record, _) = store.load(call).await.unwrap().unwrap();
        morph_ids.push(record.remote.call_id.expect("created in Morph"));
    }
    let [consultation_id, customer_id] = [&morph_ids[0], &morph_ids[1]];
    // Expected from the payloads: the consultation (Piet -> Anna) was answered at 15:00:41.880
    // and the transfer came at 15:01:05.336, so it ends completed after 23 seconds.
    let closed = bodies_of(consultation_id).last().cloned().unwrap();
    assert_eq!(
        closed,
        json!({
            "direction": "outbound",
            "status": "completed",
            "startedAt": "2023-09-01T15:00:37.215Z",
            "endedAt": "2023-09-01T15:01:05.336Z",
            "answeredAt": "2023-09-01T15:00:41.880Z",
            "duration": 23,
            "users": [
                {"object": "resourceRef", "model": "genericUser", "id": "usr_piet"},
                {"object": "resourceRef", "model": "genericUser", "id": "usr_anna"}
            ],
            "internalNumber": "201"
        })
    );
    let last = bodies_of(customer_id).last().cloned().unwrap();
    assert_eq!(last["status"], "completed");
    assert_eq!(last["startedAt"], "2023-09-01T15:00:12.774Z");
    assert_eq!(last["endedAt"], "2023-09-01T15:04:20.948Z");
    assert_eq!(last["externalNumber"], "+31612345678");
    // One create per call, nothing deleted (the API has no DELETE).
    assert_eq!(morph.created("telephonyCall").len(), 2);
    assert!(requests.iter().all(|r| r.method != Method::DELETE));
}
