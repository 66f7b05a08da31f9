//! The local server under load, end to end: webhooks in over HTTP, Morph events out to a CRM
//! in this process, matched to the webhooks that caused them. Figures in BENCHMARKS.md.
//!
//!     cargo bench -p callbridge --bench load -- [--calls N] [--concurrency C]
//!         [--rate R --gap-ms G] [--timeout-s T] [--scenario FILE]
//!
//! It starts `callbridge serve` (this build's binary) on a loopback port with a fresh data file
//! and one Telsmart connection whose `crm.url` is a recorder here, then plays calls: each is
//! a Telsmart scenario under a call id of its own, its webhooks sent one after another. By
//! default the held-and-resumed call (ringing, answer, hold, resume, hangup; three Morph
//! events, 0.6 CRM request a webhook); `--scenario tests/scenarios/telsmart/1-answered-incoming.json`
//! plays the answered call (ringing, answer, hangup), where every webhook changes the call
//! and so costs one CRM request, with `--gap-ms 0` its webhooks back to back.
//!
//! - Without `--rate` (saturation): `--concurrency` connections send the calls' webhooks as
//!   fast as the server answers. Gives the webhooks accepted per second and the answer's
//!   latency; the end-to-end latency then includes the backlog.
//! - With `--rate R`: open loop, `R` webhooks a second in all, a call's webhooks `--gap-ms`
//!   apart (so about `(n - 1) * gap * R / n` calls of `n` webhooks are going on at once).
//!   Each webhook has a time slot and its latencies count from that slot, so a server falling
//!   behind shows in them (no coordinated omission); with `--gap-ms 0` a call's webhooks share
//!   its slot, and each is sent when the one before is answered.
//!
//! `CALLBRIDGE_BIN=path` runs another build of the server (one with symbols, to profile it).
//!
//! End to end is from a webhook's slot (or its send, saturated) to the arrival at the recorder
//! of the Morph event it caused (ringing → created, answer → updated, hangup → updated).
//! Every call must get exactly those three events, in order, once each: the run fails
//! otherwise. Loopback only; bounded by `--calls` and `--timeout-s`; the server is killed at
//! the end.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use callbridge_shared::config::Config;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::providers;
use callbridge_shared::domain::record::{CallKey, CallRecord};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONNECTION: &str = "load-telsmart";
const TOKEN: &str = "load-telsmart-token-0123456789";
const SCENARIO: &str = "tests/scenarios/telsmart/3-held-and-resumed.json";

struct Options {
    calls: usize,
    concurrency: usize,
    rate: Option<f64>,
    gap: Duration,
    timeout: Duration,
    /// A Telsmart scenario, from the repository's root.
    scenario: PathBuf,
}

