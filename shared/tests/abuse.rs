//! Abuse of the front door, through `engine::ingest` as the local server and the Lambdas call
//! it: every bad input gets a clear 4xx with a JSON body naming what was wrong, or a documented
//! tolerant result; never a panic, and nothing refused is ever enqueued.
//!
//! Authentication comes first: a missing, wrong or other connection's token is a 401 whatever
//! the body (so a garbage body with a wrong token is 401, not 400), and no token or signing
//! secret ever appears in a refusal or in the logs.

use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::{Connection, hash_token};
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::record::CallRecord;
use callbridge_shared::domain::time::Timestamp;
use callbridge_shared::engine::ingest::{
    Accepted, MAX_BODY_BYTES, MAX_NESTING_DEPTH, MAX_SUMMARY_BYTES, Rejection, SignatureHeaders,
    WebhookRequest, ingest,
};
use callbridge_shared::engine::signature::SigningKey;
use callbridge_shared::ports::{ConnectionDirectory, Queue, QueuedWebhook};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

// ---------------------------------------------------------------------------------------------
// The bridge under test.

const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A second token of `demo-telsmart`, as during a rotation.
const NEXT_TOKEN: &str = "the-next-telsmart-token-0123456789";
/// 2027-01-15T08:00:00Z, the time of receipt.
const NOW: i64 = 1_800_000_000;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn token(provider: Provider) -> String {
    format!("demo-{provider}-token-change-me")
}

/// Every secret of the test connections: none may ever show in a refusal or a log line.
fn secrets() -> Vec<String> {
    let mut all: Vec<String> = Provider::ALL.into_iter().map(token).collect();
    all.push(NEXT_TOKEN.into());
    all.push(SIGNING_SECRET.into());
    all.push("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
    all
}

fn received_at() -> Timestamp {
    Timestamp::from_micros(NOW * 1_000_000).unwrap()
}

struct Directory {
    connections: HashMap<String, Arc<Connection>>,
    down: bool,
}

impl Directory {
    /// The example connections (`demo-<provider>`), `demo-telsmart` with a second token, an
    /// account on `demo-teltel`, and `signed-<provider>` copies with a signing secret.
    fn example() -> Self {
        let config = Config::load(&repo_root().join("infra/callbridge.example.toml")).unwrap();
        let mut connections = HashMap::new();
        for mut connection in config.connections().unwrap() {
            match connection.provider {
                Provider::Telsmart => connection.token_hashes.push(hash_token(NEXT_TOKEN)),
                Provider::Teltel => connection.account = Some("acme".into()),
                _ => {}
            }
            let mut signed = connection.clone();
            signed.id = format!("signed-{}", connection.provider);
            signed.signing_secret = Some(SIGNING_SECRET.into());
            connections.insert(signed.id.clone(), Arc::new(signed));
            connections.insert(connection.id.clone(), Arc::new(connection));
        }
        Self {
            connections,
            down: false,
        }
    }
}

#[async_trait::async_trait]
impl ConnectionDirectory for Directory {
    async fn connection(&self, id: &str) -> anyhow::Result<Option<Arc<Connection>>> {
        anyhow::ensure!(!self.down, "directory down (test)");
        Ok(self.connections.get(id).cloned())
    }
}

#[derive(Default)]
struct Recorder {
    queued: Mutex<Vec<QueuedWebhook>>,
    down: bool,
}

#[async_trait::async_trait]
impl Queue for Recorder {
    async fn enqueue(&self, webhook: &QueuedWebhook) -> anyhow::Result<()> {
        anyhow::ensure!(!self.down, "queue down (test)");
        self.queued.lock().unwrap().push(webhook.clone());
        Ok(())
    }
}

/// A request as a provider sends it: POST, JSON, the right bearer token, no signature.
fn request<'a>(provider: Provider, token: &'a str, body: &'a [u8]) -> WebhookRequest<'a> {
    WebhookRequest {
        provider: provider.as_str(),
        connection_id: match provider {
            Provider::Telsmart => "demo-telsmart",
            Provider::Teltel => "demo-teltel",
            Provider::Voys => "demo-voys",
            Provider::Telecmi => "demo-telecmi",
        },
        method: "POST",
        authorization: None,
        query: None,
        content_type: Some("application/json"),
        body,
        signature: SignatureHeaders::default(),
    }
    .with_bearer(token)
}

trait WithBearer<'a> {
    fn with_bearer(self, token: &'a str) -> Self;
}

impl<'a> WithBearer<'a> for WebhookRequest<'a> {
    fn with_bearer(mut self, token: &'a str) -> Self {
        // Leaked once per test request: a few bytes, and the request borrows it.
        self.authorization = Some(Box::leak(format!("Bearer {token}").into_boxed_str()));
        self
    }
}

