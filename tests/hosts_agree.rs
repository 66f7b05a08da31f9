//! The two hosts cannot drift apart (issue 9): the same webhooks through the release Lambda
//! binaries (run as processes under a Lambda Runtime API, fed the API Gateway and SQS events the
//! SAM CLI generates, on the AWS emulator) and through `callbridge serve` must give the CRM the
//! same Morph events, byte for byte: per call the same event types in the same order, the same
//! bodies, idempotency keys and headers.
//!
//! Only the binaries and what the CRM receives are looked at, so the test holds whatever the
//! code between them becomes. Needs `moto_server` (`infra/setup.sh` installs it into `.venv`).

#[allow(dead_code)]
#[path = "support/bridge.rs"]
mod bridge;
#[path = "support/crm_tap.rs"]
mod crm_tap;
#[allow(dead_code)]
#[path = "aws_support/emulator.rs"]
mod emulator;
#[path = "aws_support/runtime_api.rs"]
mod runtime_api;
#[allow(dead_code)]
#[path = "support/scenario.rs"]
mod scenario;

use bridge::{Bridge, CrmSettings, DELIVERY_TIMEOUT, Setup};
use callbridge::recorder::{Behaviour, Recorder};
use callbridge_shared::adapters::aws::aws_sdk_sqs::Client as SqsClient;
use callbridge_shared::adapters::aws::aws_sdk_sqs::types::{
    Message, MessageSystemAttributeName, QueueAttributeName,
};
use callbridge_shared::domain::event::Provider;
use crm_tap::{CrmTap, TappedRequest};
use emulator::{FunctionResource, Resources};
use runtime_api::{Function, Outcome, Sandbox};
use scenario::Scenario;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Telsmart's held call and attended transfer, Voys' attended transfer (issue 9).
const SCENARIOS: [&str; 3] = [
    "telsmart/3-held-and-resumed.json",
    "telsmart/6-attended-transfer.json",
    "voys/6-attended-transfer.json",
];

/// The function crates run as processes; their package names are their binaries'.
const FUNCTIONS: [&str; 3] = ["ingest-telsmart", "ingest-voys", "worker"];

const LAMBDA: &str = "lambda";
const LOCAL: &str = "local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_functions_and_the_local_server_send_the_crm_the_same_events() {
    let scenarios: Vec<Scenario> = scenario::all()
        .into_iter()
        .filter(|s| SCENARIOS.contains(&s.name.as_str()))
        .collect();
    assert_eq!(scenarios.len(), SCENARIOS.len(), "the scenarios of issue 9");
    let binaries = tokio::task::spawn_blocking(|| runtime_api::release_binaries(&FUNCTIONS))
        .await
        .expect("the build ran");

    let lambda_crm = recorder().await;
    let local_crm = recorder().await;
    let tap = CrmTap::start(&[(LAMBDA, &lambda_crm), (LOCAL, &local_crm)]).await;

    let lambda = async {
        let mut host = LambdaHost::start(&binaries, &tap.url_for(LAMBDA)).await;
        for s in &scenarios {
            host.send_in_file_order(s).await;
        }
    };
    let local = async {
        let setup = Setup::new(&tap.url_for(LOCAL), CrmSettings::default(), &[]);
        let server = Bridge::start(&setup).await;
        for s in &scenarios {
            server.post_in_file_order(s).await;
        }
        let expected = scenarios.iter().map(expected_requests).sum::<usize>();
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        while tap.requests(LOCAL).len() < expected && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Idle: nothing more is coming, so a repeat would be seen.
        server.wait_idle(DELIVERY_TIMEOUT).await;
    };
    tokio::join!(lambda, local);

    let from_lambda = by_call(&tap.requests(LAMBDA));
    let from_local = by_call(&tap.requests(LOCAL));
    let mut faults = Vec::new();
    for (host, calls) in [(LAMBDA, &from_lambda), (LOCAL, &from_local)] {
        faults.extend(
            revisions_faults(&scenarios, calls)
                .into_iter()
                .map(|f| format!("{host}: {f}")),
        );
    }
    faults.extend(differences(&from_lambda, &from_local));
    assert!(
        faults.is_empty(),
        "the hosts disagree:\n{}\n\nLambda sent:\n{}\nthe local server sent:\n{}",
        faults.join("\n"),
        summary(&from_lambda),
        summary(&from_local)
    );
}

async fn recorder() -> Recorder {
    Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts")
}

/// The Morph events a scenario's `.expected.json` says its calls get in file order.
fn expected_requests(s: &Scenario) -> usize {
    s.expected.calls.values().map(|c| c.events.len()).sum()
}

