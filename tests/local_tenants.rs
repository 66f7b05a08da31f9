//! Many tenants on one `callbridge serve`: three tenants per provider, each with connector and
//! owner ids, a token and Morph users of its own, one of them (a TelTel one) in Morph's REST
//! mode with an API key and secret of its own; every scenario of every tenant at once, each on
//! a connection of its tenant (scenarios share call ids, which one connection would merge).
//! Every request to the CRM must carry its own tenant's headers or credentials, and name only
//! that tenant's users: a call sent under another tenant's ids, or mapped with another
//! tenant's users, fails here (with one tenant per provider, as elsewhere, it would not).

mod support;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{patch, post};
use callbridge::recorder::{Behaviour, RecordedEvent, Recorder, summary};
use callbridge_shared::domain::event::Provider;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use support::bridge::{Bridge, CrmSettings, DELIVERY_TIMEOUT, Sender, Setup};
use support::faults::assert_applied_once;
use support::scenario::{self, Scenario, applied_of, assert_no_stranger, example_connection};
use tokio::task::JoinSet;

const TENANTS_PER_PROVIDER: usize = 3;

/// One tenant's connection, and what the CRM must see of it.
#[derive(Clone, Debug)]
struct Tenant {
    id: String,
    provider: Provider,
    token: String,
    connector_id: String,
    owner_id: String,
    /// Its Morph users are the example's, each as `usr_<n>_<name>`.
    users_prefix: String,
    /// Morph's REST API key and secret, for a tenant in REST mode.
    rest: Option<(String, String)>,
}

impl Tenant {
    fn new(provider: Provider, n: usize, rest: bool) -> Self {
        let p = provider.as_str();
        Self {
            id: format!("tenant{n}-{p}"),
            provider,
            token: format!("tenant{n}-{p}-token-0123456789"),
            connector_id: format!("conn_{p}_{n}"),
            owner_id: format!("owner_{p}_{n}"),
            users_prefix: format!("usr_{n}_"),
            rest: rest.then(|| (format!("key_{p}_{n}"), format!("secret_{p}_{n}"))),
        }
    }

    /// A connection of the tenant per scenario of its provider.
    fn config(&self) -> String {
        (0..self.scenarios().len())
            .map(|i| self.connection(&self.connection_id(i)))
            .collect()
    }

    fn connection_id(&self, scenario: usize) -> String {
        format!("{}-s{scenario}", self.id)
    }

    /// The example connection of its provider, under this tenant's ids, token and users.
    fn connection(&self, id: &str) -> String {
        let example = example_connection(&format!("demo-{}", self.provider.as_str()));
        let users: Vec<String> = example
            .users
            .iter()
            .map(|(key, user)| format!("{key:?} = {:?}", self.user(user)))
            .collect();
        let mut text = format!(
            "\n[[connections]]\nid = {:?}\nprovider = {:?}\ntoken = {:?}\nconnector_id = {:?}\n\
             owner_id = {:?}\nusers = {{ {} }}\n",
            id,
            self.provider.as_str(),
            self.token,
            self.connector_id,
            self.owner_id,
            users.join(", "),
        );
        if let Some(account) = &example.account {
            text.push_str(&format!("account = {account:?}\n"));
        }
        if let Some(template) = &example.recording_url_template {
            text.push_str(&format!("recording_url_template = {template:?}\n"));
        }
        if let Some((key, secret)) = &self.rest {
            text.push_str(&format!(
                "delivery = \"rest\"\napi_key = {key:?}\napi_secret = {secret:?}\n"
            ));
        }
        text
    }

    /// This tenant's Morph user for the example's `usr_<name>`.
    fn user(&self, example_user: &str) -> String {
        example_user.replacen("usr_", &self.users_prefix, 1)
    }

    /// The scenarios of its provider, sent to this tenant and expecting its users.
    fn scenarios(&self) -> Vec<Scenario> {
        scenario::all()
            .into_iter()
            .filter(|s| s.provider == self.provider)
            .enumerate()
            .map(|(i, s)| {
                let mut mine = s.on(self.connection_id(i));
                for call in mine.expected.calls.values_mut() {
                    call.fields = self.with_users(&call.fields);
                    if let Some(revisions) = &mut call.revisions {
                        for revision in revisions {
                            *revision = self.with_users(revision);
                        }
                    }
                }
                mine
            })
            .collect()
    }

