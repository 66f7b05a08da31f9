//! A call's record: its events, the revisions of its resource, and the Morph events waiting to
//! be delivered (the outbox). Every store (SQLite locally, DynamoDB on AWS) keeps this one
//! shape, so the rules live here and not in the adapters.

use super::connection::Connection;
use super::event::{CallEvent, Provider};
use super::fold::fold;
use super::resource::{MorphEventType, TelephonyCall, envelope, resource_id, to_resource};
use super::rest::RemoteCall;
use super::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Most distinct events a call keeps. A real call has a few dozen at most; past this a
/// provider's further events of the call are left out of the fold (the worker logs a WARN), so
/// a record, and the work of applying one more event to it, stay bounded.
pub const MAX_EVENTS_PER_CALL: usize = 500;

/// Largest record, as stored (JSON): well inside DynamoDB's 400 KB item, with room for the
/// item's other attributes. A record that would be larger is not written: the webhook that
/// would make it so is parked (the dead-letter queue on AWS, `callbridge deliveries list`
/// locally), never retried.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// A record no retry can store or read: the webhook that needs it is parked, on its own.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The stored record does not read (nested too deep by an older version, corrupted). The
    /// store's `version` lets an erasure replace it with a tombstone.
    #[error("the stored record of call {} does not read: {reason}", .call.to_path())]
    Unreadable {
        call: CallKey,
        version: u64,
        reason: String,
    },
    #[error("the record of call {call} would be {bytes} bytes, over the limit of {limit}", limit = MAX_RECORD_BYTES)]
    TooLarge { call: String, bytes: usize },
}

impl RecordError {
    /// The record error behind `error`, if that is what it is.
    pub fn of(error: &anyhow::Error) -> Option<&RecordError> {
        error.chain().find_map(|cause| cause.downcast_ref())
    }
}

/// Where a call lives: the connection, and the provider's key for the call.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CallKey {
    pub connection_id: String,
    pub provider: Provider,
    pub call_key: String,
}

impl CallKey {
    pub fn new(connection_id: &str, provider: Provider, call_key: &str) -> Self {
        Self {
            connection_id: connection_id.into(),
            provider,
            call_key: call_key.into(),
        }
    }

    pub fn resource_id(&self) -> String {
        resource_id(&self.connection_id, self.provider, &self.call_key)
    }

    /// One string for queues and tables: `connection/provider/call`.
    pub fn to_path(&self) -> String {
        format!("{}/{}/{}", self.connection_id, self.provider, self.call_key)
    }
}

/// One Morph event to deliver. Its key and body are fixed when it is created, so every retry
/// sends the same bytes under the same idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub resource_id: String,
    pub revision: u64,
    pub event: MorphEventType,
    pub idempotency_key: String,
    pub body: Value,
    /// When the webhook that made this revision was received (for the delivery latency); set
    /// by the worker, which knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub key: CallKey,
    pub resource_id: String,
    /// Every distinct event seen for the call, in arrival order; the fold orders them itself.
    pub events: Vec<CallEvent>,
    /// Events of calls merged into this one (Voys transfers): they bring their participants.
    #[serde(default)]
    pub merged_in: Vec<CallEvent>,
    /// Set when this call was merged into another (Voys `merged_id`): it is discarded.
    #[serde(default)]
    pub merged_into: Option<String>,
    /// The last revision emitted (0: none yet).
    pub revision: u64,
    /// The resource as of the last revision emitted.
    #[serde(default)]
    pub resource: Option<TelephonyCall>,
    #[serde(default)]
    pub deleted: bool,
    /// Emitted and not yet delivered, oldest first.
    #[serde(default)]
    pub outbox: Vec<Delivery>,
    /// When an operator asked to erase the call (GDPR). From then on the record takes no
    /// event, and once the CRM has its `deleted` it keeps nothing personal: only this
    /// tombstone (key, resource id, revision), so that a late webhook cannot bring the call
    /// back. The store's retention (a TTL on AWS) removes the tombstone in the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<Timestamp>,
    /// The answers of the connection's contact lookup for the call's numbers (E.164 to
    /// contact id, `None`: no contact), kept so that the call maps the same way every time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contact_lookups: BTreeMap<String, Option<String>>,
    /// What Morph's REST API holds of the call (connections with `delivery = "rest"`).
    #[serde(default, skip_serializing_if = "RemoteCall::is_unknown")]
    pub remote: RemoteCall,
}

impl CallRecord {
    pub fn new(key: CallKey) -> Self {
        Self {
            resource_id: key.resource_id(),
            key,
            events: Vec::new(),
            merged_in: Vec::new(),
            merged_into: None,
            revision: 0,
            resource: None,
            deleted: false,
            outbox: Vec::new(),
            erased_at: None,
            contact_lookups: BTreeMap::new(),
            remote: RemoteCall::default(),
        }
    }

