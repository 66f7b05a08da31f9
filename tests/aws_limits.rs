//! The size limit of a webhook, on both hosts: the queue's `MaximumMessageSize` as
//! `template.yaml` sets it, and the ingest's body limit derived from it. The largest body that
//! fits is accepted and reaches the worker; one byte more, or a body whose queued message grows
//! past the queue's limit, is answered 413 (never 503, which would have the provider retry
//! forever) and is not queued. On the emulator (the queues created from the template) and on a
//! real `callbridge serve`.
//!
//! Needs `moto_server` (on the PATH or in `.venv`, installed by `infra/setup.sh`).

mod aws_support;
#[allow(dead_code)]
#[path = "support/bridge.rs"]
mod bridge;
#[allow(dead_code)]
#[path = "support/scenario.rs"]
mod scenario;

use aws_support::AwsBridge;
use aws_support::emulator::{self, repo_root};
use bridge::{Bridge, CrmSettings, Setup};
use callbridge::recorder::{Behaviour, RecordedEvent, Recorder};
use callbridge_shared::adapters::aws::aws_sdk_sqs::Client as SqsClient;
use callbridge_shared::adapters::aws::aws_sdk_sqs::types::QueueAttributeName;
use callbridge_shared::adapters::aws::sqs_queue::SqsQueue;
use callbridge_shared::adapters::clock::SystemClock;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::providers;
use callbridge_shared::engine::ingest::MAX_BODY_BYTES;
use callbridge_shared::ports::{Clock, MAX_MESSAGE_BYTES, MessageTooLarge, Queue, QueuedWebhook};
use scenario::Scenario;
use serde_json::{Value, json};
use std::time::Duration;

/// `MaximumMessageSize` of the queue `logical_id` as written in `template.yaml`.
fn template_message_size(logical_id: &str) -> usize {
    let template =
        std::fs::read_to_string(repo_root().join("template.yaml")).expect("template.yaml reads");
    let header = format!("  {logical_id}:");
    let mut lines = template.lines().skip_while(|line| *line != header);
    assert!(lines.next().is_some(), "the template has no {logical_id}");
    // The resource's lines, up to the next resource (indented two spaces) or section.
    lines
        .take_while(|line| line.is_empty() || line.starts_with("   "))
        .find_map(|line| line.trim().strip_prefix("MaximumMessageSize:"))
        .unwrap_or_else(|| panic!("the template sets no MaximumMessageSize on {logical_id}"))
        .trim()
        .parse()
        .expect("a MaximumMessageSize in bytes")
}

/// A Telsmart webhook of call `call_id`, its JSON exactly `bytes` long (a field of filler
/// the parser does not read, but which is queued with the rest).
fn telsmart_webhook(s: &Scenario, call_id: &str, bytes: usize) -> Vec<u8> {
    let mut webhook = s.webhooks[0].clone();
    webhook["id"] = json!(call_id);
    webhook["filler"] = json!("");
    let short = webhook.to_string().len();
    webhook["filler"] = json!("x".repeat(bytes - short));
    let body = webhook.to_string().into_bytes();
    assert_eq!(body.len(), bytes);
    body
}

/// A Telsmart webhook of call `call_id` within the body limit whose queued message is over the
/// queue's: numbers written `1e9` take 3 bytes in the body and 12 (`1000000000.0`) once the
/// payload is queued.
fn growing_webhook(s: &Scenario, call_id: &str) -> Vec<u8> {
    let mut webhook = s.webhooks[0].clone();
    webhook["id"] = json!(call_id);
    webhook["filler"] = json!([]);
    let room = (MAX_BODY_BYTES - webhook.to_string().len()) / 4;
    let text = webhook.to_string();
    let body = text.replace(
        "\"filler\":[]",
        &format!("\"filler\":[{}1e9]", "1e9,".repeat(room - 1)),
    );
    assert!(body.len() <= MAX_BODY_BYTES && body.len() > MAX_BODY_BYTES - 8);
    body.into_bytes()
}

fn telsmart_scenario() -> Scenario {
    scenario::all()
        .into_iter()
        .find(|s| s.provider == Provider::Telsmart)
        .expect("a Telsmart scenario")
}

async fn recorder() -> Recorder {
    Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts")
}

/// None of the refused webhooks' calls reached the CRM.
fn assert_no_refused_call(s: &Scenario, delivered: &[RecordedEvent]) {
    for call in ["limits-over", "limits-grows"] {
        let resource_id = s.resource_id(call);
        assert!(
            delivered
                .iter()
                .all(|e| !e.body.to_string().contains(&resource_id)),
            "the refused call {call} reached the CRM"
        );
    }
}

/// The three bodies of the boundary: (what, body, expected status, expected error).
fn boundary(s: &Scenario) -> Vec<(&'static str, Vec<u8>, u16, Option<&'static str>)> {
    vec![
        (
            "the largest body",
            telsmart_webhook(s, "limits-fits", MAX_BODY_BYTES),
            202,
            None,
        ),
        (
            "one byte more",
            telsmart_webhook(s, "limits-over", MAX_BODY_BYTES + 1),
            413,
            Some("payload_too_large"),
        ),
        (
            "a body whose queued message grows past the queue's limit",
            growing_webhook(s, "limits-grows"),
            413,
            Some("payload_too_large"),
        ),
    ]
}

