//! The per-event CPU cost of the hot paths: parse and validate one webhook per provider (from
//! its raw bytes), ingest one webhook (auth, parse, enqueue on a no-op queue), fold one more
//! event into a call, and build one Morph event. Figures in BENCHMARKS.md.
//!
//! cargo bench -p callbridge-shared --bench hot_paths

use async_trait::async_trait;
use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::providers;
use callbridge_shared::domain::record::{CallKey, CallRecord};
use callbridge_shared::domain::resource::{MorphEventType, envelope};
use callbridge_shared::pipeline::ingest::{WebhookRequest, ingest};
use callbridge_shared::ports::{ConnectionDirectory, Queue, QueuedWebhook};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::Value;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The webhooks of a provider's first scenario, as bytes.
fn webhooks(provider: Provider) -> Vec<Vec<u8>> {
    let dir = repo().join("tests/scenarios").join(provider.as_str());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".json") && !p.to_string_lossy().ends_with(".expected.json"))
        .collect();
    files.sort();
    let list: Vec<Value> = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    list.iter().map(|w| serde_json::to_vec(w).unwrap()).collect()
}

fn connection(provider: Provider) -> Connection {
    Config::load(&repo().join("infra/callbridge.example.toml"))
        .unwrap()
        .connections()
        .unwrap()
        .into_iter()
        .find(|c| c.provider == provider)
        .unwrap()
}

fn parse(c: &mut Criterion) {
    for provider in Provider::ALL {
        let body = webhooks(provider).remove(0);
        c.bench_function(&format!("parse/{provider}"), |b| {
            b.iter(|| {
                let payload: Value = serde_json::from_slice(black_box(&body)).unwrap();
                providers::parse(provider, &payload).unwrap()
            })
        });
    }
}

struct One(Arc<Connection>);
#[async_trait]
impl ConnectionDirectory for One {
    async fn connection(&self, _: &str) -> anyhow::Result<Option<Arc<Connection>>> {
        Ok(Some(self.0.clone()))
    }
}
struct Discard;
#[async_trait]
impl Queue for Discard {
    async fn enqueue(&self, webhook: &QueuedWebhook) -> anyhow::Result<()> {
        black_box(webhook);
        Ok(())
    }
}

fn ingest_one(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let provider = Provider::Telsmart;
    let directory = One(Arc::new(connection(provider)));
    let body = webhooks(provider).remove(0);
    c.bench_function("ingest/telsmart", |b| {
        b.iter(|| {
            let request = WebhookRequest {
                provider: "telsmart",
                connection_id: "demo-telsmart",
                method: "POST",
                authorization: Some("Bearer demo-telsmart-token-change-me"),
                query: None,
                content_type: Some("application/json"),
                body: &body,
                signature: Default::default(),
            };
            runtime
                .block_on(ingest(&request, &directory, &Discard, callbridge_shared::domain::time::Timestamp::from_micros(1_800_000_000_000_000).unwrap()))
                .unwrap()
        })
    });
}

fn fold_and_envelope(c: &mut Criterion) {
    let provider = Provider::Telsmart;
    let connection = connection(provider);
    let events: Vec<_> = webhooks(provider)
        .iter()
        .map(|w| providers::parse(provider, &serde_json::from_slice(w).unwrap()).unwrap().event)
        .collect();
    let (last, earlier) = events.split_last().unwrap();
    let key = CallKey::new(&connection.id, provider, &last.call_key);
    let mut before = CallRecord::new(key);
    for e in earlier {
        before.add_event(e);
        before.refresh(&connection);
    }
    c.bench_function("fold/one_more_event", |b| {
        b.iter(|| {
            let mut record = before.clone();
            record.add_event(black_box(last));
            record.refresh(&connection)
        })
    });
    let call = before.resource.clone().unwrap();
    c.bench_function("morph/build_event", |b| {
        b.iter(|| serde_json::to_vec(&envelope(MorphEventType::Updated, black_box(&before.resource_id), &call)).unwrap())
    });
}

criterion_group!(benches, parse, ingest_one, fold_and_envelope);
criterion_main!(benches);