/// Sends one request; checks what must hold of every outcome (a refusal is a 4xx with a
/// JSON body that names what was wrong, never shows a secret, and queued nothing).
fn send(request: &WebhookRequest<'_>) -> Result<Accepted, Rejection> {
    send_to(request, &Directory::example(), &Recorder::default())
}

fn send_to(
    request: &WebhookRequest<'_>,
    directory: &Directory,
    queue: &Recorder,
) -> Result<Accepted, Rejection> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outcome = runtime.block_on(ingest(request, directory, queue, received_at()));
    let queued = queue.queued.lock().unwrap();
    match &outcome {
        Ok(accepted) => {
            assert_eq!(queued.len(), 1, "accepted and queued once");
            assert_eq!(queued[0].event.id, accepted.event_id);
        }
        Err(rejection) => {
            assert!(queued.is_empty(), "refused but queued: {rejection:?}");
            let body = rejection.body();
            assert!(
                !body["error"].as_str().unwrap_or_default().is_empty()
                    && !body["message"].as_str().unwrap_or_default().is_empty(),
                "{body}"
            );
            let text = body.to_string();
            for secret in secrets() {
                assert!(!text.contains(&secret), "a secret in a refusal: {text}");
            }
            // 5xx only for what the sender cannot fix: an outage, or a connection whose
            // operator must fix its signing secret.
            let ours = directory.down || queue.down || rejection.error == "misconfigured";
            assert!(
                (400..500).contains(&rejection.status) || ours,
                "{rejection:?}"
            );
        }
    }
    outcome
}

/// The refusal of a request that must be refused.
fn refused(request: &WebhookRequest<'_>) -> Rejection {
    send(request).expect_err("must be refused")
}

/// The first webhook of the first scenario of each provider.
fn webhook(provider: Provider) -> Value {
    let dir = repo_root().join("tests/scenarios").join(provider.as_str());
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".json") && !name.ends_with(".expected.json")
        })
        .collect();
    paths.sort();
    let list: Value = serde_json::from_slice(&std::fs::read(&paths[0]).unwrap()).unwrap();
    list[0].clone()
}

fn body(payload: &Value) -> Vec<u8> {
    serde_json::to_vec(payload).unwrap()
}

/// The field that says when, and the field that says what happened, per provider.
fn time_field(provider: Provider) -> &'static str {
    match provider {
        Provider::Telecmi => "time",
        _ => "timestamp",
    }
}

fn state_field(provider: Provider) -> &'static str {
    match provider {
        Provider::Telsmart => "state",
        Provider::Teltel => "event",
        Provider::Voys | Provider::Telecmi => "status",
    }
}

fn with(provider: Provider, field: &str, value: Value) -> Vec<u8> {
    let mut payload = webhook(provider);
    payload[field] = value;
    body(&payload)
}

// ---------------------------------------------------------------------------------------------
// Bad input.

#[test]
fn every_provider_accepts_its_own_webhook() {
    for provider in Provider::ALL {
        let (token, body) = (token(provider), body(&webhook(provider)));
        let accepted = send(&request(provider, &token, &body)).unwrap();
        assert_eq!(accepted.status, "accepted");
    }
}

