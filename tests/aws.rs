//! The AWS side end to end, on the moto emulator: the ingest handlers get API Gateway v2
//! events, the worker gets SQS batches received from the emulated FIFO queue, the queues and
//! tables are the template's, and the CRM is the recorder. Each test has a stack of its own.
//!
//! Needs `moto_server` (on the PATH or in `.venv`, installed by `infra/setup.sh`).

mod aws_support;
#[allow(dead_code)]
#[path = "support/faults.rs"]
mod faults;
#[allow(dead_code)]
#[path = "support/scenario.rs"]
mod scenario;

use async_trait::async_trait;
use aws_support::AwsBridge;
use aws_support::lambda::{Batch, HttpRequest};
use callbridge::recorder::{Behaviour, RecordedEvent, Recorder, summary};
use callbridge_shared::adapters::aws::UsageCounts;
use callbridge_shared::adapters::aws::aws_sdk_dynamodb::types::AttributeValue;
use callbridge_shared::adapters::aws::sqs_queue::message_group;
use callbridge_shared::adapters::clock::SystemClock;
use callbridge_shared::domain::connection::{Connection, hash_token};
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::providers;
use callbridge_shared::domain::record::{CallKey, Delivery};
use callbridge_shared::ports::Clock;
use callbridge_shared::ports::{CallStore, Crm, DeliveryOutcome, QueuedWebhook, StoreError};
use faults::{assert_applied_once, assert_repeats_only_in, is_repeat};
use scenario::{Scenario, assert_no_stranger, copies_of, on_copies, shuffled_with_repeats};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

async fn recorder() -> Recorder {
    Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts")
}

/// A scenario of one call whose every webhook makes a revision (Telsmart's answered call).
fn one_call_one_revision_per_webhook() -> Scenario {
    scenario::all()
        .into_iter()
        .find(|s| {
            s.expected.calls.len() == 1
                && s.webhooks.len() >= 3
                && s.expected.calls.values().next().unwrap().events.len() == s.webhooks.len()
        })
        .expect("a scenario of one call with a revision per webhook")
}

/// The call of a one-call scenario.
fn call_of(s: &Scenario) -> CallKey {
    let call_key = s.expected.calls.keys().next().expect("a call");
    CallKey::new(&s.connection, s.provider, call_key)
}

