//! When a message the worker hands back comes again. Left to SQS, it would stay hidden for the
//! queue's whole visibility timeout (6 minutes), far too long for an incoming call's popup
//! held up by one 503 of the CRM. So the worker hides each message it hands back until the
//! engine's next try for its delivery ([`crate::engine::failure::Failure::Wait`]: the retry
//! schedule, or the next probe of an open breaker), or, for a failure that is not the CRM's
//! (the store unavailable), for the schedule's wait after that many receives
//! ([`RetrySchedule::wait`]), never shorter than a `Retry-After`. The engine parks a delivery
//! past its horizon; the queue's `maxReceiveCount` (1,000) is only a backstop above the
//! schedule's 874 receives.
//!
//! The later messages of the call that are handed back with it get the same wait: FIFO hands
//! out none of a call's messages while one of them is hidden, so the call comes back when its
//! last message does. A change SQS does not take leaves the message hidden for the queue's
//! visibility timeout: it comes back later, nothing more.

use crate::engine::schedule::{Jitter, RetrySchedule};
use aws_lambda_events::sqs::SqsMessage;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use rand::Rng;
use std::time::Duration;

/// SQS's limit for a visibility timeout.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// SQS's limit of entries in one batch request.
const MAX_BATCH_ENTRIES: usize = 10;

pub struct Redelivery {
    sqs: Client,
    queue_url: String,
    schedule: RetrySchedule,
}

impl Redelivery {
    /// Sets when the messages of the queue at `queue_url` come back, on `schedule`.
    pub fn new(sqs: Client, queue_url: impl Into<String>, schedule: RetrySchedule) -> Self {
        Self {
            sqs,
            queue_url: queue_url.into(),
            schedule,
        }
    }

    /// How long a message that failed on its `receive_count`-th receive stays hidden.
    pub fn backoff(&self, receive_count: u32, retry_after: Option<Duration>) -> Duration {
        whole_seconds(self.schedule.wait(
            receive_count.max(1),
            retry_after,
            Jitter::share(rand::rng().random_range(0.5..=1.0)),
        ))
    }

    /// Hides each message for its wait, within `time_left` (the invocation's: a change still
    /// under way when it ends would take the whole batch down with it). A message whose change
    /// fails is logged and keeps the queue's visibility timeout.
    pub async fn postpone(&self, waits: &[(&SqsMessage, Duration)], time_left: Duration) {
        let changes = async {
            for chunk in waits.chunks(MAX_BATCH_ENTRIES) {
                self.change_visibility(chunk).await;
            }
        };
        if tokio::time::timeout(time_left, changes).await.is_err() {
            tracing::warn!(
                messages = waits.len(),
                "SQS did not answer in time: the messages come back after the queue's visibility timeout"
            );
        }
    }

    async fn change_visibility(&self, waits: &[(&SqsMessage, Duration)]) {
        // An entry's id is the message's index in `waits`.
        let message_id = |id: &str| {
            id.parse::<usize>()
                .ok()
                .and_then(|i| waits.get(i))
                .and_then(|(message, _)| message.message_id.as_deref())
                .unwrap_or_default()
        };
        let entries = waits
            .iter()
            .enumerate()
            .filter_map(|(i, (message, wait))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_receipt_handle(message.receipt_handle.clone())
                    .visibility_timeout(i32::try_from(wait.as_secs()).unwrap_or(i32::MAX))
                    .build()
                    .map_err(|e| {
                        tracing::warn!(
                            message_id = message_id(&i.to_string()),
                            error = %e,
                            "the message's visibility cannot be changed: it comes back after the queue's visibility timeout"
                        )
                    })
                    .ok()
            })
            .collect::<Vec<_>>();
        if entries.is_empty() {
            return;
        }
        match self
            .sqs
            .change_message_visibility_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(answer) => {
                for failed in answer.failed() {
                    tracing::warn!(
                        message_id = message_id(failed.id()),
                        code = failed.code(),
                        error = failed.message().unwrap_or_default(),
                        "SQS did not change the message's visibility: it comes back after the queue's visibility timeout"
                    );
                }
            }
            Err(e) => tracing::warn!(
                messages = waits.len(),
                error = %DisplayErrorContext(&e),
                "SQS did not change the messages' visibility: they come back after the queue's visibility timeout"
            ),
        }
    }
}

/// The number of times SQS has handed out `message`, this time included (1 when it does not
/// say).
pub fn receive_count(message: &SqsMessage) -> u32 {
    message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|count| count.parse().ok())
        .unwrap_or(1)
}

/// A wait in the whole seconds SQS takes, rounded up so that a floor (`Retry-After`) holds and
/// never 0 (which would hand the message out again at once), within SQS's limit.
pub fn whole_seconds(wait: Duration) -> Duration {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(seconds.max(1)).min(MAX_VISIBILITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_wait_is_whole_seconds_rounded_up_never_zero_within_sqs_limit() {
        assert_eq!(whole_seconds(Duration::ZERO), secs(1));
        assert_eq!(whole_seconds(Duration::from_millis(250)), secs(1));
        assert_eq!(whole_seconds(Duration::from_millis(1500)), secs(2));
        assert_eq!(whole_seconds(secs(300)), secs(300));
        assert_eq!(whole_seconds(secs(48 * 3600)), MAX_VISIBILITY);
    }

    #[test]
    fn the_receive_count_is_the_one_sqs_gives() {
        let mut message = SqsMessage::default();
        assert_eq!(receive_count(&message), 1);
        message
            .attributes
            .insert("ApproximateReceiveCount".into(), "7".into());
        assert_eq!(receive_count(&message), 7);
    }
}
