//! Parking a call in the dead-letter queue at once. Left to SQS, a message that can never
//! succeed (it does not read, its connection is gone) or whose delivery the CRM refused for
//! good would come back every visibility timeout until `maxReceiveCount` receives, hours of
//! tries that cannot help, holding up its call. So the worker moves it there itself, with the
//! later messages of its call handed back with it, in order and under their own group and
//! deduplication ids: `callbridge deliveries retry --aws` (or the console's DLQ redrive) brings
//! them back as they were. When SQS does not take them all, they are handed back as before and
//! reach the dead-letter queue the slow way; a message it took twice is deduplicated there.

use aws_lambda_events::sqs::SqsMessage;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use std::time::Duration;

/// SQS's limit of entries in one batch request.
const MAX_BATCH_ENTRIES: usize = 10;

pub struct DeadLetters {
    sqs: Client,
    url: String,
}

impl DeadLetters {
    pub fn new(sqs: Client, url: impl Into<String>) -> Self {
        Self {
            sqs,
            url: url.into(),
        }
    }

    /// Moves `messages` (one call's, in order) to the dead-letter queue within `time_left`;
    /// whether SQS took every one of them. The caller then deletes them from the queue.
    pub async fn park(&self, messages: &[&SqsMessage], time_left: Duration) -> bool {
        let send = async {
            for chunk in messages.chunks(MAX_BATCH_ENTRIES) {
                if !self.send(chunk).await {
                    return false;
                }
            }
            true
        };
        let parked = tokio::time::timeout(time_left, send).await.unwrap_or(false);
        if parked {
            tracing::info!(
                messages = messages.len(),
                "parked in the dead-letter queue, to be redriven once the cause is fixed"
            );
        }
        parked
    }

    async fn send(&self, messages: &[&SqsMessage]) -> bool {
        let attribute = |message: &SqsMessage, name: &str| message.attributes.get(name).cloned();
        let entries: Result<Vec<_>, _> = messages
            .iter()
            .enumerate()
            .map(|(i, message)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_message_body(message.body.clone())
                    .set_message_group_id(attribute(message, "MessageGroupId"))
                    .set_message_deduplication_id(
                        attribute(message, "MessageDeduplicationId")
                            .or_else(|| message.message_id.clone()),
                    )
                    .build()
            })
            .collect();
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "the messages cannot be parked: they come back after the queue's visibility timeout");
                return false;
            }
        };
        match self
            .sqs
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(answer) if answer.failed().is_empty() => true,
            Ok(answer) => {
                for failed in answer.failed() {
                    tracing::warn!(
                        code = failed.code(),
                        error = failed.message().unwrap_or_default(),
                        "the dead-letter queue did not take a message: the call's messages come back after the queue's visibility timeout"
                    );
                }
                false
            }
            Err(e) => {
                tracing::warn!(
                    error = %DisplayErrorContext(&e),
                    "the dead-letter queue did not take the messages: they come back after the queue's visibility timeout"
                );
                false
            }
        }
    }
}