#[test]
fn oversized_bodies_are_413() {
    let token = token(Provider::Voys);
    // Exactly the limit passes the size check (and is then read as JSON).
    let mut big = br#"{"x":""#.to_vec();
    big.resize(MAX_BODY_BYTES - 2, b'a');
    big.extend_from_slice(br#""}"#);
    assert_eq!(big.len(), MAX_BODY_BYTES);
    let at_limit = refused(&request(Provider::Voys, &token, &big));
    assert_eq!((at_limit.status, at_limit.error), (400, "invalid_payload"));
    let over = vec![b' '; MAX_BODY_BYTES + 1];
    for provider in Provider::ALL {
        let token = self::token(provider);
        let r = refused(&request(provider, &token, &over));
        assert_eq!((r.status, r.error), (413, "payload_too_large"));
        assert!(
            r.message.contains(&MAX_BODY_BYTES.to_string()),
            "{}",
            r.message
        );
        // Whatever it claims to be.
        let mut form = request(provider, &token, &over);
        form.content_type = Some("application/x-www-form-urlencoded");
        assert_eq!(refused(&form).status, 413);
    }
}

#[test]
fn deep_nesting_is_refused_without_blowing_the_stack() {
    for provider in Provider::ALL {
        let token = token(provider);
        for (open, close) in [("[", "]"), (r#"{"a":"#, "}")] {
            // Far deeper than any webhook: serde_json stops at 128 levels.
            // (Within the size limit: 20,000 levels of `{"a":` and `}` are 120 KiB.)
            let depth = 20_000;
            let mut deep = format!(r#"{{"{}":"#, state_field(provider)).into_bytes();
            deep.extend(open.repeat(depth).bytes());
            deep.extend(b"1");
            deep.extend(close.repeat(depth).bytes());
            deep.extend(b"}");
            let r = refused(&request(provider, &token, &deep));
            assert_eq!((r.status, r.error), (400, "invalid_json"), "{r:?}");
            assert!(r.message.contains("recursion limit"), "{}", r.message);
        }
        // Within the limit, in a field the parser reads: refused, naming the field.
        let state = json!([[[[[[[[["RINGING"]]]]]]]]]);
        let r = refused(&request(
            provider,
            &token,
            &with(provider, state_field(provider), state),
        ));
        assert_eq!(r.status, 400);
        assert_eq!(r.field.as_deref(), Some(state_field(provider)), "{r:?}");
        // In a field nobody reads: tolerated, like any unknown field, within the nesting limit.
        let accepted = send(&request(
            provider,
            &token,
            &with(provider, "x_extension_data", nested(MAX_NESTING_DEPTH - 1)),
        ));
        assert!(accepted.is_ok(), "{accepted:?}");
    }
}

/// `{"n":{"n":...}}`, `depth` levels of objects.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!("deep"), |inner, _| json!({ "n": inner }))
}

/// A Telsmart after-call summary of the first scenario's call.
fn telsmart_summary(summary: Value) -> Vec<u8> {
    let mut payload = webhook(Provider::Telsmart);
    payload["state"] = json!("SUMMARY_REPORTING");
    payload["summary"] = summary;
    body(&payload)
}

/// The attacks of issue 13: a body serde_json reads (127 levels) but the queue could not read
/// back once wrapped, and a summary deep enough to make the call's record unreadable. Both are
/// refused before anything is queued, naming the limit.
#[test]
fn bodies_nested_past_the_limit_are_refused_before_the_queue() {
    let telsmart_token = token(Provider::Telsmart);
    for (what, payload) in [
        (
            "an unknown field nested 126 levels",
            with(Provider::Telsmart, "x", nested(126)),
        ),
        ("a summary nested 125 levels", telsmart_summary(nested(125))),
        (
            "one level past the limit",
            with(Provider::Telsmart, "x", nested(MAX_NESTING_DEPTH)),
        ),
    ] {
        let r = refused(&request(Provider::Telsmart, &telsmart_token, &payload));
        assert_eq!(
            (r.status, r.error),
            (400, "too_deeply_nested"),
            "{what}: {r:?}"
        );
        assert!(
            r.message.contains(&MAX_NESTING_DEPTH.to_string()),
            "{what}: {}",
            r.message
        );
    }
    for provider in Provider::ALL {
        let payload = with(provider, "x", nested(MAX_NESTING_DEPTH));
        let r = refused(&request(provider, &token(provider), &payload));
        assert_eq!(r.error, "too_deeply_nested", "{provider}: {r:?}");
    }
}

/// The deepest payload ingest accepts, a summary at the limit, reads back from the queued
/// message and from the call's record, outbox included: the limit leaves room for every level
/// they add.
#[test]
fn the_deepest_accepted_summary_reads_back_from_the_queue_and_the_record() {
    let directory = Directory::example();
    let token = token(Provider::Telsmart);
    // The call's first webhook, so that the summary lands in a revision's `rawResource`.
    let ringing = Recorder::default();
    let first = body(&webhook(Provider::Telsmart));
    let accepted = send_to(
        &request(Provider::Telsmart, &token, &first),
        &directory,
        &ringing,
    );
    assert!(accepted.is_ok(), "{accepted:?}");
    // The payload is level 1 and the summary level 2: it nests the rest.
    let queue = Recorder::default();
    let payload = telsmart_summary(nested(MAX_NESTING_DEPTH - 2));
    let accepted = send_to(
        &request(Provider::Telsmart, &token, &payload),
        &directory,
        &queue,
    );
    assert!(accepted.is_ok(), "{accepted:?}");
    let queued = queue.queued.lock().unwrap()[0].clone();
    let message = serde_json::to_string(&queued).unwrap();
    let read: QueuedWebhook = serde_json::from_str(&message).expect("the message reads back");
    assert_eq!(read, queued);

    let connection = directory.connections["demo-telsmart"].clone();
    let mut record = CallRecord::new(queued.call());
    assert!(record.add_event(&ringing.queued.lock().unwrap()[0].event));
    assert!(record.add_event(&queued.event));
    assert!(record.refresh(&connection));
    let json = record.to_stored_json().expect("within the record limit");
    assert!(
        json.contains("rawResource") && json.contains("deep"),
        "{json}"
    );
    let read = CallRecord::from_stored_json(&json, &record.key, 1).expect("the record reads back");
    assert_eq!(read, record);
}

#[test]
fn a_summary_over_its_limit_is_413_naming_it() {
    let token = token(Provider::Telsmart);
    let over = json!({ "content": "x".repeat(MAX_SUMMARY_BYTES) });
    let r = refused(&request(
        Provider::Telsmart,
        &token,
        &telsmart_summary(over),
    ));
    assert_eq!((r.status, r.error), (413, "summary_too_large"), "{r:?}");
    assert_eq!(r.field.as_deref(), Some("summary"));
    assert!(
        r.message.contains(&(MAX_SUMMARY_BYTES / 1024).to_string()),
        "{}",
        r.message
    );
    // Just within: accepted.
    let within = json!({ "content": "x".repeat(MAX_SUMMARY_BYTES - 100) });
    let accepted = send(&request(
        Provider::Telsmart,
        &token,
        &telsmart_summary(within),
    ));
    assert!(accepted.is_ok(), "{accepted:?}");
}

#[test]
fn invalid_utf8_is_refused_in_json_and_replaced_in_forms() {
    for provider in Provider::ALL {
        let token = token(provider);
        let mut payload = body(&webhook(provider));
        // Inside the first string value, and as a bare byte after it.
        let quote = payload.iter().position(|b| *b == b':').unwrap() + 2;
        for bytes in [&[0xff][..], &[0xc3], &[0xed, 0xa0, 0x80], &[0xc0, 0xaf]] {
            let mut bad = payload.clone();
            bad.splice(quote..quote, bytes.iter().copied());
            let r = refused(&request(provider, &token, &bad));
            assert_eq!((r.status, r.error), (400, "invalid_json"), "{r:?}");
        }
        payload.insert(0, 0xff);
        assert_eq!(
            refused(&request(provider, &token, &payload)).error,
            "invalid_json"
        );
    }
    // Forms and query strings are decoded the way browsers do: an invalid byte becomes U+FFFD.
    let token = token(Provider::Telecmi);
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in webhook(Provider::Telecmi).as_object().unwrap() {
        match v {
            Value::String(s) => form.append_pair(k, s),
            other => form.append_pair(k, &other.to_string()),
        };
    }
    let form = form.finish().replace("user=", "user=%FF%FE");
    let mut req = request(Provider::Telecmi, &token, form.as_bytes());
    req.content_type = Some("application/x-www-form-urlencoded");
    let queue = Recorder::default();
    send_to(&req, &Directory::example(), &queue).unwrap();
    let user = queue.queued.lock().unwrap()[0].raw["user"].clone();
    assert!(
        user.as_str().unwrap().starts_with("\u{fffd}\u{fffd}"),
        "{user}"
    );
}

#[test]
fn wrong_content_types_are_415_and_json_under_other_labels_is_read() {
    for provider in Provider::ALL {
        let token = token(provider);
        let body = body(&webhook(provider));
        for content_type in [
            "text/xml",
            "application/xml",
            "multipart/form-data; boundary=x",
            "application/octet-stream",
            "image/png",
            "application/jsonx",
        ] {
            let mut req = request(provider, &token, &body);
            req.content_type = Some(content_type);
            let r = refused(&req);
            assert_eq!(
                (r.status, r.error),
                (415, "unsupported_media_type"),
                "{r:?}"
            );
            assert!(r.message.contains("application/json"), "{}", r.message);
        }
        // Tolerated: providers are not all careful with their headers.
        for content_type in [
            None,
            Some("text/plain"),
            Some("APPLICATION/JSON; charset=UTF-8"),
            Some("application/vnd.voys+json"),
            Some(""),
        ] {
            let mut req = request(provider, &token, &body);
            req.content_type = content_type;
            assert!(send(&req).is_ok(), "{content_type:?}");
        }
    }
}

#[test]
fn bodies_that_are_not_objects_are_400() {
    let token = token(Provider::Teltel);
    for body in [
        &b""[..],
        b"   \n",
        b"null",
        b"[]",
        b"[{}]",
        b"\"text\"",
        b"42",
        b"{",
        b"{}{}",
        b"{\"a\":1,}",
        b"NaN",
    ] {
        let r = refused(&request(Provider::Teltel, &token, body));
        assert_eq!(r.status, 400, "{}: {r:?}", String::from_utf8_lossy(body));
        assert!(matches!(r.error, "invalid_json" | "invalid_payload"));
    }
}

#[test]
fn numbers_out_of_range_name_their_field() {
    for provider in Provider::ALL {
        let token = token(provider);
        let field = time_field(provider);
        for value in [
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e300),
            json!(-1e300),
            json!(1.5),
            json!(-1),
            json!("99999999999999999999999"),
            json!("-1"),
            json!("1e12"),
            json!("0x5f5e100"),
        ] {
            let r = refused(&request(
                provider,
                &token,
                &with(provider, field, value.clone()),
            ));
            assert_eq!(
                (r.status, r.field.as_deref()),
                (400, Some(field)),
                "{value}: {r:?}"
            );
        }
    }
    // TeleCMI's counts of seconds.
    let token = token(Provider::Telecmi);
    let mut cdr = webhook(Provider::Telecmi);
    cdr["type"] = json!("cdr");
    cdr["status"] = json!("answered");
    for value in [
        json!(-5),
        json!(u64::MAX),
        json!("1e3"),
        json!(1e300),
        json!(i64::MAX),
    ] {
        let mut payload = cdr.clone();
        payload["answeredsec"] = value.clone();
        let r = refused(&request(Provider::Telecmi, &token, &body(&payload)));
        assert_eq!(
            (r.status, r.field.as_deref()),
            (400, Some("answeredsec")),
            "{value}: {r:?}"
        );
    }
}

#[test]
fn timestamps_far_in_the_past_or_future_are_refused() {
    for provider in Provider::ALL {
        let token = token(provider);
        let field = time_field(provider);
        for value in [
            json!(0),
            json!(1),
            json!(946_684_799),
            json!(4_102_444_800_i64),
            json!(253_402_300_800_i64),
            json!(4_102_444_800_000_000_i64),
            json!(i64::MAX),
            json!("1970-01-01T00:00:00Z"),
            json!("1999-12-31T23:59:59.999999Z"),
            json!("2100-01-01T00:00:00Z"),
            json!("9999-12-31T23:59:59Z"),
            json!("+275760-09-13T00:00:00Z"),
            json!("2023-02-30T10:00:00Z"),
            json!("2023-09-01T25:61:00Z"),
            json!("yesterday"),
            json!(true),
            json!([1_765_209_366]),
        ] {
            let r = refused(&request(
                provider,
                &token,
                &with(provider, field, value.clone()),
            ));
            assert_eq!(
                (r.status, r.field.as_deref()),
                (400, Some(field)),
                "{value}: {r:?}"
            );
        }
        // Documented tolerance: any instant of 2000..2099 is taken as the provider says, however
        // far from the time of receipt (providers retry for days, and replays are legitimate).
        for value in [json!(946_684_800), json!("2099-12-31T23:59:59Z")] {
            let accepted = send(&request(provider, &token, &with(provider, field, value)));
            assert!(accepted.is_ok(), "{provider}: {accepted:?}");
        }
    }
}

#[test]
fn unknown_states_and_event_names_name_their_field() {
    for provider in Provider::ALL {
        let token = token(provider);
        let field = state_field(provider);
        for value in [
            json!("EXPLODED"),
            json!(""),
            json!(" "),
            json!("RINGING\u{0}"),
            json!("r\u{0131}nging"),
            json!(null),
            json!({"state": "RINGING"}),
            json!(["RINGING"]),
            json!("x".repeat(5000)),
        ] {
            let r = refused(&request(
                provider,
                &token,
                &with(provider, field, value.clone()),
            ));
            assert_eq!(
                (r.status, r.error, r.field.as_deref()),
                (400, "invalid_payload", Some(field)),
                "{provider} {value}: {r:?}"
            );
            assert!(r.message.len() < 6000, "the message stays short");
        }
        // Documented tolerance: the documented words in any case, with spaces around.
        let original = webhook(provider)[field].as_str().unwrap().to_string();
        for value in [
            original.to_lowercase(),
            format!("  {}  ", original.to_uppercase()),
        ] {
            let accepted = send(&request(
                provider,
                &token,
                &with(provider, field, json!(value)),
            ));
            assert!(accepted.is_ok(), "{provider} {value}: {accepted:?}");
        }
    }
}

#[test]
fn very_long_strings_are_refused_in_read_fields_and_ignored_elsewhere() {
    for provider in Provider::ALL {
        let token = token(provider);
        let long = json!("9".repeat(100_000));
        let field = time_field(provider);
        let r = refused(&request(
            provider,
            &token,
            &with(provider, field, long.clone()),
        ));
        assert_eq!((r.status, r.field.as_deref()), (400, Some(field)));
        assert!(
            r.message.len() < 300,
            "not echoed: {} bytes",
            r.message.len()
        );
        let accepted = send(&request(provider, &token, &with(provider, "x_note", long)));
        assert!(accepted.is_ok(), "{accepted:?}");
    }
}

#[test]
fn routes_methods_and_connections_are_checked_first() {
    let token = token(Provider::Voys);
    let body = body(&webhook(Provider::Voys));
    let mut req = request(Provider::Voys, &token, &body);
    req.provider = "skype";
    assert_eq!(refused(&req).status, 404);
    let mut req = request(Provider::Voys, &token, &body);
    req.connection_id = "nobody";
    assert_eq!(refused(&req).error, "unknown_connection");
    // A connection of another provider is not found under this one.
    let mut req = request(Provider::Voys, &token, &body);
    req.connection_id = "demo-telsmart";
    assert_eq!(refused(&req).error, "unknown_connection");
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "", "P\u{0}ST"] {
        let mut req = request(Provider::Voys, &token, &body);
        req.method = method;
        assert_eq!(refused(&req).status, 405, "{method}");
    }
    let mut req = request(Provider::Voys, &token, &body);
    req.method = "post";
    assert!(send(&req).is_ok());
}