/// A host's requests by the Morph resource they carry (`data.id`), each call's in order.
fn by_call(requests: &[TappedRequest]) -> BTreeMap<String, Vec<TappedRequest>> {
    let mut calls: BTreeMap<String, Vec<TappedRequest>> = BTreeMap::new();
    for request in requests {
        let id = request.json()["data"]["id"]
            .as_str()
            .unwrap_or("(no data.id)")
            .to_string();
        calls.entry(id).or_default().push(request.clone());
    }
    calls
}

/// Where a host's events differ from what the references state: per call, the event types
/// and the number of revisions of `.expected.json`, and no call the scenarios do not have. So
/// two hosts that both send nothing, or both the same wrong thing, do not agree.
fn revisions_faults(
    scenarios: &[Scenario],
    calls: &BTreeMap<String, Vec<TappedRequest>>,
) -> Vec<String> {
    let mut faults = Vec::new();
    if calls.is_empty() {
        faults.push("the CRM got nothing".to_string());
    }
    let mut known = Vec::new();
    for s in scenarios {
        for (key, call) in &s.expected.calls {
            let id = s.resource_id(key);
            let got: Vec<String> = calls
                .get(&id)
                .map(|requests| requests.iter().map(event_type).collect())
                .unwrap_or_default();
            if got != call.events {
                faults.push(format!(
                    "{} call {key}: events {got:?}, the reference says {:?}",
                    s.name, call.events
                ));
            }
            if let Some(revisions) = &call.revisions
                && revisions.len() != got.len()
            {
                faults.push(format!(
                    "{} call {key}: {} revisions, the reference has {}",
                    s.name,
                    got.len(),
                    revisions.len()
                ));
            }
            known.push(id);
        }
    }
    faults.extend(
        calls
            .keys()
            .filter(|id| !known.contains(id))
            .map(|id| format!("events of {id}, a call of no scenario")),
    );
    faults
}

fn event_type(request: &TappedRequest) -> String {
    request.json()["event"]
        .as_str()
        .unwrap_or("(no event)")
        .to_string()
}

/// Every difference between the two hosts' requests, call by call and request by request:
/// method, path, every header (name and value, in any order: HTTP gives their order no
/// meaning, and the client may write them in another) and the body's bytes. No header is left
/// out: both hosts post through one tap, so even `host` must be the same, and there is no
/// `date` or other per-request header to differ.
fn differences(
    lambda: &BTreeMap<String, Vec<TappedRequest>>,
    local: &BTreeMap<String, Vec<TappedRequest>>,
) -> Vec<String> {
    let mut faults = Vec::new();
    let ids: std::collections::BTreeSet<&String> = lambda.keys().chain(local.keys()).collect();
    for id in ids {
        let (a, b) = (
            lambda.get(id).map(Vec::as_slice).unwrap_or_default(),
            local.get(id).map(Vec::as_slice).unwrap_or_default(),
        );
        if a.len() != b.len() {
            faults.push(format!(
                "{id}: Lambda sent {} events {:?}, the local server {} {:?}",
                a.len(),
                a.iter().map(event_type).collect::<Vec<_>>(),
                b.len(),
                b.iter().map(event_type).collect::<Vec<_>>()
            ));
        }
        for (n, (x, y)) in a.iter().zip(b).enumerate() {
            let at = format!("{id} event {n} ({})", event_type(x));
            if (&x.method, &x.path) != (&y.method, &y.path) {
                faults.push(format!(
                    "{at}: Lambda {} {}, the local server {} {}",
                    x.method, x.path, y.method, y.path
                ));
            }
            let (hx, hy) = (sorted_headers(x), sorted_headers(y));
            if hx != hy {
                faults.push(format!(
                    "{at}: headers differ\n  Lambda: {}\n  local:  {}",
                    show_headers(&hx),
                    show_headers(&hy)
                ));
            }
            if x.body != y.body {
                faults.push(format!(
                    "{at}: bodies differ\n  Lambda: {}\n  local:  {}",
                    String::from_utf8_lossy(&x.body),
                    String::from_utf8_lossy(&y.body)
                ));
            }
        }
    }
    faults
}

fn sorted_headers(request: &TappedRequest) -> Vec<(String, Vec<u8>)> {
    let mut headers = request.headers.clone();
    headers.sort();
    headers
}

