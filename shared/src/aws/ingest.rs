//! The ingest Lambda of one provider, behind the HTTP API's route
//! `/webhooks/{provider}/{connection_id}`: the API Gateway request becomes a
//! [`WebhookRequest`], [`pipeline::ingest`](crate::pipeline::ingest) decides, and its
//! [`Accepted`](crate::pipeline::ingest::Accepted) or
//! [`Rejection`](crate::pipeline::ingest::Rejection) becomes the HTTP answer, with the same statuses and bodies as
//! the local server.

use super::connections::DynamoConnections;
use super::queue::SqsQueue;
use super::usage::{Usage, UsageCounts};
use super::{process_env, required};
use crate::domain::event::Provider;
use crate::local::now;
use crate::pipeline::ingest::{SignatureHeaders, WebhookRequest, ingest};
use aws_config::SdkConfig;
use lambda_http::http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE};
use lambda_http::http::{HeaderValue, StatusCode};
use lambda_http::{Body, Error, Request, RequestExt, Response};
use serde::Serialize;
use std::sync::Arc;

/// Where the ingest functions find things; the template sets these variables.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// `CONNECTIONS_TABLE`
    pub connections_table: String,
    /// `QUEUE_URL`
    pub queue_url: String,
}

impl IngestSettings {
    /// Reads the settings with `vars` (a variable's value by its name).
    pub fn from_vars(vars: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        Ok(Self {
            connections_table: required(&vars, "CONNECTIONS_TABLE")?,
            queue_url: required(&vars, "QUEUE_URL")?,
        })
    }
}

/// The handler of one provider's webhooks, built once per container.
pub struct Ingest {
    provider: Provider,
    connections: DynamoConnections,
    queue: SqsQueue,
    usage: Arc<Usage>,
}

impl Ingest {
    pub fn new(provider: Provider, aws: &SdkConfig, settings: &IngestSettings) -> Self {
        let usage = Arc::new(Usage::default());
        Self {
            provider,
            connections: DynamoConnections::new(
                aws_sdk_dynamodb::Client::new(aws),
                &settings.connections_table,
                usage.clone(),
            ),
            queue: SqsQueue::new(
                aws_sdk_sqs::Client::new(aws),
                &settings.queue_url,
                usage.clone(),
            ),
            usage,
        }
    }

    /// The handler as the template configures it: settings from the environment, AWS clients
    /// from the Lambda role.
    pub async fn from_env(provider: Provider) -> anyhow::Result<Self> {
        let settings = IngestSettings::from_vars(process_env)?;
        let aws = aws_config::load_from_env().await;
        Ok(Self::new(provider, &aws, &settings))
    }

    /// What this handler has asked of AWS so far.
    pub fn usage(&self) -> UsageCounts {
        self.usage.counts()
    }

    /// One webhook. Every outcome is an HTTP answer: a refusal is the sender's to fix, and
    /// an AWS outage is a 503 the provider retries. As the local server, a 405 says which
    /// methods would do, and refusals are logged at `info`, acceptances at `debug`.
    pub async fn handle(&self, request: Request) -> Result<Response<Body>, Error> {
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
        let answer = ingest(&webhook, &self.connections, &self.queue, now()).await;
        let provider = webhook.provider;
        let connection = webhook.connection_id;
        Ok(match answer {
            Ok(accepted) => {
                tracing::debug!(
                    provider,
                    connection,
                    event_id = accepted.event_id,
                    resource_id = accepted.resource_id,
                    "webhook accepted"
                );
                json_response(StatusCode::ACCEPTED, &accepted)
            }
            Err(rejection) => {
                tracing::info!(
                    provider,
                    connection,
                    status = rejection.status,
                    error = rejection.error,
                    message = rejection.message,
                    "webhook refused"
                );
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