#[test]
fn an_outage_behind_ingest_is_a_503_and_nothing_is_queued() {
    let token = token(Provider::Telsmart);
    let body = body(&webhook(Provider::Telsmart));
    let req = request(Provider::Telsmart, &token, &body);
    let mut directory = Directory::example();
    directory.down = true;
    let r = send_to(&req, &directory, &Recorder::default()).unwrap_err();
    assert_eq!((r.status, r.error), (503, "unavailable"));
    assert!(
        !r.message.contains("test"),
        "no internal detail: {}",
        r.message
    );
    let queue = Recorder {
        down: true,
        ..Recorder::default()
    };
    let r = send_to(&req, &Directory::example(), &queue).unwrap_err();
    assert_eq!((r.status, r.error), (503, "unavailable"));
}

// ---------------------------------------------------------------------------------------------
// Authentication.

#[test]
fn missing_wrong_and_other_connections_tokens_are_401() {
    for provider in Provider::ALL {
        let body = body(&webhook(provider));
        let mut req = request(provider, "", &body);
        req.authorization = None;
        let r = refused(&req);
        assert_eq!((r.status, r.error), (401, "unauthorized"));
        assert!(r.message.contains("Bearer"), "says how: {}", r.message);
        for authorization in [
            "Bearer ".to_string(),
            "Bearer".to_string(),
            format!("Basic {}", token(provider)),
            format!("Token {}", token(provider)),
            token(provider),
            format!("Bearer {} ", &token(provider)[1..]),
            format!("Bearer {}x", token(provider)),
            format!("Bearer {}", token(provider).to_uppercase()),
            "Bearer \u{0}".to_string(),
        ] {
            req.authorization = Some(Box::leak(authorization.into_boxed_str()));
            assert_eq!(refused(&req).status, 401, "{:?}", req.authorization);
        }
        for other in Provider::ALL.into_iter().filter(|p| *p != provider) {
            let other_token = token(other);
            assert_eq!(refused(&request(provider, &other_token, &body)).status, 401);
        }
        // The token in the query string works, and a wrong one there is refused too.
        let mut req = request(provider, "", &body);
        req.authorization = None;
        let query = format!("token={}", token(provider));
        req.query = Some(&query);
        assert!(send(&req).is_ok());
        req.query = Some("token=wrong-token-0123456789");
        assert_eq!(refused(&req).status, 401);
    }
}

