//! The ingest Lambda of one provider, behind the HTTP API's route
//! `/webhooks/{provider}/{connection_id}`: the API Gateway request becomes a
//! [`WebhookRequest`], [`engine::ingest`](crate::engine::ingest) decides, and its
//! [`Accepted`](crate::engine::ingest::Accepted) or
//! [`Rejection`](crate::engine::ingest::Rejection) becomes the HTTP answer, with the same statuses and bodies as
//! the local server. Telsmart's function also takes Telsmart's onboarding requests, at
//! `/telsmart/{connection_id}/activate` and `/deactivate` ([`crate::engine::activation`]).

use crate::adapters::aws::dynamo_connections::DynamoConnections;
use crate::adapters::aws::dynamo_users::DynamoUsers;
use crate::adapters::aws::sqs_queue::SqsQueue;
use crate::adapters::aws::usage::{Usage, UsageCounts};
use crate::adapters::clock::SystemClock;
use crate::config::Config;
use crate::domain::event::Provider;
use crate::engine::activation::{Action, ActivationRequest, activation};
use crate::engine::ingest::{Rejection, SignatureHeaders, WebhookRequest, ingest};
use crate::ports::Clock;
use crate::telemetry::{EmfStdout, Metrics, Telemetry};
use aws_config::SdkConfig;
use lambda_http::http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use lambda_http::http::{HeaderValue, StatusCode};
use lambda_http::{Body, Error, Request, RequestExt, Response};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
            connection_cache: Duration::from_secs(aws.connection_cache_secs),
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
    connections: DynamoConnections,
    queue: SqsQueue,
    /// The users activated through Telsmart's onboarding, when this function takes it.
    users: Option<DynamoUsers>,
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
                .map(|table| DynamoUsers::new(dynamodb.clone(), table, usage.clone())),
            connections: DynamoConnections::without_rest_credentials(
                dynamodb,
                &settings.connections_table,
                usage.clone(),
            )
            .caching_for(settings.connection_cache),
            queue: SqsQueue::new(
                aws_sdk_sqs::Client::new(aws),
                &settings.queue_url,
                usage.clone(),
            ),
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

    /// One webhook. Every outcome is an HTTP answer: a refusal is the sender's to fix, and
    /// an AWS outage is a 503 the provider retries. As the local server, a 405 says which
    /// methods would do, and every webhook is logged and counted by [`Telemetry::webhook`].
    pub async fn handle(&self, request: Request) -> Result<Response<Body>, Error> {
        if let Some(onboarding) = self.onboarding_route(&request) {
            return Ok(self.onboarding(&request, onboarding).await);
        }
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let path_parameters = request.path_parameters_ref();
        let webhook = WebhookRequest {
            provider: self.provider.as_str(),
            connection_id: path_parameters
                .and_then(|p| p.first("connection_id"))
                .unwrap_or_default(),
            method: request.method().as_str(),
            authorization: header(AUTHORIZATION.as_str()),
            query: request.uri().query(),
            content_type: header(CONTENT_TYPE.as_str()),
            // lambda_http has decoded a base64-encoded body already.
            body: request.body().as_ref(),
            signature: SignatureHeaders::from_lookup(header),
        };
        let started = Instant::now();
        let answer = ingest(&webhook, &self.connections, &self.queue, SystemClock.now()).await;
        self.telemetry.webhook(
            webhook.provider,
            webhook.connection_id,
            answer.as_ref(),
            started.elapsed(),
        );
        Ok(match answer {
            Ok(accepted) => json_response(StatusCode::ACCEPTED, &accepted),
            Err(rejection) => {
                let status = StatusCode::from_u16(rejection.status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut response = json_response(status, &rejection.body());
                if status == StatusCode::METHOD_NOT_ALLOWED {
                    let allow = if self.provider == Provider::Telecmi {
                        "GET, POST"
                    } else {
                        "POST"
                    };
                    response
                        .headers_mut()
                        .insert(ALLOW, HeaderValue::from_static(allow));
                }
                response
            }
        })
    }
}

impl Ingest {
    /// The connection and action of Telsmart's `/telsmart/{connection_id}/activate` and
    /// `/deactivate` routes, on Telsmart's function.
    fn onboarding_route<'r>(&self, request: &'r Request) -> Option<(&'r str, Action)> {
        if self.provider != Provider::Telsmart {
            return None;
        }
        let (connection_id, action) = request
            .uri()
            .path()
            .strip_prefix("/telsmart/")?
            .split_once('/')?;
        Some((connection_id, Action::from_route(action)?))
    }

    /// An activation or deactivation, answered as the local server answers it.
    async fn onboarding(
        &self,
        request: &Request,
        (connection_id, action): (&str, Action),
    ) -> Response<Body> {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let answer = match &self.users {
            Some(users) => {
                let onboarding = ActivationRequest {
                    connection_id,
                    action,
                    method: request.method().as_str(),
                    authorization: header(AUTHORIZATION.as_str()),
                    content_type: header(CONTENT_TYPE.as_str()),
                    body: request.body().as_ref(),
                };
                activation(&onboarding, &self.connections, users).await
            }
            None => Err(Rejection::new(
                404,
                "activation_not_configured",
                "this function has no USERS_TABLE: the template gives it to Telsmart's",
            )),
        };
        match answer {
            Ok(done) => {
                tracing::info!(
                    connection = connection_id,
                    status = done.status,
                    user_extension = done.user_extension,
                    "telsmart onboarding"
                );
                json_response(StatusCode::OK, &done)
            }
            Err(rejection) => {
                tracing::info!(
                    connection = connection_id,
                    status = rejection.status,
                    error = rejection.error,
                    reason = rejection.message,
                    "telsmart onboarding refused"
                );
                let status = StatusCode::from_u16(rejection.status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut response = json_response(status, &rejection.body());
                if status == StatusCode::UNAUTHORIZED {
                    response.headers_mut().insert(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"callbridge\""),
                    );
                }
                if status == StatusCode::METHOD_NOT_ALLOWED {
                    response
                        .headers_mut()
                        .insert(ALLOW, HeaderValue::from_static("POST"));
                }
                response
            }
        }
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let mut response = Response::new(Body::Text(
        serde_json::to_string(body).expect("an answer serialises"),
    ));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
