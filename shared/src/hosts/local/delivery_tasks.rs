//! The delivery task: every call with deliveries waiting gets a task of its own that pushes
//! the call's outbox to the CRM, oldest first ([`Deliverer`]). A call waiting to retry holds up
//! only itself, sleeping until the engine's next try, or until its CRM destination's breaker
//! closes; a delivery the CRM refuses, or still failing when its retry horizon ends, is parked
//! and the call's later deliveries wait behind it, so the CRM never sees a call's events out of
//! order.

use super::Settings;
use crate::adapters::clock::SystemClock;
use crate::adapters::sqlite::{ParkedDelivery, SqliteStore};
use crate::domain::record::{CallKey, Delivery, RecordError};
use crate::engine::deliver::{Deliverer, Waits};
use crate::engine::destination::{Destinations, MemoryBreakers};
use crate::engine::failure::Failure;
use crate::ports::{CallStore, Clock, ConnectionDirectory, Crm};
use crate::telemetry::Telemetry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{self, JoinError, JoinSet};
use tokio::time::MissedTickBehavior;

/// Requests to the CRM at once, over all calls.
const MAX_IN_FLIGHT: usize = 64;

pub(super) struct DeliveryTasks {
    store: Arc<SqliteStore>,
    connections: Arc<dyn ConnectionDirectory>,
    crm: Arc<dyn Crm>,
    /// The CRM destinations' breakers and rate limits, in memory: one process sends to them.
    destinations: Destinations,
    waits: Waits,
    poll_interval: Duration,
    in_flight: Semaphore,
    telemetry: Telemetry,
}

impl DeliveryTasks {
    pub fn new(
        store: Arc<SqliteStore>,
        connections: Arc<dyn ConnectionDirectory>,
        crm: Arc<dyn Crm>,
        settings: Settings,
        telemetry: Telemetry,
    ) -> Self {
        Self {
            store,
            connections,
            crm,
            destinations: Destinations::new(
                Arc::new(MemoryBreakers::default()),
                settings.breaker,
                settings.rate_limit,
                telemetry.clone(),
            ),
            waits: Waits::local(settings.retry, settings.breaker.probe_every),
            poll_interval: settings.poll_interval,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            telemetry,
        }
    }

