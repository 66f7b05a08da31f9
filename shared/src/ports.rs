//! The small traits the pipeline talks to. Adapters implement them for SQLite (the local
//! server), for AWS (DynamoDB, SQS) and for the CRM over HTTP.

use crate::domain::connection::Connection;
use crate::domain::event::{CallEvent, Provider};
use crate::domain::record::{CallKey, CallRecord, Delivery};
use crate::domain::time::Timestamp;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
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

#[async_trait]
pub trait CallStore: Send + Sync {
    /// The record and its version; `None` for a call never seen.
    async fn load(&self, key: &CallKey) -> anyhow::Result<Option<(CallRecord, Version)>>;
    /// Saves the record if its version is still `read` (`None`: if it does not exist yet).
    async fn save(&self, record: &CallRecord, read: Option<Version>)
    -> Result<Version, StoreError>;
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
}

#[async_trait]
pub trait Crm: Send + Sync {
    async fn deliver(&self, connection: &Connection, delivery: &Delivery) -> DeliveryOutcome;
}
