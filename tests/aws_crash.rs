//! A worker container dying at the worst moments, on the AWS path (the moto emulator): after
//! the CRM's 200 and before the delivered mark, between the two writes of a Voys merge, in the
//! middle of an erasure. The worker runs in a process of its own (this test binary again, told
//! by `CALLBRIDGE_CRASH_STACK` to be the container), built with the `fault-injection` feature
//! and aborting at the crash point `CALLBRIDGE_CRASH_AT` names, as a Lambda container dies:
//! its batch stays in flight until the visibility timeout, then another container takes it.
//! After each, the CRM ends as the scenario says, each change applied once, and the only repeat
//! is the revision whose delivery the crash kept from being written.
//!
//! Needs `moto_server` (on the PATH or in `.venv`, installed by `infra/setup.sh`).

mod aws_support;
#[allow(dead_code)]
#[path = "support/faults.rs"]
mod faults;
#[allow(dead_code)]
#[path = "support/scenario.rs"]
mod scenario;

use aws_support::AwsBridge;
use aws_support::emulator::{self, Resources};
use callbridge::recorder::{Behaviour, RecordedEvent, Recorder, summary};
use callbridge_shared::domain::event::EventKind;
use callbridge_shared::domain::providers;
use callbridge_shared::domain::record::CallKey;
use callbridge_shared::engine::crash::{CRASH_AT, CrashPoint};
use callbridge_shared::ports::CallStore;
use faults::{assert_applied_once, assert_merged_whole, assert_repeats_only_in};
use scenario::{DELETED, Scenario, applied_of, assert_no_stranger, copies_of, on_copies};
use serde::{Deserialize, Serialize};
use std::os::unix::process::ExitStatusExt;

/// Tells a run of this binary to be the worker container of a parent's stack.
const STACK: &str = "CALLBRIDGE_CRASH_STACK";
/// How `abort()` ends a process.
const SIGABRT: i32 = 6;
/// Before the receipt handles of the batch the container took, on a line of its output (after
/// what the test harness printed on it).
const BATCH_LINE: &str = "crash-test batch: ";

/// What the container needs of its parent's stack.
#[derive(Serialize, Deserialize)]
struct Stack {
    resources: Resources,
    endpoint: String,
}

/// When this run is the container: takes batches with a worker as deployed until the crash
/// point aborts it. Returns false when this run is the test itself.
async fn run_as_container() -> bool {
    let Ok(stack) = std::env::var(STACK) else {
        return false;
    };
    let stack: Stack = serde_json::from_str(&stack).expect("the parent's stack");
    let bridge = AwsBridge::attach(stack.resources, &stack.endpoint).await;
    let worker = bridge.worker();
    loop {
        let received = bridge.source.receive().await;
        assert!(
            !received.is_empty(),
            "the queue is empty and the crash point was never reached"
        );
        let handles: Vec<&str> = received.iter().filter_map(|m| m.receipt_handle()).collect();
        println!("{BATCH_LINE}{}", serde_json::to_string(&handles).unwrap());
        let batch = bridge.source.run(&worker, received.clone()).await;
        for message in batch.failures() {
            bridge.source.release(message).await;
        }
    }
}

/// Runs `test` of this binary as a worker container that crashes at `point`; checks it
/// aborted there and nowhere else, then lets its batch come back, as the visibility timeout
/// does.
async fn crash_a_container(bridge: &AwsBridge, test: &str, point: CrashPoint) {
    let stack = Stack {
        resources: bridge.resources.clone(),
        endpoint: emulator::emulator().endpoint().to_string(),
    };
    let run = tokio::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(STACK, serde_json::to_string(&stack).unwrap())
        .env(CRASH_AT, point.as_str())
        .output()
        .await
        .expect("the container runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        run.status.signal(),
        Some(SIGABRT),
        "the container ended with {}, not an abort at {point:?}; it printed:\n{printed}",
        run.status
    );
    assert!(
        printed.contains(&format!("crash point `{}` reached", point.as_str())),
        "the container aborted elsewhere than at {point:?}; it printed:\n{printed}"
    );
    assert!(
        !printed.contains("panicked"),
        "the container panicked; it printed:\n{printed}"
    );
    let last_batch = printed
        .lines()
        .rev()
        .find_map(|line| line.split_once(BATCH_LINE).map(|(_, handles)| handles))
        .unwrap_or_else(|| panic!("the container took no batch; it printed:\n{printed}"));
    let handles: Vec<String> = serde_json::from_str(last_batch).expect("receipt handles");
    for handle in &handles {
        bridge.source.release_handle(handle).await;
    }
}

/// A scenario on a copy of its connection of its own.
fn scenario_on_copy(name: &str, tag: &str) -> Scenario {
    let s = scenario::all()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"));
    on_copies(&[s], tag).remove(0)
}

async fn stack(name: &str, s: &Scenario) -> (Recorder, AwsBridge) {
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let bridge = AwsBridge::start(name, &recorder.url(), &copies_of(std::slice::from_ref(s))).await;
    (recorder, bridge)
}

/// Posts webhooks `order` of `s`, each processed by a healthy container before the next.
async fn post_and_drain(bridge: &AwsBridge, s: &Scenario, order: impl IntoIterator<Item = usize>) {
    let worker = bridge.worker();
    for i in order {
        bridge.post_scenario(s, [i]).await;
        for batch in bridge.source.drain(&worker).await {
            assert!(batch.failed.is_empty(), "{}: {:?}", s.name, batch.failed);
        }
    }
}