    /// `value` with the example's users as this tenant's.
    fn with_users(&self, value: &Value) -> Value {
        serde_json::from_str(
            &value
                .to_string()
                .replace("\"usr_", &format!("\"{}", self.users_prefix)),
        )
        .expect("JSON")
    }

    /// Every user a body names is this tenant's.
    fn assert_own_users(&self, body: &Value, what: &str) {
        let users = body["fields"]["users"]
            .as_array()
            .or_else(|| body["data"]["fields"]["users"].as_array());
        for user in users.into_iter().flatten() {
            let id = user["id"].as_str().unwrap_or_default();
            assert!(
                id.starts_with(&self.users_prefix),
                "{what} of tenant {} names user {id}, not one of its own",
                self.id
            );
        }
    }
}

/// Posts a scenario's webhooks with the tenant's token, each applied before the next.
async fn post_scenario(sender: Sender, tenant: Tenant, s: Scenario) {
    for (i, webhook) in s.webhooks.iter().enumerate() {
        let answer = sender
            .post(s.provider, &s.connection, &tenant.token, webhook)
            .await;
        assert_eq!(
            answer.status, 202,
            "{} on {}: webhook {i}: {}",
            s.name, s.connection, answer.body
        );
        sender.wait_idle(DELIVERY_TIMEOUT).await;
    }
}

/// A Morph REST API that records every request with the headers Morph reads.
#[derive(Default)]
struct Morph {
    requests: Mutex<Vec<MorphRequest>>,
}

#[derive(Clone, Debug)]
struct MorphRequest {
    method: &'static str,
    /// The id Morph gave the resource (its create's answer, or the updated one).
    id: String,
    headers: BTreeMap<String, String>,
    body: Value,
}

