//! The adapters' read-through caches (moka), for what is read far more often than it changes:
//! an answer is kept for a while, the reads of one key at once share one read, and a failed
//! read is not kept (the next caller reads again).

use moka::Equivalent;
use moka::future::Cache;
use std::hash::Hash;
use std::time::Duration;

/// A cache of at most `max_entries` (past them the least used go), each kept for `ttl`.
pub fn bounded<K, V>(max_entries: u64, ttl: Duration) -> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(max_entries)
        .time_to_live(ttl)
        .build()
}

/// The value of `key`: the kept one, or what `read` answers, shared with every caller that
/// asks for `key` while it runs.
pub async fn get_or_read<K, V, Q>(
    cache: &Cache<K, V>,
    key: &Q,
    read: impl Future<Output = anyhow::Result<V>>,
) -> anyhow::Result<V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    Q: Equivalent<K> + ToOwned<Owned = K> + Hash + ?Sized,
{
    cache
        .try_get_with_by_ref(key, read)
        .await
        // The read's own error, whole, for every caller that shared it.
        .map_err(|e| anyhow::anyhow!("{e:#}"))
}