fn no_failures(batches: &[Batch]) {
    for batch in batches {
        assert!(
            batch.failed.is_empty(),
            "the worker failed messages {:?} of a batch of {:?}",
            batch.failed,
            batch.bodies()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_in_file_order_ends_with_the_expected_resources() {
    let scenarios = on_copies(&scenario::all(), "ordered");
    let recorder = recorder().await;
    let bridge = AwsBridge::start("ordered", &recorder.url(), &copies_of(&scenarios)).await;

    let worker = bridge.worker();
    for s in &scenarios {
        bridge.post_scenario(s, 0..s.webhooks.len()).await;
        // Drained scenario by scenario: scenarios share payloads, which SQS deduplicates
        // within a message group (a call) on AWS, but across the queue in the emulator.
        no_failures(&bridge.source.drain(&worker).await);
    }

    let events = recorder.events();
    for s in &scenarios {
        s.assert_in_order(&events);
        s.assert_deliveries(&events);
    }
    assert_no_stranger(&scenarios, &events);
    assert!(
        events.iter().all(RecordedEvent::applied),
        "{}",
        summary(&events)
    );
    assert_applied_once(&events);
    // Nothing waits: every call's outbox was delivered.
    let calls = bridge.calls();
    for s in &scenarios {
        for call_key in s.expected.calls.keys() {
            let key = CallKey::new(&s.connection, s.provider, call_key);
            if let Some((record, _)) = calls.load(&key).await.unwrap() {
                assert!(record.outbox.is_empty(), "{}: {:?}", s.name, record.outbox);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_reordered_and_redelivered_webhooks_change_nothing() {
    // One stack per run: the runs send the same payloads, which SQS deduplicates within a
    // message group on AWS but across the whole queue in the emulator.
    for seed in 0..2u64 {
        let scenarios = scenario::without_shared_calls(scenario::all());
        let recorder = recorder().await;
        let bridge = AwsBridge::start(&format!("shuffled{seed}"), &recorder.url(), &[]).await;
        let worker = bridge.worker();

        for (n, s) in scenarios.iter().enumerate() {
            let order = shuffled_with_repeats(s.webhooks.len(), seed * 100 + n as u64);
            let (first, rest) = order.split_at(order.len() / 2);
            bridge.post_scenario(s, first.iter().copied()).await;
            // The first batch is processed but its deletion is lost (at-least-once): it comes
            // again, and the second time changes nothing.
            if n == 0 {
                let received = bridge.source.receive().await;
                let response = worker.handle(bridge.source.event(&received)).await.unwrap();
                assert!(aws_support::lambda::failures(&response).is_empty());
                for message in &received {
                    bridge.source.release(message).await;
                }
                let before = worker.usage();
                let again = bridge.source.poll(&worker).await;
                assert_eq!(again.received.len(), received.len());
                let used = worker.usage().since(before);
                assert_eq!(used.call_writes, 0, "a redelivered batch wrote: {used:?}");
            }
            no_failures(&bridge.source.drain(&worker).await);
            bridge.post_scenario(s, rest.iter().copied()).await;
            no_failures(&bridge.source.drain(&worker).await);
        }
        // Every webhook again, as providers retry after SQS's deduplication window: each
        // reaches the worker and changes nothing.
        let recorded = recorder.events().len();
        let mut repeats = 0;
        for s in &scenarios {
            for i in 0..s.webhooks.len() {
                bridge.repeat_after_the_dedup_window(s, i).await;
                repeats += 1;
            }
        }
        let before = worker.usage();
        let batches = bridge.source.drain(&worker).await;
        no_failures(&batches);
        let received: usize = batches.iter().map(|b| b.received.len()).sum();
        assert_eq!(received, repeats, "every repeat reaches the worker");
        let used = worker.usage().since(before);
        assert_eq!(used.call_writes, 0, "a repeat wrote: {used:?}");
        assert_eq!(
            recorder.events().len(),
            recorded,
            "a repeat reached the CRM"
        );

        let events = recorder.events();
        for s in &scenarios {
            s.assert_in_any_order(&events);
            s.assert_deliveries(&events);
        }
        assert_no_stranger(&scenarios, &events);
        // With a CRM that is always up, a repeat never reaches it. Only a call that another
        // call's webhook also changes (a transfer merges calls) may be pushed by two workers
        // at once, under the same key, which the CRM ignores.
        let merging: Vec<String> = scenarios
            .iter()
            .filter(|s| s.expected.calls.len() > 1)
            .flat_map(Scenario::resource_ids)
            .collect();
        let resent: Vec<&RecordedEvent> = events.iter().filter(|e| is_repeat(e)).collect();
        assert!(
            resent.iter().all(|e| e
                .resource_id()
                .is_some_and(|id| merging.iter().any(|m| m == id))),
            "{}",
            summary(&events)
        );
        assert_applied_once(&events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_racing_on_one_call_lose_no_update() {
    const ROUNDS: usize = 3;
    let s = one_call_one_revision_per_webhook();
    let runs: Vec<Scenario> = (0..ROUNDS)
        .map(|round| s.on(format!("{}-race{round}", s.expected.connection)))
        .collect();
    let recorder = recorder().await;
    let bridge = AwsBridge::start("race", &recorder.url(), &copies_of(&runs)).await;

    // Two writers over the same version: one wins, the other is told.
    let calls = bridge.calls();
    let key = CallKey::new("demo-telsmart", Provider::Telsmart, "raced");
    let record = callbridge_shared::domain::record::CallRecord::new(key.clone());
    let version = calls.save(&record, None).await.unwrap();
    assert!(matches!(
        calls.save(&record, None).await,
        Err(StoreError::Conflict)
    ));
    calls.save(&record, Some(version)).await.unwrap();
    assert!(matches!(
        calls.save(&record, Some(version)).await,
        Err(StoreError::Conflict)
    ));

    // Each webhook of a call to two workers of its own, all at once: FIFO would never do
    // this, but a visibility timeout running out mid-batch or a redrive can.
    let mut conflicts = 0;
    for run in &runs {
        bridge.post_scenario(run, 0..run.webhooks.len()).await;
        let received = bridge.source.receive().await;
        assert_eq!(
            received.len(),
            run.webhooks.len(),
            "one receive gives the call"
        );
        let mut racing = tokio::task::JoinSet::new();
        for message in received.iter().chain(&received) {
            let worker = Arc::new(bridge.worker());
            let event = bridge.source.event(std::slice::from_ref(message));
            racing.spawn(async move {
                let response = worker.handle(event).await.unwrap();
                (worker.usage(), aws_support::lambda::failures(&response))
            });
        }
        while let Some(done) = racing.join_next().await {
            let (used, failed) = done.unwrap();
            assert!(failed.is_empty(), "{}: a racing worker failed", run.name);
            conflicts += used.conflicts;
        }
        for message in &received {
            bridge.source.delete(message).await;
        }
        let (record, _) = calls.load(&call_of(run)).await.unwrap().unwrap();
        assert_eq!(
            record.events.len(),
            run.webhooks.len(),
            "{}: an event was lost",
            run.name
        );
        assert!(
            record.outbox.is_empty(),
            "{}: {:?}",
            run.name,
            record.outbox
        );
    }
    assert!(conflicts > 0, "the workers never raced: nothing was proven");

    let events = recorder.events();
    for run in &runs {
        run.assert_in_any_order(&events);
        run.assert_deliveries(&events);
    }
}

/// Where a worker container dies.
#[derive(Clone, Copy, Debug)]
enum CrashPoint {
    /// After its DynamoDB write, before the CRM push.
    BeforePush,
    /// After the CRM took the revision, before the delivered revision is written.
    AfterPush,
}

/// A CRM in front of which the worker dies once, at `point`.
struct Crashing {
    crm: Arc<dyn Crm>,
    point: CrashPoint,
    armed: AtomicBool,
}

#[async_trait]
impl Crm for Crashing {
    async fn deliver(&self, connection: &Connection, delivery: &Delivery) -> DeliveryOutcome {
        if !self.armed.swap(false, Ordering::SeqCst) {
            return self.crm.deliver(connection, delivery).await;
        }
        if let CrashPoint::AfterPush = self.point {
            let outcome = self.crm.deliver(connection, delivery).await;
            assert_eq!(outcome, DeliveryOutcome::Delivered);
        }
        panic!(
            "the worker dies {:?} of {}",
            self.point, delivery.idempotency_key
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_around_the_crm_push_resends_the_same_revision_under_the_same_key() {
    let s = one_call_one_revision_per_webhook();
    let recorder = recorder().await;
    let bridge = AwsBridge::start("crash", &recorder.url(), &[]).await;
    let calls = bridge.calls();
    let key = call_of(&s);

    for (webhook, point) in [CrashPoint::BeforePush, CrashPoint::AfterPush]
        .into_iter()
        .enumerate()
    {
        bridge.post_scenario(&s, [webhook]).await;
        let recorded_before = recorder.events().len();

        // The container dies in the middle of the batch; SQS keeps the message in flight.
        let crashing = Arc::new(bridge.worker_with(Arc::new(Crashing {
            crm: bridge.crm(),
            point,
            armed: AtomicBool::new(true),
        })));
        let received = bridge.source.receive().await;
        assert_eq!(received.len(), 1);
        let event = bridge.source.event(&received);
        let died = tokio::spawn(async move { crashing.handle(event).await }).await;
        assert!(
            died.is_err_and(|e| e.is_panic()),
            "{point:?}: the worker should have died"
        );

        // The revision was written before the push, and is still waiting.
        let (record, _) = calls.load(&key).await.unwrap().unwrap();
        assert_eq!(record.outbox.len(), 1, "{point:?}: {:?}", record.outbox);
        let waiting = record.outbox[0].clone();
        assert_eq!(waiting.revision, webhook as u64 + 1);
        let pushed = match point {
            CrashPoint::BeforePush => 0,
            CrashPoint::AfterPush => 1,
        };
        assert_eq!(recorder.events().len(), recorded_before + pushed);

        // The visibility timeout passes; another container takes the message.
        bridge.source.release(&received[0]).await;
        let batch = bridge.source.poll(&bridge.worker()).await;
        assert_eq!(batch.received.len(), 1);
        no_failures(&[batch]);

        let events = recorder.events();
        let tries: Vec<&RecordedEvent> = events[recorded_before..].iter().collect();
        assert_eq!(tries.len(), 1 + pushed, "{point:?}:\n{}", summary(&events));
        for tried in &tries {
            assert_eq!(
                tried.idempotency_key(),
                Some(waiting.idempotency_key.as_str())
            );
            assert_eq!(tried.body, waiting.body, "{point:?}: the body changed");
        }
        // The CRM applied the revision once; the one repeat is the try whose answer the
        // crash lost.
        assert_applied_once(&events);
        let repeats = assert_repeats_only_in(&events, "the crash", |taken| {
            taken.seq as usize <= recorded_before + pushed
        });
        assert_eq!(repeats, pushed, "{point:?}:\n{}", summary(&events));
        let (record, _) = calls.load(&key).await.unwrap().unwrap();
        assert!(record.outbox.is_empty(), "{point:?}: {:?}", record.outbox);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_parked_in_the_dead_letter_queue_at_once() {
    let all = scenario::all();
    let healthy = &all[0];
    let recorder = recorder().await;
    let bridge = AwsBridge::start("poison", &recorder.url(), &[]).await;
    let queue = &bridge.resources.queue("WebhookQueue").url;
    let send = |group: String, dedup: &str, body: String| {
        bridge
            .sqs
            .send_message()
            .queue_url(queue)
            .message_group_id(group)
            .message_deduplication_id(dedup)
            .message_body(body)
            .send()
    };

    // A body that does not read, in the group of a call: the call's later webhook waits
    // behind it and goes with it.
    let blocked = &all[1];
    let blocked_webhook = providers::parse(blocked.provider, &blocked.webhooks[0]).unwrap();
    let blocked_call = CallKey::new(
        &blocked.connection,
        blocked.provider,
        &blocked_webhook.event.call_key,
    );
    send(message_group(&blocked_call), "garbage", "{not json".into())
        .await
        .unwrap();
    bridge.post_scenario(blocked, [0]).await;
    // A webhook of a connection that does not exist (any more).
    let ghost = QueuedWebhook {
        connection_id: "ghost".into(),
        received_at: SystemClock.now(),
        event: blocked_webhook.event.clone(),
        raw: blocked.webhooks[0].clone(),
    };
    // (Its own deduplication id: the emulator deduplicates across groups, AWS within one.)
    send(
        message_group(&ghost.call()),
        "ghost",
        serde_json::to_string(&ghost).unwrap(),
    )
    .await
    .unwrap();
    // And a healthy call.
    bridge
        .post_scenario(healthy, 0..healthy.webhooks.len())
        .await;

    let worker = bridge.worker();
    let first = bridge.source.poll(&worker).await;
    let garbage = first
        .received
        .iter()
        .position(|m| m.body() == Some("{not json"))
        .expect("the garbage is in the first batch");
    let garbage_id = first.received[garbage].message_id().unwrap();
    let behind = first.received[garbage + 1..]
        .iter()
        .find(|m| {
            m.attributes()
                .unwrap()
                .values()
                .any(|v| *v == message_group(&blocked_call))
        })
        .expect("the blocked call's webhook is in the batch too");
    // Parked at once, with the webhook behind it: neither is handed back to the queue.
    assert!(
        !first
            .failed
            .iter()
            .any(|id| Some(id.as_str()) == behind.message_id() || id == garbage_id),
        "the poison is handed back: {:?}",
        first.failed
    );
    assert!(bridge.dead_letter_count().await >= 2);

    // The rest drains: the healthy call is not held up, the ghost is parked when it comes.
    let batches = bridge.source.drain(&worker).await;
    assert!(batches.iter().all(|b| b.failed.is_empty()));
    healthy.assert_in_order(&recorder.events());
    assert!(
        bridge.source.receive().await.is_empty(),
        "the queue should be empty"
    );
    let mut dead = bridge.dead_letters().await;
    dead.sort();
    let queued: QueuedWebhook = serde_json::from_str(
        dead.iter()
            .find(|b| b.contains(&format!("\"{}\"", blocked.connection)))
            .expect("the blocked webhook is dead-lettered"),
    )
    .unwrap();
    assert_eq!(
        queued.raw, blocked.webhooks[0],
        "the raw webhook is kept for a replay"
    );
    assert_eq!(dead.len(), 3, "{dead:#?}");
    assert!(dead.iter().any(|b| b == "{not json"));
    assert!(dead.iter().any(|b| b.contains("\"ghost\"")));
    assert_no_stranger(std::slice::from_ref(healthy), &recorder.events());
}

/// A cold worker whose first batch holds calls of one connection reads it once, though the
/// batch's calls (one message group each) ask for it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reads_its_connection_once() {
    let calls: Vec<Scenario> = scenario::all()
        .into_iter()
        .filter(|s| s.provider == Provider::Telecmi && s.expected.calls.len() == 1)
        .take(4)
        .map(|s| s.on("telecmi-one-read"))
        .collect();
    assert_eq!(calls.len(), 4, "four one-call TeleCMI scenarios");
    let mut copies = copies_of(&calls);
    copies.dedup();
    let recorder = recorder().await;
    let bridge = AwsBridge::start("one-read", &recorder.url(), &copies).await;
    for s in &calls {
        bridge.post_scenario(s, [0]).await;
    }
    let worker = bridge.worker();
    let batch = bridge.source.poll(&worker).await;
    assert_eq!(batch.received.len(), calls.len(), "one batch of four calls");
    no_failures(&[batch]);
    assert_eq!(worker.usage().connection_reads, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_per_event_are_counted() {
    let s = one_call_one_revision_per_webhook();
    let batched = s.on(format!("{}-batched", s.expected.connection));
    let recorder = recorder().await;
    let bridge = AwsBridge::start(
        "usage",
        &recorder.url(),
        &copies_of(std::slice::from_ref(&batched)),
    )
    .await;
    let worker = bridge.worker();
    let ingest = bridge.ingest(s.provider);

    // Webhooks seconds apart: a batch each.
    let mut per_event = Vec::new();
    for i in 0..s.webhooks.len() {
        bridge.post_scenario(&s, [i]).await;
        let before = worker.usage();
        no_failures(&[bridge.source.poll(&worker).await]);
        per_event.push(worker.usage().since(before));
    }
    for (i, used) in per_event.iter().enumerate() {
        // One read; one write for the event and its revision, one for the delivery.
        assert_eq!(
            (used.call_reads, used.call_writes, used.conflicts),
            (1, 2, 0),
            "event {i}: {used:?}"
        );
        assert_eq!(used.queue_sends, 0);
        // The CRM's breaker: read by the first delivery (then kept a second by the warm
        // worker), never written while the CRM takes everything.
        assert!(used.breaker_reads <= 1, "event {i}: {used:?}");
        assert_eq!(used.breaker_writes, 0, "event {i}: {used:?}");
    }
    assert_eq!(per_event[0].breaker_reads, 1, "{:?}", per_event[0]);
    let ingested = ingest.usage();
    assert_eq!(ingested.queue_sends, s.webhooks.len() as u64);
    assert_eq!(ingested.call_reads + ingested.call_writes, 0);
    // Connections come from the warm container's cache after the first read.
    assert_eq!(ingested.connection_reads, 1);
    assert_eq!(worker.usage().connection_reads, 1);

    // A repeat, after SQS's deduplication window: one read, nothing written or sent.
    let recorded = recorder.events().len();
    bridge.repeat_after_the_dedup_window(&s, 0).await;
    let before = worker.usage();
    let batch = bridge.source.poll(&worker).await;
    let repeat = worker.usage().since(before);
    assert_eq!(batch.received.len(), 1, "the repeat reaches the worker");
    no_failures(&[batch]);
    assert_eq!(
        (repeat.call_reads, repeat.call_writes),
        (1, 0),
        "{repeat:?}"
    );
    assert_eq!(recorder.events().len(), recorded);

    // A call's webhooks in one batch: its record is read once.
    bridge
        .post_scenario(&batched, 0..batched.webhooks.len())
        .await;
    let before = worker.usage();
    let batch = bridge.source.poll(&worker).await;
    assert_eq!(batch.received.len(), batched.webhooks.len());
    no_failures(&[batch]);
    let one_batch = worker.usage().since(before);
    assert_eq!(
        (one_batch.call_reads, one_batch.call_writes),
        (1, 2 * batched.webhooks.len() as u64),
        "{one_batch:?}"
    );
    batched.assert_in_order(&recorder.events());

    // Webhooks that change nothing on the resource (a hold, say) cost one write, not two.
    let quiet = scenario::all()
        .into_iter()
        .find(|s| {
            s.expected.calls.len() == 1
                && s.expected.calls.values().next().unwrap().events.len() < s.webhooks.len()
        })
        .expect("a scenario of one call with webhooks that make no revision");
    let revisions = quiet.expected.calls.values().next().unwrap().events.len() as u64;
    let mut distinct: Vec<String> = quiet
        .webhooks
        .iter()
        .map(|w| providers::parse(quiet.provider, w).unwrap().event.id)
        .collect();
    distinct.sort();
    distinct.dedup();
    let before = worker.usage();
    for i in 0..quiet.webhooks.len() {
        bridge.post_scenario(&quiet, [i]).await;
        no_failures(&bridge.source.drain(&worker).await);
    }
    let quiet_used = worker.usage().since(before);
    assert_eq!(
        quiet_used.call_reads,
        distinct.len() as u64,
        "{quiet_used:?}"
    );
    assert_eq!(
        quiet_used.call_writes,
        distinct.len() as u64 + revisions,
        "{}: a write per event, one more per revision: {quiet_used:?}",
        quiet.name
    );
    // Records are stored deflated: with a Morph event waiting in the outbox an item is still
    // under 1 KiB, a write unit each (2–3 as JSON text).
    assert_eq!(
        quiet_used.call_write_units, quiet_used.call_writes,
        "{}: a write over 1 KiB: {quiet_used:?}",
        quiet.name
    );
    quiet.assert_in_order(&recorder.events());

    let total = per_event
        .iter()
        .fold(UsageCounts::default(), |sum, used| add(sum, *used));
    eprintln!(
        "usage of {} ({} webhooks, a revision each):\n  one batch per webhook: {total:?}\n  \
         a repeat: {repeat:?}\n  one batch for the call: {one_batch:?}\n  ingest: {ingested:?}\n\
         usage of {} ({} webhooks, {revisions} revisions), a batch each: {quiet_used:?}",
        s.name,
        s.webhooks.len(),
        quiet.name,
        quiet.webhooks.len(),
    );
}

fn add(a: UsageCounts, b: UsageCounts) -> UsageCounts {
    UsageCounts {
        call_reads: a.call_reads + b.call_reads,
        call_read_units: a.call_read_units + b.call_read_units,
        call_writes: a.call_writes + b.call_writes,
        call_write_units: a.call_write_units + b.call_write_units,
        call_write_bytes: a.call_write_bytes + b.call_write_bytes,
        conflicts: a.conflicts + b.conflicts,
        breaker_reads: a.breaker_reads + b.breaker_reads,
        breaker_writes: a.breaker_writes + b.breaker_writes,
        connection_reads: a.connection_reads + b.connection_reads,
        queue_sends: a.queue_sends + b.queue_sends,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_answers_as_the_local_server_does() {
    let recorder = recorder().await;
    let bridge = AwsBridge::start("ingest", &recorder.url(), &[]).await;
    let s = &scenario::all()[0];
    let token = s.token();
    let json_post = |body: Vec<u8>, base64: bool| HttpRequest {
        method: "POST".into(),
        connection_id: s.connection.clone(),
        headers: vec![
            ("Authorization".into(), format!("Bearer {token}")),
            (
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            ),
        ],
        body,
        base64,
        ..HttpRequest::default()
    };
    let webhook = s.webhooks[0].to_string().into_bytes();

    let accepted = bridge
        .send(s.provider, &json_post(webhook.clone(), false))
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(accepted.content_type.as_deref(), Some("application/json"));
    assert_eq!(accepted.body["status"], "accepted");
    assert_eq!(
        accepted.body["resource_id"].as_str(),
        Some(
            s.resource_id(s.expected.calls.keys().next().unwrap())
                .as_str()
        )
    );
    // API Gateway may send the body base64-encoded: the same webhook, the same event.
    let encoded = bridge
        .send(s.provider, &json_post(webhook.clone(), true))
        .await;
    assert_eq!(encoded.status, 202, "{}", encoded.body);
    assert_eq!(encoded.body["event_id"], accepted.body["event_id"]);

    let refused = [
        (
            "a wrong token",
            HttpRequest {
                headers: vec![("Authorization".into(), "Bearer not-the-token-at-all".into())],
                ..json_post(webhook.clone(), false)
            },
            401,
            "unauthorized",
        ),
        (
            "no token",
            HttpRequest {
                headers: vec![],
                ..json_post(webhook.clone(), false)
            },
            401,
            "unauthorized",
        ),
        (
            "an unknown connection",
            HttpRequest {
                connection_id: "nobody".into(),
                ..json_post(webhook.clone(), false)
            },
            404,
            "unknown_connection",
        ),
        (
            "a body that is not JSON",
            json_post(b"{\"id\": ".to_vec(), false),
            400,
            "invalid_json",
        ),
        (
            "an XML body",
            HttpRequest {
                headers: vec![
                    ("Authorization".into(), format!("Bearer {token}")),
                    ("Content-Type".into(), "application/xml".into()),
                ],
                ..json_post(b"<call/>".to_vec(), false)
            },
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, request, status, error) in refused {
        let answer = bridge.send(s.provider, &request).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        assert_eq!(answer.body["error"], error, "{what}: {}", answer.body);
        assert!(
            answer.body["message"].is_string(),
            "{what}: {}",
            answer.body
        );
    }
    // A connection of another provider is not this route's.
    let other = Provider::ALL
        .into_iter()
        .find(|p| *p != s.provider)
        .unwrap();
    let answer = bridge
        .post(other, &s.connection, &token, &s.webhooks[0])
        .await;
    assert_eq!(answer.status, 404, "{}", answer.body);

    // TeleCMI also sends GET with the webhook in the query string, token included.
    let telecmi = scenario::telecmi_as_query();
    let mut query: Vec<String> = scenario::query_pairs(&telecmi)
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B")))
        .collect();
    query.push(format!("token={}", telecmi.token()));
    let get = HttpRequest {
        method: "GET".into(),
        connection_id: telecmi.connection.clone(),
        query: query.join("&"),
        ..HttpRequest::default()
    };
    let answer = bridge.send(Provider::Telecmi, &get).await;
    assert_eq!(answer.status, 202, "TeleCMI GET: {}", answer.body);

    // What was refused was not queued: the worker gets the two accepted webhooks' event
    // (once: SQS deduplicates it) and TeleCMI's.
    let worker = bridge.worker();
    let batches = bridge.source.drain(&worker).await;
    no_failures(&batches);
    let received: usize = batches.iter().map(|b| b.received.len()).sum();
    assert_eq!(received, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_imported_with_their_tokens_hashed() {
    let recorder = recorder().await;
    let bridge = AwsBridge::start("import", &recorder.url(), &[]).await;
    let example = aws_support::emulator::repo_root().join("infra/callbridge.example.toml");
    let config = callbridge_shared::config::Config::load(&example).unwrap();

    // Importing again replaces what is there.
    let imported = callbridge::connections::import(&example, &bridge.connections())
        .await
        .unwrap();
    let ids: Vec<&str> = config.connections.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(imported, ids);

    let (worker, _) = bridge.resources.worker_function();
    let table = worker.var("CONNECTIONS_TABLE").unwrap();
    let items = bridge
        .dynamodb
        .scan()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    assert_eq!(items.len(), ids.len());
    for connection in &config.connections {
        let token = connection.token.as_deref().unwrap();
        let item = items
            .iter()
            .find(|i| i.get("id") == Some(&AttributeValue::S(connection.id.clone())))
            .unwrap_or_else(|| panic!("{} was not imported", connection.id));
        let stored = format!("{item:?}");
        assert!(
            !stored.contains(token),
            "{}: the token is stored",
            connection.id
        );
        assert!(
            stored.contains(&hash_token(token)),
            "{}: no hash",
            connection.id
        );
        let read = bridge.connections();
        let read = callbridge_shared::ports::ConnectionDirectory::connection(&read, &connection.id)
            .await
            .unwrap()
            .unwrap();
        assert!(read.accepts_token(token));
        assert_eq!(*read, connection.to_connection().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_keeps_a_message_for_the_whole_retry_horizon() {
    use callbridge_shared::engine::schedule::Jitter;
    use std::time::Duration;

    let recorder = recorder().await;
    let bridge = AwsBridge::start("retry-bound", &recorder.url(), &[]).await;
    let schedule = bridge.worker_settings().retry;
    let queue = &bridge.resources.queue("WebhookQueue").attributes;
    let seconds = |name: &str| Duration::from_secs(queue[name].parse().unwrap());
    // The worker waits whole on AWS: every try of the horizon is one receive, under the
    // queue's maxReceiveCount, which is only a backstop (SQS takes at most 1,000).
    let receives = schedule.attempts_within_horizon(Jitter::NONE);
    assert_eq!(receives, 874, "72 hours of whole waits (RELIABILITY.md)");
    let max_receive_count = bridge.resources.max_receive_count();
    assert!(
        receives < max_receive_count && max_receive_count <= 1_000,
        "{receives} receives against a maxReceiveCount of {max_receive_count}"
    );
    // A held message comes back once per cap at most: as many receives.
    assert!(schedule.horizon.as_secs() / schedule.cap.as_secs() < u64::from(max_receive_count));
    // Kept past the horizon, so the engine parks it, not the queue's retention.
    assert!(seconds("MessageRetentionPeriod") > schedule.horizon + Duration::from_secs(24 * 3600));
    // The longest wait fits in the visibility timeout a message gets when the worker cannot
    // change it.
    assert!(schedule.cap <= seconds("VisibilityTimeout"));
}
