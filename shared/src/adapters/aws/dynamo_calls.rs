//! The call store on DynamoDB: one item per call.
//!
//! | attribute | type | what |
//! |---|---|---|
//! | `call` (key) | S | [`CallKey::to_path`]: `connection/provider/call` |
//! | `record` | B | the [`CallRecord`] as JSON, outbox included, deflated (raw DEFLATE, RFC 1951) |
//! | `version` | N | bumped by every write; a write succeeds only over the version it read |
//! | `pending` | N | deliveries in the outbox, for operators looking for stuck calls |
//! | `resource_id` | S | the call's resource id, for operators looking for a call the CRM names |
//! | `expires_at` | N | epoch seconds; the table's TTL attribute, pushed back by every write |
//!
//! The revision the CRM has is implicit: everything before the outbox.
//!
//! DynamoDB bills a write per started KiB of the item, and a call's JSON is 0.8–2.2 KiB, the
//! more while a Morph event waits in the outbox (its body repeats the record's `resource`).
//! Deflated, the repeats cost a few bytes each and a typical item stays under 1 KiB: every
//! write is one unit. Items written before as JSON text (`record` of type S) still read.

use super::usage::Usage;
use crate::domain::event::Provider;
use crate::domain::record::{CallKey, CallRecord, MAX_RECORD_BYTES, RecordError};
use crate::ports::{CallFilter, CallStore, StoreError, Version};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) const KEY: &str = "call";
const RECORD: &str = "record";
pub(super) const VERSION: &str = "version";
const PENDING: &str = "pending";
const RESOURCE_ID: &str = "resource_id";
pub(super) const EXPIRES_AT: &str = "expires_at";

pub struct DynamoCalls {
    client: Client,
    table: String,
    /// How long a call is kept after its last change.
    retention: Duration,
    usage: Arc<Usage>,
}

impl DynamoCalls {
    pub fn new(
        client: Client,
        table: impl Into<String>,
        retention: Duration,
        usage: Arc<Usage>,
    ) -> Self {
        Self {
            client,
            table: table.into(),
            retention,
            usage,
        }
    }

    fn expires_at(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (now + self.retention).as_secs()
    }
}

impl DynamoCalls {
    /// Up to `limit` calls, in no particular order. A scan, page by page: the table has no
    /// index, as every step of the pipeline reads a call by its key and only operators look
    /// for calls otherwise, seldom. A record that does not read is listed as such, with its
    /// key, so that it can still be erased.
    pub async fn scan(
        &self,
        filter: CallFilter<'_>,
        limit: usize,
    ) -> anyhow::Result<Vec<Result<CallRecord, RecordError>>> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let scan = self
                .client
                .scan()
                .table_name(&self.table)
                .projection_expression("#key, #record, #version")
                .expression_attribute_names("#key", KEY)
                .expression_attribute_names("#record", RECORD)
                .expression_attribute_names("#version", VERSION)
                .set_exclusive_start_key(start);
            let scan = match filter {
                // Not the CRM destinations' breakers, kept in the same table.
                CallFilter::All => scan.filter_expression("attribute_exists(#record)"),
                CallFilter::Undelivered => scan
                    .filter_expression("#pending > :none")
                    .expression_attribute_names("#pending", PENDING)
                    .expression_attribute_values(":none", number(0)),
                CallFilter::Resource(id) => scan
                    .filter_expression("#resource_id = :id")
                    .expression_attribute_names("#resource_id", RESOURCE_ID)
                    .expression_attribute_values(":id", AttributeValue::S(id.into())),
            };
            let page = scan.send().await.map_err(|e| {
                anyhow::anyhow!("cannot scan {}: {}", self.table, DisplayErrorContext(&e))
            })?;
            for item in page.items() {
                found.push(self.record_of(item)?.map(|(record, _)| record));
                if found.len() == limit {
                    return Ok(found);
                }
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(found);
            }
        }
    }
}

