//! The users activated through Telsmart's onboarding, on DynamoDB: one item per activated
//! extension, `connection_id` (partition key), `extension` (sort key) and `user_id`. Written by
//! the Telsmart ingest function's activation routes, read by the worker (through
//! [`WithActivatedUsers`](crate::engine::activation::WithActivatedUsers)) with one `Query`
//! per connection, kept for a minute in the warm container like the connections, so an
//! activation is in force within a minute.

use super::usage::Usage;
use crate::ports::{ActivatedUsers, UserDirectory};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const CONNECTION_ID: &str = "connection_id";
const EXTENSION: &str = "extension";
const USER_ID: &str = "user_id";

/// How long a connection's activated users are taken from the cache.
const CACHE_FOR: Duration = Duration::from_secs(60);

type Cache = HashMap<String, (Instant, ActivatedUsers)>;

pub struct DynamoUsers {
    client: Client,
    table: String,
    usage: Arc<Usage>,
    cache: Mutex<Cache>,
}

impl DynamoUsers {
    pub fn new(client: Client, table: impl Into<String>, usage: Arc<Usage>) -> Self {
        Self {
            client,
            table: table.into(),
            usage,
            cache: Mutex::default(),
        }
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // Plain data: still good after a panic elsewhere.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
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
        if let Some((at, users)) = self.cache().get(connection_id)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(Arc::clone(users));
        }
        let users = Arc::new(self.query(connection_id).await?);
        self.cache().insert(
            connection_id.to_string(),
            (Instant::now(), Arc::clone(&users)),
        );
        Ok(users)
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
        self.cache().remove(connection_id);
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
        self.cache().remove(connection_id);
        Ok(())
    }
}
