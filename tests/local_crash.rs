//! `kill -9` of `callbridge serve` in the middle of a stream of webhooks loses nothing: every
//! webhook it answered 202 is delivered after a restart on the same data file, and the CRM
//! sees nothing twice but repeats of one idempotency key with one body.

mod support;

use callbridge::recorder::{Behaviour, Recorder};
use std::time::Duration;
use support::bridge::{Bridge, CrmSettings, Sender, Setup};
use support::scenario::{self, Scenario, assert_no_stranger, copies_of, on_copies};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A pause between two webhooks of a stream, so the kill finds every stream half-way.
const PACE: Duration = Duration::from_millis(20);

/// Posts the scenario's webhooks in order until the server stops answering; returns the
/// indexes of those not answered 202, which the provider would send again.
async fn stream(
    sender: Sender,
    scenario: Scenario,
    accepted: watch::Sender<usize>,
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
            Err(_) => return (scenario.clone(), (i..scenario.webhooks.len()).collect()),
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
    let mut streams = JoinSet::new();
    for s in &scenarios {
        streams.spawn(stream(bridge.sender(), s.clone(), accepted.clone()));
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
    bridge.kill().await;

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
}