#[test]
fn authentication_comes_before_the_body_is_read() {
    let garbage: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let oversized = vec![0xffu8; MAX_BODY_BYTES * 2];
    for provider in Provider::ALL {
        for body in [&garbage[..], b"{", b"", &oversized] {
            for content_type in [Some("application/json"), Some("text/xml"), None] {
                for authorization in [None, Some("Bearer wrong-token-0123456789")] {
                    let mut req = request(provider, "", body);
                    req.authorization = authorization;
                    req.content_type = content_type;
                    let r = refused(&req);
                    assert_eq!(
                        (r.status, r.error),
                        (401, "unauthorized"),
                        "not 400, 413 or 415: {r:?}"
                    );
                }
            }
        }
        // The same garbage with the right token is the body's fault.
        let token = token(provider);
        assert_eq!(refused(&request(provider, &token, &garbage)).status, 400);
        assert_eq!(refused(&request(provider, &token, &oversized)).status, 413);
    }
}

#[test]
fn a_payload_naming_another_tenant_is_403() {
    for (provider, field) in [
        (Provider::Telsmart, "tenant_id"),
        (Provider::Teltel, "accountcode"),
        (Provider::Telecmi, "app_id"),
    ] {
        let token = token(provider);
        let r = refused(&request(
            provider,
            &token,
            &with(provider, field, json!("someone-else")),
        ));
        assert_eq!((r.status, r.error), (403, "wrong_account"), "{provider}");
        assert!(r.message.contains("someone-else"), "{}", r.message);
    }
    // TeleCMI names its app `appid` in CDRs.
    let token = token(Provider::Telecmi);
    let mut payload = webhook(Provider::Telecmi);
    payload.as_object_mut().unwrap().remove("app_id");
    payload["appid"] = json!(999);
    let r = refused(&request(Provider::Telecmi, &token, &body(&payload)));
    assert_eq!(r.status, 403);
    // A connection bound to an account refuses a payload that names none.
    payload.as_object_mut().unwrap().remove("appid");
    let r = refused(&request(Provider::Telecmi, &token, &body(&payload)));
    assert_eq!((r.status, r.error), (403, "wrong_account"));
    // Telsmart must name its tenant: without one the check could be slipped past.
    let token = self::token(Provider::Telsmart);
    let mut payload = webhook(Provider::Telsmart);
    payload.as_object_mut().unwrap().remove("tenant_id");
    let r = refused(&request(Provider::Telsmart, &token, &body(&payload)));
    assert_eq!((r.status, r.field.as_deref()), (400, Some("tenant_id")));
}

