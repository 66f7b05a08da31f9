//! A real `callbridge serve` process on a temporary config and data file, and an HTTP client
//! to send it webhooks.

use super::scenario::{Scenario, copies_of, example_config_path};
use callbridge::recorder::{RecordedEvent, Recorder};
use callbridge_shared::domain::event::Provider;
use callbridge_shared::engine::breaker::BreakerSettings;
use callbridge_shared::engine::schedule::RetrySchedule;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long a server may take to start: generous, for a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long deliveries may take: generous too; a passing run never waits this long.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(180);

/// A folder of its own, removed afterwards unless the test failed (then it is kept to look at).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "callbridge-e2e-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The CRM settings of a test config.
#[derive(Clone, Copy, Debug)]
pub struct CrmSettings {
    pub timeout_ms: u64,
    /// `[crm.retry]`, in seconds.
    pub retry_horizon_secs: f64,
    pub retry_initial_secs: f64,
    pub retry_cap_secs: f64,
    /// `[crm.breaker]`.
    pub breaker_open_after: u32,
    pub breaker_probe_every_secs: u64,
}

impl Default for CrmSettings {
    /// Retries quick enough for a test, a horizon that outlasts any outage a test makes, a
    /// breaker that only a test about it lets open, and no catch-up: a call catches up (its
    /// intermediate updates superseded) once it has waited a probe interval, and the fault
    /// tests check that every revision reaches the CRM in order.
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            retry_horizon_secs: 3_600.0,
            retry_initial_secs: 0.02,
            retry_cap_secs: 0.5,
            breaker_open_after: 1_000_000,
            breaker_probe_every_secs: 3_600,
        }
    }
}

impl CrmSettings {
    /// The server's own retry schedule and breaker (what a config without `[crm.retry]` and
    /// `[crm.breaker]` gets), written out.
    pub fn server_defaults() -> Self {
        let retry = RetrySchedule::default();
        let breaker = BreakerSettings::default();
        Self {
            retry_horizon_secs: retry.horizon.as_secs_f64(),
            retry_initial_secs: retry.initial.as_secs_f64(),
            retry_cap_secs: retry.cap.as_secs_f64(),
            breaker_open_after: breaker.open_after,
            breaker_probe_every_secs: breaker.probe_every.as_secs(),
            ..Self::default()
        }
    }
}

/// A config file and data file in a temporary folder: the example config's connections (and
/// copies of them under other ids, so tests can run side by side on one server without
/// sharing calls), the CRM at `crm_url`. A restart on the same `Setup` finds the same data.
pub struct Setup {
    pub dir: TempDir,
    pub config: PathBuf,
}

impl Setup {
    /// [`Setup::new`] with no copies, and `toml` (more connections) after the example's.
    pub fn with(crm_url: &str, toml: &str) -> Self {
        let setup = Self::new(crm_url, CrmSettings::default(), &[]);
        let mut config = std::fs::OpenOptions::new()
            .append(true)
            .open(&setup.config)
            .expect("the test config");
        std::io::Write::write_all(&mut config, toml.as_bytes())
            .expect("the test config is written");
        setup
    }

    /// `copies`: (id of an example connection, id of its copy).
    pub fn new(crm_url: &str, crm: CrmSettings, copies: &[(String, String)]) -> Self {
        let dir = TempDir::new();
        let config = dir.path().join("callbridge.toml");
        let data_file = dir.path().join("callbridge.db");
        let example = std::fs::read_to_string(example_config_path()).expect("the example config");
        // The connections are the example's, verbatim; the settings above them are the test's.
        let connections = &example[example
            .find(CONNECTIONS)
            .expect("the example config has connections")
            + 1..];
        let mut text = format!(
            "listen = \"127.0.0.1:0\"\n\
             data_file = {data_file:?}\n\
             \n\
             [crm]\n\
             url = {crm_url:?}\n\
             timeout_ms = {}\n\
             \n\
             [crm.retry]\n\
             horizon = {:?}\n\
             initial = {:?}\n\
             cap = {:?}\n\
             \n\
             [crm.breaker]\n\
             open_after = {}\n\
             probe_every = {}\n\
             \n\
             {connections}",
            crm.timeout_ms,
            crm.retry_horizon_secs,
            crm.retry_initial_secs,
            crm.retry_cap_secs,
            crm.breaker_open_after,
            crm.breaker_probe_every_secs,
        );
        for (original, copy) in copies {
            text.push('\n');
            text.push_str(&copy_of_connection(connections, original, copy));
        }
        std::fs::write(&config, text).expect("the test config is written");
        Self { dir, config }
    }

