//! The per-event CPU cost of the hot paths: parse and validate one webhook per provider (from
//! its raw bytes), ingest one webhook (auth, parse, enqueue on a no-op queue), fold one more
//! event into a call, and build one Morph event. Figures in BENCHMARKS.md.
//!
//! cargo bench -p callbridge-shared --bench hot_paths
//!
//! Before criterion's timings, each path is run once more under a counting global allocator and
//! its heap allocations and bytes per call are printed (`allocs ...` lines). The counter is two
//! relaxed atomic additions per allocation, well under the noise of this machine.

use async_trait::async_trait;
use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::Connection;
use callbridge_shared::domain::event::Provider;
use callbridge_shared::domain::providers;
use callbridge_shared::domain::record::{CallKey, CallRecord};
use callbridge_shared::domain::resource::{MorphEventType, envelope};
use callbridge_shared::engine::ingest::{WebhookRequest, ingest};
use callbridge_shared::ports::{ConnectionDirectory, Queue, QueuedWebhook};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The system allocator, counting allocations (and reallocations) and the bytes asked for.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed straight to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` a few times and prints its allocations per call, then benches it.
fn bench<O>(c: &mut Criterion, name: &str, mut f: impl FnMut() -> O) {
    const RUNS: u64 = 100;
    black_box(f());
    let (count, bytes) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED_BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..RUNS {
        black_box(f());
    }
    let count = (ALLOCATIONS.load(Ordering::Relaxed) - count) / RUNS;
    let bytes = (ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes) / RUNS;
    println!("allocs {name}: {count} allocations, {bytes} bytes per call");
    c.bench_function(name, |b| b.iter(&mut f));
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The webhooks of a provider's first scenario, as bytes.
fn webhooks(provider: Provider) -> Vec<Vec<u8>> {
    let dir = repo().join("tests/scenarios").join(provider.as_str());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.to_string_lossy().ends_with(".json")
                && !p.to_string_lossy().ends_with(".expected.json")
        })
        .collect();
    files.sort();
    let list: Vec<Value> = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    list.iter()
        .map(|w| serde_json::to_vec(w).unwrap())
        .collect()
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
        bench(c, &format!("parse/{provider}"), || {
            let payload: Value = serde_json::from_slice(black_box(&body)).unwrap();
            providers::parse(provider, &payload).unwrap()
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let provider = Provider::Telsmart;
    let directory = One(Arc::new(connection(provider)));
    let body = webhooks(provider).remove(0);
    bench(c, "ingest/telsmart", || {
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
            .block_on(ingest(
                &request,
                &directory,
                &Discard,
                callbridge_shared::domain::time::Timestamp::from_micros(1_800_000_000_000_000)
                    .unwrap(),
            ))
            .unwrap()
    });
}

fn fold_and_envelope(c: &mut Criterion) {
    let provider = Provider::Telsmart;
    let connection = connection(provider);
    let events: Vec<_> = webhooks(provider)
        .iter()
        .map(|w| {
            providers::parse(provider, &serde_json::from_slice(w).unwrap())
                .unwrap()
                .event
        })
        .collect();
    // What a store writes: the record as JSON after each event (DynamoDB bills a write per
    // started KiB of the item, a strongly consistent read per started 4 KiB).
    let mut record = CallRecord::new(CallKey::new(&connection.id, provider, &events[0].call_key));
    let sizes: Vec<(usize, usize)> = events
        .iter()
        .map(|e| {
            record.add_event(e);
            record.refresh(&connection);
            let with_outbox = serde_json::to_vec(&record).unwrap().len();
            record.mark_delivered(record.revision);
            (with_outbox, serde_json::to_vec(&record).unwrap().len())
        })
        .collect();
    println!(
        "record bytes (with its new delivery, once delivered) after each event of {provider}: {sizes:?}"
    );
    let (last, earlier) = events.split_last().unwrap();
    let key = CallKey::new(&connection.id, provider, &last.call_key);
    let mut before = CallRecord::new(key);
    for e in earlier {
        before.add_event(e);
        before.refresh(&connection);
    }
    bench(c, "fold/one_more_event", || {
        let mut record = before.clone();
        record.add_event(black_box(last));
        record.refresh(&connection)
    });
    let call = before.resource.clone().unwrap();
    bench(c, "morph/build_event", || {
        serde_json::to_vec(&envelope(
            MorphEventType::Updated,
            black_box(&before.resource_id),
            &call,
        ))
        .unwrap()
    });
}

criterion_group!(benches, parse, ingest_one, fold_and_envelope);
criterion_main!(benches);
