//! One front door for both hosts: the same requests, sent once to a real `callbridge serve` over
//! HTTP and once to the Lambda entry point (the request `lambda_http` reads from API Gateway's
//! payload 2.0 event, answered by the router an ingest Lambda runs and converted back as
//! `lambda_http::run` converts it), get the same status, JSON body and headers. The Lambda side
//! runs over the same connections (the test config) on a store of its own, so the answers can
//! be compared whole, the accepted ones too.

mod aws_support;
mod support;

use aws_support::emulator::Route;
use aws_support::lambda::{HttpRequest, api_gateway_event, run_router};
use callbridge::recorder::{Behaviour, Recorder};
use callbridge_shared::adapters::clock::SystemClock;
use callbridge_shared::adapters::config_directory::ConfigDirectory;
use callbridge_shared::adapters::sqlite::SqliteStore;
use callbridge_shared::config::Config;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::engine::ingest::MAX_BODY_BYTES;
use callbridge_shared::engine::signature::SigningKey;
use callbridge_shared::hosts::lambda::lambda_http::{self, Body};
use callbridge_shared::http::{self, FrontDoor, Mount};
use callbridge_shared::telemetry::{InMemoryMetrics, Telemetry};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use support::bridge::{Bridge, Setup};
use support::scenario::{self, Scenario};

const SIGNED: &str = "parity-signed";
const SIGNED_TOKEN: &str = "parity-signed-token";
/// Standard Webhooks' own example secret.
const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ONBOARDING: &str = "parity-onboarding";
const ONBOARDING_TOKEN: &str = "parity-onboarding-token";
const TENANT: &str = "6a3c1d52-7d54-4d3b-9a55-2b1f6c0e8f10";
const CLIENT_ID: &str = "parity-client";
const CLIENT_SECRET: &str = "parity-client-secret";

/// The example's connections, a signed one and one that takes Telsmart's onboarding.
fn setup(recorder: &Recorder) -> Setup {
    Setup::with(
        &recorder.url(),
        &format!(
            r#"
[[connections]]
id = "{SIGNED}"
provider = "teltel"
token = "{SIGNED_TOKEN}"
connector_id = "conn_parity_signed"
owner_id = "owner_parity_signed"
signing_secret = "{SIGNING_SECRET}"

[[connections]]
id = "{ONBOARDING}"
provider = "telsmart"
token = "{ONBOARDING_TOKEN}"
account = "{TENANT}"
connector_id = "conn_parity_onboarding"
owner_id = "owner_parity_onboarding"
users = {{ "200" = "usr_john" }}
activation_client_id = "{CLIENT_ID}"
activation_client_secret = "{CLIENT_SECRET}"
auto_user_id_template = "usr_{{tenant_id}}_{{user_extension}}"
"#
        ),
    )
}

fn first_scenario(provider: Provider) -> Scenario {
    scenario::all()
        .into_iter()
        .find(|s| s.provider == provider)
        .unwrap_or_else(|| panic!("no {provider} scenario"))
}

/// One request of the set, to the function of `provider` at `route` (the HTTP API's route,
/// `{connection_id}` in it) and the status the documents give it.
struct Case {
    what: &'static str,
    provider: Provider,
    route: &'static str,
    request: HttpRequest,
    status: u16,
}

fn json_post(connection_id: &str, token: &str, body: &Value) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        connection_id: connection_id.into(),
        headers: vec![
            ("Authorization".into(), format!("Bearer {token}")),
            ("Content-Type".into(), "application/json".into()),
        ],
        body: body.to_string().into_bytes(),
        ..HttpRequest::default()
    }
}

