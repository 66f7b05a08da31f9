//! Telsmart's onboarding over a real `callbridge serve`: an activation puts a user's extension
//! in the connection's directory (the next call names its Morph user), a deactivation takes it
//! out, activations outlive a restart, and a request without the right client, or with a
//! tenant id or extension that is not one, is refused.

mod support;

use callbridge::recorder::{Behaviour, RecordedEvent, Recorder};
use callbridge_shared::domain::event::Provider;
use serde_json::{Value, json};
use support::bridge::{Bridge, Setup};

const CONNECTION: &str = "onboarding";
const TOKEN: &str = "onboarding-token-0123456789";
const TENANT: &str = "b11d749b-8eb7-4236-a068-3d94ba3860d6";
const CLIENT_ID: &str = "telsmart-client";
const CLIENT_SECRET: &str = "telsmart-client-secret-0123";

/// The example's connections, and one that takes Telsmart's onboarding.
fn setup(recorder: &Recorder) -> Setup {
    Setup::with(
        &recorder.url(),
        &format!(
            r#"
[[connections]]
id = "{CONNECTION}"
provider = "telsmart"
token = "{TOKEN}"
account = "{TENANT}"
connector_id = "conn_onboarding"
owner_id = "owner_onboarding"
users = {{ "200" = "usr_john" }}
activation_client_id = "{CLIENT_ID}"
activation_client_secret = "{CLIENT_SECRET}"
auto_user_id_template = "usr_{{tenant_id}}_{{user_extension}}"
"#
        ),
    )
}

async fn onboard(bridge: &Bridge, action: &str, extension: &str, secret: &str) -> (u16, Value) {
    let answer = bridge
        .send(
            bridge
                .client()
                .post(bridge.url_of(&format!("/telsmart/{CONNECTION}/{action}")))
                .basic_auth(CLIENT_ID, Some(secret))
                .json(&json!({"tenant_id": TENANT, "user_extension": extension})),
        )
        .await;
    (answer.status, answer.body)
}

/// A call ringing at `extension`.
async fn ring(bridge: &Bridge, call: &str, extension: &str) {
    let webhook = json!({
        "tenant_id": TENANT, "caller_number": "+3228992675", "direction": "in",
        "state": "RINGING", "callee_number": extension, "user_extension": extension,
        "id": call, "timestamp": "1765209366386177",
    });
    let answer = bridge
        .send(bridge.webhook(Provider::Telsmart, CONNECTION, TOKEN, &webhook))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
}

/// The users of the call's created event, once the CRM has it.
async fn users_of(bridge: &Bridge, recorder: &Recorder, call: &str) -> Value {
    let resource_id =
        callbridge_shared::domain::resource::resource_id(CONNECTION, Provider::Telsmart, call);
    let is_it = |e: &RecordedEvent| e.resource_id() == Some(resource_id.as_str());
    let events = bridge
        .settled(recorder, call, |events| events.iter().any(is_it))
        .await;
    let created = events.iter().find(|e| is_it(e)).unwrap();
    created.body["data"]["fields"]["users"].clone()
}

