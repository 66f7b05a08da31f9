//! The connections on DynamoDB: one item per connection, `id` (key), `connection` (the
//! [`Connection`] as JSON: tokens only as hashes) and, for a connection that has them, its REST
//! API key and secret apart in `rest_credentials` (JSON), so that the ingest functions, which
//! never use them, read the item without them and their role may not read them (the template's
//! `dynamodb:Attributes` condition). Written by `callbridge connections import`, read by every
//! function and kept for a minute in the warm container, so a burst of webhooks costs one read
//! per connection (one for all that ask at once), and a changed token is in force within a minute.

use super::usage::Usage;
use crate::adapters::cached;
use crate::domain::connection::{ApiCredentials, Connection};
use crate::ports::ConnectionDirectory;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use moka::future::Cache;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "id";
const CONNECTION: &str = "connection";
const REST_CREDENTIALS: &str = "rest_credentials";

/// Past this many entries the least used go, so requests for made-up connection ids cannot grow
/// the cache without bound.
const MAX_CACHED: u64 = 1024;
/// Longer ids are refused without a read: DynamoDB would refuse them as keys anyway.
const MAX_ID_BYTES: usize = 255;

pub struct DynamoConnections {
    client: Client,
    table: String,
    usage: Arc<Usage>,
    /// By id, what was read (`None`: no such connection).
    cache: Cache<String, Option<Arc<Connection>>>,
    /// Whether reads take the REST credentials too (the worker, the operator's commands).
    with_rest_credentials: bool,
}

impl DynamoConnections {
    /// The whole connections, REST credentials included: the worker's and the operator's. A
    /// connection (or its absence) read from the table is taken from the cache for `cache_for`,
    /// so a rotated or retired token takes effect within that time.
    pub fn new(
        client: Client,
        table: impl Into<String>,
        usage: Arc<Usage>,
        cache_for: Duration,
    ) -> Self {
        Self {
            client,
            table: table.into(),
            usage,
            cache: cached::bounded(MAX_CACHED, cache_for),
            with_rest_credentials: true,
        }
    }

    /// The connections without their REST credentials, never read: the ingest functions'.
    pub fn without_rest_credentials(
        client: Client,
        table: impl Into<String>,
        usage: Arc<Usage>,
        cache_for: Duration,
    ) -> Self {
        Self {
            with_rest_credentials: false,
            ..Self::new(client, table, usage, cache_for)
        }
    }

