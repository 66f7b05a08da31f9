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

use super::usage::Usage;
use crate::adapters::cached;
use crate::engine::breaker::Breaker;
use crate::engine::destination::BreakerStore;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use moka::future::Cache;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const KEY: &str = "call";
const STATE: &str = "state";
const VERSION: &str = "version";
const EXPIRES_AT: &str = "expires_at";
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
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(key.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read {key} from {}: {}",
                    self.table,
                    DisplayErrorContext(&e)
                )
            })?;
        self.usage.breaker_read();
        let Some(item) = output.item else {
            return Ok((Breaker::default(), None));
        };
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok());
        let number = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<u64>().ok())
        };
        let state = text(STATE).ok_or_else(|| anyhow::anyhow!("{key}: no `{STATE}`"))?;
        let version = number(VERSION).ok_or_else(|| anyhow::anyhow!("{key}: no `{VERSION}`"))?;
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
            (KEY.to_string(), AttributeValue::S(key.clone())),
            (
                STATE.to_string(),
                AttributeValue::S(serde_json::to_string(breaker)?),
            ),
            (VERSION.to_string(), AttributeValue::N(version.to_string())),
            (
                EXPIRES_AT.to_string(),
                AttributeValue::N(expires_at.as_secs().to_string()),
            ),
        ]);
        self.usage.breaker_write();
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        let put = match read {
            None => put
                .condition_expression("attribute_not_exists(#key)")
                .expression_attribute_names("#key", KEY),
            Some(read) => put
                .condition_expression("#version = :read")
                .expression_attribute_names("#version", VERSION)
                .expression_attribute_values(":read", AttributeValue::N(read.to_string())),
        };
        match put.send().await {
            Ok(_) => {
                self.read
                    .insert(destination.to_owned(), (*breaker, Some(version)))
                    .await;
                Ok(true)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                self.usage.conflict();
                self.read.invalidate(destination).await;
                Ok(false)
            }
            Err(e) => Err(anyhow::anyhow!(
                "cannot write {key} to {}: {}",
                self.table,
                DisplayErrorContext(&e)
            )),
        }
    }
}
