//! The connections on DynamoDB: one item per connection, `id` (key) and `connection` (the
//! [`Connection`] as JSON: tokens only as hashes). Written by `callbridge connections import`,
//! read by every function and kept for a minute in the warm container, so a burst of webhooks
//! costs one read per connection, and a changed token is in force within a minute.

use super::usage::Usage;
use crate::domain::connection::Connection;
use crate::ports::ConnectionDirectory;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const KEY: &str = "id";
const CONNECTION: &str = "connection";

/// How long a connection (or its absence) is taken from the cache.
const CACHE_FOR: Duration = Duration::from_secs(60);
/// Past this many entries the cache is cleared, so requests for made-up connection ids cannot
/// grow it without bound.
const MAX_CACHED: usize = 1024;
/// Longer ids are refused without a read: DynamoDB would refuse them as keys anyway.
const MAX_ID_BYTES: usize = 255;

pub struct DynamoConnections {
    client: Client,
    table: String,
    usage: Arc<Usage>,
    cache: Mutex<Cache>,
}

/// By id: when it was read, and what (`None`: no such connection).
type Cache = HashMap<String, (Instant, Option<Arc<Connection>>)>;

impl DynamoConnections {
    pub fn new(client: Client, table: impl Into<String>, usage: Arc<Usage>) -> Self {
        Self {
            client,
            table: table.into(),
            usage,
            cache: Mutex::default(),
        }
    }

    /// Creates or replaces a connection.
    pub async fn put(&self, connection: &Connection) -> anyhow::Result<()> {
        let json = serde_json::to_string(connection)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .item(KEY, AttributeValue::S(connection.id.clone()))
            .item(CONNECTION, AttributeValue::S(json))
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot write connection `{}` to {}: {}",
                    connection.id,
                    self.table,
                    DisplayErrorContext(&e)
                )
            })?;
        self.cache().remove(&connection.id);
        Ok(())
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // The cache holds plain data: still good after a panic elsewhere.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn read(&self, id: &str) -> anyhow::Result<Option<Arc<Connection>>> {
        self.usage.connection_read();
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(id.to_string()))
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read connection `{id}` from {}: {}",
                    self.table,
                    DisplayErrorContext(&e)
                )
            })?;
        let Some(item) = output.item else {
            return Ok(None);
        };
        let json = item
            .get(CONNECTION)
            .and_then(|v| v.as_s().ok())
            .ok_or_else(|| anyhow::anyhow!("connection `{id}`: the item has no `{CONNECTION}`"))?;
        let connection: Connection = serde_json::from_str(json).map_err(|e| {
            anyhow::anyhow!("connection `{id}`: the stored connection does not read: {e}")
        })?;
        Ok(Some(Arc::new(connection)))
    }
}

#[async_trait]
impl ConnectionDirectory for DynamoConnections {
    async fn connection(&self, id: &str) -> anyhow::Result<Option<Arc<Connection>>> {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Ok(None);
        }
        if let Some((at, cached)) = self.cache().get(id)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(cached.clone());
        }
        let connection = self.read(id).await?;
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(id.to_string(), (Instant::now(), connection.clone()));
        Ok(connection)
    }
}
