//! The operators' commands against the AWS side, on the moto emulator: the real `callbridge`
//! binary with the SDK's usual environment pointed at the emulator, beside the handlers fed as
//! API Gateway and the SQS event source mapping feed them. The worker counts into an in-memory
//! sink here instead of EMF lines.
//!
//! Needs `moto_server` (on the PATH or in `.venv`, installed by `infra/setup.sh`).

mod aws_support;
#[path = "support/command.rs"]
mod command;
#[allow(dead_code)]
#[path = "support/scenario.rs"]
mod scenario;

use aws_support::AwsBridge;
use callbridge::recorder::{Behaviour, RecordedEvent, Recorder};
use callbridge_shared::adapters::aws::sqs_queue::SqsQueue;
use callbridge_shared::adapters::clock::SystemClock;
use callbridge_shared::domain::providers;
use callbridge_shared::hosts::lambda::worker_function::Worker;
use callbridge_shared::ports::Clock;
use callbridge_shared::ports::{ConnectionDirectory, Queue, QueuedWebhook};
use callbridge_shared::telemetry::{
    DELIVERIES, DELIVERY_LATENCY, EVENTS_APPLIED, EVENTS_DEDUPLICATED, InMemoryMetrics, RETRIES,
};
use scenario::Scenario;
use serde_json::Value;
use std::sync::Arc;

/// Telsmart's answered incoming call: three webhooks, three revisions.
fn answered_call() -> Scenario {
    scenario::all()
        .into_iter()
        .find(|s| s.name == "telsmart/1-answered-incoming.json")
        .expect("the scenario telsmart/1-answered-incoming")
}

async fn recorder() -> Recorder {
    Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts")
}

/// A worker as deployed, counting into `metrics`.
fn counting_worker(bridge: &AwsBridge, metrics: &Arc<InMemoryMetrics>) -> Worker {
    bridge.worker().with_metrics(Arc::clone(metrics) as _)
}

async fn succeeds(bridge: &AwsBridge, args: &[&str]) -> String {
    command::succeeded(args, bridge.operator(args).await)
}

async fn fails(bridge: &AwsBridge, args: &[&str]) -> String {
    command::failed(args, bridge.operator(args).await)
}

async fn show(bridge: &AwsBridge, resource_id: &str) -> Value {
    serde_json::from_str(&succeeds(bridge, &["calls", "show", "--aws", resource_id]).await)
        .expect("calls show prints JSON")
}

fn applied(events: &[RecordedEvent]) -> Vec<&RecordedEvent> {
    events.iter().filter(|e| e.applied()).collect()
}

