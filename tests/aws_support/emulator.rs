//! The AWS emulator: one `moto_server` per test binary, and per test a stack of its own (the
//! queues and tables of `template.yaml`, created by `infra/aws/resources.py` under a prefix of
//! the test's), with the functions' settings as the template gives them.

use callbridge_shared::adapters::aws::aws_config::{self, BehaviorVersion, Region, SdkConfig};
use callbridge_shared::adapters::aws::aws_sdk_dynamodb::config::Credentials;
use callbridge_shared::domain::event::Provider;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The running emulator. It lives as long as the test binary: a shell holds it and stops it
/// when the binary's end closes the shell's standard input.
pub struct Emulator {
    endpoint: String,
    /// The Python that runs moto, which has what `resources.py` needs (PyYAML, boto3).
    python: PathBuf,
    log: PathBuf,
    /// Holds the shell's standard input open.
    _shell: Child,
}

/// The emulator of this test binary, started on first use.
pub fn emulator() -> &'static Emulator {
    static EMULATOR: OnceLock<Emulator> = OnceLock::new();
    EMULATOR.get_or_init(Emulator::start)
}

impl Emulator {
    /// Where the emulator answers, for another process to use it.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn start() -> Self {
        let moto = find_moto_server();
        let python = python_beside(&moto);
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("moto-{port}.log"));
        let shell = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" -H 127.0.0.1 -p "$1" >"$2" 2>&1 & moto=$!; trap 'kill $moto' EXIT; read -r _"#)
            .arg(&moto)
            .arg(port.to_string())
            .arg(&log)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", moto.display()));
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            python,
            log,
            _shell: shell,
        }
    }
}

/// `moto_server` from the project's `.venv` (the version `infra/setup.sh` pins) or else the
/// PATH; without it the AWS tests cannot run, and that is a failure, not a skip.
fn find_moto_server() -> PathBuf {
    let in_venv = repo_root().join(".venv/bin/moto_server");
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("moto_server"));
    [in_venv.clone()]
        .into_iter()
        .chain(on_path)
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the AWS tests need the moto emulator: no `moto_server` at {} nor on the PATH; \
                 run infra/setup.sh (it installs moto[server] into .venv)",
                in_venv.display()
            )
        })
}

/// The Python of the environment `moto_server` is installed in: the `python3` beside it.
fn python_beside(moto: &Path) -> PathBuf {
    let beside = moto.with_file_name("python3");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("python3")
    }
}

/// What `resources.py` created and read from the template.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Resources {
    pub region: String,
    pub queues: HashMap<String, QueueResource>,
    pub functions: HashMap<String, FunctionResource>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct QueueResource {
    pub url: String,
    pub arn: String,
    pub attributes: HashMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct FunctionResource {
    /// `FunctionName`: `<NamePrefix>-worker`.
    pub name: String,
    /// Seconds.
    pub timeout: u64,
    /// Megabytes.
    pub memory_size: u32,
    pub environment: HashMap<String, String>,
    pub routes: Vec<Route>,
    pub queue_events: Vec<QueueEvent>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Route {
    pub method: String,
    /// `/webhooks/telsmart/{connection_id}`
    pub path: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct QueueEvent {
    /// The queue's logical id.
    pub queue: String,
    pub batch_size: i32,
    pub report_batch_item_failures: bool,
}

impl FunctionResource {
    /// A setting of the function's environment, as the handlers' `from_vars` read them.
    pub fn var(&self, name: &str) -> Option<String> {
        self.environment.get(name).cloned()
    }
}

impl Resources {
    pub fn queue(&self, logical_id: &str) -> &QueueResource {
        self.queues
            .get(logical_id)
            .unwrap_or_else(|| panic!("the template has no queue {logical_id}"))
    }

    /// The ingest function of a provider: the one with a route under `/webhooks/{provider}/`.
    pub fn ingest_function(&self, provider: Provider) -> &FunctionResource {
        let prefix = format!("/webhooks/{provider}/");
        let mut found = self
            .functions
            .values()
            .filter(|f| f.routes.iter().any(|r| r.path.starts_with(&prefix)));
        let function = found
            .next()
            .unwrap_or_else(|| panic!("no function of the template has a route {prefix}..."));
        assert!(found.next().is_none(), "two functions serve {prefix}...");
        function
    }

    /// The worker: the function fed by the webhook queue.
    pub fn worker_function(&self) -> (&FunctionResource, &QueueEvent) {
        self.functions
            .values()
            .find_map(|f| {
                f.queue_events
                    .iter()
                    .find(|e| e.queue == "WebhookQueue")
                    .map(|e| (f, e))
            })
            .expect("a function of the template reads WebhookQueue")
    }

    pub fn max_receive_count(&self) -> u32 {
        let policy: serde_json::Value = serde_json::from_str(
            self.queue("WebhookQueue")
                .attributes
                .get("RedrivePolicy")
                .expect("the queue has a redrive policy"),
        )
        .expect("a JSON redrive policy");
        policy["maxReceiveCount"]
            .as_u64()
            .expect("a numeric maxReceiveCount") as u32
    }
}

/// Creates the template's queues and tables under the prefix `name` (one per test), with the
/// CRM at `crm_url`, and an SDK configuration pointing at the emulator.
pub async fn create_stack(name: &str, crm_url: &str) -> (Resources, SdkConfig) {
    let emulator = emulator();
    let output = tokio::process::Command::new(&emulator.python)
        .arg(repo_root().join("infra/aws/resources.py"))
        .args(["--endpoint", &emulator.endpoint])
        .args(["--param", &format!("NamePrefix={name}")])
        .args(["--param", &format!("CrmUrl={crm_url}")])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", emulator.python.display()));
    assert!(
        output.status.success(),
        "infra/aws/resources.py failed: {}\nmoto's log: {}",
        String::from_utf8_lossy(&output.stderr),
        emulator.log.display()
    );
    let resources: Resources =
        serde_json::from_slice(&output.stdout).expect("resources.py prints its resources as JSON");
    let aws = sdk_config(&emulator.endpoint, &resources.region).await;
    (resources, aws)
}

/// An SDK configuration for the emulator at `endpoint`.
pub async fn sdk_config(endpoint: &str, region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "emulator", "emulator", None, None, "tests",
        ))
        .load()
        .await
}
