//! The worker step: a queued event joins its call's record, the record emits a new revision if
//! the resource changed, and a transfer (Voys `merged_id`) links two calls. Every write is a
//! conditional save over the version read, retried on conflict, so two workers racing on one
//! call lose no update; every step is idempotent, so a message processed twice changes nothing.

use super::contacts::look_up;
use super::crash::{CrashPoint, crash_point};
use crate::domain::connection::Connection;
use crate::domain::event::{CallEvent, EventKind};
use crate::domain::record::{CallKey, CallRecord, MAX_EVENTS_PER_CALL, RecordError};
use crate::domain::time::Timestamp;
use crate::ports::{CallStore, ContactLookup, QueuedWebhook};
use crate::telemetry::mask_number;

/// What processing one webhook did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Whether the event was new (false: a repeat, which changes nothing).
    pub new_event: bool,
    /// Calls that emitted a revision and have deliveries waiting.
    pub to_deliver: Vec<CallKey>,
    /// Records written.
    pub writes: usize,
}

/// Applies one queued webhook to the store; the other party's contact is looked up with
/// `contacts` when the connection has a lookup.
pub async fn apply(
    store: &dyn CallStore,
    connection: &Connection,
    contacts: &dyn ContactLookup,
    webhook: &QueuedWebhook,
) -> anyhow::Result<Applied> {
    let event = &webhook.event;
    let key = webhook.call();
    let mut applied = Applied::default();
    let received_at = webhook.received_at;
    if event.kind == EventKind::Erased {
        // The calls a transfer linked to this one hold its events too: they are erased first,
        // so that a crash before the call itself is erased finds them again on redelivery.
        let mut linked = Vec::new();
        let read = update(store, &key, &mut applied, received_at, |record| {
            linked = record.linked_calls();
            linked.extend(record.merged_in.iter().map(|e| e.call_key.clone()));
            false
        })
        .await;
        linked.retain(|other| *other != key.call_key);
        linked.sort();
        linked.dedup();
        for other in linked {
            let other = CallKey::new(&key.connection_id, key.provider, &other);
            update(store, &other, &mut applied, received_at, |record| {
                record.erase(received_at)
            })
            .await?;
        }
        let mut erased = false;
        let erasure = match read {
            Ok(()) => {
                update(store, &key, &mut applied, received_at, |record| {
                    erased = record.erase(received_at);
                    erased
                })
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = erasure {
            let Some(&RecordError::Unreadable { version, .. }) = RecordError::of(&e) else {
                return Err(e);
            };
            // What cannot be read cannot be told to the CRM either: the record is replaced by
            // a tombstone, which takes no more events.
            let mut tombstone = CallRecord::new(key.clone());
            erased = tombstone.erase(received_at);
            store.save(&tombstone, Some(version)).await?;
            applied.writes += 1;
        }
        if erased {
            crash_point(CrashPoint::ErasureHalfDone);
        }
        applied.new_event = erased;
        return Ok(applied);
    }

    // The event joins its own call; the calls a transfer linked to it see it too.
    let contact = look_up(contacts, connection, event).await;
    let mut new_event = false;
    let mut left_out = false;
    let mut unreadable_number = None;
    let mut own_events = Vec::new();
    let mut linked = Vec::new();
    update(store, &key, &mut applied, received_at, |record| {
        let number_seen = record
            .events
            .iter()
            .any(|e| e.external_number == event.external_number);
        new_event = record.add_event(event);
        left_out = !new_event && record.is_full() && record.events.iter().all(|e| e.id != event.id);
        unreadable_number = event
            .external_number
            .as_deref()
            .filter(|n| new_event && !number_seen && is_unreadable(connection, n));
        own_events.clone_from(&record.events);
        linked = record.linked_calls();
        let looked_up = contact.as_ref().is_some_and(|(e164, contact_id)| {
            record.add_contact_lookup(e164, contact_id.as_deref())
        });
        // A linked call is refreshed once it has the other call's events, below.
        new_event | looked_up | (linked.is_empty() && record.refresh(connection))
    })
    .await?;
    if left_out {
        tracing::warn!(
            call = %key.to_path(),
            event_id = %event.id,
            limit = MAX_EVENTS_PER_CALL,
            "the call holds the most events a call may: this one is left out of it"
        );
    }
    applied.new_event = new_event;
    if let Some(number) = unreadable_number {
        let shown = if connection.log_numbers {
            number.to_string()
        } else {
            mask_number(number)
        };
        tracing::warn!(
            connection = connection.id,
            provider = %key.provider,
            number = shown,
            "the other party's number is not a phone number callbridge can read; it is passed on as sent"
        );
    }

    if linked.is_empty() {
        return Ok(applied);
    }
    // A transfer joins calls (Voys: one call may take in several, one after the other): each
    // call of the group takes in the events of all the others, and the fold of each decides
    // which one the CRM shows. Linking first (from then on the other call's events come here
    // too), then taking in what the others had, makes every step idempotent, so a crash
    // between them is mended by the queue's redelivery.
    let group = joined_calls(store, &key, linked).await?;
    let mut all = own_events;
    for (_, events) in &group {
        all.extend(events.iter().cloned());
    }
    for (other_key, _) in &group {
        update(store, other_key, &mut applied, received_at, |record| {
            let linked_now = match &event.kind {
                EventKind::Merged { merged_call_key } if *merged_call_key == other_key.call_key => {
                    record.merge_into(&key)
                }
                _ => false,
            };
            linked_now | take_in(record, &all) | record.refresh(connection)
        })
        .await?;
    }
    crash_point(CrashPoint::MergeHalfWritten);
    update(store, &key, &mut applied, received_at, |record| {
        take_in(record, &all) | record.refresh(connection)
    })
    .await?;
    Ok(applied)
}

/// Takes in the events of the other calls of a transfer group. Returns whether any was new.
fn take_in(record: &mut CallRecord, group_events: &[CallEvent]) -> bool {
    let own = record.key.call_key.clone();
    group_events
        .iter()
        .filter(|e| e.call_key != own)
        .fold(false, |changed, e| record.add_merged_in(e) | changed)
}

/// The most calls transfers may join into one: past it, further calls are left out of the group
/// (each is still shown on its own), so a hostile chain of transfers cannot make one webhook
/// write without bound.
pub const MAX_JOINED_CALLS: usize = 16;

/// The calls joined to `key` by transfers, directly or through each other, with their own
/// events as stored now (none for a call not seen yet).
async fn joined_calls(
    store: &dyn CallStore,
    key: &CallKey,
    linked: Vec<String>,
) -> anyhow::Result<Vec<(CallKey, Vec<CallEvent>)>> {
    let mut group: Vec<(CallKey, Vec<CallEvent>)> = Vec::new();
    let mut to_visit = linked;
    while let Some(call) = to_visit.pop() {
        if call == key.call_key || group.iter().any(|(k, _)| k.call_key == call) {
            continue;
        }
        if group.len() + 1 >= MAX_JOINED_CALLS {
            tracing::warn!(
                call = ?key.to_path(),
                limit = MAX_JOINED_CALLS,
                "transfers join more calls than a call may have: the rest are left out"
            );
            break;
        }
        let other = CallKey::new(&key.connection_id, key.provider, &call);
        let events = match store.load(&other).await? {
            Some((record, _)) => {
                to_visit.extend(record.linked_calls());
                record.events
            }
            None => Vec::new(),
        };
        group.push((other, events));
    }
    Ok(group)
}

/// A number of the other party that is neither one of our users nor a phone number of
/// anywhere (in the connection's country): it reaches the CRM as the provider wrote it.
fn is_unreadable(connection: &Connection, number: &str) -> bool {
    connection.user_id(number).is_none() && connection.contacts.e164(number).is_none()
}

/// Lets `change` modify the call's record (a new one for a call never seen) through the store's
/// conditional update, and counts what it wrote. The revisions it emits are stamped with
/// `received_at`, the receipt of their webhook, which their delivery latency counts from.
async fn update(
    store: &dyn CallStore,
    key: &CallKey,
    applied: &mut Applied,
    received_at: Timestamp,
    mut change: impl FnMut(&mut CallRecord) -> bool + Send,
) -> anyhow::Result<()> {
    let mut emitted = false;
    let updated = store
        .update(key, &mut |record| {
            let outbox_before = record.outbox.len();
            if !change(record) {
                return false;
            }
            for revision in record.outbox.iter_mut().filter(|d| d.received_at.is_none()) {
                revision.received_at = Some(received_at);
            }
            emitted = record.outbox.len() > outbox_before;
            true
        })
        .await?;
    if updated.written {
        applied.writes += 1;
        if emitted && !applied.to_deliver.contains(key) {
            applied.to_deliver.push(key.clone());
        }
    }
    Ok(())
}
