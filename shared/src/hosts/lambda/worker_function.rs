//! The worker Lambda: the SQS FIFO queue's consumer, with partial batch responses
//! (`ReportBatchItemFailures`).
//!
//! Each message is applied to its call with [`apply`], which writes the record (and the
//! revision it emitted) to DynamoDB; then the record's outbox is delivered to the CRM with
//! [`deliver_outbox`], which writes what the CRM took with [`CallRecord::mark_delivered`] and
//! says what a failure means ([`Failure`]); this host only schedules what follows. State is
//! written before the push and the delivered revision after it, so a crash in between only
//! re-sends the same revision under the same idempotency key. Both writes are conditional on
//! the version read: two workers racing on one call lose no update.
//!
//! A batch holds messages of several calls (message groups), in order within each. The calls
//! are processed side by side, each call's messages one after the other; a call's record is
//! read once per batch and then kept, so an event costs one read and one write, plus one write
//! when the CRM took a revision. When a message fails, it and every later message of its call
//! are reported as failures and come back in order; the other calls go on. When a retry may
//! help, they come back at the engine's next try for the delivery (the retry schedule, or the
//! next probe of its CRM destination's open breaker, which all workers share in DynamoDB), or,
//! when AWS itself was unavailable, after the schedule's wait for that receive ([`Redelivery`]),
//! not after the queue's visibility timeout. A message that can never succeed (it does not read, or its connection is gone), or
//! whose delivery the CRM refused for good, is logged with its reason and parked at once in
//! the dead-letter queue with the rest of its call's messages in the batch ([`DeadLetters`]);
//! the call's later messages follow it there, one receive each, until an operator redrives.
//!
//! [`CallRecord::mark_delivered`]: crate::domain::record::CallRecord::mark_delivered

use super::redelivery::{Redelivery, receive_count, whole_seconds};
use crate::adapters::aws::dynamo_breakers::DynamoBreakers;
use crate::adapters::aws::dynamo_calls::DynamoCalls;
use crate::adapters::aws::dynamo_connections::DynamoConnections;
use crate::adapters::aws::dynamo_users::DynamoUsers;
use crate::adapters::aws::sqs_dead_letters::DeadLetters;
use crate::adapters::aws::usage::{Usage, UsageCounts};
use crate::adapters::clock::SystemClock;
use crate::adapters::contact_http::HttpContactLookup;
use crate::adapters::crm_http::HttpCrm;
use crate::config::Config;
use crate::domain::connection::Connection;
use crate::domain::record::{CallKey, CallRecord};
use crate::engine::activation::WithActivatedUsers;
use crate::engine::apply::apply;
use crate::engine::breaker::BreakerSettings;
use crate::engine::deliver::{Deliverer, Waits};
use crate::engine::destination::Destinations;
use crate::engine::failure::Failure;
use crate::engine::rate_limit::RateLimit;
use crate::engine::schedule::RetrySchedule;
use crate::ports::Clock;
use crate::ports::{CallStore, ConnectionDirectory, Crm, QueuedWebhook, StoreError, Version};
use crate::telemetry::{EmfStdout, Metrics, Telemetry};
use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures_util::future::join_all;
use lambda_runtime::{Error, LambdaEvent};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Where the worker finds things and how it talks to the CRM: the [`Config`] of its
/// environment, which the template sets.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// `CALLS_TABLE`
    pub calls_table: String,
    /// `CONNECTIONS_TABLE`
    pub connections_table: String,
    /// `USERS_TABLE`: the users activated through Telsmart's onboarding.
    pub users_table: String,
    /// `CALL_RETENTION_DAYS`: how long a call is kept after its last change.
    pub call_retention: Duration,
    /// `CONNECTION_CACHE_SECS`: how long a warm container keeps a connection it read, so how
    /// long changed REST credentials may still go unused.
    pub connection_cache: Duration,
    /// `CRM_URL`: where the Morph events are POSTed.
    pub crm_url: String,
    /// `CRM_TIMEOUT_MS`: per delivery.
    pub crm_timeout: Duration,
    /// `CRM_REST_URL` (optional): the root of Morph's REST API, for connections with
    /// `delivery = "rest"` (whose credentials are in the connections table).
    pub crm_rest_url: Option<String>,
    /// `QUEUE_URL`: the webhook queue, whose messages the worker hands back.
    pub queue_url: String,
    /// `DEAD_LETTER_QUEUE_URL`: where a call that cannot go on is parked at once.
    pub dead_letter_queue_url: String,
    /// When a delivery the CRM did not take is tried again, and for how long
    /// (`RETRY_HORIZON_SECS`, `RETRY_INITIAL_SECS`, `RETRY_CAP_SECS`).
    pub retry: RetrySchedule,
    /// When a failing CRM destination stops being sent to (`BREAKER_OPEN_AFTER`,
    /// `BREAKER_PROBE_EVERY_SECS`).
    pub breaker: BreakerSettings,
    /// Requests per second to one CRM destination from one worker instance
    /// (`CRM_RATE_PER_SECOND`, `CRM_RATE_BURST`).
    pub rate_limit: RateLimit,
}