    /// The record as a store keeps it; an error when it is over [`MAX_RECORD_BYTES`].
    pub fn to_stored_json(&self) -> Result<String, RecordError> {
        let json = serde_json::to_string(self).expect("a record serialises");
        if json.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge {
                call: self.key.to_path(),
                bytes: json.len(),
            });
        }
        Ok(json)
    }

    /// A stored record, read back; `version` is the store's, for the error.
    pub fn from_stored_json(json: &str, key: &CallKey, version: u64) -> Result<Self, RecordError> {
        serde_json::from_str(json).map_err(|e| RecordError::Unreadable {
            call: key.clone(),
            version,
            reason: e.to_string(),
        })
    }

    /// Whether the record holds [`MAX_EVENTS_PER_CALL`] events and takes no more.
    pub fn is_full(&self) -> bool {
        self.events.len() >= MAX_EVENTS_PER_CALL
    }

    /// The revision delivered last: everything before the outbox.
    pub fn delivered_revision(&self) -> u64 {
        self.outbox
            .first()
            .map_or(self.revision, |d| d.revision - 1)
    }

    /// Adds an event unless it was seen already, the call was erased, or the record is full.
    /// Returns whether it was added.
    pub fn add_event(&mut self, event: &CallEvent) -> bool {
        self.erased_at.is_none() && !self.is_full() && add_unique(&mut self.events, event)
    }

    /// Adds an event of a call merged into this one (unless this call was erased). Returns
    /// whether it was new.
    pub fn add_merged_in(&mut self, event: &CallEvent) -> bool {
        self.erased_at.is_none() && add_unique(&mut self.merged_in, event)
    }

    /// Keeps the contact lookup's answer for an E.164 number, unless the call has one for it
    /// already: the first answer stays, so the resource does not change under a call. Returns
    /// whether it was new.
    pub fn add_contact_lookup(&mut self, e164: &str, contact_id: Option<&str>) -> bool {
        if self.erased_at.is_some() || self.contact_lookups.contains_key(e164) {
            return false;
        }
        self.contact_lookups
            .insert(e164.to_string(), contact_id.map(str::to_string));
        true
    }

    /// Folds the events and, when the resource changed, emits the next revision into the
    /// outbox. A merged or deleted call emits nothing more. Returns whether it emitted.
    pub fn refresh(&mut self, connection: &Connection) -> bool {
        if self.merged_into.is_some() || self.deleted {
            return false;
        }
        let Some(state) = fold(&self.events, &self.merged_in) else {
            return false;
        };
        let call = to_resource(&state, connection, &self.contact_lookups);
        if self
            .resource
            .as_ref()
            .is_some_and(|previous| previous.same_content(&call))
        {
            return false;
        }
        let event = if self.revision == 0 {
            MorphEventType::Created
        } else {
            MorphEventType::Updated
        };
        self.emit(event, call);
        true
    }

    /// Discards this call in favour of `survivor`; if the CRM was ever told of it, it is told
    /// the call is deleted. Returns whether the record changed (it must be saved even when the
    /// CRM never heard of the call, or the call's later events would show it).
    pub fn merge_into(&mut self, survivor: &CallKey) -> bool {
        if self.merged_into.is_some() {
            return false;
        }
        self.merged_into = Some(survivor.call_key.clone());
        self.delete();
        true
    }

    /// Ends the call's life: nothing more is emitted for it, and if the CRM was ever told of
    /// it, it gets `telephonyCall::deleted`. Returns whether the record changed.
    pub fn delete(&mut self) -> bool {
        if self.deleted {
            return false;
        }
        self.deleted = true;
        if let Some(last) = self.resource.clone() {
            self.emit(MorphEventType::Deleted, last);
        }
        true
    }

    /// Erases the call (GDPR), as asked at `at`: the CRM is told it is deleted (if it was ever
    /// sent a revision), through the outbox like any revision, and the resource that deletion
    /// carries goes once it is delivered or refused (at once if there is nothing to deliver).
    /// Returns whether the record changed.
    pub fn erase(&mut self, at: Timestamp) -> bool {
        if self.erased_at.is_some() {
            return false;
        }
        self.erased_at = Some(at);
        // The CRM needs only the deletion: the revisions it has not taken are dropped (one
        // refused would hold the erasure up), and so are the events, which a deleted call
        // never folds again.
        self.outbox.retain(|d| d.event == MorphEventType::Deleted);
        self.delete();
        self.events.clear();
        self.merged_in.clear();
        self.contact_lookups.clear();
        self.forget_if_delivered();
        true
    }

    /// The CRM refused the deletion of an erased call for good: the erasure does not wait on
    /// it, and the call keeps only its tombstone. Returns whether the record changed.
    pub fn drop_refused(&mut self, revision: u64) -> bool {
        if self.erased_at.is_none() || !self.outbox.iter().any(|d| d.revision == revision) {
            return false;
        }
        self.outbox.clear();
        self.forget_if_delivered();
        true
    }

    /// An erased call whose outbox is delivered keeps only its tombstone.
    fn forget_if_delivered(&mut self) {
        if self.erased_at.is_some() && self.outbox.is_empty() {
            self.events.clear();
            self.merged_in.clear();
            self.resource = None;
            self.contact_lookups.clear();
        }
    }

    fn emit(&mut self, event: MorphEventType, call: TelephonyCall) {
        self.revision += 1;
        self.outbox.push(Delivery {
            resource_id: self.resource_id.clone(),
            revision: self.revision,
            event,
            idempotency_key: format!("{}-r{}", self.resource_id, self.revision),
            body: envelope(event, &self.resource_id, &call),
            received_at: None,
        });
        self.resource = Some(call);
    }

    /// Records that the CRM took every revision up to `revision`. An erased call forgets what
    /// it kept in the same write, so a crash between the two cannot happen.
    pub fn mark_delivered(&mut self, revision: u64) {
        self.outbox.retain(|d| d.revision > revision);
        self.forget_if_delivered();
    }
}

fn add_unique(events: &mut Vec<CallEvent>, event: &CallEvent) -> bool {
    if events.iter().any(|seen| seen.id == event.id) {
        return false;
    }
    events.push(event.clone());
    true
}
