//! The ingest Lambda of one provider, behind the HTTP API's route
//! `/webhooks/{provider}/{connection_id}`: it runs the front door both hosts mount
//! ([`crate::http`]) over DynamoDB and SQS, with its provider's routes only, so its answers
//! are the local server's. Telsmart's function also takes Telsmart's onboarding requests, at
//! `/telsmart/{connection_id}/activate` and `/deactivate` ([`crate::engine::activation`]).

use crate::adapters::aws::dynamo_connections::DynamoConnections;
use crate::adapters::aws::dynamo_users::DynamoUsers;
use crate::adapters::aws::sqs_queue::SqsQueue;
use crate::adapters::aws::usage::{Usage, UsageCounts};
use crate::adapters::clock::SystemClock;
use crate::config::Config;
use crate::domain::event::Provider;
use crate::http::{self, FrontDoor, Mount};
use crate::telemetry::{EmfStdout, Metrics, Telemetry};
use aws_config::SdkConfig;
use axum::Router;
use axum::response::Response;
use std::sync::Arc;
use std::time::Duration;

/// Where the ingest functions find things: the [`Config`] of their environment, which the
/// template sets.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// `CONNECTIONS_TABLE`
    pub connections_table: String,
    /// `QUEUE_URL`
    pub queue_url: String,
    /// `USERS_TABLE` (Telsmart's function only): where its activation routes write.
    pub users_table: Option<String>,
    /// `CONNECTION_CACHE_SECS`: how long a warm container keeps a connection it read, so how
    /// long a retired token may still be taken.
    pub connection_cache: Duration,
}

impl IngestSettings {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let aws = &config.aws;
        Ok(Self {
            connections_table: Config::required(&aws.connections_table, "aws.connections_table")?
                .to_owned(),
            queue_url: Config::required(&aws.queue_url, "aws.queue_url")?.to_owned(),
            users_table: aws.users_table.clone(),
            connection_cache: aws.connection_cache(),
        })
    }

    /// Reads the settings with `vars` (a variable's value by its name).
    pub fn from_vars(vars: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        Self::from_config(&Config::from_vars(vars)?)
    }
}

/// The handler of one provider's webhooks, built once per container.
pub struct Ingest {
    provider: Provider,
    connections: Arc<DynamoConnections>,
    queue: Arc<SqsQueue>,
    /// The users activated through Telsmart's onboarding, when this function takes it.
    users: Option<Arc<DynamoUsers>>,
    usage: Arc<Usage>,
    telemetry: Telemetry,
}

impl Ingest {
    pub fn new(provider: Provider, aws: &SdkConfig, settings: &IngestSettings) -> Self {
        let usage = Arc::new(Usage::default());
        let dynamodb = aws_sdk_dynamodb::Client::new(aws);
        Self {
            provider,
            users: settings
                .users_table
                .as_ref()
                .map(|table| Arc::new(DynamoUsers::new(dynamodb.clone(), table, usage.clone()))),
            connections: Arc::new(DynamoConnections::without_rest_credentials(
                dynamodb,
                &settings.connections_table,
                usage.clone(),
                settings.connection_cache,
            )),
            queue: Arc::new(SqsQueue::new(
                aws_sdk_sqs::Client::new(aws),
                &settings.queue_url,
                usage.clone(),
            )),
            usage,
            telemetry: Telemetry::new(Arc::new(EmfStdout::from_env())),
        }
    }

    /// Counts into `metrics` rather than CloudWatch's EMF lines.
    pub fn with_metrics(mut self, metrics: Arc<dyn Metrics>) -> Self {
        self.telemetry = Telemetry::new(metrics);
        self
    }

    /// The handler as the template configures it: settings from the environment, AWS clients
    /// from the Lambda role.
    pub async fn from_env(provider: Provider) -> anyhow::Result<Self> {
        let settings = IngestSettings::from_config(&Config::from_env()?)?;
        let aws = crate::adapters::aws::sdk::config().await;
        Ok(Self::new(provider, &aws, &settings))
    }

    /// What this handler has asked of AWS so far.
    pub fn usage(&self) -> UsageCounts {
        self.usage.counts()
    }

    /// The front door with this provider's routes only, for `lambda_http::run`: the HTTP API
    /// (payload 2.0, `$default` stage) gives the request its path as sent, the query string and
    /// the headers, and a base64-encoded body decoded, so every answer is the local server's.
    /// An AWS outage is a 503 the provider retries. What the request counted is written
    /// before the answer ([`Telemetry::flush`]).
    pub fn router(&self) -> Router {
        let door = FrontDoor {
            connections: Arc::clone(&self.connections) as _,
            queue: Arc::clone(&self.queue) as _,
            users: self.users.clone().map(|users| users as _),
            clock: Arc::new(SystemClock),
            telemetry: self.telemetry.clone(),
        };
        // The invocation's metric line, written before its answer.
        let telemetry = self.telemetry.clone();
        http::router(door, Mount::Only(self.provider)).layer(axum::middleware::map_response(
            move |response: Response| {
                telemetry.flush();
                std::future::ready(response)
            },
        ))
    }
}
