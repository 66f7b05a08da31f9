//! The CRM misbehaving in every way the local server must survive, over real HTTP with a real
//! `callbridge serve` and the CRM recorder: 5xx and 429 (with and without Retry-After),
//! connections closed without an answer, answers that come after `crm.timeout_ms`, refusals no
//! retry can fix, and failures that outlast the retry horizon. Nothing is lost or doubled: every event reaches the
//! CRM once it recovers (or once the operator un-parks it), in order per call, under one
//! idempotency key and body on every try; a call the CRM chokes on holds up only itself.
//!
//! "Down for minutes" is compressed: the test configs back off from 20 ms up to 0.5–2 s.

mod support;

use callbridge::recorder::{Answer, Behaviour, RecordedEvent, Recorder, summary};
use callbridge_shared::domain::time::Timestamp;
use std::collections::HashSet;
use support::bridge::{Bridge, CrmSettings, DELIVERY_TIMEOUT, Setup};
use support::faults::{
    assert_all_delivered, assert_applied_once, assert_delivered_with_repeats,
    assert_repeats_only_after_late_answers, delivered_resources, events_of, fail_resources,
    refusals, scenarios_with_later_events, transient_failures, tried, tries_per_key,
};
use support::scenario::{Scenario, on_copies};

/// The Retry-After of the 429 that asks for one.
const RETRY_AFTER_SECS: u64 = 1;

