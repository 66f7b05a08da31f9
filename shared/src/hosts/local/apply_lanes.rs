//! The worker: webhooks applied to their calls' records on lanes chosen by call, so a call's
//! events are applied one after another while different calls go on in parallel.
//!
//! A webhook being accepted goes to its call's lane, which applies it before it is answered,
//! its writes committed as one ([`Transaction`]): the queue never holds it. What the lane does
//! not apply at once it queues (see [`LocalQueue`]; so does the ingest when the lane has a
//! backlog, rather than wait), and a reader takes
//! the queue in order and hands each message to its lane. A call with webhooks in the queue has
//! its next ones queued too, until the lane has applied the last of them, and so has every call
//! until the lanes have what a previous run left in the queue: a call's events are applied in
//! the order they came. The reader is handed each message in memory as its insert commits, and
//! reads the queue only for what it was not handed: what a previous run left, and what came
//! while it was behind. Processed messages leave the queue many at a time, up to the oldest
//! one a lane still has.
//!
//! [`LocalQueue`]: super::LocalQueue

use crate::adapters::clock::SystemClock;
use crate::adapters::contact_http::HttpContactLookup;
use crate::adapters::sqlite::{QueuedMessage, SqliteStore, Transaction};
use crate::domain::event::EventKind;
use crate::domain::record::CallKey;
use crate::engine::apply::{Applied, apply};
use crate::engine::failure::Failure;
use crate::ports::{Clock, ConnectionDirectory, QueuedWebhook};
use crate::telemetry::Telemetry;
use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;

/// Calls applied in parallel. Applying is store work only, so a few dozen keep the writer's
/// batches full without many calls waiting behind each other.
const LANES: usize = 32;
/// Webhooks waiting in one lane before the reader waits for room.
const LANE_CAPACITY: usize = 64;
/// Webhooks waiting in a lane past which the ingest queues a webhook rather than wait.
const MAX_WAITING_AHEAD: usize = 16;
/// Queued webhooks read at once.
const READ_BATCH: usize = 256;
/// Webhooks handed over in memory and not taken yet; past this the reader is behind, and
/// reads them from the queue once it catches up.
pub(super) const HAND_OVER_CAPACITY: usize = 4_096;
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
    pub progress: Mutex<Progress>,
    /// A lane is done with a message.
    pub done: Notify,
}

/// Where the worker is in the queue.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// The last message handed to a lane.
    handed: i64,
    /// Handed to a lane and not done with yet.
    in_lanes: BTreeSet<i64>,
    /// Done with, but left in the queue for the next start: their connection is not
    /// configured, or they could not be set aside.
    kept: BTreeSet<i64>,
}

impl Progress {
    /// The last message that, with every one before it, is done with.
    fn done_through(&self) -> i64 {
        self.in_lanes
            .first()
            .map_or(self.handed, |oldest| oldest - 1)
    }
}

/// What a lane takes.
pub(super) enum Work {
    /// A message of the queue.
    Queued(QueuedMessage),
    /// A webhook being accepted, and where to say once it is applied or queued.
    Accepted {
        webhook: QueuedWebhook,
        accepted: oneshot::Sender<anyhow::Result<()>>,
    },
    /// The lanes have every message a previous run left in the queue.
    CaughtUp,
}

/// The calls with webhooks in the queue: a call's next webhooks are queued behind them until
/// its lane has applied the last one.
#[derive(Default)]
pub(super) struct Behind(Mutex<HashMap<CallKey, Mark>>);

/// Where a call's queued webhooks are.
#[derive(Debug, Default)]
struct Mark {
    /// Its webhooks being queued, whose place is not known yet.
    queueing: usize,
    /// The place of the last one queued.
    last: i64,
    /// The place of the last one its lane applied (or set aside).
    applied: i64,
}

impl Mark {
    fn cleared(&self) -> bool {
        self.queueing == 0 && self.applied >= self.last
    }
}

impl Behind {
    fn holds(&self, call: &CallKey) -> bool {
        self.lock().contains_key(call)
    }

    /// Queues the webhook behind its call's. The call is marked before the webhook is in the
    /// queue, so the lane cannot apply the webhook before the mark is made, and a mark left
    /// with nothing behind it is always cleared.
    async fn queue(&self, store: &SqliteStore, webhook: &QueuedWebhook) -> anyhow::Result<()> {
        let mut queueing = Queueing::new(self, webhook.call());
        queueing.seq = Some(store.queue(webhook).await?);
        Ok(())
    }

