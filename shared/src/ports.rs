//! The small traits the pipeline talks to. Adapters implement them for SQLite (the local
//! server), for AWS (DynamoDB, SQS) and for the CRM over HTTP.

use crate::domain::connection::Connection;
use crate::domain::event::{CallEvent, Provider};
use crate::domain::record::{CallKey, CallRecord, Delivery};
use crate::domain::rest::RestRequest;
use crate::domain::time::Timestamp;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What travels on the queue: the normalised event and the raw webhook, so a message can be
/// re-parsed after a bug fix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueuedWebhook {
    pub connection_id: String,
    pub received_at: Timestamp,
    pub event: CallEvent,
    pub raw: Value,
}

impl QueuedWebhook {
    pub fn provider(&self) -> Provider {
        self.event.provider
    }

    /// The call the event belongs to: the queue keeps each call's events in order.
    pub fn call(&self) -> CallKey {
        CallKey::new(
            &self.connection_id,
            self.event.provider,
            &self.event.call_key,
        )
    }
}

/// Largest queued message, as JSON: the webhook queue's `MaximumMessageSize` in
/// `template.yaml` (SQS's own maximum, 1 MiB), and the same for the local queue so both hosts
/// take the same webhooks. The ingest's body limit is derived from it.
pub const MAX_MESSAGE_BYTES: usize = 1_048_576;

/// A webhook whose queued message would be over [`MAX_MESSAGE_BYTES`]: no retry can send it.
#[derive(Debug, thiserror::Error)]
#[error("the queued message would be {bytes} bytes, over the queue's limit of {limit} bytes")]
pub struct MessageTooLarge {
    pub bytes: usize,
    pub limit: usize,
}

impl MessageTooLarge {
    /// The size refusal behind `error`, if that is what it is.
    pub fn of(error: &anyhow::Error) -> Option<&MessageTooLarge> {
        error.chain().find_map(|cause| cause.downcast_ref())
    }
}

impl QueuedWebhook {
    /// Refuses the webhook whose message [`QueuedWebhook::to_message`] would refuse, without
    /// writing the message.
    pub fn check_message_size(&self) -> Result<(), MessageTooLarge> {
        let mut counted = ByteCount(0);
        serde_json::to_writer(&mut counted, self).expect("a queued webhook serialises");
        // Escaping U+FFFE and U+FFFF (3 bytes each, 6 escaped) at most doubles a message:
        // only one that could then be over the limit is written out.
        if counted.0 * 2 > MAX_MESSAGE_BYTES {
            self.to_message()?;
        }
        Ok(())
    }

    /// The message as a queue carries it, checked against [`MAX_MESSAGE_BYTES`] before it is
    /// sent, so a queue never refuses it for its size. U+FFFE and U+FFFF, which serde_json
    /// writes as they are and SQS refuses (it takes only XML's characters), are written as
    /// JSON escapes: they can only stand inside strings, and read back the same.
    pub fn to_message(&self) -> Result<String, MessageTooLarge> {
        let json = serde_json::to_string(self).expect("a queued webhook serialises");
        let json = if json.contains(['\u{fffe}', '\u{ffff}']) {
            json.replace('\u{fffe}', "\\ufffe")
                .replace('\u{ffff}', "\\uffff")
        } else {
            json
        };
        if json.len() > MAX_MESSAGE_BYTES {
            return Err(MessageTooLarge {
                bytes: json.len(),
                limit: MAX_MESSAGE_BYTES,
            });
        }
        Ok(json)
    }

    /// The call of a queued message, read from its JSON without the payload, so it is found
    /// even in a message that does not read whole (nested too deep by an older version): to
    /// set it aside with its call, and to purge it when the call is erased.
    pub fn call_of_json(json: &str) -> Option<CallKey> {
        #[derive(Deserialize)]
        struct Message {
            connection_id: String,
            event: Event,
        }
        #[derive(Deserialize)]
        struct Event {
            provider: Provider,
            call_key: String,
        }
        // Fields not named here are skipped without recursion, however deep.
        let message: Message = serde_json::from_str(json).ok()?;
        Some(CallKey::new(
            &message.connection_id,
            message.event.provider,
            &message.event.call_key,
        ))
    }
}

/// A writer that only counts what it is given.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[async_trait]
pub trait ConnectionDirectory: Send + Sync {
    async fn connection(&self, id: &str) -> anyhow::Result<Option<Arc<Connection>>>;
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Durably queues the webhook; when this returns `Ok`, it will be processed.
    async fn enqueue(&self, webhook: &QueuedWebhook) -> anyhow::Result<()>;
}

