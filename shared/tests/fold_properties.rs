//! Property tests of the call fold: any permutation and duplication of a call's events gives
//! one state, and one final resource, whatever order the record received them in; and the same
//! for several calls at once, with merges (Voys transfers), erasures and many events at the
//! same instant (where the fold's tie-break decides), through the worker.
//!
//! A failing case is printed shrunk, and proptest keeps its seed in
//! `fold_properties.proptest-regressions` (committed), so every later run tries it first.

mod common;

use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::{
    CallEvent, Direction, Ending, EventKind, Provider, Recording,
};
use callbridge_shared::domain::fold::fold;
use callbridge_shared::domain::record::{CallKey, CallRecord};
use callbridge_shared::domain::resource::MorphEventType;
use callbridge_shared::domain::time::Timestamp;
use callbridge_shared::ports::QueuedWebhook;
use common::Delivered;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        Just(EventKind::Ringing),
        Just(EventKind::Answered),
        Just(EventKind::Held),
        Just(EventKind::Progress),
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of(0u64..4000),
            any::<bool>()
        )
            .prop_map(
                |(answered, talk_seconds, voicemail)| EventKind::Ended(Ending {
                    answered,
                    talk_seconds,
                    voicemail
                })
            ),
        "[a-z]{1,8}".prop_map(|s| EventKind::Summary {
            summary: json!({ "text": s })
        }),
    ]
}

fn number() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        Just("200".to_string()),
        Just("210".to_string()),
        Just("+3228992675".to_string())
    ])
}

fn event() -> impl Strategy<Value = CallEvent> {
    (
        0i64..600_000_000,
        kind(),
        proptest::option::of(prop_oneof![
            Just(Direction::Inbound),
            Just(Direction::Outbound)
        ]),
        number(),
        number(),
        proptest::collection::vec(
            prop_oneof![
                Just("200".to_string()),
                Just("210".to_string()),
                Just("999".to_string())
            ],
            0..3,
        ),
        proptest::option::of("[a-z]{1,6}".prop_map(Recording::File)),
    )
        .prop_map(
            |(offset, kind, direction, internal, external, participants, recording)| {
                let at = Timestamp::from_micros(1_765_000_000_000_000 + offset).unwrap();
                let mut event = CallEvent::new(Provider::Telsmart, "call-1", at, kind);
                event.direction = direction;
                event.internal_number = internal;
                event.external_number = external;
                event.participants = participants;
                event.recording = recording;
                // The id stands for the provider payload: derive it from the content.
                event.id = format!("{:x}", md5ish(&serde_json::to_string(&event).unwrap()));
                event
            },
        )
}

/// A content hash, so that equal events have equal ids as real payloads do.
fn md5ish(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// The events, shuffled and with some repeated, as an unreliable provider would send them.
fn scrambled() -> impl Strategy<Value = (Vec<CallEvent>, Vec<CallEvent>)> {
    proptest::collection::vec(event(), 1..12).prop_flat_map(|events| {
        let n = events.len();
        (
            Just(events.clone()),
            proptest::collection::vec(0..n, n..n * 3),
        )
            .prop_flat_map(|(events, extra)| {
                let mut sent: Vec<CallEvent> = events.clone();
                sent.extend(extra.iter().map(|&i| events[i].clone()));
                (Just(events), Just(sent).prop_shuffle())
            })
    })
}

fn connection() -> Connection {
    connection_named("demo-telsmart")
}

fn connection_named(id: &str) -> Connection {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../infra/callbridge.example.toml"
    );
    Config::load(std::path::Path::new(path))
        .unwrap()
        .connections()
        .unwrap()
        .into_iter()
        .find(|c| c.id == id)
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_order_and_repetition_gives_one_state((events, sent) in scrambled()) {
        prop_assert_eq!(fold(&events), fold(&sent));
    }

    #[test]
    fn a_record_fed_in_any_order_ends_with_one_resource((events, sent) in scrambled()) {
        let connection = connection();
        let key = CallKey::new("demo-telsmart", Provider::Telsmart, "call-1");
        let feed = |events: &[CallEvent]| {
            let mut record = CallRecord::new(key.clone());
            for event in events {
                record.add_event(event);
                record.refresh(&connection);
            }
            record
        };
        let in_order = feed(&events);
        let scrambled = feed(&sent);
        prop_assert_eq!(
            in_order.resource.as_ref().map(|r| (&r.fields, &r.raw_resource)),
            scrambled.resource.as_ref().map(|r| (&r.fields, &r.raw_resource))
        );
        // Exactly one created, first; no revision that repeats its predecessor.
        let events: Vec<_> = scrambled.outbox.iter().map(|d| d.event).collect();
        if !events.is_empty() {
            prop_assert_eq!(events[0], MorphEventType::Created);
            prop_assert_eq!(events.iter().filter(|e| **e == MorphEventType::Created).count(), 1);
        }
        for pair in scrambled.outbox.windows(2) {
            let content = |d: &callbridge_shared::domain::record::Delivery| {
                (d.body["data"]["fields"].clone(), d.body["data"]["rawResource"].clone())
            };
            prop_assert_ne!(content(&pair[0]), content(&pair[1]));
        }
    }

    #[test]
    fn duration_and_status_follow_the_rules(events in proptest::collection::vec(event(), 1..12)) {
        if let Some(state) = fold(&events) {
            let resource = callbridge_shared::domain::resource::to_resource(&state, &connection(), &Default::default());
            let fields = serde_json::to_value(&resource.fields).unwrap();
            match state.ended_at {
                None => {
                    prop_assert_eq!(&fields["status"], "inProgress");
                    prop_assert!(fields.get("duration").is_none());
                }
                Some(_) => {
                    prop_assert!(fields["duration"].as_u64().is_some());
                    if !state.is_answered() {
                        prop_assert_eq!(fields["duration"].as_u64(), Some(state.talk_seconds.unwrap_or(0)));
                    }
                }
            }
            prop_assert!(fields.as_object().unwrap().values().all(|v| !v.is_null()));
        }
    }
}

