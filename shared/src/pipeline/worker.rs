//! The worker step: a queued event joins its call's record, the record emits a new revision if
//! the resource changed, and Voys merges move one call into another. Every write is a
//! conditional save over the version read, retried on conflict, so two workers racing on one
//! call lose no update; every step is idempotent, so a message processed twice changes nothing.

use super::contacts::look_up;
use super::crash::{CrashPoint, crash_point};
use crate::domain::connection::Connection;
use crate::domain::event::EventKind;
use crate::domain::record::{CallKey, CallRecord};
use crate::domain::time::Timestamp;
use crate::ports::{CallStore, ContactLookup, QueuedWebhook, StoreError};

/// How many times a save is retried when another worker changed the call meanwhile.
const MAX_CONFLICTS: usize = 16;

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
        let mut erased = false;
        update(store, &key, &mut applied, received_at, |record| {
            erased = record.erase(received_at);
            erased
        })
        .await?;
        if erased {
            crash_point(CrashPoint::ErasureHalfDone);
        }
        applied.new_event = erased;
        return Ok(applied);
    }

    // The event joins its own call; a call merged away passes it on to the survivor.
    let contact = look_up(contacts, connection, event).await;
    let mut new_event = false;
    let mut survivor = None;
    update(store, &key, &mut applied, received_at, |record| {
        new_event = record.add_event(event);
        survivor.clone_from(&record.merged_into);
        let looked_up = contact.as_ref().is_some_and(|(e164, contact_id)| {
            record.add_contact_lookup(e164, contact_id.as_deref())
        });
        new_event | looked_up | record.refresh(connection)
    })
    .await?;
    applied.new_event = new_event;
    if let Some(survivor) = survivor {
        let survivor = CallKey::new(&key.connection_id, key.provider, &survivor);
        update(store, &survivor, &mut applied, received_at, |record| {
            record.add_merged_in(event) | record.refresh(connection)
        })
        .await?;
    }

    if let EventKind::Merged { merged_call_key } = &event.kind {
        // First discard the merged call (from then on its late events come here), then take
        // in what it had. Both steps are idempotent, so a crash between them is mended by the
        // queue's redelivery.
        let merged = CallKey::new(&key.connection_id, key.provider, merged_call_key);
        let mut merged_events = Vec::new();
        update(store, &merged, &mut applied, received_at, |record| {
            merged_events = record.events.clone();
            record.merge_into(&key)
        })
        .await?;
        crash_point(CrashPoint::MergeHalfWritten);
        update(store, &key, &mut applied, received_at, |record| {
            merged_events
                .iter()
                .fold(false, |changed, e| record.add_merged_in(e) | changed)
                | record.refresh(connection)
        })
        .await?;
    }
    Ok(applied)
}

/// Loads (or creates) a record, lets `change` modify it, and saves it if it says it changed,
/// retrying from a fresh read when another writer got there first. The revisions it emits are
/// stamped with `received_at`, the receipt of their webhook, which their delivery latency
/// counts from.
async fn update(
    store: &dyn CallStore,
    key: &CallKey,
    applied: &mut Applied,
    received_at: Timestamp,
    mut change: impl FnMut(&mut CallRecord) -> bool,
) -> anyhow::Result<()> {
    for _ in 0..MAX_CONFLICTS {
        let (mut record, version) = match store.load(key).await? {
            Some((record, version)) => (record, Some(version)),
            None => (CallRecord::new(key.clone()), None),
        };
        let outbox_before = record.outbox.len();
        if !change(&mut record) {
            return Ok(());
        }
        for emitted in record.outbox.iter_mut().filter(|d| d.received_at.is_none()) {
            emitted.received_at = Some(received_at);
        }
        match store.save(&record, version).await {
            Ok(_) => {
                applied.writes += 1;
                if record.outbox.len() > outbox_before && !applied.to_deliver.contains(key) {
                    applied.to_deliver.push(key.clone());
                }
                return Ok(());
            }
            Err(StoreError::Conflict) => continue,
            Err(StoreError::Other(e)) => return Err(e),
        }
    }
    anyhow::bail!(
        "call {} kept changing under us ({MAX_CONFLICTS} conflicts)",
        key.to_path()
    )
}