/// `text` percent-encoded for a query string.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn cases() -> Vec<Case> {
    const WEBHOOKS: &str = "/webhooks/{provider}/{connection_id}";
    let telsmart = first_scenario(Provider::Telsmart);
    let teltel = first_scenario(Provider::Teltel);
    let telecmi = first_scenario(Provider::Telecmi);
    let good = || {
        json_post(
            &telsmart.connection,
            &telsmart.token(),
            &telsmart.webhooks[0],
        )
    };
    let mut too_deep = json!("deep");
    for _ in 0..40 {
        too_deep = json!({ "nested": too_deep });
    }
    let mut deep = telsmart.webhooks[1].clone();
    deep["extra"] = too_deep;
    let signed_body = teltel.webhooks[0].to_string();
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let key = SigningKey::parse(SIGNING_SECRET).expect("the example secret");
    let signed = |signature: String| {
        let mut request = json_post(SIGNED, SIGNED_TOKEN, &teltel.webhooks[0]);
        request.headers.extend([
            ("webhook-id".into(), "msg_parity".into()),
            ("webhook-timestamp".into(), timestamp.clone()),
            ("webhook-signature".into(), signature),
        ]);
        request
    };
    // A query string carries text only.
    let telecmi_get = scenario::telecmi_as_query();
    let mut query: Vec<String> = scenario::query_pairs(&telecmi_get)
        .iter()
        .map(|(name, value)| format!("{}={}", encoded(name), encoded(value)))
        .collect();
    query.push(format!("token={}", encoded(&telecmi_get.token())));
    let onboarding = |secret: &str| HttpRequest {
        method: "POST".into(),
        connection_id: ONBOARDING.into(),
        headers: vec![(
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        body: format!(
            "tenant_id={TENANT}&user_extension=210&client_id={CLIENT_ID}&client_secret={secret}"
        )
        .into_bytes(),
        // API Gateway sends a form-encoded body base64-encoded.
        base64: true,
        ..HttpRequest::default()
    };
    let case = |what, provider, route, request, status| Case {
        what,
        provider,
        route,
        request,
        status,
    };
    vec![
        case("good", Provider::Telsmart, WEBHOOKS, good(), 202),
        case(
            "bad token",
            Provider::Telsmart,
            WEBHOOKS,
            json_post(&telsmart.connection, "not-the-token", &telsmart.webhooks[0]),
            401,
        ),
        case(
            "good signature",
            Provider::Teltel,
            WEBHOOKS,
            signed(key.sign("msg_parity", &timestamp, signed_body.as_bytes())),
            202,
        ),
        case(
            "bad signature",
            Provider::Teltel,
            WEBHOOKS,
            signed(key.sign("msg_parity", &timestamp, b"another body")),
            401,
        ),
        case(
            "too large",
            Provider::Telsmart,
            WEBHOOKS,
            HttpRequest {
                body: vec![b' '; MAX_BODY_BYTES + 1],
                ..good()
            },
            413,
        ),
        case(
            "too deep",
            Provider::Telsmart,
            WEBHOOKS,
            json_post(&telsmart.connection, &telsmart.token(), &deep),
            400,
        ),
        case(
            "wrong method",
            Provider::Telsmart,
            WEBHOOKS,
            HttpRequest {
                method: "PUT".into(),
                ..good()
            },
            405,
        ),
        case(
            "TeleCMI GET",
            Provider::Telecmi,
            WEBHOOKS,
            HttpRequest {
                method: "GET".into(),
                connection_id: telecmi_get.connection.clone(),
                query: query.join("&"),
                ..HttpRequest::default()
            },
            202,
        ),
        case(
            "TeleCMI POST",
            Provider::Telecmi,
            WEBHOOKS,
            json_post(&telecmi.connection, &telecmi.token(), &telecmi.webhooks[0]),
            202,
        ),
        case(
            "TeleCMI DELETE",
            Provider::Telecmi,
            WEBHOOKS,
            HttpRequest {
                method: "DELETE".into(),
                ..json_post(&telecmi.connection, &telecmi.token(), &telecmi.webhooks[0])
            },
            405,
        ),
        case(
            "onboarding",
            Provider::Telsmart,
            "/telsmart/{connection_id}/activate",
            onboarding(CLIENT_SECRET),
            200,
        ),
        case(
            "onboarding, bad secret",
            Provider::Telsmart,
            "/telsmart/{connection_id}/activate",
            onboarding("not-the-secret"),
            401,
        ),
        case(
            "onboarding, wrong method",
            Provider::Telsmart,
            "/telsmart/{connection_id}/deactivate",
            HttpRequest {
                method: "GET".into(),
                ..onboarding(CLIENT_SECRET)
            },
            405,
        ),
    ]
}

/// What is compared: the status, the JSON body, and every header but those the transport
/// writes (hyper on the local server, API Gateway on AWS).
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    body: Value,
    headers: BTreeMap<String, String>,
}

