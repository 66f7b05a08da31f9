//! The Morph `telephonyCall` resource of a call, and the event envelope that carries it.

use super::connection::Connection;
use super::event::{Direction, Provider, Recording};
use super::fold::CallState;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CallStatus {
    InProgress,
    Completed,
    Missed,
    Voicemail,
}

/// `{"object": "resourceRef", "model": "genericUser", "id": ...}`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRef {
    pub object: String,
    pub model: String,
    pub id: String,
}

impl ResourceRef {
    pub fn user(id: &str) -> Self {
        Self {
            object: "resourceRef".into(),
            model: "genericUser".into(),
            id: id.into(),
        }
    }

    pub fn contact(id: &str) -> Self {
        Self {
            object: "resourceRef".into(),
            model: "genericContact".into(),
            id: id.into(),
        }
    }
}

/// The model's fields. An optional field that is not known is left out, never `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelephonyCallFields {
    pub direction: Direction,
    pub status: CallStatus,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<ResourceRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<ResourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_number: Option<String>,
}

/// One revision of a call's resource: what a Morph event carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelephonyCall {
    pub fields: TelephonyCallFields,
    /// Provider data with no field of its own in the model (Telsmart's after-call summary).
    pub raw_resource: Option<Value>,
    pub created_at: String,
    pub updated_at: String,
}

impl TelephonyCall {
    /// Whether `other` says anything new to the CRM (the timestamps of the envelope aside).
    pub fn same_content(&self, other: &TelephonyCall) -> bool {
        self.fields == other.fields && self.raw_resource == other.raw_resource
    }
}

/// The resource id of a call: the same call of the same connection has the same id, forever.
pub fn resource_id(connection_id: &str, provider: Provider, call_key: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [connection_id, provider.as_str(), call_key] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    format!("call_{}", hex::encode(&hasher.finalize()[..16]))
}

/// Maps a call's state to its resource, in the words of the connection's directories.
/// `looked_up` holds the answers of the connection's contact lookup the call's record kept
/// (E.164 number to contact id, `None`: no contact), so mapping again gives the same resource.
pub fn to_resource(
    state: &CallState,
    connection: &Connection,
    looked_up: &BTreeMap<String, Option<String>>,
) -> TelephonyCall {
    let status = match state.ended_at {
        None => CallStatus::InProgress,
        Some(_) if state.is_answered() => CallStatus::Completed,
        Some(_) if state.voicemail => CallStatus::Voicemail,
        Some(_) => CallStatus::Missed,
    };
    let duration = state.ended_at.map(|ended| {
        state.talk_seconds.unwrap_or_else(|| {
            state
                .answered_at
                .map_or(0, |answered| answered.whole_seconds_until(ended))
        })
    });

    let mut users: Vec<ResourceRef> = Vec::new();
    let mut add_user = |id: &str| {
        if !users.iter().any(|u| u.id == id) {
            users.push(ResourceRef::user(id));
        }
    };
    for key in state.users() {
        if let Some(id) = connection.user_id(key) {
            add_user(id);
        }
    }
    // When the other party is one of our users, this is an internal call: no external number.
    let mut external_number = state.external_number.as_deref().map(|number| {
        connection
            .contacts
            .e164(number)
            .unwrap_or_else(|| number.to_string())
    });
    if let Some(id) = state
        .external_number
        .as_deref()
        .and_then(|n| connection.user_id(n))
    {
        add_user(id);
        external_number = None;
    }
    // Our side is an extension as often as a number: only a full number is rewritten.
    let internal_number = state.internal_number.as_deref().map(|number| {
        connection
            .contacts
            .e164(number)
            .unwrap_or_else(|| number.to_string())
    });

    // The other party's contact: the static directory first, it was set by hand.
    let contacts = external_number
        .as_deref()
        .and_then(|number| connection.contacts.e164(number))
        .and_then(|e164| {
            connection
                .contacts
                .numbers
                .get(&e164)
                .or_else(|| looked_up.get(&e164).and_then(Option::as_ref))
        })
        .map(|id| vec![ResourceRef::contact(id)])
        .unwrap_or_default();

    let recording_url = state.recording.as_ref().and_then(|r| match r {
        Recording::Url(url) => Some(url.clone()),
        Recording::File(file) => connection.recording_url(file),
    });

    TelephonyCall {
        fields: TelephonyCallFields {
            // Every provider tells the direction on the events we rely on; a call seen only
            // through TeleCMI's leg b is taken as inbound, the only way such a leg rings.
            direction: state.direction.unwrap_or(Direction::Inbound),
            status,
            started_at: state.started_at.to_rfc3339_millis(),
            ended_at: state.ended_at.map(|t| t.to_rfc3339_millis()),
            answered_at: state.answered_at.map(|t| t.to_rfc3339_millis()),
            duration,
            recording_url,
            users,
            contacts,
            external_number,
            internal_number,
        },
        raw_resource: state
            .summary
            .as_ref()
            .map(|summary| json!({ "summary": summary })),
        created_at: state.started_at.to_rfc3339_millis(),
        updated_at: state.updated_at.to_rfc3339_millis(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MorphEventType {
    #[serde(rename = "telephonyCall::created")]
    Created,
    #[serde(rename = "telephonyCall::updated")]
    Updated,
    #[serde(rename = "telephonyCall::deleted")]
    Deleted,
}

impl MorphEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            MorphEventType::Created => "telephonyCall::created",
            MorphEventType::Updated => "telephonyCall::updated",
            MorphEventType::Deleted => "telephonyCall::deleted",
        }
    }
}

