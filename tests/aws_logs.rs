//! What the functions write to CloudWatch Logs per webhook at the default level (issue 12):
//! the ingest's and the worker's log lines, JSON as `init_logging(LogFormat::Json)` writes them
//! on Lambda, and their EMF metric lines, which CloudWatch bills as log bytes too. Telsmart's
//! held-and-resumed call (five webhooks, three Morph events, the call `benches/cost.py`
//! prices), its webhooks seconds apart (an ingest invocation and a worker batch each, the
//! dearest case), then the same call in one batch. Lambda's own START/END/REPORT lines and the
//! HTTP API's access log are not the functions' and are not counted here.
//!
//! A test binary of its own: the log subscriber and the EMF exporter are the process's, as in
//! a Lambda container, and no other test may write into them meanwhile.
//!
//! Needs `moto_server` (on the PATH or in `.venv`, installed by `infra/setup.sh`).

mod aws_support;
#[allow(dead_code)]
#[path = "support/scenario.rs"]
mod scenario;

use aws_support::AwsBridge;
use callbridge::recorder::{Behaviour, Recorder};
use callbridge_shared::telemetry::{EmfStdout, LogFormat, init_logging_to};
use scenario::{Scenario, copies_of};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The most the two functions may write per webhook, webhooks a batch each, at the default
/// level (BENCHMARKS.md, cost: 821 measured with the example connection's ids since a batch's
/// metrics share a line and the ingest's log line is its metric line, 936 before, 1,637 before
/// issue 12).
const BUDGET_BYTES_PER_WEBHOOK: usize = 850;

/// Everything the process logs, as CloudWatch would receive it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The text written since `from` bytes.
    fn since(&self, from: usize) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()[from..]).into_owned()
    }
}

/// Log bytes of the ingest and of the worker.
#[derive(Debug, Default)]
struct Written {
    ingest: usize,
    worker: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_functions_log_at_most_the_budget_per_webhook() {
    let captured = Captured::default();
    init_logging_to(LogFormat::Json, "info", {
        let captured = captured.clone();
        move || captured.clone()
    });
    let emf = Arc::new(EmfStdout::from_env().writing_to({
        let captured = captured.clone();
        move || captured.clone()
    }));

    let s = scenario::all()
        .into_iter()
        .find(|s| s.name == "telsmart/3-held-and-resumed.json")
        .expect("Telsmart's held-and-resumed call");
    let batched = s.on(format!("{}-batched", s.expected.connection));
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let bridge = AwsBridge::start(
        "logs",
        &recorder.url(),
        &copies_of(std::slice::from_ref(&batched)),
    )
    .await;
    let ingest = bridge
        .ingest_caching_for(s.provider, Duration::from_secs(60))
        .with_metrics(emf.clone());
    let worker = bridge.worker().with_metrics(emf);

    // One webhook, then its batch, and again: what each function wrote for each.
    let send = async |s: &Scenario, webhooks: std::ops::Range<usize>, written: &mut Written| {
        let start = captured.len();
        for i in webhooks {
            let request = AwsBridge::webhook_request(&s.connection, &s.token(), &s.webhooks[i]);
            let answer = bridge.send_to(&ingest, s.provider, &request).await;
            assert_eq!(
                answer.status, 202,
                "{} webhook {i}: {}",
                s.name, answer.body
            );
        }
        let sent = captured.len();
        let batches = bridge.source.drain(&worker).await;
        assert!(batches.iter().all(|b| b.failed.is_empty()), "{batches:?}");
        written.ingest += sent - start;
        written.worker += captured.len() - sent;
        captured.since(start)
    };
    let mut apart = Written::default();
    let mut lines = String::new();
    for i in 0..s.webhooks.len() {
        lines += &send(&s, i..i + 1, &mut apart).await;
    }
    let mut together = Written::default();
    send(&batched, 0..batched.webhooks.len(), &mut together).await;
    s.assert_in_order(&recorder.events());

    let n = s.webhooks.len();
    let per_webhook = |w: &Written| (w.ingest / n, w.worker / n, (w.ingest + w.worker) / n);
    eprintln!(
        "log bytes per webhook of {} (ingest, worker, both): a batch each {:?}, one batch for the call {:?}\n{lines}",
        s.name,
        per_webhook(&apart),
        per_webhook(&together),
    );
    // What an operator needs is there, once per webhook, in the line of its count; besides,
    // the worker's metric line per batch and nothing else; no token, no number in full.
    let accepted: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("\"webhook accepted\""))
        .collect();
    assert_eq!(accepted.len(), n, "{lines}");
    assert!(
        accepted
            .iter()
            .all(|l| l.starts_with("{\"_aws\":") && l.contains("\"WebhooksAccepted\":1")),
        "the webhook's line is not its metric line:\n{lines}"
    );
    assert!(
        lines.lines().all(|l| l.starts_with("{\"_aws\":")),
        "a line besides the metric lines:\n{lines}"
    );
    assert_eq!(
        lines.lines().count(),
        2 * n,
        "one line per webhook, one per batch:\n{lines}"
    );
    assert!(!lines.contains(&s.token()), "a token was logged:\n{lines}");
    assert!(
        !lines.contains("+3228992675"),
        "a number was logged:\n{lines}"
    );
    let (_, _, both) = per_webhook(&apart);
    assert!(
        both <= BUDGET_BYTES_PER_WEBHOOK,
        "{both} log bytes per webhook, over the budget of {BUDGET_BYTES_PER_WEBHOOK}:\n{lines}"
    );
}
