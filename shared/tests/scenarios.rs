//! Every scenario under `tests/scenarios/<provider>/` (the providers' documented examples, as
//! lists of webhook bodies) goes through the real parsers, worker and fold, with an in-memory
//! store, and must end with the resources of its `.expected.json`:
//!
//! - in file order, the exact sequence of Morph events;
//! - shuffled, with every webhook repeated up to three times, the same final resources, one
//!   `created` per resource and no `updated` that repeats the previous revision.

mod common;
use callbridge_shared::adapters::contact_http::HttpContactLookup;
use callbridge_shared::adapters::memory::MemoryStore;
use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::providers;
use callbridge_shared::domain::record::CallKey;
use callbridge_shared::domain::time::Timestamp;
use callbridge_shared::pipeline::worker;
use callbridge_shared::ports::{CallStore, QueuedWebhook};
use common::repo_root;
use serde_json::Value;
use std::collections::BTreeMap;

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

/// The Morph events delivered per resource id, in order.
type Delivered = BTreeMap<String, Vec<Value>>;

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
            let applied = worker::apply(&store, connection, &HttpContactLookup::default(), &queued)
                .await
                .unwrap();
            for key in applied.to_deliver {
                let (mut record, version) = store.load(&key).await.unwrap().unwrap();
                for d in &record.outbox {
                    delivered
                        .entry(d.resource_id.clone())
                        .or_default()
                        .push(d.body.clone());
                }
                let last = record.revision;
                record.mark_delivered(last);
                store.save(&record, Some(version)).await.unwrap();
            }
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

#[test]
fn scenarios_in_order_give_the_expected_events_and_resources() {
    for scenario in scenarios() {
        let connection = connection(scenario.expected["connection"].as_str().unwrap());
        let order: Vec<usize> = (0..scenario.webhooks.len()).collect();
        let delivered = run(&scenario, &connection, &order);
        let calls = scenario.expected["calls"].as_object().unwrap();
        assert_eq!(
            delivered.len(),
            calls
                .values()
                .filter(|c| !c["events"].as_array().unwrap().is_empty())
                .count(),
            "{}: resources delivered: {:?}",
            scenario.name,
            delivered.keys().collect::<Vec<_>>()
        );
        for (call_key, expected) in calls {
            let id = resource_of(&scenario, &connection, call_key);
            let events = delivered.get(&id).cloned().unwrap_or_default();
            let expected_names: Vec<String> =
                serde_json::from_value(expected["events"].clone()).unwrap();
            assert_eq!(
                event_names(&events),
                expected_names,
                "{} call {call_key}: event sequence",
                scenario.name
            );
            if let Some(last) = events.last() {
                assert_eq!(
                    last["data"]["fields"], expected["fields"],
                    "{} call {call_key}: final fields",
                    scenario.name
                );
                if let Some(raw) = expected.get("rawResource") {
                    assert_eq!(
                        &last["data"]["rawResource"], raw,
                        "{} call {call_key}: rawResource",
                        scenario.name
                    );
                }
            }
        }
    }
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

#[test]
fn scenarios_shuffled_and_repeated_end_the_same() {
    for scenario in scenarios() {
        let connection = connection(scenario.expected["connection"].as_str().unwrap());
        let calls = scenario.expected["calls"].as_object().unwrap();
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
                let context = format!("{} call {call_key} seed {seed}: {names:?}", scenario.name);
                let expected_names = expected["events"].as_array().unwrap();
                let expect_deleted =
                    expected_names.last().and_then(Value::as_str) == Some("telephonyCall::deleted");
                if expect_deleted {
                    // A call merged away may never be shown at all when the merge came first.
                    assert!(
                        names.is_empty() || names.last().unwrap() == "telephonyCall::deleted",
                        "{context}"
                    );
                    continue;
                }
                if expected_names.is_empty() {
                    assert!(names.is_empty(), "{context}");
                    continue;
                }
                assert_eq!(
                    names
                        .iter()
                        .filter(|n| *n == "telephonyCall::created")
                        .count(),
                    1,
                    "{context}"
                );
                assert_eq!(names[0], "telephonyCall::created", "{context}");
                assert_eq!(
                    events.last().unwrap()["data"]["fields"],
                    expected["fields"],
                    "{context}"
                );
                for pair in events.windows(2) {
                    assert!(
                        pair[0]["data"]["fields"] != pair[1]["data"]["fields"]
                            || pair[0]["data"]["rawResource"] != pair[1]["data"]["rawResource"],
                        "{context}: an updated that changes nothing"
                    );
                }
            }
        }
    }
}
