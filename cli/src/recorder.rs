//! A stand-in for Morph's event endpoint, for local runs, demos and tests: it records every
//! event it receives with the headers Morph reads and the answer it gave, and it can be told to
//! misbehave (be down, answer a scripted sequence, fail each idempotency key's first tries, choke
//! on some calls only, drop the connection instead of answering, be slow, answer 409 to a key it
//! already took, or honour no idempotency key at all), at start or at run time.
//!
//! Whatever the keys say, it counts how often each change (a resource id and the event's body)
//! was applied, so a change sent twice under two keys, or a repeat a CRM without keys would
//! apply again, shows as [`RecordedEvent::applied_before`].
//!
//! HTTP interface:
//!
//! - `POST <any path>`: an event; recorded, then answered as the [`Behaviour`] says.
//! - `GET /recorded`: every [`RecordedEvent`] as a JSON list; `DELETE /recorded` forgets them
//!   (and the idempotency keys seen), the behaviour stays.
//! - `GET /behaviour`, `PUT /behaviour` (a JSON [`Behaviour`]): the faults in force.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use callbridge_shared::domain::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(clap::Args)]
pub struct Args {
    /// Where to listen (`127.0.0.1:0` picks a free port). Events are taken on any path.
    #[arg(long, default_value = "127.0.0.1:4010")]
    listen: String,
    /// Also append every recorded event to this file, one JSON object a line.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start down: answer every event with STATUS[:RETRY_AFTER_SECS] until `PUT /behaviour`
    /// says otherwise.
    #[arg(long, value_name = "ANSWER")]
    outage: Option<Answer>,
    /// Answer the next events with these, one each, then take events normally,
    /// e.g. `503,429:2,400`.
    #[arg(long, value_name = "ANSWERS", value_delimiter = ',')]
    script: Vec<Answer>,
    /// Fail the first N requests carrying each idempotency key (with --fail-answer).
    #[arg(long, value_name = "N")]
    fail_first: Option<u32>,
    /// The answer of --fail-first.
    #[arg(long, value_name = "ANSWER", default_value = "503")]
    fail_answer: Answer,
    /// Answer every event of this resource id with ANSWER, whatever the others get, as
    /// `RESOURCE_ID=ANSWER` (repeatable), e.g. `tc_123=503` or `tc_123=reset`.
    #[arg(long, value_name = "RESOURCE_ID=ANSWER", value_parser = parse_resource_answer)]
    fail_resource: Vec<(String, Answer)>,
    /// Wait this long before every answer, e.g. to exceed the bridge's `crm.timeout_ms`.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u64,
    /// Answer 409 to an event whose idempotency key was already taken, as a CRM that refuses
    /// a repeated key does.
    #[arg(long)]
    conflict_on_taken_key: bool,
    /// Honour no idempotency key: every event answered 2xx is applied, repeats included.
    #[arg(long, conflicts_with = "conflict_on_taken_key")]
    ignore_keys: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let behaviour = Behaviour {
        outage: args.outage,
        script: args.script.into(),
        fail_first: args.fail_first.map(|count| FailFirst {
            count,
            answer: args.fail_answer,
        }),
        fail_resources: args.fail_resource.into_iter().collect(),
        flaky: None,
        delay_ms: args.delay_ms,
        conflict_on_taken_key: args.conflict_on_taken_key,
        ignore_keys: args.ignore_keys,
    };
    let out = match &args.out {
        Some(path) => Some(
            File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let recorder = Recorder::start_with(
        args.listen.as_str(),
        behaviour,
        Log {
            file: out,
            print: true,
        },
    )
    .await?;
    println!(
        "crm-recorder listening on http://{addr}: POST events to any path (e.g. {url}); \
         GET/DELETE /recorded, GET/PUT /behaviour",
        addr = recorder.addr(),
        url = recorder.url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// One answer to an event: a status, and a `Retry-After` (in seconds) if wanted.
/// Written `STATUS[:RETRY_AFTER_SECS]` on the command line, e.g. `429:2`; `reset` (status
/// [`Answer::RESET`]) is no answer at all: the connection is closed once the request is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// Answer this late (instead of [`Behaviour::delay_ms`]); `@MS` on the command line, e.g.
    /// `200@3000`: taken at once, answered after the bridge's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

impl Answer {
    /// The status of [`Answer::reset`], and of a recorded event that got no answer.
    pub const RESET: u16 = 0;

    /// Close the connection without answering, as a CRM that crashes or a proxy that resets.
    pub fn reset() -> Self {
        Self::status(Self::RESET)
    }

    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after_secs: None,
            delay_ms: None,
        }
    }

    pub fn retry_after(status: u16, secs: u64) -> Self {
        Self {
            retry_after_secs: Some(secs),
            ..Self::status(status)
        }
    }

    /// `status`, answered after `ms`.
    pub fn late(status: u16, ms: u64) -> Self {
        Self {
            delay_ms: Some(ms),
            ..Self::status(status)
        }
    }
}

impl FromStr for Answer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((answer, ms)) = s.split_once('@') {
            let ms = ms
                .trim()
                .parse()
                .map_err(|_| format!("`{s}`: the delay after `@` is whole milliseconds"))?;
            return Ok(Self {
                delay_ms: Some(ms),
                ..answer.parse()?
            });
        }
        if s.trim() == "reset" {
            return Ok(Self::reset());
        }
        let (status, retry_after) = match s.split_once(':') {
            Some((status, secs)) => (status, Some(secs)),
            None => (s, None),
        };
        let status: u16 = status
            .trim()
            .parse()
            .ok()
            .filter(|s| (100..600).contains(s))
            .ok_or_else(|| {
                format!("`{s}`: expected an HTTP status, e.g. 503 or 429:2, or reset")
            })?;
        let retry_after_secs = retry_after
            .map(|secs| {
                secs.trim()
                    .parse()
                    .map_err(|_| format!("`{s}`: the Retry-After after `:` is whole seconds"))
            })
            .transpose()?;
        Ok(Self {
            status,
            retry_after_secs,
            delay_ms: None,
        })
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status == Self::RESET {
            f.write_str("reset")?;
        } else {
            write!(f, "{}", self.status)?;
        }
        if let Some(secs) = self.retry_after_secs {
            write!(f, ":{secs}")?;
        }
        match self.delay_ms {
            Some(ms) => write!(f, "@{ms}"),
            None => Ok(()),
        }
    }
}

