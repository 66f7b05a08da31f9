//! One tenant cannot hurt another, on the AWS side (issue 13), on the moto emulator: a body
//! nested past the limit is refused at ingest and never queued; a call whose stored record does
//! not read, or would outgrow DynamoDB's item, is parked in the dead-letter queue on its first
//! receive (never retried) while other calls are delivered; the operator lists it, erases it,
//! and purges its webhooks from the dead-letter queue.
//!
//! Needs `moto_server` (on the PATH or in `.venv`, installed by `infra/setup.sh`).

mod aws_support;
#[allow(dead_code)]
#[path = "support/scenario.rs"]
mod scenario;

use aws_support::AwsBridge;
use callbridge::recorder::{Behaviour, Recorder};
use callbridge_shared::adapters::clock::SystemClock;
use callbridge_shared::domain::event::{CallEvent, EventKind, Provider};
use callbridge_shared::domain::record::{CallKey, CallRecord, MAX_RECORD_BYTES};
use callbridge_shared::engine::ingest::MAX_NESTING_DEPTH;
use callbridge_shared::ports::CallStore;
use callbridge_shared::ports::Clock;
use scenario::{Scenario, copies_of, on_copies};
use serde_json::{Value, json};

/// `{"n":{"n":...}}`, `depth` levels of objects.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!("deep"), |inner, _| json!({ "n": inner }))
}

fn telsmart() -> Scenario {
    scenario::all()
        .into_iter()
        .find(|s| s.provider == Provider::Telsmart)
        .expect("a Telsmart scenario")
}

fn call_of(s: &Scenario) -> CallKey {
    let call_key = s.expected.calls.keys().next().expect("a call");
    CallKey::new(&s.connection, s.provider, call_key)
}

/// A record of `key` holding a summary event whose summary is `summary`.
fn record_with_summary(key: &CallKey, id: &str, summary: Value) -> CallRecord {
    let mut record = CallRecord::new(key.clone());
    let mut event = CallEvent::new(
        key.provider,
        &key.call_key,
        SystemClock.now(),
        EventKind::Summary { summary },
    );
    event.id = id.into();
    assert!(record.add_event(&event));
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_bodies_are_refused_at_ingest_and_never_queued() {
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let bridge = AwsBridge::start("nesting", &recorder.url(), &[]).await;
    let s = &telsmart();
    let mut deep_body = s.webhooks[0].clone();
    deep_body["x"] = nested(126);
    let mut deep_summary = s.webhooks[0].clone();
    deep_summary["state"] = json!("SUMMARY_REPORTING");
    deep_summary["summary"] = nested(125);
    for body in [deep_body, deep_summary] {
        let answer = bridge
            .post(s.provider, &s.connection, &s.token(), &body)
            .await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_eq!(answer.body["error"], "too_deeply_nested", "{}", answer.body);
        let message = answer.body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&MAX_NESTING_DEPTH.to_string()),
            "{message}"
        );
    }
    assert!(
        bridge.source.receive().await.is_empty(),
        "nothing is queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_and_oversized_records_are_parked_at_once_while_other_calls_flow() {
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    // Each scenario on a connection of its own: a tenant each. None sharing a payload with
    // another: the emulator deduplicates the same payload across message groups, where AWS
    // does within one.
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<Scenario> = scenario::all()
        .into_iter()
        .filter(|s| {
            let payloads: Vec<String> = s.webhooks.iter().map(Value::to_string).collect();
            let fresh = payloads.iter().all(|p| !seen.contains(p));
            if fresh {
                seen.extend(payloads);
            }
            fresh
        })
        .collect();
    let one_call = |s: &Scenario| s.expected.calls.len() == 1;
    let hostile_at = |provider: Provider| {
        distinct
            .iter()
            .position(|s| s.provider == provider && one_call(s))
            .expect("a one-call scenario")
    };
    let (poisoned_at, oversized_at) = (hostile_at(Provider::Telsmart), hostile_at(Provider::Voys));
    let tenants = on_copies(&distinct, "tenant");
    let (poisoned, oversized) = (&tenants[poisoned_at], &tenants[oversized_at]);
    let healthy: Vec<&Scenario> = tenants
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != poisoned_at && *i != oversized_at)
        .map(|(_, s)| s)
        .collect();
    assert!(healthy.len() >= 3, "{} other tenants", healthy.len());
    let bridge = AwsBridge::start("isolation", &recorder.url(), &copies_of(&tenants)).await;
    let calls = bridge.calls();

    // What an older version left: a record nested past what serde_json reads, and a record
    // one summary short of the limit.
    let poisoned_call = call_of(poisoned);
    calls
        .save(
            &record_with_summary(&poisoned_call, "deep", nested(125)),
            None,
        )
        .await
        .expect("a deep record is written");
    assert!(
        calls.load(&poisoned_call).await.is_err(),
        "the planted record must not read"
    );
    let oversized_call = call_of(oversized);
    let filler = json!({ "content": "x".repeat(MAX_RECORD_BYTES - 4 * 1024) });
    calls
        .save(&record_with_summary(&oversized_call, "big", filler), None)
        .await
        .expect("a record within the limit is written");

    bridge.post_scenario(poisoned, [0]).await;
    bridge.post_scenario(oversized, [0]).await;
    for s in &healthy {
        bridge.post_scenario(s, 0..s.webhooks.len()).await;
    }
    eprintln!("{} other tenants' scenarios", healthy.len());
    let worker = bridge.worker();
    let batches = bridge.source.drain(&worker).await;
    // Nothing handed back for another try: parked on the first receive.
    let handed_back: Vec<&String> = batches.iter().flat_map(|b| &b.failed).collect();
    assert!(
        handed_back.is_empty(),
        "handed back for a retry: {handed_back:?}"
    );
    for s in &healthy {
        s.assert_in_order(&recorder.events());
    }
    let dead = bridge.dead_letters().await;
    assert_eq!(dead.len(), 2, "{dead:#?}");

    // The operator sees the unreadable call, erases it, and purges its dead letters.
    let resource = poisoned_call.resource_id();
    let listed = bridge
        .operator(&["calls", "list", "--aws", "--limit", "100"])
        .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&listed.stdout),
        String::from_utf8_lossy(&listed.stderr),
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&resource) && l.contains("unreadable")),
        "{stdout}{stderr}"
    );
    let purge = bridge
        .operator(&["deliveries", "purge", "--aws", "--resource", &resource])
        .await;
    assert!(
        purge.status.success(),
        "{}",
        String::from_utf8_lossy(&purge.stderr)
    );
    let dead = bridge.dead_letters().await;
    assert_eq!(
        dead.len(),
        1,
        "only the other call's dead letter is left: {dead:#?}"
    );
    assert!(dead[0].contains(&oversized_call.call_key), "{dead:#?}");

    let erase = bridge
        .operator(&["calls", "erase", "--aws", &resource, "--wait-secs", "0"])
        .await;
    assert!(
        erase.status.success(),
        "{}",
        String::from_utf8_lossy(&erase.stderr)
    );
    bridge.source.drain(&worker).await;
    let (tombstone, _) = calls
        .load(&poisoned_call)
        .await
        .unwrap()
        .expect("a tombstone");
    assert!(tombstone.erased_at.is_some() && tombstone.events.is_empty());
}
