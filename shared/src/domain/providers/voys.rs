//! Voys (VoIPGRID) call notifications v2 (`docs/providers/voys.md`). One call key per
//! `call_id`; a transfer names with `merged_id` the call that is folded into this one.

use super::{Fields, ParseError, Webhook};
use crate::domain::event::{CallEvent, Direction, Ending, EventKind, Provider};

/// Voys' page calls the transfers `warm-transfer` and `cold-transfer` in its lists of
/// notifications while the payload says `transfer`: every spelling means the same.
const STATUSES: &[&str] = &[
    "created",
    "ringing",
    "in-progress",
    "transfer",
    "warm-transfer",
    "cold-transfer",
    "ended",
];

/// The fields of a party (caller, target, redirector) that name our users in the directory.
const DIRECTORY_KEYS: [&str; 3] = ["account_number", "user_numbers", "user_emails"];

pub fn parse(payload: &Fields<'_>) -> Result<Webhook, ParseError> {
    // Another version may reshape the payload; reading it as v2 would be guessing.
    payload.one_of("version", &["v2"])?;
    let call_key = payload.required_text("call_id")?;
    let status = payload
        .one_of("status", STATUSES)?
        .ok_or_else(|| ParseError::field("status", "is required"))?;
    let at = payload.required_timestamp("timestamp")?;
    let direction = match payload
        .one_of("direction", &["inbound", "outbound"])?
        .ok_or_else(|| ParseError::field("direction", "is required"))?
    {
        "inbound" => Direction::Inbound,
        _ => Direction::Outbound,
    };

    let kind = match status {
        "created" | "ringing" => EventKind::Ringing,
        "in-progress" => EventKind::Answered,
        "ended" => EventKind::Ended(Ending {
            answered: answered_by_reason(payload.text("reason")?.as_deref()),
            ..Ending::default()
        }),
        _ => match payload.text("merged_id")? {
            Some(merged) if merged == call_key => {
                return Err(ParseError::field("merged_id", "names the call itself"));
            }
            Some(merged_call_key) => EventKind::Merged { merged_call_key },
            // A transfer that merges nothing still tells who takes part now.
            None => EventKind::Progress,
        },
    };
    let mut event = CallEvent::new(Provider::Voys, call_key, at, kind);
    event.direction = Some(direction);

    let caller = payload.object("caller")?;
    let destination = payload.object("destination")?;
    let number_of = |party: &Option<Fields<'_>>| match party {
        Some(party) => party.text("number"),
        None => Ok(None),
    };
    // Calls between colleagues are outbound, so an inbound caller is never one of our users.
    (event.internal_number, event.external_number) = match direction {
        Direction::Inbound => (number_of(&destination)?, number_of(&caller)?),
        Direction::Outbound => (number_of(&caller)?, number_of(&destination)?),
    };

    // The caller (our user on an outbound call; nobody of ours on an inbound one) and the
    // redirector of a transfer took part. The targets of an answer took it, and those of a
    // transfer were transferred in; the targets of a ringing were only rung.
    let targets_took_part = matches!(event.kind, EventKind::Answered | EventKind::Merged { .. })
        || status.ends_with("transfer");
    let mut targets = Vec::new();
    if let Some(destination) = &destination {
        targets.extend(destination.objects("targets")?);
    }
    targets.extend(payload.objects("targets")?);
    let mut took_part: Vec<Fields<'_>> = caller.into_iter().collect();
    took_part.extend(payload.object("redirector")?);
    let rang = if targets_took_part {
        took_part.extend(targets);
        Vec::new()
    } else {
        targets
    };
    for (keys, parties) in [
        (&mut event.participants, took_part),
        (&mut event.rang, rang),
    ] {
        for party in &parties {
            for field in DIRECTORY_KEYS {
                for key in party.texts(field)? {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
        }
    }

    Ok(Webhook {
        event,
        account: None,
    })
}

/// Voys' word on whether the call was answered; a reason it does not document says nothing.
fn answered_by_reason(reason: Option<&str>) -> Option<bool> {
    match reason?.to_ascii_lowercase().as_str() {
        "completed" => Some(true),
        "busy" | "no-answer" | "failed" | "cancelled" | "abandon" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const CALL: &str = "ua9-grq-prd-1693575683.22973164";

    fn piet() -> Value {
        json!({
            "number": "+31508009000",
            "name": null,
            "account_number": ["201"],
            "user_numbers": ["201"],
            "user_emails": ["piet@example.com"]
        })
    }

    fn ringing() -> Value {
        json!({
            "call_id": CALL,
            "timestamp": "2023-09-01T13:41:26.104532+00:00",
            "status": "ringing",
            "version": "v2",
            "direction": "inbound",
            "caller": {"number": "+31612345678", "name": ""},
            "destination": {"number": "+31508009000", "targets": [piet()]}
        })
    }

    fn parse_value(payload: &Value) -> Result<Webhook, ParseError> {
        parse(&Fields::root(payload)?)
    }

    fn event(payload: &Value) -> CallEvent {
        parse_value(payload).unwrap().event
    }

    fn with(changes: Value) -> Value {
        let mut payload = ringing();
        for (name, value) in changes.as_object().unwrap() {
            payload[name] = value.clone();
        }
        payload
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn an_inbound_call_is_from_the_caller_to_the_number_dialled() {
        let webhook = parse_value(&ringing()).unwrap();
        assert_eq!(webhook.account, None);
        let event = webhook.event;
        assert_eq!(event.call_key, CALL);
        assert_eq!(event.kind, EventKind::Ringing);
        assert_eq!(event.at.as_micros(), 1_693_575_686_104_532);
        assert_eq!(event.direction, Some(Direction::Inbound));
        assert_eq!(event.external_number.as_deref(), Some("+31612345678"));
        assert_eq!(event.internal_number.as_deref(), Some("+31508009000"));
        // Piet's phone rings: he takes part only if he answers.
        assert!(event.participants.is_empty());
        assert_eq!(event.rang, keys(&["201", "piet@example.com"]));
        let answered = parse_value(&with(json!({"status": "in-progress"})))
            .unwrap()
            .event;
        assert_eq!(answered.participants, keys(&["201", "piet@example.com"]));
        assert!(answered.rang.is_empty());
    }

    #[test]
    fn an_outbound_call_is_from_our_caller() {
        let payload = with(json!({
            "status": "in-progress",
            "direction": "outbound",
            "caller": {
                "number": "202",
                "name": "Anna Bakker",
                "account_number": "202",
                "user_numbers": ["202"],
                "user_emails": ["anna@example.com"]
            },
            "destination": {"number": "+31201234567"}
        }));
        let event = event(&payload);
        assert_eq!(event.kind, EventKind::Answered);
        assert_eq!(event.direction, Some(Direction::Outbound));
        assert_eq!(event.internal_number.as_deref(), Some("202"));
        assert_eq!(event.external_number.as_deref(), Some("+31201234567"));
        assert_eq!(event.participants, keys(&["202", "anna@example.com"]));
    }

    #[test]
    fn targets_may_stand_at_the_top_level_and_redirectors_take_part() {
        let payload = with(json!({
            "status": "transfer",
            "merged_id": "ua9-grq-prd-1693575690.22973170",
            "destination": {"number": "+31508009000"},
            "targets": {"number": "203", "account_number": "203", "user_emails": []},
            "redirector": {"number": "201", "user_emails": ["piet@example.com"]}
        }));
        let event = event(&payload);
        assert_eq!(
            event.kind,
            EventKind::Merged {
                merged_call_key: "ua9-grq-prd-1693575690.22973170".into()
            }
        );
        assert_eq!(event.participants, keys(&["piet@example.com", "203"]));
    }

    #[test]
    fn statuses_map_to_kinds() {
        for (status, kind) in [
            ("created", EventKind::Ringing),
            ("in-progress", EventKind::Answered),
            ("IN-PROGRESS", EventKind::Answered),
            ("transfer", EventKind::Progress),
            ("cold-transfer", EventKind::Progress),
            ("ended", EventKind::Ended(Ending::default())),
        ] {
            assert_eq!(event(&with(json!({ "status": status }))).kind, kind);
        }
        assert_eq!(
            event(&with(
                json!({"status": "warm-transfer", "merged_id": "other"})
            ))
            .kind,
            EventKind::Merged {
                merged_call_key: "other".into()
            }
        );
    }

    #[test]
    fn the_reason_of_an_end_says_whether_it_was_answered() {
        for (reason, answered) in [
            (json!("completed"), Some(true)),
            (json!("busy"), Some(false)),
            (json!("no-answer"), Some(false)),
            (json!("abandon"), Some(false)),
            (json!("transferred-to-mars"), None),
            (json!(null), None),
        ] {
            let payload = with(json!({"status": "ended", "reason": reason}));
            let EventKind::Ended(ending) = event(&payload).kind else {
                panic!("not an end");
            };
            assert_eq!(ending.answered, answered, "{reason}");
        }
    }

    #[test]
    fn numbers_may_come_as_numbers() {
        let payload = with(json!({
            "caller": {"number": 31_612_345_678_i64},
            "destination": {"targets": [{"account_number": 201, "user_numbers": [201]}]}
        }));
        let event = event(&payload);
        assert_eq!(event.external_number.as_deref(), Some("31612345678"));
        assert_eq!(event.rang, keys(&["201"]));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let payload = with(json!({
            "queue": {"name": "sales"},
            "caller": {"number": "+31612345678", "name": "", "avatar": [1, 2]}
        }));
        assert_eq!(event(&payload), event(&ringing()));
    }

    #[test]
    fn what_we_rely_on_is_checked_and_named() {
        for (field, bad, at) in [
            ("call_id", json!(null), "call_id"),
            ("status", json!("on-fire"), "status"),
            ("status", json!(null), "status"),
            ("timestamp", json!("13:41"), "timestamp"),
            ("timestamp", json!(null), "timestamp"),
            ("direction", json!("sideways"), "direction"),
            ("direction", json!(null), "direction"),
            ("version", json!("v3"), "version"),
            ("caller", json!("+31612345678"), "caller"),
            (
                "destination",
                json!({"targets": ["201"]}),
                "destination.targets[0]",
            ),
            (
                "targets",
                json!([{"user_numbers": {"a": 1}}]),
                "targets[0].user_numbers",
            ),
        ] {
            let payload = with(json!({ field: bad }));
            let error = parse_value(&payload).unwrap_err();
            assert_eq!(error.field.as_deref(), Some(at), "{field}: {bad}");
        }
    }

    #[test]
    fn a_call_cannot_merge_itself() {
        let payload = with(json!({"status": "transfer", "merged_id": CALL}));
        let error = parse_value(&payload).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("merged_id"));
    }
}
