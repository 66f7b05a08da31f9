//! The operator's side of the local server: its logs and `GET /metrics` count every webhook
//! and delivery, and the `callbridge calls` and `deliveries` commands, run as an operator runs
//! them beside the server, list and show calls, send parked deliveries again and erase a call
//! for good.

mod support;

use callbridge::recorder::{Answer, Behaviour, RecordedEvent, Recorder};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use support::bridge::{Bridge, CrmSettings, Sender, Setup};
use support::command;
use support::scenario::{self, Scenario};

/// Telsmart's answered incoming call: three webhooks, three revisions, a caller's number.
fn answered_call() -> Scenario {
    scenario::all()
        .into_iter()
        .find(|s| s.name == "telsmart/1-answered-incoming.json")
        .expect("the scenario telsmart/1-answered-incoming")
}

async fn recorder(behaviour: Behaviour) -> Recorder {
    Recorder::start("127.0.0.1:0", behaviour)
        .await
        .expect("the CRM recorder starts")
}

/// Runs `callbridge ARGS --config CONFIG`, as an operator beside the server.
async fn callbridge(config: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .await
        .expect("callbridge runs")
}

/// Runs a command that must succeed; returns its standard output.
async fn succeeds(config: &Path, args: &[&str]) -> String {
    command::succeeded(args, callbridge(config, args).await)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

async fn show(config: &Path, resource_id: &str) -> Value {
    serde_json::from_str(&succeeds(config, &["calls", "show", resource_id]).await)
        .expect("calls show prints JSON")
}

/// `GET /metrics`' samples by series, as the Prometheus text format writes them
/// (`Name{Label="value",...} value`).
async fn metrics(bridge: &Sender) -> BTreeMap<String, f64> {
    let url = bridge
        .webhook_url("x", "y")
        .replace("/webhooks/x/y", "/metrics");
    let answer = bridge.client().get(url).send().await.expect("GET /metrics");
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    let text = answer.text().await.expect("the metrics' text");
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a series and its value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn applied(events: &[RecordedEvent]) -> Vec<&RecordedEvent> {
    events.iter().filter(|e| e.applied()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_webhook_is_logged_and_every_delivery_counted() {
    let s = answered_call();
    let recorder = recorder(Behaviour::default()).await;
    let setup = Setup::new(&recorder.url(), CrmSettings::default(), &[]);
    let bridge = Bridge::start(&setup).await;

    // A scraper sees the counters before the first webhook.
    let at_start = metrics(&bridge).await;
    for series in [
        "WebhooksAccepted{Provider=\"telsmart\"}",
        "EventsApplied{Provider=\"voys\"}",
        "Deliveries{Outcome=\"delivered\"}",
        "Retries",
        "DeliveriesParked",
    ] {
        assert_eq!(
            at_start.get(series),
            Some(&0.0),
            "{series} in {at_start:#?}"
        );
    }

    bridge.post_in_file_order(&s).await;
    let refused = bridge
        .post(
            s.provider,
            &s.connection,
            "not-the-token-at-all",
            &s.webhooks[0],
        )
        .await;
    assert_eq!(refused.status, 401);
    bridge
        .settled(&recorder, "the call's three revisions", |e| {
            applied(e).len() == 3
        })
        .await;
    // A repeat: accepted, applied as nothing new.
    assert_eq!(
        bridge
            .post(s.provider, &s.connection, &s.token(), &s.webhooks[0])
            .await
            .status,
        202
    );
    bridge.wait_idle(support::bridge::DELIVERY_TIMEOUT).await;

    let counted = metrics(&bridge).await;
    for (series, expected) in [
        ("WebhooksAccepted{Provider=\"telsmart\"}", 4.0),
        (
            "WebhooksRejected{Provider=\"telsmart\",Reason=\"unauthorized\"}",
            1.0,
        ),
        ("EventsApplied{Provider=\"telsmart\"}", 3.0),
        ("EventsDeduplicated{Provider=\"telsmart\"}", 1.0),
        ("Deliveries{Outcome=\"delivered\"}", 3.0),
        ("DeliveryLatency_count", 3.0),
    ] {
        assert_eq!(
            counted.get(series),
            Some(&expected),
            "{series} in {counted:#?}"
        );
    }

    let logs = bridge.output();
    let call_key = s.expected.calls.keys().next().expect("a call");
    for line in ["webhook accepted", "webhook refused"] {
        assert!(
            logs.lines()
                .any(|l| l.contains(line) && l.contains(s.connection.as_str())),
            "no `{line}` line:\n{logs}"
        );
    }
    // Deliveries the CRM took are counted above, and logged only at `debug`.
    assert!(!logs.contains("delivery attempt"), "{logs}");
    assert!(logs.contains(call_key.as_str()), "{logs}");
    assert!(!logs.contains(&s.token()), "a token was logged:\n{logs}");
    assert!(
        !logs.contains("+3228992675"),
        "a number was logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_listed_shown_sent_again_and_erased() {
    let s = answered_call();
    let resource_id = s.resource_ids().remove(0);
    let recorder = recorder(Behaviour::down(Answer::status(422))).await;
    let setup = Setup::new(&recorder.url(), CrmSettings::default(), &[]);
    let config = setup.config.as_path();
    let bridge = Bridge::start(&setup).await;

    // The CRM refuses the first revision: it is parked, the later ones wait behind it.
    bridge.post_in_file_order(&s).await;
    bridge
        .settled(&recorder, "the refusal", |e| !e.is_empty())
        .await;
    let listed = json_lines(&succeeds(config, &["calls", "list"]).await);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["resource_id"], resource_id.as_str());
    assert_eq!(listed[0]["state"], "parked");
    assert_eq!(listed[0]["revision"], 3);
    let shown = show(config, &resource_id).await;
    let states: Vec<&str> = shown["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["state"].as_str())
        .collect();
    assert_eq!(states, ["parked", "waiting", "waiting"], "{shown:#}");
    assert_eq!(shown["revisions"][0]["parked"]["crm_status"], 422);
    let parked = json_lines(&succeeds(config, &["deliveries", "list"]).await);
    assert_eq!(parked.len(), 1);

    // Once the CRM takes events again, a retry sends the call's three revisions in order.
    recorder.set_behaviour(Behaviour::default());
    let retried = succeeds(config, &["deliveries", "retry"]).await;
    assert!(retried.contains("1 un-parked"), "{retried}");
    bridge
        .settled(&recorder, "the call's three revisions", |e| {
            applied(e).len() == 3
        })
        .await;
    assert!(json_lines(&succeeds(config, &["calls", "list", "--undelivered"]).await).is_empty());
    let shown = show(config, &resource_id).await;
    assert_eq!(shown["state"], "delivered");
    assert_eq!(shown["events"].as_array().unwrap().len(), 3);
    assert_eq!(shown["resource"]["externalNumber"], "+*******675");

    // Erased: the CRM is told, then only the tombstone is left.
    let erased = succeeds(config, &["calls", "erase", &resource_id]).await;
    assert!(erased.contains("is erased"), "{erased}");
    let events = recorder.events();
    let deleted = applied(&events).into_iter().last().unwrap();
    assert_eq!(deleted.event_type(), Some("telephonyCall::deleted"));
    assert_eq!(
        deleted.idempotency_key(),
        Some(format!("{resource_id}-r4").as_str())
    );
    let tombstone = show(config, &resource_id).await;
    assert_eq!(tombstone["state"], "erased");
    assert_eq!(tombstone["revision"], 4);
    assert_eq!(tombstone["events"], Value::Array(Vec::new()));
    assert_eq!(tombstone["resource"], Value::Null);

    // A late webhook of the call (a new one, not a repeat) does not bring it back.
    let mut late = s.webhooks[2].clone();
    late["timestamp"] = "1765209500000000".into();
    let answer = bridge
        .post(s.provider, &s.connection, &s.token(), &late)
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    bridge.wait_idle(support::bridge::DELIVERY_TIMEOUT).await;
    assert_eq!(recorder.events().len(), events.len(), "the CRM heard more");
    assert_eq!(show(config, &resource_id).await, tombstone);

    let unknown = callbridge(config, &["calls", "erase", "call_0000"]).await;
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("there is no call call_0000"));
}
