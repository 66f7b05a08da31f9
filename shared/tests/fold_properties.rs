//! Property tests of the call fold: any permutation and duplication of a call's events gives
//! one state, and one final resource, whatever order the record received them in.

use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::{
    CallEvent, Direction, Ending, EventKind, Provider, Recording,
};
use callbridge_shared::domain::fold::fold;
use callbridge_shared::domain::record::{CallKey, CallRecord};
use callbridge_shared::domain::resource::MorphEventType;
use callbridge_shared::domain::time::Timestamp;
use proptest::prelude::*;
use serde_json::json;

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
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../infra/callbridge.example.toml"
    );
    Config::load(std::path::Path::new(path))
        .unwrap()
        .connections()
        .unwrap()
        .into_iter()
        .find(|c| c.id == "demo-telsmart")
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
