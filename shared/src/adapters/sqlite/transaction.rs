//! A webhook's writes to call records, kept in memory and committed as one write: all of them
//! or none. What the local server applies as it accepts a webhook goes through one, so a
//! crash between two of its writes (a transfer touches two calls) cannot leave half of it.

use super::SqliteStore;
use crate::domain::record::{CallKey, CallRecord};
use crate::ports::{CallStore, MAX_CONFLICTS, StoreError, Version};
use async_trait::async_trait;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

/// The writes [`Transaction::run`] makes, as a future borrowing the transaction.
pub type BoxFuture<'t, T> = Pin<Box<dyn Future<Output = T> + Send + 't>>;

pub struct Transaction<'a> {
    store: &'a SqliteStore,
    writes: Mutex<HashMap<CallKey, Write>>,
}

/// A call's record as the transaction left it.
struct Write {
    /// The version read from the store: the commit writes over it.
    read: Option<Version>,
    record: CallRecord,
    /// The version the transaction's readers see.
    version: Version,
}

impl<'a> Transaction<'a> {
    fn new(store: &'a SqliteStore) -> Self {
        Self {
            store,
            writes: Mutex::default(),
        }
    }

    /// Runs `writes` in a transaction and commits it. When a record changed since it was read
    /// (another task wrote it: the local delivery task marks what the CRM took), nothing was
    /// written, and `writes` runs again over the change, up to [`MAX_CONFLICTS`] times.
    pub async fn run<T>(
        store: &'a SqliteStore,
        writes: impl for<'t> Fn(&'t Transaction<'a>) -> BoxFuture<'t, anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let mut conflicts = 0;
        loop {
            let transaction = Self::new(store);
            let written = writes(&transaction).await?;
            match transaction.commit().await {
                Ok(()) => return Ok(written),
                Err(StoreError::Conflict) if conflicts + 1 < MAX_CONFLICTS => conflicts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes every record saved, over the versions read; a conflict when any of them changed
    /// since, and then none is written.
    async fn commit(self) -> Result<(), StoreError> {
        let writes = self.writes.into_inner().expect("transaction lock");
        if writes.is_empty() {
            return Ok(());
        }
        let records = writes
            .into_values()
            .map(|write| (write.record, write.read))
            .collect();
        self.store.save_all(records).await
    }
}

#[async_trait]
impl CallStore for Transaction<'_> {
    async fn load(&self, key: &CallKey) -> anyhow::Result<Option<(CallRecord, Version)>> {
        if let Some(write) = self.writes.lock().expect("transaction lock").get(key) {
            return Ok(Some((write.record.clone(), write.version)));
        }
        self.store.load(key).await
    }

    async fn save(
        &self,
        record: &CallRecord,
        read: Option<Version>,
    ) -> Result<Version, StoreError> {
        let version = read.map_or(1, |version| version + 1);
        let mut writes = self.writes.lock().expect("transaction lock");
        match writes.get_mut(&record.key) {
            Some(write) if Some(write.version) != read => return Err(StoreError::Conflict),
            Some(write) => {
                write.record = record.clone();
                write.version = version;
            }
            None => {
                writes.insert(
                    record.key.clone(),
                    Write {
                        read,
                        record: record.clone(),
                        version,
                    },
                );
            }
        }
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::Provider;

    fn key(call: &str) -> CallKey {
        CallKey::new("acme", Provider::Telsmart, call)
    }

    async fn store() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        (store, dir)
    }

    #[tokio::test]
    async fn its_writes_are_seen_through_it_and_stored_once_committed() {
        let (store, _dir) = store().await;
        let mut known = CallRecord::new(key("known"));
        store.save(&known, None).await.unwrap();

        let transaction = Transaction::new(&store);
        let fresh = CallRecord::new(key("fresh"));
        assert_eq!(transaction.save(&fresh, None).await.unwrap(), 1);
        known.revision = 1;
        assert_eq!(transaction.save(&known, Some(1)).await.unwrap(), 2);
        known.revision = 2;
        assert_eq!(transaction.save(&known, Some(2)).await.unwrap(), 3);
        assert!(matches!(
            transaction.save(&known, Some(2)).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(
            transaction.load(&key("known")).await.unwrap(),
            Some((known.clone(), 3))
        );
        assert_eq!(store.load(&key("fresh")).await.unwrap(), None);

        transaction.commit().await.unwrap();
        // One write per call, over the version read.
        assert_eq!(store.load(&key("known")).await.unwrap(), Some((known, 2)));
        assert_eq!(store.load(&key("fresh")).await.unwrap(), Some((fresh, 1)));
    }

    #[tokio::test]
    async fn a_call_changed_since_it_was_read_writes_none_of_it() {
        let (store, _dir) = store().await;
        let mut changed = CallRecord::new(key("changed"));
        store.save(&changed, None).await.unwrap();

        let transaction = Transaction::new(&store);
        let fresh = CallRecord::new(key("fresh"));
        transaction.save(&fresh, None).await.unwrap();
        let (mut read, version) = transaction.load(&key("changed")).await.unwrap().unwrap();
        read.revision = 1;
        transaction.save(&read, Some(version)).await.unwrap();
        changed.revision = 7;
        store.save(&changed, Some(1)).await.unwrap();

        assert!(matches!(
            transaction.commit().await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(store.load(&key("fresh")).await.unwrap(), None);
        assert_eq!(
            store.load(&key("changed")).await.unwrap(),
            Some((changed, 2))
        );
    }

    /// Stores a call, then adds one to its revision through [`Transaction::run`], while
    /// another writer adds 100 to the stored record before the commit of each of the first
    /// `rival_writes` runs. The outcome, and how many runs it took.
    async fn add_revision_against_a_rival(
        store: &SqliteStore,
        rival_writes: usize,
    ) -> (anyhow::Result<()>, usize) {
        store
            .save(&CallRecord::new(key("busy")), None)
            .await
            .unwrap();
        let runs = std::sync::atomic::AtomicUsize::new(0);
        let outcome = Transaction::run(store, |transaction| {
            Box::pin(async {
                let run = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (mut record, version) = transaction.load(&key("busy")).await?.unwrap();
                record.revision += 1;
                transaction.save(&record, Some(version)).await?;
                if run < rival_writes {
                    let (mut rival, version) = store.load(&key("busy")).await?.unwrap();
                    rival.revision += 100;
                    store.save(&rival, Some(version)).await?;
                }
                Ok(())
            })
        })
        .await;
        (outcome, runs.into_inner())
    }

    #[tokio::test]
    async fn run_writes_again_over_what_a_rival_wrote_meanwhile() {
        let (store, _dir) = store().await;
        let (outcome, runs) = add_revision_against_a_rival(&store, 2).await;
        outcome.unwrap();
        assert_eq!(runs, 3);
        let (record, version) = store.load(&key("busy")).await.unwrap().unwrap();
        // Both rival writes, then the transaction's own once over them.
        assert_eq!(record.revision, 201);
        assert_eq!(version, 4);
    }

    #[tokio::test]
    async fn run_gives_up_on_a_call_that_keeps_changing() {
        let (store, _dir) = store().await;
        let (outcome, runs) = add_revision_against_a_rival(&store, usize::MAX).await;
        let error = outcome.unwrap_err();
        assert!(matches!(
            error.downcast_ref::<StoreError>(),
            Some(StoreError::Conflict)
        ));
        assert_eq!(runs, MAX_CONFLICTS);
        let (record, _) = store.load(&key("busy")).await.unwrap().unwrap();
        assert_eq!(record.revision, 100 * MAX_CONFLICTS as u64);
    }
}
