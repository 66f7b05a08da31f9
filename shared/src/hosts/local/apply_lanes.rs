//! The worker task: queued webhooks, in queue order, applied to their calls' records.
//!
//! A reader takes the queue in order and hands each webhook to a lane chosen by its call, so
//! a call's events are applied one after another while different calls go on in parallel.

use crate::adapters::clock::SystemClock;
use crate::adapters::contact_http::HttpContactLookup;
use crate::adapters::sqlite::{QueuedMessage, SqliteStore};
use crate::domain::event::EventKind;
use crate::domain::record::CallKey;
use crate::engine::apply::{Applied, apply};
use crate::engine::failure::Failure;
use crate::ports::{Clock, ConnectionDirectory, QueuedWebhook};
use crate::telemetry::Telemetry;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Calls applied in parallel. Applying is store work only, so a few dozen keep the writer's
/// batches full without many calls waiting behind each other.
const LANES: usize = 32;
/// Webhooks waiting in one lane before the reader waits for room.
const LANE_CAPACITY: usize = 64;
/// Queued webhooks read at once.
const READ_BATCH: usize = 256;
/// Pauses between tries of a webhook the store could not take.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

pub(super) struct Worker {
    pub store: Arc<SqliteStore>,
    pub connections: Arc<dyn ConnectionDirectory>,
    /// Calls with new deliveries, for the delivery task.
    pub to_deliver: mpsc::UnboundedSender<CallKey>,
    pub poll_interval: Duration,
    pub contacts: HttpContactLookup,
    pub telemetry: Telemetry,
}

impl Worker {
    /// Reads the queue, oldest first, and hands each webhook to its call's lane.
    pub async fn run(self: Arc<Self>) {
        let mut lanes = JoinSet::new();
        let senders: Vec<_> = (0..LANES)
            .map(|_| {
                let (sender, messages) = mpsc::channel(LANE_CAPACITY);
                lanes.spawn(Arc::clone(&self).run_lane(messages));
                sender
            })
            .collect();
        // The last message handed to a lane. The queue keeps every message until it is
        // applied, so a restart starts again from the first one left.
        let mut after = 0;
        loop {
            let batch = match self.store.next_queued(after, READ_BATCH).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the queue");
                    tokio::time::sleep(self.poll_interval).await;
                    continue;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    () = self.store.queued() => {}
                    () = tokio::time::sleep(self.poll_interval) => {}
                }
            }
            for message in batch {
                after = message.seq;
                if senders[lane(&message)].send(message).await.is_err() {
                    tracing::error!("a worker lane stopped; its webhooks wait for a restart");
                }
            }
        }
    }

    async fn run_lane(self: Arc<Self>, mut messages: mpsc::Receiver<QueuedMessage>) {
        while let Some(message) = messages.recv().await {
            self.process(message).await;
        }
    }

    /// Applies one webhook and removes it from the queue. While the store fails it tries
    /// again: the call's later events must wait behind it, and the other calls need the same
    /// store anyway. What can never be applied as it is (a message or a record that does not
    /// read, a record that would be too large) is set aside at once, on its own.
    async fn process(&self, message: QueuedMessage) {
        let webhook = match message.webhook {
            Ok(webhook) => webhook,
            Err((e, call)) => {
                let reason = format!("the queued webhook does not read: {e}");
                let resource_id = call.map(|call| call.resource_id());
                self.set_aside(message.seq, resource_id, reason).await;
                return;
            }
        };
        let mut pause = FIRST_PAUSE;
        loop {
            match self.apply(&webhook).await {
                Ok(Some(applied)) => {
                    if webhook.event.kind == EventKind::Erased {
                        let resource_id = webhook.call().resource_id();
                        if let Err(e) = self.store.forget_erased(&resource_id).await {
                            tracing::error!(seq = message.seq, error = %e, pause = ?FIRST_PAUSE, "cannot forget an erased call's parked deliveries; trying again");
                            tokio::time::sleep(FIRST_PAUSE).await;
                            continue;
                        }
                    }
                    self.store.remove_queued(message.seq).await;
                    for call in applied.to_deliver {
                        // Fails only when the runtime is stopping; the store keeps the outbox.
                        let _ = self.to_deliver.send(call);
                    }
                    return;
                }
                Ok(None) => {
                    tracing::warn!(
                        seq = message.seq,
                        connection = %webhook.connection_id,
                        "the webhook's connection is not configured; it stays in the queue until a restart"
                    );
                    return;
                }
                Err(e) => match Failure::of_store(e) {
                    Failure::Poison { reason } => {
                        let resource_id = Some(webhook.call().resource_id());
                        self.set_aside(message.seq, resource_id, reason).await;
                        return;
                    }
                    failure => {
                        tracing::error!(
                            seq = message.seq,
                            error = failure.reason(),
                            ?pause,
                            "cannot apply a webhook; trying again"
                        );
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_PAUSE);
                    }
                },
            }
        }
    }

    async fn set_aside(&self, seq: i64, resource_id: Option<String>, reason: String) {
        tracing::error!(
            seq,
            resource_id,
            reason,
            "a webhook can never be applied as it is: set aside (`callbridge deliveries list`)"
        );
        self.telemetry.parked();
        self.store
            .set_aside(seq, resource_id, reason, SystemClock.now())
            .await;
    }

    /// `None` when the webhook's connection is not (or no longer) configured.
    async fn apply(&self, webhook: &QueuedWebhook) -> anyhow::Result<Option<Applied>> {
        let Some(connection) = self.connections.connection(&webhook.connection_id).await? else {
            return Ok(None);
        };
        let applied = apply(&*self.store, &connection, &self.contacts, webhook).await?;
        self.telemetry.applied(webhook, &applied);
        Ok(Some(applied))
    }
}

/// The lane of a message's call (unreadable messages all go to the first).
fn lane(message: &QueuedMessage) -> usize {
    message.webhook.as_ref().map_or(0, |webhook| {
        let mut hasher = DefaultHasher::new();
        webhook.call().hash(&mut hasher);
        (hasher.finish() % LANES as u64) as usize
    })
}
