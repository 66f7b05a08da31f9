//! `kill -9` of `callbridge serve` in the middle of a stream of webhooks loses nothing: every
//! webhook it answered 202 is delivered after a restart on the same data file, and the CRM
//! sees nothing twice but repeats of one idempotency key with one body. And the same at each
//! crash point of `callbridge_shared::engine::crash` (the server built with the
//! `fault-injection` feature aborts exactly there): after the CRM's 200 and before the
//! delivered mark, between the two writes of a Voys merge, in the middle of an erasure.

mod support;

use callbridge::recorder::{Behaviour, RecordedEvent, Recorder, summary};
use callbridge_shared::adapters::sqlite::SqliteStore;
use callbridge_shared::engine::crash::{CRASH_AT, CrashPoint};
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::bridge::{Bridge, CrmSettings, DELIVERY_TIMEOUT, Sender, Setup, panics};
use support::faults::{assert_applied_once, assert_merged_whole, assert_repeats_only_in};
use support::scenario::{
    self, DELETED, Scenario, applied_of, assert_no_stranger, copies_of, on_copies,
};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How `abort()` ends a process.
const SIGABRT: i32 = 6;

/// A pause between two webhooks of a stream, so the kill finds every stream half-way.
const PACE: Duration = Duration::from_millis(20);

/// Posts the scenario's webhooks in order until the server stops answering; returns the
/// indexes of those not answered 202, which the provider would send again.
async fn stream(
    sender: Sender,
    scenario: Scenario,
    accepted: watch::Sender<usize>,
    killed: Arc<AtomicBool>,
) -> (Scenario, Vec<usize>) {
    let token = scenario.token();
    for (i, webhook) in scenario.webhooks.iter().enumerate() {
        let request = sender.webhook(scenario.provider, &scenario.connection, &token, webhook);
        match sender.try_send(request).await {
            Ok(answer) if answer.status == 202 => accepted.send_modify(|n| *n += 1),
            Ok(answer) => panic!(
                "{} webhook {i}: {} {}",
                scenario.name, answer.status, answer.body
            ),
            Err(e) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "{} webhook {i} failed before the kill: {e}; the server printed:\n{}",
                    scenario.name,
                    sender.output()
                );
                return (scenario.clone(), (i..scenario.webhooks.len()).collect());
            }
        }
        tokio::time::sleep(PACE).await;
    }
    (scenario, Vec::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_that_was_accepted() {
    // A slow CRM, so the kill also finds deliveries waiting.
    let slow = Behaviour {
        delay_ms: 30,
        ..Behaviour::default()
    };
    let recorder = Recorder::start("127.0.0.1:0", slow)
        .await
        .expect("the CRM recorder starts");
    let scenarios = on_copies(&scenario::all(), "crash");
    let setup = Setup::new(
        &recorder.url(),
        CrmSettings::default(),
        &copies_of(&scenarios),
    );
    let bridge = Bridge::start(&setup).await;

    let total: usize = scenarios.iter().map(|s| s.webhooks.len()).sum();
    let (accepted, mut accepted_so_far) = watch::channel(0);
    let killed = Arc::new(AtomicBool::new(false));
    let mut streams = JoinSet::new();
    for s in &scenarios {
        streams.spawn(stream(
            bridge.sender(),
            s.clone(),
            accepted.clone(),
            killed.clone(),
        ));
    }
    let half_way = tokio::time::timeout(
        Duration::from_secs(120),
        accepted_so_far.wait_for(|n| *n >= total / 2),
    );
    if half_way.await.is_err() {
        panic!(
            "half the webhooks were not accepted in 120 s; the server printed:\n{}",
            bridge.output()
        );
    }
    killed.store(true, Ordering::SeqCst);
    let before_the_kill = bridge.kill().await;
    assert_no_panic("before the kill", &before_the_kill);

    let mut unanswered = Vec::new();
    while let Some(stopped) = streams.join_next().await {
        unanswered.push(stopped.expect("a stream ends"));
    }
    let resend: usize = unanswered.iter().map(|(_, rest)| rest.len()).sum();
    assert!(
        resend > 0,
        "every webhook was accepted before the kill: the kill came too late to test anything"
    );

    let bridge = Bridge::start(&setup).await;
    for (s, rest) in &unanswered {
        for &i in rest {
            let answer = bridge
                .post(s.provider, &s.connection, &s.token(), &s.webhooks[i])
                .await;
            assert_eq!(
                answer.status, 202,
                "{} webhook {i} after the restart: {}",
                s.name, answer.body
            );
        }
    }

    let events = bridge
        .settled_scenarios(&recorder, &scenarios, Scenario::delivered_in_any_order)
        .await;
    for s in &scenarios {
        s.assert_in_any_order(&events);
        s.assert_deliveries(&events);
    }
    assert_no_stranger(&scenarios, &events);
    assert_applied_once(&events);
    assert_no_panic("after the restart", &bridge.output());
}

fn assert_no_panic(when: &str, output: &str) {
    let panics = panics(output);
    assert!(
        panics.is_empty(),
        "the server panicked {when}: {panics:?}; it printed:\n{output}"
    );
}

/// Posts a scenario's webhooks in file order, each applied before the next (as a provider's
/// come seconds apart), until the server stops answering; returns the indexes of those it did
/// not accept, which the provider sends again.
async fn post_until_down(sender: &Sender, s: &Scenario) -> Vec<usize> {
    let token = s.token();
    let rest = |from: usize| -> Vec<usize> { (from..s.webhooks.len()).collect() };
    for (i, webhook) in s.webhooks.iter().enumerate() {
        match sender
            .try_send(sender.webhook(s.provider, &s.connection, &token, webhook))
            .await
        {
            Ok(answer) => assert_eq!(
                answer.status, 202,
                "{} webhook {i}: {}",
                s.name, answer.body
            ),
            Err(_) => return rest(i),
        }
        loop {
            match sender
                .try_send(sender.client().get(sender.url_of("/health")))
                .await
            {
                Ok(health) if health.body["queued"].as_u64() == Some(0) => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(_) => return rest(i + 1),
            }
        }
    }
    Vec::new()
}

/// A server on `setup` told to crash at `point`.
async fn crashing_at(setup: &Setup, point: CrashPoint) -> Bridge {
    Bridge::start_with_env(setup, &[(CRASH_AT, point.as_str())]).await
}

/// Waits for the server to abort at `point`, and for nothing else; returns how many requests
/// the CRM had recorded by then.
async fn aborted_at(bridge: Bridge, point: CrashPoint, recorder: &Recorder) -> usize {
    let (status, output) = bridge.exited(DELIVERY_TIMEOUT).await;
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "the server ended with {status}, not an abort at {point:?}; it printed:\n{output}"
    );
    assert!(
        output.contains(&format!("crash point `{}` reached", point.as_str())),
        "the server aborted elsewhere than at {point:?}; it printed:\n{output}"
    );
    assert_no_panic("before the crash", &output);
    recorder.events().len()
}

