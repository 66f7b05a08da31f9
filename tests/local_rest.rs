//! Morph's REST mode through a real `callbridge serve`, against a fake Morph on loopback: the
//! call is created once and patched after; a create whose answer is lost is parked, never sent
//! again, until an operator says what Morph holds (`callbridge calls resolve`).

mod support;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use callbridge::recorder::{Behaviour, Recorder};
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::resource::resource_id;
use serde_json::{Value, json};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::bridge::{Bridge, CrmSettings, DELIVERY_TIMEOUT, Setup};
use tokio::process::Command;

const TOKEN: &str = "rest-token-0123456789";

#[derive(Default)]
struct Morph {
    /// `METHOD path`, in order.
    requests: Mutex<Vec<String>>,
    /// Whether the next create is made but its answer lost (a 502).
    lose_next_answer: AtomicBool,
}

impl Morph {
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn create(
    State(morph): State<Arc<Morph>>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Response {
    assert_eq!(headers["x-api-key"], "rest-key");
    let mut requests = morph.requests.lock().unwrap();
    requests.push(format!("POST {model}"));
    let id = format!("morph_{}", requests.len());
    if morph.lose_next_answer.swap(false, Ordering::SeqCst) {
        return StatusCode::BAD_GATEWAY.into_response();
    }
    Json(json!({"object": "resourceRef", "model": model, "id": id, "remote": {"id": "r1"}}))
        .into_response()
}

async fn update(
    State(morph): State<Arc<Morph>>,
    Path((model, id)): Path<(String, String)>,
) -> Response {
    morph
        .requests
        .lock()
        .unwrap()
        .push(format!("PATCH {model}/{id}"));
    Json(json!({"object": "resourceRef", "model": model, "id": id})).into_response()
}

async fn morph() -> (String, Arc<Morph>) {
    let morph = Arc::new(Morph::default());
    let app = Router::new()
        .route("/v1/resources/{model}", post(create))
        .route("/v1/resources/{model}/{id}", patch(update))
        .with_state(Arc::clone(&morph));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, morph)
}

/// The example's connections on the recorder, and a REST connection on `morph_url`.
fn setup(recorder: &Recorder, morph_url: &str) -> Setup {
    let crm = CrmSettings {
        timeout_ms: 2_000,
        ..CrmSettings::default()
    };
    let setup = Setup::new(&recorder.url(), crm, &[]);
    let text = std::fs::read_to_string(&setup.config).unwrap().replacen(
        "[crm]\n",
        &format!("[crm]\nrest_url = {morph_url:?}\n"),
        1,
    );
    let mut config = std::fs::File::create(&setup.config).unwrap();
    write!(
        config,
        r#"{text}
[[connections]]
id = "rest"
provider = "telsmart"
token = "{TOKEN}"
connector_id = "conn"
owner_id = "owner"
delivery = "rest"
api_key = "rest-key"
api_secret = "rest-secret"
"#
    )
    .unwrap();
    setup
}

async fn send_state(bridge: &Bridge, state: &str, timestamp: &str) {
    let webhook = json!({
        "tenant_id": "t1", "caller_number": "+3228992675", "direction": "in",
        "state": state, "callee_number": "200", "user_extension": "200",
        "id": "c1", "timestamp": timestamp,
    });
    let answer = bridge
        .send(bridge.webhook(Provider::Telsmart, "rest", TOKEN, &webhook))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
}

/// Waits until Morph got `n` requests.
async fn requests(morph: &Morph, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
    while morph.requests().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Morph got only {:?}",
            morph.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    morph.requests()
}

async fn parked(setup: &Setup) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let parked = setup.parked().await;
        if !parked.is_empty() || tokio::time::Instant::now() > deadline {
            return parked;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_waits_for_the_operator_and_is_never_sent_twice() {
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let (url, morph) = morph().await;
    let setup = setup(&recorder, &url);
    let bridge = Bridge::start(&setup).await;

    morph.lose_next_answer.store(true, Ordering::SeqCst);
    send_state(&bridge, "RINGING", "1765209366386177").await;
    let parked = parked(&setup).await;
    let resource = resource_id("rest", Provider::Telsmart, "c1");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["resource_id"], resource.as_str());
    assert!(
        parked[0]["reason"]
            .as_str()
            .unwrap()
            .contains("Morph may have made it"),
        "{parked:?}"
    );
    // The answer comes in while the call waits: it waits behind its lost create.
    send_state(&bridge, "ACTIVE", "1765209375906227").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(morph.requests(), ["POST telephonyCall"]);

    // The operator finds the call in Morph.
    let resolved = Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .args([
            "calls",
            "resolve",
            &resource,
            "--morph-id",
            "morph_1",
            "--config",
        ])
        .arg(&setup.config)
        .output()
        .await
        .expect("callbridge calls resolve runs");
    assert!(
        resolved.status.success(),
        "{}{}",
        String::from_utf8_lossy(&resolved.stdout),
        String::from_utf8_lossy(&resolved.stderr)
    );

    let requests = requests(&morph, 3).await;
    assert_eq!(
        requests,
        [
            "POST telephonyCall",
            "PATCH telephonyCall/morph_1",
            "PATCH telephonyCall/morph_1"
        ]
    );
    bridge.wait_idle(DELIVERY_TIMEOUT).await;
    assert!(setup.parked().await.is_empty());
    assert!(recorder.events().is_empty(), "no event in REST mode");
}
