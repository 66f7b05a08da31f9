//! A CRM outage on the AWS path, on the moto emulator (issue 11), in real time with the
//! worker's schedule shortened by its settings: the CRM answers 503 while calls of several
//! connections come in, then recovers. The worker hides every message it hands back until its
//! next try or its CRM destination's next probe (nothing here releases them early, unlike
//! [`EventSource::round`]), the breaker lives in the calls table, and the dead-letter queue
//! takes a call only once its retry horizon is past.
//!
//! Needs `moto_server` (on the PATH or in `.venv`, installed by `infra/setup.sh`).

mod aws_support;
#[allow(dead_code)]
#[path = "support/command.rs"]
mod command;
#[allow(dead_code)]
#[path = "support/faults.rs"]
mod faults;
#[allow(dead_code)]
#[path = "support/scenario.rs"]
mod scenario;

use aws_support::lambda::EventSource;
use aws_support::{AwsBridge, Log, event_ids, without_shared_webhooks};
use callbridge::recorder::{Answer, Behaviour, RecordedEvent, Recorder, summary};
use callbridge_shared::adapters::aws::aws_sdk_dynamodb::types::AttributeValue;
use callbridge_shared::adapters::aws::aws_sdk_sqs::types::QueueAttributeName;
use callbridge_shared::adapters::aws::dynamo_breakers::KEY_PREFIX;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::engine::breaker::{Breaker, BreakerSettings};
use callbridge_shared::engine::schedule::RetrySchedule;
use callbridge_shared::hosts::lambda::worker_function::{Worker, WorkerSettings};
use callbridge_shared::ports::QueuedWebhook;
use callbridge_shared::telemetry::{
    BREAKER_CLOSED, BREAKER_OPEN_SECONDS, BREAKER_OPENED, DELIVERIES_HELD, InMemoryMetrics,
};
use faults::assert_applied_once;
use scenario::{Scenario, assert_no_stranger, copies_of, on_copies};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::instrument::WithSubscriber;

/// The breaker of these tests: the template's 5 failures in a row, a probe every second.
const BREAKER: BreakerSettings = BreakerSettings {
    open_after: 5,
    probe_every: Duration::from_secs(1),
};

/// The template's worker settings with the schedule shortened to the test's time.
fn shortened(bridge: &AwsBridge, horizon: Duration, cap: Duration) -> WorkerSettings {
    let mut settings = bridge.worker_settings();
    settings.retry = RetrySchedule {
        horizon,
        initial: Duration::from_millis(250),
        cap,
    };
    settings.breaker = BREAKER;
    settings
}

/// One invocation of the worker on what the queue hands out now, as the event source mapping
/// makes it; the messages it hands back stay hidden for the wait it set. Whether there was any.
async fn invoke(source: &EventSource, worker: &Worker) -> bool {
    let received = source.receive().await;
    let any = !received.is_empty();
    source.run(worker, received).await;
    any
}

