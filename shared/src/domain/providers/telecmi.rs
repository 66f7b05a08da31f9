//! TeleCMI live events (`type` = `event`) and call detail records (`type` = `cdr`), sent as a
//! JSON body or as query parameters (every value a string): see `docs/providers/telecmi.md`.

use super::{Fields, ParseError, Webhook, recording};
use crate::domain::event::{CallEvent, Direction, Ending, EventKind, Provider, Recording};
use crate::domain::time::Timestamp;

const EVENT_STATUSES: &[&str] = &["waiting", "started", "answered", "hangup"];
const CDR_STATUSES: &[&str] = &["answered", "missed"];

pub fn parse(payload: &Fields<'_>) -> Result<Webhook, ParseError> {
    // Both legs carry the conversation's id, so they fold into one call; a call with a single
    // leg may only name that leg.
    let call_key = match payload.text("conversation_uuid")? {
        Some(key) => key,
        None => payload
            .text("cmiuuid")?
            .ok_or_else(|| ParseError::field("conversation_uuid", "is required (or `cmiuuid`)"))?,
    };
    let time = payload.required_timestamp("time")?;
    let is_cdr = match payload.one_of("type", &["event", "cdr"])? {
        Some(kind) => kind == "cdr",
        None => return Err(ParseError::field("type", "is required")),
    };
    let status = payload.required_text("status")?.to_ascii_lowercase();
    let talk_seconds = seconds(payload, "answeredsec")?;
    // Leg b is a leg TeleCMI places from the conversation (to an agent, or to the number an
    // agent dials): its `direction` and numbers are that leg's, and its hangup ends one attempt
    // (the caller may still wait for the next agent), so it only tells who of ours took part
    // and when they answered.
    let leg_b = payload.one_of("leg", &["a", "b"])? == Some("b");
    let voicename = recording::file_name("voicename", payload.text("voicename")?)?;

    let (kind, at) = if is_cdr {
        match status.as_str() {
            // A CDR's `time` is when the call was answered, or when a missed call came in; it
            // stands for the end of the call once the talk or the wait is added.
            "answered" => (
                EventKind::Ended(Ending {
                    answered: Some(true),
                    talk_seconds,
                    voicemail: false,
                }),
                after(time, talk_seconds, "answeredsec")?,
            ),
            "missed" => (
                EventKind::Ended(Ending {
                    answered: Some(false),
                    talk_seconds,
                    voicemail: payload.flag("voicemail")? == Some(true) && voicename.is_some(),
                }),
                after(time, seconds(payload, "waitedsec")?, "waitedsec")?,
            ),
            _ => return Err(unknown_status(&status, "cdr", CDR_STATUSES)),
        }
    } else {
        let kind = match status.as_str() {
            "waiting" | "started" => EventKind::Ringing,
            "answered" => EventKind::Answered,
            "hangup" if leg_b => EventKind::Progress,
            "hangup" => EventKind::Ended(Ending {
                talk_seconds,
                ..Ending::default()
            }),
            _ => return Err(unknown_status(&status, "event", EVENT_STATUSES)),
        };
        (kind, time)
    };

    let direction = if leg_b {
        None
    } else {
        match payload.one_of("direction", &["inbound", "outbound"])? {
            Some("inbound") => Some(Direction::Inbound),
            Some(_) => Some(Direction::Outbound),
            None => None,
        }
    };
    let extension = payload
        .text("user")?
        .map(|user| match user.rsplit_once('_') {
            // `<extension>_<appid>`
            Some((extension, _)) => extension.to_string(),
            None => user,
        });

    let mut call = CallEvent::new(Provider::Telecmi, call_key, at, kind);
    call.direction = direction;
    call.internal_number.clone_from(&extension);
    call.external_number = match direction {
        Some(Direction::Inbound) => payload.text("from")?,
        Some(Direction::Outbound) => payload.text("to")?,
        None => None,
    };
    // Our user took part when they placed the call or the leg was answered; a leg that only
    // rang them counts for a call nobody answered.
    let took_part = direction == Some(Direction::Outbound)
        || status == "answered"
        || talk_seconds.is_some_and(|s| s > 0);
    if took_part {
        call.participants.extend(extension);
    } else {
        call.rang.extend(extension);
    }
    // A voicemail is the message of a missed call; `filename` is the talk's recording.
    call.recording = match voicename {
        Some(voicemail) => Some(Recording::File(voicemail)),
        None => recording::file_name("filename", payload.text("filename")?)?.map(Recording::File),
    };
    let account = match payload.text("app_id")? {
        Some(app) => Some(app),
        None => payload.text("appid")?,
    };
    Ok(Webhook {
        event: call,
        account,
    })
}

fn unknown_status(status: &str, kind: &str, allowed: &[&str]) -> ParseError {
    ParseError::field(
        "status",
        format!(
            "is `{status}`, expected for a `{kind}`: {}",
            allowed.join(", ")
        ),
    )
}