/// `RESOURCE_ID=ANSWER`, for `--fail-resource`.
fn parse_resource_answer(s: &str) -> Result<(String, Answer), String> {
    let (id, answer) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected RESOURCE_ID=ANSWER, e.g. tc_123=503"))?;
    Ok((id.trim().to_string(), answer.parse()?))
}

/// The first `count` requests carrying each idempotency key get `answer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailFirst {
    pub count: u32,
    pub answer: Answer,
}

/// One request in `one_in` gets the next of `answers`, in turn: a CRM that fails now and then,
/// the same way on every run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flaky {
    pub one_in: u64,
    pub answers: Vec<Answer>,
}

/// How the recorder answers. The first rule that applies wins, in the order of the fields;
/// with none, a JSON event is taken (200, the event echoed back, as Morph answers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// The CRM is down: every event gets this answer.
    pub outage: Option<Answer>,
    /// The next events get these answers, one each.
    pub script: VecDeque<Answer>,
    pub fail_first: Option<FailFirst>,
    /// Every event of these resources (by `data.id`) gets its answer: a CRM that chokes on
    /// some calls while it takes the others.
    pub fail_resources: BTreeMap<String, Answer>,
    pub flaky: Option<Flaky>,
    /// Every answer waits this long (the event is recorded on arrival all the same).
    pub delay_ms: u64,
    /// A request whose idempotency key was already taken gets 409 instead of a success.
    pub conflict_on_taken_key: bool,
    /// A CRM that honours no idempotency key: a repeat is applied like any event, never
    /// flagged [`RecordedEvent::duplicate`].
    pub ignore_keys: bool,
}