fn micros(event: &RecordedEvent) -> i64 {
    Timestamp::parse_rfc3339(&event.received_at)
        .expect("the recorder writes RFC 3339")
        .as_micros()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_hold_up_only_their_call_and_everything_arrives_after() {
    let faults = transient_failures(RETRY_AFTER_SECS);
    let all = on_copies(&scenarios_with_later_events(), "transient");
    assert!(all.len() >= faults.len() + 3, "too few scenarios");
    let victims: Vec<(Scenario, Answer)> =
        all.iter().cloned().zip(faults.iter().copied()).collect();
    let healthy = &all[faults.len()..];
    let recorder = Recorder::start("127.0.0.1:0", fail_resources(&victims))
        .await
        .expect("the CRM recorder starts");
    // A backoff ceiling above the Retry-After, so it is honoured in full.
    let crm = CrmSettings {
        retry_cap_secs: 2.0,
        ..CrmSettings::default()
    };
    let (_setup, bridge) = Bridge::serving(&recorder, crm, &all).await;

    // While every victim's first delivery has been tried three times, the others arrive.
    let flowing = |events: &[RecordedEvent]| {
        healthy.iter().all(|s| s.delivered_in_order(events))
            && victims.iter().all(|(s, _)| tried(s, events, 3))
    };
    let events = match recorder
        .wait_for(
            "the healthy calls delivered while the victims fail",
            DELIVERY_TIMEOUT,
            flowing,
        )
        .await
    {
        Ok(events) => events,
        Err(e) => panic!("{e}\nthe server printed:\n{}", bridge.output()),
    };
    for (s, answer) in &victims {
        let mine = events_of(s, &events);
        assert!(
            mine.iter().all(|e| e.status == answer.status),
            "{} got through while the CRM answered {answer}:\n{}",
            s.name,
            s.summary(&events)
        );
        if answer.retry_after_secs.is_some() {
            for pair in mine.windows(2) {
                if pair[0].idempotency_key() == pair[1].idempotency_key() {
                    // The recorder's times are to the millisecond.
                    let waited = micros(pair[1]) - micros(pair[0]) + 1_000;
                    assert!(
                        waited >= (RETRY_AFTER_SECS * 1_000_000) as i64,
                        "{} came {waited} µs after {}, sooner than the Retry-After",
                        pair[1],
                        pair[0]
                    );
                }
            }
        }
    }

    recorder.set_behaviour(Behaviour::default());
    let events = bridge
        .settled_scenarios(&recorder, &all, Scenario::delivered_in_order)
        .await;
    assert_all_delivered(&all, &events);
    let repeats: Vec<&RecordedEvent> = events.iter().filter(|e| e.duplicate).collect();
    assert!(
        repeats.is_empty(),
        "taken twice although no answer was lost:\n{}",
        summary(&events)
    );
    let failed = events.iter().filter(|e| !e.accepted()).count();
    eprintln!(
        "transient faults: {} scenarios ({} victims), {} requests, {failed} failed and retried, \
         {} applied, 0 taken twice",
        all.len(),
        victims.len(),
        events.len(),
        events.iter().filter(|e| e.applied()).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_after_the_timeout_are_retried_under_the_same_key_and_body() {
    let scenarios = on_copies(&scenarios_with_later_events()[..4], "hang");
    // Every answer comes long after the bridge gave up waiting.
    let hanging = Behaviour {
        delay_ms: 1_500,
        ..Behaviour::default()
    };
    let recorder = Recorder::start("127.0.0.1:0", hanging)
        .await
        .expect("the CRM recorder starts");
    let crm = CrmSettings {
        timeout_ms: 300,
        ..CrmSettings::default()
    };
    let (_setup, bridge) = Bridge::serving(&recorder, crm, &scenarios).await;
    let timed_out_twice = |events: &[RecordedEvent]| scenarios.iter().all(|s| tried(s, events, 3));
    if let Err(e) = recorder
        .wait_for(
            "every scenario timed out twice",
            DELIVERY_TIMEOUT,
            timed_out_twice,
        )
        .await
    {
        panic!("{e}\nthe server printed:\n{}", bridge.output());
    }

    recorder.set_behaviour(Behaviour::default());
    let events = bridge
        .settled_scenarios(&recorder, &scenarios, Scenario::delivered_in_order)
        .await;
    let (applied, repeats) = assert_delivered_with_repeats(&scenarios, &events, crm.timeout_ms);
    eprintln!(
        "timeouts: {} requests, {applied} applied, {repeats} repeats under a taken key (same body)",
        events.len(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_failures_past_the_horizon_are_parked_until_one_retry_command() {
    // Waits of 20, 40, 80, 160, 320 ms, each jittered to between half and all of it, counted
    // from the failure before: at their longest, tries at 0, 20, 60, 140 and 300 ms (the next
    // at 620 ms is past the horizon), 5 tries; 4 leaves room for a slow machine. At their
    // shortest, tries at 0, 10, 30, 70, 150 and 310 ms (the next at 630 ms): 6 at most.
    const HORIZON_SECS: f64 = 0.5;
    const MIN_TRIES: usize = 4;
    const MAX_TRIES: usize = 6;
    let mut faults = refusals();
    // Not a refusal: retried until the horizon ends.
    faults.push(Answer::status(503));
    let all = on_copies(&scenarios_with_later_events(), "refused");
    let all = &all[..faults.len() + 2];
    let victims: Vec<(Scenario, Answer)> =
        all.iter().cloned().zip(faults.iter().copied()).collect();
    let healthy = &all[faults.len()..];
    let recorder = Recorder::start("127.0.0.1:0", fail_resources(&victims))
        .await
        .expect("the CRM recorder starts");
    let crm = CrmSettings {
        retry_horizon_secs: HORIZON_SECS,
        ..CrmSettings::default()
    };
    let (setup, bridge) = Bridge::serving(&recorder, crm, all).await;
    let tries_wanted = |answer: &Answer| {
        if answer.status == 503 {
            MIN_TRIES..=MAX_TRIES
        } else {
            1..=1
        }
    };
    let parked = |events: &[RecordedEvent]| {
        healthy.iter().all(|s| s.delivered_in_order(events))
            && victims.iter().all(|(s, answer)| {
                let resources = delivered_resources(s);
                let tries = tries_per_key(events, &resources);
                tries.len() == resources.len()
                    && tries.values().all(|n| *n >= *tries_wanted(answer).start())
            })
    };
    if let Err(e) = recorder
        .wait_for(
            "the victims' first deliveries refused",
            DELIVERY_TIMEOUT,
            parked,
        )
        .await
    {
        panic!("{e}\nthe server printed:\n{}", bridge.output());
    }
    // Nothing left to do but the parked deliveries: nothing more is coming.
    bridge.wait_idle(DELIVERY_TIMEOUT).await;
    let events = recorder.events();
    let parked = setup.parked().await;
    let mut parked_resources = HashSet::new();
    for (s, answer) in &victims {
        let resources = delivered_resources(s);
        for (key, n) in tries_per_key(&events, &resources) {
            assert!(
                tries_wanted(answer).contains(&n),
                "{key} ({answer}) tried {n} times, not {:?}:\n{}",
                tries_wanted(answer),
                s.summary(&events)
            );
            assert!(
                key.ends_with("-r1"),
                "{key} tried while revision 1 was refused:\n{}",
                s.summary(&events)
            );
        }
        for id in &resources {
            let entry = parked
                .iter()
                .find(|p| p["resource_id"] == id.as_str())
                .unwrap_or_else(|| panic!("{id} of {} is not parked: {parked:?}", s.name));
            assert_eq!(entry["revision"], 1, "{entry}");
            if answer.status == 503 {
                assert_eq!(entry["crm_status"], serde_json::Value::Null, "{entry}");
                let reason = entry["reason"].as_str().unwrap_or_default();
                assert!(
                    reason.contains("until the retry horizon ended") && reason.contains("503"),
                    "{entry}"
                );
            } else {
                assert_eq!(entry["crm_status"], answer.status, "{entry}");
                let crm_answer = entry["crm_answer"].as_str().unwrap_or_default();
                assert!(
                    crm_answer.contains(&format!("answers {}", answer.status)),
                    "the CRM's answer is not kept: {entry}"
                );
            }
            parked_resources.insert(id.clone());
        }
    }
    assert_eq!(parked.len(), parked_resources.len(), "{parked:?}");

    // The CRM is fixed; one command sends everything.
    recorder.set_behaviour(Behaviour::default());
    let unparked = setup.deliveries(&["retry"]).await;
    assert_eq!(unparked.trim(), format!("{} un-parked", parked.len()));
    let events = bridge
        .settled_scenarios(&recorder, all, Scenario::delivered_in_order)
        .await;
    assert_all_delivered(all, &events);
    assert!(setup.parked().await.is_empty());
    assert_eq!(bridge.health().await.body["parked"], 0);
    assert!(
        events.iter().all(|e| !e.duplicate),
        "taken twice:\n{}",
        summary(&events)
    );
    eprintln!(
        "refusals: {} parked ({} refused 4xx, {} past the retry horizon), {} requests, all applied once \
         after one `deliveries retry`",
        parked.len(),
        parked.iter().filter(|p| !p["crm_status"].is_null()).count(),
        parked.iter().filter(|p| p["crm_status"].is_null()).count(),
        events.len()
    );
}

/// A scenario run until it settled, with what it ran on kept alive.
struct Settled {
    crm: CrmSettings,
    bridge: Bridge,
    events: Vec<RecordedEvent>,
    _setup: Setup,
    _recorder: Recorder,
}

/// One scenario whose first delivery the CRM (otherwise as `crm`) answers after the bridge's
/// 300 ms timeout, run until it settles.
async fn first_answer_too_late(tag: &str, crm: Behaviour) -> (Scenario, Settled) {
    let s = on_copies(&scenarios_with_later_events()[..1], tag).remove(0);
    let late_first = Behaviour {
        script: [Answer::late(200, 1_500)].into(),
        ..crm
    };
    let recorder = Recorder::start("127.0.0.1:0", late_first)
        .await
        .expect("the CRM recorder starts");
    let settings = CrmSettings {
        timeout_ms: 300,
        ..CrmSettings::default()
    };
    let (setup, bridge) = Bridge::serving(&recorder, settings, std::slice::from_ref(&s)).await;
    let events = bridge
        .settled_scenarios(
            &recorder,
            std::slice::from_ref(&s),
            Scenario::delivered_in_order,
        )
        .await;
    let settled = Settled {
        crm: settings,
        bridge,
        events,
        _setup: setup,
        _recorder: recorder,
    };
    (s, settled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_to_a_taken_key_counts_as_delivered() {
    // The first answer comes after the bridge gave up; the CRM had taken the key, and answers
    // its retry 409, as a CRM that refuses repeated keys does.
    let refusing_repeats = Behaviour {
        conflict_on_taken_key: true,
        ..Behaviour::default()
    };
    let (s, run) = first_answer_too_late("conflict", refusing_repeats).await;
    let (crm, events) = (run.crm, run.events);
    assert_all_delivered(std::slice::from_ref(&s), &events);
    let conflicts: Vec<&RecordedEvent> = events.iter().filter(|e| e.status == 409).collect();
    assert_eq!(conflicts.len(), 1, "{}", summary(&events));
    let key = conflicts[0].idempotency_key();
    // The late try and the 409, nothing more: the 409 was not retried.
    let tries = events.iter().filter(|e| e.idempotency_key() == key).count();
    assert_eq!(tries, 2, "{}", summary(&events));
    assert_repeats_only_after_late_answers(&events, crm.timeout_ms);
    assert_applied_once(&events);
    let output = run.bridge.output();
    assert!(
        output.contains("the CRM answered 409 to a key it already took"),
        "the 409 is not logged; the server printed:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_without_keys_gets_doubles_only_where_an_answer_came_too_late() {
    // A CRM that honours no idempotency key, whose first answer comes after the bridge gave
    // up: the retry of that revision is a second effect, and the only one.
    let keyless = Behaviour {
        ignore_keys: true,
        ..Behaviour::default()
    };
    let (_, run) = first_answer_too_late("no-keys", keyless).await;
    let (crm, events) = (run.crm, run.events);
    let doubled: Vec<&RecordedEvent> = events.iter().filter(|e| e.doubled()).collect();
    assert_eq!(doubled.len(), 1, "{}", summary(&events));
    assert_eq!(
        assert_repeats_only_after_late_answers(&events, crm.timeout_ms),
        1
    );
    let measured = std::panic::catch_unwind(|| assert_applied_once(&events));
    assert!(measured.is_err(), "the doubled effect went unseen");
    eprintln!(
        "a CRM without keys: {} requests, {} doubled effect, at the one late answer",
        events.len(),
        doubled.len()
    );
}