impl WorkerSettings {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let (aws, crm) = (&config.aws, &config.crm);
        let required =
            |value: &Option<String>, key: &str| Config::required(value, key).map(str::to_owned);
        Ok(Self {
            calls_table: required(&aws.calls_table, "aws.calls_table")?,
            connections_table: required(&aws.connections_table, "aws.connections_table")?,
            users_table: required(&aws.users_table, "aws.users_table")?,
            call_retention: aws.call_retention(),
            connection_cache: aws.connection_cache(),
            crm_url: required(&crm.url, "crm.url")?,
            crm_timeout: Duration::from_millis(crm.timeout_ms),
            crm_rest_url: crm.rest_url.clone(),
            queue_url: required(&aws.queue_url, "aws.queue_url")?,
            dead_letter_queue_url: required(
                &aws.dead_letter_queue_url,
                "aws.dead_letter_queue_url",
            )?,
            retry: crm.retry,
            breaker: crm.breaker,
            rate_limit: crm.rate_limit,
        })
    }

    /// Reads the settings with `vars` (a variable's value by its name).
    pub fn from_vars(vars: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        Self::from_config(&Config::from_vars(vars)?)
    }

    /// The CRM of these settings, over HTTP.
    pub fn crm(&self) -> anyhow::Result<HttpCrm> {
        HttpCrm::build(
            Some(self.crm_url.clone()),
            self.crm_rest_url.clone(),
            self.crm_timeout,
        )
    }
}

/// The handler, built once per container.
pub struct Worker {
    calls: DynamoCalls,
    /// The connections, with the users activated on them.
    connections: WithActivatedUsers,
    crm: Arc<dyn Crm>,
    /// The CRM destinations' breakers (shared by the workers in the calls table) and this
    /// instance's rate limits.
    destinations: Destinations,
    waits: Waits,
    contacts: HttpContactLookup,
    redelivery: Redelivery,
    dead_letters: DeadLetters,
    usage: Arc<Usage>,
    telemetry: Telemetry,
    /// A message is not started with less time than this left in the invocation: it could
    /// not finish, and the whole batch would come back.
    reserve: Duration,
}

impl Worker {
    /// A worker delivering to `crm` (an [`HttpCrm`] to `settings.crm_url` in production).
    pub fn new(aws: &SdkConfig, settings: &WorkerSettings, crm: Arc<dyn Crm>) -> Self {
        let usage = Arc::new(Usage::default());
        let dynamodb = aws_sdk_dynamodb::Client::new(aws);
        let telemetry = Telemetry::new(Arc::new(EmfStdout::from_env()));
        Self {
            destinations: Destinations::new(
                Arc::new(DynamoBreakers::new(
                    dynamodb.clone(),
                    &settings.calls_table,
                    usage.clone(),
                )),
                settings.breaker,
                settings.rate_limit,
                telemetry.clone(),
            ),
            waits: Waits::aws(settings.retry, settings.breaker.probe_every),
            calls: DynamoCalls::new(
                dynamodb.clone(),
                &settings.calls_table,
                settings.call_retention,
                usage.clone(),
            ),
            connections: WithActivatedUsers::new(
                Arc::new(DynamoConnections::new(
                    dynamodb.clone(),
                    &settings.connections_table,
                    usage.clone(),
                    settings.connection_cache,
                )),
                Arc::new(DynamoUsers::new(
                    dynamodb,
                    &settings.users_table,
                    usage.clone(),
                )),
            ),
            crm,
            contacts: HttpContactLookup::default(),
            redelivery: Redelivery::new(
                aws_sdk_sqs::Client::new(aws),
                &settings.queue_url,
                settings.retry,
            ),
            dead_letters: DeadLetters::new(
                aws_sdk_sqs::Client::new(aws),
                &settings.dead_letter_queue_url,
            ),
            usage,
            telemetry,
            reserve: settings.crm_timeout * 2 + Duration::from_secs(1),
        }
    }