/// The calls of a generated world: call 0 may absorb the others by transfers.
const CALLS: [&str; 3] = ["call-0", "call-1", "call-2"];

/// An instant: mostly one of a few whole seconds, so that events of a call often share one
/// (and the fold's tie-break on the event id decides), sometimes anywhere in ten minutes.
fn instant() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        3 => (0i64..6).prop_map(|s| s * 1_000_000),
        1 => 0i64..600_000_000,
    ]
    .prop_map(|offset| Timestamp::from_micros(1_765_000_000_000_000 + offset).unwrap())
}

/// One provider event of one of the calls (no merge, no erasure: those come below).
fn call_event() -> impl Strategy<Value = CallEvent> {
    (
        0..CALLS.len(),
        instant(),
        prop_oneof![
            Just(EventKind::Ringing),
            Just(EventKind::Answered),
            Just(EventKind::Progress),
            proptest::option::of(any::<bool>()).prop_map(|answered| EventKind::Ended(Ending {
                answered,
                ..Ending::default()
            })),
        ],
        proptest::option::of(prop_oneof![
            Just(Direction::Inbound),
            Just(Direction::Outbound)
        ]),
        proptest::collection::vec(
            prop_oneof![
                Just("201".to_string()),
                Just("anna@example.com".to_string()),
                Just("203".to_string()),
                Just("999".to_string())
            ],
            0..3,
        ),
    )
        .prop_map(|(call, at, kind, direction, participants)| {
            let mut event = CallEvent::new(Provider::Voys, CALLS[call], at, kind);
            event.direction = direction;
            // Every Voys notification names both parties, and the other party is the call's:
            // the customer on call 0, a colleague on the consultations a transfer takes in
            // (docs/fold.md says why a transfer between two outside calls is left out).
            event.external_number = Some(if call == 0 { "+31612345678" } else { "202" }.into());
            event.participants = participants;
            with_content_id(event)
        })
}

/// The id stands for the provider payload: derived from the content, so equal events have
/// equal ids as real payloads do.
fn with_content_id(mut event: CallEvent) -> CallEvent {
    event.id = format!("{:x}", md5ish(&serde_json::to_string(&event).unwrap()));
    event
}

/// Several calls' events: call 0 absorbs calls 1 and 2 by transfers, or not; a call no
/// transfer touches may be erased. Returns the events once each, and as sent: shuffled, some
/// repeated.
fn world() -> impl Strategy<Value = (Vec<CallEvent>, Vec<CallEvent>)> {
    (
        proptest::collection::vec(call_event(), 1..14),
        proptest::collection::vec((any::<bool>(), instant()), 2),
        proptest::option::of((0..CALLS.len(), instant())),
        instant(),
    )
        .prop_map(|(mut events, merges, erasure, customer_rang)| {
            // The call a transfer keeps has a notification of its own (the customer's call
            // rang before anyone was transferred).
            let mut ringing =
                CallEvent::new(Provider::Voys, CALLS[0], customer_rang, EventKind::Ringing);
            ringing.external_number = Some("+31612345678".into());
            events.push(with_content_id(ringing));
            let mut merged = Vec::new();
            for (call, (merges, at)) in CALLS[1..].iter().zip(merges) {
                if merges {
                    merged.push(*call);
                    let kind = EventKind::Merged {
                        merged_call_key: call.to_string(),
                    };
                    let transfer = CallEvent::new(Provider::Voys, CALLS[0], at, kind);
                    events.push(with_content_id(transfer));
                }
            }
            // Erasing a call a transfer joins to another is left out: whether the survivor
            // keeps the erased call's participants depends on which came first.
            if let Some((call, at)) = erasure
                && !(merged.contains(&CALLS[call]) || (call == 0 && !merged.is_empty()))
            {
                let mut erase = CallEvent::new(Provider::Voys, CALLS[call], at, EventKind::Erased);
                erase.id = format!("erase-{}", CALLS[call]);
                events.push(erase);
            }
            events
        })
        .prop_flat_map(|events| {
            let n = events.len();
            (Just(events), proptest::collection::vec(0..n, 0..n * 2)).prop_flat_map(
                |(events, extra)| {
                    let mut sent = events.clone();
                    sent.extend(extra.iter().map(|&i| events[i].clone()));
                    (Just(events), Just(sent).prop_shuffle())
                },
            )
        })
}

