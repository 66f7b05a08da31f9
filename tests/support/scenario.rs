//! The provider scenarios of `tests/scenarios/<provider>/` (lists of webhook bodies) and their
//! `.expected.json`, and the checks of what the CRM recorder got against them.

use callbridge::recorder::{RecordedEvent, summary};
use callbridge_shared::config::{Config, ConnectionConfig};
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::record::CallKey;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[path = "revisions.rs"]
mod revisions;

pub const CREATED: &str = "telephonyCall::created";
pub const DELETED: &str = "telephonyCall::deleted";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn example_config_path() -> PathBuf {
    repo_root().join("infra/callbridge.example.toml")
}

/// A connection of the example config.
pub fn example_connection(id: &str) -> ConnectionConfig {
    Config::load(&example_config_path())
        .expect("the example config loads")
        .connections
        .into_iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no connection `{id}` in the example config"))
}

/// The token of a connection of the example config.
pub fn token_of(connection_id: &str) -> String {
    example_connection(connection_id).token.unwrap_or_else(|| {
        panic!("connection `{connection_id}` of the example config has no token")
    })
}

/// `<name>.expected.json`: the resources a scenario ends with.
#[derive(Clone, Debug, Deserialize)]
pub struct Expected {
    /// The connection of the example config the scenario is written for.
    pub connection: String,
    /// The Morph connector and owner ids the events must carry: the connection's, written in
    /// the reference so that a call delivered under another tenant's ids fails.
    #[serde(default)]
    pub connector_id: Option<String>,
    #[serde(default)]
    pub owner_id: Option<String>,
    /// By the provider's call key.
    pub calls: BTreeMap<String, ExpectedCall>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ExpectedCall {
    /// The Morph events, in order, when the webhooks arrive in file order.
    pub events: Vec<String>,
    /// The fields of the last event.
    #[serde(default)]
    pub fields: Value,
    #[serde(default, rename = "rawResource")]
    pub raw_resource: Option<Value>,
    /// Every Morph event of the call in file order: `event`, `fields`, `rawResource`.
    #[serde(default)]
    pub revisions: Option<Vec<Value>>,
}

impl ExpectedCall {
    fn ends_deleted(&self) -> bool {
        self.events.last().is_some_and(|e| e == DELETED)
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    /// `<provider>/<file name>`
    pub name: String,
    pub provider: Provider,
    pub path: PathBuf,
    pub webhooks: Vec<Value>,
    pub expected: Expected,
    /// The connection the webhooks are sent to: the expected one, or a copy of it.
    pub connection: String,
}

impl Scenario {
    /// The same scenario sent to `connection`, a copy of its connection (so its calls are
    /// other resources).
    pub fn on(&self, connection: impl Into<String>) -> Scenario {
        Scenario {
            connection: connection.into(),
            ..self.clone()
        }
    }

    /// The token of the connection (a copy has the same).
    pub fn token(&self) -> String {
        token_of(&self.expected.connection)
    }

    pub fn resource_id(&self, call_key: &str) -> String {
        CallKey::new(&self.connection, self.provider, call_key).resource_id()
    }

    pub fn resource_ids(&self) -> Vec<String> {
        self.expected
            .calls
            .keys()
            .map(|key| self.resource_id(key))
            .collect()
    }

    /// The events of the scenario's calls, for failure messages.
    pub fn summary(&self, events: &[RecordedEvent]) -> String {
        let ids = self.resource_ids();
        let mine: Vec<RecordedEvent> = events
            .iter()
            .filter(|e| {
                e.resource_id()
                    .is_some_and(|id| ids.iter().any(|i| i == id))
            })
            .cloned()
            .collect();
        format!("{} on {}:\n{}", self.name, self.connection, summary(&mine))
    }

    /// The expected calls with their resource id.
    fn calls(&self) -> impl Iterator<Item = (String, &str, &ExpectedCall)> {
        self.expected
            .calls
            .iter()
            .map(|(key, call)| (self.resource_id(key), key.as_str(), call))
    }