/// A server on the same data file gets the webhooks the crashed one did not accept; returns it
/// once the CRM has what `delivered` wants and nothing is left to deliver.
async fn restarted(
    setup: &Setup,
    recorder: &Recorder,
    unsent: &[(Scenario, Vec<usize>)],
    delivered: fn(&Scenario, &[RecordedEvent]) -> bool,
) -> (Bridge, Vec<RecordedEvent>) {
    let bridge = Bridge::start(setup).await;
    for (s, rest) in unsent {
        for &i in rest {
            let answer = bridge
                .post(s.provider, &s.connection, &s.token(), &s.webhooks[i])
                .await;
            assert_eq!(
                answer.status, 202,
                "{} webhook {i}: {}",
                s.name, answer.body
            );
            bridge.wait_idle(DELIVERY_TIMEOUT).await;
        }
    }
    let scenarios: Vec<Scenario> = unsent.iter().map(|(s, _)| s.clone()).collect();
    let events = bridge
        .settled_scenarios(recorder, &scenarios, delivered)
        .await;
    assert_no_panic("after the restart", &bridge.output());
    (bridge, events)
}

/// The CRM as the scenarios say, each change applied once, and no repeat but of a change
/// the CRM took before the crash (the one whose delivery the crash kept from being written).
fn assert_ends_right(scenarios: &[Scenario], events: &[RecordedEvent], recorded_at_crash: usize) {
    for s in scenarios {
        s.assert_in_order(events);
        s.assert_deliveries(events);
    }
    assert_no_stranger(scenarios, events);
    assert_applied_once(events);
    assert_repeats_only_in(events, "the crash", |taken| {
        taken.seq as usize <= recorded_at_crash
    });
}