impl Behaviour {
    /// A CRM that is down: every event gets `answer`.
    pub fn down(answer: Answer) -> Self {
        Self {
            outage: Some(answer),
            ..Self::default()
        }
    }
}

/// The Morph event headers, as received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHeaders {
    /// As Morph's REST API spells it.
    pub connector_id: Option<String>,
    /// As Morph's event docs spell it (`x-conector-id`).
    pub conector_id: Option<String>,
    pub owner_id: Option<String>,
    pub idempotency_key: Option<String>,
}

impl EventHeaders {
    fn of(headers: &HeaderMap) -> Self {
        let get = |name: &str| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        Self {
            connector_id: get("x-connector-id"),
            conector_id: get("x-conector-id"),
            owner_id: get("x-owner-id"),
            idempotency_key: get("x-idempotency-key"),
        }
    }
}

/// One request to the event endpoint and what the recorder answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Arrival order, from 1.
    pub seq: u64,
    /// RFC 3339, milliseconds.
    pub received_at: String,
    pub path: String,
    pub headers: EventHeaders,
    /// The JSON body; a body that is not JSON is kept as a string (and answered 400).
    pub body: Value,
    /// The status answered; [`Answer::RESET`] (0) when the connection was closed instead.
    pub status: u16,
    /// The idempotency key had already been taken (answered 2xx): a CRM that honours the key
    /// ignores this one. Never set when the recorder ignores keys.
    pub duplicate: bool,
    /// How many times the CRM had already applied this same change (this resource, this body)
    /// when it applied this event, whatever the keys: above 0 is a doubled effect.
    #[serde(default)]
    pub applied_before: u32,
    /// How long the answer was held back (0: answered at once), so a repeat can be told from
    /// a retry after an answer that came too late.
    #[serde(default)]
    pub answered_after_ms: u64,
}

impl RecordedEvent {
    /// Answered with a success.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Taken and not a duplicate: what a CRM that honours idempotency keys has applied.
    pub fn applied(&self) -> bool {
        self.accepted() && !self.duplicate
    }

    /// Applied although the CRM had applied the same change before: the effect doubled.
    pub fn doubled(&self) -> bool {
        self.applied() && self.applied_before > 0
    }

    /// `telephonyCall::created`, ...
    pub fn event_type(&self) -> Option<&str> {
        self.body["event"].as_str()
    }

    pub fn resource_id(&self) -> Option<&str> {
        self.body["data"]["id"].as_str()
    }

    pub fn idempotency_key(&self) -> Option<&str> {
        self.headers.idempotency_key.as_deref()
    }
}

impl fmt::Display for RecordedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {} {} {} key={}",
            self.seq,
            self.status,
            self.event_type().unwrap_or("(no event)"),
            self.resource_id().unwrap_or("(no id)"),
            self.idempotency_key().unwrap_or("(none)"),
        )?;
        if self.duplicate {
            f.write_str(" duplicate")?;
        }
        if self.applied_before > 0 {
            write!(f, " applied-before={}", self.applied_before)?;
        }
        if self.answered_after_ms > 0 {
            write!(f, " late={}ms", self.answered_after_ms)?;
        }
        Ok(())
    }
}

/// Where recorded events are written besides memory (the command line's choices).
struct Log {
    file: Option<File>,
    print: bool,
}

#[derive(Default)]
struct Memory {
    behaviour: Behaviour,
    events: Vec<RecordedEvent>,
    /// Idempotency keys answered 2xx.
    taken: HashSet<String>,
    /// Times each change (resource id, body) was applied.
    changes_applied: HashMap<(String, String), u32>,
    /// Requests seen per idempotency key, for `fail_first`.
    attempts: HashMap<String, u32>,
    /// Requests seen, for `flaky`.
    requests: u64,
}

