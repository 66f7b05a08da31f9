//! TelTel call events. TelTel documents its attributes but not the JSON around them (the
//! examples are images), so the shape read here is ours, written down in
//! `docs/providers/teltel.md`: what we rely on is checked strictly, the rest is read where it
//! can be and ignored where it cannot.

use super::{Fields, ParseError, Webhook, recording};
use crate::domain::event::{CallEvent, Direction, Ending, EventKind, Provider, Recording};

const EVENTS: &[&str] = &[
    "START",
    "RING",
    "RINGRESULT",
    "READY",
    "JOIN",
    "LEAVE",
    "COMPLETED",
];

/// Asterisk's dial results, plus TelTel's own `ABORT`.
const RING_RESULTS: &[&str] = &[
    "ANSWER",
    "BUSY",
    "NOANSWER",
    "CANCEL",
    "ABORT",
    "CONGESTION",
    "CHANUNAVAIL",
    "DONTCALL",
    "TORTURE",
    "INVALIDARGS",
];

pub fn parse(payload: &Fields<'_>) -> Result<Webhook, ParseError> {
    let event = payload.required_text("event")?;
    let call_id = payload.required_text("call_id")?;
    let at = payload.required_timestamp("timestamp")?;
    let name = event.to_ascii_uppercase();
    let kind = match name.as_str() {
        "START" | "RING" => EventKind::Ringing,
        "RINGRESULT" => match payload.one_of("state", RING_RESULTS)? {
            Some("ANSWER") => EventKind::Answered,
            Some(_) => EventKind::Progress,
            None => return Err(ParseError::field("state", "is required on RINGRESULT")),
        },
        "READY" | "JOIN" | "LEAVE" => EventKind::Progress,
        "COMPLETED" => EventKind::Ended(Ending {
            answered: payload.flag("is_answered")?,
            ..Ending::default()
        }),
        _ => {
            return Err(ParseError::field(
                "event",
                format!("is `{event}`, expected one of: {}", EVENTS.join(", ")),
            ));
        }
    };
    let direction = match payload.one_of("direction", &["inbound", "outbound"])? {
        Some("inbound") => Some(Direction::Inbound),
        Some(_) => Some(Direction::Outbound),
        None => None,
    };

    let subjects = [
        subject(payload, "subject_type", "subject")?,
        subject(payload, "hanged_by", "hanged_value")?,
    ];
    let [source, destination] = parties(payload);
    // The other party is looked for first at the source of an inbound call and the destination
    // of an outbound one, our user the reverse; the other end serves when that one is not of the
    // right kind (a callback leg from the contact to the operator). Without a direction the
    // caller is taken as the other party.
    let (theirs_first, ours_first) = if direction == Some(Direction::Outbound) {
        ([&destination, &source], [&source, &destination])
    } else {
        ([&source, &destination], [&destination, &source])
    };
    let number_of = |side: Side, order: [&Option<Party>; 2]| {
        subjects
            .iter()
            .chain(order)
            .flatten()
            .find(|p| p.side == side && p.number.is_some())
            .and_then(|p| p.number.clone())
    };
    // A ring that failed names a phone that did not take the call: with parallel ringing it is
    // a colleague of the one who answered, not the call's number.
    let lost_ring = name == "RINGRESULT" && kind != EventKind::Answered;

    let mut call = CallEvent::new(Provider::Teltel, call_id, at, kind);
    call.direction = direction;
    call.internal_number = if lost_ring {
        None
    } else {
        number_of(Side::Ours, ours_first)
    };
    call.external_number = number_of(Side::Theirs, theirs_first);
    // Who took part: the user an event's subject joined or left as, who hung up, whoever
    // placed an outbound call, and the destination that answered or is talking. A device
    // that only rang (or got ready without joining) counts for a call nobody answered.
    let talking = matches!(name.as_str(), "JOIN" | "LEAVE")
        || call.kind == EventKind::Answered
        || (name == "COMPLETED" && payload.flag("is_answered")? == Some(true));
    let subject_user = payload.text("subject_user")?;
    let mut took_part = vec![payload.text("hanged_user")?];
    let mut rang = Vec::new();
    if matches!(name.as_str(), "JOIN" | "LEAVE") {
        took_part.push(subject_user);
    } else {
        rang.push(subject_user);
    }
    let source_user = source.as_ref().and_then(|p| p.user.clone());
    if direction == Some(Direction::Outbound) {
        took_part.push(source_user);
    } else {
        rang.push(source_user);
    }
    let destination_user = destination.as_ref().and_then(|p| p.user.clone());
    if talking {
        took_part.push(destination_user);
    } else {
        rang.push(destination_user);
    }
    for (keys, users) in [(&mut call.participants, took_part), (&mut call.rang, rang)] {
        for user in users.into_iter().flatten() {
            if !keys.contains(&user) {
                keys.push(user);
            }
        }
    }
    call.recording = recording::url("audio_url", payload.text("audio_url")?)?.map(Recording::Url);
    Ok(Webhook {
        event: call,
        account: payload.text("accountcode")?,
    })
}

