//! A failing CRM delays deliveries but loses and reorders nothing: through an outage (503
//! until it comes back) and a 429 with Retry-After, every call's events end at the CRM in
//! order, each under one idempotency key and body on every try, and no retry comes sooner
//! than the CRM asked.

mod support;

use callbridge::recorder::{Answer, Behaviour, RecordedEvent, Recorder, summary};
use callbridge_shared::domain::time::Timestamp;
use std::collections::HashMap;
use std::time::Duration;
use support::bridge::{Bridge, CrmSettings};
use support::scenario::{self, Scenario, assert_no_stranger, on_copies};

/// What the CRM asks with its 429.
const RETRY_AFTER_SECS: u64 = 1;

fn micros(event: &RecordedEvent) -> i64 {
    Timestamp::parse_rfc3339(&event.received_at)
        .expect("the recorder writes RFC 3339")
        .as_micros()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_crm_gets_everything_in_order_once_it_recovers() {
    let down = Behaviour::down(Answer::status(503));
    let recorder = Recorder::start("127.0.0.1:0", down)
        .await
        .expect("the CRM recorder starts");
    let scenarios = on_copies(&scenario::all(), "faults");
    // Room for the Retry-After under the longest backoff.
    let crm = CrmSettings {
        retry_cap_secs: 2.0,
        ..CrmSettings::default()
    };
    let (_setup, bridge) = Bridge::serving(&recorder, crm, &scenarios).await;

    // The CRM stays down until every scenario's first delivery was retried.
    let retried = |events: &[RecordedEvent]| {
        scenarios.iter().all(|s| {
            let ids = s.resource_ids();
            let mut tries: HashMap<&str, usize> = HashMap::new();
            events
                .iter()
                .filter(|e| {
                    e.resource_id()
                        .is_some_and(|id| ids.iter().any(|i| i == id))
                })
                .filter_map(RecordedEvent::idempotency_key)
                .any(|key| {
                    let n = tries.entry(key).or_default();
                    *n += 1;
                    *n >= 2
                })
        })
    };
    if let Err(e) = recorder
        .wait_for(
            "a retry of every scenario's first delivery",
            Duration::from_secs(120),
            retried,
        )
        .await
    {
        panic!("{e}\nthe server printed:\n{}", bridge.output());
    }
    assert!(
        recorder.events().iter().all(|e| e.status == 503),
        "the CRM took events while it was down:\n{}",
        summary(&recorder.events())
    );

    // It comes back, busy at first.
    let busy = Answer::retry_after(429, RETRY_AFTER_SECS);
    recorder.set_behaviour(Behaviour {
        script: [busy; 3].into(),
        ..Behaviour::default()
    });

    let events = bridge
        .settled_scenarios(&recorder, &scenarios, Scenario::delivered_in_order)
        .await;
    for s in &scenarios {
        s.assert_in_order(&events);
        s.assert_deliveries(&events);
    }
    assert_no_stranger(&scenarios, &events);

    let busy_answers: Vec<&RecordedEvent> = events.iter().filter(|e| e.status == 429).collect();
    assert_eq!(busy_answers.len(), 3, "{}", summary(&events));
    for refused in busy_answers {
        let next = events
            .iter()
            .find(|e| e.seq > refused.seq && e.idempotency_key() == refused.idempotency_key())
            .unwrap_or_else(|| panic!("{refused} was never tried again:\n{}", summary(&events)));
        // The recorder's times are to the millisecond.
        let waited = micros(next) - micros(refused) + 1_000;
        assert!(
            waited >= (RETRY_AFTER_SECS * 1_000_000) as i64,
            "{next} came {waited} µs after {refused}, sooner than the Retry-After of {RETRY_AFTER_SECS} s"
        );
    }
}