    /// Creates or replaces a connection.
    pub async fn put(&self, connection: &Connection) -> anyhow::Result<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item(connection)?))
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
        self.cache.invalidate(&connection.id).await;
        Ok(())
    }

    /// Creates a connection; an error if its id is taken.
    pub async fn create(&self, connection: &Connection) -> anyhow::Result<()> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item(connection)?))
            .condition_expression("attribute_not_exists(#id)")
            .expression_attribute_names("#id", KEY);
        match put.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => {
                anyhow::bail!("there is a connection `{}` already", connection.id)
            }
            Err(e) => Err(anyhow::anyhow!(
                "cannot write connection `{}` to {}: {}",
                connection.id,
                self.table,
                DisplayErrorContext(&e)
            )),
        }
    }

    /// Changes a stored connection with `change`, over exactly what was read: a change made
    /// meanwhile by someone else is read again and `change` runs on it.
    pub async fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Connection) -> anyhow::Result<()>,
    ) -> anyhow::Result<Connection> {
        // A write replaces the whole item: from a read without the credentials, it would drop them.
        anyhow::ensure!(
            self.with_rest_credentials,
            "connection `{id}`: a reader without the REST credentials cannot change a connection"
        );
        const TRIES: usize = 5;
        for _ in 0..TRIES {
            let (mut connection, read) = self
                .read_json(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("there is no connection `{id}`"))?;
            change(&mut connection)?;
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item(&connection)?))
                .condition_expression("#connection = :read")
                .expression_attribute_names("#connection", CONNECTION)
                .expression_attribute_values(":read", AttributeValue::S(read));
            match put.send().await {
                Ok(_) => {
                    self.cache.invalidate(id).await;
                    return Ok(connection);
                }
                Err(e) if is_condition_failure(&e) => continue,
                Err(e) => anyhow::bail!(
                    "cannot write connection `{id}` to {}: {}",
                    self.table,
                    DisplayErrorContext(&e)
                ),
            }
        }
        anyhow::bail!("connection `{id}` kept changing under us ({TRIES} tries)")
    }

    /// Every connection, by id.
    pub async fn list(&self) -> anyhow::Result<Vec<Connection>> {
        let mut connections = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot scan {}: {}", self.table, DisplayErrorContext(&e))
                })?;
            for item in page.items() {
                connections.push(parse(item)?);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                connections.sort_by(|a, b| a.id.cmp(&b.id));
                return Ok(connections);
            }
        }
    }

    async fn read(&self, id: &str) -> anyhow::Result<Option<Arc<Connection>>> {
        Ok(self
            .read_json(id)
            .await?
            .map(|(connection, _)| Arc::new(connection)))
    }

    /// The connection and the JSON it was read from.
    async fn read_json(&self, id: &str) -> anyhow::Result<Option<(Connection, String)>> {
        self.usage.connection_read();
        let mut get = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(id.to_string()));
        if !self.with_rest_credentials {
            get = get
                .projection_expression("#id, #connection")
                .expression_attribute_names("#id", KEY)
                .expression_attribute_names("#connection", CONNECTION);
        }
        let output = get.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot read connection `{id}` from {}: {}",
                self.table,
                DisplayErrorContext(&e)
            )
        })?;
        let Some(item) = output.item else {
            return Ok(None);
        };
        let json = stored_json(&item)?;
        let mut connection = parse(&item)?;
        if !self.with_rest_credentials {
            // An item written before the credentials had an attribute of their own.
            connection.api_credentials = None;
        }
        Ok(Some((connection, json.to_string())))
    }
}

/// The item of a connection: its REST credentials apart from the rest.
fn item(connection: &Connection) -> anyhow::Result<HashMap<String, AttributeValue>> {
    let mut without = connection.clone();
    let credentials = without.api_credentials.take();
    let mut item = HashMap::from([
        (KEY.to_string(), AttributeValue::S(connection.id.clone())),
        (
            CONNECTION.to_string(),
            AttributeValue::S(serde_json::to_string(&without)?),
        ),
    ]);
    if let Some(credentials) = credentials {
        item.insert(
            REST_CREDENTIALS.to_string(),
            AttributeValue::S(serde_json::to_string(&credentials)?),
        );
    }
    Ok(item)
}

/// The `connection` attribute of an item.
fn stored_json(item: &HashMap<String, AttributeValue>) -> anyhow::Result<&str> {
    let id = item.get(KEY).and_then(|v| v.as_s().ok());
    item.get(CONNECTION)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| anyhow::anyhow!("connection {id:?}: the item has no `{CONNECTION}`"))
}

fn parse(item: &HashMap<String, AttributeValue>) -> anyhow::Result<Connection> {
    let id = item.get(KEY).and_then(|v| v.as_s().ok());
    let mut connection: Connection = serde_json::from_str(stored_json(item)?).map_err(|e| {
        anyhow::anyhow!("connection {id:?}: the stored connection does not read: {e}")
    })?;
    if let Some(credentials) = item.get(REST_CREDENTIALS).and_then(|v| v.as_s().ok()) {
        // The error names no part of the text: it is a secret.
        let credentials: ApiCredentials = serde_json::from_str(credentials).map_err(|_| {
            anyhow::anyhow!("connection {id:?}: the stored REST credentials do not read")
        })?;
        connection.api_credentials = Some(credentials);
    }
    Ok(connection)
}

fn is_condition_failure<R>(e: &SdkError<PutItemError, R>) -> bool {
    e.as_service_error()
        .is_some_and(PutItemError::is_conditional_check_failed_exception)
}

#[async_trait]
impl ConnectionDirectory for DynamoConnections {
    async fn connection(&self, id: &str) -> anyhow::Result<Option<Arc<Connection>>> {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Ok(None);
        }
        // The calls of a batch ask at once: one of them reads, the others wait for its answer.
        cached::get_or_read(&self.cache, id, self.read(id)).await
    }
}
