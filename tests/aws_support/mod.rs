//! Helpers of the AWS tests: the emulator and a stack per test ([`emulator`]), what Lambda
//! does around the handlers ([`lambda`]), and [`AwsBridge`], the deployed bridge on the
//! emulator: the four ingest handlers and the worker configured from the template, fed and
//! drained the way API Gateway and the SQS event source mapping do.

// Each test file uses its own part of these helpers.
#![allow(dead_code)]

pub mod emulator;
pub mod lambda;

use super::scenario::Scenario;
use callbridge_shared::adapters::aws::aws_config::SdkConfig;
use callbridge_shared::adapters::aws::aws_sdk_dynamodb::Client as DynamoClient;
use callbridge_shared::adapters::aws::aws_sdk_sqs::Client as SqsClient;
use callbridge_shared::adapters::aws::dynamo_calls::DynamoCalls;
use callbridge_shared::adapters::aws::dynamo_connections::DynamoConnections;
use callbridge_shared::adapters::aws::sqs_queue::message_group;
use callbridge_shared::adapters::clock::SystemClock;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::providers;
use callbridge_shared::hosts::lambda::webhook_function::{Ingest, IngestSettings};
use callbridge_shared::hosts::lambda::worker_function::{Worker, WorkerSettings};
use callbridge_shared::ports::Clock;
use callbridge_shared::ports::{Crm, QueuedWebhook};
use emulator::Resources;
use lambda::{EventSource, HttpAnswer, HttpRequest};
use serde_json::Value;
use std::collections::HashSet;
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct AwsBridge {
    pub resources: Resources,
    pub sqs: SqsClient,
    pub dynamodb: DynamoClient,
    pub source: EventSource,
    aws: SdkConfig,
    ingests: Vec<(Provider, Ingest)>,
}

impl AwsBridge {
    /// A stack of its own named `name` (letters, digits, `-`), delivering to `crm_url`, with
    /// the connections of the example config imported as `callbridge connections import`
    /// does, and the `copies` of them ((example connection, copy)).
    pub async fn start(name: &str, crm_url: &str, copies: &[(String, String)]) -> Self {
        let (resources, aws) = emulator::create_stack(name, crm_url).await;
        let bridge = Self::on(resources, aws);
        let connections = bridge.connections();
        let example = emulator::repo_root().join("infra/callbridge.example.toml");
        callbridge::connections::import(&example, &connections)
            .await
            .expect("the example connections import");
        for (original, copy) in copies {
            let mut connection = super::scenario::example_connection(original)
                .to_connection()
                .expect("an example connection");
            connection.id = copy.clone();
            connections.put(&connection).await.expect("a copy imports");
        }
        bridge
    }

    /// The bridge of a stack another process made (`resources`), on the emulator at
    /// `endpoint`: another container of the same functions.
    pub async fn attach(resources: Resources, endpoint: &str) -> Self {
        let aws = emulator::sdk_config(endpoint, &resources.region).await;
        Self::on(resources, aws)
    }

    fn on(resources: Resources, aws: SdkConfig) -> Self {
        let ingests = Provider::ALL
            .into_iter()
            .map(|provider| {
                let function = resources.ingest_function(provider);
                let settings = IngestSettings::from_vars(|name| function.var(name))
                    .expect("the template gives the ingest its settings");
                (provider, Ingest::new(provider, &aws, &settings))
            })
            .collect();
        Self {
            source: EventSource::new(&resources, SqsClient::new(&aws)),
            sqs: SqsClient::new(&aws),
            dynamodb: DynamoClient::new(&aws),
            resources,
            aws,
            ingests,
        }
    }

    pub fn worker_settings(&self) -> WorkerSettings {
        let (function, _) = self.resources.worker_function();
        WorkerSettings::from_vars(|name| function.var(name))
            .expect("the template gives the worker its settings")
    }

    /// The CRM of the template's settings.
    pub fn crm(&self) -> Arc<dyn Crm> {
        Arc::new(self.worker_settings().crm().expect("an HTTP client"))
    }

    /// A worker (a container of the worker function) delivering through `crm`.
    pub fn worker_with(&self, crm: Arc<dyn Crm>) -> Worker {
        Worker::new(&self.aws, &self.worker_settings(), crm)
    }

