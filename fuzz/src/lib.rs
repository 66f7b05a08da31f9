//! What the fuzz targets run, and what must hold of every input (the same properties as
//! `shared/tests/fuzz_ingest.rs`): no panic; an accepted webhook is queued exactly once; a
//! refusal is a 4xx with a JSON body naming what was wrong, and nothing is queued; a bad
//! method is 405, then a bad credential 401 whatever the body.

use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::providers;
use callbridge_shared::domain::time::Timestamp;
use callbridge_shared::engine::ingest::{SignatureHeaders, WebhookRequest};
use callbridge_shared::engine::signature::SigningKey;
use callbridge_shared::ports::{ConnectionDirectory, Queue, QueuedWebhook};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The four example connections (as in `infra/callbridge.example.toml`), each also as
/// `signed-<provider>` with a signing secret.
const CONFIG: &str = r#"
[[connections]]
id = "demo-telsmart"
provider = "telsmart"
token = "demo-telsmart-token-change-me"
account = "b11d749b-8eb7-4236-a068-3d94ba3860d6"
connector_id = "c"
owner_id = "o"
users = { "200" = "usr_john" }

[[connections]]
id = "demo-teltel"
provider = "teltel"
token = "demo-teltel-token-change-me"
account = "acme"
connector_id = "c"
owner_id = "o"

[[connections]]
id = "demo-voys"
provider = "voys"
token = "demo-voys-token-change-me"
connector_id = "c"
owner_id = "o"

[[connections]]
id = "demo-telecmi"
provider = "telecmi"
token = "demo-telecmi-token-change-me"
account = "2223343"
connector_id = "c"
owner_id = "o"
recording_url_template = "https://recordings.example/{file}"
"#;

const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NOW_SECONDS: i64 = 1_800_000_000;

struct Directory(HashMap<String, Arc<Connection>>);

#[async_trait::async_trait]
impl ConnectionDirectory for Directory {
    async fn connection(&self, id: &str) -> anyhow::Result<Option<Arc<Connection>>> {
        Ok(self.0.get(id).cloned())
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<QueuedWebhook>>);

#[async_trait::async_trait]
impl Queue for Recorder {
    async fn enqueue(&self, webhook: &QueuedWebhook) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(webhook.clone());
        Ok(())
    }
}

struct Bridge {
    runtime: tokio::runtime::Runtime,
    directory: Directory,
    queue: Recorder,
    key: SigningKey,
}

fn bridge() -> &'static Bridge {
    static BRIDGE: OnceLock<Bridge> = OnceLock::new();
    BRIDGE.get_or_init(|| {
        let mut connections = HashMap::new();
        for connection in Config::parse(CONFIG).unwrap().connections().unwrap() {
            let mut signed = connection.clone();
            signed.id = format!("signed-{}", connection.provider);
            signed.signing_secret = Some(SIGNING_SECRET.into());
            connections.insert(signed.id.clone(), Arc::new(signed));
            connections.insert(connection.id.clone(), Arc::new(connection));
        }
        Bridge {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
            directory: Directory(connections),
            queue: Recorder::default(),
            key: SigningKey::parse(SIGNING_SECRET).unwrap(),
        }
    })
}

/// What must hold of a parser's answer to any payload.
fn check_parse(provider: Provider, payload: &Value) {
    match providers::parse(provider, payload) {
        Ok(webhook) => {
            assert!(!webhook.event.call_key.is_empty());
            assert_eq!(webhook.event.provider, provider);
            assert_eq!(webhook.event.id.len(), 32);
            let _ = webhook.event.at.to_rfc3339_millis();
        }
        Err(e) => assert!(!e.reason.is_empty()),
    }
}

/// One provider's parser on `data` read as JSON, and as a form.
pub fn parse(provider: Provider, data: &[u8]) {
    if let Ok(payload) = serde_json::from_slice::<Value>(data) {
        check_parse(provider, &payload);
    }
    let form: Map<String, Value> = form_urlencoded::parse(data)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    check_parse(provider, &Value::Object(form));
}

/// The whole ingest path: `data[0]` picks the request's shape, the rest is the body (or, for a
/// GET, the query string).
pub fn ingest(data: &[u8]) {
    let Some((&shape, body)) = data.split_first() else {
        return;
    };
    let bridge = bridge();
    let provider = Provider::ALL[usize::from(shape & 3)];
    let method = match (shape >> 2) & 3 {
        0 | 1 => "POST",
        2 => "GET",
        _ => "PUT",
    };
    let content_type = match (shape >> 4) & 3 {
        0 => Some("application/json"),
        1 => None,
        2 => Some("application/x-www-form-urlencoded"),
        _ => Some("text/xml"),
    };
    let (signed, token_ok) = match shape >> 6 {
        0 | 1 => (false, true),
        2 => (true, true),
        _ => (false, false),
    };
    let token = if token_ok {
        format!("Bearer demo-{provider}-token-change-me")
    } else {
        "Bearer demo-nobody-token-change-me".to_string()
    };
    let connection_id = format!("{}-{provider}", if signed { "signed" } else { "demo" });
    let now = NOW_SECONDS.to_string();
    let signature = bridge.key.sign("msg_fuzz", &now, body);
    let is_get = method == "GET";
    let query = is_get.then(|| String::from_utf8_lossy(body).into_owned());
    let request = WebhookRequest {
        provider: provider.as_str(),
        connection_id: &connection_id,
        method,
        authorization: Some(&token),
        query: query.as_deref(),
        content_type,
        body: if is_get { b"" } else { body },
        signature: if signed {
            SignatureHeaders {
                id: Some("msg_fuzz"),
                timestamp: Some(&now),
                signature: Some(&signature),
            }
        } else {
            SignatureHeaders::default()
        },
    };
    let received_at = Timestamp::from_micros(NOW_SECONDS * 1_000_000).unwrap();
    let outcome = bridge
        .runtime
        .block_on(callbridge_shared::engine::ingest::ingest(
            &request,
            &bridge.directory,
            &bridge.queue,
            received_at,
        ));
    let queued = std::mem::take(&mut *bridge.queue.0.lock().unwrap());
    match &outcome {
        Ok(accepted) => {
            assert_eq!(queued.len(), 1);
            assert_eq!(accepted.event_id, queued[0].event.id);
            assert!(!queued[0].event.call_key.is_empty());
            let _ = serde_json::to_string(&queued[0]).unwrap();
        }
        Err(rejection) => {
            assert!(queued.is_empty(), "refused but queued: {rejection:?}");
            assert!((400..500).contains(&rejection.status), "{rejection:?}");
            let body = rejection.body();
            assert!(!body["error"].as_str().unwrap().is_empty());
            assert!(!body["message"].as_str().unwrap().is_empty());
            assert!(!body.to_string().contains("token-change-me"), "{body}");
        }
    }
    let status = outcome.as_ref().map_or_else(|r| r.status, |_| 202);
    let method_ok = method == "POST" || (is_get && provider == Provider::Telecmi);
    if !method_ok {
        assert_eq!(status, 405);
    } else if !token_ok {
        assert_eq!(status, 401, "authentication before the body: {outcome:?}");
    } else if signed && is_get {
        assert_eq!(status, 405);
    } else if !is_get && content_type == Some("text/xml") {
        assert_eq!(status, 415);
    } else {
        assert!(matches!(status, 202 | 400 | 403), "{outcome:?}");
    }
}