impl Memory {
    fn forget(&mut self) {
        self.events.clear();
        self.taken.clear();
        self.changes_applied.clear();
        self.attempts.clear();
        self.requests = 0;
    }

    fn answer(&mut self, key: Option<&str>, resource: Option<&str>, body_is_json: bool) -> Answer {
        let attempt = key.map(|key| {
            let attempts = self.attempts.entry(key.to_string()).or_default();
            *attempts += 1;
            *attempts
        });
        if let Some(down) = self.behaviour.outage {
            return down;
        }
        if let Some(scripted) = self.behaviour.script.pop_front() {
            return scripted;
        }
        let failing = self
            .behaviour
            .fail_first
            .filter(|fail| attempt.is_some_and(|n| n <= fail.count));
        if let Some(fail) = failing {
            return fail.answer;
        }
        if let Some(answer) = resource.and_then(|id| self.behaviour.fail_resources.get(id)) {
            return *answer;
        }
        self.requests += 1;
        if let Some(flaky) = &self.behaviour.flaky
            && flaky.one_in > 0
            && !flaky.answers.is_empty()
            && self.requests.is_multiple_of(flaky.one_in)
        {
            let turn = (self.requests / flaky.one_in - 1) as usize % flaky.answers.len();
            return flaky.answers[turn];
        }
        Answer::status(if body_is_json { 200 } else { 400 })
    }
}

struct Shared {
    memory: Mutex<Memory>,
    /// Bumped on every recorded event, so waiters wake up instead of polling.
    recorded: watch::Sender<u64>,
    log: Mutex<Log>,
}

impl Shared {
    fn memory(&self) -> MutexGuard<'_, Memory> {
        // A panic while holding the lock leaves plain data behind, still worth reading.
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one request and decides its answer.
    fn record(&self, path: &str, headers: &HeaderMap, body: &[u8]) -> (Answer, RecordedEvent) {
        let headers = EventHeaders::of(headers);
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let (answer, event) = {
            let mut memory = self.memory();
            let key = headers.idempotency_key.clone();
            let resource = json.as_ref().and_then(|j| j["data"]["id"].as_str());
            let mut answer = memory.answer(key.as_deref(), resource, json.is_some());
            let duplicate = !memory.behaviour.ignore_keys
                && key.as_ref().is_some_and(|k| memory.taken.contains(k));
            let success = |answer: &Answer| (200..300).contains(&answer.status);
            if duplicate && success(&answer) && memory.behaviour.conflict_on_taken_key {
                answer.status = 409;
            }
            let applied = success(&answer) && !duplicate;
            if let Some(key) = key.filter(|_| success(&answer)) {
                memory.taken.insert(key);
            }
            let applied_before = match (resource, &json) {
                (Some(id), Some(json)) if applied => {
                    let times = memory
                        .changes_applied
                        .entry((id.to_string(), json.to_string()))
                        .or_default();
                    *times += 1;
                    *times - 1
                }
                _ => 0,
            };
            let answered_after_ms = answer.delay_ms.unwrap_or(memory.behaviour.delay_ms);
            let event = RecordedEvent {
                seq: memory.events.len() as u64 + 1,
                received_at: now(),
                path: path.to_string(),
                headers,
                body: json.unwrap_or_else(|| Value::String(String::from_utf8_lossy(body).into())),
                status: answer.status,
                duplicate,
                applied_before,
                answered_after_ms,
            };
            memory.events.push(event.clone());
            (answer, event)
        };
        self.write_log(&event);
        self.recorded.send_modify(|n| *n += 1);
        (answer, event)
    }

