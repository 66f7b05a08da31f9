//! Helpers of the AWS tests: the emulator and a stack per test ([`emulator`]), what Lambda
//! does around the handlers ([`lambda`]), and [`AwsBridge`], the deployed bridge on the
//! emulator: the four ingest handlers and the worker configured from the template, fed and
//! drained the way API Gateway and the SQS event source mapping do.

pub mod emulator;
pub mod lambda;

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

    /// Every message waiting in the dead-letter queue (received, not deleted).
    pub async fn dead_letters(&self) -> Vec<String> {
        let url = &self.resources.queue("DeadLetterQueue").url;
        let mut bodies = Vec::new();
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
                return bodies;
            }
            bodies.extend(received.iter().filter_map(|m| m.body().map(str::to_string)));
        }
    }
}