/// Messages in the webhook queue, visible or hidden.
async fn queued(bridge: &AwsBridge) -> u64 {
    let attributes = bridge
        .sqs
        .get_queue_attributes()
        .queue_url(&bridge.resources.queue("WebhookQueue").url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("the queue's attributes")
        .attributes
        .unwrap_or_default();
    attributes
        .values()
        .map(|n| n.parse::<u64>().expect("a count"))
        .sum()
}

/// The CRM destinations' breakers, as the workers keep them in the calls table (the items
/// keyed `breaker#<destination>` under the table's key `call`).
async fn breakers(bridge: &AwsBridge) -> Vec<Breaker> {
    bridge
        .dynamodb
        .scan()
        .table_name(bridge.worker_settings().calls_table)
        .filter_expression("begins_with(#key, :prefix)")
        .expression_attribute_names("#key", "call")
        .expression_attribute_values(":prefix", AttributeValue::S(KEY_PREFIX.into()))
        .send()
        .await
        .expect("a scan of the calls table")
        .items
        .unwrap_or_default()
        .iter()
        .map(|item| {
            let state = item["state"].as_s().expect("a breaker's state");
            serde_json::from_str(state).expect("a breaker's state reads")
        })
        .collect()
}

/// The revision of a request, from its idempotency key `<resource>-r<revision>`.
fn revision(event: &RecordedEvent) -> u64 {
    event
        .idempotency_key()
        .and_then(|key| key.rsplit_once("-r"))
        .and_then(|(_, revision)| revision.parse().ok())
        .unwrap_or_else(|| panic!("{event}: no idempotency key <resource>-r<revision>"))
}

/// A call that waited out an outage may skip the `updated` revisions it never sent (its
/// latest state holds them: RELIABILITY.md, "Catch-up"), so the file-order check does not
/// apply; what must hold is that the CRM applied its revisions in increasing order, each key
/// with one body on every try, and ended with the expected resource ([`Scenario::assert_in_any_order`]).
fn assert_caught_up(s: &Scenario, events: &[RecordedEvent]) {
    s.assert_in_any_order(events);
    for id in s.resource_ids() {
        let mine: Vec<&RecordedEvent> = events
            .iter()
            .filter(|e| e.resource_id() == Some(id.as_str()))
            .collect();
        let mut bodies: HashMap<u64, &Value> = HashMap::new();
        for event in &mine {
            assert_eq!(
                *bodies.entry(revision(event)).or_insert(&event.body),
                &event.body,
                "{event}: the body changed between tries\n{}",
                s.summary(events)
            );
        }
        let applied: Vec<u64> = mine
            .iter()
            .filter(|e| e.applied())
            .map(|e| revision(e))
            .collect();
        assert!(
            applied.windows(2).all(|pair| pair[0] < pair[1]),
            "{id}: revisions applied out of order {applied:?}\n{}",
            s.summary(events)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_breaker_holds_every_call_and_loses_nothing() {
    const OUTAGE: Duration = Duration::from_secs(20);
    // Telsmart's scenarios, each on a connection of its own: several connections, one Morph
    // connector, so one CRM destination (the CRM URL and the connector id) and one breaker.
    let telsmart: Vec<Scenario> = without_shared_webhooks(scenario::all())
        .into_iter()
        .filter(|s| s.provider == Provider::Telsmart)
        .collect();
    let scenarios = on_copies(&telsmart, "outage");
    let down = Behaviour::down(Answer::status(503));
    let recorder = Recorder::start("127.0.0.1:0", down)
        .await
        .expect("the CRM recorder starts");
    let bridge = AwsBridge::start("outage", &recorder.url(), &copies_of(&scenarios)).await;
    let settings = shortened(&bridge, Duration::from_secs(120), Duration::from_secs(2));
    let metrics = Arc::new(InMemoryMetrics::default());
    let worker = bridge
        .worker_of(&settings)
        .with_metrics(Arc::clone(&metrics) as _);
    let batch_size = bridge.resources.worker_function().1.batch_size as usize;

    // The webhooks come in over the first three quarters of the outage, the calls interleaved,
    // each call's in file order.
    let longest = scenarios.iter().map(|s| s.webhooks.len()).max().unwrap();
    let mut pending: VecDeque<(&Scenario, usize)> = (0..longest)
        .flat_map(|i| {
            scenarios
                .iter()
                .filter(move |s| i < s.webhooks.len())
                .map(move |s| (s, i))
        })
        .collect();
    let webhooks = pending.len();
    let spacing = OUTAGE * 3 / 4 / webhooks as u32;
    let started = Instant::now();
    let mut next_post = started;
    let mut seen_open = None;
    while started.elapsed() < OUTAGE {
        while next_post <= Instant::now() {
            let Some((s, i)) = pending.pop_front() else {
                break;
            };
            bridge.post_scenario(s, [i]).await;
            next_post += spacing;
        }
        if !invoke(&bridge.source, &worker).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if seen_open.is_none() {
            seen_open = breakers(&bridge)
                .await
                .into_iter()
                .find(|b| matches!(b, Breaker::Open { .. }));
        }
    }
    let down_for = started.elapsed();
    assert!(pending.is_empty(), "{} webhooks not sent", pending.len());
    let during = recorder.events();
    assert!(
        during.iter().all(|e| e.status == 503),
        "{}",
        summary(&during)
    );
    assert!(
        matches!(seen_open, Some(Breaker::Open { .. })),
        "the breaker never read open in the calls table during the outage:\n{}",
        summary(&during)
    );
    // The requests the CRM got while down. Before the breaker opens every send fails, so it
    // opens at the `open_after`-th failure; the sends already under way then (a batch's calls
    // go side by side: at most a batch of them, one per call) fail too. While it is open,
    // only probes go, one per `probe_every` at most (taking one moves the next on by the
    // interval; one failing sets it an interval after the failure). So at most
    // (open_after - 1) + batch_size + (down_for / probe_every + 1). Without the breaker each
    // call would try on its own schedule (0.25, 0.5, 1, 2, 2 ... s): some ten times each.
    let probes = down_for.as_secs() / BREAKER.probe_every.as_secs() + 1;
    let bound = (BREAKER.open_after as usize - 1) + batch_size + probes as usize;
    assert!(
        during.len() >= BREAKER.open_after as usize && during.len() <= bound,
        "{} requests during {down_for:?} of outage, expected {} to {bound}:\n{}",
        during.len(),
        BREAKER.open_after,
        summary(&during)
    );

    // The CRM is back: the next probe closes the breaker and every call catches up.
    recorder.set_behaviour(Behaviour::default());
    let recovered = Instant::now();
    loop {
        let events = recorder.events();
        if scenarios.iter().all(|s| s.delivered_in_any_order(&events)) && queued(&bridge).await == 0
        {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(120),
            "not caught up 120 s after the CRM came back:\n{}",
            summary(&events)
        );
        if !invoke(&bridge.source, &worker).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let caught_up_in = recovered.elapsed();
    assert_eq!(bridge.dead_letter_count().await, 0);
    let events = recorder.events();
    for s in &scenarios {
        assert_caught_up(s, &events);
    }
    assert_no_stranger(&scenarios, &events);
    let applied = assert_applied_once(&events);
    assert!(
        events.iter().all(|e| !e.duplicate),
        "an idempotency key taken twice:\n{}",
        summary(&events)
    );
    assert_eq!(
        breakers(&bridge).await,
        [Breaker::Closed { failures: 0 }],
        "one breaker, closed by the recovery"
    );
    // The dashboard's CRM outage widget: one opening and one closing of the one destination,
    // held deliveries meanwhile, and how long it was open (no longer than the outage).
    assert_eq!(metrics.total(BREAKER_OPENED, &[]), 1.0);
    assert_eq!(metrics.total(BREAKER_CLOSED, &[]), 1.0);
    assert!(metrics.total(DELIVERIES_HELD, &[]) >= 1.0);
    let open_for = metrics.total(BREAKER_OPEN_SECONDS, &[]);
    assert!(
        open_for > 0.0 && open_for <= (down_for + caught_up_in).as_secs_f64(),
        "open for {open_for} s"
    );
    eprintln!(
        "AWS outage: {} calls of {} connections, {webhooks} webhooks over {down_for:?} of 503; \
         {} requests while down (bound {bound}); caught up {caught_up_in:?} after the CRM came \
         back, {} requests after it, {applied} revisions applied once each; the breaker open \
         {open_for:.1} s, {} deliveries held",
        scenarios
            .iter()
            .map(|s| s.resource_ids().len())
            .sum::<usize>(),
        scenarios.len(),
        during.len(),
        events.len() - during.len(),
        metrics.total(DELIVERIES_HELD, &[]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_retry_horizon_a_call_goes_to_the_dead_letter_queue_with_its_reason() {
    const HORIZON: Duration = Duration::from_secs(3);
    const CAP: Duration = Duration::from_secs(1);
    let s = on_copies(&without_shared_webhooks(scenario::all())[..1], "horizon").remove(0);
    let down = Behaviour::down(Answer::status(503));
    let recorder = Recorder::start("127.0.0.1:0", down)
        .await
        .expect("the CRM recorder starts");
    let bridge = AwsBridge::start(
        "horizon",
        &recorder.url(),
        &copies_of(std::slice::from_ref(&s)),
    )
    .await;
    let worker = bridge.worker_of(&shortened(&bridge, HORIZON, CAP));
    let webhooks = event_ids(&s).len() as u64;
    let log = Log::default();

    let started = Instant::now();
    bridge.post_scenario(&s, 0..s.webhooks.len()).await;
    async {
        while bridge.dead_letter_count().await < webhooks {
            assert!(
                started.elapsed() < HORIZON + Duration::from_secs(60),
                "not in the dead-letter queue a minute past the horizon:\n{}",
                summary(&recorder.events())
            );
            if !invoke(&bridge.source, &worker).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    .with_subscriber(log.subscriber())
    .await;
    let parked_after = started.elapsed();
    // Parked when the next try would fall past the horizon, so no sooner than a cap (the
    // longest wait) before its end.
    assert!(
        parked_after >= HORIZON - CAP,
        "parked after {parked_after:?}, long before the horizon"
    );
    // The whole call waits there, and nothing else; the queue is empty.
    assert_eq!(queued(&bridge).await, 0);
    let dead = bridge.dead_letters().await;
    assert_eq!(dead.len() as u64, webhooks);
    for body in &dead {
        let webhook: QueuedWebhook = serde_json::from_str(body).expect("a queued webhook");
        assert!(s.webhooks.contains(&webhook.raw), "a stranger: {body}");
    }
    let lines = log.lines();
    assert!(
        lines.iter().any(|line| line.contains("ERROR")
            && line.contains("the delivery is parked")
            && line.contains("until the retry horizon ended")
            && line.contains("HTTP 503")),
        "no error line with the reason in the worker's log:\n{}",
        lines.join("\n")
    );

    // Nothing is lost: the CRM back, one redrive delivers the call.
    recorder.set_behaviour(Behaviour::default());
    command::succeeded(
        &["deliveries", "retry", "--aws"],
        bridge.operator(&["deliveries", "retry", "--aws"]).await,
    );
    let redriven = Instant::now();
    while !s.delivered_in_any_order(&recorder.events()) || queued(&bridge).await > 0 {
        assert!(
            redriven.elapsed() < Duration::from_secs(60),
            "not delivered a minute after the redrive:\n{}",
            summary(&recorder.events())
        );
        if !invoke(&bridge.source, &worker).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let events = recorder.events();
    assert_caught_up(&s, &events);
    assert_applied_once(&events);
    assert_eq!(bridge.dead_letter_count().await, 0);
    eprintln!(
        "AWS past the horizon ({HORIZON:?}): {webhooks} webhooks in the dead-letter queue after \
         {parked_after:?}, {} requests to the CRM while down; delivered after one redrive",
        events.iter().filter(|e| e.status == 503).count()
    );
}