impl Options {
    fn parse() -> Self {
        let mut options = Options {
            calls: 4_000,
            concurrency: 64,
            rate: None,
            gap: Duration::from_millis(100),
            timeout: Duration::from_secs(120),
            scenario: PathBuf::from(SCENARIO),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> f64 {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} takes a number"))
            };
            match arg.as_str() {
                "--calls" => options.calls = value("--calls") as usize,
                "--concurrency" => options.concurrency = value("--concurrency") as usize,
                "--rate" => options.rate = Some(value("--rate")),
                "--gap-ms" => options.gap = Duration::from_millis(value("--gap-ms") as u64),
                "--timeout-s" => options.timeout = Duration::from_secs(value("--timeout-s") as u64),
                "--scenario" => {
                    options.scenario = args.next().expect("--scenario takes a file").into()
                }
                // `cargo bench` adds --bench; criterion-style filters mean nothing here.
                _ => {}
            }
        }
        assert!(options.calls > 0 && options.concurrency > 0);
        options
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The webhooks of the scenario at `path`, and for each the revision it makes (0: none), found
/// by folding them one at a time as the worker does.
fn scenario(path: &Path) -> (Vec<Value>, Vec<u64>) {
    let webhooks: Vec<Value> =
        serde_json::from_slice(&std::fs::read(repo().join(path)).unwrap()).unwrap();
    let connection = Config::parse(&config_text(
        "127.0.0.1:0",
        Path::new("x.db"),
        "http://127.0.0.1:9/events",
    ))
    .unwrap()
    .connections()
    .unwrap()
    .remove(0);
    let mut record: Option<CallRecord> = None;
    let revisions = webhooks
        .iter()
        .map(|w| {
            let event = providers::parse(Provider::Telsmart, w).unwrap().event;
            let record = record.get_or_insert_with(|| {
                CallRecord::new(CallKey::new(
                    CONNECTION,
                    Provider::Telsmart,
                    &event.call_key,
                ))
            });
            record.add_event(&event);
            if record.refresh(&connection) {
                record.revision
            } else {
                0
            }
        })
        .collect();
    (webhooks, revisions)
}

fn config_text(listen: &str, data_file: &Path, crm_url: &str) -> String {
    format!(
        r#"
listen = "{listen}"
data_file = "{}"

[crm]
url = "{crm_url}"
timeout_ms = 5000

[[connections]]
id = "{CONNECTION}"
provider = "telsmart"
token = "{TOKEN}"
account = "b11d749b-8eb7-4236-a068-3d94ba3860d6"
connector_id = "conn_load"
owner_id = "owner_load"
users = {{ "200" = "usr_john", "210" = "usr_jane" }}
"#,
        data_file.display()
    )
}

/// What the CRM received: per resource, (revision, arrival) in arrival order.
#[derive(Default)]
struct Arrivals {
    by_resource: Mutex<HashMap<String, Vec<(u64, Instant)>>>,
    count: AtomicUsize,
}

async fn take_event(
    State(arrivals): State<Arc<Arrivals>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Bytes) {
    let at = Instant::now();
    let key = headers
        .get("x-idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // `{resource_id}-r{revision}`
    if let Some((resource, revision)) = key.rsplit_once("-r")
        && let Ok(revision) = revision.parse()
    {
        arrivals
            .by_resource
            .lock()
            .unwrap()
            .entry(resource.to_owned())
            .or_default()
            .push((revision, at));
    }
    arrivals.count.fetch_add(1, Ordering::Relaxed);
    // Morph answers 200 with the event.
    (StatusCode::OK, body)
}

struct Server {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Server {
    async fn start(crm_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("callbridge-load-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("callbridge.toml");
        let listen = format!("127.0.0.1:{port}");
        std::fs::write(
            &config,
            config_text(&listen, &dir.join("callbridge.db"), crm_url),
        )
        .unwrap();
        // CALLBRIDGE_BIN: another build of the server, e.g. one with symbols to profile.
        let binary = std::env::var_os("CALLBRIDGE_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_callbridge").into());
        let child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("callbridge serve starts");
        let url = format!("http://{listen}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client
            .get(format!("{url}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "callbridge serve did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, url, dir }
    }

    /// User and system CPU time of the server so far.
    fn cpu(&self) -> Duration {
        cpu_of(&self.child.id().to_string())
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// User and system CPU time of a process so far (`self`: this one).
fn cpu_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// One webhook to send: the call, its place in the call, and its body.
struct Planned {
    call: usize,
    index: usize,
    body: Vec<u8>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

fn show(sorted: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
        ms(percentile(sorted, 50.0)),
        ms(percentile(sorted, 90.0)),
        ms(percentile(sorted, 99.0)),
        ms(percentile(sorted, 99.9)),
        ms(sorted.last().copied().unwrap_or_default()),
        sorted.len()
    )
}

#[tokio::main]
async fn main() {
    let options = Options::parse();
    let (template, revisions) = scenario(&options.scenario);
    let per_call = template.len();
    let expected_per_call = revisions.iter().filter(|r| **r > 0).count();

    let arrivals = Arc::new(Arrivals::default());
    let crm = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let crm_url = format!("http://{}/events", crm.local_addr().unwrap());
    let app = Router::new()
        .route("/events", post(take_event))
        .with_state(Arc::clone(&arrivals));
    let crm_task = tokio::spawn(async move { axum::serve(crm, app).await.unwrap() });

    let server = Server::start(&crm_url).await;
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let call_ids: Arc<Vec<String>> = Arc::new(
        (0..options.calls)
            .map(|i| format!("load-{run_id}-{i}"))
            .collect(),
    );
    let resource_of: HashMap<String, usize> = call_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                CallKey::new(CONNECTION, Provider::Telsmart, id).resource_id(),
                i,
            )
        })
        .collect();
    let template = Arc::new(template);
    let body = {
        let (template, call_ids) = (Arc::clone(&template), Arc::clone(&call_ids));
        move |call: usize, index: usize| {
            let mut webhook = template[index].clone();
            webhook["id"] = Value::String(call_ids[call].clone());
            serde_json::to_vec(&webhook).unwrap()
        }
    };

    let total = options.calls * per_call;
    // Per webhook: the origin of its latencies, and its answer's latency.
    let origins: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total]));
    let answers: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let failures = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let url = format!("{}/webhooks/telsmart/{CONNECTION}", server.url);
    let cpu_before = server.cpu();
    let own_cpu_before = cpu_of("self");
    let started = Instant::now();
    let deadline = started + options.timeout;

    let send = {
        let (client, url, origins, answers, failures) = (
            client.clone(),
            url.clone(),
            Arc::clone(&origins),
            Arc::clone(&answers),
            Arc::clone(&failures),
        );
        move |planned: Planned, origin: Instant| {
            let (client, url, origins, answers, failures) = (
                client.clone(),
                url.clone(),
                Arc::clone(&origins),
                Arc::clone(&answers),
                Arc::clone(&failures),
            );
            async move {
                let sent = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(planned.body)
                    .send()
                    .await;
                let answered = Instant::now();
                match sent {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {
                        origins.lock().unwrap()[planned.call * per_call + planned.index] =
                            Some(origin);
                        answers.lock().unwrap().push(answered - origin);
                    }
                    Ok(r) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("webhook refused: {}", r.status());
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("webhook not sent: {e}");
                    }
                }
            }
        }
    };