    /// A worker with `settings` (the template's, changed by a test), delivering over HTTP.
    pub fn worker_of(&self, settings: &WorkerSettings) -> Worker {
        let crm = Arc::new(settings.crm().expect("an HTTP client"));
        Worker::new(&self.aws, settings, crm)
    }

    /// A worker as deployed.
    pub fn worker(&self) -> Worker {
        self.worker_of(&self.worker_settings())
    }

    /// The connections table, as the functions read it.
    pub fn connections(&self) -> DynamoConnections {
        let (function, _) = self.resources.worker_function();
        DynamoConnections::new(
            self.dynamodb.clone(),
            function
                .var("CONNECTIONS_TABLE")
                .expect("CONNECTIONS_TABLE"),
            Arc::default(),
            self.worker_settings().connection_cache,
        )
    }

    /// The calls table, as the worker reads it.
    pub fn calls(&self) -> DynamoCalls {
        let settings = self.worker_settings();
        DynamoCalls::new(
            self.dynamodb.clone(),
            settings.calls_table,
            settings.call_retention,
            Arc::default(),
        )
    }

    pub fn ingest(&self, provider: Provider) -> &Ingest {
        &self
            .ingests
            .iter()
            .find(|(p, _)| *p == provider)
            .expect("an ingest per provider")
            .1
    }

    /// Sends `request` through API Gateway to the provider's ingest function; the template
    /// must route its method.
    pub async fn send(&self, provider: Provider, request: &HttpRequest) -> HttpAnswer {
        self.send_to(self.ingest(provider), provider, request).await
    }

    /// [`AwsBridge::send`] to `ingest`, a container of the provider's function.
    pub async fn send_to(
        &self,
        ingest: &Ingest,
        provider: Provider,
        request: &HttpRequest,
    ) -> HttpAnswer {
        let function = self.resources.ingest_function(provider);
        let route = function
            .routes
            .iter()
            .find(|r| r.method == request.method && r.path.starts_with("/webhooks/"))
            .unwrap_or_else(|| {
                panic!(
                    "the template has no {} route for {provider}",
                    request.method
                )
            });
        lambda::invoke_ingest(ingest, route, request).await
    }

    /// A new container of the provider's ingest function, keeping the connections it reads
    /// for `connection_cache` (`CONNECTION_CACHE_SECS`; the template's default is a minute).
    pub fn ingest_caching_for(&self, provider: Provider, connection_cache: Duration) -> Ingest {
        let function = self.resources.ingest_function(provider);
        let mut settings = IngestSettings::from_vars(|name| function.var(name))
            .expect("the template gives the ingest its settings");
        settings.connection_cache = connection_cache;
        Ingest::new(provider, &self.aws, &settings)
    }