/// Which side of the call a party is on: a SIP device is one of our users, a phone (`did` in
/// TelTel's `phase`) the other party. `local` (the PBX itself) is neither.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Theirs,
}

impl Side {
    fn of(party_type: &str) -> Option<Side> {
        match party_type.to_ascii_lowercase().as_str() {
            "sip" => Some(Side::Ours),
            "phone" | "did" => Some(Side::Theirs),
            _ => None,
        }
    }
}

struct Party {
    side: Side,
    number: Option<String>,
    /// The TelTel user id a SIP device is assigned to: the directory key.
    user: Option<String>,
}

/// The party an event is about (`subject_type`/`subject`) or who hung up
/// (`hanged_by`/`hanged_value`). These are documented attributes, so a wrong type is an error.
fn subject(
    payload: &Fields<'_>,
    type_field: &str,
    number_field: &str,
) -> Result<Option<Party>, ParseError> {
    let side = payload.text(type_field)?.as_deref().and_then(Side::of);
    let number = payload.text(number_field)?;
    Ok(side.map(|side| Party {
        side,
        number,
        user: None,
    }))
}

/// `participants.source` and `participants.destination`. TelTel names the attribute without
/// describing it, so any shape but ours is ignored rather than refused.
fn parties(payload: &Fields<'_>) -> [Option<Party>; 2] {
    let Ok(Some(participants)) = payload.object("participants") else {
        return [None, None];
    };
    // `phase` (`didtosip`, `siptodid`, `localtodid`, ...) gives the types of source and
    // destination, for parties that do not say their own.
    let phase = payload
        .text("phase")
        .ok()
        .flatten()
        .map(|p| p.to_ascii_lowercase());
    let (source_type, destination_type) = phase.as_deref().and_then(|p| p.split_once("to")).unzip();
    [
        party(&participants, "source", source_type),
        party(&participants, "destination", destination_type),
    ]
}

