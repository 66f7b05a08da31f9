//! The CRM destinations' breakers on DynamoDB, shared by every worker: one small item per
//! destination in the calls table (the design: `engine::breaker`'s doc comment).
//!
//! | attribute | type | what |
//! |---|---|---|
//! | `call` (key) | S | `breaker#` + the destination (a SHA-256: never a URL or a secret) |
//! | `state` | S | the [`Breaker`] as JSON |
//! | `version` | N | bumped by every write; a write succeeds only over the version it read |
//! | `expires_at` | N | epoch seconds, a day after the write: a CRM no connection uses any more leaves nothing behind |
//!
//! A read is kept for [`READ_FOR`]: a healthy CRM costs each warm worker one read a second,
//! not one per delivery. Writes are conditional, so a stale read costs at most a conflict and a
//! fresh read, and one worker only takes each probe.

use super::dynamo_calls::{EXPIRES_AT, KEY, VERSION, number, put_versioned, read_item};
use super::usage::Usage;
use crate::adapters::cached;
use crate::engine::breaker::Breaker;
use crate::engine::destination::BreakerStore;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use moka::future::Cache;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const STATE: &str = "state";
/// The prefix that sets a breaker's key apart from a call's (`connection/provider/call`).
pub const KEY_PREFIX: &str = "breaker#";
/// How long a read breaker is used without reading it again.
pub const READ_FOR: Duration = Duration::from_secs(1);
/// How long an item outlives its last write.
const KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

pub struct DynamoBreakers {
    client: Client,
    table: String,
    usage: Arc<Usage>,
    read: Cache<String, (Breaker, Option<u64>)>,
}

impl DynamoBreakers {
    /// The breakers kept in `table` (the calls table).
    pub fn new(client: Client, table: impl Into<String>, usage: Arc<Usage>) -> Self {
        Self {
            client,
            table: table.into(),
            usage,
            read: cached::bounded(1_000, READ_FOR),
        }
    }

    async fn read(&self, destination: &str) -> anyhow::Result<(Breaker, Option<u64>)> {
        let key = format!("{KEY_PREFIX}{destination}");
        let item = read_item(&self.client, &self.table, &key).await?;
        self.usage.breaker_read();
        let Some(item) = item else {
            return Ok((Breaker::default(), None));
        };
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok());
        let version = item
            .get(VERSION)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("{key}: no numeric `{VERSION}`"))?;
        let state = text(STATE).ok_or_else(|| anyhow::anyhow!("{key}: no `{STATE}`"))?;
        let breaker = serde_json::from_str(state)
            .map_err(|e| anyhow::anyhow!("{key}: the state does not read: {e}"))?;
        Ok((breaker, Some(version)))
    }
}

#[async_trait]
impl BreakerStore for DynamoBreakers {
    async fn load(&self, destination: &str) -> anyhow::Result<(Breaker, Option<u64>)> {
        cached::get_or_read(&self.read, destination, self.read(destination)).await
    }

    async fn save(
        &self,
        destination: &str,
        breaker: &Breaker,
        read: Option<u64>,
    ) -> anyhow::Result<bool> {
        let key = format!("{KEY_PREFIX}{destination}");
        let version = read.map_or(1, |v| v + 1);
        let expires_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + KEPT_FOR;
        let item = HashMap::from([
            (KEY.to_string(), AttributeValue::S(key)),
            (
                STATE.to_string(),
                AttributeValue::S(serde_json::to_string(breaker)?),
            ),
            (VERSION.to_string(), number(version)),
            (EXPIRES_AT.to_string(), number(expires_at.as_secs())),
        ]);
        self.usage.breaker_write();
        if put_versioned(&self.client, &self.table, item, read).await? {
            self.read
                .insert(destination.to_owned(), (*breaker, Some(version)))
                .await;
            Ok(true)
        } else {
            self.usage.conflict();
            self.read.invalidate(destination).await;
            Ok(false)
        }
    }
}