    /// Runs `callbridge deliveries <args> --config <this config>` and returns what it printed
    /// on stdout; panics, with what it printed, when it fails.
    pub async fn deliveries(&self, args: &[&str]) -> String {
        let run = Command::new(env!("CARGO_BIN_EXE_callbridge"))
            .arg("deliveries")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .await
            .expect("callbridge deliveries runs");
        let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
        assert!(
            run.status.success(),
            "callbridge deliveries {args:?} failed ({}):\n{stdout}{}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        );
        stdout
    }

    /// The parked deliveries, as `callbridge deliveries list` prints them.
    pub async fn parked(&self) -> Vec<Value> {
        self.deliveries(&["list"])
            .await
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }
}

/// Where a connection's table starts (and not a comment that names it).
const CONNECTIONS: &str = "\n[[connections]]";

/// The `[[connections]]` block of `original`, under the id `copy`.
fn copy_of_connection(connections: &str, original: &str, copy: &str) -> String {
    let id_line = format!("id = \"{original}\"");
    format!("\n{connections}")
        .split(CONNECTIONS)
        .find(|block| block.lines().any(|line| line.trim() == id_line))
        .map(|block| {
            format!(
                "{}{}",
                CONNECTIONS.trim_start(),
                block.replacen(&id_line, &format!("id = \"{copy}\""), 1)
            )
        })
        .unwrap_or_else(|| panic!("no line `{id_line}` in the example config"))
}

/// What the server printed, kept for failure messages.
type Output = Arc<Mutex<String>>;

/// A running `callbridge serve`; killed when dropped.
pub struct Bridge {
    child: Child,
    sender: Sender,
}

impl Bridge {
    /// A server delivering to `recorder` with `crm`, on copies of the connections of
    /// `scenarios` (see [`super::scenario::on_copies`]), each scenario posted in file order.
    pub async fn serving(
        recorder: &Recorder,
        crm: CrmSettings,
        scenarios: &[Scenario],
    ) -> (Setup, Self) {
        let setup = Setup::new(&recorder.url(), crm, &copies_of(scenarios));
        let bridge = Self::start(&setup).await;
        for s in scenarios {
            bridge.post_in_file_order(s).await;
        }
        (setup, bridge)
    }

    /// Starts `callbridge serve` on `setup` and waits until it listens; panics, with what it
    /// printed, when it does not.
    pub async fn start(setup: &Setup) -> Self {
        Self::start_with_env(setup, &[]).await
    }

    /// [`Bridge::start`] with these environment variables (`CALLBRIDGE_CRASH_AT`, say).
    pub async fn start_with_env(setup: &Setup, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_callbridge"))
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--config")
            .arg(&setup.config)
            .args(["--listen", "127.0.0.1:0"])
            .current_dir(setup.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("callbridge serve starts");
        let output = Output::default();
        let (lines, mut line) = mpsc::unbounded_channel();
        drain(
            child.stdout.take().expect("stdout"),
            output.clone(),
            lines.clone(),
        );
        drain(child.stderr.take().expect("stderr"), output.clone(), lines);
        let listening = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(text) = line.recv().await {
                if let Some(addr) = listening_address(&text) {
                    return Some(addr);
                }
            }
            None
        })
        .await;
        let addr = match listening {
            Ok(Some(addr)) => addr,
            Ok(None) => panic!(
                "callbridge serve exited ({:?}) without listening; it printed:\n{}",
                child.wait().await,
                output.lock().unwrap()
            ),
            Err(_) => panic!(
                "callbridge serve did not listen within {START_TIMEOUT:?}; it printed:\n{}",
                output.lock().unwrap()
            ),
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        Self {
            child,
            sender: Sender {
                url: format!("http://{addr}"),
                client,
                output,
            },
        }
    }