fn voys_connection() -> Connection {
    connection_named("demo-voys")
}

/// What the CRM shows of each call in the end: its last fields and `rawResource`, or
/// `None` when it was deleted or never shown.
type Shown = BTreeMap<String, Option<(Value, Value)>>;

/// Runs the events through the worker in the order given, with an always-up CRM; the Morph
/// events each resource got.
fn deliver(events: &[CallEvent]) -> Delivered {
    let connection = voys_connection();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = callbridge_shared::adapters::memory::MemoryStore::default();
        let mut delivered = Delivered::new();
        for event in events {
            let queued = QueuedWebhook {
                connection_id: connection.id.clone(),
                received_at: Timestamp::from_micros(1_800_000_000_000_000).unwrap(),
                event: event.clone(),
                raw: Value::Null,
            };
            common::apply_and_deliver(&store, &connection, &queued, &mut delivered).await;
        }
        delivered
    })
}

fn shown(delivered: &Delivered) -> Shown {
    CALLS
        .iter()
        .map(|call| {
            let id = CallKey::new("demo-voys", Provider::Voys, call).resource_id();
            let last = delivered.get(&id).and_then(|events| events.last());
            let view = last
                .filter(|e| e["event"] != "telephonyCall::deleted")
                .map(|e| {
                    (
                        e["data"]["fields"].clone(),
                        e["data"]["rawResource"].clone(),
                    )
                });
            (call.to_string(), view)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Several calls, transfers and erasures, sent shuffled and repeated: the CRM ends with
    /// what it shows when each event comes once in generated order; per call one `created`,
    /// first, nothing after a `deleted`, no `updated` that changes nothing; an erased call is
    /// not shown, and of the calls a transfer joins at most one is.
    #[test]
    fn several_calls_with_transfers_and_erasures_end_the_same((events, sent) in world()) {
        let once = deliver(&events);
        let scrambled = deliver(&sent);
        prop_assert_eq!(shown(&once), shown(&scrambled));
        let last = shown(&scrambled);
        for call in CALLS {
            let erased = events.iter().any(|e| e.kind == EventKind::Erased && e.call_key == call);
            if erased {
                prop_assert_eq!(&last[call], &None, "{} is erased", call);
            }
        }
        // The calls a transfer joins show as one: whichever id the provider kept, at most one
        // of them is still shown.
        let joined: Vec<&str> = CALLS
            .iter()
            .copied()
            .filter(|call| {
                *call == CALLS[0]
                    || events.iter().any(|e| {
                        matches!(&e.kind, EventKind::Merged { merged_call_key } if merged_call_key == call)
                    })
            })
            .collect();
        if joined.len() > 1 {
            let still_shown = joined.iter().filter(|call| last[**call].is_some()).count();
            prop_assert!(still_shown <= 1, "{:?} all shown: {:?}", joined, last);
        }
        for bodies in scrambled.values() {
            let names: Vec<&str> = bodies.iter().map(|b| b["event"].as_str().unwrap()).collect();
            prop_assert_eq!(names[0], "telephonyCall::created", "{:?}", names);
            prop_assert_eq!(names.iter().filter(|n| **n == "telephonyCall::created").count(), 1);
            if let Some(deleted) = names.iter().position(|n| *n == "telephonyCall::deleted") {
                prop_assert_eq!(deleted, names.len() - 1, "{:?}", names);
            }
            // A deletion repeats the resource it deletes; any other revision changes it.
            for pair in bodies.windows(2).filter(|p| p[1]["event"] != "telephonyCall::deleted") {
                let content = |b: &Value| (b["data"]["fields"].clone(), b["data"]["rawResource"].clone());
                prop_assert_ne!(content(&pair[0]), content(&pair[1]));
            }
        }
    }
}