    /// The lane applied (or set aside) a queued webhook of the call.
    fn applied(&self, call: &CallKey, seq: i64) {
        let mut marks = self.lock();
        if let Some(mark) = marks.get_mut(call) {
            mark.applied = mark.applied.max(seq);
            if mark.cleared() {
                marks.remove(call);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallKey, Mark>> {
        self.0.lock().expect("behind lock")
    }
}

/// A webhook being queued; when dropped, its place (if it was queued) is its call's last.
/// Dropped also when the ingest's request is cut off half-way.
struct Queueing<'a> {
    behind: &'a Behind,
    call: CallKey,
    seq: Option<i64>,
}

impl<'a> Queueing<'a> {
    fn new(behind: &'a Behind, call: CallKey) -> Self {
        behind.lock().entry(call.clone()).or_default().queueing += 1;
        Self {
            behind,
            call,
            seq: None,
        }
    }
}

impl Drop for Queueing<'_> {
    fn drop(&mut self) {
        let mut marks = self.behind.lock();
        let Some(mark) = marks.get_mut(&self.call) else {
            return;
        };
        mark.queueing -= 1;
        if let Some(seq) = self.seq {
            mark.last = mark.last.max(seq);
        }
        if mark.cleared() {
            marks.remove(&self.call);
        }
    }
}

/// The lanes' entrances.
#[derive(Clone)]
pub(super) struct Lanes {
    entrances: Arc<[mpsc::Sender<Work>]>,
    behind: Arc<Behind>,
}

impl Lanes {
    pub fn new() -> (Self, Vec<mpsc::Receiver<Work>>) {
        let (senders, receivers) = (0..LANES).map(|_| mpsc::channel(LANE_CAPACITY)).unzip();
        let lanes = Self {
            entrances: Vec::into(senders),
            behind: Arc::default(),
        };
        (lanes, receivers)
    }

    /// The lane of a call (unreadable messages, of no known call, all go to the first).
    fn of(&self, call: Option<&CallKey>) -> &mpsc::Sender<Work> {
        let lane = call.map_or(0, |call| {
            let mut hasher = DefaultHasher::new();
            call.hash(&mut hasher);
            (hasher.finish() % LANES as u64) as usize
        });
        &self.entrances[lane]
    }

    /// Applies the webhook on its call's lane, or queues it; `Ok` once it is one or the other.
    /// A lane with a backlog is not waited for: the provider would wait on every webhook
    /// before its own. The webhook is queued instead, and its call's next ones behind it.
    pub async fn accept(&self, store: &SqliteStore, webhook: QueuedWebhook) -> anyhow::Result<()> {
        let call = webhook.call();
        let lane = self.of(Some(&call));
        if lane.capacity() < LANE_CAPACITY - MAX_WAITING_AHEAD {
            return self.behind.queue(store, &webhook).await;
        }
        let (accepted, outcome) = oneshot::channel();
        lane.send(Work::Accepted { webhook, accepted })
            .await
            .map_err(|_| anyhow::anyhow!("the worker is stopping"))?;
        outcome
            .await
            .map_err(|_| anyhow::anyhow!("the worker is stopping"))?
    }

    /// Whether the lanes are gone: the worker is stopping.
    pub fn stopped(&self) -> bool {
        self.entrances.iter().any(mpsc::Sender::is_closed)
    }

    /// Tells every lane that it has what a previous run left.
    async fn caught_up(&self) {
        for lane in self.entrances.iter() {
            let _ = lane.send(Work::CaughtUp).await;
        }
    }
}

impl Worker {
    /// Takes the webhooks in queue order, from the hand-over or the queue, and hands each to
    /// its call's lane.
    pub async fn run(
        self: Arc<Self>,
        lanes: Lanes,
        lane_work: Vec<mpsc::Receiver<Work>>,
        mut handed_over: mpsc::Receiver<QueuedMessage>,
    ) {
        let mut tasks = JoinSet::new();
        for work in lane_work {
            tasks.spawn(Arc::clone(&self).run_lane(work, Arc::clone(&lanes.behind)));
        }
        tasks.spawn(Arc::clone(&self).remove_done());
        // The last message handed to a lane. The queue keeps every message until it is
        // processed, so a start reads it from the first one left.
        let mut after = 0;
        let mut read_queue = true;
        let mut caught_up = false;
        loop {
            if read_queue {
                match self.store.next_queued(after, READ_BATCH).await {
                    Ok(batch) => {
                        read_queue = batch.len() == READ_BATCH;
                        for message in batch {
                            after = message.seq;
                            self.hand(&lanes, message).await;
                        }
                        if !read_queue && !caught_up {
                            lanes.caught_up().await;
                            caught_up = true;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the queue");
                        tokio::time::sleep(self.poll_interval).await;
                    }
                }
                continue;
            }
            tokio::select! {
                Some(message) = handed_over.recv() => {
                    // At or before `after`: read from the queue already. Past the next one: a
                    // message in between was not handed over, and the queue has both.
                    if message.seq == after + 1 {
                        after = message.seq;
                        self.hand(&lanes, message).await;
                    } else if message.seq > after {
                        read_queue = true;
                    }
                }
                () = self.store.queued() => read_queue = true,
                () = tokio::time::sleep(self.poll_interval) => read_queue = true,
            }
        }
    }

    async fn hand(&self, lanes: &Lanes, message: QueuedMessage) {
        {
            let mut progress = self.progress.lock().expect("progress lock");
            progress.handed = message.seq;
            progress.in_lanes.insert(message.seq);
        }
        let call = message.call();
        if lanes
            .of(call.as_ref())
            .send(Work::Queued(message))
            .await
            .is_err()
        {
            tracing::error!("a worker lane stopped; its webhooks wait for a restart");
        }
    }

    /// Removes what the lanes are done with from the queue, as one write for all that were
    /// done while the last one was committed.
    async fn remove_done(self: Arc<Self>) {
        let mut removed_through = 0;
        loop {
            self.done.notified().await;
            let (through, kept) = {
                let progress = self.progress.lock().expect("progress lock");
                let kept: Vec<i64> = progress.kept.iter().copied().collect();
                (progress.done_through(), kept)
            };
            if through <= removed_through {
                continue;
            }
            match self.store.remove_queued_through(through, &kept).await {
                Ok(()) => removed_through = through,
                // Left for the next removal, or processed again after a restart.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot remove processed webhooks from the queue")
                }
            }
        }
    }

