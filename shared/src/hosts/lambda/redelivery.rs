//! When a message the worker hands back comes again. Left to SQS, it would stay hidden for the
//! queue's whole visibility timeout (6 minutes), far too long for an incoming call's popup
//! held up by one 503 of the CRM. So the worker hides each message it hands back for a retry
//! worth trying ([`RetryPolicy`], the local server's schedule: attempt n is the message's n-th
//! receive), never shorter than the CRM's `Retry-After`. The queue's `maxReceiveCount`, not
//! the schedule, bounds the attempts.
//!
//! The later messages of the call that are handed back with it get the same wait: FIFO hands
//! out none of a call's messages while one of them is hidden, so the call comes back when its
//! last message does. A change SQS does not take leaves the message hidden for the queue's
//! visibility timeout: it comes back later, nothing more.

use crate::engine::deliver::RetryPolicy;
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
    schedule: RetryPolicy,
}

impl Redelivery {
    /// Sets when the messages of the queue at `queue_url` come back, on `schedule`.
    pub fn new(sqs: Client, queue_url: impl Into<String>, schedule: RetryPolicy) -> Self {
        Self {
            sqs,
            queue_url: queue_url.into(),
            schedule,
        }
    }

    /// How long a message that failed on its `receive_count`-th receive stays hidden.
    pub fn backoff(&self, receive_count: u32, retry_after: Option<Duration>) -> Duration {
        hidden_for(
            &self.schedule,
            receive_count,
            retry_after,
            rand::rng().random_range(0.5..=1.0),
        )
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

/// The schedule's wait after `receive_count` failed attempts, with `jitter` (0.5 to 1) of it
/// taken, and the CRM's `Retry-After` as its floor; in the whole seconds SQS takes, rounded up
/// so the floor holds and a wait is never 0 (which would hand the message out again at once).
fn hidden_for(
    schedule: &RetryPolicy,
    receive_count: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let wait = schedule
        .delay_with_jitter(receive_count.max(1), retry_after, jitter)
        .unwrap_or(schedule.max);
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(seconds.max(1)).min(MAX_VISIBILITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template's: 1 s doubling up to the queue's visibility timeout.
    fn schedule() -> RetryPolicy {
        RetryPolicy {
            max_attempts: u32::MAX,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(360),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_wait_doubles_with_each_receive_up_to_the_visibility_timeout() {
        let full: Vec<u64> = (1..=12)
            .map(|count| hidden_for(&schedule(), count, None, 1.0).as_secs())
            .collect();
        assert_eq!(full, [1, 2, 4, 8, 16, 32, 64, 128, 256, 360, 360, 360]);
        assert_eq!(hidden_for(&schedule(), 500, None, 1.0), secs(360));
        assert_eq!(hidden_for(&schedule(), u32::MAX, None, 1.0), secs(360));
    }

    #[test]
    fn the_jitter_takes_half_to_all_of_the_wait_in_whole_seconds_never_zero() {
        for count in 1..40 {
            let full = hidden_for(&schedule(), count, None, 1.0);
            for jitter in [0.5, 0.6, 0.75, 0.99] {
                let wait = hidden_for(&schedule(), count, None, jitter);
                assert!(wait >= full / 2 && wait <= full, "{count}: {wait:?}");
                assert!(wait >= secs(1));
            }
        }
        assert_eq!(hidden_for(&schedule(), 1, None, 0.5), secs(1));
        assert_eq!(hidden_for(&schedule(), 4, None, 0.6), secs(5));
        // A receive count SQS did not give counts as the first.
        assert_eq!(hidden_for(&schedule(), 0, None, 1.0), secs(1));
    }

    #[test]
    fn retry_after_is_the_floor_and_the_visibility_timeout_the_cap() {
        assert_eq!(hidden_for(&schedule(), 1, Some(secs(2)), 0.5), secs(2));
        assert_eq!(hidden_for(&schedule(), 1, Some(secs(2)), 1.0), secs(2));
        assert_eq!(
            hidden_for(&schedule(), 1, Some(Duration::from_millis(1500)), 0.5),
            secs(2)
        );
        // A floor below the schedule's wait changes nothing.
        assert_eq!(hidden_for(&schedule(), 8, Some(secs(2)), 1.0), secs(128));
        assert_eq!(hidden_for(&schedule(), 1, Some(secs(3600)), 1.0), secs(360));
        // However the schedule is set, SQS's limit holds.
        let long = RetryPolicy {
            max: secs(48 * 3600),
            ..schedule()
        };
        assert_eq!(hidden_for(&long, 40, None, 1.0), MAX_VISIBILITY);
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
