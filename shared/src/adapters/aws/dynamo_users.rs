//! The users activated through Telsmart's onboarding, on DynamoDB: one item per activated
//! extension, `connection_id` (partition key), `extension` (sort key) and `user_id`. Written by
//! the Telsmart ingest function's activation routes, read by the worker (through
//! [`WithActivatedUsers`](crate::engine::activation::WithActivatedUsers)) with one `Query`
//! per connection (one for all of a batch's calls that ask at once), kept for a minute in the
//! warm container like the connections, so an activation is in force within a minute.

use super::usage::Usage;
use crate::adapters::cached;
use crate::ports::{ActivatedUsers, UserDirectory};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use moka::future::Cache;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const CONNECTION_ID: &str = "connection_id";
const EXTENSION: &str = "extension";
const USER_ID: &str = "user_id";

/// How long a connection's activated users are taken from the cache.
const CACHE_FOR: Duration = Duration::from_secs(60);
/// Connections whose users are kept at most: the worker's connections, which exist (a webhook
/// names one only once it was accepted).
const MAX_CACHED: u64 = 1024;

pub struct DynamoUsers {
    client: Client,
    table: String,
    usage: Arc<Usage>,
    cache: Cache<String, ActivatedUsers>,
}

impl DynamoUsers {
    pub fn new(client: Client, table: impl Into<String>, usage: Arc<Usage>) -> Self {
        Self {
            client,
            table: table.into(),
            usage,
            cache: cached::bounded(MAX_CACHED, CACHE_FOR),
        }
    }

    async fn query(&self, connection_id: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let mut users = BTreeMap::new();
        let mut start = None;
        loop {
            // Counted with the connection's reads: they are one directory.
            self.usage.connection_read();
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#connection = :connection")
                .expression_attribute_names("#connection", CONNECTION_ID)
                .expression_attribute_values(
                    ":connection",
                    AttributeValue::S(connection_id.to_string()),
                )
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.failed("read", connection_id, &DisplayErrorContext(&e)))?;
            for item in page.items() {
                let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
                if let (Some(extension), Some(user_id)) = (text(EXTENSION), text(USER_ID)) {
                    users.insert(extension, user_id);
                }
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(users);
            }
        }
    }

    fn failed(&self, what: &str, connection_id: &str, e: &impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot {what} the activated users of `{connection_id}` in {}: {e}",
            self.table
        )
    }
}

#[async_trait]
impl UserDirectory for DynamoUsers {
    async fn activated_users(&self, connection_id: &str) -> anyhow::Result<ActivatedUsers> {
        cached::get_or_read(&self.cache, connection_id, async {
            anyhow::Ok(Arc::new(self.query(connection_id).await?))
        })
        .await
    }

    async fn activate(
        &self,
        connection_id: &str,
        extension: &str,
        user_id: &str,
    ) -> anyhow::Result<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(CONNECTION_ID, AttributeValue::S(connection_id.to_string()))
            .item(EXTENSION, AttributeValue::S(extension.to_string()))
            .item(USER_ID, AttributeValue::S(user_id.to_string()))
            .send()
            .await
            .map_err(|e| self.failed("write", connection_id, &DisplayErrorContext(&e)))?;
        self.cache.invalidate(connection_id).await;
        Ok(())
    }

    async fn deactivate(&self, connection_id: &str, extension: &str) -> anyhow::Result<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(CONNECTION_ID, AttributeValue::S(connection_id.to_string()))
            .key(EXTENSION, AttributeValue::S(extension.to_string()))
            .send()
            .await
            .map_err(|e| self.failed("write", connection_id, &DisplayErrorContext(&e)))?;
        self.cache.invalidate(connection_id).await;
        Ok(())
    }
}