impl Answer {
    fn new<'h>(
        status: u16,
        body: Value,
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    ) -> Self {
        let headers = headers
            .filter(|(name, _)| !matches!(*name, "date" | "content-length"))
            .map(|(name, value)| {
                let value = String::from_utf8(value.to_vec()).expect("a text header");
                (name.to_string(), value)
            })
            .collect();
        Self {
            status,
            body,
            headers,
        }
    }
}

async fn local_answer(bridge: &Bridge, case: &Case) -> Answer {
    let path = case
        .route
        .replace("{provider}", case.provider.as_str())
        .replace("{connection_id}", &case.request.connection_id);
    let mut url = bridge.url_of(&path);
    if !case.request.query.is_empty() {
        url = format!("{url}?{}", case.request.query);
    }
    let method = case.request.method.parse().expect("a method");
    let mut request = bridge
        .client()
        .request(method, url)
        .body(case.request.body.clone());
    for (name, value) in &case.request.headers {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("the local server answers");
    let status = response.status().as_u16();
    let headers: Vec<(String, Vec<u8>)> = response
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    let body = response.json().await.expect("a JSON body");
    Answer::new(
        status,
        body,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
    )
}

async fn lambda_answer(door: &FrontDoor, case: &Case) -> Answer {
    let route = Route {
        method: case.request.method.clone(),
        path: case.route.replace("{provider}", case.provider.as_str()),
    };
    let event = api_gateway_event(&route, &case.request).to_string();
    let request = lambda_http::request::from_str(&event).expect("lambda_http reads the event");
    let router = http::router(door.clone(), Mount::Only(case.provider));
    let response = run_router(router, request).await;
    let body = match response.body() {
        Body::Text(text) => serde_json::from_str(text).expect("a JSON body"),
        other => panic!("{}: a non-text body on Lambda: {other:?}", case.what),
    };
    Answer::new(
        response.status().as_u16(),
        body,
        response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_server_and_the_lambda_entry_point_answer_alike() {
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let setup = setup(&recorder);
    let bridge = Bridge::start(&setup).await;

    let config = Config::load(&setup.config).expect("the test config loads");
    let store = Arc::new(
        SqliteStore::open(&setup.dir.path().join("lambda-side.db"))
            .await
            .expect("the Lambda side's store"),
    );
    let door = FrontDoor {
        connections: Arc::new(ConfigDirectory::new(
            config.connections().expect("the connections"),
        )),
        queue: Arc::clone(&store) as _,
        users: Some(store as _),
        clock: Arc::new(SystemClock),
        telemetry: Telemetry::new(Arc::new(InMemoryMetrics::default())),
    };

    for case in cases() {
        let local = local_answer(&bridge, &case).await;
        let lambda = lambda_answer(&door, &case).await;
        assert_eq!(
            local.status, case.status,
            "{}: the local server answered {local:?}",
            case.what
        );
        assert_eq!(local, lambda, "{}: the hosts answer differently", case.what);
        assert_eq!(
            local.headers.get("content-type").map(String::as_str),
            Some("application/json"),
            "{}",
            case.what
        );
        match case.status {
            405 => assert!(local.headers.contains_key("allow"), "{}", case.what),
            401 if case.route.starts_with("/telsmart/") => assert_eq!(
                local.headers.get("www-authenticate").map(String::as_str),
                Some("Basic realm=\"callbridge\""),
                "{}",
                case.what
            ),
            _ => {}
        }
    }
}