    /// Counts into `metrics` rather than CloudWatch's EMF lines, the breakers' openings and
    /// closings included.
    pub fn with_metrics(mut self, metrics: Arc<dyn Metrics>) -> Self {
        self.telemetry = Telemetry::new(metrics);
        self.destinations = self.destinations.with_telemetry(self.telemetry.clone());
        self
    }

    /// The handler as the template configures it: settings from the environment, AWS clients
    /// from the Lambda role, the CRM over HTTP.
    pub async fn from_env() -> anyhow::Result<Self> {
        let settings = WorkerSettings::from_config(&Config::from_env()?)?;
        let crm = Arc::new(settings.crm()?);
        let aws = crate::adapters::aws::sdk::config().await;
        Ok(Self::new(&aws, &settings, crm))
    }

    /// What this handler has asked of AWS so far.
    pub fn usage(&self) -> UsageCounts {
        self.usage.counts()
    }

    /// One batch; the response lists the messages to receive again.
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, Error> {
        let (event, context) = event.into_parts();
        let deadline = context.deadline();
        let before = self.usage();
        let handed_back = self.process(&event.records, deadline).await;
        let waits: Vec<(&SqsMessage, Duration)> = handed_back
            .iter()
            .filter_map(|back| {
                let wait = back.hidden_for?;
                Some(back.messages.iter().map(move |message| (*message, wait)))
            })
            .flatten()
            .collect();
        if !waits.is_empty() {
            let left = deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            self.redelivery.postpone(&waits, left).await;
        }
        let mut failed: Vec<String> = Vec::new();
        for back in &handed_back {
            let parked = back.hidden_for.is_none() && {
                let left = deadline
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                self.dead_letters.park(&back.messages, left).await
            };
            if !parked {
                failed.extend(
                    back.messages
                        .iter()
                        .map(|m| m.message_id.clone().unwrap_or_default()),
                );
            }
        }
        let used = self.usage().since(before);
        tracing::debug!(
            messages = event.records.len(),
            failed = failed.len(),
            call_reads = used.call_reads,
            call_writes = used.call_writes,
            call_read_units = used.call_read_units,
            call_write_units = used.call_write_units,
            conflicts = used.conflicts,
            breaker_reads = used.breaker_reads,
            breaker_writes = used.breaker_writes,
            connection_reads = used.connection_reads,
            "batch done"
        );
        self.telemetry.flush();
        let mut response = SqsBatchResponse::default();
        response.set_failures(failed);
        Ok(response)
    }

