//! The local runtime: the pipeline AWS runs, on one machine, over the SQLite store.
//!
//! Ingest (the HTTP server) hands each webhook to [`LocalRuntime::queue`], which applies it
//! as it is accepted, or queues it in the store (see `apply_lanes`). A worker task takes what
//! is queued in queue order and applies each webhook with [`crate::engine::apply::apply`]; a
//! delivery task delivers each call's outbox to the CRM with [`crate::engine::deliver::Deliverer`], waiting
//! on the retry schedule and the CRM destinations' breakers, and parking what cannot go through. Both are woken the
//! moment there is work (an incoming-call popup is useless a second late) and also look at the
//! store every [`Settings::poll_interval`], which is how they pick up what a previous run left
//! behind and deliveries un-parked by `callbridge deliveries retry`.
//!
//! Every step is idempotent and every write conditional, so stopping at any point (a crash,
//! `kill -9`, or [`LocalRuntime::stop`]) loses nothing and duplicates nothing the CRM sees:
//! the next start picks up where this one stopped.

mod apply_lanes;
mod delivery_tasks;

#[cfg(test)]
mod tests;

use crate::adapters::contact_http::HttpContactLookup;
use crate::adapters::crm_http::HttpCrm;
use crate::adapters::sqlite::SqliteStore;
use crate::adapters::stdout_crm::StdoutCrm;
use crate::config::CrmConfig;
use crate::engine::breaker::BreakerSettings;
use crate::engine::rate_limit::RateLimit;
use crate::engine::schedule::RetrySchedule;
use crate::ports::{ConnectionDirectory, Crm, Queue, QueuedWebhook};
use crate::telemetry::Telemetry;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How often the store is looked at besides the wake-ups.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub retry: RetrySchedule,
    pub breaker: BreakerSettings,
    pub rate_limit: RateLimit,
    pub poll_interval: Duration,
}

impl Settings {
    pub fn new(crm: &CrmConfig) -> Self {
        Self {
            retry: crm.retry,
            breaker: crm.breaker,
            rate_limit: crm.rate_limit,
            poll_interval: POLL_INTERVAL,
        }
    }
}

/// The CRM of the configuration: over HTTP (events to `url`, REST requests to `rest_url`),
/// or, with neither, printed on standard output.
pub fn crm(config: &CrmConfig) -> anyhow::Result<Arc<dyn Crm>> {
    if config.url.is_none() && config.rest_url.is_none() {
        return Ok(Arc::new(StdoutCrm::default()));
    }
    Ok(Arc::new(HttpCrm::build(
        config.url.clone(),
        config.rest_url.clone(),
        Duration::from_millis(config.timeout_ms),
    )?))
}

/// The running worker and delivery tasks.
pub struct LocalRuntime {
    worker: JoinHandle<()>,
    delivery: JoinHandle<()>,
    queue: Arc<LocalQueue>,
}

/// Where the local ingest puts a webhook: its call's lane applies it before it is answered, so
/// it is written once, or, when it does not, queues it in the store, from where the worker
/// applies it as AWS does. Not applied at once: an erasure (several writes and forgetting,
/// which the queue retries whole), a webhook of a connection that looks contacts up (a CRM
/// request the provider would wait for), one the store could not take just then, one whose
/// lane has a backlog, and a call's next webhooks while it has some in the queue.
pub struct LocalQueue {
    store: Arc<SqliteStore>,
    lanes: apply_lanes::Lanes,
}

#[async_trait]
impl Queue for LocalQueue {
    async fn enqueue(&self, webhook: &QueuedWebhook) -> anyhow::Result<()> {
        // Both hosts take the same webhooks: those whose queued message would be too large
        // are refused even when they are never queued.
        webhook.check_message_size()?;
        match self.lanes.accept(&self.store, webhook.clone()).await {
            Ok(()) => Ok(()),
            // The worker is stopping: the queue keeps it for the next start.
            Err(_) if self.lanes.stopped() => self.store.enqueue(webhook).await,
            Err(e) => Err(e),
        }
    }
}

impl LocalRuntime {
    /// Starts processing what the store holds and whatever is queued from now on, logging and
    /// counting through `telemetry`.
    pub fn start(
        store: Arc<SqliteStore>,
        connections: Arc<dyn ConnectionDirectory>,
        crm: Arc<dyn Crm>,
        settings: Settings,
        telemetry: Telemetry,
    ) -> Self {
        let (to_deliver, woken) = mpsc::unbounded_channel();
        let handed_over = store.hand_over(apply_lanes::HAND_OVER_CAPACITY);
        let (lanes, lane_work) = apply_lanes::Lanes::new();
        let queue = Arc::new(LocalQueue {
            store: Arc::clone(&store),
            lanes: lanes.clone(),
        });
        let worker = apply_lanes::Worker {
            store: Arc::clone(&store),
            connections: Arc::clone(&connections),
            to_deliver,
            poll_interval: settings.poll_interval,
            contacts: HttpContactLookup::default(),
            telemetry: telemetry.clone(),
            progress: Default::default(),
            done: Default::default(),
        };
        let deliverer =
            delivery_tasks::DeliveryTasks::new(store, connections, crm, settings, telemetry);
        Self {
            worker: tokio::spawn(Arc::new(worker).run(lanes, lane_work, handed_over)),
            delivery: tokio::spawn(Arc::new(deliverer).run(woken)),
            queue,
        }
    }

    /// Where the ingest puts the webhooks it accepts.
    pub fn queue(&self) -> Arc<dyn Queue> {
        Arc::clone(&self.queue) as _
    }

    /// Stops both tasks wherever they are: what they were doing is done again on the next
    /// start, which changes nothing.
    pub async fn stop(self) {
        for task in [self.worker, self.delivery] {
            task.abort();
            match task.await {
                Err(e) if !e.is_cancelled() => tracing::error!(error = %e, "a runtime task failed"),
                _ => {}
            }
        }
    }
}