    /// A JSON webhook with a bearer token, as the providers send it.
    pub fn webhook_request(connection_id: &str, token: &str, webhook: &Value) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            connection_id: connection_id.into(),
            headers: vec![
                ("Authorization".into(), format!("Bearer {token}")),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: webhook.to_string().into_bytes(),
            ..HttpRequest::default()
        }
    }

    /// POSTs a JSON webhook with a bearer token, as the providers do.
    pub async fn post(
        &self,
        provider: Provider,
        connection_id: &str,
        token: &str,
        webhook: &Value,
    ) -> HttpAnswer {
        let request = Self::webhook_request(connection_id, token, webhook);
        self.send(provider, &request).await
    }

    /// Queues webhook `i` of `s` again as its ingest does, under a deduplication id SQS has not
    /// seen: a provider's retry after SQS's five-minute deduplication window. (Only a new id
    /// gets a repeat to the worker here: the emulator deduplicates across the whole queue, for
    /// as long as it runs.)
    pub async fn repeat_after_the_dedup_window(&self, s: &Scenario, i: usize) {
        static REPEATS: AtomicU64 = AtomicU64::new(0);
        let parsed = providers::parse(s.provider, &s.webhooks[i])
            .unwrap_or_else(|e| panic!("{} webhook {i}: {e:?}", s.name));
        let webhook = QueuedWebhook {
            connection_id: s.connection.clone(),
            received_at: SystemClock.now(),
            event: parsed.event,
            raw: s.webhooks[i].clone(),
        };
        let repeat = REPEATS.fetch_add(1, Ordering::Relaxed);
        self.sqs
            .send_message()
            .queue_url(&self.resources.queue("WebhookQueue").url)
            .message_group_id(message_group(&webhook.call()))
            .message_deduplication_id(format!("{}-repeat-{repeat}", webhook.event.id))
            .message_body(serde_json::to_string(&webhook).expect("JSON"))
            .send()
            .await
            .expect("send to the emulated queue");
    }

    /// POSTs the webhooks of `s` at the indices `order`, each of which must be accepted.
    pub async fn post_scenario(&self, s: &Scenario, order: impl IntoIterator<Item = usize>) {
        let token = s.token();
        for i in order {
            let answer = self
                .post(s.provider, &s.connection, &token, &s.webhooks[i])
                .await;
            assert_eq!(
                answer.status, 202,
                "{} webhook {i}: {}",
                s.name, answer.body
            );
        }
    }

    /// Runs `callbridge ARGS` as an operator does, with the stack's outputs and the emulator
    /// in the environment.
    pub async fn operator(&self, args: &[&str]) -> Output {
        let (worker, _) = self.resources.worker_function();
        // The emulator's queue URLs are on its own endpoint: `http://127.0.0.1:<port>/<account>/<queue>`.
        let queue_url = &self.resources.queue("WebhookQueue").url;
        let endpoint: String = queue_url.split('/').take(3).collect::<Vec<_>>().join("/");
        tokio::process::Command::new(env!("CARGO_BIN_EXE_callbridge"))
            .args(args)
            .env_remove("AWS_PROFILE")
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_REGION", &self.resources.region)
            .env("AWS_ACCESS_KEY_ID", "emulator")
            .env("AWS_SECRET_ACCESS_KEY", "emulator")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("CALLS_TABLE", worker.var("CALLS_TABLE").unwrap())
            .env(
                "CONNECTIONS_TABLE",
                worker.var("CONNECTIONS_TABLE").unwrap(),
            )
            .env("QUEUE_URL", queue_url)
            .env(
                "DEAD_LETTER_QUEUE_URL",
                &self.resources.queue("DeadLetterQueue").url,
            )
            .output()
            .await
            .expect("callbridge runs")
    }

    /// How many messages the dead-letter queue holds, as the console shows it.
    pub async fn dead_letter_count(&self) -> u64 {
        callbridge::redrive::waiting(&self.sqs, &self.resources.queue("DeadLetterQueue").url)
            .await
            .expect("the dead-letter queue's attributes")
    }

    /// Every message waiting in the dead-letter queue (read, and left there for a redrive).
    pub async fn dead_letters(&self) -> Vec<String> {
        let url = &self.resources.queue("DeadLetterQueue").url;
        let mut read = Vec::new();
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .send()
                .await
                .expect("receive from the dead-letter queue")
                .messages
                .unwrap_or_default();
            if received.is_empty() {
                break;
            }
            read.extend(received);
        }
        for message in &read {
            self.sqs
                .change_message_visibility()
                .queue_url(url)
                .receipt_handle(message.receipt_handle().expect("a receipt handle"))
                .visibility_timeout(0)
                .send()
                .await
                .expect("release a dead letter");
        }
        read.iter()
            .filter_map(|m| m.body().map(str::to_string))
            .collect()
    }
}

/// `scenarios` but those sharing a webhook with an earlier one: SQS deduplicates within a
/// message group (a call) on AWS, but across the queue in the emulator.
pub fn without_shared_webhooks(scenarios: Vec<Scenario>) -> Vec<Scenario> {
    let mut seen = HashSet::new();
    scenarios
        .into_iter()
        .filter(|s| {
            let ids = event_ids(s);
            let shared = ids.iter().any(|id| seen.contains(id));
            seen.extend(ids);
            !shared
        })
        .collect()
}

/// The ids of the events of a scenario's webhooks, which SQS deduplicates them by.
pub fn event_ids(s: &Scenario) -> HashSet<String> {
    s.webhooks
        .iter()
        .map(|w| providers::parse(s.provider, w).expect("a scenario webhook parses"))
        .map(|parsed| parsed.event.id)
        .collect()
}

/// What the worker logs, as its log group would hold it.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    pub fn subscriber(&self) -> tracing::Dispatch {
        let writer = self.clone();
        tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish(),
        )
    }

    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }
}