    /// Processes the calls of a batch side by side; returns the messages handed back.
    async fn process<'m>(
        &self,
        messages: &'m [SqsMessage],
        deadline: SystemTime,
    ) -> Vec<HandedBack<'m>> {
        let mut groups: Vec<Vec<&'m SqsMessage>> = Vec::new();
        let mut group_of: HashMap<&'m str, usize> = HashMap::new();
        for message in messages {
            let group = message
                .attributes
                .get("MessageGroupId")
                .or(message.message_id.as_ref())
                .map_or("", String::as_str);
            let index = *group_of.entry(group).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[index].push(message);
        }
        let delivered = DeliveredInBatch::default();
        join_all(
            groups
                .iter()
                .map(|group| self.run_group(group, deadline, &delivered)),
        )
        .await
        .into_iter()
        .flatten()
        .collect()
    }

    /// One call's messages, in order, until one fails; that one and every later one are
    /// handed back.
    async fn run_group<'m>(
        &self,
        messages: &[&'m SqsMessage],
        deadline: SystemTime,
        delivered: &DeliveredInBatch,
    ) -> Option<HandedBack<'m>> {
        let calls = BatchCalls::new(&self.calls);
        for (i, message) in messages.iter().enumerate() {
            let left = deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let outcome = if left < self.reserve {
                Err(Failure::retry(format!(
                    "only {left:?} left in this invocation: the message waits for the next"
                )))
            } else {
                self.run_message(&calls, message, delivered).await
            };
            if let Err(failure) = outcome {
                let hidden_for = match &failure {
                    Failure::Wait { until, .. } => Some(whole_seconds(Duration::from_micros(
                        u64::try_from(until.as_micros() - SystemClock.now().as_micros())
                            .unwrap_or(0),
                    ))),
                    Failure::Retry { retry_after, .. } => {
                        self.telemetry.retried();
                        Some(
                            self.redelivery
                                .backoff(receive_count(message), *retry_after),
                        )
                    }
                    Failure::Park { .. } => {
                        self.telemetry.parked();
                        None
                    }
                    Failure::Poison { .. } => None,
                };
                log_failure(&failure, message, messages.len() - i - 1, hidden_for);
                return Some(HandedBack {
                    messages: messages[i..].to_vec(),
                    hidden_for,
                });
            }
        }
        None
    }

    async fn run_message(
        &self,
        calls: &BatchCalls<'_>,
        message: &SqsMessage,
        delivered: &DeliveredInBatch,
    ) -> Result<(), Failure> {
        let webhook: QueuedWebhook =
            serde_json::from_str(message.body.as_deref().unwrap_or_default())
                .map_err(|e| Failure::poison(format!("the body is not a queued webhook: {e}")))?;
        let connection = self
            .connections
            .connection(&webhook.connection_id)
            .await
            .map_err(Failure::retry)?
            .filter(|c| c.provider == webhook.provider())
            .ok_or_else(|| {
                Failure::poison(format!(
                    "there is no {} connection `{}`",
                    webhook.provider(),
                    webhook.connection_id
                ))
            })?;
        let applied = apply(calls, &connection, &self.contacts, &webhook)
            .await
            .map_err(Failure::of_store)?;
        self.telemetry.applied(&webhook, &applied);
        // Every record the message touched, not only those it added to: a message received
        // again after a crash finds its revision written but not delivered.
        for key in calls.with_outbox() {
            self.deliver(calls, &connection, &key, delivered).await?;
        }
        Ok(())
    }

    async fn deliver(
        &self,
        calls: &BatchCalls<'_>,
        connection: &Connection,
        key: &CallKey,
        delivered: &DeliveredInBatch,
    ) -> Result<(), Failure> {
        // A transfer's two calls are written by both their message groups: one delivery of a
        // call at a time in the batch, and not what the other group delivered already.
        let lock = delivered.lock_of(key);
        let _one_at_a_time = lock.lock().await;
        let Some(record) = calls.known(key) else {
            return Ok(());
        };
        let deliverer = Deliverer {
            crm: self.crm.as_ref(),
            store: calls,
            clock: &SystemClock,
            destinations: &self.destinations,
            waits: &self.waits,
            telemetry: &self.telemetry,
        };
        let done = deliverer
            .deliver_outbox(connection, record, delivered.up_to(key))
            .await
            .map_err(Failure::of_store)?;
        if let Some(revision) = done.up_to {
            delivered.record(key, revision);
        }
        match done.stopped {
            None => Ok(()),
            Some((_, failure)) => Err(failure),
        }
    }
}

/// What the message groups of one batch delivered, per call, and a lock per call so that two
/// groups that both wrote a call (a transfer links two calls) do not send its revisions twice.
#[derive(Default)]
struct DeliveredInBatch {
    calls: Mutex<HashMap<CallKey, CallDelivery>>,
}

/// A call's delivery lock, and the revision delivered up to in this batch.
type CallDelivery = (Arc<tokio::sync::Mutex<()>>, u64);

