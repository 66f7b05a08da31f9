//! The CRM's credentials and a call's data go to the URL the operator named and nowhere else:
//! a CRM (or contact lookup) answering with a redirect to another host is refused, not followed,
//! and plain `http://` is taken only on loopback (issue 13, item 3; `docs/security.md`).
//!
//! The CRM here is a real listener on loopback answering every request with a 307 to a second
//! real listener, which must never be connected to.

use callbridge_shared::adapters::contact_http::HttpContactLookup;
use callbridge_shared::adapters::crm_http::{HttpCrm, check_url};
use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::record::Delivery;
use callbridge_shared::domain::resource::MorphEventType;
use callbridge_shared::domain::rest::{RestMethod, RestModel, RestRequest};
use callbridge_shared::ports::{ContactLookup, Crm, DeliveryOutcome, RestOutcome};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const API_KEY: &str = "morph-api-key-0123456789";
const API_SECRET: &str = "morph-api-secret-0123456789";
const LOOKUP_TOKEN: &str = "lookup-token-0123456789";

/// A listener that counts the connections made to it and answers none.
async fn elsewhere() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port for the other host");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, connections)
}

/// A CRM that answers every request with `status` and `Location: {to}{path}`.
async fn redirecting_crm(status: u16, to: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port for the CRM");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let to = to.to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let to = to.clone();
            tokio::spawn(async move {
                // The request head and a small body arrive in one read or two; the answer does
                // not depend on them.
                let mut buffer = vec![0; 64 * 1024];
                let read = stream.read(&mut buffer).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buffer[..read]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let answer = format!(
                    "HTTP/1.1 {status} Redirect\r\nLocation: {to}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

fn connection(crm_keys: &str) -> Connection {
    let config = Config::parse(&format!(
        r#"
        [[connections]]
        id = "acme"
        provider = "telsmart"
        token = "acme-token-0123456789"
        connector_id = "conn"
        owner_id = "owner"
        api_key = "{API_KEY}"
        api_secret = "{API_SECRET}"
        delivery = "rest"
        {crm_keys}
        "#
    ))
    .expect("the test connection");
    config.connections().unwrap().remove(0)
}

fn delivery() -> Delivery {
    Delivery {
        resource_id: "call_0123".into(),
        revision: 1,
        event: MorphEventType::Created,
        idempotency_key: "call_0123-r1".into(),
        body: json!({"externalNumber": "+3228992675"}),
        received_at: None,
        closed: None,
        attempted: false,
        waiting: None,
    }
}

fn create() -> RestRequest {
    RestRequest {
        model: RestModel::TelephonyCall,
        method: RestMethod::Post,
        path: "/v1/resources/telephonyCall".into(),
        body: json!({"externalNumber": "+3228992675"}),
    }
}

fn update() -> RestRequest {
    RestRequest {
        method: RestMethod::Patch,
        path: "/v1/resources/telephonyCall/tc_1".into(),
        ..create()
    }
}

/// Long enough for a followed redirect to have connected.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_redirect_from_the_crm_is_refused_and_nothing_reaches_the_other_host() {
    for status in [301, 302, 303, 307, 308] {
        let (other, reached) = elsewhere().await;
        let crm_url = redirecting_crm(status, &other).await;
        let crm =
            HttpCrm::build(Some(crm_url.clone()), Some(crm_url), Duration::from_secs(2)).unwrap();
        let acme = connection("");

        // An event: parked with the CRM's answer, never retried into the same redirect.
        match crm.deliver(&acme, &delivery()).await {
            DeliveryOutcome::Reject { status: got, body } => {
                assert_eq!(got, status);
                assert!(body.contains("redirect") && body.contains(&other), "{body}");
            }
            other => panic!("HTTP {status}: the event was {other:?}"),
        }
        // REST, create and update, with the API key and secret in the headers.
        for request in [create(), update()] {
            match crm.request(&acme, &request).await {
                RestOutcome::NotTaken(DeliveryOutcome::Reject { status: got, body }) => {
                    assert_eq!(got, status);
                    assert!(!body.contains(API_SECRET) && !body.contains(API_KEY));
                }
                other => panic!("HTTP {status}: {:?} was {other:?}", request.method),
            }
        }
        settle().await;
        assert_eq!(
            reached.load(Ordering::SeqCst),
            0,
            "HTTP {status}: the credentials or the call were sent on"
        );
    }
}

#[tokio::test]
async fn a_redirect_from_the_contact_lookup_is_not_followed() {
    let (other, reached) = elsewhere().await;
    let lookup_url = redirecting_crm(307, &other).await;
    let acme = connection(&format!(
        r#"contact_lookup_url = "{lookup_url}/contacts?number={{number}}&token={LOOKUP_TOKEN}""#
    ));
    let error = HttpContactLookup::default()
        .contact(&acme, "+3228992675")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("redirect"), "{error}");
    assert!(!error.contains(LOOKUP_TOKEN), "{error}");
    settle().await;
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the number was sent on");
}

#[test]
fn plain_http_is_taken_only_on_loopback() {
    for url in [
        "https://api.morph.example/",
        "https://10.0.0.1:8443/events",
        "http://127.0.0.1:3001/",
        "http://127.8.9.10/",
        "http://localhost:3001/events",
        "http://[::1]:3001/",
    ] {
        assert!(check_url("the CRM URL", url).is_ok(), "{url} refused");
    }
    for url in [
        "http://api.morph.example/",
        "http://10.0.0.1/",
        "http://localhost.evil.example/",
        "http://127.0.0.1.evil.example/",
        "ftp://127.0.0.1/",
        "https://",
        "api.morph.example",
        "file:///etc/passwd",
    ] {
        let error = check_url("the CRM URL", url).expect_err(url).to_string();
        assert!(error.starts_with("the CRM URL"), "{url}: {error}");
    }
    // At start: the CRM URLs and each connection's lookup; the URL itself is not repeated.
    for (crm, keys) in [
        (r#"url = "http://crm.example/events?key=s3cret""#, ""),
        (
            r#"rest_url = "http://crm.example/""#,
            r#"delivery = "rest""#,
        ),
        (
            "",
            r#"contact_lookup_url = "http://crm.example/{number}?key=s3cret""#,
        ),
    ] {
        let error = Config::parse(&format!(
            r#"
            [crm]
            {crm}

            [[connections]]
            id = "acme"
            provider = "telsmart"
            token = "acme-token-0123456789"
            connector_id = "conn"
            owner_id = "owner"
            {keys}
            "#
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("https://") && !error.contains("s3cret"),
            "{error}"
        );
    }
    assert!(HttpCrm::new("http://crm.example/events", Duration::from_secs(1)).is_err());
    assert!(HttpCrm::new("https://crm.example/events", Duration::from_secs(1)).is_ok());
}
