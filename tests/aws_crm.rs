//! The CRM-side features on the AWS side, on the moto emulator: Morph's REST mode keeps
//! Morph's id with the call in DynamoDB and never creates a call twice when SQS delivers
//! again, and Telsmart's onboarding goes through the Telsmart ingest function into the users
//! table, where the worker finds it.
//!
//! Needs `moto_server` (on the PATH or in `.venv`, installed by `infra/setup.sh`).

mod aws_support;
#[allow(dead_code)]
#[path = "support/scenario.rs"]
mod scenario;

use async_trait::async_trait;
use aws_support::AwsBridge;
use aws_support::lambda::{self, Batch, HttpAnswer, HttpRequest};
use callbridge::recorder::{Behaviour, RecordedEvent, Recorder};
use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::record::{CallKey, Delivery};
use callbridge_shared::domain::resource::resource_id;
use callbridge_shared::domain::rest::{RestMethod, RestRequest};
use callbridge_shared::ports::{CallStore, Crm, DeliveryOutcome, RestOutcome};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

const TENANT: &str = "b11d749b-8eb7-4236-a068-3d94ba3860d6";

async fn recorder() -> Recorder {
    Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts")
}

fn no_failures(batches: &[Batch]) {
    for batch in batches {
        assert!(
            batch.failed.is_empty(),
            "the worker failed messages {:?} of {:?}",
            batch.failed,
            batch.bodies()
        );
    }
}

/// A connection of its own, imported as `callbridge connections import` would.
async fn import(bridge: &AwsBridge, connection: &str) -> Connection {
    let connection = Config::parse(connection)
        .expect("a test connection")
        .connections()
        .expect("a test connection")
        .remove(0);
    bridge
        .connections()
        .put(&connection)
        .await
        .expect("the connection imports");
    connection
}

fn ringing(call: &str, extension: &str, state: &str, timestamp: &str) -> Value {
    json!({
        "tenant_id": TENANT, "caller_number": "+3228992675", "direction": "in",
        "state": state, "callee_number": extension, "user_extension": extension,
        "id": call, "timestamp": timestamp,
    })
}

/// Morph's REST API, in memory: creates get ids, updates are recorded.
#[derive(Default)]
struct MemoryMorph {
    requests: Mutex<Vec<(RestMethod, String, Value)>>,
}

impl MemoryMorph {
    fn requests(&self) -> Vec<(RestMethod, String, Value)> {
        self.requests.lock().unwrap().clone()
    }
}

#[async_trait]
impl Crm for MemoryMorph {
    async fn deliver(&self, _: &Connection, delivery: &Delivery) -> DeliveryOutcome {
        panic!(
            "a REST connection sent an event: {}",
            delivery.idempotency_key
        );
    }

