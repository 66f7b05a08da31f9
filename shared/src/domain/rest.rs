//! Morph's REST API, for connections with `delivery = "rest"`: what a revision of a call
//! becomes there (`docs/crm.md`).
//!
//! The revision is the same as in event mode, fixed in the outbox with its body; only its
//! translation differs. A revision is a create (`POST /v1/resources/telephonyCall`) while
//! Morph has given no id for the call, an update (`PATCH .../telephonyCall/{id}`) after, and
//! a Telsmart summary the call carries becomes its `telephonyCallTranscript`. Morph's REST API
//! has no idempotency header, so what Morph holds of a call is kept with the call
//! ([`RemoteCall`]), and a create is claimed there before it is sent: a claim without an id
//! is a create whose fate is unknown, which is never sent again on its own.

use super::delivery::Delivery;
use super::resource::MorphEventType;
use super::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::fmt;

/// The models callbridge writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RestModel {
    TelephonyCall,
    TelephonyCallTranscript,
}

impl RestModel {
    pub fn as_str(self) -> &'static str {
        match self {
            RestModel::TelephonyCall => "telephonyCall",
            RestModel::TelephonyCallTranscript => "telephonyCallTranscript",
        }
    }
}

impl fmt::Display for RestModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What Morph's REST API holds of one call, as far as callbridge knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCall {
    /// The id Morph gave the `telephonyCall`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// The id Morph gave the call's `telephonyCallTranscript`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_id: Option<String>,
    /// A digest of the summary the transcript holds: an unchanged summary is not sent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_digest: Option<String>,
    /// A create claimed and sent whose id was never recorded: Morph may or may not hold the
    /// resource. Cleared only by its answer, or by an operator who checked Morph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_sent: Option<CreateSent>,
}

/// A create claimed before it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSent {
    pub model: RestModel,
    /// When it was claimed: a recent claim may be another worker's request under way.
    pub at: Timestamp,
}

impl RemoteCall {
    /// Whether Morph's REST API was never written for the call (event mode, or not yet).
    pub fn is_unknown(&self) -> bool {
        self == &RemoteCall::default()
    }

    pub fn id(&self, model: RestModel) -> Option<&str> {
        match model {
            RestModel::TelephonyCall => self.call_id.as_deref(),
            RestModel::TelephonyCallTranscript => self.transcript_id.as_deref(),
        }
    }

    /// Claims the create of `model`, at `at`, before it is sent. False when a create is
    /// claimed already (by another worker, or by an attempt whose answer was lost) or the id
    /// is known.
    pub fn claim_create(&mut self, model: RestModel, at: Timestamp) -> bool {
        if self.create_sent.is_some() || self.id(model).is_some() {
            return false;
        }
        self.create_sent = Some(CreateSent { model, at });
        true
    }

    fn claimed(&self, model: RestModel) -> bool {
        self.create_sent.is_some_and(|sent| sent.model == model)
    }

    /// Morph surely did not create it (it refused, or it was never reached): the claim goes.
    pub fn create_not_done(&mut self, model: RestModel) -> bool {
        if !self.claimed(model) {
            return false;
        }
        self.create_sent = None;
        true
    }

    /// Morph created `model` as `id`: the claim becomes the id.
    pub fn created(&mut self, model: RestModel, id: &str) -> bool {
        if self.id(model) == Some(id) && self.create_sent.is_none() {
            return false;
        }
        match model {
            RestModel::TelephonyCall => self.call_id = Some(id.to_string()),
            RestModel::TelephonyCallTranscript => self.transcript_id = Some(id.to_string()),
        }
        if self.claimed(model) {
            self.create_sent = None;
        }
        true
    }