    /// Starts a call's task when the worker wakes it or the store shows it undelivered (at
    /// once on start, then every poll interval).
    pub async fn run(self: Arc<Self>, mut woken: mpsc::UnboundedReceiver<CallKey>) {
        let mut calls = Calls::default();
        let mut poll = tokio::time::interval(self.poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(call) = woken.recv() => calls.wake(&self, call),
                Some(finished) = calls.tasks.join_next_with_id() => calls.finished(&self, finished),
                _ = poll.tick() => match self.store.undelivered_calls().await {
                    Ok(undelivered) => undelivered.into_iter().for_each(|call| calls.wake(&self, call)),
                    Err(e) => tracing::error!(error = %e, "cannot look for undelivered calls"),
                },
            }
        }
    }

    async fn deliver_call(self: Arc<Self>, call: CallKey) {
        let Err(e) = self.deliver(&call).await else {
            return;
        };
        if let Some(unreadable @ RecordError::Unreadable { .. }) = RecordError::of(&e) {
            // Tried again it would fail the same way every poll: parked, on its own, until
            // an operator erases the call or un-parks it.
            let parked = ParkedDelivery {
                resource_id: call.resource_id(),
                revision: 0,
                idempotency_key: String::new(),
                reason: unreadable.to_string(),
                crm_status: None,
                crm_answer: None,
                parked_at: SystemClock.now(),
            };
            tracing::error!(call = ?call.to_path(), error = %e, "the call's record does not read: its deliveries are parked");
            match self.store.park(parked).await {
                Ok(()) => return self.telemetry.parked(),
                Err(e) => tracing::error!(call = ?call.to_path(), error = %e, "cannot park"),
            }
        }
        tracing::error!(call = ?call.to_path(), error = %e, "delivery interrupted; trying again at the next poll");
    }

    /// Pushes the call's outbox until it is empty or parked, waiting between attempts.
    async fn deliver(&self, call: &CallKey) -> anyhow::Result<()> {
        let Some(connection) = self.connections.connection(&call.connection_id).await? else {
            tracing::warn!(call = ?call.to_path(), "the call's connection is not configured; its deliveries wait for a restart");
            return Ok(());
        };
        // Only a call's own task parks its deliveries, and un-parking only lets them go: one
        // look is enough.
        if self.store.is_parked(&call.resource_id()).await? {
            return Ok(());
        }
        let deliverer = Deliverer {
            crm: &*self.crm,
            store: &*self.store,
            clock: &SystemClock,
            destinations: &self.destinations,
            waits: &self.waits,
            telemetry: &self.telemetry,
        };
        let destination = self.crm.destination(&connection);
        let mut current = self.store.load(call).await?.map(|(record, _)| record);
        while let Some(record) = current {
            if record.outbox.is_empty() {
                return Ok(());
            }
            let closings = self.destinations.closings(&destination);
            let delivered = {
                let _permit = self.in_flight.acquire().await?;
                deliverer.deliver_outbox(&connection, record, 0).await?
            };
            if let Some(revision) = delivered.up_to {
                tracing::debug!(resource_id = %delivered.record.resource_id, revision, "delivered");
            }
            let Some((delivery, failure)) = delivered.stopped else {
                current = Some(delivered.record);
                continue;
            };
            match failure {
                Failure::Wait { reason, until } => {
                    tracing::debug!(resource_id = %delivery.resource_id, revision = delivery.revision, reason, %until, "delivery waits");
                    self.destinations
                        .wait(&destination, until, closings, &SystemClock)
                        .await;
                }
                // The breakers are in memory: only a store error comes here, tried again at
                // the next poll.
                Failure::Retry { reason, .. } => {
                    tracing::warn!(resource_id = %delivery.resource_id, revision = delivery.revision, reason, "delivery interrupted; trying again at the next poll");
                    tokio::time::sleep(self.poll_interval).await;
                }
                failure => return self.park(&delivery, failure).await,
            }
            current = self.store.load(call).await?.map(|(record, _)| record);
        }
        Ok(())
    }

    /// Parks the delivery with the CRM's answer.
    async fn park(&self, delivery: &Delivery, failure: Failure) -> anyhow::Result<()> {
        let (reason, crm_status, crm_answer) = match failure {
            Failure::Park {
                reason,
                crm_status,
                crm_answer,
            } => (reason, crm_status, crm_answer),
            other => (other.reason(), None, None),
        };
        tracing::warn!(resource_id = %delivery.resource_id, revision = delivery.revision, reason, "delivery parked; the call's later deliveries wait behind it (`callbridge deliveries retry` sends it again)");
        self.store
            .park(ParkedDelivery {
                resource_id: delivery.resource_id.clone(),
                revision: delivery.revision,
                idempotency_key: delivery.idempotency_key.clone(),
                reason,
                crm_status,
                crm_answer,
                parked_at: SystemClock.now(),
            })
            .await?;
        self.telemetry.parked();
        Ok(())
    }
}

/// The calls' tasks: at most one per call, so a call's deliveries stay in order.
#[derive(Default)]
struct Calls {
    tasks: JoinSet<()>,
    /// The calls with a task, and whether each was woken again while it ran.
    running: HashMap<CallKey, bool>,
    by_task: HashMap<task::Id, CallKey>,
}

impl Calls {
    fn wake(&mut self, deliverer: &Arc<DeliveryTasks>, call: CallKey) {
        match self.running.get_mut(&call) {
            Some(woken_again) => *woken_again = true,
            None => self.spawn(deliverer, call),
        }
    }

    fn spawn(&mut self, deliverer: &Arc<DeliveryTasks>, call: CallKey) {
        let task = self
            .tasks
            .spawn(Arc::clone(deliverer).deliver_call(call.clone()));
        self.by_task.insert(task.id(), call.clone());
        self.running.insert(call, false);
    }

    fn finished(
        &mut self,
        deliverer: &Arc<DeliveryTasks>,
        finished: Result<(task::Id, ()), JoinError>,
    ) {
        let id = match finished {
            Ok((id, ())) => id,
            // Cancelled: the runtime is shutting down; what the task was doing is done again
            // on the next start.
            Err(e) if e.is_cancelled() => e.id(),
            Err(e) => {
                tracing::error!(error = %e, "a delivery task failed");
                e.id()
            }
        };
        let Some(call) = self.by_task.remove(&id) else {
            return;
        };
        // A wake that came as the task was ending may be for a delivery it did not see.
        if self.running.remove(&call) == Some(true) {
            self.spawn(deliverer, call);
        }
    }
}
