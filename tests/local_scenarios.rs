//! Every provider scenario through a real `callbridge serve` over HTTP, to the CRM recorder:
//! in file order the exact events of its `.expected.json`; shuffled and repeated, the same
//! final resources with one `created` each and no empty `updated`. And `callbridge replay`
//! with the example config's defaults.

mod support;

use callbridge::recorder::{Behaviour, RecordedEvent, Recorder};
use support::bridge::{Bridge, CrmSettings, Setup};
use support::scenario::{
    self, Scenario, assert_no_stranger, copies_of, on_copies, shuffled_with_repeats,
};
use tokio::task::JoinSet;

/// Shuffled runs of each scenario.
const SEEDS: u64 = 3;

/// A recorder, and a server whose connections include the scenarios' copies.
async fn bridge_for(scenarios: &[Scenario]) -> (Recorder, Setup, Bridge) {
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let setup = Setup::new(
        &recorder.url(),
        CrmSettings::default(),
        &copies_of(scenarios),
    );
    let bridge = Bridge::start(&setup).await;
    (recorder, setup, bridge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_in_file_order_gives_the_expected_events() {
    let scenarios = on_copies(&scenario::all(), "ordered");
    let (recorder, _setup, bridge) = bridge_for(&scenarios).await;

    for s in &scenarios {
        bridge.post_in_file_order(s).await;
    }

    let events = bridge
        .settled_scenarios(&recorder, &scenarios, Scenario::delivered_in_order)
        .await;
    for s in &scenarios {
        s.assert_in_order(&events);
        s.assert_deliveries(&events);
    }
    assert_no_stranger(&scenarios, &events);
    // An always-up CRM is never sent anything twice.
    assert!(
        events.iter().all(RecordedEvent::applied),
        "{}",
        callbridge::recorder::summary(&events)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_a_scenario_to_the_example_connection() {
    // One call: its events keep their order however fast they come.
    let scenario = scenario::all()
        .into_iter()
        .find(|s| s.expected.calls.len() == 1 && s.connection == format!("demo-{}", s.provider))
        .expect("a scenario of one call on an example connection");
    let scenarios = [scenario];
    let (recorder, _setup, bridge) = bridge_for(&scenarios).await;

    let printed = bridge.replay(&scenarios[0].path).await;
    let total = scenarios[0].webhooks.len();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), total, "{printed}");
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("{}/{total} 202 {{", i + 1)),
            "{printed}"
        );
    }

    let events = bridge
        .settled_scenarios(&recorder, &scenarios, Scenario::delivered_in_order)
        .await;
    scenarios[0].assert_in_order(&events);
    assert_no_stranger(&scenarios, &events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_shuffled_and_repeated_ends_the_same() {
    let all = scenario::all();
    let runs: Vec<(Scenario, Vec<usize>)> = (0..SEEDS)
        .flat_map(|seed| {
            on_copies(&all, &format!("shuffled{seed}-"))
                .into_iter()
                .map(move |s| {
                    let order = shuffled_with_repeats(s.webhooks.len(), seed);
                    (s, order)
                })
        })
        .collect();
    let scenarios: Vec<Scenario> = runs.iter().map(|(s, _)| s.clone()).collect();
    let (recorder, _setup, bridge) = bridge_for(&scenarios).await;

    // The runs go side by side, as independent providers would send.
    let mut sending = JoinSet::new();
    for (s, order) in runs {
        let sender = bridge.sender();
        sending.spawn(async move {
            let token = s.token();
            for i in order {
                let answer = sender
                    .post(s.provider, &s.connection, &token, &s.webhooks[i])
                    .await;
                assert_eq!(
                    answer.status, 202,
                    "{} webhook {i}: {:?}",
                    s.name, answer.body
                );
            }
        });
    }
    while let Some(sent) = sending.join_next().await {
        sent.expect("every webhook is accepted");
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
