//! The local server's durable store: the queue, the call records and the parked deliveries in
//! one SQLite file.
//!
//! Writes go through one thread that owns the only write connection and commits every write
//! waiting for it in one transaction (group commit): a commit's fixed cost is paid once per
//! batch rather than per webhook, and writers never wait on SQLite's lock. Reads use a small pool
//! of connections that WAL lets run beside the writer. No SQLite call runs on the async
//! runtime: writes run on the writer thread, reads on `spawn_blocking`.
//!
//! Durability: WAL with `synchronous = NORMAL`, and nobody hears of a write before its commit.
//! A commit is then in the WAL file, which the operating system writes out whether or not
//! callbridge lives on: a webhook answered 202 survives `kill -9`, a panic or the OOM killer.
//! What NORMAL gives up is an operating-system crash or a power cut, which can lose the
//! commits since the last checkpoint (a fraction of a second; never a corrupt file). `FULL`
//! would sync the WAL on every commit; measured here with 16 concurrent enqueues it took the
//! p99 of one enqueue from 0.2-4 ms to 28-43 ms and throughput from 70,000+ to 2,500-9,000 a
//! second, most of the 50 ms end-to-end budget for a risk a local server rarely runs.
//!
//! Checkpoints run on a thread of their own (`Checkpointer`): SQLite's automatic ones run
//! inside a commit and made the slowest commits ten times slower.

mod transaction;
mod users;

pub use transaction::Transaction;

use crate::domain::event::Provider;
use crate::domain::record::{CallKey, CallRecord, RecordError};
use crate::domain::time::Timestamp;
use crate::ports::{CallFilter, CallStore, Queue, QueuedWebhook, StoreError, Version};
use anyhow::{Context, anyhow};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

/// The schema version this code reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
-- AUTOINCREMENT: a sequence number is never reused, so a reader that remembers the last one it
-- took never skips a message queued after the queue ran empty.
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    connection_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    call_key TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    undelivered INTEGER NOT NULL, -- whether the outbox holds a delivery
    record TEXT NOT NULL,
    PRIMARY KEY (connection_id, provider, call_key)
);
CREATE INDEX IF NOT EXISTS calls_undelivered ON calls (resource_id) WHERE undelivered;
-- At most one per call: the call's later deliveries wait behind it.
CREATE TABLE IF NOT EXISTS parked (
    resource_id TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    crm_status INTEGER,
    crm_answer TEXT,
    parked_at INTEGER NOT NULL
);
-- Webhooks set aside because they can never be applied as they are: the message does not read,
-- or its call's record does not read or would be too large. Each on its own: the queue goes on.
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    webhook TEXT NOT NULL,
    resource_id TEXT, -- NULL: the message does not read, so its call is not known
    reason TEXT NOT NULL,
    parked_at INTEGER NOT NULL
);
-- Telsmart users activated through the onboarding requests (`users.rs`).
CREATE TABLE IF NOT EXISTS activated_users (
    connection_id TEXT NOT NULL,
    extension TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (connection_id, extension)
);
";

/// How long a connection waits for another process (`callbridge deliveries retry`) holding
/// the write lock.
const BUSY_TIMEOUT_MS: u32 = 5_000;
/// Writes waiting for the writer; past this, writers wait for room (backpressure).
const PENDING_WRITES: usize = 8_192;
/// Most writes in one transaction, so one batch never delays its first write for long.
const MAX_BATCH: usize = 1_024;
/// Read connections, each read on a thread of its own while it runs.
const READERS: usize = 4;
/// How often the WAL is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// Records kept in memory: enough for the calls going on at once.
const CACHED_RECORDS: usize = 4_096;

/// A queued webhook and its place in the queue.
#[derive(Debug)]
pub struct QueuedMessage {
    pub seq: i64,
    /// An error when the stored message cannot be read back (written by another version), with
    /// its call when that much reads.
    pub webhook: Result<QueuedWebhook, (serde_json::Error, Option<CallKey>)>,
}

impl QueuedMessage {
    /// The call of the message, when that much reads.
    pub fn call(&self) -> Option<CallKey> {
        match &self.webhook {
            Ok(webhook) => Some(webhook.call()),
            Err((_, call)) => call.clone(),
        }
    }
}

/// The worker's end of the in-memory hand-over, once it has one.
#[derive(Clone, Default)]
struct HandOver(Arc<Mutex<Option<mpsc::Sender<QueuedMessage>>>>);

impl HandOver {
    /// Whether the message was handed over; not when there is no room (the worker is behind
    /// and reads the queue) or nobody to take it.
    fn give(&self, message: QueuedMessage) -> bool {
        let to = self.0.lock().expect("hand-over lock");
        to.as_ref().is_some_and(|to| to.try_send(message).is_ok())
    }
}

/// A delivery set aside: the CRM refused it, or it could not be delivered in the attempts
/// allowed. Its call's later deliveries wait behind it until it is un-parked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedDelivery {
    pub resource_id: String,
    pub revision: u64,
    pub idempotency_key: String,
    pub reason: String,
    /// The CRM's HTTP status, when it refused the delivery.
    pub crm_status: Option<u16>,
    /// The CRM's answer, when it refused the delivery.
    pub crm_answer: Option<String>,
    pub parked_at: Timestamp,
}

