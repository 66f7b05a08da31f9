//! Lambda functions as processes: the release binaries of the function crates, built by the
//! test, each run under a Lambda Runtime API of its own served here (the HTTP interface the
//! `provided.al2023` runtime gives a custom runtime: `invocation/next`, `{id}/response`,
//! `{id}/error`, `init/error`), with the environment Lambda and the template give it.
//!
//! What the real service adds and this leaves out: the sandbox's freeze between invocations,
//! the kill at the function's timeout (here a test failure, after it), extensions, telemetry.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a function may take to start and take its first invocation beyond its own
/// timeout: generous, for a loaded 2-core machine; a passing run never waits this long.
const START_GRACE: Duration = Duration::from_secs(60);

/// The release binaries `packages` of the workspace, built for this host with the workspace's
/// release profile (as `cargo build --release`, not the arm64 cross-build of the deployment), by
/// their package name. Cargo builds only what changed; the outer `cargo test` does not hold the
/// build lock while tests run, and the target dir (`CARGO_TARGET_DIR`) is inherited.
pub fn release_binaries(packages: &[&str]) -> HashMap<String, PathBuf> {
    let cargo = env!("CARGO");
    let started = Instant::now();
    let mut command = std::process::Command::new(cargo);
    // What `cargo test` adds to a test's environment (the package's `CARGO_PKG_*`,
    // `CARGO_BIN_EXE_*`, `LD_LIBRARY_PATH`, ...) would reach the build's compilers and build
    // scripts, and a change of those makes cargo rebuild everything: the build gets the
    // environment of a shell, with cargo's own settings kept.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if is_set_by_cargo_test(&name) {
            command.env_remove(&*name);
        }
    }
    command.current_dir(super::emulator::repo_root()).args([
        "build",
        "--release",
        "--locked",
        "--message-format=json",
    ]);
    for package in packages {
        command.args(["-p", package]);
    }
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(
        output.status.success(),
        "`cargo build --release --locked -p {}` failed ({}); its messages are above",
        packages.join(" -p "),
        output.status
    );
    // Cargo says where each binary is, whatever the target dir.
    let binaries: HashMap<String, PathBuf> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?.to_string();
            let executable = m["executable"].as_str()?;
            Some((name, PathBuf::from(executable)))
        })
        .collect();
    eprintln!(
        "release binaries {packages:?} built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for package in packages {
        assert!(
            binaries.contains_key(*package),
            "cargo built no binary named {package}: {binaries:?}"
        );
    }
    binaries
}

/// Whether cargo sets `name` for a test it runs, rather than the user for cargo.
fn is_set_by_cargo_test(name: &str) -> bool {
    const SETTINGS: [&str; 10] = [
        "CARGO_HOME",
        "CARGO_INCREMENTAL",
        "CARGO_BUILD_",
        "CARGO_PROFILE_",
        "CARGO_TERM_",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTR",
        "CARGO_TARGET_DIR",
        "CARGO_LOG",
    ];
    name == "LD_LIBRARY_PATH"
        || name == "CARGO"
        || (name.starts_with("CARGO_") && !SETTINGS.iter().any(|s| name.starts_with(s)))
}

/// One invocation handed to the runtime.
struct Invocation {
    request_id: String,
    deadline_ms: u64,
    event: Vec<u8>,
}

/// What the runtime answered an invocation.
#[derive(Debug)]
pub enum Outcome {
    Response(Vec<u8>),
    /// The error document the runtime posted (`errorType`, `errorMessage`).
    Error(String),
}

struct Api {
    function_arn: String,
    /// The invocations not yet taken by `next`; the runtime takes one at a time.
    queued: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    /// Answers awaited, by request id.
    awaited: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_error: Mutex<Option<String>>,
}

/// A function: its binary running as a process under a Runtime API of its own. The process is
/// killed when this is dropped.
pub struct Function {
    name: String,
    timeout: Duration,
    api: Arc<Api>,
    invocations: mpsc::UnboundedSender<Invocation>,
    child: Child,
    output: Arc<Mutex<String>>,
    _server: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What Lambda sets in a function's environment (besides the function's own variables).
pub struct Sandbox<'a> {
    /// `FunctionName`.
    pub name: &'a str,
    pub memory_mb: u32,
    pub timeout: Duration,
    pub region: &'a str,
}

