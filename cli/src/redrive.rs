//! Moving the dead-letter queue's webhooks back to the webhook queue (`callbridge deliveries
//! retry --aws`), as the SQS console's DLQ redrive does, but in this command's own steps so it
//! shows its progress and works on any endpoint.
//!
//! Each message is sent back in its call's message group, then deleted from the dead-letter
//! queue, in the order the FIFO queue gives them, so a call's webhooks keep their order. A crash
//! between the two leaves the message in the dead-letter queue: the next redrive sends it again
//! under the same deduplication id (its dead-letter message id), which SQS drops within five
//! minutes, and which the worker would take as a repeat anyway.

use crate::target::AwsTarget;
use callbridge_shared::adapters::aws::aws_config;
use callbridge_shared::adapters::aws::aws_sdk_sqs::Client;
use callbridge_shared::adapters::aws::aws_sdk_sqs::error::DisplayErrorContext;
use callbridge_shared::adapters::aws::aws_sdk_sqs::types::{
    Message, MessageSystemAttributeName, QueueAttributeName,
};
use callbridge_shared::ports::QueuedWebhook;
use indicatif::ProgressBar;

/// How long a received message is hidden from other readers while it is moved.
const VISIBILITY_SECS: i32 = 60;

/// The SQS client, the dead-letter queue and the webhook queue of `target`.
pub async fn queues(target: &AwsTarget) -> anyhow::Result<(Client, String, String)> {
    let dead_letters = AwsTarget::setting(
        &target.dead_letter_queue_url,
        "--dead-letter-queue-url",
        "DEAD_LETTER_QUEUE_URL",
    )?;
    let queue = AwsTarget::setting(&target.queue_url, "--queue-url", "QUEUE_URL")?;
    let aws = aws_config::load_from_env().await;
    Ok((Client::new(&aws), dead_letters.into(), queue.into()))
}

/// Up to ten messages of `dead_letters` (with their message group), hidden from other readers
/// while this command handles them.
async fn receive(sqs: &Client, dead_letters: &str) -> anyhow::Result<Vec<Message>> {
    let received = sqs
        .receive_message()
        .queue_url(dead_letters)
        .max_number_of_messages(10)
        .visibility_timeout(VISIBILITY_SECS)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot receive from {dead_letters}: {}",
                DisplayErrorContext(&e)
            )
        })?;
    Ok(received.messages.unwrap_or_default())
}

/// About how many messages wait in `queue` (SQS's own approximation).
pub async fn waiting(sqs: &Client, queue: &str) -> anyhow::Result<u64> {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {queue}: {}", DisplayErrorContext(&e)))?;
    Ok(attributes
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Moves every message of `dead_letters` to `queue`, counting each on `progress`; returns how
/// many were moved.
pub async fn redrive(
    sqs: &Client,
    dead_letters: &str,
    queue: &str,
    progress: &ProgressBar,
) -> anyhow::Result<u64> {
    let mut moved = 0;
    loop {
        let messages = receive(sqs, dead_letters).await?;
        if messages.is_empty() {
            return Ok(moved);
        }
        for message in messages {
            let id = message.message_id().unwrap_or_default();
            let group = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "message {id} has no message group: is {dead_letters} a FIFO queue?"
                    )
                })?;
            sqs.send_message()
                .queue_url(queue)
                .message_group_id(group)
                .message_deduplication_id(id)
                .message_body(message.body().unwrap_or_default())
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot send to {queue}: {}", DisplayErrorContext(&e))
                })?;
            sqs.delete_message()
                .queue_url(dead_letters)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot delete from {dead_letters}: {}",
                        DisplayErrorContext(&e)
                    )
                })?;
            moved += 1;
            progress.set_length(progress.length().unwrap_or(0).max(moved));
            progress.inc(1);
        }
    }
}

/// Deletes the messages of the call of `resource_id` from `dead_letters`; returns how many.
/// The others are received too, to get past them, and made visible again at the end. A
/// message whose call does not read is kept.
pub async fn purge(sqs: &Client, dead_letters: &str, resource_id: &str) -> anyhow::Result<u64> {
    let mut purged = 0;
    let mut passed = Vec::new();
    let outcome = async {
        loop {
            let messages = receive(sqs, dead_letters).await?;
            if messages.is_empty() {
                return anyhow::Ok(());
            }
            for message in messages {
                let handle = message.receipt_handle().unwrap_or_default().to_owned();
                let call = QueuedWebhook::call_of_json(message.body().unwrap_or_default());
                if call.is_none_or(|call| call.resource_id() != resource_id) {
                    passed.push(handle);
                    continue;
                }
                sqs.delete_message()
                    .queue_url(dead_letters)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot delete from {dead_letters}: {}",
                            DisplayErrorContext(&e)
                        )
                    })?;
                purged += 1;
            }
        }
    }
    .await;
    // The others are back at once rather than after the visibility timeout.
    for handle in passed {
        let shown = sqs
            .change_message_visibility()
            .queue_url(dead_letters)
            .receipt_handle(handle)
            .visibility_timeout(0)
            .send()
            .await;
        if let Err(e) = shown {
            eprintln!(
                "a message stays hidden for {VISIBILITY_SECS} s: {}",
                DisplayErrorContext(&e)
            );
        }
    }
    outcome.map(|()| purged)
}