/// A queued webhook set aside ([`SqliteStore::set_aside`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub seq: i64,
    /// `None` when the message does not read.
    pub resource_id: Option<String>,
    pub reason: String,
    pub parked_at: Timestamp,
}

/// What `/health` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreHealth {
    /// Webhooks not applied yet.
    pub queued: u64,
    /// Calls with deliveries to make, parked ones aside.
    pub undelivered_calls: u64,
    /// Parked deliveries.
    pub parked: u64,
    /// Webhooks set aside, which need an operator.
    pub dead_letters: u64,
}

pub struct SqliteStore {
    writer: Writer,
    _checkpointer: Checkpointer,
    readers: Arc<Readers>,
    records: RecordCache,
    /// Every resource id with a parked delivery, and maybe some un-parked since by another
    /// process (which only un-parks): a call not in it needs no read to know it is not parked.
    maybe_parked: Mutex<HashSet<String>>,
    /// The activated users of each connection read so far; this store is their only writer.
    activated_users: users::Cache,
    /// Where a webhook goes, in memory, once its insert is committed: the worker's reader.
    hand_over: HandOver,
    /// Wakes the worker's reader to read the queue: a webhook was queued that it was not
    /// handed in memory.
    queued: Arc<Notify>,
    /// Set when an erasure is done: the checkpointer then empties the WAL file.
    erased: Arc<AtomicBool>,
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`, creating its folder if needed.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        let path = path.to_path_buf();
        let (connection, checkpoints, parked, path) = tokio::task::spawn_blocking(move || {
            let connection = open_writer(&path)
                .with_context(|| format!("cannot open the data file {}", path.display()))?;
            let checkpoints = open_connection(&path)?;
            let parked = parked_resources(&connection)?;
            anyhow::Ok((connection, checkpoints, parked, path))
        })
        .await??;
        let erased = Arc::new(AtomicBool::new(false));
        Ok(Self {
            writer: Writer::start(connection)?,
            _checkpointer: Checkpointer::start(checkpoints, Arc::clone(&erased))?,
            erased,
            readers: Arc::new(Readers {
                path,
                idle: Mutex::default(),
                running: Semaphore::new(READERS),
            }),
            records: RecordCache::default(),
            maybe_parked: Mutex::new(parked),
            activated_users: users::Cache::builder().build(),
            hand_over: HandOver::default(),
            queued: Arc::new(Notify::new()),
        })
    }

    /// Resolves when a webhook was queued that was not handed over in memory since the last
    /// call (or now, if one was): the queue has to be read.
    pub async fn queued(&self) {
        self.queued.notified().await;
    }

    /// The webhooks queued from now on, each handed over as its insert commits, in queue
    /// order, so the worker need not read them back. One that does not fit is not handed over
    /// ([`SqliteStore::queued`] resolves instead): the queue keeps it. A later call takes the
    /// hand-over from an earlier one.
    pub fn hand_over(&self, capacity: usize) -> mpsc::Receiver<QueuedMessage> {
        let (sender, receiver) = mpsc::channel(capacity);
        *self.hand_over.0.lock().expect("hand-over lock") = Some(sender);
        receiver
    }

    /// Up to `limit` queued messages after `after`, oldest first.
    pub async fn next_queued(
        &self,
        after: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<QueuedMessage>> {
        let rows = self
            .readers
            .read(move |c| {
                c.prepare_cached(
                    "SELECT seq, webhook FROM queue WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![after, limit], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, json)| QueuedMessage {
                seq,
                webhook: serde_json::from_str(&json)
                    .map_err(|e| (e, QueuedWebhook::call_of_json(&json))),
            })
            .collect())
    }

    /// Removes the processed messages: every one up to `last`, but those in `kept` (which wait
    /// for a restart). Done for many messages at once, after they are processed, so a crash
    /// before it only has them processed again, which changes nothing.
    pub async fn remove_queued_through(&self, last: i64, kept: &[i64]) -> anyhow::Result<()> {
        let kept = serde_json::to_string(kept)?;
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "DELETE FROM queue WHERE seq <= ?1 \
                     AND seq NOT IN (SELECT value FROM json_each(?2))",
                )?
                .execute(params![last, kept])
            })
            .await?;
        Ok(())
    }

    /// Moves a queued webhook that can never be applied as it is to the dead letters, with why,
    /// so that the queue goes on without it; `deliveries retry` queues it again. Whether it
    /// was moved.
    pub async fn set_aside(
        &self,
        seq: i64,
        resource_id: Option<String>,
        reason: String,
        parked_at: Timestamp,
    ) -> bool {
        let parked_at = parked_at.as_micros();
        let moved = self.writer.write(move |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO dead_letters (seq, webhook, resource_id, reason, parked_at) \
                 SELECT seq, webhook, ?2, ?3, ?4 FROM queue WHERE seq = ?1",
            )?
            .execute(params![seq, resource_id, reason, parked_at])?;
            c.prepare_cached("DELETE FROM queue WHERE seq = ?1")?.execute([seq])
        });
        moved
            .await
            .inspect_err(|e| tracing::error!(seq, error = %e, "cannot set a webhook aside; it stays in the queue until a restart"))
            .is_ok()
    }

    /// The webhooks set aside, oldest first.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        self.readers
            .read(|c| {
                c.prepare_cached(
                    "SELECT seq, resource_id, reason, parked_at FROM dead_letters ORDER BY seq",
                )?
                .query_map([], |row| {
                    let parked_at = Timestamp::from_micros(row.get(3)?).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            3,
                            rusqlite::types::Type::Integer,
                            e.into(),
                        )
                    })?;
                    Ok(DeadLetter {
                        seq: row.get(0)?,
                        resource_id: row.get(1)?,
                        reason: row.get(2)?,
                        parked_at,
                    })
                })?
                .collect()
            })
            .await
    }

    /// Queues the webhooks set aside again (those of one call, or all), at the end of the
    /// queue in their order; returns how many.
    pub async fn requeue_dead_letters(&self, resource_id: Option<&str>) -> anyhow::Result<usize> {
        let resource_id = resource_id.map(str::to_owned);
        let moved = self
            .writer
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO queue (webhook) SELECT webhook FROM dead_letters \
                     WHERE ?1 IS NULL OR resource_id = ?1 ORDER BY seq",
                )?
                .execute([&resource_id])?;
                c.prepare_cached("DELETE FROM dead_letters WHERE ?1 IS NULL OR resource_id = ?1")?
                    .execute([&resource_id])
            })
            .await?;
        self.queued.notify_one();
        Ok(moved)
    }

    /// Forgets what the store keeps of an erased call besides its record: its parked delivery
    /// (the CRM's answer may quote the call) and its webhooks set aside (raw payloads).
    pub async fn forget_erased(&self, resource_id: &str) -> anyhow::Result<()> {
        let id = resource_id.to_owned();
        self.writer
            .write(move |c| {
                c.prepare_cached("DELETE FROM parked WHERE resource_id = ?1")?
                    .execute([&id])?;
                c.prepare_cached("DELETE FROM dead_letters WHERE resource_id = ?1")?
                    .execute([&id])
            })
            .await?;
        Ok(())
    }

    /// Calls with deliveries waiting that are not parked.
    pub async fn undelivered_calls(&self) -> anyhow::Result<Vec<CallKey>> {
        self.readers
            .read(|c| {
                c.prepare_cached(
                    "SELECT connection_id, provider, call_key FROM calls \
                     WHERE undelivered AND resource_id NOT IN (SELECT resource_id FROM parked)",
                )?
                .query_map([], call_key)?
                .collect()
            })
            .await
    }

    /// Up to `limit` calls, the latest first, as the file holds them: operators' commands may
    /// run beside a server, whose writes this process's cache would not see. A record that does
    /// not read is listed as such, with its key, so that it can still be erased.
    pub async fn stored_calls(
        &self,
        filter: CallFilter<'_>,
        limit: usize,
    ) -> anyhow::Result<Vec<Result<CallRecord, RecordError>>> {
        let (resource_id, undelivered_only) = match filter {
            CallFilter::All => (None, false),
            CallFilter::Undelivered => (None, true),
            CallFilter::Resource(id) => (Some(id.to_owned()), false),
        };
        let rows = self
            .readers
            .read(move |c| {
                c.prepare_cached(
                    "SELECT connection_id, provider, call_key, record, version FROM calls \
                     WHERE (?1 IS NULL OR resource_id = ?1) \
                     AND (NOT ?2 OR undelivered) ORDER BY rowid DESC LIMIT ?3",
                )?
                .query_map(params![resource_id, undelivered_only, limit], |row| {
                    Ok((call_key(row)?, row.get::<_, String>(3)?, row.get(4)?))
                })?
                .collect::<rusqlite::Result<Vec<(CallKey, String, Version)>>>()
            })
            .await?;
        Ok(rows
            .iter()
            .map(|(key, json, version)| CallRecord::from_stored_json(json, key, *version))
            .collect())
    }

    /// Parks a delivery; it replaces whatever was parked for its call.
    pub async fn park(&self, parked: ParkedDelivery) -> anyhow::Result<()> {
        self.maybe_parked
            .lock()
            .expect("parked lock")
            .insert(parked.resource_id.clone());
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO parked (resource_id, revision, idempotency_key, \
                     reason, crm_status, crm_answer, parked_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    parked.resource_id,
                    parked.revision,
                    parked.idempotency_key,
                    parked.reason,
                    parked.crm_status,
                    parked.crm_answer,
                    parked.parked_at.as_micros(),
                ])
            })
            .await
            .map(drop)
    }

    /// Whether the call of `resource_id` has a parked delivery.
    pub async fn is_parked(&self, resource_id: &str) -> anyhow::Result<bool> {
        if !self
            .maybe_parked
            .lock()
            .expect("parked lock")
            .contains(resource_id)
        {
            return Ok(false);
        }
        let key = resource_id.to_owned();
        let parked = self
            .readers
            .read(move |c| {
                c.prepare_cached("SELECT 1 FROM parked WHERE resource_id = ?1")?
                    .exists([key])
            })
            .await?;
        if !parked {
            self.maybe_parked
                .lock()
                .expect("parked lock")
                .remove(resource_id);
        }
        Ok(parked)
    }

    /// Every parked delivery, oldest first.
    pub async fn parked_deliveries(&self) -> anyhow::Result<Vec<ParkedDelivery>> {
        self.readers
            .read(|c| {
                c.prepare_cached(
                    "SELECT resource_id, revision, idempotency_key, reason, crm_status, \
                     crm_answer, parked_at FROM parked ORDER BY parked_at, resource_id",
                )?
                .query_map([], parked_delivery)?
                .collect()
            })
            .await
    }

    /// Un-parks the delivery of one resource, or all of them; returns how many. The running
    /// server finds them at its next look for undelivered calls.
    pub async fn unpark(&self, resource_id: Option<&str>) -> anyhow::Result<usize> {
        let resource_id = resource_id.map(str::to_owned);
        self.writer
            .write(move |c| {
                c.prepare_cached("DELETE FROM parked WHERE ?1 IS NULL OR resource_id = ?1")?
                    .execute([resource_id])
            })
            .await
    }

    /// What the store holds; an error when it cannot be read or written.
    pub async fn health(&self) -> anyhow::Result<StoreHealth> {
        anyhow::ensure!(!self.writer.jobs.is_closed(), "the SQLite writer stopped");
        self.readers
            .read(|c| {
                c.query_row(
                    "SELECT (SELECT count(*) FROM queue), \
                     (SELECT count(*) FROM calls WHERE undelivered \
                      AND resource_id NOT IN (SELECT resource_id FROM parked)), \
                     (SELECT count(*) FROM parked), (SELECT count(*) FROM dead_letters)",
                    [],
                    |row| {
                        Ok(StoreHealth {
                            queued: row.get(0)?,
                            undelivered_calls: row.get(1)?,
                            parked: row.get(2)?,
                            dead_letters: row.get(3)?,
                        })
                    },
                )
            })
            .await
    }
}

#[async_trait]
impl Queue for SqliteStore {
    async fn enqueue(&self, webhook: &QueuedWebhook) -> anyhow::Result<()> {
        self.queue(webhook).await.map(drop)
    }
}

impl SqliteStore {
    /// Queues the webhook durably; returns its place in the queue.
    pub async fn queue(&self, webhook: &QueuedWebhook) -> anyhow::Result<i64> {
        let json = webhook.to_message()?;
        let hand_over = self.hand_over.clone();
        let queued = Arc::clone(&self.queued);
        let webhook = webhook.clone();
        self.writer
            .write_then(
                move |c| {
                    c.prepare_cached("INSERT INTO queue (webhook) VALUES (?1)")?
                        .execute([json])?;
                    Ok(c.last_insert_rowid())
                },
                // On the writer's thread, as the commit's writes are answered in order: the
                // reader gets the queue's order.
                move |&seq| {
                    if !hand_over.give(QueuedMessage {
                        seq,
                        webhook: Ok(webhook),
                    }) {
                        queued.notify_one();
                    }
                },
            )
            .await
    }
}

#[async_trait]
impl CallStore for SqliteStore {
    async fn load(&self, key: &CallKey) -> anyhow::Result<Option<(CallRecord, Version)>> {
        if let Some(cached) = self.records.get(key) {
            return Ok(Some(cached));
        }
        let path = key.clone();
        let found = self
            .readers
            .read(move |c| {
                let key = path;
                c.prepare_cached(
                    "SELECT record, version FROM calls \
                     WHERE connection_id = ?1 AND provider = ?2 AND call_key = ?3",
                )?
                .query_row(
                    params![key.connection_id, key.provider.as_str(), key.call_key],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, Version>(1)?)),
                )
                .optional()
            })
            .await?;
        let Some((json, version)) = found else {
            return Ok(None);
        };
        let record = CallRecord::from_stored_json(&json, key, version)?;
        self.records.offer(&record, version);
        Ok(Some((record, version)))
    }

    async fn save(
        &self,
        record: &CallRecord,
        read: Option<Version>,
    ) -> Result<Version, StoreError> {
        let row = RecordRow::of(record, read).map_err(anyhow::Error::from)?;
        let written = self
            .writer
            .write(move |c| row.write(c))
            .await
            .inspect_err(|_| self.records.forget(&record.key))?;
        if !written {
            self.records.forget(&record.key);
            return Err(StoreError::Conflict);
        }
        let version = read.map_or(1, |version| version + 1);
        self.saved(record, version);
        Ok(version)
    }
}

impl SqliteStore {
    /// Saves every record over the version read, in one write: all of them, or none when one
    /// of them changed since it was read (a conflict).
    async fn save_all(
        &self,
        records: Vec<(CallRecord, Option<Version>)>,
    ) -> Result<(), StoreError> {
        let rows = records
            .iter()
            .map(|(record, read)| RecordRow::of(record, *read))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::from)?;
        let written = self
            .writer
            .write(move |c| {
                c.execute_batch("SAVEPOINT records")?;
                let mut all = Ok(true);
                for row in &rows {
                    all = row.write(c);
                    if all != Ok(true) {
                        break;
                    }
                }
                if all == Ok(true) {
                    c.execute_batch("RELEASE records")?;
                } else {
                    c.execute_batch("ROLLBACK TO records; RELEASE records")?;
                }
                all
            })
            .await;
        match written {
            Ok(true) => {
                for (record, read) in &records {
                    self.saved(record, read.map_or(1, |version| version + 1));
                }
                Ok(())
            }
            written => {
                for (record, _) in &records {
                    self.records.forget(&record.key);
                }
                Err(written.map_or_else(StoreError::from, |_| StoreError::Conflict))
            }
        }
    }

    fn saved(&self, record: &CallRecord, version: Version) {
        self.records.offer(record, version);
        if record.erased_at.is_some() && record.outbox.is_empty() {
            // The call's earlier versions are still in the WAL's old frames.
            self.erased.store(true, Ordering::Relaxed);
        }
    }
}

/// A record as its row stores it, ready to be written over the version read.
struct RecordRow {
    key: CallKey,
    resource_id: String,
    undelivered: bool,
    json: String,
    read: Option<Version>,
}

impl RecordRow {
    fn of(record: &CallRecord, read: Option<Version>) -> Result<Self, RecordError> {
        Ok(Self {
            key: record.key.clone(),
            resource_id: record.resource_id.clone(),
            undelivered: !record.outbox.is_empty(),
            json: record.to_stored_json()?,
            read,
        })
    }

    /// Whether it was written: not when the stored version is not the one read.
    fn write(&self, c: &Connection) -> rusqlite::Result<bool> {
        let key = &self.key;
        let provider = key.provider.as_str();
        let written = match self.read {
            None => c
                .prepare_cached(
                    "INSERT INTO calls (connection_id, provider, call_key, resource_id, \
                     version, undelivered, record) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6) \
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    key.connection_id,
                    provider,
                    key.call_key,
                    self.resource_id,
                    self.undelivered,
                    self.json
                ])?,
            Some(version) => c
                .prepare_cached(
                    "UPDATE calls SET version = version + 1, undelivered = ?5, record = ?6 \
                     WHERE connection_id = ?1 AND provider = ?2 AND call_key = ?3 \
                     AND version = ?4",
                )?
                .execute(params![
                    key.connection_id,
                    provider,
                    key.call_key,
                    version,
                    self.undelivered,
                    self.json
                ])?,
        };
        Ok(written == 1)
    }
}

/// The records this process last saved or read, so that the worker and the delivery task
/// seldom read one back. Only the server writes records (`callbridge deliveries` touches parked
/// deliveries only), so an entry is the stored record for as long as it is kept; should another
/// process write one anyway, the conditional save finds the entry stale and drops it. A newer
/// version always wins, so a read racing a save never brings an older record back.
///
/// Two generations of at most [`CACHED_RECORDS`] / 2 records each: when the young one is full
/// it becomes the old one, and the old one goes; a record found in the old one moves back to
/// the young one. So what was used in the last [`CACHED_RECORDS`] / 2 accesses stays, at the
/// price of a hash map lookup or two (a general cache's bookkeeping cost the local server more
/// CPU than its SQLite reads saved).
struct RecordCache {
    generations: Mutex<Generations>,
    /// Records in one generation.
    generation: usize,
}

type Entry = (Arc<CallRecord>, Version);

#[derive(Default)]
struct Generations {
    young: HashMap<CallKey, Entry>,
    old: HashMap<CallKey, Entry>,
}

impl Default for RecordCache {
    fn default() -> Self {
        Self::holding(CACHED_RECORDS)
    }
}

impl RecordCache {
    fn holding(records: usize) -> Self {
        Self {
            generations: Mutex::default(),
            generation: records / 2,
        }
    }

    fn get(&self, key: &CallKey) -> Option<(CallRecord, Version)> {
        let (record, version) = self.lock().young_entry(key, self.generation)?.clone();
        Some((CallRecord::clone(&record), version))
    }

    fn offer(&self, record: &CallRecord, version: Version) {
        let offered = (Arc::new(record.clone()), version);
        let mut generations = self.lock();
        match generations.young_entry(&record.key, self.generation) {
            Some(cached) if cached.1 >= version => {}
            Some(cached) => *cached = offered,
            None => generations.insert(record.key.clone(), offered, self.generation),
        }
    }

    fn forget(&self, key: &CallKey) {
        let mut generations = self.lock();
        generations.young.remove(key);
        generations.old.remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.generations.lock().expect("record cache lock")
    }
}

impl Generations {
    /// The entry of `key`, moved to the young generation if it was in the old one.
    fn young_entry(&mut self, key: &CallKey, generation: usize) -> Option<&mut Entry> {
        if let Some(entry) = self.old.remove(key) {
            self.insert(key.clone(), entry, generation);
        }
        self.young.get_mut(key)
    }

    fn insert(&mut self, key: CallKey, entry: Entry, generation: usize) {
        if self.young.len() >= generation {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, entry);
    }
}

fn call_key(row: &Row<'_>) -> rusqlite::Result<CallKey> {
    let provider: String = row.get(1)?;
    let provider: Provider = provider.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(CallKey::new(
        &row.get::<_, String>(0)?,
        provider,
        &row.get::<_, String>(2)?,
    ))
}

fn parked_delivery(row: &Row<'_>) -> rusqlite::Result<ParkedDelivery> {
    let parked_at = Timestamp::from_micros(row.get(6)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Integer, e.into())
    })?;
    Ok(ParkedDelivery {
        resource_id: row.get(0)?,
        revision: row.get(1)?,
        idempotency_key: row.get(2)?,
        reason: row.get(3)?,
        crm_status: row.get(4)?,
        crm_answer: row.get(5)?,
        parked_at,
    })
}

fn parked_resources(connection: &Connection) -> rusqlite::Result<HashSet<String>> {
    connection
        .prepare("SELECT resource_id FROM parked")?
        .query_map([], |row| row.get(0))?
        .collect()
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS.into()))?;
    Ok(connection)
}

fn open_writer(path: &Path) -> anyhow::Result<Connection> {
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(folder)?;
    }
    create_private_file(path)?;
    let connection = open_connection(path)?;
    // Deleted content (an erased call, an applied webhook) is overwritten, not left in free
    // pages; the WAL's old frames go with a TRUNCATE checkpoint (`Checkpointer`).
    connection.execute_batch("PRAGMA secure_delete = ON")?;
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    anyhow::ensure!(mode == "wal", "SQLite refused WAL mode (got `{mode}`)");
    connection.execute_batch("PRAGMA synchronous = NORMAL")?;
    // The checkpointer does it, off the commit path.
    connection.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    anyhow::ensure!(
        version <= SCHEMA_VERSION,
        "the data file was written by a newer callbridge (schema {version})"
    );
    connection.execute_batch(SCHEMA)?;
    connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(connection)
}

/// The data file's folder, readable by its owner only (0700) when callbridge creates it.
fn create_private_dir(folder: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(folder)
}

/// The data file, created 0600: it holds phone numbers. SQLite creates its `-wal` and `-shm`
/// files with the same permissions.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}

/// The read connections, opened as needed and kept for reuse.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Reads running at once: more only add threads and connections, not speed.
    running: Semaphore,
}

impl Readers {
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self.running.acquire().await?;
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let connection = readers.take()?;
            let result = query(&connection);
            readers.put_back(connection);
            Ok(result?)
        })
        .await?
    }

    fn take(&self) -> anyhow::Result<Connection> {
        if let Some(connection) = self.idle.lock().expect("readers lock").pop() {
            return Ok(connection);
        }
        let connection = open_connection(&self.path)?;
        connection.execute_batch("PRAGMA query_only = ON")?;
        Ok(connection)
    }

    fn put_back(&self, connection: Connection) {
        self.idle.lock().expect("readers lock").push(connection);
    }
}

/// One write, run in the writer's transaction (`None`: the transaction is already lost). What
/// it returns is called once the transaction is over, with whether it committed, so that
/// nobody hears of a write before it is committed.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Reply + Send>;
type Reply = Box<dyn FnOnce(Result<(), &str>) + Send>;

/// The thread that owns the write connection.
struct Writer {
    jobs: mpsc::Sender<Job>,
    /// Commits what it was given once `jobs` is dropped, then closes the connection.
    _thread: JoinOnDrop,
}

impl Writer {
    fn start(connection: Connection) -> anyhow::Result<Self> {
        let (jobs, queue) = mpsc::channel(PENDING_WRITES);
        Ok(Self {
            jobs,
            _thread: spawn("sqlite-writer", move || write_batches(&connection, queue))?,
        })
    }

    /// Runs `write` in the next transaction and returns its result once committed.
    async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.write_then(write, |_| {}).await
    }

    /// [`Writer::write`], with `committed` called on the writer's thread once the write is
    /// committed, before the caller hears of it; writes are answered in commit order.
    async fn write_then<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        committed: impl FnOnce(&T) + Send + 'static,
    ) -> anyhow::Result<T> {
        let (done, outcome) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let result = connection.map(write);
            Box::new(move |commit| {
                if let (Some(Ok(written)), Ok(())) = (&result, commit) {
                    committed(written);
                }
                let _ = done.send(match (result, commit) {
                    (Some(result), Ok(())) => result.map_err(anyhow::Error::from),
                    (_, Err(why)) => Err(anyhow!("the write was not committed: {why}")),
                    (None, Ok(())) => Err(anyhow!("the write was not run")),
                });
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| anyhow!("the SQLite writer stopped"))?;
        outcome
            .await
            .map_err(|_| anyhow!("the SQLite writer stopped"))?
    }
}

/// Checkpoints the WAL into the database beside the writer, so that commits never wait for a
/// checkpoint (SQLite's automatic one runs inside a commit: the slowest commits by far).
struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
    _thread: JoinOnDrop,
}

impl Checkpointer {
    /// `erased`: set when an erasure is done, to empty the WAL file.
    fn start(connection: Connection, erased: Arc<AtomicBool>) -> anyhow::Result<Self> {
        let (stop, stopped) = std::sync::mpsc::channel();
        let checkpoint = move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                let truncate = erased.swap(false, Ordering::Relaxed);
                // PASSIVE: copies what no reader still needs, without holding up anyone. After
                // an erasure, TRUNCATE: the WAL is emptied, so the erased call's old versions
                // are in no file; tried again until no reader holds it up.
                let mode = if truncate { "TRUNCATE" } else { "PASSIVE" };
                let done =
                    connection.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
                        row.get::<_, i64>(0)
                    });
                match done {
                    // Held up by a reader: the same again next time.
                    Ok(busy) if truncate && busy != 0 => erased.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot checkpoint the data file's WAL"),
                }
            }
        };
        Ok(Self {
            _stop: stop,
            _thread: spawn("sqlite-checkpoint", checkpoint)?,
        })
    }
}

/// A thread joined when dropped: declared after what tells it to stop, it is joined once that
/// is dropped.
struct JoinOnDrop(Option<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

fn spawn(name: &str, run: impl FnOnce() + Send + 'static) -> std::io::Result<JoinOnDrop> {
    let thread = std::thread::Builder::new().name(name.into()).spawn(run)?;
    Ok(JoinOnDrop(Some(thread)))
}

fn write_batches(connection: &Connection, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        commit(connection, batch.drain(..));
    }
}

/// Runs a batch of writes in one transaction, then answers each of them.
fn commit(connection: &Connection, batch: impl Iterator<Item = Job>) {
    let began = connection.execute_batch("BEGIN IMMEDIATE");
    let replies: Vec<Reply> = batch
        .map(|job| {
            // Some errors (disk full, I/O) make SQLite roll the whole transaction back; the
            // writes after that must not run outside it.
            let in_transaction = began.is_ok() && !connection.is_autocommit();
            job(in_transaction.then_some(connection))
        })
        .collect();
    let committed = began.and_then(|()| connection.execute_batch("COMMIT"));
    if committed.is_err() && !connection.is_autocommit() {
        let _ = connection.execute_batch("ROLLBACK");
    }
    let committed = committed.map_err(|e| e.to_string());
    for reply in replies {
        reply(committed.as_ref().map(|_| ()).map_err(String::as_str));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{CallEvent, EventKind};

    fn key(call: &str) -> CallKey {
        CallKey::new("acme", Provider::Telsmart, call)
    }

    fn webhook(call: &str, n: i64) -> QueuedWebhook {
        let at = Timestamp::from_micros(1_700_000_000_000_000 + n).unwrap();
        let mut event = CallEvent::new(Provider::Telsmart, call, at, EventKind::Ringing);
        event.id = format!("{call}-{n}");
        QueuedWebhook {
            connection_id: "acme".into(),
            received_at: at,
            event,
            raw: serde_json::json!({ "n": n }),
        }
    }

    fn parked(resource_id: &str) -> ParkedDelivery {
        ParkedDelivery {
            resource_id: resource_id.into(),
            revision: 2,
            idempotency_key: format!("{resource_id}-r2"),
            reason: "the CRM refused it (HTTP 422)".into(),
            crm_status: Some(422),
            crm_answer: Some("{\"error\":\"bad owner\"}".into()),
            parked_at: Timestamp::from_micros(1_700_000_000_000_000).unwrap(),
        }
    }

    /// Queues `count` webhooks of one call, all at once.
    async fn enqueue_at_once(store: &Arc<SqliteStore>, count: i64) {
        let enqueues: Vec<_> = (0..count)
            .map(|n| {
                let store = Arc::clone(store);
                tokio::spawn(async move { store.enqueue(&webhook("c1", n)).await })
            })
            .collect();
        for enqueue in enqueues {
            enqueue.await.unwrap().unwrap();
        }
    }

    async fn queued_events(store: &SqliteStore) -> Vec<String> {
        let messages = store.next_queued(0, 100).await.unwrap();
        messages
            .into_iter()
            .map(|m| m.webhook.unwrap().event.id)
            .collect()
    }

    #[tokio::test]
    async fn a_save_over_a_stale_version_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let mut record = CallRecord::new(key("c1"));

        assert_eq!(store.save(&record, None).await.unwrap(), 1);
        assert!(matches!(
            store.save(&record, None).await,
            Err(StoreError::Conflict)
        ));
        record.revision = 7;
        assert_eq!(store.save(&record, Some(1)).await.unwrap(), 2);
        assert!(matches!(
            store.save(&record, Some(1)).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(store.load(&key("c1")).await.unwrap(), Some((record, 2)));
        assert_eq!(store.load(&key("c2")).await.unwrap(), None);
    }

    #[test]
    fn the_record_cache_keeps_what_was_used_lately_and_the_newest_version() {
        let cache = RecordCache::holding(4);
        let record = |call: &str, revision| CallRecord {
            revision,
            ..CallRecord::new(key(call))
        };
        cache.offer(&record("a", 1), 1);
        cache.offer(&record("b", 1), 1);
        cache.offer(&record("c", 1), 1);
        assert!(cache.get(&key("a")).is_some());
        cache.offer(&record("d", 1), 1);

        assert!(
            cache.get(&key("b")).is_none(),
            "b was used the least lately"
        );
        for call in ["a", "c", "d"] {
            assert_eq!(cache.get(&key(call)), Some((record(call, 1), 1)));
        }
        cache.offer(&record("a", 3), 3);
        cache.offer(&record("a", 2), 2);
        assert_eq!(cache.get(&key("a")), Some((record("a", 3), 3)));
        cache.forget(&key("a"));
        assert!(cache.get(&key("a")).is_none());
    }

    #[tokio::test]
    async fn a_record_changed_behind_the_cache_is_read_again_after_the_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (ours, theirs) = (
            SqliteStore::open(&path).await.unwrap(),
            SqliteStore::open(&path).await.unwrap(),
        );
        let mut record = CallRecord::new(key("c1"));
        ours.save(&record, None).await.unwrap();
        record.revision = 2;
        theirs.save(&record, Some(1)).await.unwrap();

        let (stale, version) = ours.load(&key("c1")).await.unwrap().unwrap();
        assert!(matches!(
            ours.save(&stale, Some(version)).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(ours.load(&key("c1")).await.unwrap(), Some((record, 2)));
    }

    #[tokio::test]
    async fn the_queue_survives_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/callbridge.db");
        {
            let store = SqliteStore::open(&path).await.unwrap();
            for n in 1..=3 {
                store.enqueue(&webhook("c1", n)).await.unwrap();
            }
        }
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(queued_events(&store).await, ["c1-1", "c1-2", "c1-3"]);

        let first = store.next_queued(0, 1).await.unwrap().remove(0);
        store.remove_queued_through(first.seq, &[]).await.unwrap();
        drop(store);
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(queued_events(&store).await, ["c1-2", "c1-3"]);
        let after_first = store.next_queued(first.seq + 1, 100).await.unwrap();
        assert_eq!(after_first.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_webhooks_are_handed_over_in_queue_order_until_there_is_no_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let mut handed_over = store.hand_over(150);
        enqueue_at_once(&store, 200).await;

        let mut handed = Vec::new();
        while let Ok(message) = handed_over.try_recv() {
            let webhook = message.webhook.unwrap();
            handed.push((message.seq, webhook.event.id));
        }
        let queued: Vec<_> = store
            .next_queued(0, 1_000)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.seq, m.webhook.unwrap().event.id))
            .collect();
        assert_eq!(queued.len(), 200, "the queue keeps every webhook");
        assert_eq!(handed, queued[..150], "the first 150 in queue order");
        tokio::time::timeout(Duration::from_secs(1), store.queued())
            .await
            .expect("the reader is told to read the queue for the 50 not handed over");
    }

    #[tokio::test]
    async fn concurrent_enqueues_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        enqueue_at_once(&store, 200).await;
        assert_eq!(store.health().await.unwrap().queued, 200);
    }

    #[tokio::test]
    async fn a_parked_call_waits_until_it_is_unparked() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let mut record = CallRecord::new(key("c1"));
        record.outbox.push(crate::domain::record::Delivery {
            resource_id: record.resource_id.clone(),
            revision: 1,
            event: crate::domain::resource::MorphEventType::Created,
            idempotency_key: format!("{}-r1", record.resource_id),
            body: serde_json::json!({}),
            closed: None,
            received_at: None,
            attempted: false,
            waiting: None,
        });
        store.save(&record, None).await.unwrap();
        assert_eq!(store.undelivered_calls().await.unwrap(), [key("c1")]);

        store.park(parked(&record.resource_id)).await.unwrap();
        assert!(store.is_parked(&record.resource_id).await.unwrap());
        assert_eq!(
            store.parked_deliveries().await.unwrap(),
            [parked(&record.resource_id)]
        );
        assert_eq!(store.undelivered_calls().await.unwrap(), []);
        let health = store.health().await.unwrap();
        assert_eq!((health.parked, health.undelivered_calls), (1, 0));

        assert_eq!(store.unpark(Some("another")).await.unwrap(), 0);
        assert_eq!(store.unpark(Some(&record.resource_id)).await.unwrap(), 1);
        assert!(!store.is_parked(&record.resource_id).await.unwrap());
        assert_eq!(store.undelivered_calls().await.unwrap(), [key("c1")]);

        store.park(parked("a")).await.unwrap();
        store.park(parked("b")).await.unwrap();
        assert_eq!(store.unpark(None).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn parked_deliveries_outlive_a_restart_and_another_process_can_unpark_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        SqliteStore::open(&path)
            .await
            .unwrap()
            .park(parked("a"))
            .await
            .unwrap();

        let server = SqliteStore::open(&path).await.unwrap();
        assert!(server.is_parked("a").await.unwrap());
        // `callbridge deliveries retry`, while the server runs.
        let operator = SqliteStore::open(&path).await.unwrap();
        assert_eq!(operator.unpark(Some("a")).await.unwrap(), 1);
        assert!(!server.is_parked("a").await.unwrap());
    }
}
