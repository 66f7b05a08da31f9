//! Property-based fuzzing of the provider parsers and of the whole ingest path.
//!
//! Inputs: arbitrary bytes, arbitrary JSON values (with the providers' field names as keys, so
//! the parsers go deep), and structure-aware mutations of the real scenario webhooks under
//! `tests/scenarios/<provider>/*.json` (fields dropped, types swapped, numbers as strings, huge
//! numbers, far-past and far-future timestamps, unknown states and event names, deep nesting,
//! very long strings, invalid UTF-8, truncation, duplicate keys), sent with every kind of
//! method, content type and credential.
//!
//! What must hold for every input:
//!
//! - nothing panics, and no input takes more than [`SLOW`];
//! - an accepted webhook is enqueued exactly once, with the event id the answer gives;
//! - a refusal is a 4xx whose JSON body has a non-empty `error` and `message`, it never
//!   repeats a token, and nothing is enqueued;
//! - the gates come in order: a bad method is 405, then a bad credential 401 whatever the
//!   body, then an oversized body 413, then an unsupported content type 415.
//!
//! Cases per test: `CALLBRIDGE_FUZZ_CASES` (default 1000); seed: `CALLBRIDGE_FUZZ_SEED`
//! (default: random, printed). A long run is `infra/fuzz.sh`.

mod common;
use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::providers;
use callbridge_shared::domain::time::Timestamp;
use callbridge_shared::engine::ingest::{
    Accepted, MAX_BODY_BYTES, Rejection, SignatureHeaders, WebhookRequest, ingest,
};
use callbridge_shared::engine::signature::SigningKey;
use callbridge_shared::ports::{ConnectionDirectory, Queue, QueuedWebhook};
use common::repo_root;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The bridge under test: the example connections, an in-memory directory, a recording queue.

/// No single input may take longer than this (debug build, shared machine).
const SLOW: Duration = Duration::from_secs(3);

const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn token_of(provider: Provider) -> String {
    format!("demo-{provider}-token-change-me")
}

/// The connection ids: `demo-<provider>` (token only) and `signed-<provider>` (token and
/// Standard Webhooks signature).
fn connection_id(provider: Provider, signed: bool) -> String {
    format!("{}-{provider}", if signed { "signed" } else { "demo" })
}

struct Directory(HashMap<String, Arc<Connection>>);

impl Directory {
    fn example() -> Self {
        let config = Config::load(&repo_root().join("infra/callbridge.example.toml")).unwrap();
        let mut connections = HashMap::new();
        for connection in config.connections().unwrap() {
            let mut signed = connection.clone();
            signed.id = connection_id(connection.provider, true);
            signed.signing_secret = Some(SIGNING_SECRET.into());
            connections.insert(signed.id.clone(), Arc::new(signed));
            connections.insert(connection.id.clone(), Arc::new(connection));
        }
        for provider in Provider::ALL {
            assert!(
                connections.contains_key(&connection_id(provider, false)),
                "the example config has no demo-{provider}"
            );
        }
        Self(connections)
    }
}

#[async_trait::async_trait]
impl ConnectionDirectory for Directory {
    async fn connection(&self, id: &str) -> anyhow::Result<Option<Arc<Connection>>> {
        Ok(self.0.get(id).cloned())
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<QueuedWebhook>>);

impl Recorder {
    fn take(&self) -> Vec<QueuedWebhook> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl Queue for Recorder {
    async fn enqueue(&self, webhook: &QueuedWebhook) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(webhook.clone());
        Ok(())
    }
}

/// 2027-01-15T08:00:00Z: the time ingest is told the webhooks arrive.
const RECEIVED_AT_SECONDS: i64 = 1_800_000_000;

fn received_at() -> Timestamp {
    Timestamp::from_micros(RECEIVED_AT_SECONDS * 1_000_000).unwrap()
}

/// Every scenario webhook, with its provider.
fn scenario_webhooks() -> Vec<(Provider, Value)> {
    let all: Vec<(Provider, Value)> = common::scenario_files()
        .into_iter()
        .flat_map(|file| file.webhooks.into_iter().map(move |w| (file.provider, w)))
        .collect();
    assert!(
        all.len() > 20,
        "the scenarios are missing: {} webhooks",
        all.len()
    );
    all
}

// ---------------------------------------------------------------------------------------------
// Requests, and what must hold of their outcome.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Auth {
    Bearer,
    /// `bearer   <token>  `: scheme in another case, extra spaces.
    BearerSloppy,
    QueryToken,
    Wrong,
    /// A valid token, of another connection.
    OtherConnections,
    Missing,
    /// `Basic` credentials: not a bearer token.
    Basic,
}