    fn write_log(&self, event: &RecordedEvent) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.print {
            println!("{event}");
        }
        if let Some(file) = &mut log.file {
            let line = serde_json::to_string(event).expect("a recorded event serialises");
            if let Err(e) = writeln!(file, "{line}") {
                eprintln!("crm-recorder: cannot append to the --out file: {e}");
            }
        }
    }
}

fn now() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    Timestamp::from_micros(micros)
        .map(Timestamp::to_rfc3339_millis)
        .unwrap_or_else(|_| format!("{micros}us"))
}

/// A running recorder. It stops when dropped.
pub struct Recorder {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Recorder {
    /// Starts a recorder on `addr` (`127.0.0.1:0` picks a free port), on the current Tokio
    /// runtime.
    pub async fn start(addr: impl ToSocketAddrs, behaviour: Behaviour) -> anyhow::Result<Self> {
        Self::start_with(
            addr,
            behaviour,
            Log {
                file: None,
                print: false,
            },
        )
        .await
    }

    async fn start_with(
        addr: impl ToSocketAddrs,
        behaviour: Behaviour,
        log: Log,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("the CRM recorder cannot listen: {e}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            memory: Mutex::new(Memory {
                behaviour,
                ..Memory::default()
            }),
            recorded: watch::Sender::new(0),
            log: Mutex::new(log),
        });
        let app = Router::new()
            .route("/recorded", get(recorded).delete(forget).post(take_event))
            .route(
                "/behaviour",
                get(behaviour_in_force)
                    .put(change_behaviour)
                    .post(take_event),
            )
            .fallback(post(take_event))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("crm-recorder: the server stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to give the bridge as `crm.url`.
    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.shared.memory().events.clone()
    }

    pub fn behaviour(&self) -> Behaviour {
        self.shared.memory().behaviour.clone()
    }

    /// Changes the faults from now on (e.g. ends an outage).
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.shared.memory().behaviour = behaviour;
    }

    /// Forgets the recorded events and the idempotency keys seen; the behaviour stays.
    pub fn reset(&self) {
        self.shared.memory().forget();
    }

    /// Waits until `done` holds for the recorded events, and returns them; after `timeout`,
    /// fails with `what` and a summary of what was recorded.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[RecordedEvent]) -> bool,
    ) -> anyhow::Result<Vec<RecordedEvent>> {
        let mut recorded = self.shared.recorded.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Mark the count seen before reading, so an event recorded in between wakes us.
            recorded.borrow_and_update();
            let events = self.events();
            if done(&events) {
                return Ok(events);
            }
            if tokio::time::timeout_at(deadline, recorded.changed())
                .await
                .is_err()
            {
                anyhow::bail!(
                    "the CRM recorder waited {timeout:?} for {what}; it recorded {} events:\n{}",
                    events.len(),
                    summary(&events)
                );
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One line per event, for failure messages.
pub fn summary(events: &[RecordedEvent]) -> String {
    events
        .iter()
        .map(|e| format!("  {e}\n"))
        .collect::<String>()
}

async fn take_event(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (answer, event) = shared.record(uri.path(), &headers, &body);
    if answer.status == Answer::RESET {
        // Unwinding ends the connection's task, which closes the socket with no answer sent;
        // `resume_unwind` skips the panic hook, so nothing is printed.
        std::panic::resume_unwind(Box::new("crm-recorder: reset, as it was told to"));
    }
    if event.answered_after_ms > 0 {
        tokio::time::sleep(Duration::from_millis(event.answered_after_ms)).await;
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let body = if status.is_success() {
        event.body
    } else {
        json!({ "error": format!("the CRM recorder answers {answer}, as it was told to") })
    };
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(secs) = answer.retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

async fn recorded(State(shared): State<Arc<Shared>>) -> axum::Json<Vec<RecordedEvent>> {
    axum::Json(shared.memory().events.clone())
}

async fn forget(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.memory().forget();
    StatusCode::NO_CONTENT
}

async fn behaviour_in_force(State(shared): State<Arc<Shared>>) -> axum::Json<Behaviour> {
    axum::Json(shared.memory().behaviour.clone())
}

async fn change_behaviour(
    State(shared): State<Arc<Shared>>,
    axum::Json(behaviour): axum::Json<Behaviour>,
) -> axum::Json<Behaviour> {
    shared.memory().behaviour = behaviour.clone();
    axum::Json(behaviour)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str) -> Value {
        json!({ "event": "telephonyCall::created", "data": { "id": "call_1" }, "key": key })
    }

    async fn post(recorder: &Recorder, key: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(recorder.url())
            .header("x-idempotency-key", key)
            .header("x-connector-id", "conn")
            .header("x-conector-id", "conn")
            .header("x-owner-id", "owner")
            .json(&event(key))
            .send()
            .await
            .unwrap()
    }

    fn statuses(recorder: &Recorder) -> Vec<u16> {
        recorder.events().iter().map(|e| e.status).collect()
    }

    #[test]
    fn answers_read_as_status_and_retry_after() {
        assert_eq!("503".parse(), Ok(Answer::status(503)));
        assert_eq!("429:2".parse(), Ok(Answer::retry_after(429, 2)));
        assert_eq!(Answer::retry_after(429, 2).to_string(), "429:2");
        assert!("ok".parse::<Answer>().is_err());
        assert!("700".parse::<Answer>().is_err());
        assert!("429:soon".parse::<Answer>().is_err());
        assert_eq!("reset".parse(), Ok(Answer::reset()));
        assert_eq!(Answer::reset().to_string(), "reset");
        assert_eq!("200@3000".parse(), Ok(Answer::late(200, 3000)));
        assert_eq!(Answer::late(200, 3000).to_string(), "200@3000");
        assert_eq!(
            parse_resource_answer("tc_1=429:2"),
            Ok(("tc_1".to_string(), Answer::retry_after(429, 2)))
        );
        assert!(parse_resource_answer("tc_1").is_err());
    }

    #[test]
    fn a_flaky_crm_fails_one_request_in_n_in_turn() {
        let mut memory = Memory {
            behaviour: Behaviour {
                flaky: Some(Flaky {
                    one_in: 2,
                    answers: vec![Answer::status(503), Answer::reset()],
                }),
                ..Behaviour::default()
            },
            ..Memory::default()
        };
        let statuses: Vec<u16> = (0..6)
            .map(|_| memory.answer(Some("k"), None, true).status)
            .collect();
        assert_eq!(statuses, [200, 503, 200, Answer::RESET, 200, 503]);
    }

    #[tokio::test]
    async fn a_reset_closes_the_connection_without_an_answer() {
        let behaviour = Behaviour {
            fail_resources: [("call_1".to_string(), Answer::reset())].into(),
            ..Behaviour::default()
        };
        let recorder = Recorder::start("127.0.0.1:0", behaviour).await.unwrap();
        let sent = reqwest::Client::new()
            .post(recorder.url())
            .json(&event("k"))
            .send()
            .await;
        assert!(sent.is_err(), "{sent:?}");
        assert_eq!(statuses(&recorder), [Answer::RESET]);
        // The recorder still answers on new connections.
        recorder.set_behaviour(Behaviour::default());
        assert_eq!(post(&recorder, "k").await.status(), 200);
    }

    #[test]
    fn outage_wins_over_script_which_wins_over_fail_first() {
        let mut memory = Memory {
            behaviour: Behaviour {
                outage: Some(Answer::status(502)),
                script: [Answer::status(400)].into(),
                fail_first: Some(FailFirst {
                    count: 2,
                    answer: Answer::status(503),
                }),
                fail_resources: [("call_2".to_string(), Answer::status(404))].into(),
                flaky: None,
                delay_ms: 0,
                conflict_on_taken_key: false,
                ignore_keys: false,
            },
            ..Memory::default()
        };
        assert_eq!(memory.answer(Some("k"), None, true).status, 502);
        memory.behaviour.outage = None;
        assert_eq!(memory.answer(Some("k"), None, true).status, 400);
        // The two requests above were the key's first two: it goes through now.
        assert_eq!(memory.answer(Some("k"), None, true).status, 200);
        assert_eq!(memory.answer(Some("other"), None, true).status, 503);
        assert_eq!(memory.answer(None, None, true).status, 200);
        assert_eq!(memory.answer(None, None, false).status, 400);
        // A failing resource fails on every try, the others go through.
        assert_eq!(memory.answer(Some("k"), Some("call_2"), true).status, 404);
        assert_eq!(memory.answer(Some("k"), Some("call_1"), true).status, 200);
    }

    #[tokio::test]
    async fn records_headers_and_flags_a_taken_key_as_duplicate() {
        let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
            .await
            .unwrap();
        let answer = post(&recorder, "call_1-r1").await;
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.json::<Value>().await.unwrap(), event("call_1-r1"));
        post(&recorder, "call_1-r1").await;
        post(&recorder, "call_1-r2").await;

        let events = recorder.events();
        assert_eq!(
            events[0].headers,
            EventHeaders {
                connector_id: Some("conn".into()),
                conector_id: Some("conn".into()),
                owner_id: Some("owner".into()),
                idempotency_key: Some("call_1-r1".into()),
            }
        );
        assert_eq!(events[0].path, "/events");
        assert_eq!(events[0].event_type(), Some("telephonyCall::created"));
        assert_eq!(events[0].resource_id(), Some("call_1"));
        let flags: Vec<bool> = events.iter().map(|e| e.duplicate).collect();
        assert_eq!(flags, [false, true, false]);
        assert_eq!(events.iter().filter(|e| e.applied()).count(), 2);
    }

    async fn post_body(recorder: &Recorder, key: &str, body: &Value) -> u16 {
        let sent = reqwest::Client::new()
            .post(recorder.url())
            .header("x-idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        sent.status().as_u16()
    }

    #[tokio::test]
    async fn the_same_change_under_two_keys_is_applied_twice_and_flagged() {
        let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
            .await
            .unwrap();
        let change = event("r1");
        post_body(&recorder, "call_1-r1", &change).await;
        post_body(&recorder, "call_1-r1", &change).await;
        post_body(&recorder, "call_1-r2", &change).await;
        post_body(&recorder, "call_1-r3", &event("r3")).await;
        let events = recorder.events();
        let seen: Vec<(bool, bool, u32)> = events
            .iter()
            .map(|e| (e.applied(), e.doubled(), e.applied_before))
            .collect();
        // The repeat of a key is no effect; the same body under a new key is a second one.
        assert_eq!(
            seen,
            [
                (true, false, 0),
                (false, false, 0),
                (true, true, 1),
                (true, false, 0)
            ]
        );
        assert!(
            events[2].to_string().ends_with("applied-before=1"),
            "{}",
            events[2]
        );
    }

    #[tokio::test]
    async fn a_crm_ignoring_keys_applies_every_repeat() {
        let behaviour = Behaviour {
            ignore_keys: true,
            ..Behaviour::default()
        };
        let recorder = Recorder::start("127.0.0.1:0", behaviour).await.unwrap();
        for _ in 0..3 {
            assert_eq!(post(&recorder, "call_1-r1").await.status(), 200);
        }
        let events = recorder.events();
        assert!(events.iter().all(|e| e.applied() && !e.duplicate));
        let before: Vec<u32> = events.iter().map(|e| e.applied_before).collect();
        assert_eq!(before, [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_taken_key_gets_409_when_asked_and_is_not_applied_again() {
        let behaviour = Behaviour {
            conflict_on_taken_key: true,
            ..Behaviour::default()
        };
        let recorder = Recorder::start("127.0.0.1:0", behaviour).await.unwrap();
        assert_eq!(post(&recorder, "call_1-r1").await.status(), 200);
        assert_eq!(post(&recorder, "call_1-r1").await.status(), 409);
        assert_eq!(post(&recorder, "call_1-r2").await.status(), 200);
        assert_eq!(statuses(&recorder), [200, 409, 200]);
        let events = recorder.events();
        assert!(events[1].duplicate && !events[1].applied());
        assert!(events.iter().all(|e| !e.doubled()));
    }

    #[tokio::test]
    async fn a_failed_key_is_not_a_duplicate_when_it_is_taken_later() {
        let behaviour = Behaviour {
            fail_first: Some(FailFirst {
                count: 2,
                answer: Answer::status(503),
            }),
            ..Behaviour::default()
        };
        let recorder = Recorder::start("127.0.0.1:0", behaviour).await.unwrap();
        for _ in 0..3 {
            post(&recorder, "call_1-r1").await;
        }
        assert_eq!(statuses(&recorder), [503, 503, 200]);
        assert!(recorder.events().iter().all(|e| !e.duplicate));
    }

    #[tokio::test]
    async fn faults_change_at_run_time_over_http() {
        let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
            .await
            .unwrap();
        let admin = format!("http://{}/behaviour", recorder.addr());
        let client = reqwest::Client::new();
        let down = json!({ "outage": { "status": 429, "retry_after_secs": 3 } });
        let put = client.put(&admin).json(&down).send().await.unwrap();
        assert_eq!(put.status(), 200);
        assert_eq!(
            recorder.behaviour().outage,
            Some(Answer::retry_after(429, 3))
        );

        let refused = post(&recorder, "k").await;
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "3");

        client.put(&admin).json(&json!({})).send().await.unwrap();
        assert_eq!(post(&recorder, "k").await.status(), 200);

        let recorded_url = format!("http://{}/recorded", recorder.addr());
        let recorded: Vec<RecordedEvent> = client
            .get(&recorded_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(recorded, recorder.events());
        assert_eq!(statuses(&recorder), [429, 200]);

        client.delete(&recorded_url).send().await.unwrap();
        assert!(recorder.events().is_empty());
        let bad = client.put(&admin).json(&json!({ "down": true })).send();
        assert_eq!(bad.await.unwrap().status(), 422);
    }

    #[tokio::test]
    async fn a_script_is_answered_in_turn_then_events_are_taken() {
        let behaviour = Behaviour {
            script: [Answer::status(503), Answer::status(400)].into(),
            ..Behaviour::default()
        };
        let recorder = Recorder::start("127.0.0.1:0", behaviour).await.unwrap();
        for key in ["a", "b", "c"] {
            post(&recorder, key).await;
        }
        assert_eq!(statuses(&recorder), [503, 400, 200]);
    }

    #[tokio::test]
    async fn a_slow_answer_is_recorded_on_arrival() {
        let behaviour = Behaviour {
            delay_ms: 10_000,
            ..Behaviour::default()
        };
        let recorder = Recorder::start("127.0.0.1:0", behaviour).await.unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let sent = client.post(recorder.url()).json(&event("k")).send().await;
        assert!(sent.unwrap_err().is_timeout());
        let events = recorder
            .wait_for("the slow event", Duration::from_secs(10), |e| e.len() == 1)
            .await
            .unwrap();
        assert_eq!(events[0].status, 200);
    }

    #[tokio::test]
    async fn waiting_in_vain_says_what_was_recorded() {
        let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
            .await
            .unwrap();
        post(&recorder, "call_1-r1").await;
        let error = recorder
            .wait_for("two events", Duration::from_millis(50), |e| e.len() == 2)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("two events"), "{error}");
        assert!(
            error.contains("#1 200 telephonyCall::created call_1 key=call_1-r1"),
            "{error}"
        );
    }
}