/// The body of a Morph webhook event.
pub fn envelope(event: MorphEventType, resource_id: &str, call: &TelephonyCall) -> Value {
    json!({
        "event": event.as_str(),
        "data": {
            "object": "resource",
            "model": "telephonyCall",
            "id": resource_id,
            "fields": call.fields,
            "createdAt": call.created_at,
            "updatedAt": call.updated_at,
            "rawResource": call.raw_resource,
            "warnings": [],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::domain::event::{CallEvent, EventKind};
    use crate::domain::fold::fold;
    use crate::domain::time::Timestamp;

    fn connection(extra: &str) -> Connection {
        let config = Config::parse(&format!(
            r#"
            [[connections]]
            id = "acme"
            provider = "telsmart"
            token = "acme-token-0123456789"
            connector_id = "conn"
            owner_id = "owner"
            users = {{ "200" = "usr_john", "210" = "usr_jane" }}
            {extra}
            "#
        ));
        config.unwrap().connections().unwrap().remove(0)
    }

    fn state(external_number: &str) -> CallState {
        let at = Timestamp::from_micros(1_765_209_366_386_177).unwrap();
        let mut event = CallEvent::new(Provider::Telsmart, "c1", at, EventKind::Ringing);
        event.id = "e1".into();
        event.direction = Some(Direction::Inbound);
        event.internal_number = Some("200".into());
        event.participants = vec!["200".into()];
        event.external_number = Some(external_number.into());
        fold(&[event]).unwrap()
    }

    fn contact_ids(call: &TelephonyCall) -> Vec<String> {
        call.fields
            .contacts
            .iter()
            .map(|c| format!("{}:{}", c.model, c.id))
            .collect()
    }

    #[test]
    fn the_static_directory_finds_the_other_party_however_the_number_is_written() {
        let c = connection(
            r#"default_country = "BE"
            contacts = { "+32 2 899 26 75" = "contact_123" }"#,
        );
        for written in [
            "+3228992675",
            "02 899 26 75",
            "0032 2 899 26 75",
            "3228992675",
        ] {
            let call = to_resource(&state(written), &c, &BTreeMap::new());
            assert_eq!(
                contact_ids(&call),
                ["genericContact:contact_123"],
                "{written}"
            );
        }
        let stranger = to_resource(&state("+3225551234"), &c, &BTreeMap::new());
        assert!(stranger.fields.contacts.is_empty());
        // An internal call has no other party to look up.
        let internal = to_resource(&state("210"), &c, &BTreeMap::new());
        assert!(internal.fields.contacts.is_empty());
    }

    #[test]
    fn a_looked_up_contact_counts_unless_the_static_directory_says_otherwise() {
        let c = connection(r#"contacts = { "+3228992675" = "contact_static" }"#);
        let looked_up = BTreeMap::from([
            ("+3228992675".to_string(), Some("contact_http".to_string())),
            ("+3225551234".to_string(), Some("contact_456".to_string())),
            ("+3225559999".to_string(), None),
        ]);
        let ids = |number| contact_ids(&to_resource(&state(number), &c, &looked_up));
        assert_eq!(ids("+3228992675"), ["genericContact:contact_static"]);
        assert_eq!(ids("+3225551234"), ["genericContact:contact_456"]);
        assert!(ids("+3225559999").is_empty());
        // Without a default country a national number is nobody's.
        assert!(ids("02 555 12 34").is_empty());
    }
}