/// One scenario of `name` on a copy of its connection of its own, a CRM recorder that takes
/// everything, and a server setup for them.
async fn one_scenario(name: &str, tag: &str) -> (Scenario, Recorder, Setup) {
    let s = scenario::all()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"));
    let s = on_copies(&[s], tag).remove(0);
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let setup = Setup::new(
        &recorder.url(),
        CrmSettings::default(),
        &copies_of(std::slice::from_ref(&s)),
    );
    (s, recorder, setup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_crms_200_before_the_delivered_mark_resends_that_revision_once() {
    let (s, recorder, setup) =
        one_scenario("telsmart/1-answered-incoming.json", "crash-mark").await;
    let bridge = crashing_at(&setup, CrashPoint::DeliveredNotMarked).await;
    let unsent = post_until_down(&bridge, &s).await;
    let at_crash = aborted_at(bridge, CrashPoint::DeliveredNotMarked, &recorder).await;
    let taken: Vec<RecordedEvent> = recorder.events();
    assert!(
        taken.len() == 1 && taken[0].applied(),
        "the crash should come right after the CRM took the first revision:\n{}",
        summary(&taken)
    );

    let (_bridge, events) = restarted(
        &setup,
        &recorder,
        &[(s.clone(), unsent)],
        Scenario::delivered_in_order,
    )
    .await;
    assert_ends_right(std::slice::from_ref(&s), &events, at_crash);
    // The revision the crash kept from being marked came once more, under its key.
    let again: Vec<&RecordedEvent> = events.iter().filter(|e| e.duplicate).collect();
    assert_eq!(again.len(), 1, "{}", summary(&events));
    assert_eq!(again[0].idempotency_key(), taken[0].idempotency_key());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_two_writes_of_a_voys_merge_loses_nothing() {
    let (s, recorder, setup) = one_scenario("voys/6-attended-transfer.json", "crash-merge").await;
    let bridge = crashing_at(&setup, CrashPoint::MergeHalfWritten).await;
    let unsent = post_until_down(&bridge, &s).await;
    let at_crash = aborted_at(bridge, CrashPoint::MergeHalfWritten, &recorder).await;

    let (_bridge, events) = restarted(
        &setup,
        &recorder,
        &[(s.clone(), unsent)],
        Scenario::delivered_in_order,
    )
    .await;
    assert_ends_right(std::slice::from_ref(&s), &events, at_crash);
    let store = SqliteStore::open(&setup.dir.path().join("callbridge.db"))
        .await
        .expect("the data file opens");
    assert_merged_whole(&store, &s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_an_erasure_still_erases_the_call() {
    let (s, recorder, setup) =
        one_scenario("telsmart/1-answered-incoming.json", "crash-erase").await;
    let bridge = crashing_at(&setup, CrashPoint::ErasureHalfDone).await;
    assert!(post_until_down(&bridge, &s).await.is_empty());
    bridge
        .settled_scenarios(
            &recorder,
            std::slice::from_ref(&s),
            Scenario::delivered_in_order,
        )
        .await;
    let delivered = recorder.events();

    let (call_key, call) = s.expected.calls.iter().next().expect("a call");
    let resource_id = s.resource_id(call_key);
    let erase = Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .args([
            "calls",
            "erase",
            &resource_id,
            "--wait-secs",
            "0",
            "--config",
        ])
        .arg(&setup.config)
        .output()
        .await
        .expect("callbridge calls erase runs");
    assert!(erase.status.success(), "{erase:?}");
    let at_crash = aborted_at(bridge, CrashPoint::ErasureHalfDone, &recorder).await;
    assert_eq!(
        recorder.events().len(),
        delivered.len(),
        "the crash should come before the deletion is sent"
    );

    let erased = |s: &Scenario, events: &[RecordedEvent]| {
        s.resource_ids().iter().all(|id| {
            applied_of(events, id)
                .last()
                .is_some_and(|e| e.event_type() == Some(DELETED))
        })
    };
    let (_bridge, events) = restarted(&setup, &recorder, &[(s.clone(), Vec::new())], erased).await;
    let mut expected = call.events.clone();
    expected.push(DELETED.to_string());
    let names: Vec<&str> = applied_of(&events, &resource_id)
        .iter()
        .filter_map(|e| e.event_type())
        .collect();
    assert_eq!(names, expected, "{}", summary(&events));
    s.assert_deliveries(&events);
    assert_applied_once(&events);
    assert_repeats_only_in(&events, "the crash", |taken| taken.seq as usize <= at_crash);
    let shown = Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .args(["calls", "show", &resource_id, "--config"])
        .arg(&setup.config)
        .output()
        .await
        .expect("callbridge calls show runs");
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    assert_eq!(shown["state"], "erased", "{shown:#}");
    assert_eq!(shown["events"], serde_json::json!([]), "{shown:#}");
    assert!(shown["resource"].is_null(), "{shown:#}");
}