#[test]
fn both_tokens_of_a_rotation_are_valid() {
    let body = body(&webhook(Provider::Telsmart));
    for token in [token(Provider::Telsmart), NEXT_TOKEN.to_string()] {
        assert!(send(&request(Provider::Telsmart, &token, &body)).is_ok());
    }
    let r = refused(&request(
        Provider::Telsmart,
        "the-next-telsmart-token-012345678",
        &body,
    ));
    assert_eq!(r.status, 401);
}

// ---------------------------------------------------------------------------------------------
// Signatures.

fn signed<'a>(
    provider: Provider,
    token: &'a str,
    body: &'a [u8],
    headers: SignatureHeaders<'a>,
) -> WebhookRequest<'a> {
    let mut req = request(provider, token, body);
    req.connection_id = Box::leak(format!("signed-{provider}").into_boxed_str());
    req.signature = headers;
    req
}

fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    SigningKey::parse(secret).unwrap().sign(id, timestamp, body)
}

#[test]
fn a_signed_connection_takes_only_signed_webhooks() {
    let now = NOW.to_string();
    for provider in Provider::ALL {
        let token = token(provider);
        let body = body(&webhook(provider));
        let good = sign(SIGNING_SECRET, "msg_1", &now, &body);
        let headers = SignatureHeaders {
            id: Some("msg_1"),
            timestamp: Some(&now),
            signature: Some(&good),
        };
        assert!(send(&signed(provider, &token, &body, headers)).is_ok());
        // A key rotation: the sender signs with both keys.
        let both = format!(
            "{} {good}",
            sign("another-secret-0123456789", "msg_1", &now, &body)
        );
        let rotating = SignatureHeaders {
            signature: Some(&both),
            ..headers
        };
        assert!(send(&signed(provider, &token, &body, rotating)).is_ok());

        let stale = (NOW - 301).to_string();
        let stale_sig = sign(SIGNING_SECRET, "msg_1", &stale, &body);
        let future = (NOW + 301).to_string();
        let future_sig = sign(SIGNING_SECRET, "msg_1", &future, &body);
        let wrong_key = sign("another-secret-0123456789", "msg_1", &now, &body);
        let cases = [
            (SignatureHeaders::default(), "signature_required"),
            (
                SignatureHeaders {
                    signature: None,
                    ..headers
                },
                "signature_required",
            ),
            (
                SignatureHeaders {
                    id: Some("msg_2"),
                    ..headers
                },
                "invalid_signature",
            ),
            (
                SignatureHeaders {
                    signature: Some(&wrong_key),
                    ..headers
                },
                "invalid_signature",
            ),
            (
                SignatureHeaders {
                    signature: Some("v1,not base64 at all"),
                    ..headers
                },
                "invalid_signature",
            ),
            (
                SignatureHeaders {
                    timestamp: Some(&stale),
                    signature: Some(&stale_sig),
                    ..headers
                },
                "signature_expired",
            ),
            (
                SignatureHeaders {
                    timestamp: Some(&future),
                    signature: Some(&future_sig),
                    ..headers
                },
                "signature_expired",
            ),
            (
                SignatureHeaders {
                    timestamp: Some("1.8e9"),
                    ..headers
                },
                "invalid_signature",
            ),
        ];
        for (headers, error) in cases {
            let r = refused(&signed(provider, &token, &body, headers));
            assert_eq!((r.status, r.error), (401, error), "{headers:?}");
            assert!(r.field.as_deref().unwrap().starts_with("webhook-"));
            assert!(!r.message.contains(good.trim_start_matches("v1,")));
        }
        // The body changed after signing.
        let mut tampered = body.clone();
        tampered.insert(1, b' ');
        let r = refused(&signed(provider, &token, &tampered, headers));
        assert_eq!(r.error, "invalid_signature");
        // The signature comes on top of the token, not instead of it.
        let mut no_token = signed(provider, &token, &body, headers);
        no_token.authorization = None;
        assert_eq!(refused(&no_token).error, "unauthorized");
    }
}