/// A party as an object `{type, number, user}`, or as a bare number typed by `phase`.
fn party(participants: &Fields<'_>, role: &str, phase_type: Option<&str>) -> Option<Party> {
    match participants.object(role) {
        Ok(Some(party)) => {
            let own_type = party.text("type").ok().flatten();
            Some(Party {
                side: Side::of(own_type.as_deref().or(phase_type)?)?,
                number: party.text("number").ok().flatten(),
                user: party.text("user").ok().flatten(),
            })
        }
        Ok(None) => None,
        Err(_) => Some(Party {
            side: Side::of(phase_type?)?,
            number: Some(participants.text(role).ok().flatten()?),
            user: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse_json(payload: Value) -> Result<Webhook, ParseError> {
        parse(&Fields::root(&payload).unwrap())
    }

    fn outgoing(event: &str) -> Value {
        json!({
            "id": "evt-1",
            "event": event,
            "timestamp": 1_764_583_200,
            "accountcode": "acme",
            "call_id": "c-1",
            "direction": "outbound",
            "phase": "siptodid",
            "participants": {
                "source": {"type": "sip", "number": "7001", "user": "101"},
                "destination": {"type": "did", "number": "37126123456"}
            }
        })
    }

    #[test]
    fn reads_an_outgoing_start() {
        let webhook = parse_json(outgoing("START")).unwrap();
        let event = webhook.event;
        assert_eq!(webhook.account.as_deref(), Some("acme"));
        assert_eq!(event.call_key, "c-1");
        assert_eq!(event.kind, EventKind::Ringing);
        assert_eq!(event.direction, Some(Direction::Outbound));
        assert_eq!(event.internal_number.as_deref(), Some("7001"));
        assert_eq!(event.external_number.as_deref(), Some("37126123456"));
        assert_eq!(event.participants, vec!["101".to_string()]);
        assert_eq!(event.at.to_rfc3339_millis(), "2025-12-01T10:00:00.000Z");
    }

    #[test]
    fn ring_results_answer_or_change_nothing() {
        let mut payload = outgoing("ringresult");
        payload["state"] = json!("ANSWER");
        assert_eq!(
            parse_json(payload.clone()).unwrap().event.kind,
            EventKind::Answered
        );
        payload["state"] = json!("cancel");
        let lost = parse_json(payload.clone()).unwrap().event;
        assert_eq!(lost.kind, EventKind::Progress);
        assert_eq!(lost.internal_number, None, "the phone that lost the race");
        assert_eq!(lost.participants, vec!["101".to_string()]);
        payload["state"] = json!("ANSWERED");
        assert_eq!(
            parse_json(payload.clone()).unwrap_err().field.as_deref(),
            Some("state")
        );
        payload.as_object_mut().unwrap().remove("state");
        assert_eq!(
            parse_json(payload).unwrap_err().field.as_deref(),
            Some("state")
        );
    }

    #[test]
    fn the_destination_takes_part_when_it_answers() {
        let payload = |state: &str| {
            json!({
                "event": "RINGRESULT", "timestamp": 1_764_583_200_123_i64, "call_id": "c-2",
                "direction": "inbound", "phase": "didtosip", "state": state,
                "participants": {"source": "37129876543", "destination": {"number": "7002", "user": "102"}}
            })
        };
        let answer = parse_json(payload("ANSWER")).unwrap().event;
        assert_eq!(answer.participants, vec!["102".to_string()]);
        assert!(answer.rang.is_empty());
        let lost = parse_json(payload("NOANSWER")).unwrap().event;
        assert!(lost.participants.is_empty());
        assert_eq!(lost.rang, vec!["102".to_string()]);
    }

    #[test]
    fn an_audio_url_that_is_not_an_https_link_is_refused_or_left_out() {
        let mut payload = outgoing("COMPLETED");
        payload["audio_url"] = json!("javascript:alert(document.cookie)");
        assert_eq!(
            parse_json(payload.clone()).unwrap_err().field.as_deref(),
            Some("audio_url")
        );
        payload["audio_url"] = json!("http://files.teltel.example/a.mp3");
        assert_eq!(parse_json(payload).unwrap().event.recording, None);
    }

    #[test]
    fn completed_tells_the_ending_and_the_recording() {
        let mut payload = outgoing("COMPLETED");
        payload["is_answered"] = json!("1");
        payload["audio_url"] = json!("https://rec.example/a.mp3");
        payload["hanged_by"] = json!("phone");
        payload["hanged_value"] = json!("37126123456");
        let event = parse_json(payload).unwrap().event;
        assert_eq!(
            event.kind,
            EventKind::Ended(Ending {
                answered: Some(true),
                ..Ending::default()
            })
        );
        assert_eq!(
            event.recording,
            Some(Recording::Url("https://rec.example/a.mp3".into()))
        );
    }

    #[test]
    fn subjects_name_the_party_of_the_event() {
        let payload = json!({
            "event": "JOIN", "timestamp": "2025-12-01T10:00:05.250+02:00", "call_id": 42,
            "direction": "inbound", "subject_type": "sip", "subject": 7002, "subject_user": 102
        });
        let event = parse_json(payload).unwrap().event;
        assert_eq!(event.call_key, "42");
        assert_eq!(event.kind, EventKind::Progress);
        assert_eq!(event.internal_number.as_deref(), Some("7002"));
        assert_eq!(event.external_number, None);
        assert_eq!(event.participants, vec!["102".to_string()]);
        assert_eq!(event.at.to_rfc3339_millis(), "2025-12-01T08:00:05.250Z");
    }

    #[test]
    fn inbound_parties_are_read_the_other_way_round() {
        let payload = json!({
            "event": "RING", "timestamp": 1_764_583_200_123_i64, "call_id": "c-2",
            "direction": "inbound", "phase": "didtosip",
            "participants": {"source": "37129876543", "destination": {"number": "7001", "user": "101"}}
        });
        let event = parse_json(payload).unwrap().event;
        assert_eq!(event.internal_number.as_deref(), Some("7001"));
        assert_eq!(event.external_number.as_deref(), Some("37129876543"));
        // Alice's phone rings: she takes part only if she answers.
        assert!(event.participants.is_empty());
        assert_eq!(event.rang, vec!["101".to_string()]);
    }

    #[test]
    fn a_callback_leg_from_the_contact_finds_both_ends() {
        let payload = json!({
            "event": "RING", "timestamp": "1764583200", "call_id": "c-3", "type": "callback",
            "leg": "operator", "direction": "outbound", "phase": "didtosip",
            "participants": {"source": "37126123456", "destination": {"number": "7001", "user": "101"}}
        });
        let event = parse_json(payload).unwrap().event;
        assert_eq!(event.internal_number.as_deref(), Some("7001"));
        assert_eq!(event.external_number.as_deref(), Some("37126123456"));
    }

    #[test]
    fn participants_we_do_not_understand_are_ignored() {
        for participants in [
            json!(["7001", "37126123456"]),
            json!("7001"),
            json!({"source": [1, 2], "destination": {"type": {"x": 1}}}),
            json!({"source": {"type": "local"}, "destination": {"type": "fax", "number": "1"}}),
        ] {
            let mut payload = outgoing("READY");
            payload["participants"] = participants;
            payload["phase"] = json!({"weird": true});
            let event = parse_json(payload).unwrap().event;
            assert_eq!(event.internal_number, None);
            assert_eq!(event.external_number, None);
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut payload = outgoing("LEAVE");
        payload["data"] = json!({"campaign": 7});
        payload["something_new"] = json!([1, {"a": null}]);
        assert!(parse_json(payload).is_ok());
    }

    #[test]
    fn what_we_rely_on_is_checked() {
        let cases = [
            ("event", json!("HANGUP")),
            ("event", json!(null)),
            ("call_id", json!("")),
            ("call_id", json!({"id": 1})),
            ("timestamp", json!("yesterday")),
            ("timestamp", json!(null)),
            ("direction", json!("sideways")),
            ("is_answered", json!("perhaps")),
        ];
        for (field, value) in cases {
            let mut payload = outgoing("COMPLETED");
            payload[field] = value;
            let err = parse_json(payload).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
        }
    }
}
