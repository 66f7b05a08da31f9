//! Many calls at once through a real `callbridge serve`, to a CRM that fails one request in
//! seven (503, 429, 429 with Retry-After, 500, a connection closed without an answer, an answer
//! after the bridge's timeout): nothing is lost and no revision is applied twice.
//!
//! Every call is Telsmart's held-and-resumed scenario (five webhooks, three Morph events) under
//! a call id of its own, its webhooks posted in order, all calls going on at once. The suite
//! runs `CALLBRIDGE_LOAD_CALLS` calls (300 by default); `infra/soak.sh` runs thousands.
//! Loopback only; bounded by the call count and `DELIVERY_TIMEOUT`.

mod support;

use callbridge::recorder::{Answer, Behaviour, Flaky, Recorder, summary};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use support::bridge::{Bridge, CrmSettings, Setup};
use support::faults::assert_repeats_only_after_late_answers;
use support::scenario::{self, Scenario, copies_of};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const BASE: &str = "telsmart/3-held-and-resumed.json";
/// Webhooks in flight at once, over all calls.
const IN_FLIGHT: usize = 32;
/// The bridge's `crm.timeout_ms`, and how late the CRM's late answers come.
const TIMEOUT_MS: u64 = 2_000;
const LATE_MS: u64 = 2_500;

fn calls() -> usize {
    std::env::var("CALLBRIDGE_LOAD_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}

/// The base scenario under call id `load-<n>`, on `connection`.
fn call(base: &Scenario, old_id: &str, n: usize, connection: &str) -> Scenario {
    let id = format!("load-{n:06}");
    let rename = |value: &Value| -> Value {
        serde_json::from_str(&value.to_string().replace(old_id, &id)).expect("JSON")
    };
    let mut s = base.on(connection);
    s.name = format!("{BASE} as {id}");
    s.webhooks = s.webhooks.iter().map(rename).collect();
    let expected = s.expected.calls.remove(old_id).expect("the base call");
    s.expected.calls.insert(id, expected);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_crm_under_load_loses_and_doubles_nothing() {
    let flaky = Behaviour {
        flaky: Some(Flaky {
            one_in: 7,
            answers: vec![
                Answer::status(503),
                Answer::status(429),
                Answer::late(200, LATE_MS),
                Answer::retry_after(429, 1),
                Answer::status(500),
                Answer::reset(),
            ],
        }),
        ..Behaviour::default()
    };
    let recorder = Recorder::start("127.0.0.1:0", flaky)
        .await
        .expect("the CRM recorder starts");
    let base = scenario::all()
        .into_iter()
        .find(|s| s.name == BASE)
        .expect("the base scenario");
    let old_id = base.expected.calls.keys().next().expect("a call").clone();
    let connection = format!("{}-load", base.expected.connection);
    let count = calls();
    let scenarios: Vec<Scenario> = (0..count)
        .map(|n| call(&base, &old_id, n, &connection))
        .collect();
    let crm = CrmSettings {
        timeout_ms: TIMEOUT_MS,
        retry_cap_secs: 2.0,
        ..CrmSettings::default()
    };
    let setup = Setup::new(&recorder.url(), crm, &copies_of(&scenarios[..1]));
    let bridge = Bridge::start(&setup).await;

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut senders = JoinSet::new();
    for s in scenarios.iter().cloned() {
        let (sender, gate) = (bridge.sender(), gate.clone());
        senders.spawn(async move {
            let token = s.token();
            let mut accepted = 0;
            for (i, webhook) in s.webhooks.iter().enumerate() {
                let _permit = gate.acquire().await.expect("the gate stays open");
                let answer = sender
                    .post(s.provider, &s.connection, &token, webhook)
                    .await;
                assert_eq!(
                    answer.status, 202,
                    "{} webhook {i}: {}",
                    s.name, answer.body
                );
                accepted += 1;
            }
            accepted
        });
    }
    let mut accepted = 0;
    while let Some(done) = senders.join_next().await {
        accepted += done.expect("a call's webhooks are all accepted");
    }
    let sent: usize = scenarios.iter().map(|s| s.webhooks.len()).sum();
    let ingested = started.elapsed();

    let events = bridge
        .settled_scenarios(&recorder, &scenarios, Scenario::delivered_in_any_order)
        .await;
    let settled = started.elapsed();
    let mut lost = 0;
    for s in &scenarios {
        if !s.delivered_in_any_order(&events) {
            lost += 1;
        }
        s.assert_in_any_order(&events);
        s.assert_deliveries(&events);
    }
    // Counted by change (resource and body), keys aside: a revision sent again under another
    // key is a doubled effect. A repeat of a taken key is allowed only after an answer that
    // came after the bridge's timeout, and counted.
    let doubled = events.iter().filter(|e| e.doubled()).count();
    let applied = events.iter().filter(|e| e.applied()).count();
    let repeats = assert_repeats_only_after_late_answers(&events, TIMEOUT_MS);
    let mut failures: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| !e.accepted()) {
        *failures.entry(e.status.to_string()).or_default() += 1;
    }
    let expected_events: usize = scenarios
        .iter()
        .flat_map(|s| s.expected.calls.values())
        .map(|c| c.events.len())
        .sum();
    eprintln!(
        "load: {count} calls, {sent} webhooks sent, {accepted} accepted in {ingested:.1?}; \
         {} CRM requests, failed {failures:?}, {repeats} repeats after a late answer; \
         {applied} events applied of {expected_events} expected, {lost} calls lost, \
         {doubled} doubled; settled in {settled:.1?}",
        events.len(),
    );
    assert_eq!(accepted, sent);
    assert_eq!(lost, 0);
    assert_eq!(doubled, 0, "{}", summary(&events));
    assert!(
        !failures.is_empty() && repeats > 0,
        "the CRM never failed or never answered late: the test tested nothing"
    );
}
