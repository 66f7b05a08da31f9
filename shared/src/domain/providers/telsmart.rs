//! Telsmart call events (`docs/providers/telsmart.md`). Telsmart sends one stream per integrated
//! user: `user_extension` is that user, `direction` is from their side, and `id` names their leg,
//! which is the call key (an internal call between two integrated users is two calls).

use super::{Fields, ParseError, Webhook};
use crate::domain::event::{CallEvent, Direction, Ending, EventKind, Provider};
use serde_json::Value;

const STATES: &[&str] = &["RINGING", "ACTIVE", "HELD", "HANGUP", "SUMMARY_REPORTING"];

pub fn parse(payload: &Fields<'_>) -> Result<Webhook, ParseError> {
    let call_key = payload.required_text("id")?;
    let state = payload
        .one_of("state", STATES)?
        .ok_or_else(|| ParseError::field("state", "is required"))?;
    let at = payload.required_timestamp("timestamp")?;
    // Required although the connection may not check it: a payload without a tenant would slip
    // past the account check of a connection that does.
    let account = payload.required_text("tenant_id")?;

    let kind = match state {
        "RINGING" => EventKind::Ringing,
        // ACTIVE also comes on resuming from hold; the fold keeps the earliest answer.
        "ACTIVE" => EventKind::Answered,
        "HELD" => EventKind::Held,
        "HANGUP" => EventKind::Ended(Ending::default()),
        _ => {
            let summary = match payload.raw("summary") {
                Some(summary @ Value::Object(_)) => summary.clone(),
                Some(_) => return Err(ParseError::field("summary", "must be an object")),
                None => return Err(ParseError::field("summary", "is required")),
            };
            // Only the summary: the call's fields come from its call events, which a summary
            // must never change.
            return Ok(Webhook {
                event: CallEvent::new(
                    Provider::Telsmart,
                    call_key,
                    at,
                    EventKind::Summary { summary },
                ),
                account: Some(account),
            });
        }
    };
    let mut event = CallEvent::new(Provider::Telsmart, call_key, at, kind);

    let direction = match payload
        .one_of("direction", &["in", "out"])?
        .ok_or_else(|| ParseError::field("direction", "is required"))?
    {
        "in" => Direction::Inbound,
        _ => Direction::Outbound,
    };
    event.direction = Some(direction);
    // In an attended transfer the consulted user's leg is a call from the colleague, but the
    // party the call is about is the original caller that `transfer_caller_number` names.
    event.external_number = match payload.text("transfer_caller_number")? {
        Some(number) => Some(number),
        None => payload.text(match direction {
            Direction::Inbound => "caller_number",
            Direction::Outbound => "callee_number",
        })?,
    };
    let extension = payload.text("user_extension")?;
    // The leg is its user's: they took part once they answered (or placed the call); until
    // then it only rang them.
    let took_part = direction == Direction::Outbound
        || matches!(event.kind, EventKind::Answered | EventKind::Held);
    if took_part {
        event.participants.extend(extension.clone());
    } else {
        event.rang.extend(extension.clone());
    }
    // A leg that rang a member for a number that is not their own extension is the member's
    // share of a queue or group call (constructed: Telsmart documents queue members ringing,
    // not their payloads).
    let callee = payload.text("callee_number")?;
    event.queue_member = direction == Direction::Inbound && callee.is_some() && callee != extension;
    event.internal_number = extension;

    Ok(Webhook {
        event,
        account: Some(account),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::time::Timestamp;
    use serde_json::json;

    fn ringing() -> Value {
        json!({
            "tenant_id": "b11d749b-8eb7-4236-a068-3d94ba3860d6",
            "caller_number": "+3228992675",
            "direction": "in",
            "callee_name": "John Doe",
            "state": "RINGING",
            "caller_name": "+3228992675",
            "callee_number": "200",
            "user_extension": "200",
            "id": "590e9492-cbbc-4252-8205-7eb595099b5f",
            "timestamp": "1765209366386177"
        })
    }

    fn parse_value(payload: &Value) -> Result<Webhook, ParseError> {
        parse(&Fields::root(payload)?)
    }

    fn with(changes: Value) -> Value {
        let mut payload = ringing();
        for (name, value) in changes.as_object().unwrap() {
            payload[name] = value.clone();
        }
        payload
    }

    fn error_field(payload: &Value) -> Option<String> {
        parse_value(payload).unwrap_err().field
    }

    #[test]
    fn an_incoming_ringing_is_the_user_being_called_by_the_caller() {
        let webhook = parse_value(&ringing()).unwrap();
        let event = webhook.event;
        assert_eq!(
            webhook.account.as_deref(),
            Some("b11d749b-8eb7-4236-a068-3d94ba3860d6")
        );
        assert_eq!(event.call_key, "590e9492-cbbc-4252-8205-7eb595099b5f");
        assert_eq!(event.kind, EventKind::Ringing);
        assert_eq!(event.at.as_micros(), 1_765_209_366_386_177);
        assert_eq!(event.direction, Some(Direction::Inbound));
        assert_eq!(event.external_number.as_deref(), Some("+3228992675"));
        assert_eq!(event.internal_number.as_deref(), Some("200"));
        // Ringing is not taking part: John counts only if nobody answers.
        assert!(event.participants.is_empty());
        assert_eq!(event.rang, vec!["200".to_string()]);
        assert!(!event.queue_member);
    }

    #[test]
    fn the_leg_s_user_takes_part_once_answered_or_when_calling() {
        let active = parse_value(&with(json!({"state": "ACTIVE"})))
            .unwrap()
            .event;
        assert_eq!(active.participants, vec!["200".to_string()]);
        assert!(active.rang.is_empty());
        let calling = parse_value(&with(
            json!({"direction": "out", "callee_number": "+3228992675"}),
        ))
        .unwrap()
        .event;
        assert_eq!(calling.participants, vec!["200".to_string()]);
    }

    #[test]
    fn a_leg_that_rang_a_member_for_another_number_is_a_queue_member_s() {
        let queue = parse_value(&with(json!({"callee_number": "500"})))
            .unwrap()
            .event;
        assert!(queue.queue_member);
        let outgoing = with(json!({"direction": "out", "callee_number": "+3228992675"}));
        assert!(!parse_value(&outgoing).unwrap().event.queue_member);
    }

    #[test]
    fn states_map_to_kinds() {
        for (state, kind) in [
            ("ACTIVE", EventKind::Answered),
            ("HELD", EventKind::Held),
            ("HANGUP", EventKind::Ended(Ending::default())),
            ("hangup", EventKind::Ended(Ending::default())),
        ] {
            let event = parse_value(&with(json!({ "state": state }))).unwrap().event;
            assert_eq!(event.kind, kind, "{state}");
        }
    }

    #[test]
    fn an_outgoing_call_is_about_the_callee() {
        let payload = with(json!({
            "direction": "out",
            "caller_number": "200",
            "callee_number": "+3228992675",
        }));
        let event = parse_value(&payload).unwrap().event;
        assert_eq!(event.direction, Some(Direction::Outbound));
        assert_eq!(event.external_number.as_deref(), Some("+3228992675"));
    }

    #[test]
    fn the_transferred_caller_is_the_other_party() {
        let payload = with(json!({
            "caller_number": "200",
            "user_extension": "210",
            "transfer_caller_number": "+3228992675",
        }));
        let event = parse_value(&payload).unwrap().event;
        assert_eq!(event.external_number.as_deref(), Some("+3228992675"));
        assert_eq!(event.internal_number.as_deref(), Some("210"));
    }

    #[test]
    fn numbers_may_come_as_numbers() {
        let payload = with(json!({
            "timestamp": 1_765_209_366_386_177_i64,
            "caller_number": 3_228_992_675_i64,
            "user_extension": 200,
        }));
        let event = parse_value(&payload).unwrap().event;
        assert_eq!(event.at.as_micros(), 1_765_209_366_386_177);
        assert_eq!(event.external_number.as_deref(), Some("3228992675"));
        assert_eq!(event.rang, vec!["200".to_string()]);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let payload = with(json!({ "queue": {"name": "sales"}, "labels": [1, 2] }));
        assert_eq!(
            parse_value(&payload).unwrap().event,
            parse_value(&ringing()).unwrap().event
        );
    }

    #[test]
    fn a_summary_carries_only_its_summary() {
        let summary = json!({"language": "en-GB", "content": {"quick_summary": ["A test."]}});
        let payload = with(json!({
            "state": "SUMMARY_REPORTING",
            "timestamp": 1_765_209_708_105_127_i64,
            "caller_name": "",
            "direction": null,
            "summary": summary,
        }));
        let webhook = parse_value(&payload).unwrap();
        assert_eq!(
            webhook.account.as_deref(),
            Some("b11d749b-8eb7-4236-a068-3d94ba3860d6")
        );
        let at = Timestamp::from_micros(1_765_209_708_105_127).unwrap();
        let expected = CallEvent::new(
            Provider::Telsmart,
            "590e9492-cbbc-4252-8205-7eb595099b5f",
            at,
            EventKind::Summary { summary },
        );
        assert_eq!(webhook.event, expected);
    }

    #[test]
    fn a_summary_must_be_an_object() {
        for bad in [json!(null), json!("A test."), json!(["A test."])] {
            let payload = with(json!({"state": "SUMMARY_REPORTING", "summary": bad}));
            assert_eq!(error_field(&payload).as_deref(), Some("summary"), "{bad}");
        }
    }

    #[test]
    fn what_we_rely_on_is_checked_and_named() {
        for (field, bad) in [
            ("id", json!(null)),
            ("id", json!({"uuid": "x"})),
            ("state", json!("RINGINGG")),
            ("state", json!(null)),
            ("timestamp", json!("yesterday")),
            ("timestamp", json!(null)),
            ("timestamp", json!(42)),
            ("direction", json!("sideways")),
            ("direction", json!("")),
            ("tenant_id", json!(null)),
            ("caller_number", json!(["+3228992675"])),
        ] {
            let payload = with(json!({ field: bad }));
            assert_eq!(error_field(&payload).as_deref(), Some(field), "{bad}");
        }
    }
}
