//! A tap in front of CRM recorders: it keeps every request byte for byte (method, path, every
//! header, the body as sent; the recorder keeps the parsed body and Morph's headers only) and
//! passes it on to the recorder of its path's first segment, whose answer it gives back. So
//! two hosts delivering to `<tap>/<host>/...` reach one address (the same `Host` header) and
//! each its own CRM.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use callbridge::recorder::Recorder;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the tap received it.
#[derive(Clone, Debug)]
pub struct TappedRequest {
    pub method: String,
    /// Without the host's segment: `/events` for `/<host>/events`.
    pub path: String,
    /// Names in lower case, values as bytes, in the order received.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl TappedRequest {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

struct Taps {
    /// Recorder URL by host segment.
    recorders: HashMap<String, String>,
    requests: Mutex<HashMap<String, Vec<TappedRequest>>>,
    client: reqwest::Client,
}

pub struct CrmTap {
    url: String,
    taps: Arc<Taps>,
    server: JoinHandle<()>,
}

impl Drop for CrmTap {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl CrmTap {
    /// A tap passing `/<host>/...` on to the recorder of each `(host, recorder)`.
    pub async fn start(hosts: &[(&str, &Recorder)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port for the CRM tap");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let taps = Arc::new(Taps {
            recorders: hosts
                .iter()
                .map(|(host, recorder)| (host.to_string(), recorder.url()))
                .collect(),
            requests: Mutex::default(),
            client: reqwest::Client::builder().build().expect("an HTTP client"),
        });
        let router = Router::new().fallback(pass_on).with_state(taps.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("the tap serves");
        });
        Self { url, taps, server }
    }

    /// The CRM URL to give `host`.
    pub fn url_for(&self, host: &str) -> String {
        format!("{}/{host}/events", self.url)
    }

    /// What `host` sent so far, in arrival order.
    pub fn requests(&self, host: &str) -> Vec<TappedRequest> {
        self.taps
            .requests
            .lock()
            .unwrap()
            .get(host)
            .cloned()
            .unwrap_or_default()
    }
}

async fn pass_on(
    State(taps): State<Arc<Taps>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let (host, rest) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path.trim_start_matches('/'), ""));
    let Some(recorder) = taps.recorders.get(host) else {
        return (StatusCode::NOT_FOUND, format!("no host {host} at the tap")).into_response();
    };
    let tapped = TappedRequest {
        method: method.to_string(),
        path: format!("/{rest}"),
        headers: headers
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
    };
    taps.requests
        .lock()
        .unwrap()
        .entry(host.to_string())
        .or_default()
        .push(tapped.clone());
    let mut request = taps
        .client
        .request(method, format!("{recorder}{}", tapped.path))
        .body(body);
    for (name, value) in &headers {
        // The recorder's own address and the body's framing are the new request's.
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let mut headers = HeaderMap::new();
            for name in ["content-type", "retry-after"] {
                if let Some(value) = answer.headers().get(name) {
                    headers.insert(name, value.clone());
                }
            }
            let body = answer.bytes().await.unwrap_or_default();
            (status, headers, body).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("the recorder: {e}")).into_response(),
    }
}
