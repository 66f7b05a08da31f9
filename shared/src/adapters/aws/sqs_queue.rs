//! The queue on SQS FIFO. The message group is the call, so a call's events are processed one
//! at a time and in order while other calls go in parallel; the deduplication id is the event
//! id, so a provider's retry within SQS's five-minute window is dropped before it costs a
//! worker run (later repeats are dropped by the record). The body is the [`QueuedWebhook`] as
//! JSON, raw payload included, so a message can be processed again after a parser fix.

use super::usage::Usage;
use crate::domain::record::CallKey;
use crate::ports::{Queue, QueuedWebhook};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// SQS's limit for a message group id.
const MAX_GROUP_ID_CHARS: usize = 128;

pub struct SqsQueue {
    client: Client,
    url: String,
    usage: Arc<Usage>,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>, usage: Arc<Usage>) -> Self {
        Self {
            client,
            url: url.into(),
            usage,
        }
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn enqueue(&self, webhook: &QueuedWebhook) -> anyhow::Result<()> {
        let body = serde_json::to_string(webhook)?;
        self.usage.queue_send();
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_group_id(message_group(&webhook.call()))
            .message_deduplication_id(&webhook.event.id)
            .message_body(body)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot send to {}: {}", self.url, DisplayErrorContext(&e))
            })?;
        Ok(())
    }
}

/// The message group of a call: its path when SQS takes it as a group id (at most 128
/// printable ASCII characters), else `sha256:` and the path's hash. A path always holds a
/// `/`, so the two forms never meet.
pub fn message_group(call: &CallKey) -> String {
    let path = call.to_path();
    if path.len() <= MAX_GROUP_ID_CHARS && path.bytes().all(|b| b.is_ascii_graphic()) {
        path
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(path.as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::Provider;

    #[test]
    fn a_short_printable_path_is_its_own_group() {
        let call = CallKey::new("acme", Provider::Voys, "c-1");
        assert_eq!(message_group(&call), "acme/voys/c-1");
    }

    #[test]
    fn a_long_or_unprintable_path_is_hashed_within_the_limit() {
        for call_key in ["x".repeat(200), "call with spaces".into(), "appel-é".into()] {
            let group = message_group(&CallKey::new("acme", Provider::Voys, &call_key));
            assert!(group.starts_with("sha256:"), "{group}");
            assert!(group.len() <= MAX_GROUP_ID_CHARS);
            assert_ne!(
                group,
                message_group(&CallKey::new("acme", Provider::Teltel, &call_key))
            );
        }
    }
}
