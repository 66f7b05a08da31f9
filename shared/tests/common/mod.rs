//! What the integration tests of `callbridge-shared` share: the repository's scenario files.

// Each test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use callbridge_shared::domain::event::Provider;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One file of `tests/scenarios/<provider>/`: its webhooks, and where its expectations are.
pub struct ScenarioFile {
    /// `provider/file.json`
    pub name: String,
    pub provider: Provider,
    pub webhooks: Vec<Value>,
    pub expected_path: PathBuf,
}

impl ScenarioFile {
    pub fn expected(&self) -> Value {
        read_json(&self.expected_path)
    }
}

/// Every scenario file of every provider, in name order.
pub fn scenario_files() -> Vec<ScenarioFile> {
    let mut all = Vec::new();
    for provider in Provider::ALL {
        let dir = repo_root().join("tests/scenarios").join(provider.as_str());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".json") || name.ends_with(".expected.json") {
                continue;
            }
            let webhooks = read_json(&path)
                .as_array()
                .unwrap_or_else(|| panic!("{name}: not a list"))
                .clone();
            all.push(ScenarioFile {
                name: format!("{provider}/{name}"),
                provider,
                webhooks,
                expected_path: path.with_extension("expected.json"),
            });
        }
    }
    all
}

/// The Morph event bodies delivered per resource id, in order.
pub type Delivered = std::collections::BTreeMap<String, Vec<Value>>;

/// Applies one queued event with the worker and delivers what it emitted to an always-up CRM,
/// recording the bodies in `delivered`.
pub async fn apply_and_deliver(
    store: &callbridge_shared::adapters::memory::MemoryStore,
    connection: &callbridge_shared::domain::connection::Connection,
    queued: &callbridge_shared::ports::QueuedWebhook,
    delivered: &mut Delivered,
) {
    use callbridge_shared::ports::CallStore;
    let lookup = callbridge_shared::adapters::contact_http::HttpContactLookup::default();
    let applied = callbridge_shared::engine::apply::apply(store, connection, &lookup, queued)
        .await
        .unwrap();
    for key in applied.to_deliver {
        let (mut record, version) = store.load(&key).await.unwrap().unwrap();
        for d in &record.outbox {
            delivered
                .entry(d.resource_id.clone())
                .or_default()
                .push(d.body.clone());
        }
        let last = record.revision;
        record.mark_delivered(last);
        store.save(&record, Some(version)).await.unwrap();
    }
}
