//! One Morph event waiting in a call's outbox for the CRM.

use super::resource::{MorphEventType, TelephonyCallFields};
use super::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One Morph event to deliver. Its key and body are fixed when it is created, so every retry
/// sends the same bytes under the same idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub resource_id: String,
    pub revision: u64,
    pub event: MorphEventType,
    pub idempotency_key: String,
    pub body: Value,
    /// On a `deleted` that a transfer caused: the call's own fields, ended at the transfer,
    /// which Morph's REST API (it has no delete) is given to close the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<TelephonyCallFields>,
    /// When the webhook that made this revision was received (for the delivery latency); set
    /// by the worker, which knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<Timestamp>,
    /// Whether it was ever sent and failed: the CRM may have applied it, so it keeps its key
    /// and body and is never superseded ([`CallRecord::outbox_to_send`](super::record::CallRecord::outbox_to_send)). Left out while
    /// false, so records stored before it read and write the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attempted: bool,
    /// Since when it has waited on the CRM and how many of its sends failed: the retry
    /// schedule's inputs (`engine::schedule`), kept with the delivery so that a restart, or
    /// another worker, goes on where the last one stopped. Left out while it never waited, so
    /// records stored before it read and write the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
}

/// How long a delivery has waited on the CRM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// When it was first held back (the destination's breaker open) or first failed: the
    /// retry horizon counts from here.
    pub since: Timestamp,
    /// Sends that failed in a way retrying can fix since then.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_attempts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