#[test]
fn the_limits_are_the_templates() {
    for queue in ["WebhookQueue", "DeadLetterQueue"] {
        assert_eq!(template_message_size(queue), MAX_MESSAGE_BYTES, "{queue}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_aws_the_largest_body_is_queued_and_one_byte_more_is_413() {
    let recorder = recorder().await;
    let bridge = AwsBridge::start("limits", &recorder.url(), &[]).await;
    for queue in ["WebhookQueue", "DeadLetterQueue"] {
        let created = &bridge.resources.queue(queue).attributes["MaximumMessageSize"];
        assert_eq!(
            created.parse::<usize>().unwrap(),
            template_message_size(queue),
            "the emulator's {queue} is not as the template sets it"
        );
    }
    let s = telsmart_scenario();
    let mut accepted = None;
    for (what, body, status, error) in boundary(&s) {
        let request = AwsBridge::webhook_request(&s.connection, &s.token(), &Value::Null);
        let answer = bridge
            .send(
                s.provider,
                &aws_support::lambda::HttpRequest { body, ..request },
            )
            .await;
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        match error {
            Some(error) => {
                assert_eq!(answer.body["error"], error, "{what}: {}", answer.body);
                assert!(
                    answer.body["message"].is_string(),
                    "{what}: {}",
                    answer.body
                );
            }
            None => accepted = Some(answer.body["resource_id"].as_str().unwrap().to_string()),
        }
    }

    // Only the largest body was queued, and the worker takes it.
    let worker = bridge.worker();
    let batches = bridge.source.drain(&worker).await;
    let received: Vec<&str> = batches.iter().flat_map(|b| b.bodies()).collect();
    assert_eq!(received.len(), 1, "queued: {} messages", received.len());
    assert!(
        batches.iter().all(|b| b.failed.is_empty()),
        "the worker failed the message"
    );
    assert!(received[0].contains("limits-fits"));
    let resource_id = accepted.expect("the largest body was accepted");
    let delivered = recorder.events();
    assert!(
        delivered
            .iter()
            .any(|e| e.body.to_string().contains(&resource_id)),
        "the CRM got nothing of {resource_id}"
    );
    assert_no_refused_call(&s, &delivered);
}

/// A queue deployed smaller than the template's refuses a message for its size: the adapter
/// tells it apart (the ingest answers 413) from an outage (503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_refusing_a_message_for_its_size_is_not_an_outage() {
    // A stack of its own, for its wait until the emulator answers; its CRM is never called.
    let (_, aws) = emulator::create_stack("limits-small", "http://127.0.0.1:9").await;
    let sqs = SqsClient::new(&aws);
    let small = sqs
        .create_queue()
        .queue_name("limits-small.fifo")
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::MaximumMessageSize, "1024")
        .send()
        .await
        .expect("a queue on the emulator")
        .queue_url
        .unwrap();
    let s = telsmart_scenario();
    let mut payload = s.webhooks[0].clone();
    payload["filler"] = json!("x".repeat(2048));
    let webhook = QueuedWebhook {
        connection_id: s.connection.clone(),
        received_at: SystemClock.now(),
        event: providers::parse(s.provider, &payload).unwrap().event,
        raw: payload,
    };
    let usage = std::sync::Arc::default();
    let error = SqsQueue::new(sqs.clone(), &small, usage)
        .enqueue(&webhook)
        .await
        .expect_err("a 2 KiB message does not fit in a 1 KiB queue");
    let too_large =
        MessageTooLarge::of(&error).unwrap_or_else(|| panic!("not a size refusal: {error:#}"));
    assert_eq!(too_large.limit, 1024);
    assert_eq!(too_large.bytes, webhook.to_message().unwrap().len());

    let gone = small.replace("limits-small", "limits-no-such-queue");
    let outage = SqsQueue::new(sqs, gone, std::sync::Arc::default())
        .enqueue(&webhook)
        .await
        .expect_err("no such queue");
    assert!(MessageTooLarge::of(&outage).is_none(), "{outage:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locally_the_largest_body_is_queued_and_one_byte_more_is_413() {
    let recorder = recorder().await;
    let setup = Setup::new(&recorder.url(), CrmSettings::default(), &[]);
    let bridge = Bridge::start(&setup).await;
    let s = telsmart_scenario();
    let url = bridge.webhook_url(s.provider.as_str(), &s.connection);
    let mut accepted = None;
    for (what, body, status, error) in boundary(&s) {
        let request = bridge
            .client()
            .post(&url)
            .bearer_auth(s.token())
            .header("content-type", "application/json")
            .body(body);
        let answer = bridge.send(request).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        match error {
            Some(error) => {
                assert_eq!(answer.body["error"], error, "{what}: {}", answer.body);
                assert!(
                    answer.body["message"].is_string(),
                    "{what}: {}",
                    answer.body
                );
            }
            None => accepted = Some(answer.body["resource_id"].as_str().unwrap().to_string()),
        }
    }
    let resource_id = accepted.expect("the largest body was accepted");
    let delivered = bridge
        .settled(&recorder, "the largest body's call", |events| {
            events
                .iter()
                .any(|e| e.body.to_string().contains(&resource_id))
        })
        .await;
    bridge.wait_idle(Duration::from_secs(10)).await;
    assert_no_refused_call(&s, &delivered);
    let output = bridge.output();
    assert!(
        !output.contains("ERROR"),
        "the server logged an error:\n{output}"
    );
}
