//! The rules of a call's record and state that the scenarios pass through without telling
//! them apart (mutation testing found each one unguarded, RELIABILITY.md): what the CRM has
//! taken, what a repeated or late event changes, when a call counts as answered, and the key a
//! call is stored under.

use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::{CallEvent, Ending, EventKind, Provider};
use callbridge_shared::domain::fold::fold;
use callbridge_shared::domain::record::{CallKey, CallRecord};
use callbridge_shared::domain::resource::{MorphEventType, to_resource};
use callbridge_shared::domain::time::Timestamp;

fn connection() -> Connection {
    Config::parse(
        r#"
        [[connections]]
        id = "acme"
        provider = "voys"
        token = "acme-token-0123456789"
        connector_id = "conn_acme"
        owner_id = "owner_acme"
        users = { "201" = "usr_piet", "202" = "usr_anna" }
        "#,
    )
    .unwrap()
    .connections()
    .unwrap()
    .remove(0)
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_micros(1_765_000_000_000_000 + second * 1_000_000).unwrap()
}

fn event(id: &str, second: i64, kind: EventKind, participants: &[&str]) -> CallEvent {
    let mut event = CallEvent::new(Provider::Voys, "x", at(second), kind);
    event.id = id.to_string();
    event.participants = participants.iter().map(|p| p.to_string()).collect();
    event
}

fn ended(answered: Option<bool>, talk_seconds: Option<u64>) -> EventKind {
    EventKind::Ended(Ending {
        answered,
        talk_seconds,
        voicemail: false,
    })
}

fn record() -> CallRecord {
    CallRecord::new(CallKey::new("acme", Provider::Voys, "x"))
}

/// A record that emitted three revisions: ringing, answered, ended.
fn three_revisions() -> CallRecord {
    let connection = connection();
    let mut record = record();
    for (id, second, kind) in [
        ("ring", 0, EventKind::Ringing),
        ("answer", 5, EventKind::Answered),
        ("end", 65, ended(None, None)),
    ] {
        assert!(record.add_event(&event(id, second, kind, &["201"])));
        assert!(record.refresh(&connection));
    }
    assert_eq!(record.revision, 3);
    record
}

#[test]
fn the_delivered_revision_is_the_one_before_the_outbox() {
    let mut record = three_revisions();
    assert_eq!(record.delivered_revision(), 0, "nothing delivered yet");
    record.mark_delivered(1);
    assert_eq!(record.delivered_revision(), 1);
    record.mark_delivered(2);
    assert_eq!(record.delivered_revision(), 2);
    record.mark_delivered(3);
    assert!(record.outbox.is_empty());
    assert_eq!(
        record.delivered_revision(),
        3,
        "all delivered: the last one"
    );
}

#[test]
fn a_merged_in_event_counts_once_and_never_on_an_erased_call() {
    let connection = connection();
    let mut record = three_revisions();
    let anna = event("y-ring", 10, EventKind::Ringing, &["202"]);
    assert!(record.add_merged_in(&anna), "a new merged-in event is new");
    assert!(!record.add_merged_in(&anna), "its repeat is not");
    assert!(record.refresh(&connection));
    let users = &record.resource.as_ref().unwrap().fields.users;
    assert_eq!(
        users.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        ["usr_piet", "usr_anna"]
    );

    let mut erased = three_revisions();
    assert!(erased.erase(at(100)));
    assert!(!erased.add_merged_in(&anna), "an erased call takes nothing");
    assert!(erased.merged_in.is_empty());
}

#[test]
fn the_first_contact_answer_stays_and_an_erased_call_keeps_none() {
    let mut record = record();
    assert!(record.add_contact_lookup("+31612345678", Some("contact_1")));
    assert!(!record.add_contact_lookup("+31612345678", Some("contact_2")));
    assert!(record.add_contact_lookup("+31201234567", None));
    assert_eq!(
        record.contact_lookups.get("+31612345678"),
        Some(&Some("contact_1".to_string()))
    );
    assert_eq!(record.contact_lookups.get("+31201234567"), Some(&None));

    let mut erased = three_revisions();
    erased.erase(at(100));
    assert!(!erased.add_contact_lookup("+31612345678", Some("contact_1")));
    assert!(erased.contact_lookups.is_empty());
}

#[test]
fn refresh_emits_only_a_change_and_nothing_once_merged_or_deleted() {
    let connection = connection();
    let mut record = three_revisions();
    assert!(!record.refresh(&connection), "nothing new: nothing emitted");
    // A hold changes no field.
    assert!(record.add_event(&event("hold", 20, EventKind::Held, &["201"])));
    assert!(!record.refresh(&connection));
    assert_eq!(record.revision, 3);

    // A transfer links it to the customer's call, which the CRM shows from then on: this one
    // is closed once, then emits nothing.
    let mut merged = three_revisions();
    assert!(merged.merge_into(&CallKey::new("acme", Provider::Voys, "customer")));
    let mut customer = event("customer-ring", -10, EventKind::Ringing, &["201"]);
    customer.call_key = "customer".into();
    customer.external_number = Some("+31612345678".into());
    assert!(merged.add_merged_in(&customer));
    assert!(
        merged.refresh(&connection),
        "the call the customer's replaces is closed"
    );
    assert_eq!(
        merged.outbox.last().map(|d| d.event),
        Some(MorphEventType::Deleted)
    );
    let revision = merged.revision;
    merged.add_event(&event("late", 30, EventKind::Ringing, &["202"]));
    assert!(!merged.refresh(&connection), "a merged call emits nothing");
    assert_eq!(merged.revision, revision);

    let mut deleted = three_revisions();
    assert!(deleted.delete());
    let revision = deleted.revision;
    deleted.add_event(&event("late", 30, EventKind::Ringing, &["202"]));
    assert!(
        !deleted.refresh(&connection),
        "a deleted call emits nothing"
    );
    assert_eq!(deleted.revision, revision);
}

#[test]
fn talk_time_alone_says_answered() {
    let connection = connection();
    let status = |events: &[CallEvent]| {
        let state = fold(events).unwrap();
        let call = to_resource(&state, &connection, &Default::default());
        (
            state.is_answered(),
            serde_json::to_value(call.fields.status).unwrap(),
        )
    };
    let ring = event("ring", 0, EventKind::Ringing, &[]);
    let talked = event("end", 40, ended(None, Some(12)), &[]);
    assert_eq!(
        status(&[ring.clone(), talked]),
        (true, "completed".into()),
        "TeleCMI's answeredsec > 0 with no answer event"
    );
    let silent = event("end", 40, ended(None, Some(0)), &[]);
    assert_eq!(status(&[ring.clone(), silent]), (false, "missed".into()));
    let said = event("end", 40, ended(Some(true), None), &[]);
    assert_eq!(status(&[ring, said]), (true, "completed".into()));
}

#[test]
fn a_call_is_stored_under_connection_provider_and_call() {
    assert_eq!(
        CallKey::new(
            "acme-voys",
            Provider::Voys,
            "ua9-grq-prd-1693575683.22973164"
        )
        .to_path(),
        "acme-voys/voys/ua9-grq-prd-1693575683.22973164"
    );
}