    let mode = match options.rate {
        None => {
            // Saturation: each connection plays one call after another.
            let next = Arc::new(AtomicUsize::new(0));
            let calls = options.calls;
            let mut senders = tokio::task::JoinSet::new();
            for _ in 0..options.concurrency {
                let (next, send, body) = (Arc::clone(&next), send.clone(), body.clone());
                senders.spawn(async move {
                    loop {
                        let call = next.fetch_add(1, Ordering::Relaxed);
                        if call >= calls || Instant::now() > deadline {
                            return;
                        }
                        for index in 0..per_call {
                            send(
                                Planned {
                                    call,
                                    index,
                                    body: body(call, index),
                                },
                                Instant::now(),
                            )
                            .await;
                        }
                    }
                });
            }
            senders.join_all().await;
            format!("saturation, {} connections", options.concurrency)
        }
        Some(rate) => {
            // Open loop: call i starts at i * per_call / rate; its webhooks are `gap` apart.
            let mut calls = tokio::task::JoinSet::new();
            let spacing = Duration::from_secs_f64(per_call as f64 / rate);
            for call in 0..options.calls {
                let start = started + spacing * call as u32;
                tokio::time::sleep_until(start.into()).await;
                if Instant::now() > deadline {
                    break;
                }
                let (send, body) = (send.clone(), body.clone());
                let gap = options.gap;
                calls.spawn(async move {
                    for index in 0..per_call {
                        let slot = start + gap * index as u32;
                        tokio::time::sleep_until(slot.into()).await;
                        send(
                            Planned {
                                call,
                                index,
                                body: body(call, index),
                            },
                            slot,
                        )
                        .await;
                    }
                });
            }
            calls.join_all().await;
            format!(
                "open loop at {rate:.0} webhooks/s, a call's webhooks {} ms apart",
                options.gap.as_millis()
            )
        }
    };
    let sent_in = started.elapsed();
    let accepted = answers.lock().unwrap().len();