    /// Whether the CRM has applied, for every call, as many events as the file order gives.
    pub fn delivered_in_order(&self, events: &[RecordedEvent]) -> bool {
        self.calls()
            .all(|(id, _, call)| applied_of(events, &id).len() >= call.events.len())
    }

    /// Whether every call has reached its expected end at the CRM.
    pub fn delivered_in_any_order(&self, events: &[RecordedEvent]) -> bool {
        self.calls().all(|(id, _, call)| {
            let last = applied_of(events, &id).last().copied();
            if call.ends_deleted() {
                // Merged away before it was shown, or deleted.
                last.is_none_or(|e| e.event_type() == Some(DELETED))
            } else if call.events.is_empty() {
                true
            } else {
                last.is_some_and(|e| e.body["data"]["fields"] == call.fields)
            }
        })
    }

    /// The file-order expectation: per call, exactly the expected sequence of events, each
    /// with the fields and `rawResource` of the reference's revision (or, without
    /// `revisions`, ending with the expected resource).
    pub fn assert_in_order(&self, events: &[RecordedEvent]) {
        let mut faults = Vec::new();
        for (id, key, call) in self.calls() {
            let applied = applied_of(events, &id);
            let names = event_names(&applied);
            if names != call.events {
                faults.push(format!(
                    "call {key}: events {names:?}, expected {:?}",
                    call.events
                ));
            }
            match &call.revisions {
                Some(reference) => {
                    let bodies: Vec<&Value> = applied.iter().map(|e| &e.body).collect();
                    faults.extend(
                        revisions::revision_faults(reference, &bodies)
                            .into_iter()
                            .map(|f| format!("call {key}: {f}")),
                    );
                }
                None => faults.extend(
                    applied
                        .last()
                        .and_then(|last| self.last_fault(call, last))
                        .map(|f| format!("call {key}: {f}")),
                ),
            }
        }
        self.judge(&faults, events);
    }

    /// The any-order expectation: per call one `created`, first, no `updated` that changes
    /// nothing, the expected final resource; a call merged away ends deleted or is never shown.
    pub fn assert_in_any_order(&self, events: &[RecordedEvent]) {
        let mut faults = Vec::new();
        for (id, key, call) in self.calls() {
            let applied = applied_of(events, &id);
            let names = event_names(&applied);
            let fault = if call.ends_deleted() {
                // The merge may come before anything was shown: then nothing is.
                (!names.is_empty() && names.last() != Some(&DELETED))
                    .then(|| format!("events {names:?}, expected a deletion last"))
            } else if call.events.is_empty() {
                (!names.is_empty()).then(|| format!("events {names:?}, expected none"))
            } else if names.first() != Some(&CREATED)
                || names.iter().filter(|n| **n == CREATED).count() != 1
            {
                Some(format!("events {names:?}, expected one created, first"))
            } else {
                applied
                    .windows(2)
                    .find(|pair| same_resource(pair[0], pair[1]))
                    .map(|pair| format!("{} repeats {} without a change", pair[1], pair[0]))
                    .or_else(|| applied.last().and_then(|last| self.last_fault(call, last)))
            };
            faults.extend(fault.map(|f| format!("call {key}: {f}")));
        }
        self.judge(&faults, events);
    }

