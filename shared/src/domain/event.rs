//! The provider-neutral call event: what one webhook says about one call.

use super::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Telsmart,
    Teltel,
    Voys,
    Telecmi,
}

impl Provider {
    pub const ALL: [Provider; 4] = [
        Provider::Telsmart,
        Provider::Teltel,
        Provider::Voys,
        Provider::Telecmi,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Telsmart => "telsmart",
            Provider::Teltel => "teltel",
            Provider::Voys => "voys",
            Provider::Telecmi => "telecmi",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown provider `{s}` (expected telsmart, teltel, voys or telecmi)")
            })
    }
}

/// From the perspective of our user: `inbound` when someone calls them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// A recording or voicemail, as the provider names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recording {
    /// A URL the provider gives (TelTel `audio_url`).
    Url(String),
    /// A file name the connection's `recording_url_template` turns into a URL (TeleCMI).
    File(String),
}

/// How a call ended, as far as the event tells.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ending {
    /// The provider's own word on whether the call was answered (TelTel `is_answered`,
    /// TeleCMI CDR `status`), when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered: Option<bool>,
    /// Talk time the provider measured (TeleCMI `answeredsec`); it wins over our own arithmetic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talk_seconds: Option<u64>,
    /// A missed call that left a voicemail.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub voicemail: bool,
}

/// What happened, in the words of the call's life.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EventKind {
    /// The call exists or rings (Telsmart RINGING, Voys created/ringing, TelTel START/RING,
    /// TeleCMI waiting/started).
    Ringing,
    /// Someone answered (Telsmart ACTIVE, Voys in-progress, TelTel RINGRESULT ANSWER,
    /// TeleCMI answered).
    Answered,
    /// On hold; changes nothing on the resource.
    Held,
    /// Something that shows the call is alive but changes none of its fields (TelTel READY,
    /// JOIN, LEAVE, a RINGRESULT other than ANSWER).
    Progress,
    /// The call is over (Telsmart HANGUP, Voys ended, TelTel COMPLETED, TeleCMI hangup or cdr).
    Ended(Ending),
    /// An after-call summary (Telsmart SUMMARY_REPORTING): kept in `rawResource`, never reopens
    /// or changes the call.
    Summary { summary: Value },
    /// Voys transfer: the call `merged_call_key` is folded into this one and discarded.
    Merged { merged_call_key: String },
    /// Not a provider's: an operator asked to erase the call (GDPR, `callbridge calls erase`).
    /// It is queued like a webhook so that it takes its place among the call's events: the
    /// ones before it are erased with the call, the ones after it find it erased.
    Erased,
}

/// One provider webhook, normalised. Parsers fill every field but `id`, which
/// [`super::providers::parse`] derives from the payload.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallEvent {
    pub provider: Provider,
    /// The call this event belongs to, within its connection: one `telephonyCall` per call key.
    pub call_key: String,
    /// Stable identity of the provider event: the same webhook sent twice has the same id.
    pub id: String,
    pub at: Timestamp,
    #[serde(flatten)]
    pub kind: EventKind,
    /// `None` when this event cannot be trusted for the direction (TeleCMI leg b).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Our user's number or extension, as this event tells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_number: Option<String>,
    /// The other party's number, as this event tells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_number: Option<String>,
    /// Keys of the connection's user directory for the people this event shows taking part:
    /// who answered, joined, placed the call or was transferred in (extensions, SIP users,
    /// TeleCMI user prefixes, e-mail addresses). Unknown keys are harmless.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<String>,
    /// Directory keys of the people whose phone this event shows ringing, who may never take
    /// part: they count only for a call nobody answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rang: Vec<String>,
    /// The leg rang a member of a queue or group (Telsmart), not a call of their own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queue_member: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<Recording>,
}

impl CallEvent {
    /// An event with only the fields every provider has; parsers fill in the rest.
    pub fn new(
        provider: Provider,
        call_key: impl Into<String>,
        at: Timestamp,
        kind: EventKind,
    ) -> Self {
        Self {
            provider,
            call_key: call_key.into(),
            id: String::new(),
            at,
            kind,
            direction: None,
            internal_number: None,
            external_number: None,
            participants: Vec::new(),
            rang: Vec::new(),
            queue_member: false,
            recording: None,
        }
    }
}

/// The id of a provider event: a hash of its provider and its payload with keys sorted, so a
/// repeat has the same id whatever order the provider wrote the keys in.
pub fn event_id(provider: Provider, payload: &Value) -> String {
    // serde_json's map is ordered by key, so `to_string` is canonical.
    let mut hasher = Sha256::new();
    hasher.update(provider.as_str());
    hasher.update([0]);
    hasher.update(payload.to_string());
    hex::encode(&hasher.finalize()[..16])
}