#[test]
fn signatures_are_checked_before_the_body_is_parsed() {
    let now = NOW.to_string();
    let token = token(Provider::Voys);
    let garbage = b"\xff{not json";
    // A garbage body with a bad signature: 401, not 400.
    let headers = SignatureHeaders {
        id: Some("msg_1"),
        timestamp: Some(&now),
        signature: Some("v1,AAAA"),
    };
    assert_eq!(
        refused(&signed(Provider::Voys, &token, garbage, headers)).status,
        401
    );
    // Correctly signed garbage is the body's fault: 400.
    let good = sign(SIGNING_SECRET, "msg_1", &now, garbage);
    let headers = SignatureHeaders {
        signature: Some(&good),
        ..headers
    };
    assert_eq!(
        refused(&signed(Provider::Voys, &token, garbage, headers)).status,
        400
    );
    // A signature covers the body, not a query string: a signed connection takes no GET.
    let token = self::token(Provider::Telecmi);
    let good = sign(SIGNING_SECRET, "msg_1", &now, b"");
    let mut get = signed(
        Provider::Telecmi,
        &token,
        b"",
        SignatureHeaders {
            signature: Some(&good),
            ..headers
        },
    );
    get.method = "GET";
    get.query = Some("type=event&status=started");
    assert_eq!(refused(&get).status, 405);
}