#[async_trait]
impl CallStore for DynamoCalls {
    async fn load(&self, key: &CallKey) -> anyhow::Result<Option<(CallRecord, Version)>> {
        let path = key.to_path();
        let Some(item) = read_item(&self.client, &self.table, &path).await? else {
            self.usage.call_read(0);
            return Ok(None);
        };
        self.usage.call_read(item_bytes(&item));
        Ok(Some(self.record_of(&item)??))
    }

    async fn save(
        &self,
        record: &CallRecord,
        read: Option<Version>,
    ) -> Result<Version, StoreError> {
        let version = read.map_or(1, |v| v + 1);
        let item = item_of(record, version, self.expires_at()).map_err(anyhow::Error::from)?;
        self.usage.call_write(item_bytes(&item));
        match put_versioned(&self.client, &self.table, item, read).await {
            Ok(true) => Ok(version),
            Ok(false) => {
                self.usage.conflict();
                Err(StoreError::Conflict)
            }
            Err(e) => Err(StoreError::Other(e)),
        }
    }
}

/// The item of `record` at `version`; an error when it is over [`MAX_RECORD_BYTES`].
fn item_of(
    record: &CallRecord,
    version: Version,
    expires_at: u64,
) -> Result<HashMap<String, AttributeValue>, RecordError> {
    let json = record.to_stored_json()?;
    Ok(HashMap::from([
        (KEY.to_string(), AttributeValue::S(record.key.to_path())),
        (RECORD.to_string(), AttributeValue::B(deflated(&json))),
        (VERSION.to_string(), number(version)),
        (PENDING.to_string(), number(record.outbox.len() as u64)),
        (
            RESOURCE_ID.to_string(),
            AttributeValue::S(record.resource_id.clone()),
        ),
        (EXPIRES_AT.to_string(), number(expires_at)),
    ]))
}

/// The item `key` of `table` (calls and breakers alike), read consistently: a write only
/// succeeds over the latest version, so reading anything older would just cost a conflict and
/// a second read.
pub(super) async fn read_item(
    client: &Client,
    table: &str,
    key: &str,
) -> anyhow::Result<Option<HashMap<String, AttributeValue>>> {
    let output = client
        .get_item()
        .table_name(table)
        .key(KEY, AttributeValue::S(key.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read {key} from {table}: {}",
                DisplayErrorContext(&e)
            )
        })?;
    Ok(output.item)
}

/// Puts `item` if the stored item's `version` is still `read` (`None`: if there is none yet);
/// `Ok(false)`: another writer was first.
pub(super) async fn put_versioned(
    client: &Client,
    table: &str,
    item: HashMap<String, AttributeValue>,
    read: Option<u64>,
) -> anyhow::Result<bool> {
    let key = item
        .get(KEY)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default();
    let put = client.put_item().table_name(table).set_item(Some(item));
    let put = match read {
        None => put
            .condition_expression("attribute_not_exists(#key)")
            .expression_attribute_names("#key", KEY),
        Some(read) => put
            .condition_expression("#version = :read")
            .expression_attribute_names("#version", VERSION)
            .expression_attribute_values(":read", number(read)),
    };
    match put.send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot write {key} to {table}: {}",
            DisplayErrorContext(&e)
        )),
    }
}

impl DynamoCalls {
    /// The record of an item and its version; the inner error when the record does not read.
    fn record_of(
        &self,
        item: &HashMap<String, AttributeValue>,
    ) -> anyhow::Result<Result<(CallRecord, Version), RecordError>> {
        record_of(&self.table, item)
    }
}

/// [`DynamoCalls::record_of`] for an item of `table`.
fn record_of(
    table: &str,
    item: &HashMap<String, AttributeValue>,
) -> anyhow::Result<Result<(CallRecord, Version), RecordError>> {
    let path = item
        .get(KEY)
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| anyhow::anyhow!("an item of {table} has no `{KEY}`"))?;
    let key = key_of_path(path)
        .ok_or_else(|| anyhow::anyhow!("`{path}` of {table} is not a call's key"))?;
    let version = item
        .get(VERSION)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("call {path}: the item has no numeric `{VERSION}`"))?;
    let unreadable = |reason: String| RecordError::Unreadable {
        call: key.clone(),
        version,
        reason,
    };
    let json = match item.get(RECORD) {
        Some(AttributeValue::B(deflated)) => match inflated(deflated.as_ref()) {
            Ok(json) => json,
            Err(reason) => return Ok(Err(unreadable(reason))),
        },
        Some(AttributeValue::S(json)) => json.clone(),
        _ => anyhow::bail!("call {path}: the item has no `{RECORD}`"),
    };
    Ok(CallRecord::from_stored_json(&json, &key, version).map(|record| (record, version)))
}

