//! Every scenario under `tests/scenarios/<provider>/` (the providers' documented examples, as
//! lists of webhook bodies) goes through the real parsers, worker and fold, with an in-memory
//! store, and must end with the resources of its `.expected.json`:
//!
//! - in file order, the exact sequence of Morph events, and every event's fields and
//!   `rawResource` as the reference's `revisions` (written by hand) say;
//! - shuffled, with every webhook repeated up to three times, the same final resources, one
//!   `created` per resource and no `updated` that repeats the previous revision.

mod common;
#[path = "../../tests/support/revisions.rs"]
mod revisions;
use callbridge_shared::adapters::memory::MemoryStore;
use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::providers;
use callbridge_shared::domain::record::CallKey;
use callbridge_shared::domain::time::Timestamp;
use callbridge_shared::ports::QueuedWebhook;
use common::{Delivered, repo_root};
use serde_json::Value;

struct Scenario {
    name: String,
    provider: Provider,
    webhooks: Vec<Value>,
    expected: Value,
}

fn scenarios() -> Vec<Scenario> {
    common::scenario_files()
        .into_iter()
        .map(|file| Scenario {
            expected: file.expected(),
            name: file.name,
            provider: file.provider,
            webhooks: file.webhooks,
        })
        .collect()
}

fn connection(id: &str) -> Connection {
    let config = Config::load(&repo_root().join("infra/callbridge.example.toml")).unwrap();
    config
        .connections()
        .unwrap()
        .into_iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no connection {id} in the example config"))
}

/// Runs webhooks through parse, worker and an always-up CRM.
fn run(scenario: &Scenario, connection: &Connection, order: &[usize]) -> Delivered {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = MemoryStore::default();
        let mut delivered = Delivered::new();
        for &i in order {
            let payload = &scenario.webhooks[i];
            let webhook = providers::parse(scenario.provider, payload)
                .unwrap_or_else(|e| panic!("{} webhook {i}: {e}", scenario.name));
            let queued = QueuedWebhook {
                connection_id: connection.id.clone(),
                received_at: Timestamp::from_micros(1_800_000_000_000_000).unwrap(),
                event: webhook.event,
                raw: payload.clone(),
            };
            common::apply_and_deliver(&store, connection, &queued, &mut delivered).await;
        }
        delivered
    })
}

fn resource_of(scenario: &Scenario, connection: &Connection, call_key: &str) -> String {
    CallKey::new(&connection.id, scenario.provider, call_key).resource_id()
}

fn event_names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_provider_has_scenarios() {
    let all = scenarios();
    for provider in Provider::ALL {
        assert!(
            all.iter().any(|s| s.provider == provider),
            "no scenario for {provider} under tests/scenarios/{provider}"
        );
    }
}

/// Every scenario's verdict (`revisions::verdict`); panics with all the failures at once.
fn judge_all(judged: Vec<(String, Vec<String>)>) {
    let failures: Vec<String> = judged
        .iter()
        .filter_map(|(name, faults)| revisions::verdict(name, faults).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn scenarios_in_order_give_the_expected_events_and_resources() {
    let mut judged = Vec::new();
    for scenario in scenarios() {
        let connection = connection(scenario.expected["connection"].as_str().unwrap());
        let order: Vec<usize> = (0..scenario.webhooks.len()).collect();
        let delivered = run(&scenario, &connection, &order);
        let calls = scenario.expected["calls"].as_object().unwrap();
        let mut faults = Vec::new();
        let shown = calls
            .values()
            .filter(|c| !c["events"].as_array().unwrap().is_empty())
            .count();
        if delivered.len() != shown {
            faults.push(format!(
                "{} resources delivered, {shown} expected",
                delivered.len()
            ));
        }
        for (call_key, expected) in calls {
            let id = resource_of(&scenario, &connection, call_key);
            let events = delivered.get(&id).cloned().unwrap_or_default();
            let mut fault = |what: String| faults.push(format!("call {call_key}: {what}"));
            revisions::reference_faults(expected)
                .into_iter()
                .for_each(&mut fault);
            let expected_names: Vec<String> =
                serde_json::from_value(expected["events"].clone()).unwrap();
            if event_names(&events) != expected_names {
                fault(format!(
                    "events {:?}, expected {expected_names:?}",
                    event_names(&events)
                ));
            }
            if let Some(reference) = expected["revisions"].as_array() {
                let bodies: Vec<&Value> = events.iter().collect();
                revisions::revision_faults(reference, &bodies)
                    .into_iter()
                    .for_each(&mut fault);
            } else if let Some(last) = events.last() {
                if last["data"]["fields"] != expected["fields"] {
                    fault(format!("final fields {}", last["data"]["fields"]));
                }
                if let Some(raw) = expected.get("rawResource")
                    && &last["data"]["rawResource"] != raw
                {
                    fault(format!("rawResource {}", last["data"]["rawResource"]));
                }
            }
        }
        judged.push((scenario.name, faults));
    }
    judge_all(judged);
}

/// A small deterministic generator, so a failure can be replayed from its seed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound
    }
}

