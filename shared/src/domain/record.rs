//! A call's record: its events, the revisions of its resource, and the Morph events waiting to
//! be delivered (the outbox). Every store (SQLite locally, DynamoDB on AWS) keeps this one
//! shape, so the rules live here and not in the adapters.

use super::connection::{Connection, QueueCalls};
pub use super::delivery::{Delivery, Waiting};
use super::event::{CallEvent, EventKind, Provider};
use super::fold::{View, fold, view};
use super::resource::{MorphEventType, TelephonyCall, envelope, resource_id, to_resource};
use super::rest::RemoteCall;
use super::time::Timestamp;
use serde::{Deserialize, Serialize};
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub key: CallKey,
    pub resource_id: String,
    /// Every distinct event seen for the call, in arrival order; the fold orders them itself.
    pub events: Vec<CallEvent>,
    /// Events of the calls a transfer linked to this one (Voys `merged_id`, either way round):
    /// the fold decides from both which call the CRM shows.
    #[serde(default)]
    pub merged_in: Vec<CallEvent>,
    /// Set when a transfer of the call named here named this one as its `merged_id`.
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
    /// outbox. A call a transfer shows as part of another is closed: if the CRM was ever told
    /// of it, it gets `telephonyCall::deleted`. A deleted call emits nothing more. Returns
    /// whether it emitted.
    pub fn refresh(&mut self, connection: &Connection) -> bool {
        if self.deleted {
            return false;
        }
        let is_external = |number: &str| connection.user_id(number).is_none();
        let state = match view(
            &self.key.call_key,
            &self.events,
            &self.merged_in,
            is_external,
        ) {
            View::Hidden => return false,
            // A queue member who never answered did not have a call of their own: unless the
            // connection wants every member's leg, it is not shown.
            View::Shown(state)
                if state.queue_member
                    && !state.is_answered()
                    && self.resource.is_none()
                    && connection.queue_calls == QueueCalls::Answered =>
            {
                return false;
            }
            View::Shown(state) => *state,
            View::MergedAway { at } => {
                // Never shown: it may still turn out to be the customer's call when more of
                // it arrives, so it stays open.
                if self.resource.is_none() {
                    return false;
                }
                let closed = fold(&self.events).map(|mut own| {
                    own.ended_at = Some(own.ended_at.map_or(at, |end| end.min(at)));
                    to_resource(&own, connection, &self.contact_lookups).fields
                });
                self.deleted = true;
                let last = self.resource.clone().expect("shown");
                self.emit(MorphEventType::Deleted, last);
                if let Some(delivery) = self.outbox.last_mut() {
                    delivery.closed = closed;
                }
                return true;
            }
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

    /// Links this call to `kept`, the call a provider's transfer kept (Voys `merged_id` named
    /// this one). Which of the two the CRM shows is then the fold's choice ([`view`]).
    /// Returns whether the record changed.
    pub fn merge_into(&mut self, kept: &CallKey) -> bool {
        if self.merged_into.is_some() {
            return false;
        }
        self.merged_into = Some(kept.call_key.clone());
        true
    }

    /// The calls a transfer linked to this one: the call that kept it, and those it kept.
    pub fn linked_calls(&self) -> Vec<String> {
        let mut linked: Vec<String> = self.merged_into.iter().cloned().collect();
        for event in &self.events {
            if let EventKind::Merged { merged_call_key } = &event.kind
                && !linked.contains(merged_call_key)
            {
                linked.push(merged_call_key.clone());
            }
        }
        linked
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
            closed: None,
            received_at: None,
            attempted: false,
            waiting: None,
        });
        self.resource = Some(call);
    }

    /// What of the outbox to send, oldest first. Every revision, unless `catch_up` (the call
    /// has waited on its CRM long enough to be catching up after an outage: the engine's
    /// call, [`CallRecord::waiting_since`]): then an `updated` never attempted is superseded by
    /// a later `updated` in the outbox, since every Morph event carries the whole resource
    /// (`data.fields` in full, not the fields that changed), so the later one's body is all
    /// the CRM needs. Kept are: every attempted revision (the CRM may have applied it: same
    /// key, same body), the `created` (the CRM hears of the call before any update of it),
    /// every `deleted` (which closes the call, in REST mode with fields of its own), and the
    /// latest `updated`. Revisions stay in order; once the CRM takes a later revision,
    /// [`CallRecord::mark_delivered`] drops the superseded ones too.
    pub fn outbox_to_send(&self, catch_up: bool) -> Vec<&Delivery> {
        let latest_update = self
            .outbox
            .iter()
            .rposition(|d| d.event == MorphEventType::Updated);
        self.outbox
            .iter()
            .enumerate()
            .filter(|&(i, d)| {
                !catch_up
                    || d.attempted
                    || d.event != MorphEventType::Updated
                    || Some(i) == latest_update
            })
            .map(|(_, d)| d)
            .collect()
    }

    /// Since when the longest-waiting delivery of the outbox has waited on the CRM.
    pub fn waiting_since(&self) -> Option<Timestamp> {
        self.outbox
            .iter()
            .filter_map(|d| d.waiting.map(|w| w.since))
            .min()
    }

    /// Records that sending `revision` at `now` failed in a way retrying can fix: from now on
    /// it is attempted (never superseded), and its schedule goes on from what is returned. A host records
    /// it in one write after the failed attempt; a crash between the request and that write
    /// leaves it unmarked, and at worst a later revision supersedes it, whose body holds the
    /// whole resource anyway. `None`: no such revision waits.
    pub fn note_failed(&mut self, revision: u64, now: Timestamp) -> Option<Waiting> {
        let delivery = self.outbox.iter_mut().find(|d| d.revision == revision)?;
        delivery.attempted = true;
        let waiting = delivery.waiting.get_or_insert(Waiting {
            since: now,
            failed_attempts: 0,
        });
        waiting.failed_attempts = waiting.failed_attempts.saturating_add(1);
        Some(*waiting)
    }

    /// Records that `revision` was held back at `now` (its destination's breaker open) and
    /// returns since when it has waited. Returns whether the record changed too: only the
    /// first hold writes.
    pub fn note_held(&mut self, revision: u64, now: Timestamp) -> Option<(Waiting, bool)> {
        let delivery = self.outbox.iter_mut().find(|d| d.revision == revision)?;
        let first = delivery.waiting.is_none();
        let waiting = *delivery.waiting.get_or_insert(Waiting {
            since: now,
            failed_attempts: 0,
        });
        Some((waiting, first))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::domain::providers;
    use crate::domain::resource::CallStatus;
    use serde_json::json;

    fn connection(queue_calls: &str) -> Connection {
        let config = Config::parse(&format!(
            r#"
            [[connections]]
            id = "acme"
            provider = "telsmart"
            token = "acme-token-0123456789"
            connector_id = "conn"
            owner_id = "owner"
            users = {{ "200" = "usr_john", "210" = "usr_jane" }}
            {queue_calls}
            "#
        ));
        config.unwrap().connections().unwrap().remove(0)
    }

    /// A queue member's leg of Telsmart's: `callee_number` is the queue's.
    fn leg(state: &str, timestamp: &str) -> CallEvent {
        let payload = json!({
            "tenant_id": "t", "caller_number": "+3228992675", "direction": "in",
            "state": state, "callee_number": "500", "user_extension": "200",
            "id": "leg-john", "timestamp": timestamp,
        });
        providers::parse(Provider::Telsmart, &payload)
            .unwrap()
            .event
    }

    fn events_of(record: &CallRecord) -> Vec<MorphEventType> {
        record.outbox.iter().map(|d| d.event).collect()
    }

    fn run(connection: &Connection, states: &[(&str, &str)]) -> CallRecord {
        let mut record = CallRecord::new(CallKey::new("acme", Provider::Telsmart, "leg-john"));
        for (state, timestamp) in states {
            record.add_event(&leg(state, timestamp));
            record.refresh(connection);
        }
        record
    }

    /// A member's leg shown from its ringing (`every_member`): created when it rings, updated
    /// when answered and when hung up, then updated again when the caller's contact is known.
    fn four_revisions() -> CallRecord {
        let every = connection(r#"queue_calls = "every_member""#);
        let mut record = run(
            &every,
            &[
                ("RINGING", "1765290000000000"),
                ("ACTIVE", "1765290008500000"),
                ("HANGUP", "1765290060750000"),
            ],
        );
        record.add_contact_lookup("+3228992675", Some("ctc_caller"));
        assert!(record.refresh(&every));
        assert_eq!(
            events_of(&record),
            [
                MorphEventType::Created,
                MorphEventType::Updated,
                MorphEventType::Updated,
                MorphEventType::Updated
            ]
        );
        record
    }

    fn revisions(sent: &[&Delivery]) -> Vec<u64> {
        sent.iter().map(|d| d.revision).collect()
    }

    /// Morph's `telephonyCall::updated` carries the whole resource (the same `data.fields` as
    /// `created`: direction, status, startedAt, endedAt, answeredAt, duration, users,
    /// contacts, numbers), so one update holds all the intermediate ones did.
    #[test]
    fn a_call_never_attempted_sends_its_created_and_then_only_its_latest_state() {
        let record = four_revisions();
        assert_eq!(
            revisions(&record.outbox_to_send(false)),
            [1, 2, 3, 4],
            "not catching up: every revision"
        );
        let sent = record.outbox_to_send(true);
        assert_eq!(revisions(&sent), [1, 4]);
        assert_eq!(sent[0].body["event"], "telephonyCall::created");
        let latest = &sent[1].body["data"]["fields"];
        assert_eq!(sent[1].body["event"], "telephonyCall::updated");
        assert_eq!(latest["status"], "completed");
        assert_eq!(latest["answeredAt"], "2025-12-09T14:20:08.500Z");
        assert_eq!(latest["endedAt"], "2025-12-09T14:21:00.750Z");
        assert_eq!(latest["duration"], 52);
        assert_eq!(latest["contacts"][0]["id"], "ctc_caller");
        assert_eq!(latest["users"][0]["id"], "usr_john");
        assert_eq!(latest["direction"], "inbound");
        assert_eq!(
            sent[1].idempotency_key,
            format!("{}-r4", record.resource_id)
        );
    }

    #[test]
    fn an_attempted_revision_is_sent_again_with_its_own_key_and_body() {
        let mut record = four_revisions();
        let before = record.outbox.clone();
        let at = |s: i64| Timestamp::from_micros(1_765_290_000_000_000 + s * 1_000_000).unwrap();
        assert_eq!(record.note_failed(9, at(0)), None, "no such revision");
        let first = record.note_failed(1, at(0)).unwrap();
        assert_eq!((first.since, first.failed_attempts), (at(0), 1));
        let again = record.note_failed(1, at(5)).unwrap();
        assert_eq!((again.since, again.failed_attempts), (at(0), 2));
        // Held back first, it waits since then; its failures count from there.
        assert_eq!(
            record.note_held(2, at(7)).unwrap(),
            (
                Waiting {
                    since: at(7),
                    failed_attempts: 0
                },
                true
            )
        );
        assert!(
            !record.note_held(2, at(8)).unwrap().1,
            "the first hold writes, no other"
        );
        assert!(!record.outbox[1].attempted, "held back is not sent");
        assert_eq!(record.note_failed(2, at(9)).unwrap().since, at(7));
        let sent = record.outbox_to_send(true);
        assert_eq!(revisions(&sent), [1, 2, 4]);
        for (sent, stored) in sent.iter().zip([&before[0], &before[1]]) {
            assert_eq!(sent.idempotency_key, stored.idempotency_key);
            assert_eq!(sent.body, stored.body);
        }
    }

    #[test]
    fn a_deletion_is_never_superseded_and_the_latest_update_goes_before_it() {
        let mut record = four_revisions();
        record.mark_delivered(1);
        assert!(record.delete());
        let sent = record.outbox_to_send(true);
        assert_eq!(revisions(&sent), [4, 5]);
        assert_eq!(sent[1].body["event"], "telephonyCall::deleted");
        assert_eq!(
            sent[1].body["data"]["fields"],
            sent[0].body["data"]["fields"]
        );
    }

    #[test]
    fn the_latest_taken_drops_the_superseded_ones() {
        let mut record = four_revisions();
        record.mark_delivered(1);
        record.mark_delivered(4);
        assert!(record.outbox.is_empty());
        assert_eq!(record.delivered_revision(), 4);
    }

    #[test]
    fn the_wait_is_left_out_while_unset_and_read_as_unset_when_absent() {
        let mut record = four_revisions();
        let stored = serde_json::to_value(&record.outbox[0]).unwrap();
        assert!(stored.get("waiting").is_none() && stored.get("attempted").is_none());
        let read: Delivery = serde_json::from_value(stored).unwrap();
        assert!(!read.attempted);
        let since = Timestamp::from_micros(1_765_290_000_000_000).unwrap();
        record.note_failed(1, since);
        let marked = serde_json::to_value(&record.outbox[0]).unwrap();
        assert_eq!(marked["waiting"]["failed_attempts"], 1);
        assert_eq!(marked["attempted"], true);
        let read = serde_json::from_value::<Delivery>(marked).unwrap();
        assert!(read.attempted);
        assert_eq!(read.waiting.unwrap().since, since);
    }

    #[test]
    fn a_queue_member_who_never_answered_is_not_shown_by_default() {
        let rang = [
            ("RINGING", "1765290000000000"),
            ("HANGUP", "1765290008520000"),
        ];
        assert!(events_of(&run(&connection(""), &rang)).is_empty());
        let every = connection(r#"queue_calls = "every_member""#);
        assert_eq!(
            events_of(&run(&every, &rang)),
            [MorphEventType::Created, MorphEventType::Updated]
        );
        let last = run(&every, &rang).resource.unwrap();
        assert_eq!(last.fields.status, CallStatus::Missed);
    }

    #[test]
    fn a_queue_member_who_answered_has_the_call_from_the_answer() {
        let answered = [
            ("RINGING", "1765290000000000"),
            ("ACTIVE", "1765290008500000"),
            ("HANGUP", "1765290060750000"),
        ];
        let record = run(&connection(""), &answered);
        assert_eq!(
            events_of(&record),
            [MorphEventType::Created, MorphEventType::Updated]
        );
        let fields = &record.resource.unwrap().fields;
        assert_eq!(fields.started_at, "2025-12-09T14:20:00.000Z");
        assert_eq!(fields.duration, Some(52));
    }
}
