//! An in-memory call store, for tests, benchmarks and dry runs. Same contract as the durable
//! stores: versioned, conditional saves.

use crate::domain::record::{CallKey, CallRecord};
use crate::ports::{CallStore, StoreError, Version};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryStore {
    calls: Mutex<HashMap<CallKey, (CallRecord, Version)>>,
}

impl MemoryStore {
    /// Every record, in key order.
    pub fn records(&self) -> Vec<CallRecord> {
        let calls = self.calls.lock().expect("store lock");
        let mut records: Vec<CallRecord> = calls.values().map(|(r, _)| r.clone()).collect();
        records.sort_by(|a, b| a.key.cmp(&b.key));
        records
    }
}

#[async_trait]
impl CallStore for MemoryStore {
    async fn load(&self, key: &CallKey) -> anyhow::Result<Option<(CallRecord, Version)>> {
        Ok(self.calls.lock().expect("store lock").get(key).cloned())
    }

    async fn save(
        &self,
        record: &CallRecord,
        read: Option<Version>,
    ) -> Result<Version, StoreError> {
        let mut calls = self.calls.lock().expect("store lock");
        let current = calls.get(&record.key).map(|(_, v)| *v);
        if current != read {
            return Err(StoreError::Conflict);
        }
        let version = read.unwrap_or(0) + 1;
        calls.insert(record.key.clone(), (record.clone(), version));
        Ok(version)
    }
}
