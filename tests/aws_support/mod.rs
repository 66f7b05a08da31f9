//! Helpers of the AWS tests: the emulator and a stack per test ([`emulator`]), what Lambda
//! does around the handlers ([`lambda`]), and [`AwsBridge`], the deployed bridge on the
//! emulator: the four ingest handlers and the worker configured from the template, fed and
//! drained the way API Gateway and the SQS event source mapping do.

// Each test file uses its own part of these helpers.
#![allow(dead_code)]

pub mod emulator;
pub mod lambda;

use super::scenario::Scenario;
use callbridge_shared::aws::aws_config::SdkConfig;
use callbridge_shared::aws::aws_sdk_dynamodb::Client as DynamoClient;
use callbridge_shared::aws::aws_sdk_sqs::Client as SqsClient;
use callbridge_shared::aws::calls::DynamoCalls;
use callbridge_shared::aws::connections::DynamoConnections;
use callbridge_shared::aws::ingest::{Ingest, IngestSettings};
use callbridge_shared::aws::worker::{Worker, WorkerSettings};
use callbridge_shared::domain::event::Provider;
use callbridge_shared::ports::Crm;
use emulator::{Resources, Route};
use lambda::{EventSource, HttpAnswer, HttpRequest};
use serde_json::Value;
use std::process::Output;
use std::sync::Arc;

pub struct AwsBridge {
    pub resources: Resources,
    pub sqs: SqsClient,
    pub dynamodb: DynamoClient,
    pub source: EventSource,
    aws: SdkConfig,
    ingests: Vec<(Provider, Vec<Route>, Ingest)>,
}

impl AwsBridge {
    /// A stack of its own named `name` (letters, digits, `-`), delivering to `crm_url`, with
    /// the connections of the example config imported as `callbridge connections import`
    /// does, and the `copies` of them ((example connection, copy)).
    pub async fn start(name: &str, crm_url: &str, copies: &[(String, String)]) -> Self {
        let (resources, aws) = emulator::create_stack(name, crm_url).await;
        let ingests = Provider::ALL
            .into_iter()
            .map(|provider| {
                let function = resources.ingest_function(provider);
                let settings = IngestSettings::from_vars(|name| function.var(name))
                    .expect("the template gives the ingest its settings");
                (
                    provider,
                    function.routes.clone(),
                    Ingest::new(provider, &aws, &settings),
                )
            })
            .collect();
        let bridge = Self {
            source: EventSource::new(&resources, SqsClient::new(&aws)),
            sqs: SqsClient::new(&aws),
            dynamodb: DynamoClient::new(&aws),
            resources,
            aws,
            ingests,
        };
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

    /// A worker as deployed.
    pub fn worker(&self) -> Worker {
        self.worker_with(self.crm())
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
            .find(|(p, _, _)| *p == provider)
            .expect("an ingest per provider")
            .2
    }

    /// Sends `request` through API Gateway to the provider's ingest function; the template
    /// must route its method.
    pub async fn send(&self, provider: Provider, request: &HttpRequest) -> HttpAnswer {
        let (_, routes, ingest) = self
            .ingests
            .iter()
            .find(|(p, _, _)| *p == provider)
            .expect("an ingest per provider");
        let route = routes
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

    /// POSTs a JSON webhook with a bearer token, as the providers do.
    pub async fn post(
        &self,
        provider: Provider,
        connection_id: &str,
        token: &str,
        webhook: &Value,
    ) -> HttpAnswer {
        let request = HttpRequest {
            method: "POST".into(),
            connection_id: connection_id.into(),
            headers: vec![
                ("Authorization".into(), format!("Bearer {token}")),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: webhook.to_string().into_bytes(),
            ..HttpRequest::default()
        };
        self.send(provider, &request).await
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