/// The best of DEFLATE's levels: a record is a few KiB, deflated in tens of microseconds,
/// and every byte saved may be a write unit.
const DEFLATE_LEVEL: u8 = 9;

fn deflated(json: &str) -> aws_sdk_dynamodb::primitives::Blob {
    miniz_oxide::deflate::compress_to_vec(json.as_bytes(), DEFLATE_LEVEL).into()
}

/// The JSON of a deflated record. No larger than a record may be written
/// ([`MAX_RECORD_BYTES`]), so a damaged item cannot inflate without bound.
fn inflated(deflated: &[u8]) -> Result<String, String> {
    let json = miniz_oxide::inflate::decompress_to_vec_with_limit(deflated, MAX_RECORD_BYTES)
        .map_err(|e| format!("the deflated record does not inflate: {e}"))?;
    String::from_utf8(json).map_err(|e| format!("the inflated record is not UTF-8: {e}"))
}

/// The key of [`CallKey::to_path`]: connection ids and providers hold no `/`.
fn key_of_path(path: &str) -> Option<CallKey> {
    let mut parts = path.splitn(3, '/');
    let (connection, provider, call) = (parts.next()?, parts.next()?, parts.next()?);
    let provider: Provider = provider.parse().ok()?;
    Some(CallKey::new(connection, provider, call))
}

pub(super) fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// An item's size as DynamoDB bills it: attribute names plus values (a number counts about
/// one byte per two digits, plus one).
fn item_bytes(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(s) => s.len(),
                    AttributeValue::N(n) => n.len().div_ceil(2) + 1,
                    AttributeValue::B(b) => b.as_ref().len(),
                    _ => 1,
                }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_from_its_path() {
        let key = CallKey::new("acme", Provider::Voys, "a/b c");
        assert_eq!(key_of_path(&key.to_path()), Some(key));
        assert_eq!(key_of_path("acme/fax/1"), None);
    }

    fn record() -> CallRecord {
        let mut record = CallRecord::new(CallKey::new("acme", Provider::Voys, "call-1"));
        record.revision = 3;
        record
    }

    #[test]
    fn a_record_is_stored_deflated_and_reads_back() {
        let record = record();
        let item = item_of(&record, 7, 1_800_000_000).unwrap();
        let stored = item[RECORD].as_b().expect("a binary record").as_ref();
        assert!(serde_json::from_slice::<serde_json::Value>(stored).is_err());
        let (read, version) = record_of("calls", &item).unwrap().unwrap();
        assert_eq!((read, version), (record, 7));
    }

    #[test]
    fn a_record_stored_as_json_text_before_still_reads() {
        let record = record();
        let mut item = item_of(&record, 2, 1_800_000_000).unwrap();
        item.insert(
            RECORD.into(),
            AttributeValue::S(record.to_stored_json().unwrap()),
        );
        assert_eq!(record_of("calls", &item).unwrap().unwrap(), (record, 2));
    }

    #[test]
    fn a_record_that_does_not_inflate_is_unreadable_with_its_version() {
        let mut item = item_of(&record(), 5, 1_800_000_000).unwrap();
        item.insert(RECORD.into(), AttributeValue::B(vec![0xff; 16].into()));
        match record_of("calls", &item).unwrap() {
            Err(RecordError::Unreadable {
                version, reason, ..
            }) => {
                assert_eq!(version, 5);
                assert!(reason.contains("inflate"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn item_size_counts_names_and_values() {
        let item = HashMap::from([
            ("call".to_string(), AttributeValue::S("a/b/c".into())),
            ("version".to_string(), AttributeValue::N("12".into())),
        ]);
        assert_eq!(item_bytes(&item), 4 + 5 + 7 + 2);
    }
}