/// A version for optimistic concurrency: a save succeeds only over the version it read.
pub type Version = u64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the call was changed by someone else since it was read")]
    Conflict,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Which calls an operator looks at (`callbridge calls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallFilter<'a> {
    All,
    /// Calls with deliveries waiting.
    Undelivered,
    /// The call of one resource id.
    Resource(&'a str),
}

/// How many times an update is tried again when another writer changed the call between its
/// read and its save: beyond that the call is too busy to be worth racing for, and the update
/// fails (the caller's retry comes back to it later).
pub const MAX_CONFLICTS: usize = 16;

/// A change to a call's record; it says whether it changed anything, since a record left as it
/// was is not written.
pub type Change<'a> = &'a mut (dyn FnMut(&mut CallRecord) -> bool + Send);

/// What an update left stored.
#[derive(Clone, Debug)]
pub struct Updated {
    pub record: CallRecord,
    /// `None`: a call never seen, that the change left alone.
    pub version: Option<Version>,
    /// Whether the change was saved.
    pub written: bool,
}

#[async_trait]
pub trait CallStore: Send + Sync {
    /// The record and its version; `None` for a call never seen.
    async fn load(&self, key: &CallKey) -> anyhow::Result<Option<(CallRecord, Version)>>;
    /// Saves the record if its version is still `read` (`None`: if it does not exist yet).
    async fn save(&self, record: &CallRecord, read: Option<Version>)
    -> Result<Version, StoreError>;

    /// Lets `change` modify the call's record (a new one for a call never seen) and saves it
    /// over the version read if it says it changed, from a fresh read when another writer got
    /// there first: two writers racing on one call lose no update.
    async fn update(&self, key: &CallKey, change: Change<'_>) -> anyhow::Result<Updated> {
        update(self, key, true, change).await
    }

    /// [`CallStore::update`] of a call that must be stored already: an error when it is gone.
    async fn update_stored(&self, key: &CallKey, change: Change<'_>) -> anyhow::Result<Updated> {
        update(self, key, false, change).await
    }
}

/// The conditional-update loop of [`CallStore::update`], written once.
async fn update<S: CallStore + ?Sized>(
    store: &S,
    key: &CallKey,
    new_when_missing: bool,
    change: Change<'_>,
) -> anyhow::Result<Updated> {
    for _ in 0..MAX_CONFLICTS {
        let (mut record, version) = match store.load(key).await? {
            Some((record, version)) => (record, Some(version)),
            None if new_when_missing => (CallRecord::new(key.clone()), None),
            None => anyhow::bail!("the call's record is gone"),
        };
        if !change(&mut record) {
            return Ok(Updated {
                record,
                version,
                written: false,
            });
        }
        match store.save(&record, version).await {
            Ok(saved) => {
                return Ok(Updated {
                    record,
                    version: Some(saved),
                    written: true,
                });
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

/// How the CRM took a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Worth trying again (5xx, 429, timeout, connection refused), after `retry_after` if the
    /// CRM said so.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot fix it (400, 401, 403, 404, 422): park it with the CRM's answer.
    Reject {
        status: u16,
        body: String,
    },
    /// A create of Morph's REST API may or may not have been taken (a timeout once sent, a
    /// 5xx, a lost answer), and sending it again could create the call twice: park it for an
    /// operator, who checks Morph (`docs/crm.md`).
    Uncertain {
        reason: String,
    },
}

/// How Morph's REST API took one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestOutcome {
    /// Taken; a create answers with the id Morph gave (`None`: its answer has none).
    Taken { id: Option<String> },
    /// Not taken, or not known to be: what to do about it, as for an event.
    NotTaken(DeliveryOutcome),
}

#[async_trait]
pub trait Crm: Send + Sync {
    /// One Morph event (connections with `delivery = "events"`).
    async fn deliver(&self, connection: &Connection, delivery: &Delivery) -> DeliveryOutcome;

    /// The destination `connection`'s deliveries go to, as its circuit breaker and rate limit
    /// know it: one CRM behind Morph (the connector) at one address. Never a secret: it is
    /// logged and stored.
    fn destination(&self, connection: &Connection) -> String {
        connection.connector_id.clone()
    }

    /// One request of Morph's REST API (connections with `delivery = "rest"`). A CRM that
    /// takes only events refuses it.
    async fn request(&self, _connection: &Connection, _request: &RestRequest) -> RestOutcome {
        RestOutcome::NotTaken(DeliveryOutcome::Reject {
            status: 501,
            body: "this CRM takes Morph events only, not REST requests".into(),
        })
    }
}

/// A connection's contact lookup (`contact_lookup_url`): the CRM contact of a phone number.
#[async_trait]
pub trait ContactLookup: Send + Sync {
    /// The contact id of `e164` (`None`: the lookup knows no contact for it); an error when
    /// the lookup could not answer.
    async fn contact(&self, connection: &Connection, e164: &str) -> anyhow::Result<Option<String>>;
}

/// A connection's activated users: extension to Morph user id.
pub type ActivatedUsers = std::sync::Arc<BTreeMap<String, String>>;

/// The users activated through Telsmart's onboarding, per connection: extension to Morph
/// user id. They join the connection's `users` directory.
#[async_trait]
pub trait UserDirectory: Send + Sync {
    /// The same `Arc` for as long as the users are unchanged (or cached), so that a reader can
    /// keep what it built from them.
    async fn activated_users(&self, connection_id: &str) -> anyhow::Result<ActivatedUsers>;
    /// Adds or replaces an extension's user.
    async fn activate(
        &self,
        connection_id: &str,
        extension: &str,
        user_id: &str,
    ) -> anyhow::Result<()>;
    /// Removes an extension; nothing happens when it was not activated.
    async fn deactivate(&self, connection_id: &str, extension: &str) -> anyhow::Result<()>;
}

/// The time, as the engine reads it: the system clock in production
/// ([`crate::adapters::clock::SystemClock`]), a set time in tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::Provider;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store where another writer changes the call between every read and save, `rivals`
    /// times in all: each of those saves meets a real conflict.
    #[derive(Default)]
    struct Contested {
        calls: Mutex<BTreeMap<CallKey, (CallRecord, Version)>>,
        rivals: AtomicUsize,
    }

    #[async_trait]
    impl CallStore for Contested {
        async fn load(&self, key: &CallKey) -> anyhow::Result<Option<(CallRecord, Version)>> {
            Ok(self.calls.lock().unwrap().get(key).cloned())
        }

        async fn save(
            &self,
            record: &CallRecord,
            read: Option<Version>,
        ) -> Result<Version, StoreError> {
            let mut calls = self.calls.lock().unwrap();
            if self
                .rivals
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
                && let Some((stored, version)) = calls.get_mut(&record.key)
            {
                stored.revision += 1;
                *version += 1;
            }
            let current = calls.get(&record.key).map(|(_, v)| *v);
            if current != read {
                return Err(StoreError::Conflict);
            }
            let version = read.unwrap_or(0) + 1;
            calls.insert(record.key.clone(), (record.clone(), version));
            Ok(version)
        }
    }

    fn key() -> CallKey {
        CallKey::new("acme", Provider::Voys, "call-1")
    }

    async fn stored(rivals: usize) -> Contested {
        let store = Contested::default();
        store
            .save(&CallRecord::new(key()), None)
            .await
            .expect("a first save");
        store.rivals.store(rivals, Ordering::SeqCst);
        store
    }

    #[tokio::test]
    async fn a_change_is_made_again_over_what_a_rival_wrote_and_loses_nothing() {
        let store = stored(3).await;
        let mut tries = 0;
        let updated = store
            .update(&key(), &mut |record| {
                tries += 1;
                record.revision += 100;
                true
            })
            .await
            .expect("an update within the conflict limit");
        assert_eq!(tries, 4);
        assert!(updated.written);
        // The rivals' three writes and ours, all kept.
        assert_eq!(store.load(&key()).await.unwrap().unwrap().0.revision, 103);
        assert_eq!(updated.record.revision, 103);
    }

    #[tokio::test]
    async fn a_call_that_keeps_changing_fails_after_the_conflict_limit() {
        let store = stored(MAX_CONFLICTS).await;
        let mut tries = 0;
        let error = store
            .update(&key(), &mut |record| {
                tries += 1;
                record.revision += 100;
                true
            })
            .await
            .expect_err("more conflicts than the limit");
        assert_eq!(tries, MAX_CONFLICTS);
        assert!(
            error.to_string().contains("kept changing under us"),
            "{error}"
        );
        assert_eq!(
            store.load(&key()).await.unwrap().unwrap().0.revision,
            MAX_CONFLICTS as u64
        );
    }

    #[tokio::test]
    async fn a_call_never_seen_is_new_to_update_and_missing_to_update_stored() {
        let store = Contested::default();
        let other = CallKey::new("acme", Provider::Voys, "call-2");
        let error = store
            .update_stored(&other, &mut |_| true)
            .await
            .expect_err("nothing stored");
        assert!(error.to_string().contains("gone"), "{error}");
        assert!(store.load(&other).await.unwrap().is_none());

        let left = store.update(&other, &mut |_| false).await.unwrap();
        assert!(!left.written && left.version.is_none());
        assert!(store.load(&other).await.unwrap().is_none());

        let made = store.update(&other, &mut |_| true).await.unwrap();
        assert!(made.written);
        assert_eq!(made.version, Some(1));
        assert_eq!(store.load(&other).await.unwrap().unwrap().1, 1);
    }
}