impl Auth {
    fn is_valid(self) -> bool {
        matches!(self, Auth::Bearer | Auth::BearerSloppy | Auth::QueryToken)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signing {
    /// Signed correctly, as the sender would.
    Valid,
    /// Signed correctly, but the body is changed after signing.
    Tampered,
    /// Signed five minutes and one second too early.
    Stale,
    /// No `webhook-*` headers at all.
    Missing,
    /// A signature made with another key.
    WrongKey,
}

#[derive(Clone, Debug)]
struct Shape {
    method: &'static str,
    auth: Auth,
    content_type: Option<&'static str>,
    /// Send to the `signed-<provider>` connection, with this signing.
    signing: Option<Signing>,
}

/// Half the requests are what a provider sends (so the body reaches the parser); the other half
/// try every method, credential, content type and signing.
fn shape() -> impl Strategy<Value = Shape> {
    let method = prop_oneof![
        12 => Just("POST"),
        3 => Just("GET"),
        1 => Just("post"),
        1 => Just("PUT"),
        1 => Just("DELETE"),
        1 => Just("\u{0}GET"),
    ];
    let auth = prop_oneof![
        6 => Just(Auth::Bearer),
        2 => Just(Auth::BearerSloppy),
        2 => Just(Auth::QueryToken),
        1 => Just(Auth::Wrong),
        1 => Just(Auth::OtherConnections),
        1 => Just(Auth::Missing),
        1 => Just(Auth::Basic),
    ];
    let content_type = prop_oneof![
        8 => Just(Some("application/json")),
        2 => Just(Some("Application/JSON; charset=utf-8")),
        2 => Just(None),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/cloudevents+json")),
        1 => Just(Some("application/x-www-form-urlencoded")),
        1 => Just(Some("text/xml")),
        1 => Just(Some("multipart/form-data; boundary=x")),
        1 => Just(Some(";;;")),
    ];
    let signing = prop_oneof![
        4 => Just(None),
        2 => Just(Some(Signing::Valid)),
        1 => Just(Some(Signing::Tampered)),
        1 => Just(Some(Signing::Stale)),
        1 => Just(Some(Signing::Missing)),
        1 => Just(Some(Signing::WrongKey)),
    ];
    let any_shape =
        (method, auth, content_type, signing).prop_map(|(method, auth, content_type, signing)| {
            Shape {
                method,
                auth,
                content_type,
                signing,
            }
        });
    let as_sent = prop_oneof![Just(None), Just(Some(Signing::Valid))].prop_map(|signing| Shape {
        method: "POST",
        auth: Auth::Bearer,
        content_type: Some("application/json"),
        signing,
    });
    prop_oneof![as_sent, any_shape]
}

/// What a fuzz run saw, by outcome.
#[derive(Default)]
struct Tally {
    cases: u64,
    by_outcome: BTreeMap<String, u64>,
    slowest: Duration,
    last: Option<String>,
}

impl Tally {
    fn report(&self, name: &str, started: Instant) {
        eprintln!(
            "fuzz {name}: {} cases in {:.1?} (slowest {:.1?}); outcomes: {:?}",
            self.cases,
            started.elapsed(),
            self.slowest,
            self.by_outcome
        );
    }
}

/// The bridge and a runtime to drive it.
struct Bench {
    runtime: tokio::runtime::Runtime,
    directory: Directory,
    queue: Recorder,
    tally: Mutex<Tally>,
}

impl Bench {
    fn new() -> Self {
        Self {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
            directory: Directory::example(),
            queue: Recorder::default(),
            tally: Mutex::default(),
        }
    }

    /// Sends `body` (or, for a GET, `payload` as the query) to `provider` with `shape`, and
    /// checks everything that must hold of the outcome.
    fn send(
        &self,
        provider: Provider,
        payload: Option<&Value>,
        body: &[u8],
        shape: &Shape,
    ) -> Result<(), TestCaseError> {
        let signed = shape.signing.is_some();
        let id = connection_id(provider, signed);
        let token = token_of(provider);
        let other_provider =
            Provider::ALL[(Provider::ALL.iter().position(|p| *p == provider).unwrap() + 1) % 4];
        let other_token = token_of(other_provider);
        let authorization = match shape.auth {
            Auth::Bearer => Some(format!("Bearer {token}")),
            Auth::BearerSloppy => Some(format!("bearer   {token}  ")),
            Auth::Wrong => Some("Bearer not-the-token-at-all-0123456789".to_string()),
            Auth::OtherConnections => Some(format!("Bearer {other_token}")),
            Auth::Basic => Some(format!("Basic {token}")),
            Auth::QueryToken | Auth::Missing => None,
        };
        let is_get = shape.method == "GET";
        let mut query = form_urlencoded::Serializer::new(String::new());
        if shape.auth == Auth::QueryToken {
            query.append_pair("token", &token);
        }
        if is_get && let Some(Value::Object(fields)) = payload {
            for (k, v) in fields {
                match v {
                    Value::String(s) => query.append_pair(k, s),
                    other => query.append_pair(k, &other.to_string()),
                };
            }
        }
        let query = query.finish();

        let key = SigningKey::parse(SIGNING_SECRET).unwrap();
        let other_key = SigningKey::parse("another-key-of-some-length-0123").unwrap();
        let now = RECEIVED_AT_SECONDS.to_string();
        let stale = (RECEIVED_AT_SECONDS - 301).to_string();
        let tampered: Vec<u8> = body.iter().copied().chain(*b" ").collect();
        let signature = match shape.signing {
            Some(Signing::Valid) | Some(Signing::Tampered) => key.sign("msg_1", &now, body),
            Some(Signing::Stale) => key.sign("msg_1", &stale, body),
            Some(Signing::WrongKey) => other_key.sign("msg_1", &now, body),
            Some(Signing::Missing) | None => String::new(),
        };
        let signature_headers = match shape.signing {
            None | Some(Signing::Missing) => SignatureHeaders::default(),
            Some(signing) => SignatureHeaders {
                id: Some("msg_1"),
                timestamp: Some(if signing == Signing::Stale {
                    &stale
                } else {
                    &now
                }),
                signature: Some(&signature),
            },
        };
        let sent_body: &[u8] = if shape.signing == Some(Signing::Tampered) {
            &tampered
        } else {
            body
        };

        let request = WebhookRequest {
            provider: provider.as_str(),
            connection_id: &id,
            method: shape.method,
            authorization: authorization.as_deref(),
            query: (!query.is_empty()).then_some(query.as_str()),
            content_type: shape.content_type,
            body: sent_body,
            signature: signature_headers,
        };
        let started = Instant::now();
        let outcome = self.runtime.block_on(ingest(
            &request,
            &self.directory,
            &self.queue,
            received_at(),
        ));
        let took = started.elapsed();
        let queued = self.queue.take();

        let mut tally = self.tally.lock().unwrap();
        tally.cases += 1;
        tally.slowest = tally.slowest.max(took);
        let label = match &outcome {
            Ok(_) => "202 accepted".to_string(),
            Err(r) => format!("{} {}", r.status, r.error),
        };
        *tally.by_outcome.entry(label.clone()).or_default() += 1;
        tally.last = Some(label);
        drop(tally);

        prop_assert!(took < SLOW, "took {took:?}");
        check_outcome(&outcome, &queued, &[&token, &other_token], is_get)?;

        // The gates, in order.
        let method_ok =
            shape.method.eq_ignore_ascii_case("POST") || (is_get && provider == Provider::Telecmi);
        let expected = if !method_ok {
            Some(405)
        } else if !shape.auth.is_valid() {
            Some(401)
        } else if signed && is_get {
            Some(405)
        } else if sent_body.len() > MAX_BODY_BYTES && !is_get {
            Some(413)
        } else if signed && shape.signing != Some(Signing::Valid) {
            Some(401)
        } else if !is_get && !content_type_accepted(shape.content_type) {
            Some(415)
        } else {
            None
        };
        let status = outcome.as_ref().map_or_else(|r| r.status, |_| 202);
        match expected {
            Some(expected) => prop_assert_eq!(status, expected, "{:?}", outcome),
            None => prop_assert!(
                matches!(status, 202 | 400 | 403),
                "{status} after every gate passed: {outcome:?}"
            ),
        }
        Ok(())
    }
}

fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

fn content_type_accepted(content_type: Option<&str>) -> bool {
    let media = content_type
        .map(|c| c.split(';').next().unwrap().trim().to_ascii_lowercase())
        .unwrap_or_default();
    matches!(
        media.as_str(),
        "" | "application/json" | "text/plain" | "application/x-www-form-urlencoded"
    ) || media.ends_with("+json")
}

/// What must hold of every outcome, whatever the input.
fn check_outcome(
    outcome: &Result<Accepted, Rejection>,
    queued: &[QueuedWebhook],
    secrets: &[&str],
    from_query: bool,
) -> Result<(), TestCaseError> {
    match outcome {
        Ok(accepted) => {
            prop_assert_eq!(queued.len(), 1, "an accepted webhook is queued once");
            let q = &queued[0];
            prop_assert_eq!(accepted.status, "accepted");
            prop_assert_eq!(&accepted.event_id, &q.event.id);
            prop_assert_eq!(&accepted.resource_id, &q.call().resource_id());
            prop_assert!(!q.event.call_key.is_empty());
            prop_assert_eq!(q.event.id.len(), 32);
            prop_assert!(q.raw.is_object());
            if from_query {
                prop_assert!(
                    !q.raw.as_object().unwrap().contains_key("token"),
                    "the token is not kept with the payload"
                );
            }
            // The event survives the queue's serialisation.
            let text = serde_json::to_string(q).unwrap();
            let back: QueuedWebhook = serde_json::from_str(&text).unwrap();
            // serde_json without `float_roundtrip` may read a float back one ULP off (see
            // RELIABILITY.md): the message round-trips exactly when it holds none.
            if !has_float(&serde_json::to_value(q).unwrap()) {
                prop_assert_eq!(&back, q);
            } else {
                prop_assert_eq!(&back.event.id, &q.event.id);
                prop_assert_eq!(&back.event.call_key, &q.event.call_key);
            }
            let _ = q.event.at.to_rfc3339_millis();
        }
        Err(rejection) => {
            prop_assert!(queued.is_empty(), "refused but queued: {rejection:?}");
            prop_assert!(
                (400..500).contains(&rejection.status),
                "not a 4xx: {rejection:?}"
            );
            let body = rejection.body();
            let error = body["error"].as_str().unwrap_or_default();
            let message = body["message"].as_str().unwrap_or_default();
            prop_assert!(!error.is_empty() && !message.is_empty(), "{body}");
            prop_assert!(body.get("status").is_none(), "the status is the HTTP one");
            prop_assert!(serde_json::to_vec(&body).is_ok());
            let text = body.to_string();
            for secret in secrets {
                prop_assert!(!text.contains(secret), "a token in a refusal: {text}");
            }
            prop_assert!(!text.contains(SIGNING_SECRET));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inputs.

/// Every field name the parsers read, so arbitrary objects reach deep into them.
const FIELD_NAMES: &[&str] = &[
    "id",
    "state",
    "timestamp",
    "tenant_id",
    "direction",
    "transfer_caller_number",
    "caller_number",
    "callee_number",
    "user_extension",
    "version",
    "call_id",
    "status",
    "caller",
    "destination",
    "number",
    "targets",
    "redirector",
    "account_number",
    "user_numbers",
    "user_emails",
    "merged_id",
    "reason",
    "event",
    "accountcode",
    "subject_type",
    "subject",
    "hanged_by",
    "hanged_value",
    "participants",
    "phase",
    "source",
    "type",
    "user",
    "subject_user",
    "hanged_user",
    "audio_url",
    "is_answered",
    "conversation_uuid",
    "cmiuuid",
    "time",
    "answeredsec",
    "leg",
    "voicename",
    "voicemail",
    "waitedsec",
    "from",
    "to",
    "filename",
    "app_id",
    "appid",
    "token",
];

/// Words the parsers look for, and near misses.
const WORDS: &[&str] = &[
    "RINGING",
    "ACTIVE",
    "HELD",
    "HANGUP",
    "SUMMARY_REPORTING",
    "in",
    "out",
    "inbound",
    "outbound",
    "v2",
    "v3",
    "created",
    "ringing",
    "in-progress",
    "transfer",
    "warm-transfer",
    "cold-transfer",
    "ended",
    "completed",
    "busy",
    "START",
    "RING",
    "RINGRESULT",
    "READY",
    "JOIN",
    "LEAVE",
    "COMPLETED",
    "ANSWER",
    "CANCEL",
    "sip",
    "did",
    "phone",
    "local",
    "siptodid",
    "didtosip",
    "to",
    "tototo",
    "event",
    "cdr",
    "answered",
    "missed",
    "hangup",
    "waiting",
    "started",
    "a",
    "b",
    "c",
    "yes",
    "no",
    "true",
    "0",
    "1",
    "-1",
    "",
    " ",
    "\u{0}",
    "\u{feff}",
    "NaN",
    "1e400",
    "9223372036854775808",
    "-9223372036854775809",
    "1765209366386177",
    "1650635340436",
    "1764583200",
    "2023-09-01T13:41:25.972110+00:00",
    "2023-09-01T13:41:25Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "2100-01-01T00:00:00Z",
    "1999-12-31T23:59:59.999999Z",
    "2023-13-45T99:99:99Z",
    "b11d749b-8eb7-4236-a068-3d94ba3860d6",
    "2223343",
    "acme",
    "203_2223343",
    "_",
    "___",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(WORDS).prop_map(String::from),
        2 => "[A-Za-z_ -]{0,12}",
        1 => any::<String>(),
        1 => select(WORDS).prop_map(|w| w.to_ascii_lowercase()),
        1 => select(WORDS).prop_map(|w| format!(" {} ", w.to_ascii_uppercase())),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(FIELD_NAMES).prop_map(String::from),
        1 => "[a-z_]{1,12}",
        1 => any::<String>(),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        select(
            &[
                i64::MAX,
                i64::MIN,
                0,
                -1,
                1,
                946_684_799,
                946_684_800,
                4_102_444_799,
                4_102_444_800,
                99_999_999_999,
                100_000_000_000,
                1_765_209_366_386,
                1_765_209_366_386_177,
                9_007_199_254_740_993,
            ][..]
        )
        .prop_map(Value::from),
        select(&[u64::MAX, 1 << 63][..]).prop_map(Value::from),
        select(
            &[
                1e308,
                -1e308,
                9e15,
                -9e15,
                1.5,
                -0.0,
                1e19,
                1.765209366386e12
            ][..]
        )
        .prop_map(Value::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => number(),
        4 => word().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(key(), json_value(), 0..24)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// One change to a scenario webhook. `node` picks a node of the tree (modulo their number).
#[derive(Clone, Debug)]
enum Mutation {
    Drop {
        node: usize,
    },
    Replace {
        node: usize,
        with: Value,
    },
    /// A number becomes its text, a numeric text its number.
    Restring {
        node: usize,
    },
    Huge {
        node: usize,
        with: Value,
    },
    /// The top-level `timestamp` / `time`.
    Timestamp {
        with: Value,
    },
    /// A state, status, event name, type, direction...
    Word {
        field: &'static str,
        with: String,
    },
    Nest {
        node: usize,
        depth: usize,
        in_array: bool,
    },
    Long {
        node: usize,
        len: usize,
        fill: char,
    },
    Add {
        key: String,
        with: Value,
    },
}

const WORD_FIELDS: &[&str] = &[
    "state",
    "status",
    "event",
    "type",
    "direction",
    "leg",
    "version",
    "phase",
    "reason",
    "hanged_by",
    "subject_type",
    "is_answered",
    "voicemail",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let node = any::<usize>();
    prop_oneof![
        3 => node.prop_map(|node| Mutation::Drop { node }),
        3 => (node, leaf()).prop_map(|(node, with)| Mutation::Replace { node, with }),
        1 => (node, json_value()).prop_map(|(node, with)| Mutation::Replace { node, with }),
        2 => node.prop_map(|node| Mutation::Restring { node }),
        2 => (node, number()).prop_map(|(node, with)| Mutation::Huge { node, with }),
        3 => prop_oneof![number(), word().prop_map(Value::String), leaf()]
            .prop_map(|with| Mutation::Timestamp { with }),
        3 => (select(WORD_FIELDS), word()).prop_map(|(field, with)| Mutation::Word { field, with }),
        1 => (node, 1usize..400, any::<bool>())
            .prop_map(|(node, depth, in_array)| Mutation::Nest { node, depth, in_array }),
        1 => (node, prop_oneof![1usize..5000, 4090usize..4100, 200_000usize..300_000], any::<char>())
            .prop_map(|(node, len, fill)| Mutation::Long { node, len, fill }),
        1 => (key(), json_value()).prop_map(|(key, with)| Mutation::Add { key, with }),
    ]
}

/// One change to the bytes of the body, after the JSON is written.
#[derive(Clone, Debug)]
enum ByteMutation {
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Truncate {
        at: usize,
    },
    Flip {
        at: usize,
        bit: u8,
    },
    /// The same key again at the end, with another value (JSON allows it; the last wins).
    DuplicateKey {
        key: &'static str,
        with: String,
    },
}

/// Invalid UTF-8 (a lone byte, a truncated sequence, a surrogate, past U+10FFFF, overlong),
/// a NUL and a byte-order mark.
const INVALID_UTF8: &[&[u8]] = &[
    &[0xff],
    &[0xc3],
    &[0xed, 0xa0, 0x80],
    &[0xf4, 0x90, 0x80, 0x80],
    &[0xc0, 0xaf],
    &[0x00],
    &[0xef, 0xbb, 0xbf],
];

fn byte_mutation() -> impl Strategy<Value = ByteMutation> {
    let invalid_utf8 = select(INVALID_UTF8).prop_map(<[u8]>::to_vec);
    prop_oneof![
        3 => (any::<usize>(), invalid_utf8).prop_map(|(at, bytes)| ByteMutation::Insert { at, bytes }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| ByteMutation::Insert { at, bytes }),
        1 => any::<usize>().prop_map(|at| ByteMutation::Truncate { at }),
        2 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| ByteMutation::Flip { at, bit }),
        2 => (select(WORD_FIELDS), word()).prop_map(|(key, with)| ByteMutation::DuplicateKey { key, with }),
    ]
}

/// JSON pointers to every node of `value` (the root is `""`).
fn pointers(value: &Value) -> Vec<String> {
    fn walk(value: &Value, at: String, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    walk(
                        v,
                        format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                        out,
                    );
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
        out.push(at);
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

fn apply(payload: &mut Value, mutation: &Mutation) {
    let nodes = pointers(payload);
    let pick = |node: usize| nodes[node % nodes.len()].clone();
    match mutation {
        Mutation::Drop { node } => {
            let at = pick(*node);
            let Some((parent, last)) = at.rsplit_once('/') else {
                return;
            };
            let last = last.replace("~1", "/").replace("~0", "~");
            match payload.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&last);
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = last.parse::<usize>()
                        && i < items.len()
                    {
                        items.remove(i);
                    }
                }
                _ => {}
            }
        }
        Mutation::Replace { node, with } | Mutation::Huge { node, with } => {
            if let Some(v) = payload.pointer_mut(&pick(*node)) {
                *v = with.clone();
            }
        }
        Mutation::Restring { node } => {
            if let Some(v) = payload.pointer_mut(&pick(*node)) {
                *v = match &*v {
                    Value::Number(n) => Value::String(n.to_string()),
                    Value::String(s) => serde_json::from_str::<serde_json::Number>(s)
                        .map(Value::Number)
                        .unwrap_or_else(|_| Value::String(format!("{s}0"))),
                    Value::Bool(b) => Value::String(b.to_string()),
                    other => Value::String(other.to_string()),
                };
            }
        }
        Mutation::Timestamp { with } => {
            if let Value::Object(map) = payload {
                for name in ["timestamp", "time"] {
                    if map.contains_key(name) {
                        map.insert(name.into(), with.clone());
                    }
                }
            }
        }
        Mutation::Word { field, with } => {
            if let Value::Object(map) = payload {
                map.insert((*field).into(), Value::String(with.clone()));
            }
        }
        Mutation::Nest {
            node,
            depth,
            in_array,
        } => {
            if let Some(v) = payload.pointer_mut(&pick(*node)) {
                let mut nested = v.take();
                for _ in 0..*depth {
                    nested = if *in_array {
                        Value::Array(vec![nested])
                    } else {
                        json!({ "number": nested })
                    };
                }
                *v = nested;
            }
        }
        Mutation::Long { node, len, fill } => {
            if let Some(v) = payload.pointer_mut(&pick(*node)) {
                *v = Value::String(std::iter::repeat_n(*fill, *len).collect());
            }
        }
        Mutation::Add { key, with } => {
            if let Value::Object(map) = payload {
                map.insert(key.clone(), with.clone());
            }
        }
    }
}

fn apply_bytes(body: &mut Vec<u8>, mutation: &ByteMutation) {
    match mutation {
        ByteMutation::Insert { at, bytes } => {
            let at = at % (body.len() + 1);
            body.splice(at..at, bytes.iter().copied());
        }
        ByteMutation::Truncate { at } => body.truncate(at % (body.len() + 1)),
        ByteMutation::Flip { at, bit } => {
            if !body.is_empty() {
                let at = at % body.len();
                body[at] ^= 1 << bit;
            }
        }
        ByteMutation::DuplicateKey { key, with } => {
            if body.last() == Some(&b'}') && body.len() > 2 {
                body.pop();
                body.extend_from_slice(format!(",{}:{}}}", json!(key), json!(with)).as_bytes());
            }
        }
    }
}

/// A scenario webhook changed by up to four mutations, and its body changed by up to two
/// byte mutations.
#[derive(Clone, Debug)]
struct Mutated {
    scenario: usize,
    mutations: Vec<Mutation>,
    byte_mutations: Vec<ByteMutation>,
}

fn mutated() -> impl Strategy<Value = Mutated> {
    (
        any::<usize>(),
        prop::collection::vec(mutation(), 0..5),
        prop_oneof![
            4 => Just(Vec::new()),
            1 => prop::collection::vec(byte_mutation(), 1..3),
        ],
    )
        .prop_map(|(scenario, mutations, byte_mutations)| Mutated {
            scenario,
            mutations,
            byte_mutations,
        })
}

impl Mutated {
    fn build(&self, scenarios: &[(Provider, Value)]) -> (Provider, Value, Vec<u8>) {
        let (provider, original) = &scenarios[self.scenario % scenarios.len()];
        let mut payload = original.clone();
        for m in &self.mutations {
            apply(&mut payload, m);
        }
        let mut body = serde_json::to_vec(&payload).unwrap();
        for m in &self.byte_mutations {
            apply_bytes(&mut body, m);
        }
        (*provider, payload, body)
    }
}

// ---------------------------------------------------------------------------------------------
// The runs.

fn cases() -> u32 {
    std::env::var("CALLBRIDGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn runner(name: &str) -> TestRunner {
    let seed: u64 = std::env::var("CALLBRIDGE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand_seed);
    eprintln!("fuzz {name}: CALLBRIDGE_FUZZ_SEED={seed}");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    seed_bytes[8..8 + name.len().min(24)].copy_from_slice(&name.as_bytes()[..name.len().min(24)]);
    TestRunner::new_with_rng(
        ProptestConfig {
            cases: cases(),
            max_shrink_iters: 2_000,
            failure_persistence: None,
            ..ProptestConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    )
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let started = Instant::now();
    let result = runner(name).run(&strategy, test);
    if let Err(e) = result {
        panic!("fuzz {name} failed: {e}");
    }
    eprintln!(
        "fuzz {name}: {} cases in {:.1?}",
        cases(),
        started.elapsed()
    );
}

/// What must hold of a parser's answer on any payload.
fn check_parse(provider: Provider, payload: &Value) -> Result<(), TestCaseError> {
    let started = Instant::now();
    let parsed = providers::parse(provider, payload);
    prop_assert!(started.elapsed() < SLOW);
    match parsed {
        Ok(webhook) => {
            prop_assert!(!webhook.event.call_key.is_empty());
            prop_assert_eq!(webhook.event.provider, provider);
            prop_assert_eq!(webhook.event.id.len(), 32);
            let _ = webhook.event.at.to_rfc3339_millis();
        }
        Err(e) => {
            prop_assert!(!e.reason.is_empty());
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

/// The harness itself: a scenario webhook sent as a provider sends it gets the answer its
/// parser gives (accepted, or refused for the same field), signed or not.
#[test]
fn scenario_webhooks_sent_as_they_are_get_their_parsers_answer() {
    let bench = Bench::new();
    let scenarios = scenario_webhooks();
    let mut accepted = 0;
    for (provider, payload) in &scenarios {
        let body = serde_json::to_vec(payload).unwrap();
        let parsed = providers::parse(*provider, payload);
        for signing in [None, Some(Signing::Valid)] {
            let shape = Shape {
                method: "POST",
                auth: Auth::Bearer,
                content_type: Some("application/json"),
                signing,
            };
            bench.send(*provider, Some(payload), &body, &shape).unwrap();
            let tally = bench.tally.lock().unwrap();
            let last = tally.last.clone().unwrap();
            match &parsed {
                Ok(_) => {
                    assert_eq!(last, "202 accepted", "{provider} {payload}");
                    accepted += 1;
                }
                Err(e) => {
                    // A parser still being written: its own tests say so, not this harness.
                    eprintln!("note: {provider} does not parse a scenario webhook yet: {e}");
                    assert_eq!(last, "400 invalid_payload", "{provider} {payload}");
                }
            }
        }
    }
    assert!(
        accepted >= scenarios.len(),
        "only {accepted} of {} scenario webhooks accepted",
        scenarios.len() * 2
    );
}

#[test]
fn parsers_survive_arbitrary_json() {
    run(
        "parsers_arbitrary_json",
        (
            select(&Provider::ALL[..]),
            prop_oneof![4 => json_object(), 1 => json_value()],
        ),
        |(provider, payload)| check_parse(provider, &payload),
    );
}

#[test]
fn parsers_survive_mutated_scenarios() {
    let scenarios = scenario_webhooks();
    run("parsers_mutated_scenarios", mutated(), |m| {
        let (provider, payload, _) = m.build(&scenarios);
        check_parse(provider, &payload)?;
        // Read as another provider's, too.
        for other in Provider::ALL {
            check_parse(other, &payload)?;
        }
        Ok(())
    });
}

#[test]
fn ingest_survives_arbitrary_bytes() {
    let bench = Bench::new();
    let started = Instant::now();
    let bytes = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..512),
        1 => prop::collection::vec(any::<u8>(), 0..8192),
        1 => "[ -~]{0,256}".prop_map(String::into_bytes),
        1 => (any::<u8>(), (MAX_BODY_BYTES - 2)..(MAX_BODY_BYTES + 2)).prop_map(|(b, n)| vec![b; n]),
    ];
    run(
        "ingest_arbitrary_bytes",
        (select(&Provider::ALL[..]), bytes, shape()),
        |(provider, body, shape)| bench.send(provider, None, &body, &shape),
    );
    bench
        .tally
        .lock()
        .unwrap()
        .report("ingest_arbitrary_bytes", started);
}

#[test]
fn ingest_survives_arbitrary_json() {
    let bench = Bench::new();
    let started = Instant::now();
    run(
        "ingest_arbitrary_json",
        (
            select(&Provider::ALL[..]),
            prop_oneof![4 => json_object(), 1 => json_value()],
            shape(),
        ),
        |(provider, payload, shape)| {
            let body = serde_json::to_vec(&payload).unwrap();
            bench.send(provider, Some(&payload), &body, &shape)
        },
    );
    bench
        .tally
        .lock()
        .unwrap()
        .report("ingest_arbitrary_json", started);
}

#[test]
fn ingest_survives_mutated_scenarios() {
    let bench = Bench::new();
    let scenarios = scenario_webhooks();
    let started = Instant::now();
    run(
        "ingest_mutated_scenarios",
        (mutated(), shape()),
        |(m, shape)| {
            let (provider, payload, body) = m.build(&scenarios);
            bench.send(provider, Some(&payload), &body, &shape)
        },
    );
    let tally = bench.tally.lock().unwrap();
    tally.report("ingest_mutated_scenarios", started);
    // Most mutations are small: if nothing got through, the fuzz only tests the front door.
    if tally.cases >= 100 {
        let accepted = tally.by_outcome.get("202 accepted").copied().unwrap_or(0);
        assert!(
            accepted * 20 >= tally.cases,
            "only {accepted} of {} accepted",
            tally.cases
        );
    }
}

/// A form body: every value a string, like TeleCMI's query strings.
#[test]
fn ingest_survives_mutated_form_bodies() {
    let bench = Bench::new();
    let scenarios = scenario_webhooks();
    let started = Instant::now();
    run(
        "ingest_mutated_form_bodies",
        (mutated(), shape()),
        |(m, shape)| {
            let (provider, payload, _) = m.build(&scenarios);
            let mut form = form_urlencoded::Serializer::new(String::new());
            if let Value::Object(fields) = &payload {
                for (k, v) in fields {
                    match v {
                        Value::String(s) => form.append_pair(k, s),
                        other => form.append_pair(k, &other.to_string()),
                    };
                }
            }
            let body = form.finish().into_bytes();
            let shape = Shape {
                content_type: Some("application/x-www-form-urlencoded"),
                ..shape
            };
            bench.send(provider, Some(&payload), &body, &shape)
        },
    );
    bench
        .tally
        .lock()
        .unwrap()
        .report("ingest_mutated_form_bodies", started);
}

/// Sanity of the harness itself: the objects it builds are what it claims.
#[test]
fn mutations_do_what_they_say() {
    let mut payload = json!({"a": {"b": [1, "2"]}, "timestamp": 1});
    apply(&mut payload, &Mutation::Drop { node: 0 });
    assert_eq!(payload, json!({"a": {"b": ["2"]}, "timestamp": 1}));
    apply(
        &mut payload,
        &Mutation::Timestamp {
            with: json!("9999-12-31T23:59:59Z"),
        },
    );
    assert_eq!(payload["timestamp"], "9999-12-31T23:59:59Z");
    apply(
        &mut payload,
        &Mutation::Nest {
            node: 0,
            depth: 3,
            in_array: true,
        },
    );
    assert_eq!(payload["a"]["b"][0], json!([[["2"]]]));
    let mut body = br#"{"x":1}"#.to_vec();
    apply_bytes(
        &mut body,
        &ByteMutation::DuplicateKey {
            key: "state",
            with: "X".into(),
        },
    );
    assert_eq!(body, br#"{"x":1,"state":"X"}"#);
    let _: Map<String, Value> = serde_json::from_slice(&body).unwrap();
}
