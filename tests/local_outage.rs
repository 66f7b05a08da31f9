//! A CRM outage longer than any backoff step (issue 11), over real HTTP with a real
//! `callbridge serve` and the CRM recorder: the CRM answers 503 to everything while the calls
//! of two connections come in, several webhooks each, then recovers. Nothing is parked; every
//! call ends as its scenario says, created first, in revision order, no idempotency key taken
//! twice; while the CRM is down each connector's breaker (one per connection here) keeps its
//! requests to its opening run and one probe per interval; after the recovery every call reaches the CRM within a probe interval
//! (plus the time to send), a call that waited sending its created and latest state only.
//!
//! The suite runs the outage in 20 s on a shortened schedule; `infra/outage.sh` runs it in
//! real time with the server's default configuration (5 min 30 s, about 6 min in all).

mod support;

use callbridge::recorder::{Answer, Behaviour, RecordedEvent, Recorder, summary};
use callbridge_shared::domain::event::Provider;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::bridge::{Bridge, CrmSettings, Setup};
use support::scenario::{self, Scenario, assert_no_stranger, without_shared_calls};

/// Time to send everything once the breaker has closed, on a loaded 2-core machine: generous.
const SENDING: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twenty_second_outage_on_a_shortened_schedule_loses_doubles_and_floods_nothing() {
    let crm = CrmSettings {
        retry_horizon_secs: 600.0,
        retry_initial_secs: 0.25,
        retry_cap_secs: 5.0,
        breaker_open_after: 5,
        breaker_probe_every_secs: 1,
        ..CrmSettings::default()
    };
    survive(crm, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real time, ~6 min: infra/outage.sh"]
async fn an_outage_of_five_and_a_half_minutes_with_the_default_configuration() {
    let crm = CrmSettings::server_defaults();
    // The issue's figures, which the bound on the requests below rests on.
    assert_eq!(crm.breaker_open_after, 5);
    assert_eq!(crm.breaker_probe_every_secs, 30);
    assert_eq!(crm.retry_horizon_secs, 72.0 * 3600.0);
    survive(crm, Duration::from_secs(5 * 60 + 30)).await;
}

/// The scenarios of two connections, on copies of their own.
fn two_connections() -> Vec<Scenario> {
    [Provider::Teltel, Provider::Telecmi]
        .into_iter()
        .flat_map(|provider| {
            let of_provider = scenario::all()
                .into_iter()
                .filter(|s| s.provider == provider)
                .collect();
            without_shared_calls(of_provider).into_iter().map(|s| {
                let copy = format!("{}-outage", s.expected.connection);
                s.on(copy)
            })
        })
        .collect()
}

/// Runs the outage of `down_for` against a server configured with `crm` and checks
/// everything; prints the figures for RELIABILITY.md.
async fn survive(crm: CrmSettings, down_for: Duration) {
    let down = Behaviour::down(Answer::status(503));
    let recorder = Recorder::start("127.0.0.1:0", down)
        .await
        .expect("the CRM recorder starts");
    let scenarios = two_connections();
    let mut copies = scenario::copies_of(&scenarios);
    copies.sort();
    copies.dedup();
    assert_eq!(copies.len(), 2, "{copies:?}");
    let setup = Setup::new(&recorder.url(), crm, &copies);
    let bridge = Bridge::start(&setup).await;
    let down_since = Instant::now();

    // Each connection's webhooks come in one by one over the first three quarters of the
    // outage, the two connections side by side; when each call first came in is kept.
    let mut senders = Vec::new();
    for provider in [Provider::Teltel, Provider::Telecmi] {
        let mine: Vec<Scenario> = scenarios
            .iter()
            .filter(|s| s.provider == provider)
            .cloned()
            .collect();
        let webhooks: usize = mine.iter().map(|s| s.webhooks.len()).sum();
        let spacing = down_for * 3 / 4 / u32::try_from(webhooks).expect("a few webhooks");
        let sender = bridge.sender();
        senders.push(tokio::spawn(async move {
            let mut first_in = Vec::new();
            for s in &mine {
                first_in.push((s.name.clone(), Instant::now()));
                for (i, webhook) in s.webhooks.iter().enumerate() {
                    let answer = sender
                        .post(s.provider, &s.connection, &s.token(), webhook)
                        .await;
                    assert_eq!(
                        answer.status, 202,
                        "{} webhook {i}: {}",
                        s.name, answer.body
                    );
                    tokio::time::sleep(spacing).await;
                }
            }
            first_in
        }));
    }
    let mut first_in: HashMap<String, Instant> = HashMap::new();
    for sender in senders {
        first_in.extend(sender.await.expect("the webhooks are sent"));
    }
    tokio::time::sleep((down_since + down_for).saturating_duration_since(Instant::now())).await;

    // Down: the CRM took nothing, and heard little.
    let during = recorder.events();
    let recovered = Instant::now();
    recorder.set_behaviour(Behaviour::default());
    assert!(
        during.iter().all(|e| e.status == 503),
        "the CRM took events while it was down:\n{}",
        summary(&during)
    );
    let probe_every = Duration::from_secs(crm.breaker_probe_every_secs);
    let calls: usize = scenarios.iter().map(|s| s.resource_ids().len()).sum();
    // A breaker per connector (the CRM behind Morph), here one per connection: per connector,
    // the failures in a row that open it, the requests of its other calls already on their
    // way then (one per call at most), and one probe per interval after.
    let probes = down_for.as_secs().div_ceil(probe_every.as_secs()) + 1;
    let mut bounds = Vec::new();
    for provider in [Provider::Teltel, Provider::Telecmi] {
        let mine: Vec<&Scenario> = scenarios
            .iter()
            .filter(|s| s.provider == provider)
            .collect();
        let ids: Vec<String> = mine.iter().flat_map(|s| s.resource_ids()).collect();
        let sent = during
            .iter()
            .filter(|e| {
                e.resource_id()
                    .is_some_and(|id| ids.iter().any(|i| i == id))
            })
            .count();
        let bound = crm.breaker_open_after as usize + ids.len() + probes as usize;
        assert!(
            sent > 0 && sent <= bound,
            "{sent} requests of the {provider} connection to a CRM down for {down_for:?}, more \
             than {} failures + {} calls + {probes} probes:\n{}",
            crm.breaker_open_after,
            ids.len(),
            summary(&during)
        );
        bounds.push(format!("{provider} {sent} (bound {bound})"));
    }
    let output = bridge.output();
    assert_eq!(
        output.matches("breaker opened").count(),
        2,
        "one opening per connector for one outage; the server printed:\n{output}"
    );

    // Up: every call at its end, within a probe interval and the time to send.
    let at_end =
        |events: &[RecordedEvent]| scenarios.iter().all(|s| s.delivered_in_any_order(events));
    if let Err(e) = recorder
        .wait_for("every call at its end", probe_every + SENDING, at_end)
        .await
    {
        panic!(
            "{e} after the recovery\nthe CRM recorded:\n{}\nthe server printed:\n{}",
            summary(&recorder.events()),
            bridge.output()
        );
    }
    let caught_up = recovered.elapsed();
    bridge.wait_idle(support::bridge::DELIVERY_TIMEOUT).await;
    let events = recorder.events();
    let output = bridge.output();
    assert_eq!(
        output.matches("breaker closed").count(),
        2,
        "one closing per connector for one recovery; the server printed:\n{output}"
    );
    assert!(setup.parked().await.is_empty(), "nothing is parked");
    assert_no_stranger(&scenarios, &events);
    for s in &scenarios {
        s.assert_in_any_order(&events);
    }
    assert_in_revision_order_once(&events);

    // After the recovery: nothing tried twice, and a call that had waited a probe interval
    // (a second more for its task to look) catches up with its created, its latest state
    // and its deletion at most.
    let after = &events[during.len()..];
    let mut per_call: HashMap<&str, usize> = HashMap::new();
    for e in after {
        *per_call
            .entry(e.resource_id().expect("a call's event"))
            .or_default() += 1;
        assert!(
            e.accepted(),
            "{e} refused after the recovery:\n{}",
            summary(after)
        );
    }
    let waited =
        |s: &Scenario| first_in[&s.name] + probe_every + Duration::from_secs(1) < recovered;
    for s in scenarios.iter().filter(|s| waited(s)) {
        for id in s.resource_ids() {
            let sent = per_call.get(id.as_str()).copied().unwrap_or(0);
            assert!(
                sent <= 3,
                "{} ({id}) waited the outage out and sent {sent} requests after it:\n{}",
                s.name,
                s.summary(&events)
            );
        }
    }
    let revisions: usize = scenarios
        .iter()
        .flat_map(|s| s.expected.calls.values())
        .map(|c| c.events.len())
        .sum();
    eprintln!(
        "outage of {down_for:?} ({} calls, {} webhooks, {revisions} revisions on two \
         connections): {} requests while down ({}); caught up {caught_up:?} after \
         the recovery with {} requests ({} calls waited a probe interval; at most {} requests \
         for one call); 0 parked, 0 doubled",
        calls,
        scenarios.iter().map(|s| s.webhooks.len()).sum::<usize>(),
        during.len(),
        bounds.join(", "),
        after.len(),
        scenarios.iter().filter(|s| waited(s)).count(),
        per_call.values().max().copied().unwrap_or(0),
    );
}

/// Per call, the CRM took `created` first and then revisions in increasing order, never one
/// at or below a revision it had taken (the superseded ones are skipped, never sent late); no
/// key taken twice; every try of a key with the same body.
fn assert_in_revision_order_once(events: &[RecordedEvent]) {
    let mut taken: HashMap<&str, u64> = HashMap::new();
    let mut bodies: HashMap<&str, &serde_json::Value> = HashMap::new();
    for e in events {
        let (Some(resource), Some(key)) = (e.resource_id(), e.idempotency_key()) else {
            panic!("{e} without a call or a key:\n{}", summary(events));
        };
        let revision: u64 = key
            .strip_prefix(resource)
            .and_then(|rest| rest.strip_prefix("-r"))
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("{e}: a key not <resource>-r<revision>"));
        assert_eq!(
            *bodies.entry(key).or_insert(&e.body),
            &e.body,
            "{e}: the body under {key} changed between tries"
        );
        let last = taken.get(resource).copied();
        assert!(
            last.is_none_or(|last| revision > last),
            "{e}: revision {revision} sent after the CRM took {last:?}:\n{}",
            summary(events)
        );
        if e.accepted() {
            assert!(
                last.is_some() || e.event_type() == Some("telephonyCall::created"),
                "{e}: the CRM's first event of the call is not its creation:\n{}",
                summary(events)
            );
            taken.insert(resource, revision);
        }
    }
}
