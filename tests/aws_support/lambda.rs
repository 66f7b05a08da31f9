//! What Lambda does around the handlers: API Gateway's HTTP API turns a webhook into a payload
//! v2 event (in the shape of aws_lambda_events' `src/fixtures/example-apigw-v2-*.json`), and
//! the SQS event source mapping receives batches, hands them to the worker and deletes what
//! the batch response does not list as failed.

use super::emulator::{QueueEvent, Resources, Route};
use axum::Router;
use callbridge_shared::adapters::aws::aws_sdk_sqs::Client as SqsClient;
use callbridge_shared::adapters::aws::aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use callbridge_shared::hosts::lambda::aws_lambda_events::encodings::Base64Data;
use callbridge_shared::hosts::lambda::aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use callbridge_shared::hosts::lambda::lambda_http::{self, Body, Response, Service};
use callbridge_shared::hosts::lambda::lambda_runtime::{Context, LambdaEvent};
use callbridge_shared::hosts::lambda::webhook_function::Ingest;
use callbridge_shared::hosts::lambda::worker_function::Worker;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One webhook as a provider sends it.
#[derive(Clone, Debug, Default)]
pub struct HttpRequest {
    pub method: String,
    pub connection_id: String,
    pub headers: Vec<(String, String)>,
    /// Without `?`.
    pub query: String,
    pub body: Vec<u8>,
    /// API Gateway sends bodies base64-encoded when it does not take them for text (a
    /// form-encoded body, for one).
    pub base64: bool,
}

/// The ingest's answer.
#[derive(Clone, Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Value,
}

/// The payload v2 event API Gateway sends the function of `route` for `request`.
pub fn api_gateway_event(route: &Route, request: &HttpRequest) -> Value {
    let raw_path = route
        .path
        .replace("{connection_id}", &request.connection_id);
    let mut headers = Map::new();
    for (name, value) in [
        ("accept", "*/*"),
        ("host", "abcdef1234.execute-api.eu-west-1.amazonaws.com"),
        ("user-agent", "provider-webhooks/1.0"),
        (
            "x-amzn-trace-id",
            "Root=1-5e9f0c65-1de4d666d4dd26aced652b6c",
        ),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-proto", "https"),
    ] {
        headers.insert(name.into(), value.into());
    }
    headers.insert(
        "content-length".into(),
        request.body.len().to_string().into(),
    );
    for (name, value) in &request.headers {
        // HTTP APIs give header names in lower case.
        headers.insert(name.to_ascii_lowercase(), value.clone().into());
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let mut event = json!({
        "version": "2.0",
        "routeKey": format!("{} {}", route.method, route.path),
        "rawPath": raw_path,
        "rawQueryString": request.query,
        "headers": headers,
        "pathParameters": { "connection_id": request.connection_id },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abcdef1234",
            "domainName": "abcdef1234.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "abcdef1234",
            "http": {
                "method": request.method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "provider-webhooks/1.0"
            },
            "requestId": format!("req-{}", now.as_nanos()),
            "routeKey": format!("{} {}", route.method, route.path),
            "stage": "$default",
            "time": "22/Nov/2026:05:40:00 +0000",
            "timeEpoch": now.as_millis() as u64
        },
        "isBase64Encoded": request.base64
    });
    if !request.query.is_empty() {
        // As API Gateway gives them: repeated names joined with commas.
        let mut parameters: Vec<(String, String)> = Vec::new();
        for (name, value) in form_pairs(&request.query) {
            match parameters.iter_mut().find(|(n, _)| *n == name) {
                Some((_, joined)) => *joined = format!("{joined},{value}"),
                None => parameters.push((name, value)),
            }
        }
        event["queryStringParameters"] = parameters
            .into_iter()
            .map(|(name, value)| (name, Value::String(value)))
            .collect::<Map<_, _>>()
            .into();
    }
    if !request.body.is_empty() {
        event["body"] = if request.base64 {
            let mut encoded = Base64Data::default();
            *encoded = request.body.clone();
            serde_json::to_value(encoded).unwrap()
        } else {
            String::from_utf8(request.body.clone())
                .expect("a text body")
                .into()
        };
    }
    event
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => (pair.to_string(), String::new()),
        })
        .collect()
}