impl DeliveredInBatch {
    fn entries(&self) -> MutexGuard<'_, HashMap<CallKey, CallDelivery>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_of(&self, key: &CallKey) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(&self.entries().entry(key.clone()).or_default().0)
    }

    fn up_to(&self, key: &CallKey) -> u64 {
        self.entries().get(key).map_or(0, |(_, revision)| *revision)
    }

    fn record(&self, key: &CallKey, revision: u64) {
        let mut entries = self.entries();
        let entry = entries.entry(key.clone()).or_default();
        entry.1 = entry.1.max(revision);
    }
}

/// The calls of one message group within one batch: each record is read once, then taken
/// from here, and every write made here keeps it current. A refused write forgets the record,
/// so the retry reads what the other writer wrote.
struct BatchCalls<'a> {
    store: &'a DynamoCalls,
    records: Mutex<BTreeMap<CallKey, (CallRecord, Version)>>,
}

impl<'a> BatchCalls<'a> {
    fn new(store: &'a DynamoCalls) -> Self {
        Self {
            store,
            records: Mutex::default(),
        }
    }

    fn records(&self) -> MutexGuard<'_, BTreeMap<CallKey, (CallRecord, Version)>> {
        // Plain data: still good after a panic elsewhere.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calls known here with deliveries waiting.
    fn with_outbox(&self) -> Vec<CallKey> {
        self.records()
            .iter()
            .filter(|(_, (record, _))| !record.outbox.is_empty())
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The call's record as this batch knows it, if it read it.
    fn known(&self, key: &CallKey) -> Option<CallRecord> {
        self.records().get(key).map(|(record, _)| record.clone())
    }
}

#[async_trait]
impl CallStore for BatchCalls<'_> {
    async fn load(&self, key: &CallKey) -> anyhow::Result<Option<(CallRecord, Version)>> {
        if let Some(known) = self.records().get(key) {
            return Ok(Some(known.clone()));
        }
        let loaded = self.store.load(key).await?;
        if let Some(loaded) = &loaded {
            self.records().insert(key.clone(), loaded.clone());
        }
        Ok(loaded)
    }

    async fn save(
        &self,
        record: &CallRecord,
        read: Option<Version>,
    ) -> Result<Version, StoreError> {
        let saved = self.store.save(record, read).await;
        let mut records = self.records();
        match &saved {
            Ok(version) => {
                records.insert(record.key.clone(), (record.clone(), *version));
            }
            // After a conflict or an unknown outcome only a fresh read tells what is stored.
            Err(_) => {
                records.remove(&record.key);
            }
        }
        saved
    }
}

/// A call's messages handed back to SQS: the one that failed and those behind it.
struct HandedBack<'m> {
    messages: Vec<&'m SqsMessage>,
    /// How long SQS keeps them hidden; `None`: they cannot go on, and are parked in the
    /// dead-letter queue ([`DeadLetters`]).
    hidden_for: Option<Duration>,
}

/// Logs why `message` did not go through. `held_back`: the later messages of the call, which
/// fail with it to keep the order; `hidden_for`: how long they all stay away.
fn log_failure(
    failure: &Failure,
    message: &SqsMessage,
    held_back: usize,
    hidden_for: Option<Duration>,
) {
    let attribute = |name: &str| {
        message
            .attributes
            .get(name)
            .map_or("", String::as_str)
            .to_owned()
    };
    let message_id = message.message_id.as_deref().unwrap_or_default();
    let group = attribute("MessageGroupId");
    let receive_count = attribute("ApproximateReceiveCount");
    let reason = failure.reason();
    match failure {
        Failure::Poison { .. } => tracing::error!(
            message_id,
            group,
            receive_count,
            held_back,
            reason,
            "the message can never be processed: it and the call's messages behind it go to the dead-letter queue"
        ),
        Failure::Park { .. } => tracing::error!(
            message_id,
            group,
            receive_count,
            held_back,
            reason,
            "the delivery is parked (the CRM refused it, or its retry horizon is past: the reason says which): the message and the call's messages behind it go to the dead-letter queue until the cause is fixed and they are redriven"
        ),
        Failure::Wait { .. } | Failure::Retry { .. } => tracing::warn!(
            message_id,
            group,
            receive_count,
            held_back,
            reason,
            comes_back_in_s = hidden_for.map(|wait| wait.as_secs()),
            "the message comes back at its next try"
        ),
    }
}