    /// The transcript now holds the summary of `digest`.
    pub fn transcript_sent(&mut self, digest: &str) -> bool {
        if self.transcript_digest.as_deref() == Some(digest) {
            return false;
        }
        self.transcript_digest = Some(digest.to_string());
        true
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestMethod {
    Post,
    Patch,
}

/// One request to Morph's REST API.
#[derive(Clone, Debug, PartialEq)]
pub struct RestRequest {
    pub model: RestModel,
    pub method: RestMethod,
    /// From the API's root: `/v1/resources/telephonyCall[/{id}]`.
    pub path: String,
    pub body: Value,
}

impl RestRequest {
    /// A create: Morph answers with a new id every time it is sent.
    pub fn is_create(&self) -> bool {
        self.method == RestMethod::Post
    }
}

/// The models a revision writes, in order: the call, then its transcript when the revision
/// carries a summary the transcript does not hold yet. The REST API has no delete: a call a
/// transfer closed is patched as ended at the transfer (if Morph holds it), and any other
/// `deleted` revision (an erasure) writes nothing.
pub fn steps(delivery: &Delivery, remote: &RemoteCall) -> Vec<RestModel> {
    if delivery.event == MorphEventType::Deleted {
        return match (&delivery.closed, &remote.call_id) {
            (Some(_), Some(_)) => vec![RestModel::TelephonyCall],
            _ => Vec::new(),
        };
    }
    let mut steps = vec![RestModel::TelephonyCall];
    if summary(delivery).is_some_and(|s| remote.transcript_digest != Some(digest(s))) {
        steps.push(RestModel::TelephonyCallTranscript);
    }
    steps
}

/// The request that writes `model` for `delivery`: a create while Morph gave no id, an update
/// after. The transcript's needs the call's id, so it comes after the call's step.
pub fn request(model: RestModel, delivery: &Delivery, remote: &RemoteCall) -> RestRequest {
    let body = match model {
        RestModel::TelephonyCall => match &delivery.closed {
            Some(closed) => json!({ "fields": closed }),
            None => json!({ "fields": delivery.body["data"]["fields"] }),
        },
        RestModel::TelephonyCallTranscript => transcript(
            remote.call_id.as_deref().unwrap_or_default(),
            summary(delivery).unwrap_or(&Value::Null),
        ),
    };
    let (method, path) = match remote.id(model) {
        None => (RestMethod::Post, format!("/v1/resources/{model}")),
        Some(id) => (RestMethod::Patch, format!("/v1/resources/{model}/{id}")),
    };
    RestRequest {
        model,
        method,
        path,
        body,
    }
}

/// The Telsmart summary a revision carries (`rawResource.summary`).
pub fn summary(delivery: &Delivery) -> Option<&Value> {
    delivery.body["data"]["rawResource"]
        .get("summary")
        .filter(|s| !s.is_null())
}

/// What identifies a summary's content, whatever the order of its keys.
pub fn digest(summary: &Value) -> String {
    // serde_json's map is ordered by key, so `to_string` is canonical.
    hex::encode(&Sha256::digest(summary.to_string().as_bytes())[..16])
}

/// A Telsmart summary as a `telephonyCallTranscript`. Morph's documentation names the model
/// but none of its fields, so these are our reading (`docs/crm.md`): the call it belongs to,
/// the summary's language, its quick summary as text, and the whole summary as the raw
/// resource, where nothing of it is lost whatever Morph makes of the fields.
fn transcript(call_id: &str, summary: &Value) -> Value {
    let content = &summary["content"];
    let text = content["quick_summary"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|text| !text.is_empty());
    let mut fields = json!({
        "call": { "object": "resourceRef", "model": "telephonyCall", "id": call_id },
    });
    if let Some(language) = summary["language"].as_str() {
        fields["language"] = json!(language);
    }
    if let Some(title) = content["meeting_title"].as_str() {
        fields["title"] = json!(title);
    }
    if let Some(text) = text {
        fields["text"] = json!(text);
    }
    json!({ "fields": fields, "rawResource": { "summary": summary } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(event: MorphEventType, raw: Value) -> Delivery {
        Delivery {
            resource_id: "call_1".into(),
            revision: 2,
            event,
            idempotency_key: "call_1-r2".into(),
            body: json!({
                "event": event.as_str(),
                "data": { "fields": { "status": "completed" }, "rawResource": raw },
            }),
            closed: None,
            received_at: None,
            attempted: false,
            waiting: None,
        }
    }

    fn summary_value() -> Value {
        json!({"language": "en-GB", "content": {"meeting_title": "A test", "quick_summary": ["One.", "Two."]}})
    }

    #[test]
    fn a_call_is_created_until_morph_gives_its_id_then_patched() {
        let d = delivery(MorphEventType::Updated, Value::Null);
        let mut remote = RemoteCall::default();
        assert_eq!(steps(&d, &remote), [RestModel::TelephonyCall]);
        let create = request(RestModel::TelephonyCall, &d, &remote);
        assert!(create.is_create());
        assert_eq!(create.path, "/v1/resources/telephonyCall");
        assert_eq!(create.body, json!({"fields": {"status": "completed"}}));

        remote.created(RestModel::TelephonyCall, "m1");
        let patch = request(RestModel::TelephonyCall, &d, &remote);
        assert_eq!(patch.method, RestMethod::Patch);
        assert_eq!(patch.path, "/v1/resources/telephonyCall/m1");
        assert_eq!(patch.body, create.body);
    }

    #[test]
    fn a_deleted_revision_writes_nothing() {
        let d = delivery(MorphEventType::Deleted, json!({"summary": summary_value()}));
        assert!(steps(&d, &RemoteCall::default()).is_empty());
    }

    #[test]
    fn a_summary_becomes_the_transcript_once() {
        let d = delivery(MorphEventType::Updated, json!({"summary": summary_value()}));
        let mut remote = RemoteCall::default();
        remote.created(RestModel::TelephonyCall, "m1");
        assert_eq!(
            steps(&d, &remote),
            [RestModel::TelephonyCall, RestModel::TelephonyCallTranscript]
        );
        let create = request(RestModel::TelephonyCallTranscript, &d, &remote);
        assert_eq!(create.path, "/v1/resources/telephonyCallTranscript");
        assert_eq!(
            create.body["fields"],
            json!({
                "call": {"object": "resourceRef", "model": "telephonyCall", "id": "m1"},
                "language": "en-GB",
                "title": "A test",
                "text": "One.\nTwo.",
            })
        );
        assert_eq!(create.body["rawResource"]["summary"], summary_value());

        remote.created(RestModel::TelephonyCallTranscript, "t1");
        remote.transcript_sent(&digest(&summary_value()));
        assert_eq!(steps(&d, &remote), [RestModel::TelephonyCall]);
        let mut changed = summary_value();
        changed["language"] = json!("nl-BE");
        let d = delivery(MorphEventType::Updated, json!({ "summary": changed }));
        assert_eq!(
            request(RestModel::TelephonyCallTranscript, &d, &remote).path,
            "/v1/resources/telephonyCallTranscript/t1"
        );
    }

    #[test]
    fn one_create_at_a_time_and_never_over_a_known_id() {
        let at = Timestamp::from_micros(1_765_209_366_386_177).unwrap();
        let mut remote = RemoteCall::default();
        assert!(remote.claim_create(RestModel::TelephonyCall, at));
        assert!(!remote.claim_create(RestModel::TelephonyCall, at));
        assert!(!remote.claim_create(RestModel::TelephonyCallTranscript, at));
        assert!(!remote.create_not_done(RestModel::TelephonyCallTranscript));
        assert!(remote.create_not_done(RestModel::TelephonyCall));
        assert!(remote.claim_create(RestModel::TelephonyCall, at));
        assert!(remote.created(RestModel::TelephonyCall, "m1"));
        assert_eq!(remote.create_sent, None);
        assert!(!remote.created(RestModel::TelephonyCall, "m1"));
        assert!(!remote.claim_create(RestModel::TelephonyCall, at));
        assert!(remote.claim_create(RestModel::TelephonyCallTranscript, at));
    }

    #[test]
    fn a_record_without_remote_state_reads() {
        let remote: RemoteCall = serde_json::from_str("{}").unwrap();
        assert_eq!(remote, RemoteCall::default());
        assert_eq!(serde_json::to_string(&remote).unwrap(), "{}");
    }
}