fn user(id: &str) -> Value {
    json!([{"object": "resourceRef", "model": "genericUser", "id": id}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activated_users_join_the_directory_until_deactivated_and_outlive_a_restart() {
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let setup = setup(&recorder);
    let bridge = Bridge::start(&setup).await;

    ring(&bridge, "before", "210").await;
    assert_eq!(users_of(&bridge, &recorder, "before").await, Value::Null);

    let (status, body) = onboard(&bridge, "activate", "210", CLIENT_SECRET).await;
    assert_eq!(status, 200, "{body}");
    let jane = format!("usr_{TENANT}_210");
    assert_eq!(
        body,
        json!({"status": "activated", "tenant_id": TENANT, "user_extension": "210", "user_id": jane})
    );
    ring(&bridge, "activated", "210").await;
    assert_eq!(users_of(&bridge, &recorder, "activated").await, user(&jane));
    // A user the configuration names keeps the configuration's Morph user.
    onboard(&bridge, "activate", "200", CLIENT_SECRET).await;
    ring(&bridge, "configured", "200").await;
    assert_eq!(
        users_of(&bridge, &recorder, "configured").await,
        user("usr_john")
    );

    // Kept across a restart (even a `kill -9`).
    bridge.kill().await;
    let bridge = Bridge::start(&setup).await;
    ring(&bridge, "restarted", "210").await;
    assert_eq!(users_of(&bridge, &recorder, "restarted").await, user(&jane));

    let (status, body) = onboard(&bridge, "deactivate", "210", CLIENT_SECRET).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "deactivated");
    ring(&bridge, "deactivated", "210").await;
    assert_eq!(
        users_of(&bridge, &recorder, "deactivated").await,
        Value::Null
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_requests_without_the_right_client_or_route_are_refused() {
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let setup = setup(&recorder);
    let bridge = Bridge::start(&setup).await;

    let (status, body) = onboard(&bridge, "activate", "210", "not-the-secret-0123456789").await;
    assert_eq!((status, &body["error"]), (401, &json!("unauthorized")));

    let unauthorized = bridge
        .client()
        .post(bridge.url_of(&format!("/telsmart/{CONNECTION}/activate")))
        .json(&json!({"tenant_id": TENANT, "user_extension": "210"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert!(unauthorized.headers().contains_key("www-authenticate"));

    let refused = [
        ("GET", format!("/telsmart/{CONNECTION}/activate"), 405),
        ("POST", format!("/telsmart/{CONNECTION}/enable"), 404),
        ("POST", "/telsmart/demo-telsmart/activate".to_string(), 404),
        ("POST", "/telsmart/demo-teltel/activate".to_string(), 404),
    ];
    for (method, path, status) in refused {
        let answer = bridge
            .send(
                bridge
                    .client()
                    .request(method.parse().unwrap(), bridge.url_of(&path))
                    .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                    .json(&json!({"tenant_id": TENANT, "user_extension": "210"})),
            )
            .await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
    }
    // A phone number is not an extension (it would make that number's calls internal), and a
    // tenant id is not text to write into user ids: each refused, naming its field.
    for (tenant, extension, field) in [
        (TENANT, "+3228992675", "user_extension"),
        (TENANT, "3228992675", "user_extension"),
        ("other/{user_extension}\n", "210", "tenant_id"),
    ] {
        let answer = bridge
            .send(
                bridge
                    .client()
                    .post(bridge.url_of(&format!("/telsmart/{CONNECTION}/activate")))
                    .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                    .json(&json!({"tenant_id": tenant, "user_extension": extension})),
            )
            .await;
        assert_eq!(
            (answer.status, &answer.body["error"], &answer.body["field"]),
            (400, &json!("invalid_payload"), &json!(field)),
            "{tenant:?} {extension:?}: {}",
            answer.body
        );
    }
    // The wrong client with a body that is not JSON: refused for the client, unread.
    let answer = bridge
        .send(
            bridge
                .client()
                .post(bridge.url_of(&format!("/telsmart/{CONNECTION}/activate")))
                .basic_auth(CLIENT_ID, Some("not-the-secret-0123456789"))
                .header("content-type", "application/json")
                .body("{{{ not json"),
        )
        .await;
    assert_eq!(
        (answer.status, &answer.body["error"]),
        (401, &json!("unauthorized"))
    );
    // Another tenant's user is not this connection's.
    let answer = bridge
        .send(
            bridge
                .client()
                .post(bridge.url_of(&format!("/telsmart/{CONNECTION}/activate")))
                .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                .json(&json!({"tenant_id": "another-tenant", "user_extension": "210"})),
        )
        .await;
    assert_eq!(
        (answer.status, &answer.body["error"]),
        (403, &json!("wrong_account"))
    );
}
