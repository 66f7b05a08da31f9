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
    /// Whether it was ever sent: the CRM may have applied it, so it keeps its key and body and
    /// is never superseded ([`CallRecord::outbox_to_send`](super::record::CallRecord::outbox_to_send)). Left out while false, so records
    /// stored before it read and write the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attempted: bool,
}