    /// How every delivery went out: the connection's connector id under both spellings and
    /// owner id; each call's revisions offered in order (one is never tried before the previous
    /// one was taken), each under one idempotency key with the same body on every try.
    pub fn assert_deliveries(&self, events: &[RecordedEvent]) {
        let connection = example_connection(&self.expected.connection);
        let connector_id = self
            .expected
            .connector_id
            .clone()
            .unwrap_or(connection.connector_id);
        let owner_id = self
            .expected
            .owner_id
            .clone()
            .unwrap_or(connection.owner_id);
        let ids = self.resource_ids();
        let mine = events.iter().filter(|e| {
            e.resource_id()
                .is_some_and(|id| ids.iter().any(|i| i == id))
        });
        let mut first_body: HashMap<&str, &Value> = HashMap::new();
        let mut taken: HashMap<&str, u64> = HashMap::new();
        for event in mine {
            let headers = &event.headers;
            let Some((key, revision)) = event.idempotency_key().zip(revision_of(event)) else {
                self.fail_at(
                    event,
                    format!("no idempotency key <resource>-r<revision>: {headers:?}"),
                    events,
                );
            };
            if headers.connector_id.as_deref() != Some(&connector_id)
                || headers.conector_id.as_deref() != Some(&connector_id)
                || headers.owner_id.as_deref() != Some(&owner_id)
            {
                let expected = format!("connector {connector_id} and owner {owner_id}");
                self.fail_at(
                    event,
                    format!("headers {headers:?}, expected {expected}"),
                    events,
                );
            }
            if *first_body.entry(key).or_insert(&event.body) != &event.body {
                self.fail_at(
                    event,
                    format!("the body under {key} changed between tries"),
                    events,
                );
            }
            let resource = event.resource_id().expect("filtered on it");
            let before = taken.get(resource).copied().unwrap_or(0);
            if revision > before + 1 {
                self.fail_at(
                    event,
                    format!("revision {revision} tried while the CRM had taken up to {before}"),
                    events,
                );
            }
            if event.accepted() {
                taken.insert(resource, before.max(revision));
            }
        }
    }

    /// What is wrong with the last event of a call against the reference's final resource.
    fn last_fault(&self, call: &ExpectedCall, last: &RecordedEvent) -> Option<String> {
        let data = &last.body["data"];
        let raw = call
            .revisions
            .as_ref()
            .and_then(|r| r.last())
            .map(|r| &r["rawResource"])
            .or(call.raw_resource.as_ref());
        if data["fields"] != call.fields {
            Some(format!(
                "final fields {}\nexpected {}",
                data["fields"], call.fields
            ))
        } else if raw.is_some_and(|raw| &data["rawResource"] != raw) {
            Some(format!(
                "final rawResource {}\nexpected {}",
                data["rawResource"],
                raw.unwrap()
            ))
        } else {
            None
        }
    }

    /// Fails the scenario on its faults, with what the CRM recorded.
    fn judge(&self, faults: &[String], events: &[RecordedEvent]) {
        if let Err(failure) = revisions::verdict(&self.name, faults) {
            panic!(
                "on {}: {failure}\nthe CRM recorded:\n{}",
                self.connection,
                self.summary(events)
            )
        }
    }

    fn fail_at(&self, event: &RecordedEvent, what: String, events: &[RecordedEvent]) -> ! {
        panic!(
            "{} on {}: {event}: {what}\nthe CRM recorded:\n{}",
            self.name,
            self.connection,
            summary(events)
        )
    }
}

/// Every resource the CRM heard of is a call of one of the scenarios.
pub fn assert_no_stranger(scenarios: &[Scenario], events: &[RecordedEvent]) {
    let known: Vec<String> = scenarios.iter().flat_map(Scenario::resource_ids).collect();
    if let Some(stranger) = events.iter().find(|e| {
        !e.resource_id()
            .is_some_and(|id| known.iter().any(|k| k == id))
    }) {
        panic!(
            "the CRM got {stranger}, of no expected call; it recorded:\n{}",
            summary(events)
        );
    }
}

/// The events of one resource a CRM honouring idempotency keys applied, in arrival order.
pub fn applied_of<'a>(events: &'a [RecordedEvent], resource_id: &str) -> Vec<&'a RecordedEvent> {
    events
        .iter()
        .filter(|e| e.applied() && e.resource_id() == Some(resource_id))
        .collect()
}

fn event_names<'a>(events: &[&'a RecordedEvent]) -> Vec<&'a str> {
    events.iter().filter_map(|e| e.event_type()).collect()
}

/// The revision in an idempotency key `{resource_id}-r{revision}`.
fn revision_of(event: &RecordedEvent) -> Option<u64> {
    let key = event.idempotency_key()?;
    key.strip_prefix(event.resource_id()?)?
        .strip_prefix("-r")?
        .parse()
        .ok()
}