    fn done_with(&self, seq: i64, keep: bool) {
        {
            let mut progress = self.progress.lock().expect("progress lock");
            progress.in_lanes.remove(&seq);
            if keep {
                progress.kept.insert(seq);
            }
        }
        self.done.notify_one();
    }

    async fn run_lane(self: Arc<Self>, mut work: mpsc::Receiver<Work>, behind: Arc<Behind>) {
        // Whether the lane has had every message a previous run left.
        let mut caught_up = false;
        while let Some(work) = work.recv().await {
            match work {
                Work::Queued(message) => {
                    let (seq, call) = (message.seq, message.call());
                    let keep = self.process(message).await == Processed::Kept;
                    self.done_with(seq, keep);
                    if let Some(call) = call {
                        behind.applied(&call, seq);
                    }
                }
                Work::Accepted { webhook, accepted } => {
                    let outcome = self.accept(caught_up, &behind, webhook).await;
                    let _ = accepted.send(outcome);
                }
                Work::CaughtUp => caught_up = true,
            }
        }
    }

    /// Applies a webhook being accepted, or queues it behind its call's queued webhooks.
    async fn accept(
        &self,
        caught_up: bool,
        behind: &Behind,
        webhook: QueuedWebhook,
    ) -> anyhow::Result<()> {
        let call = webhook.call();
        if caught_up && !behind.holds(&call) {
            match self.apply_accepted(&webhook).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "a webhook could not be applied as it was accepted: it is queued");
                }
            }
        }
        behind.queue(&self.store, &webhook).await
    }

    /// Applies a webhook being accepted, its writes as one; `false` when it is to be queued
    /// instead: an erasure (several writes and forgetting, which the queue retries whole), a
    /// webhook of a connection that looks contacts up (the provider is not kept waiting on
    /// the CRM's answer) or is not configured.
    async fn apply_accepted(&self, webhook: &QueuedWebhook) -> anyhow::Result<bool> {
        if webhook.event.kind == EventKind::Erased {
            return Ok(false);
        }
        let Some(connection) = self.connections.connection(&webhook.connection_id).await? else {
            return Ok(false);
        };
        if connection.contacts.lookup_url.is_some() {
            return Ok(false);
        }
        let applied = Transaction::run(&self.store, |transaction| {
            Box::pin(apply(transaction, &connection, &self.contacts, webhook))
        })
        .await?;
        self.telemetry.applied(webhook, &applied);
        for call in applied.to_deliver {
            // Fails only when the runtime is stopping; the store keeps the outbox.
            let _ = self.to_deliver.send(call);
        }
        Ok(true)
    }

    /// Applies one webhook. While the store fails it tries again: the call's later events
    /// must wait behind it, and the other calls need the same store anyway. What can never be
    /// applied as it is (a message or a record that does not read, a record that would be too
    /// large) is set aside at once, on its own.
    async fn process(&self, message: QueuedMessage) -> Processed {
        let webhook = match message.webhook {
            Ok(webhook) => webhook,
            Err((e, call)) => {
                let reason = format!("the queued webhook does not read: {e}");
                let resource_id = call.map(|call| call.resource_id());
                return self.set_aside(message.seq, resource_id, reason).await;
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
                    for call in applied.to_deliver {
                        // Fails only when the runtime is stopping; the store keeps the outbox.
                        let _ = self.to_deliver.send(call);
                    }
                    return Processed::Done;
                }
                Ok(None) => {
                    tracing::warn!(
                        seq = message.seq,
                        connection = %webhook.connection_id,
                        "the webhook's connection is not configured; it stays in the queue until a restart"
                    );
                    return Processed::Kept;
                }
                Err(e) => match Failure::of_store(e) {
                    Failure::Poison { reason } => {
                        let resource_id = Some(webhook.call().resource_id());
                        return self.set_aside(message.seq, resource_id, reason).await;
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

    async fn set_aside(&self, seq: i64, resource_id: Option<String>, reason: String) -> Processed {
        tracing::error!(
            seq,
            resource_id,
            reason,
            "a webhook can never be applied as it is: set aside (`callbridge deliveries list`)"
        );
        self.telemetry.parked();
        if self
            .store
            .set_aside(seq, resource_id, reason, SystemClock.now())
            .await
        {
            Processed::Done
        } else {
            Processed::Kept
        }
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

/// What became of a message a lane took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Processed {
    /// Applied or set aside: it can leave the queue.
    Done,
    /// It stays in the queue until the next start.
    Kept,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{CallEvent, Provider};
    use crate::domain::time::Timestamp;

    fn ringing(call: &str) -> QueuedWebhook {
        let at = Timestamp::from_micros(1_700_000_000_000_000).unwrap();
        QueuedWebhook {
            connection_id: "acme".into(),
            received_at: at,
            event: CallEvent::new(Provider::Telsmart, call, at, EventKind::Ringing),
            raw: serde_json::json!({}),
        }
    }

    async fn store() -> (Arc<SqliteStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        (Arc::new(store), dir)
    }

    #[tokio::test]
    async fn a_webhook_is_queued_rather_than_wait_behind_its_lanes_backlog() {
        let (store, _dir) = store().await;
        let (lanes, mut lane_work) = Lanes::new();
        let call = ringing("c1").call();
        let lane = (0..LANES)
            .find(|&lane| std::ptr::eq(&lanes.entrances[lane], lanes.of(Some(&call))))
            .unwrap();
        let mut work = lane_work.swap_remove(lane);
        let wait_in_lane = async |waiting: usize| {
            for _ in 0..waiting {
                lanes.entrances[lane].send(Work::CaughtUp).await.unwrap();
            }
        };

        // As many waiting as the ingest waits behind: the webhook joins them.
        wait_in_lane(MAX_WAITING_AHEAD).await;
        let mut accepting = std::pin::pin!(lanes.accept(&store, ringing("c1")));
        tokio::select! {
            biased;
            _ = &mut accepting => panic!("answered before its lane took it"),
            () = std::future::ready(()) => {}
        }
        for _ in 0..MAX_WAITING_AHEAD {
            assert!(matches!(work.try_recv(), Ok(Work::CaughtUp)));
        }
        let Ok(Work::Accepted { webhook, accepted }) = work.try_recv() else {
            panic!("the webhook is handed to its lane");
        };
        assert_eq!(webhook, ringing("c1"));
        accepted.send(Ok(())).unwrap();
        accepting.await.unwrap();
        assert!(store.next_queued(0, 10).await.unwrap().is_empty());

        // One more: it is queued, its call behind it, and the lane never sees it.
        wait_in_lane(MAX_WAITING_AHEAD + 1).await;
        let queueing = lanes.accept(&store, ringing("c1"));
        tokio::time::timeout(Duration::from_secs(10), queueing)
            .await
            .expect("queued rather than waiting for the lane")
            .unwrap();
        let queued = store.next_queued(0, 10).await.unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].webhook.as_ref().unwrap(), &ringing("c1"));
        assert!(lanes.behind.holds(&call));
        for _ in 0..=MAX_WAITING_AHEAD {
            assert!(matches!(work.try_recv(), Ok(Work::CaughtUp)));
        }
        assert!(work.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_call_is_behind_while_its_queued_webhooks_wait_and_never_after() {
        let (store, _dir) = store().await;
        let webhook = ringing("c1");
        let call = webhook.call();
        let behind = Behind::default();

        behind.queue(&store, &webhook).await.unwrap();
        let seq = store.next_queued(0, 1).await.unwrap()[0].seq;
        assert!(behind.holds(&call));
        behind.applied(&call, seq);
        assert!(!behind.holds(&call));

        // Its lane applied it before the ingest heard where it was queued.
        let mut queueing = Queueing::new(&behind, call.clone());
        behind.applied(&call, seq + 1);
        assert!(behind.holds(&call), "marked until the queueing ends");
        queueing.seq = Some(seq + 1);
        drop(queueing);
        assert!(!behind.holds(&call), "nothing is left behind it");

        // Not queued after all (the store failed, or the request was cut off).
        drop(Queueing::new(&behind, call.clone()));
        assert!(!behind.holds(&call));
    }
}