/// Every change applied once, and the only repeats of changes the CRM took before the crash.
fn assert_once_but_the_crash(events: &[RecordedEvent], recorded_at_crash: usize) -> usize {
    assert_applied_once(events);
    assert_repeats_only_in(events, "the crash", |taken| {
        taken.seq as usize <= recorded_at_crash
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_dying_after_the_crms_200_before_the_delivered_mark() {
    if run_as_container().await {
        return;
    }
    let s = scenario_on_copy("telsmart/1-answered-incoming.json", "aws-crash-mark");
    let (recorder, bridge) = stack("crash-mark", &s).await;
    bridge.post_scenario(&s, [0]).await;
    crash_a_container(
        &bridge,
        "a_container_dying_after_the_crms_200_before_the_delivered_mark",
        CrashPoint::DeliveredNotMarked,
    )
    .await;
    let taken = recorder.events();
    assert!(
        taken.len() == 1 && taken[0].applied(),
        "the crash should come right after the CRM took r1:\n{}",
        summary(&taken)
    );
    let call_key = s.expected.calls.keys().next().expect("a call");
    let key = CallKey::new(&s.connection, s.provider, call_key);
    let (record, _) = bridge.calls().load(&key).await.unwrap().expect("the call");
    assert_eq!(record.outbox.len(), 1, "r1 is not marked delivered yet");

    post_and_drain(&bridge, &s, 1..s.webhooks.len()).await;
    let events = recorder.events();
    s.assert_in_order(&events);
    s.assert_deliveries(&events);
    assert_no_stranger(std::slice::from_ref(&s), &events);
    let repeats = assert_once_but_the_crash(&events, taken.len());
    assert_eq!(repeats, 1, "r1 comes once more:\n{}", summary(&events));
    let (record, _) = bridge.calls().load(&key).await.unwrap().expect("the call");
    assert!(record.outbox.is_empty(), "{:?}", record.outbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_dying_between_the_two_writes_of_a_voys_merge() {
    if run_as_container().await {
        return;
    }
    let s = scenario_on_copy("voys/6-attended-transfer.json", "aws-crash-merge");
    let merge = s
        .webhooks
        .iter()
        .position(|w| {
            matches!(
                providers::parse(s.provider, w).map(|p| p.event.kind),
                Ok(EventKind::Merged { .. })
            )
        })
        .expect("a webhook that merges two calls");
    let (recorder, bridge) = stack("crash-merge", &s).await;
    post_and_drain(&bridge, &s, 0..merge).await;
    bridge.post_scenario(&s, [merge]).await;
    let before = recorder.events().len();
    crash_a_container(
        &bridge,
        "a_container_dying_between_the_two_writes_of_a_voys_merge",
        CrashPoint::MergeHalfWritten,
    )
    .await;
    let at_crash = recorder.events().len();
    assert_eq!(at_crash, before, "the crash comes before any delivery");

    post_and_drain(&bridge, &s, merge + 1..s.webhooks.len()).await;
    // The merge's message came back with the first drain above (or none was left).
    for batch in bridge.source.drain(&bridge.worker()).await {
        assert!(batch.failed.is_empty());
    }
    let events = recorder.events();
    s.assert_in_order(&events);
    s.assert_deliveries(&events);
    assert_no_stranger(std::slice::from_ref(&s), &events);
    assert_once_but_the_crash(&events, at_crash);
    assert_merged_whole(&bridge.calls(), &s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_dying_in_the_middle_of_an_erasure() {
    if run_as_container().await {
        return;
    }
    let s = scenario_on_copy("telsmart/1-answered-incoming.json", "aws-crash-erase");
    let (recorder, bridge) = stack("crash-erase", &s).await;
    post_and_drain(&bridge, &s, 0..s.webhooks.len()).await;
    s.assert_in_order(&recorder.events());
    let (call_key, call) = s.expected.calls.iter().next().expect("a call");
    let resource_id = s.resource_id(call_key);
    let erase = bridge
        .operator(&["calls", "erase", "--aws", &resource_id, "--wait-secs", "0"])
        .await;
    assert!(erase.status.success(), "{erase:?}");
    let at_crash = recorder.events().len();
    crash_a_container(
        &bridge,
        "a_container_dying_in_the_middle_of_an_erasure",
        CrashPoint::ErasureHalfDone,
    )
    .await;
    assert_eq!(
        recorder.events().len(),
        at_crash,
        "the crash comes before the deletion is sent"
    );
    let key = CallKey::new(&s.connection, s.provider, call_key);
    let (record, _) = bridge.calls().load(&key).await.unwrap().expect("the call");
    assert!(record.erased_at.is_some() && record.outbox.len() == 1);

    for batch in bridge.source.drain(&bridge.worker()).await {
        assert!(batch.failed.is_empty());
    }
    let events = recorder.events();
    let mut expected = call.events.clone();
    expected.push(DELETED.to_string());
    let names: Vec<&str> = applied_of(&events, &resource_id)
        .iter()
        .filter_map(|e| e.event_type())
        .collect();
    assert_eq!(names, expected, "{}", summary(&events));
    s.assert_deliveries(&events);
    assert_once_but_the_crash(&events, at_crash);
    let (record, _) = bridge
        .calls()
        .load(&key)
        .await
        .unwrap()
        .expect("the tombstone");
    assert!(
        record.outbox.is_empty() && record.events.is_empty() && record.resource.is_none(),
        "only a tombstone is left: {record:?}"
    );
}