/// Runs `ingest` on the event API Gateway would send for `request`, read the way the Lambda
/// runtime reads it.
pub async fn invoke_ingest(ingest: &Ingest, route: &Route, request: &HttpRequest) -> HttpAnswer {
    let event = api_gateway_event(route, request).to_string();
    let request = lambda_http::request::from_str(&event).expect("lambda_http reads the event");
    let response = run_router(ingest.router(), request).await;
    let body = match response.body() {
        Body::Text(text) => serde_json::from_str(text).expect("a JSON answer"),
        other => panic!("the ingest answered a non-text body: {other:?}"),
    };
    HttpAnswer {
        status: response.status().as_u16(),
        content_type: response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string()),
        body,
    }
}

/// What `lambda_http::run` does with one request: the router answers it, and the answer
/// becomes the runtime's response.
pub async fn run_router(mut router: Router, request: lambda_http::Request) -> Response<Body> {
    let response = match router.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    lambda_http::IntoResponse::into_response(response).await
}

/// What one batch did.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub received: Vec<Message>,
    /// The message ids the worker reported as failures.
    pub failed: Vec<String>,
}

impl Batch {
    pub fn bodies(&self) -> Vec<&str> {
        self.received.iter().filter_map(|m| m.body()).collect()
    }

    /// The messages the worker reported.
    pub fn failures(&self) -> impl Iterator<Item = &Message> {
        self.received.iter().filter(|m| {
            self.failed
                .iter()
                .any(|id| Some(id.as_str()) == m.message_id())
        })
    }
}

/// The SQS event source mapping of the worker, on the emulated queue.
pub struct EventSource {
    sqs: SqsClient,
    queue_url: String,
    queue_arn: String,
    region: String,
    batch_size: i32,
    /// The queue's, in seconds.
    visibility_timeout: i32,
    /// The function's timeout: the deadline of each invocation.
    timeout: Duration,
}

impl EventSource {
    /// The mapping as the template declares it.
    pub fn new(resources: &Resources, sqs: SqsClient) -> Self {
        let (worker, event): (_, &QueueEvent) = resources.worker_function();
        assert!(
            event.report_batch_item_failures,
            "the worker must report batch item failures"
        );
        let queue = resources.queue(&event.queue);
        Self {
            sqs,
            queue_url: queue.url.clone(),
            queue_arn: queue.arn.clone(),
            region: resources.region.clone(),
            batch_size: event.batch_size,
            visibility_timeout: queue.attributes["VisibilityTimeout"]
                .parse()
                .expect("a numeric VisibilityTimeout"),
            timeout: Duration::from_secs(worker.timeout),
        }
    }

    /// Receives one batch as the mapping does (nothing: an empty batch).
    pub async fn receive(&self) -> Vec<Message> {
        self.sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(self.batch_size)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive from the emulated queue")
            .messages
            .unwrap_or_default()
    }

