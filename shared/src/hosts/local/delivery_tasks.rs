//! The delivery task: every call with deliveries waiting gets a task of its own that pushes
//! the call's outbox to the CRM, oldest first. A call waiting to retry holds up only itself;
//! a delivery the CRM refuses, or that runs out of attempts, is parked and the call's later
//! deliveries wait behind it, so the CRM never sees a call's events out of order.

use super::Settings;
use crate::adapters::clock::SystemClock;
use crate::adapters::sqlite::{ParkedDelivery, SqliteStore};
use crate::domain::connection::Connection;
use crate::domain::record::{CallKey, CallRecord, Delivery, RecordError};
use crate::engine::deliver::{Pushed, RetryPolicy, push_outbox};
use crate::ports::Clock;
use crate::ports::{CallStore, ConnectionDirectory, Crm, DeliveryOutcome, StoreError, Version};
use crate::telemetry::Telemetry;
use anyhow::Context;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{self, JoinError, JoinSet};
use tokio::time::MissedTickBehavior;

/// Requests to the CRM at once, over all calls.
const MAX_IN_FLIGHT: usize = 64;
/// Saves retried when the worker changed the call meanwhile.
const MAX_CONFLICTS: usize = 16;

pub(super) struct Deliverer {
    store: Arc<SqliteStore>,
    connections: Arc<dyn ConnectionDirectory>,
    crm: Arc<dyn Crm>,
    retry: RetryPolicy,
    poll_interval: Duration,
    in_flight: Semaphore,
    telemetry: Telemetry,
}

/// What to do after a delivery did not go through.
enum Next {
    RetryAfter(Duration),
    Parked,
}

impl Deliverer {
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
            retry: settings.retry,
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
        let mut attempts = Attempts::default();
        let mut current = self.store.load(call).await?;
        while let Some((record, version)) = current {
            if record.outbox.is_empty() {
                return Ok(());
            }
            let pushed = self.push(&connection, call, &record.outbox).await?;
            let (record, version) = match pushed.delivered_up_to {
                Some(revision) => {
                    tracing::debug!(resource_id = %record.resource_id, revision, "delivered");
                    self.rewrite(record, version, |r| r.mark_delivered(revision))
                        .await?
                }
                None => (record, version),
            };
            current = match pushed.stopped_at {
                None => Some((record, version)),
                Some((delivery, DeliveryOutcome::Reject { status, .. }))
                    if record.erased_at.is_some() =>
                {
                    tracing::warn!(resource_id = %delivery.resource_id, revision = delivery.revision, status, "the CRM refused the deletion of an erased call: the call is forgotten all the same");
                    let revision = delivery.revision;
                    Some(
                        self.rewrite(record, version, |r| {
                            r.drop_refused(revision);
                        })
                        .await?,
                    )
                }
                Some((delivery, outcome)) => match self
                    .after_failure(&delivery, outcome, &mut attempts)
                    .await?
                {
                    Next::RetryAfter(wait) => {
                        tokio::time::sleep(wait).await;
                        self.store.load(call).await?
                    }
                    Next::Parked => return Ok(()),
                },
            };
        }
        Ok(())
    }

    async fn push(
        &self,
        connection: &Connection,
        call: &CallKey,
        outbox: &[Delivery],
    ) -> anyhow::Result<Pushed> {
        let _permit = self.in_flight.acquire().await?;
        Ok(push_outbox(
            &*self.crm,
            &*self.store,
            connection,
            call,
            outbox,
            &self.telemetry,
        )
        .await)
    }

    /// Changes the outbox (takes out what the CRM took, or what it refused of an erased call)
    /// over whatever the worker added since.
    async fn rewrite(
        &self,
        mut record: CallRecord,
        mut version: Version,
        change: impl Fn(&mut CallRecord),
    ) -> anyhow::Result<(CallRecord, Version)> {
        for _ in 0..MAX_CONFLICTS {
            change(&mut record);
            match self.store.save(&record, Some(version)).await {
                Ok(saved) => return Ok((record, saved)),
                Err(StoreError::Conflict) => {
                    (record, version) = self
                        .store
                        .load(&record.key)
                        .await?
                        .context("the call's record disappeared")?;
                }
                Err(StoreError::Other(e)) => return Err(e),
            }
        }
        anyhow::bail!(
            "call {} kept changing under us ({MAX_CONFLICTS} conflicts)",
            record.key.to_path()
        )
    }

    /// Waits on the retry policy, or parks the delivery with the CRM's answer.
    async fn after_failure(
        &self,
        delivery: &Delivery,
        outcome: DeliveryOutcome,
        attempts: &mut Attempts,
    ) -> anyhow::Result<Next> {
        let (reason, crm_status, crm_answer) = match outcome {
            DeliveryOutcome::Delivered => return Ok(Next::RetryAfter(Duration::ZERO)),
            DeliveryOutcome::Retry {
                reason,
                retry_after,
            } => {
                let attempt = attempts.failed(delivery.revision);
                if let Some(wait) = self.retry.delay(attempt, retry_after) {
                    tracing::warn!(resource_id = %delivery.resource_id, revision = delivery.revision, attempt, reason, ?wait, "delivery failed; retrying");
                    self.telemetry.retried();
                    return Ok(Next::RetryAfter(wait));
                }
                (
                    format!("gave up after {attempt} attempts: {reason}"),
                    None,
                    None,
                )
            }
            DeliveryOutcome::Reject { status, body } => (
                format!("the CRM refused it (HTTP {status})"),
                Some(status),
                Some(body),
            ),
            DeliveryOutcome::Uncertain { reason } => (reason, None, None),
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
        Ok(Next::Parked)
    }
}

/// Failed attempts at the delivery a call is held up on.
#[derive(Default)]
struct Attempts {
    revision: u64,
    failed: u32,
}

impl Attempts {
    /// Counts a failed attempt at `revision`; returns how many it has had.
    fn failed(&mut self, revision: u64) -> u32 {
        if self.revision != revision {
            *self = Self {
                revision,
                failed: 0,
            };
        }
        self.failed += 1;
        self.failed
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
    fn wake(&mut self, deliverer: &Arc<Deliverer>, call: CallKey) {
        match self.running.get_mut(&call) {
            Some(woken_again) => *woken_again = true,
            None => self.spawn(deliverer, call),
        }
    }

    fn spawn(&mut self, deliverer: &Arc<Deliverer>, call: CallKey) {
        let task = self
            .tasks
            .spawn(Arc::clone(deliverer).deliver_call(call.clone()));
        self.by_task.insert(task.id(), call.clone());
        self.running.insert(call, false);
    }

    fn finished(
        &mut self,
        deliverer: &Arc<Deliverer>,
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