async fn post_all(bridge: &AwsBridge, s: &Scenario, webhooks: &[Value]) {
    for webhook in webhooks {
        let answer = bridge
            .post(s.provider, &s.connection, &s.token(), webhook)
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_listed_shown_and_erased_for_good() {
    let s = answered_call();
    let resource_id = s.resource_ids().remove(0);
    let recorder = recorder().await;
    let bridge = AwsBridge::start("ops-calls", &recorder.url(), &[]).await;
    let metrics = Arc::new(InMemoryMetrics::default());
    let worker = counting_worker(&bridge, &metrics);

    post_all(&bridge, &s, &s.webhooks).await;
    post_all(&bridge, &s, &s.webhooks[..1]).await;
    bridge.source.drain(&worker).await;
    assert_eq!(applied(&recorder.events()).len(), 3);
    let telsmart = [("Provider", "telsmart")];
    assert_eq!(metrics.total(EVENTS_APPLIED, &telsmart), 3.0);
    assert_eq!(metrics.total(DELIVERIES, &[("Outcome", "delivered")]), 3.0);
    assert_eq!(metrics.snapshot()[DELIVERY_LATENCY].count, 3);
    // The repeat within SQS's deduplication window never reached the worker.
    assert_eq!(metrics.total(EVENTS_DEDUPLICATED, &telsmart), 0.0);

    let listed: Vec<Value> = succeeds(&bridge, &["calls", "list", "--aws"])
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["resource_id"], resource_id.as_str());
    assert_eq!(listed[0]["state"], "delivered");
    assert!(
        succeeds(&bridge, &["calls", "list", "--aws", "--undelivered"])
            .await
            .is_empty()
    );
    let shown = show(&bridge, &resource_id).await;
    assert_eq!(shown["revision"], 3);
    assert_eq!(shown["events"].as_array().unwrap().len(), 3);
    assert_eq!(shown["resource"]["externalNumber"], "+*******675");

    // The erasure is queued in the call's place; the worker tells the CRM, then forgets.
    let erasing = succeeds(
        &bridge,
        &["calls", "erase", "--aws", &resource_id, "--wait-secs", "0"],
    )
    .await;
    assert!(erasing.contains("being erased"), "{erasing}");
    bridge.source.drain(&worker).await;
    let events = recorder.events();
    let deleted = applied(&events).into_iter().last().unwrap();
    assert_eq!(deleted.event_type(), Some("telephonyCall::deleted"));
    assert_eq!(
        deleted.idempotency_key(),
        Some(format!("{resource_id}-r4").as_str())
    );
    let tombstone = show(&bridge, &resource_id).await;
    assert_eq!(tombstone["state"], "erased");
    assert_eq!(tombstone["events"], Value::Array(Vec::new()));
    assert_eq!(tombstone["resource"], Value::Null);
    let again = succeeds(&bridge, &["calls", "erase", "--aws", &resource_id]).await;
    assert!(again.contains("is erased"), "{again}");

    // A late webhook of the erased call brings nothing back.
    let mut late = s.webhooks[2].clone();
    late["timestamp"] = "1765209500000000".into();
    post_all(&bridge, &s, &[late]).await;
    bridge.source.drain(&worker).await;
    assert_eq!(recorder.events().len(), events.len(), "the CRM heard more");
    assert_eq!(show(&bridge, &resource_id).await, tombstone);
    assert!(
        fails(&bridge, &["calls", "show", "--aws", "call_0000"])
            .await
            .contains("there is no call")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_queue_is_redriven_in_order_once_the_cause_is_fixed() {
    let s = answered_call();
    let recorder = recorder().await;
    let bridge = AwsBridge::start("ops-redrive", &recorder.url(), &[]).await;
    let metrics = Arc::new(InMemoryMetrics::default());
    let worker = counting_worker(&bridge, &metrics);

    // Webhooks of a connection the table does not have yet: the worker cannot process them,
    // and after maxReceiveCount receives SQS moves them to the dead-letter queue.
    let connection = "added-late";
    let queue = SqsQueue::new(
        bridge.sqs.clone(),
        &bridge.resources.queue("WebhookQueue").url,
        Arc::default(),
    );
    for raw in &s.webhooks {
        let parsed = providers::parse(s.provider, raw).expect("a scenario webhook parses");
        let webhook = QueuedWebhook {
            connection_id: connection.into(),
            received_at: SystemClock.now(),
            event: parsed.event,
            raw: raw.clone(),
        };
        queue.enqueue(&webhook).await.unwrap();
    }
    for _ in 0..bridge.resources.max_receive_count() * 2 {
        if bridge.source.poll(&worker).await.received.is_empty() {
            break;
        }
    }
    assert_eq!(bridge.dead_letter_count().await, 3);
    let listed = succeeds(&bridge, &["deliveries", "list", "--aws"]).await;
    assert!(listed.contains("3 webhooks"), "{listed}");

    // The cause fixed (the connection added), the webhooks go through, in order.
    let mut fixed = scenario::example_connection(&s.connection)
        .to_connection()
        .unwrap();
    fixed.id = connection.into();
    bridge.connections().put(&fixed).await.unwrap();
    let redriven = succeeds(&bridge, &["deliveries", "retry", "--aws"]).await;
    assert!(redriven.contains("3 webhooks moved"), "{redriven}");
    assert_eq!(bridge.dead_letter_count().await, 0);
    // A new container: a warm one takes up to a minute to see the new connection.
    bridge
        .source
        .drain(&counting_worker(&bridge, &metrics))
        .await;
    let events = recorder.events();
    let events: Vec<Option<&str>> = applied(&events)
        .into_iter()
        .map(RecordedEvent::event_type)
        .collect();
    assert_eq!(
        events,
        [
            Some("telephonyCall::created"),
            Some("telephonyCall::updated"),
            Some("telephonyCall::updated")
        ]
    );
    // The webhooks that could never work were not retried: they waited for an operator.
    assert_eq!(metrics.total(RETRIES, &[]), 0.0);
    assert_eq!(
        metrics.total(EVENTS_APPLIED, &[("Provider", "telsmart")]),
        3.0
    );
    assert!(
        fails(
            &bridge,
            &["deliveries", "retry", "--aws", "--resource", "x"]
        )
        .await
        .contains("redriven whole")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_added_listed_and_their_tokens_rotated() {
    let recorder = recorder().await;
    let bridge = AwsBridge::start("ops-connections", &recorder.url(), &[]).await;
    let stored = async |id: &str| {
        bridge
            .connections()
            .connection(id)
            .await
            .unwrap()
            .expect("the connection is stored")
    };

    let add = [
        "connections",
        "add",
        "acme-voys",
        "--provider",
        "voys",
        "--connector-id",
        "conn_acme",
        "--owner-id",
        "owner_acme",
        "--user",
        "200=usr_john",
    ];
    let first = succeeds(&bridge, &add).await.trim().to_string();
    assert!(first.len() >= 32, "{first}");
    let connection = stored("acme-voys").await;
    assert!(connection.accepts_token(&first));
    assert_eq!(connection.user_id("200"), Some("usr_john"));
    assert!(fails(&bridge, &add).await.contains("already"));

    let listed = succeeds(&bridge, &["connections", "list"]).await;
    let acme: Value = listed
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|c| c["id"] == "acme-voys")
        .expect("acme-voys is listed");
    assert_eq!(acme["tokens"], 1);
    assert!(
        !listed.contains(&connection.token_hashes[0]),
        "a hash is listed"
    );

    // Rotation: both tokens work until the old one is retired.
    let second = succeeds(&bridge, &["connections", "rotate", "acme-voys"])
        .await
        .trim()
        .to_string();
    let connection = stored("acme-voys").await;
    assert!(connection.accepts_token(&first) && connection.accepts_token(&second));
    assert!(
        fails(&bridge, &["connections", "rotate", "acme-voys"])
            .await
            .contains("retire the old one first")
    );
    succeeds(&bridge, &["connections", "retire-token", "acme-voys"]).await;
    let connection = stored("acme-voys").await;
    assert!(!connection.accepts_token(&first) && connection.accepts_token(&second));
    assert!(
        fails(&bridge, &["connections", "retire-token", "acme-voys"])
            .await
            .contains("nothing to retire")
    );
    assert!(
        fails(&bridge, &["connections", "rotate", "nobody"])
            .await
            .contains("no connection `nobody`")
    );
}