/// A count of seconds, never negative.
fn seconds(payload: &Fields<'_>, name: &str) -> Result<Option<u64>, ParseError> {
    payload
        .integer(name)?
        .map(|n| u64::try_from(n).map_err(|_| ParseError::field(name, "must not be negative")))
        .transpose()
}

fn after(time: Timestamp, seconds: Option<u64>, name: &str) -> Result<Timestamp, ParseError> {
    let Some(seconds) = seconds else {
        return Ok(time);
    };
    i64::try_from(seconds)
        .ok()
        .and_then(|s| s.checked_mul(1_000_000))
        .and_then(|micros| time.as_micros().checked_add(micros))
        .ok_or_else(|| "is out of range".to_string())
        .and_then(Timestamp::from_micros)
        .map_err(|reason| ParseError::field(name, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse_json(payload: Value) -> Result<Webhook, ParseError> {
        parse(&Fields::root(&payload).unwrap())
    }

    /// TeleCMI's own example of an outgoing answered live event.
    fn outgoing_answered() -> Value {
        json!({
            "call_id": "e51d5392-d9cf-123b-fe91-3cecefb9bfb6",
            "leg": "a",
            "type": "event",
            "user": "202_2222223",
            "cmiuuid": "ccd826f9-67a4-4467-acfb-a53093ff5c9d",
            "direction": "outbound",
            "callerid": "442000000000",
            "app_id": 2223343,
            "time": 1650635340436_i64,
            "custom": "{\"crm\":\"true\"}",
            "extra_params": "{\"click2call\":\"true\"}",
            "request_id": "bvS68LlqtFunYMQO0db6g9klSdfS0UHHDoK9S9Qvaed",
            "status": "answered",
            "to": "442000000001",
            "conversation_uuid": "ccd826f9-67a4-4467-acfb-a53093ff5c9d"
        })
    }

    #[test]
    fn reads_the_documented_example() {
        let webhook = parse_json(outgoing_answered()).unwrap();
        let event = webhook.event;
        assert_eq!(webhook.account.as_deref(), Some("2223343"));
        assert_eq!(event.call_key, "ccd826f9-67a4-4467-acfb-a53093ff5c9d");
        assert_eq!(event.kind, EventKind::Answered);
        assert_eq!(event.at.to_rfc3339_millis(), "2022-04-22T13:49:00.436Z");
        assert_eq!(event.direction, Some(Direction::Outbound));
        assert_eq!(event.internal_number.as_deref(), Some("202"));
        assert_eq!(event.external_number.as_deref(), Some("442000000001"));
        assert_eq!(event.participants, vec!["202".to_string()]);
    }

    #[test]
    fn an_agent_rung_on_an_inbound_leg_takes_part_once_answered() {
        let mut payload = outgoing_answered();
        payload["direction"] = json!("inbound");
        payload["status"] = json!("started");
        let ringing = parse_json(payload.clone()).unwrap().event;
        assert!(ringing.participants.is_empty());
        assert_eq!(ringing.rang, vec!["202".to_string()]);
        payload["status"] = json!("answered");
        let answered = parse_json(payload).unwrap().event;
        assert_eq!(answered.participants, vec!["202".to_string()]);
    }

    #[test]
    fn a_recording_file_name_must_be_plain() {
        for (field, hostile) in [
            ("filename", "../../other-tenant/secret.mp3?x=1#frag"),
            ("voicename", "@evil.example/x.mp3"),
        ] {
            let mut payload = outgoing_answered();
            payload["type"] = json!("cdr");
            payload[field] = json!(hostile);
            assert_eq!(
                parse_json(payload).unwrap_err().field.as_deref(),
                Some(field),
                "{hostile}"
            );
        }
    }

    #[test]
    fn query_strings_read_like_json() {
        let as_json = parse_json(outgoing_answered()).unwrap();
        let as_query = parse_json(json!({
            "call_id": "e51d5392-d9cf-123b-fe91-3cecefb9bfb6", "leg": "a", "type": "event",
            "user": "202_2222223", "cmiuuid": "ccd826f9-67a4-4467-acfb-a53093ff5c9d",
            "direction": "outbound", "callerid": "442000000000", "app_id": "2223343",
            "time": "1650635340436", "status": "answered", "to": "442000000001",
            "conversation_uuid": "ccd826f9-67a4-4467-acfb-a53093ff5c9d"
        }))
        .unwrap();
        assert_eq!(as_query, as_json);
    }

    #[test]
    fn leg_b_tells_only_who_took_part() {
        let mut payload = outgoing_answered();
        payload["leg"] = json!("b");
        payload["direction"] = json!("inbound");
        payload["from"] = json!(442000000000_i64);
        let event = parse_json(payload).unwrap().event;
        assert_eq!(event.direction, None);
        assert_eq!(event.external_number, None);
        assert_eq!(event.internal_number.as_deref(), Some("202"));
        assert_eq!(event.participants, vec!["202".to_string()]);
        assert_leg_b_kind("hangup", EventKind::Progress);
        assert_leg_b_kind("answered", EventKind::Answered);
    }

    fn assert_leg_b_kind(status: &str, kind: EventKind) {
        let mut payload = outgoing_answered();
        payload["leg"] = json!("b");
        payload["status"] = json!(status);
        assert_eq!(parse_json(payload).unwrap().event.kind, kind, "{status}");
    }

    #[test]
    fn the_conversation_is_the_call_else_the_leg() {
        let mut payload = outgoing_answered();
        payload.as_object_mut().unwrap().remove("conversation_uuid");
        assert_eq!(
            parse_json(payload.clone()).unwrap().event.call_key,
            "ccd826f9-67a4-4467-acfb-a53093ff5c9d"
        );
        payload.as_object_mut().unwrap().remove("cmiuuid");
        assert_eq!(
            parse_json(payload).unwrap_err().field.as_deref(),
            Some("conversation_uuid")
        );
    }

    #[test]
    fn an_answered_cdr_ends_after_the_talk() {
        let payload = json!({
            "type": "cdr", "direction": "inbound", "cmiuuid": "leg-1", "conversation_uuid": "conv-1",
            "user": "203_2223343", "status": "answered", "from": 440000000002_i64,
            "to": 440000000001_i64, "time": 1634720920615_i64, "answeredsec": "11",
            "record": true, "filename": "rec.mp3", "appid": 2223343, "ivr_name": "salesivr"
        });
        let webhook = parse_json(payload).unwrap();
        let event = webhook.event;
        assert_eq!(webhook.account.as_deref(), Some("2223343"));
        assert_eq!(
            event.kind,
            EventKind::Ended(Ending {
                answered: Some(true),
                talk_seconds: Some(11),
                voicemail: false
            })
        );
        assert_eq!(event.at.to_rfc3339_millis(), "2021-10-20T09:08:51.615Z");
        assert_eq!(event.external_number.as_deref(), Some("440000000002"));
        assert_eq!(event.recording, Some(Recording::File("rec.mp3".into())));
    }

    #[test]
    fn a_missed_cdr_with_a_message_is_a_voicemail() {
        let mut payload = json!({
            "type": "cdr", "direction": "inbound", "cmiuuid": "leg-1", "status": "missed",
            "from": "440000000001", "time": "1634721099442", "waitedsec": 127,
            "voicemail": "true", "voicename": "vm.mp3", "appid": "2223343"
        });
        let event = parse_json(payload.clone()).unwrap().event;
        assert_eq!(
            event.kind,
            EventKind::Ended(Ending {
                answered: Some(false),
                talk_seconds: None,
                voicemail: true
            })
        );
        assert_eq!(event.at.to_rfc3339_millis(), "2021-10-20T09:13:46.442Z");
        assert_eq!(event.recording, Some(Recording::File("vm.mp3".into())));
        // Voicemail enabled, but the caller left nothing.
        payload.as_object_mut().unwrap().remove("voicename");
        let EventKind::Ended(ending) = parse_json(payload).unwrap().event.kind else {
            panic!("a CDR ends the call");
        };
        assert!(!ending.voicemail);
    }

    #[test]
    fn live_statuses() {
        for (status, kind) in [
            ("waiting", EventKind::Ringing),
            ("Started", EventKind::Ringing),
            ("hangup", EventKind::Ended(Ending::default())),
        ] {
            let mut payload = outgoing_answered();
            payload["status"] = json!(status);
            assert_eq!(parse_json(payload).unwrap().event.kind, kind);
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut payload = outgoing_answered();
        payload["team"] = json!("Sales_2223343");
        payload["new_thing"] = json!({"nested": [1, 2]});
        assert!(parse_json(payload).is_ok());
    }

    #[test]
    fn what_we_rely_on_is_checked() {
        let cases = [
            ("status", json!("ringing")),
            ("status", json!(null)),
            ("type", json!("summary")),
            ("type", json!(null)),
            ("time", json!("soon")),
            ("time", json!(null)),
            ("leg", json!("c")),
            ("direction", json!("both")),
            ("answeredsec", json!("-3")),
            ("answeredsec", json!("twelve")),
        ];
        for (field, value) in cases {
            let mut payload = outgoing_answered();
            payload[field] = value;
            let err = parse_json(payload).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
        }
        let mut cdr = outgoing_answered();
        cdr["type"] = json!("cdr");
        cdr["status"] = json!("hangup");
        assert_eq!(
            parse_json(cdr).unwrap_err().field.as_deref(),
            Some("status")
        );
        let mut missed = outgoing_answered();
        missed["type"] = json!("cdr");
        missed["status"] = json!("missed");
        missed["voicemail"] = json!("maybe");
        assert_eq!(
            parse_json(missed).unwrap_err().field.as_deref(),
            Some("voicemail")
        );
    }
}