// ---------------------------------------------------------------------------------------------
// Secrets never in the logs.

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_secret_is_ever_logged() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let now = NOW.to_string();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!("capture works");
        let mut misconfigured = Directory::example();
        let mut connection = (*misconfigured.connections["signed-voys"]).clone();
        connection.signing_secret = Some("whsec_%%%-not-base64-but-secret".into());
        misconfigured
            .connections
            .insert(connection.id.clone(), Arc::new(connection));
        let mut down = Directory::example();
        down.down = true;
        for provider in Provider::ALL {
            let token = token(provider);
            let good_body = body(&webhook(provider));
            let signature = sign(SIGNING_SECRET, "m", &now, &good_body);
            let headers = SignatureHeaders {
                id: Some("m"),
                timestamp: Some(&now),
                signature: Some(&signature),
            };
            let bodies: [&[u8]; 3] = [&good_body, b"{", b"\xff"];
            for body in bodies {
                let mut query_token = request(provider, "", body);
                query_token.authorization = None;
                let query = format!("token={token}&x=1");
                query_token.query = Some(&query);
                let requests = [
                    request(provider, &token, body),
                    request(provider, "wrong-token-0123456789", body),
                    query_token,
                    signed(provider, &token, body, headers),
                    signed(provider, &token, body, SignatureHeaders::default()),
                ];
                for req in &requests {
                    let _ = send(req);
                    let _ = send_to(req, &down, &Recorder::default());
                    let failing = Recorder {
                        down: true,
                        ..Recorder::default()
                    };
                    let _ = send_to(req, &Directory::example(), &failing);
                    let _ = send_to(req, &misconfigured, &Recorder::default());
                }
            }
        }
    });
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("capture works"), "the capture works");
    assert!(logs.contains("queue unavailable"), "the error paths ran");
    assert!(logs.contains("unusable signing secret"), "{logs}");
    for secret in secrets()
        .iter()
        .map(String::as_str)
        .chain(["%%%-not-base64-but-secret"])
    {
        assert!(!logs.contains(secret), "`{secret}` logged:\n{logs}");
    }
}

#[test]
fn debug_output_of_a_connection_hides_its_signing_secret() {
    let directory = Directory::example();
    let text = format!("{:?}", directory.connections["signed-telsmart"]);
    assert!(text.contains("<redacted>"), "{text}");
    assert!(!text.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{text}");
    assert!(
        !text.contains(&token(Provider::Telsmart)),
        "tokens are hashed"
    );
}

#[test]
fn the_configuration_checks_signing_secrets_without_repeating_them() {
    let config = |secret: &str| {
        format!(
            r#"
[[connections]]
id = "signed"
provider = "voys"
token = "a-token-of-some-length"
connector_id = "c"
owner_id = "o"
signing_secret = "{secret}"
"#
        )
    };
    let loaded = Config::parse(&config(SIGNING_SECRET)).unwrap();
    let connection = &loaded.connections().unwrap()[0];
    assert_eq!(connection.signing_secret.as_deref(), Some(SIGNING_SECRET));
    let raw = Config::parse(&config("a-raw-secret-0123456789")).unwrap();
    assert!(raw.connections().is_ok());
    for bad in ["whsec_%%%-not-base64-secret", "whsec_c2hvcnQ=", "too-short"] {
        let err = Config::parse(&config(bad)).unwrap_err().to_string();
        assert!(err.contains("signed"), "names the connection: {err}");
        assert!(!err.contains(bad), "repeats the secret: {err}");
    }
}