    /// The Lambda event of a batch, in the shape of aws_lambda_events'
    /// `src/fixtures/example-sqs-event.json`.
    pub fn event(&self, messages: &[Message]) -> LambdaEvent<SqsEvent> {
        let records: Vec<Value> = messages
            .iter()
            .map(|m| {
                let attributes: HashMap<&str, &str> = m
                    .attributes()
                    .map(|a| a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
                    .unwrap_or_default();
                json!({
                    "messageId": m.message_id(),
                    "receiptHandle": m.receipt_handle(),
                    "body": m.body(),
                    "attributes": attributes,
                    "messageAttributes": {},
                    "md5OfBody": m.md5_of_body(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn,
                    "awsRegion": self.region
                })
            })
            .collect();
        let event: SqsEvent = serde_json::from_value(json!({ "Records": records }))
            .expect("aws_lambda_events reads the event");
        let mut context = Context::default();
        context.request_id = format!("invocation-{}", messages.len());
        context.deadline = (SystemTime::now() + self.timeout)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        LambdaEvent::new(event, context)
    }

    /// One poll: receives a batch, runs the worker on it, deletes the messages it did not
    /// report and releases those it did. (On AWS those come back after the wait the worker
    /// set; here at once, so the tests do not wait for it.)
    pub async fn poll(&self, worker: &Worker) -> Batch {
        let batch = self.run(worker, self.receive().await).await;
        for message in batch.failures() {
            self.release(message).await;
        }
        batch
    }

    /// One wait: polls until the queue gives nothing, the messages the worker reported kept out
    /// of it meanwhile (whatever wait the worker set), then lets them come back. Each message
    /// is received at most once in a round.
    pub async fn round(&self, worker: &Worker) -> Vec<Batch> {
        let mut batches: Vec<Batch> = Vec::new();
        loop {
            let batch = self.run(worker, self.receive().await).await;
            if batch.received.is_empty() {
                break;
            }
            for message in batch.failures() {
                self.hold(message).await;
            }
            batches.push(batch);
        }
        for message in batches.iter().flat_map(Batch::failures) {
            self.release(message).await;
        }
        batches
    }

    /// Runs the worker on `received`, as the mapping does, and deletes the messages it did not
    /// report.
    pub async fn run(&self, worker: &Worker, received: Vec<Message>) -> Batch {
        if received.is_empty() {
            return Batch::default();
        }
        let response = worker
            .handle(self.event(&received))
            .await
            .expect("the worker answers every batch");
        let batch = Batch {
            failed: failures(&response),
            received,
        };
        for message in &batch.received {
            if !batch
                .failures()
                .any(|m| m.message_id() == message.message_id())
            {
                self.delete(message).await;
            }
        }
        batch
    }

    /// Polls until the queue gives nothing; returns the batches.
    pub async fn drain(&self, worker: &Worker) -> Vec<Batch> {
        let mut batches = Vec::new();
        loop {
            let batch = self.poll(worker).await;
            if batch.received.is_empty() {
                return batches;
            }
            batches.push(batch);
        }
    }

    pub async fn delete(&self, message: &Message) {
        self.sqs
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(message.receipt_handle().expect("a receipt handle"))
            .send()
            .await
            .expect("delete from the emulated queue");
    }

    /// Makes a received message visible again, as the end of its visibility timeout does.
    pub async fn release(&self, message: &Message) {
        self.set_visibility(message, 0).await;
    }

    /// [`EventSource::release`] of a message another process received, by its receipt handle.
    pub async fn release_handle(&self, receipt_handle: &str) {
        let message = Message::builder().receipt_handle(receipt_handle).build();
        self.set_visibility(&message, 0).await;
    }

    /// Keeps a received message out of the queue for the queue's whole visibility timeout.
    async fn hold(&self, message: &Message) {
        self.set_visibility(message, self.visibility_timeout).await;
    }

    async fn set_visibility(&self, message: &Message, seconds: i32) {
        self.sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(message.receipt_handle().expect("a receipt handle"))
            .visibility_timeout(seconds)
            .send()
            .await
            .expect("change the visibility on the emulated queue");
    }
}

/// The message ids of a batch response, read as Lambda reads its JSON.
pub fn failures(response: &SqsBatchResponse) -> Vec<String> {
    let json = serde_json::to_value(response).expect("a batch response serialises");
    json["batchItemFailures"]
        .as_array()
        .expect("batchItemFailures")
        .iter()
        .map(|f| {
            f["itemIdentifier"]
                .as_str()
                .expect("itemIdentifier")
                .to_string()
        })
        .collect()
}