    // Wait for the CRM to have every event the accepted webhooks make.
    let expected = options.calls * expected_per_call;
    while arrivals.count.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered_in = started.elapsed();
    let cpu = server.cpu() - cpu_before;
    let own_cpu = cpu_of("self") - own_cpu_before;
    let peak_rss = server.peak_rss_mib();
    // Anything more (a duplicate) would come now.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let origins = origins.lock().unwrap();
    let by_resource = arrivals.by_resource.lock().unwrap();
    let mut end_to_end = Vec::with_capacity(expected);
    let mut wrong = Vec::new();
    let made: Vec<(usize, u64)> = revisions
        .iter()
        .enumerate()
        .filter(|(_, r)| **r > 0)
        .map(|(i, r)| (i, *r))
        .collect();
    for (resource, events) in by_resource.iter() {
        let Some(&call) = resource_of.get(resource) else {
            wrong.push(format!("an event of an unknown resource {resource}"));
            continue;
        };
        let got: Vec<u64> = events.iter().map(|(r, _)| *r).collect();
        let want: Vec<u64> = made.iter().map(|(_, r)| *r).collect();
        if got != want {
            wrong.push(format!("call {call}: revisions {got:?}, expected {want:?}"));
            continue;
        }
        for ((index, _), (_, at)) in made.iter().zip(events) {
            if let Some(origin) = origins[call * per_call + index] {
                end_to_end.push(at.saturating_duration_since(origin));
            }
        }
    }
    let missing = options.calls - by_resource.len();
    let mut answers = answers.lock().unwrap().clone();
    answers.sort();
    end_to_end.sort();

    println!(
        "load: {mode}; {} calls × {per_call} webhooks ({total}) of {}, {expected_per_call} Morph events a call",
        options.calls,
        options.scenario.display()
    );
    println!(
        "  accepted: {accepted} webhooks in {:.2} s = {:.0} webhooks/s ({} refused or failed)",
        sent_in.as_secs_f64(),
        accepted as f64 / sent_in.as_secs_f64(),
        failures.load(Ordering::Relaxed)
    );
    println!("  answer (202) latency: {}", show(&answers));
    println!(
        "  delivered: {} Morph events by {:.2} s = {:.0} webhooks/s through the whole pipeline",
        arrivals.count.load(Ordering::Relaxed),
        delivered_in.as_secs_f64(),
        accepted as f64 / delivered_in.as_secs_f64()
    );
    println!("  end to end (webhook → CRM): {}", show(&end_to_end));
    println!(
        "  server: {:.0} µs CPU per webhook (user + system, whole pipeline), peak RSS {peak_rss:.1} MiB",
        cpu.as_secs_f64() * 1e6 / accepted.max(1) as f64
    );
    println!(
        "  this load tool (senders and CRM): {:.0} µs CPU per webhook",
        own_cpu.as_secs_f64() * 1e6 / accepted.max(1) as f64
    );
    println!(
        "  CRM requests per call: {:.2}",
        arrivals.count.load(Ordering::Relaxed) as f64 / options.calls as f64
    );
    crm_task.abort();
    drop(server);
    if missing > 0 || !wrong.is_empty() || failures.load(Ordering::Relaxed) > 0 {
        for w in wrong.iter().take(10) {
            eprintln!("  {w}");
        }
        eprintln!(
            "load: FAILED: {missing} calls with no event, {} calls wrong",
            wrong.len()
        );
        std::process::exit(1);
    }
}