impl Function {
    /// Starts `binary` as the function `sandbox` with `variables` (the template's for it) and
    /// `aws` (where its SDK goes: the emulator, dummy credentials), under a Runtime API on a
    /// free loopback port. Nothing else of the test's environment reaches the process.
    pub async fn start(
        binary: &Path,
        sandbox: &Sandbox<'_>,
        variables: &HashMap<String, String>,
        aws: &[(&str, &str)],
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port for the Runtime API");
        let addr = listener.local_addr().expect("the Runtime API's address");
        let (invocations, queued) = mpsc::unbounded_channel();
        let api = Arc::new(Api {
            function_arn: format!(
                "arn:aws:lambda:{}:123456789012:function:{}",
                sandbox.region, sandbox.name
            ),
            queued: tokio::sync::Mutex::new(queued),
            awaited: Mutex::default(),
            init_error: Mutex::default(),
        });
        let router = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{request_id}/response",
                post(response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{request_id}/error",
                post(error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(api.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the Runtime API serves");
        });
        let memory = sandbox.memory_mb.to_string();
        let log_group = format!("/aws/lambda/{}", sandbox.name);
        let mut child = Command::new(binary)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "en_US.UTF-8")
            .env("TZ", ":UTC")
            .env("_HANDLER", "bootstrap")
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", sandbox.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", &memory)
            .env("AWS_LAMBDA_LOG_GROUP_NAME", &log_group)
            .env(
                "AWS_LAMBDA_LOG_STREAM_NAME",
                "2026/12/07/[$LATEST]0123456789abcdef",
            )
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env("AWS_REGION", sandbox.region)
            .env("AWS_DEFAULT_REGION", sandbox.region)
            .envs(aws.iter().copied())
            .envs(variables)
            .current_dir(binary.parent().expect("a binary in a folder"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let output = Arc::<Mutex<String>>::default();
        collect(child.stdout.take().expect("stdout"), output.clone());
        collect(child.stderr.take().expect("stderr"), output.clone());
        Self {
            name: sandbox.name.to_string(),
            timeout: sandbox.timeout,
            api,
            invocations,
            child,
            output,
            _server: AbortOnDrop(server),
        }
    }

    /// What the process printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Invokes the function with `event` and returns its answer, as Lambda's `Invoke` does.
    /// Panics, with what the process printed, when it exits, reports an init error, or does not
    /// answer within its timeout (and the start's grace).
    pub async fn invoke(&mut self, event: &Value) -> Outcome {
        static REQUESTS: AtomicU64 = AtomicU64::new(0);
        let request_id = format!(
            "8f5e2a1c-{:04x}-4b6d-9e3f-{:012x}",
            std::process::id() & 0xffff,
            REQUESTS.fetch_add(1, Ordering::Relaxed)
        );
        let deadline = SystemTime::now() + self.timeout;
        let (answer, answered) = oneshot::channel();
        self.api
            .awaited
            .lock()
            .unwrap()
            .insert(request_id.clone(), answer);
        self.invocations
            .send(Invocation {
                request_id: request_id.clone(),
                deadline_ms: deadline
                    .duration_since(UNIX_EPOCH)
                    .expect("after 1970")
                    .as_millis() as u64,
                event: serde_json::to_vec(event).expect("an event serialises"),
            })
            .expect("the Runtime API is up");
        let waited = self.timeout + START_GRACE;
        tokio::select! {
            outcome = tokio::time::timeout(waited, answered) => match outcome {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => self.fail(&format!("invocation {request_id} was dropped")),
                Err(_) => self.fail(&format!("no answer to invocation {request_id} in {waited:?}")),
            },
            status = self.child.wait() => {
                let status = format!("{status:?}");
                // Let the readers take in the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.fail(&format!("the process exited ({status}) during invocation {request_id}"))
            }
        }
    }

    fn fail(&self, what: &str) -> ! {
        let init_error = self.api.init_error.lock().unwrap().clone();
        panic!(
            "function {}: {what}; init error: {init_error:?}; it printed:\n{}",
            self.name,
            self.output()
        )
    }
}

/// `GET /runtime/invocation/next`: waits for an invocation and hands it over with the headers
/// the real Runtime API sets.
async fn next(State(api): State<Arc<Api>>) -> Response {
    let Some(invocation) = api.queued.lock().await.recv().await else {
        return (StatusCode::GONE, "the test is over").into_response();
    };
    let trace_id = format!(
        "Root=1-{:08x}-{:024x};Parent={:016x};Sampled=0;Lineage=1:8c1e2d3f:0",
        invocation.deadline_ms / 1000,
        invocation.deadline_ms,
        invocation.deadline_ms
    );
    (
        [
            ("content-type", "application/json".to_string()),
            ("lambda-runtime-aws-request-id", invocation.request_id),
            (
                "lambda-runtime-deadline-ms",
                invocation.deadline_ms.to_string(),
            ),
            (
                "lambda-runtime-invoked-function-arn",
                api.function_arn.clone(),
            ),
            ("lambda-runtime-trace-id", trace_id),
        ],
        invocation.event,
    )
        .into_response()
}

/// `POST /runtime/invocation/{id}/response`.
async fn response(
    State(api): State<Arc<Api>>,
    UrlPath(request_id): UrlPath<String>,
    body: Bytes,
) -> Response {
    answer(&api, &request_id, Outcome::Response(body.to_vec()))
}

/// `POST /runtime/invocation/{id}/error`.
async fn error(
    State(api): State<Arc<Api>>,
    UrlPath(request_id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let kind = headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(no Lambda-Runtime-Function-Error-Type)");
    let document = format!("{kind}: {}", String::from_utf8_lossy(&body));
    answer(&api, &request_id, Outcome::Error(document))
}

/// `POST /runtime/init/error`: the function could not start; every awaited invocation fails.
async fn init_error(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    let document = String::from_utf8_lossy(&body).into_owned();
    *api.init_error.lock().unwrap() = Some(document.clone());
    for (_, awaited) in api.awaited.lock().unwrap().drain() {
        let _ = awaited.send(Outcome::Error(format!("init error: {document}")));
    }
    accepted()
}

fn answer(api: &Api, request_id: &str, outcome: Outcome) -> Response {
    match api.awaited.lock().unwrap().remove(request_id) {
        Some(awaited) => {
            let _ = awaited.send(outcome);
            accepted()
        }
        // As Lambda: an id that is not the current invocation's, or answered twice.
        None => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "errorMessage": format!("Invalid request ID: {request_id}"),
                "errorType": "InvalidRequestID"
            })),
        )
            .into_response(),
    }
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({ "status": "OK" }))).into_response()
}

/// Copies a stream of the process into `output`.
fn collect(stream: impl AsyncRead + Unpin + Send + 'static, output: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            output.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
}