fn show_headers(headers: &[(String, Vec<u8>)]) -> String {
    headers
        .iter()
        .map(|(name, value)| format!("{name}: {}", String::from_utf8_lossy(value)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn summary(calls: &BTreeMap<String, Vec<TappedRequest>>) -> String {
    calls
        .iter()
        .map(|(id, requests)| {
            let events: Vec<String> = requests
                .iter()
                .map(|r| {
                    let key = r.header("x-idempotency-key").unwrap_or_default();
                    format!("{} {}", event_type(r), String::from_utf8_lossy(key))
                })
                .collect();
            format!("  {id}: {}\n", events.join(", "))
        })
        .collect()
}

/// The SAM CLI's events, as generated (`tests/fixtures/lambda-events/README.md`).
fn sam_event(file: &str) -> Value {
    let path = emulator::repo_root()
        .join("tests/fixtures/lambda-events")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// The deployed bridge on the emulator: the stack of the template, the connections of the
/// example config imported by `callbridge connections import`, the ingest functions of the two
/// providers and the worker as processes; API Gateway and the SQS event source mapping played
/// here, with the SAM CLI's events.
struct LambdaHost {
    resources: Resources,
    sqs: SqsClient,
    ingests: HashMap<Provider, Function>,
    worker: Function,
}

impl LambdaHost {
    async fn start(binaries: &HashMap<String, PathBuf>, crm_url: &str) -> Self {
        let (resources, sdk) = emulator::create_stack("hosts-agree", crm_url).await;
        let endpoint = emulator::emulator().endpoint().to_string();
        let aws = [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "emulator"),
            ("AWS_SECRET_ACCESS_KEY", "emulator"),
            ("AWS_SESSION_TOKEN", "emulator"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ];
        let (worker_function, _) = resources.worker_function();
        import_connections(&resources, &aws, worker_function).await;
        let start = |function: &FunctionResource, package: &str| {
            let binary = binaries
                .get(package)
                .unwrap_or_else(|| panic!("no binary {package}"))
                .clone();
            let region = resources.region.clone();
            let function = function.clone();
            async move {
                let sandbox = Sandbox {
                    name: &function.name,
                    memory_mb: function.memory_size,
                    timeout: Duration::from_secs(function.timeout),
                    region: &region,
                };
                Function::start(&binary, &sandbox, &function.environment, &aws).await
            }
        };
        let mut ingests = HashMap::new();
        for provider in [Provider::Telsmart, Provider::Voys] {
            let function = resources.ingest_function(provider);
            ingests.insert(
                provider,
                start(function, &format!("ingest-{provider}")).await,
            );
        }
        let worker = start(worker_function, "worker").await;
        Self {
            sqs: SqsClient::new(&sdk),
            resources,
            ingests,
            worker,
        }
    }

    /// Each webhook of `s` through its provider's function, then the queue drained by the
    /// worker before the next, as a provider's webhooks come seconds apart (the local server
    /// is given the same time).
    async fn send_in_file_order(&mut self, s: &Scenario) {
        let token = s.token();
        for (i, webhook) in s.webhooks.iter().enumerate() {
            let event = self.api_gateway_event(s.provider, &s.connection, &token, webhook);
            let ingest = self
                .ingests
                .get_mut(&s.provider)
                .expect("an ingest function");
            let answer = match ingest.invoke(&event).await {
                Outcome::Response(bytes) => serde_json::from_slice::<Value>(&bytes)
                    .unwrap_or_else(|e| panic!("{} webhook {i}: not JSON ({e})", s.name)),
                Outcome::Error(error) => panic!(
                    "{} webhook {i}: the ingest failed: {error}\nit printed:\n{}",
                    s.name,
                    ingest.output()
                ),
            };
            assert_eq!(
                answer["statusCode"], 202,
                "{} webhook {i}: API Gateway would answer {answer}",
                s.name
            );
            self.drain().await;
        }
    }

    /// The SAM CLI's `apigateway http-api-proxy` event, filled in as API Gateway's HTTP API
    /// sends it for the template's POST route of `provider`: a JSON webhook with a bearer
    /// token, as the providers send it (the same request `callbridge serve` gets). What the
    /// API has not (no query, cookies, mTLS, authorizer or stage variables) is taken out.
    fn api_gateway_event(
        &self,
        provider: Provider,
        connection: &str,
        token: &str,
        webhook: &Value,
    ) -> Value {
        let route = self
            .resources
            .ingest_function(provider)
            .routes
            .iter()
            .find(|r| r.method == "POST" && r.path.starts_with("/webhooks/"))
            .unwrap_or_else(|| panic!("the template has no POST route for {provider}"));
        let path = route.path.replace("{connection_id}", connection);
        let route_key = format!("{} {}", route.method, route.path);
        let body = webhook.to_string();
        let mut event = sam_event("apigateway-http-api-proxy.json");
        let object = event.as_object_mut().expect("an event object");
        for absent in ["cookies", "queryStringParameters", "stageVariables"] {
            object.remove(absent);
        }
        let domain = event["requestContext"]["domainName"].clone();
        let headers: Map<String, Value> = [
            ("authorization", format!("Bearer {token}")),
            ("content-type", "application/json".to_string()),
            ("content-length", body.len().to_string()),
            ("host", domain.as_str().unwrap_or_default().to_string()),
            ("x-forwarded-proto", "https".to_string()),
            ("x-forwarded-port", "443".to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), Value::String(value)))
        .collect();
        event["routeKey"] = json!(route_key);
        event["rawPath"] = json!(path);
        event["rawQueryString"] = json!("");
        event["headers"] = Value::Object(headers);
        event["pathParameters"] = json!({ "connection_id": connection });
        event["body"] = json!(body);
        event["isBase64Encoded"] = json!(false);
        let context = event["requestContext"]
            .as_object_mut()
            .expect("a requestContext");
        context.remove("authentication");
        context.remove("authorizer");
        let now = millis_now();
        context.insert("routeKey".into(), json!(route_key));
        context.insert("requestId".into(), json!(format!("hosts-agree-{now}")));
        context.insert("timeEpoch".into(), json!(now));
        context["http"]["method"] = json!(route.method);
        context["http"]["path"] = json!(path);
        event
    }

    /// Plays the SQS event source mapping until the queue is empty: receives batches of the
    /// template's size, hands each to the worker as the SAM CLI's `sqs receive-message` event,
    /// and deletes the messages it did not report as `batchItemFailures` (those come back
    /// after the wait the worker set, as on AWS).
    async fn drain(&mut self) {
        let (_, mapping) = self.resources.worker_function();
        let queue = self.resources.queue(&mapping.queue).clone();
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&queue.url)
                .max_number_of_messages(mapping.batch_size)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive from the emulated queue")
                .messages
                .unwrap_or_default();
            if received.is_empty() {
                if self.in_queue(&queue.url).await == 0 {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the queue did not empty in {DELIVERY_TIMEOUT:?}; the worker printed:\n{}",
                    self.worker.output()
                );
                continue;
            }
            let event = sqs_event(&queue.arn, &self.resources.region, &received);
            let failed = match self.worker.invoke(&event).await {
                Outcome::Response(bytes) => batch_item_failures(&bytes),
                Outcome::Error(error) => panic!(
                    "the worker failed a batch: {error}\nit printed:\n{}",
                    self.worker.output()
                ),
            };
            for message in received {
                let id = message.message_id().unwrap_or_default();
                if !failed.iter().any(|f| f == id) {
                    self.sqs
                        .delete_message()
                        .queue_url(&queue.url)
                        .receipt_handle(message.receipt_handle().unwrap_or_default())
                        .send()
                        .await
                        .expect("delete from the emulated queue");
                }
            }
        }
    }

    /// Messages waiting or in flight.
    async fn in_queue(&self, url: &str) -> u64 {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("the emulated queue's attributes")
            .attributes
            .unwrap_or_default();
        attributes
            .values()
            .map(|count| count.parse::<u64>().expect("a count"))
            .sum()
    }
}

/// `callbridge connections import` of the example config into the stack's table, as an
/// operator loads connections (README.md): the same connections the local server reads.
async fn import_connections(
    resources: &Resources,
    aws: &[(&str, &str)],
    worker: &FunctionResource,
) {
    let example = scenario::example_config_path();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .arg("connections")
        .arg("import")
        .arg(&example)
        .env_remove("AWS_PROFILE")
        .envs(aws.iter().copied())
        .env("AWS_REGION", &resources.region)
        .env(
            "CONNECTIONS_TABLE",
            worker.var("CONNECTIONS_TABLE").expect("CONNECTIONS_TABLE"),
        )
        .output()
        .await
        .expect("callbridge runs");
    assert!(
        output.status.success(),
        "callbridge connections import failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The SAM CLI's `sqs receive-message` event with a record per message, as the event source
/// mapping builds it from what it received.
fn sqs_event(queue_arn: &str, region: &str, messages: &[Message]) -> Value {
    let mut event = sam_event("sqs-receive-message.json");
    let template = event["Records"][0].clone();
    let records: Vec<Value> = messages
        .iter()
        .map(|message| {
            let attributes: Map<String, Value> = message
                .attributes()
                .map(|attributes| {
                    attributes
                        .iter()
                        .map(|(name, value)| (name.as_str().to_string(), json!(value)))
                        .collect()
                })
                .unwrap_or_default();
            let mut record = template.clone();
            record["messageId"] = json!(message.message_id());
            record["receiptHandle"] = json!(message.receipt_handle());
            record["body"] = json!(message.body());
            record["attributes"] = Value::Object(attributes);
            record["md5OfBody"] = json!(message.md5_of_body());
            record["eventSourceARN"] = json!(queue_arn);
            record["awsRegion"] = json!(region);
            record
        })
        .collect();
    event["Records"] = Value::Array(records);
    event
}

/// The message ids of the worker's batch response, read as Lambda reads it.
fn batch_item_failures(response: &[u8]) -> Vec<String> {
    let response: Value = serde_json::from_slice(response).expect("a JSON batch response");
    response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("no batchItemFailures in {response}"))
        .iter()
        .map(|f| {
            f["itemIdentifier"]
                .as_str()
                .expect("an itemIdentifier")
                .to_string()
        })
        .collect()
}
