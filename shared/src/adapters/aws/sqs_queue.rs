//! The queue on SQS FIFO. The message group is the call, so a call's events are processed one
//! at a time and in order while other calls go in parallel; the deduplication id is the event
//! id, so a provider's retry within SQS's five-minute window is dropped before it costs a
//! worker run (later repeats are dropped by the record). The body is the [`QueuedWebhook`] as
//! JSON, raw payload included, so a message can be processed again after a parser fix.

use super::usage::Usage;
use crate::domain::record::CallKey;
use crate::ports::{MAX_MESSAGE_BYTES, MessageTooLarge, Queue, QueuedWebhook};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
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
        let body = webhook.to_message()?;
        let bytes = body.len();
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
                let refused = e.as_service_error();
                if let Some(limit) = refused.and_then(|r| size_limit_of(r.code(), r.message())) {
                    // A queue deployed smaller than MAX_MESSAGE_BYTES: the sender is told 413,
                    // the operator one line (not the SDK's dump) to mend the queue.
                    tracing::warn!(
                        queue = %self.url,
                        bytes,
                        limit,
                        "the queue refused a message for its size: its MaximumMessageSize is below the template's"
                    );
                    return MessageTooLarge { bytes, limit }.into();
                }
                anyhow::anyhow!("cannot send to {}: {}", self.url, DisplayErrorContext(&e))
            })?;
        Ok(())
    }
}

/// The queue's limit, when SQS refused a message for its size: `InvalidParameterValue`,
/// "... Reason: Message must be shorter than 262144 bytes." (the limit itself, when the
/// message does not say it, is taken to be ours).
fn size_limit_of(code: Option<&str>, message: Option<&str>) -> Option<usize> {
    let message = message?;
    let (_, after) = message.split_once("must be shorter than ")?;
    if code != Some("InvalidParameterValue") {
        return None;
    }
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    Some(digits.parse().unwrap_or(MAX_MESSAGE_BYTES))
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
    use crate::domain::event::{CallEvent, EventKind, Provider};
    use crate::domain::time::Timestamp;

    #[test]
    fn a_size_refusal_is_told_from_other_refusals() {
        let refusal = "One or more parameters are invalid. Reason: Message must be shorter than 262144 bytes.";
        assert_eq!(
            size_limit_of(Some("InvalidParameterValue"), Some(refusal)),
            Some(262_144)
        );
        for (code, message) in [
            (
                Some("InvalidParameterValue"),
                Some("Value -1 for parameter DelaySeconds is invalid."),
            ),
            (
                Some("AWS.SimpleQueueService.NonExistentQueue"),
                Some(refusal),
            ),
            (None, None),
        ] {
            assert_eq!(size_limit_of(code, message), None, "{code:?} {message:?}");
        }
    }

    #[test]
    fn a_message_holds_only_characters_sqs_takes_and_reads_back_the_same() {
        let at = Timestamp::from_micros(1_700_000_000_000_000).unwrap();
        let mut event = CallEvent::new(Provider::Voys, "c-\u{ffff}", at, EventKind::Ringing);
        event.id = "e-1".into();
        let webhook = QueuedWebhook {
            connection_id: "acme".into(),
            received_at: at,
            event,
            raw: serde_json::json!({ "name\u{fffe}": "a\u{ffff}b\u{fffd}", "n": [1, "\u{10ffff}"] }),
        };
        let message = webhook.to_message().unwrap();
        // SQS takes #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF.
        let refused = message.chars().find(|c| {
            !matches!(*c, '\t' | '\n' | '\r' | ' '..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
        });
        assert_eq!(refused, None, "{message}");
        assert_eq!(
            serde_json::from_str::<QueuedWebhook>(&message).unwrap(),
            webhook
        );
    }

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