fn same_resource(a: &RecordedEvent, b: &RecordedEvent) -> bool {
    a.body["data"]["fields"] == b.body["data"]["fields"]
        && a.body["data"]["rawResource"] == b.body["data"]["rawResource"]
}

/// The scenarios but those whose calls a longer scenario of the same connection also has
/// (Telsmart 1 is the first webhooks of Telsmart 7): sent to one connection together, such
/// scenarios are one call, which ends as the longer one says.
pub fn without_shared_calls(scenarios: Vec<Scenario>) -> Vec<Scenario> {
    let keep = |s: &Scenario| {
        !scenarios.iter().any(|other| {
            other.name != s.name
                && other.connection == s.connection
                && other.webhooks.len() > s.webhooks.len()
                && s.expected
                    .calls
                    .keys()
                    .any(|k| other.expected.calls.contains_key(k))
        })
    };
    scenarios.iter().filter(|s| keep(s)).cloned().collect()
}

/// Every scenario of every provider, in provider then file order.
/// A TeleCMI scenario whose first webhook is all text, as a query string carries it: TeleCMI
/// may send its webhook as a GET.
pub fn telecmi_as_query() -> Scenario {
    all()
        .into_iter()
        .find(|s| {
            s.provider == Provider::Telecmi
                && s.webhooks[0]
                    .as_object()
                    .is_some_and(|fields| fields.values().all(Value::is_string))
        })
        .expect("a TeleCMI scenario whose webhooks are all text")
}

/// The fields of `scenario`'s first webhook, as a query string's pairs (unencoded).
pub fn query_pairs(scenario: &Scenario) -> Vec<(String, String)> {
    scenario.webhooks[0]
        .as_object()
        .expect("a webhook is an object")
        .iter()
        .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_owned()))
        .collect()
}

pub fn all() -> Vec<Scenario> {
    let mut all = Vec::new();
    for provider in Provider::ALL {
        let dir = repo_root().join("tests/scenarios").join(provider.as_str());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .map(|e| e.expect("a readable folder").path())
            .collect();
        paths.sort();
        for path in paths {
            let file = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .to_string();
            if !file.ends_with(".json") || file.ends_with(".expected.json") {
                continue;
            }
            let expected: Expected = read_json(&path.with_extension("expected.json"));
            all.push(Scenario {
                name: format!("{provider}/{file}"),
                provider,
                webhooks: read_json(&path),
                connection: expected.connection.clone(),
                expected,
                path,
            });
        }
    }
    assert!(
        !all.is_empty(),
        "no scenario under {}",
        repo_root().join("tests/scenarios").display()
    );
    all
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Each scenario on a copy of its connection named `<connection>-<tag><n>`, so many runs share
/// one server without sharing a call.
pub fn on_copies(scenarios: &[Scenario], tag: &str) -> Vec<Scenario> {
    scenarios
        .iter()
        .enumerate()
        .map(|(n, s)| s.on(format!("{}-{tag}{n}", s.expected.connection)))
        .collect()
}

/// The connection copies the scenarios need: (example connection, copy).
pub fn copies_of(scenarios: &[Scenario]) -> Vec<(String, String)> {
    scenarios
        .iter()
        .filter(|s| s.connection != s.expected.connection)
        .map(|s| (s.expected.connection.clone(), s.connection.clone()))
        .collect()
}

/// The indexes of `len` webhooks shuffled, each repeated one to three times; the same `seed`
/// gives the same order, so a failure can be replayed.
pub fn shuffled_with_repeats(len: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    // A small linear congruential generator: deterministic, and enough to shuffle.
    let mut next = |bound: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % bound
    };
    let mut order: Vec<usize> = (0..len)
        .flat_map(|i| std::iter::repeat_n(i, 1 + next(3)))
        .collect();
    for i in (1..order.len()).rev() {
        order.swap(i, next(i + 1));
    }
    order
}