    /// A handle to send webhooks from other tasks.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// `kill -9`: no chance to flush or finish anything. Panics if the server was not running
    /// and answering just before, so a kill never stands in for a server that had died.
    pub async fn kill(mut self) -> String {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "the server had exited before the kill; it printed:\n{}",
            self.output()
        );
        let health = self.health().await;
        assert_eq!(health.status, 200, "the server was unwell before the kill");
        self.child.kill().await.expect("the server is killed");
        self.output()
    }

    /// Waits for the server to end by itself (a crash point), at most `timeout`; returns how it
    /// ended and what it printed.
    pub async fn exited(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status.expect("the server's exit status");
                // The streams close with the process; give the readers a moment to finish.
                tokio::time::sleep(Duration::from_millis(100)).await;
                (status, self.output())
            }
            Err(_) => panic!(
                "the server was still running after {timeout:?}; it printed:\n{}",
                self.output()
            ),
        }
    }
}

impl std::ops::Deref for Bridge {
    type Target = Sender;
    fn deref(&self) -> &Sender {
        &self.sender
    }
}

/// Sends requests to a running server.
#[derive(Clone)]
pub struct Sender {
    url: String,
    client: reqwest::Client,
    output: Output,
}

/// A webhook's answer; a body that is not JSON is kept as a string.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Sender {
    pub fn webhook_url(&self, provider: &str, connection: &str) -> String {
        format!("{}/webhooks/{provider}/{connection}", self.url)
    }

    /// The server's URL of `path` (`/telsmart/<connection>/activate`).
    pub fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// What the server printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// A webhook as a provider posts it: JSON, the token as `Authorization: Bearer`.
    pub fn webhook(
        &self,
        provider: Provider,
        connection: &str,
        token: &str,
        webhook: &Value,
    ) -> reqwest::RequestBuilder {
        self.client
            .post(self.webhook_url(provider.as_str(), connection))
            .bearer_auth(token)
            .json(webhook)
    }

    /// Posts one webhook; panics if the server does not answer.
    pub async fn post(
        &self,
        provider: Provider,
        connection: &str,
        token: &str,
        webhook: &Value,
    ) -> Answer {
        self.send(self.webhook(provider, connection, token, webhook))
            .await
    }

    /// Runs `callbridge replay` on a scenario file against this server, with the defaults
    /// of the example config (connection `demo-<provider>` and its token); panics, with what it
    /// printed, when it fails.
    pub async fn replay(&self, file: &Path) -> String {
        let run = Command::new(env!("CARGO_BIN_EXE_callbridge"))
            .arg("replay")
            .arg(file)
            .args(["--url", &self.url])
            .output()
            .await
            .expect("callbridge replay runs");
        let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
        assert!(
            run.status.success(),
            "callbridge replay {} failed ({}):\n{stdout}{}\nthe server printed:\n{}",
            file.display(),
            run.status,
            String::from_utf8_lossy(&run.stderr),
            self.output()
        );
        stdout
    }

    /// Waits until the server has nothing left to do: nothing queued, nothing to deliver
    /// (parked deliveries aside).
    pub async fn wait_idle(&self, timeout: Duration) {
        self.wait_health(
            "nothing queued or to deliver",
            timeout,
            &["queued", "undelivered_calls"],
        )
        .await;
    }

    /// Posts a scenario's webhooks one at a time, each applied before the next is sent, as a
    /// provider's webhooks arrive seconds apart. The worker applies different calls side by
    /// side, so without the wait a webhook of one call may overtake another call's (a Voys
    /// transfer its merged call's first event) and the calls' event sequences differ from the
    /// file order's (their final resources do not).
    pub async fn post_in_file_order(&self, scenario: &Scenario) {
        let token = scenario.token();
        for (i, webhook) in scenario.webhooks.iter().enumerate() {
            let answer = self
                .post(scenario.provider, &scenario.connection, &token, webhook)
                .await;
            assert_eq!(
                answer.status, 202,
                "{} webhook {i}: {}",
                scenario.name, answer.body
            );
            self.wait_health("the webhook applied", DELIVERY_TIMEOUT, &["queued"])
                .await;
        }
    }

    /// `/health`'s answer: `queued`, `undelivered_calls`, `parked`, ...
    pub async fn health(&self) -> Answer {
        self.send(self.client.get(format!("{}/health", self.url)))
            .await
    }

    /// Polls `/health` until each of `counts` is 0; panics, with the last answer and what the
    /// server printed, after `timeout`.
    async fn wait_health(&self, what: &str, timeout: Duration, counts: &[&str]) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let health = self
                .send(self.client.get(format!("{}/health", self.url)))
                .await;
            let zero = |count: &&str| health.body[*count].as_u64() == Some(0);
            if health.status == 200 && counts.iter().all(zero) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not get to {what} in {timeout:?}: /health answered {} {}; it printed:\n{}",
                health.status,
                health.body,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the CRM recorder holds what `done` wants and the server has nothing left to
    /// deliver (so nothing more is coming), and returns what the recorder holds then.
    pub async fn settled(
        &self,
        recorder: &Recorder,
        what: &str,
        done: impl Fn(&[RecordedEvent]) -> bool,
    ) -> Vec<RecordedEvent> {
        if let Err(e) = recorder.wait_for(what, DELIVERY_TIMEOUT, done).await {
            panic!("{e}\nthe server printed:\n{}", self.output());
        }
        self.wait_idle(DELIVERY_TIMEOUT).await;
        recorder.events()
    }

    /// Waits until `delivered` holds for every scenario and the server has nothing left to
    /// deliver, and returns what the recorder holds then; names the scenarios that never got
    /// there.
    pub async fn settled_scenarios(
        &self,
        recorder: &Recorder,
        scenarios: &[Scenario],
        delivered: fn(&Scenario, &[RecordedEvent]) -> bool,
    ) -> Vec<RecordedEvent> {
        let all = |events: &[RecordedEvent]| scenarios.iter().all(|s| delivered(s, events));
        if recorder.wait_for("", DELIVERY_TIMEOUT, all).await.is_err() {
            let events = recorder.events();
            let unfinished: String = scenarios
                .iter()
                .filter(|s| !delivered(s, &events))
                .map(|s| s.summary(&events))
                .collect();
            panic!(
                "after {DELIVERY_TIMEOUT:?}, these scenarios were still not delivered:\n{unfinished}\nthe server printed:\n{}",
                self.output()
            );
        }
        self.wait_idle(DELIVERY_TIMEOUT).await;
        recorder.events()
    }

    /// Sends a request and reads its answer; panics if the server does not answer.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        match self.try_send(request).await {
            Ok(answer) => answer,
            Err(e) => panic!(
                "callbridge serve did not answer: {e}; it printed:\n{}",
                self.output()
            ),
        }
    }

    /// Sends a request and reads its answer, if the server answers.
    pub async fn try_send(&self, request: reqwest::RequestBuilder) -> reqwest::Result<Answer> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }
}

/// The lines of a server's output that tell of a panic: none may appear, even in a run that
/// was killed.
pub fn panics(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|line| line.contains("panicked") || line.contains("RUST_BACKTRACE"))
        .collect()
}

/// Copies a stream of the server into `output`, and each line to `lines` while anyone reads.
fn drain(
    stream: impl AsyncRead + Unpin + Send + 'static,
    output: Output,
    lines: mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            output.lock().unwrap().push_str(&format!("{line}\n"));
            let _ = lines.send(line);
        }
    });
}

/// The address in the line the server prints once it listens.
fn listening_address(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on")? + "listening on".len()..];
    rest.split(|c: char| c.is_whitespace() || c == '/' || c == ',')
        .find_map(|word| word.parse::<SocketAddr>().ok())
}