/// Shuffled, every webhook sent up to three times: the reference's final `fields` and
/// `rawResource`, one `created`, first, and no `updated` that changes nothing.
#[test]
fn scenarios_shuffled_and_repeated_end_the_same() {
    let mut judged = Vec::new();
    for scenario in scenarios() {
        let connection = connection(scenario.expected["connection"].as_str().unwrap());
        let calls = scenario.expected["calls"].as_object().unwrap();
        let mut faults = Vec::new();
        for seed in 0..40u64 {
            let mut rng = Lcg(seed);
            let mut order: Vec<usize> = (0..scenario.webhooks.len())
                .flat_map(|i| std::iter::repeat_n(i, 1 + rng.next(3)))
                .collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.next(i + 1));
            }
            let delivered = run(&scenario, &connection, &order);
            for (call_key, expected) in calls {
                let id = resource_of(&scenario, &connection, call_key);
                let events = delivered.get(&id).cloned().unwrap_or_default();
                let names = event_names(&events);
                let mut fault = |what: &str| {
                    faults.push(format!("call {call_key} seed {seed}: {names:?}: {what}"))
                };
                let expected_names = expected["events"].as_array().unwrap();
                let expect_deleted =
                    expected_names.last().and_then(Value::as_str) == Some("telephonyCall::deleted");
                if expect_deleted {
                    // A call merged away may never be shown at all when the merge came first.
                    if !(names.is_empty() || names.last().unwrap() == "telephonyCall::deleted") {
                        fault("expected a deletion last, or nothing");
                    }
                    continue;
                }
                if expected_names.is_empty() {
                    if !names.is_empty() {
                        fault("expected nothing");
                    }
                    continue;
                }
                if names.first().map(String::as_str) != Some("telephonyCall::created")
                    || names
                        .iter()
                        .filter(|n| *n == "telephonyCall::created")
                        .count()
                        != 1
                {
                    fault("expected one created, first");
                }
                let last = &events.last().unwrap()["data"];
                if last["fields"] != expected["fields"] {
                    fault(&format!("final fields {}", last["fields"]));
                }
                let final_raw = expected["revisions"]
                    .as_array()
                    .and_then(|r| r.last())
                    .map(|r| &r["rawResource"]);
                if final_raw.is_some_and(|raw| raw != &last["rawResource"]) {
                    fault(&format!("final rawResource {}", last["rawResource"]));
                }
                if events.windows(2).any(|pair| {
                    pair[0]["data"]["fields"] == pair[1]["data"]["fields"]
                        && pair[0]["data"]["rawResource"] == pair[1]["data"]["rawResource"]
                }) {
                    fault("an updated that changes nothing");
                }
            }
        }
        judged.push((scenario.name, faults));
    }
    judge_all(judged);
}