fn morph_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    ["x-api-key", "x-api-secret", "x-connector-id", "x-owner-id"]
        .into_iter()
        .filter_map(|name| {
            let value = headers.get(name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

async fn create(
    State(morph): State<Arc<Morph>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let mut requests = morph.requests.lock().unwrap();
    let id = format!("morph_{}", requests.len() + 1);
    requests.push(MorphRequest {
        method: "POST",
        id: id.clone(),
        headers: morph_headers(&headers),
        body,
    });
    Json(json!({"object": "resourceRef", "model": model, "id": id, "remote": {"id": id}}))
}

async fn update(
    State(morph): State<Arc<Morph>>,
    Path((model, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let mut requests = morph.requests.lock().unwrap();
    requests.push(MorphRequest {
        method: "PATCH",
        id: id.clone(),
        headers: morph_headers(&headers),
        body,
    });
    Json(json!({"object": "resourceRef", "model": model, "id": id}))
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

/// Every event of the tenant's calls carries its connector (both spellings) and owner ids
/// and a key of its call, and names only its users.
fn assert_tenant_headers(tenant: &Tenant, scenarios: &[Scenario], events: &[RecordedEvent]) {
    let ids: Vec<String> = scenarios.iter().flat_map(Scenario::resource_ids).collect();
    for e in events.iter().filter(|e| {
        e.resource_id()
            .is_some_and(|id| ids.iter().any(|i| i == id))
    }) {
        let h = &e.headers;
        assert!(
            h.connector_id.as_deref() == Some(&tenant.connector_id)
                && h.conector_id.as_deref() == Some(&tenant.connector_id)
                && h.owner_id.as_deref() == Some(&tenant.owner_id),
            "{e} of tenant {} came with {h:?}:\n{}",
            tenant.id,
            summary(events)
        );
        let resource = e.resource_id().unwrap_or_default();
        assert!(
            e.idempotency_key()
                .is_some_and(|key| key.starts_with(&format!("{resource}-r"))),
            "{e}: not a key of its call"
        );
        tenant.assert_own_users(&e.body, &e.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_side_by_side_each_get_their_own_headers_credentials_and_users() {
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let (morph_url, morph) = morph().await;
    let tenants: Vec<Tenant> = Provider::ALL
        .into_iter()
        .flat_map(|provider| {
            (1..=TENANTS_PER_PROVIDER)
                .map(move |n| Tenant::new(provider, n, provider == Provider::Teltel && n == 2))
        })
        .collect();
    let setup = Setup::new(&recorder.url(), CrmSettings::default(), &[]);
    let text = std::fs::read_to_string(&setup.config).unwrap().replacen(
        "[crm]\n",
        &format!("[crm]\nrest_url = {morph_url:?}\n"),
        1,
    );
    let mut config = std::fs::File::create(&setup.config).unwrap();
    write!(config, "{text}").unwrap();
    for tenant in &tenants {
        write!(config, "{}", tenant.config()).unwrap();
    }
    drop(config);
    let bridge = Bridge::start(&setup).await;

    let mut streams = JoinSet::new();
    for tenant in &tenants {
        for s in tenant.scenarios() {
            streams.spawn(post_scenario(bridge.sender(), tenant.clone(), s));
        }
    }
    while let Some(done) = streams.join_next().await {
        done.expect("a tenant's scenario is accepted");
    }
    let (events_tenants, rest_tenants): (Vec<&Tenant>, Vec<&Tenant>) =
        tenants.iter().partition(|t| t.rest.is_none());
    let by_events: Vec<Scenario> = events_tenants.iter().flat_map(|t| t.scenarios()).collect();
    let events = bridge
        .settled_scenarios(&recorder, &by_events, Scenario::delivered_in_order)
        .await;

    for tenant in &events_tenants {
        let scenarios = tenant.scenarios();
        for s in &scenarios {
            s.assert_in_order(&events);
        }
        assert_tenant_headers(tenant, &scenarios, &events);
    }
    // Nothing of the REST tenant, nor of the example connections, went out as events.
    assert_no_stranger(&by_events, &events);
    assert_applied_once(&events);

    let requests = morph.requests.lock().unwrap().clone();
    assert!(
        !requests.is_empty(),
        "the REST tenant's calls never reached Morph"
    );
    for tenant in &rest_tenants {
        let (key, secret) = tenant.rest.clone().expect("a REST tenant");
        let expected_headers: BTreeMap<String, String> = [
            ("x-api-key", key),
            ("x-api-secret", secret),
            ("x-connector-id", tenant.connector_id.clone()),
            ("x-owner-id", tenant.owner_id.clone()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        // Each call: one create, then updates of the id Morph gave it; the last body of each
        // is a call of the tenant's scenarios as it ends.
        let mut last_fields: BTreeMap<&str, &Value> = BTreeMap::new();
        for r in &requests {
            let what = format!("{} {}", r.method, r.id);
            assert_eq!(r.headers, expected_headers, "{what}");
            tenant.assert_own_users(&r.body, &what);
            assert!(
                r.method == "POST" || last_fields.contains_key(r.id.as_str()),
                "{what} before its create"
            );
            last_fields.insert(&r.id, &r.body["fields"]);
        }
        let mut got: Vec<String> = last_fields.values().map(|f| f.to_string()).collect();
        let mut expected: Vec<String> = tenant
            .scenarios()
            .iter()
            .flat_map(|s| s.expected.calls.values())
            .filter(|call| !call.events.is_empty())
            .map(|call| call.fields.to_string())
            .collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "the REST tenant's calls as Morph holds them");
    }
    let tenant_events: usize = events_tenants
        .iter()
        .flat_map(|t| t.scenarios())
        .flat_map(|s| {
            s.resource_ids()
                .into_iter()
                .map(|id| applied_of(&events, &id).len())
                .collect::<Vec<_>>()
        })
        .sum();
    eprintln!(
        "tenants: {} ({} in REST mode), {} events applied, {} REST requests",
        tenants.len(),
        rest_tenants.len(),
        tenant_events,
        requests.len()
    );
}