    async fn request(&self, _: &Connection, request: &RestRequest) -> RestOutcome {
        let mut requests = self.requests.lock().unwrap();
        requests.push((request.method, request.path.clone(), request.body.clone()));
        let created = requests
            .iter()
            .filter(|(method, _, _)| *method == RestMethod::Post)
            .count();
        RestOutcome::Taken {
            id: request.is_create().then(|| format!("morph_{created}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_mode_keeps_morphs_id_with_the_call_and_never_creates_it_twice() {
    let recorder = recorder().await;
    let bridge = AwsBridge::start("rest", &recorder.url(), &[]).await;
    import(
        &bridge,
        r#"
        [[connections]]
        id = "rest"
        provider = "telsmart"
        token = "rest-token-0123456789"
        connector_id = "conn"
        owner_id = "owner"
        delivery = "rest"
        api_key = "key"
        api_secret = "secret"
        "#,
    )
    .await;
    let morph = Arc::new(MemoryMorph::default());
    let worker = bridge.worker_with(morph.clone());

    let webhooks = [
        ringing("c1", "200", "RINGING", "1765209366386177"),
        ringing("c1", "200", "ACTIVE", "1765209375906227"),
    ];
    let answer = bridge
        .post(
            Provider::Telsmart,
            "rest",
            "rest-token-0123456789",
            &webhooks[0],
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    // The first batch's deletion is lost: SQS delivers it again, to another container.
    let received = bridge.source.receive().await;
    let response = worker.handle(bridge.source.event(&received)).await.unwrap();
    assert!(aws_support::lambda::failures(&response).is_empty());
    for message in &received {
        bridge.source.release(message).await;
    }
    no_failures(&[bridge.source.poll(&bridge.worker_with(morph.clone())).await]);

    let key = CallKey::new("rest", Provider::Telsmart, "c1");
    let (record, _) = bridge.calls().load(&key).await.unwrap().unwrap();
    assert_eq!(record.remote.call_id.as_deref(), Some("morph_1"));
    assert_eq!(record.remote.create_sent, None);
    assert!(record.outbox.is_empty());

    bridge
        .post(
            Provider::Telsmart,
            "rest",
            "rest-token-0123456789",
            &webhooks[1],
        )
        .await;
    no_failures(&bridge.source.drain(&worker).await);
    let requests = morph.requests();
    let paths: Vec<_> = requests.iter().map(|(_, path, _)| path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/resources/telephonyCall",
            "/v1/resources/telephonyCall/morph_1"
        ]
    );
    assert_eq!(
        requests[1].2["fields"]["answeredAt"],
        "2025-12-08T15:56:15.906Z"
    );
    assert!(recorder.events().is_empty(), "no event in REST mode");
}

/// Sends `request` through API Gateway to the provider's function on the template's route of
/// `path` (`/telsmart/{connection_id}/activate`).
async fn send_to(
    bridge: &AwsBridge,
    provider: Provider,
    path: &str,
    request: &HttpRequest,
) -> HttpAnswer {
    let function = bridge.resources.ingest_function(provider);
    let route = function
        .routes
        .iter()
        .find(|r| r.method == request.method && r.path == path)
        .unwrap_or_else(|| panic!("the template has no {} {path} route", request.method));
    lambda::invoke_ingest(bridge.ingest(provider), route, request).await
}

/// An onboarding request with the client's id and secret in its body (OAuth's
/// `client_secret_post`).
fn onboarding(extension: &str, client_secret: &str) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        connection_id: "onboarding".into(),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: json!({
            "tenant_id": TENANT, "user_extension": extension,
            "client_id": "telsmart-client", "client_secret": client_secret,
        })
        .to_string()
        .into_bytes(),
        ..HttpRequest::default()
    }
}

async fn onboard(bridge: &AwsBridge, action: &str, extension: &str) -> HttpAnswer {
    let route = format!("/telsmart/{{connection_id}}/{action}");
    let request = onboarding(extension, "telsmart-client-secret-0123");
    send_to(bridge, Provider::Telsmart, &route, &request).await
}

/// A call ringing at extension 210 of the onboarding connection.
async fn post(bridge: &AwsBridge, call: &str) {
    let webhook = ringing(call, "210", "RINGING", "1765209366386177");
    let answer = bridge
        .post(
            Provider::Telsmart,
            "onboarding",
            "onboarding-token-0123456789",
            &webhook,
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telsmart_onboarding_reaches_the_worker_through_the_users_table() {
    let recorder = recorder().await;
    let bridge = AwsBridge::start("onboarding", &recorder.url(), &[]).await;
    import(
        &bridge,
        &format!(
            r#"
            [[connections]]
            id = "onboarding"
            provider = "telsmart"
            token = "onboarding-token-0123456789"
            account = "{TENANT}"
            connector_id = "conn"
            owner_id = "owner"
            activation_client_id = "telsmart-client"
            activation_client_secret = "telsmart-client-secret-0123"
            auto_user_id_template = "usr_{{user_extension}}"
            "#
        ),
    )
    .await;

    let answer = onboard(&bridge, "activate", "210").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["user_id"], "usr_210");
    let users_of = |call: &str| {
        let id = resource_id("onboarding", Provider::Telsmart, call);
        recorder
            .events()
            .iter()
            .find(|e: &&RecordedEvent| e.resource_id() == Some(id.as_str()))
            .map(|e| e.body["data"]["fields"]["users"].clone())
            .expect("the call's event")
    };

    post(&bridge, "activated").await;
    no_failures(&bridge.source.drain(&bridge.worker()).await);
    assert_eq!(
        users_of("activated"),
        json!([{"object": "resourceRef", "model": "genericUser", "id": "usr_210"}])
    );

    let answer = onboard(&bridge, "deactivate", "210").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // A container started since (one that read the users before keeps them for a minute).
    post(&bridge, "deactivated").await;
    no_failures(&bridge.source.drain(&bridge.worker()).await);
    assert_eq!(users_of("deactivated"), Value::Null);

    let wrong = onboarding("210", "wrong-secret-0123456789");
    let answer = send_to(
        &bridge,
        Provider::Telsmart,
        "/telsmart/{connection_id}/activate",
        &wrong,
    )
    .await;
    assert_eq!(
        (answer.status, &answer.body["error"]),
        (401, &json!("unauthorized"))
    );
}
