//! `callbridge calls`: the calls the bridge keeps, with their revisions and delivery state, and
//! their erasure (GDPR), on the local server's store or on AWS alike.
//!
//! An erasure is queued like a webhook, in the call's place in the queue, so the runtime that
//! applies webhooks applies it too: the record takes no more events, the CRM gets
//! `telephonyCall::deleted` through the outbox, and the write that records its delivery drops
//! the call's events and resource, leaving a tombstone (key, resource id, last revision) until
//! the store's retention removes it (on AWS the calls table's TTL, `CallRetentionDays` after the
//! last write). Every step is one conditional write of the record, so a crash anywhere leaves
//! either the request queued or the deletion in the outbox, and both are picked up again.

use crate::target::{Store, Target};
use callbridge_shared::adapters::clock::SystemClock;
use callbridge_shared::adapters::sqlite::ParkedDelivery;
use callbridge_shared::domain::event::{CallEvent, EventKind};
use callbridge_shared::domain::record::{CallKey, CallRecord, RecordError};
use callbridge_shared::engine::rest_delivery::resolve_uncertain_create;
use callbridge_shared::ports::Clock;
use callbridge_shared::ports::{CallFilter, QueuedWebhook};
use callbridge_shared::telemetry::mask_number;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List calls, one JSON object per line: the latest first locally, in no particular order
    /// on AWS (a scan).
    List {
        #[command(flatten)]
        target: Target,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only calls with deliveries waiting.
        #[arg(long)]
        undelivered: bool,
    },
    /// Show one call: its revisions and what became of each, its events, its resource.
    Show {
        #[command(flatten)]
        target: Target,
        /// The call's resource id (`call_...`), as the CRM knows it.
        resource_id: String,
    },
    /// Erase a call (GDPR): the CRM gets `telephonyCall::deleted`, then nothing of the call is
    /// kept but a tombstone that stops later webhooks from bringing it back.
    Erase {
        #[command(flatten)]
        target: Target,
        resource_id: String,
        /// How long to wait for the erasure to be done (it goes on afterwards all the same).
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
    /// Settle a create of Morph's REST API whose answer was lost (the call's deliveries wait
    /// on it, docs/crm.md): look for the call in Morph, then say what you found. Locally the
    /// call's parked delivery is sent again; on AWS the message's next receive goes on.
    Resolve {
        #[command(flatten)]
        target: Target,
        resource_id: String,
        /// Morph holds the call (or transcript) under this id: it becomes the call's.
        #[arg(long, required_unless_present = "not_in_morph")]
        morph_id: Option<String>,
        /// Morph does not hold it: the create is sent again.
        #[arg(long, conflicts_with = "morph_id")]
        not_in_morph: bool,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::List {
            target,
            limit,
            undelivered,
        } => {
            let store = target.open().await?;
            let filter = if undelivered {
                CallFilter::Undelivered
            } else {
                CallFilter::All
            };
            let calls = store.calls(filter, limit).await?;
            let parked = parked(&store).await?;
            for call in &calls {
                match call {
                    Ok(record) => println!("{}", summary(record, &parked)),
                    Err(unreadable) => println!("{}", unreadable_summary(unreadable)),
                }
            }
            eprintln!("{} calls", calls.len());
        }
        Command::Show {
            target,
            resource_id,
        } => {
            let store = target.open().await?;
            match store.call(&resource_id).await? {
                Ok(record) => println!("{:#}", details(&record, &parked(&store).await?)),
                Err(unreadable) => println!("{:#}", unreadable_summary(&unreadable)),
            }
        }
        Command::Erase {
            target,
            resource_id,
            wait_secs,
        } => {
            let store = target.open().await?;
            let record = erase(&store, &resource_id).await?;
            let record = wait_until_erased(&store, record, Duration::from_secs(wait_secs)).await?;
            match state(&record, &[]) {
                "erased" => println!(
                    "{resource_id} is erased: the CRM was told, and only a tombstone is kept"
                ),
                _ => println!(
                    "{resource_id} is being erased: {} waiting for the CRM (`callbridge calls show {resource_id}`)",
                    waiting(&record)
                ),
            }
        }
        Command::Resolve {
            target,
            resource_id,
            morph_id,
            not_in_morph: _,
        } => {
            let store = target.open().await?;
            let record = store.call(&resource_id).await??;
            let resolved =
                resolve_uncertain_create(store.call_store(), &record.key, morph_id.as_deref())
                    .await?;
            anyhow::ensure!(
                resolved,
                "{resource_id} has no create of Morph's REST API waiting to be settled"
            );
            // Locally the call's delivery was parked on the uncertain create; on AWS its
            // message comes back by itself.
            match &store {
                Store::Local(local) => {
                    local.unpark(Some(&resource_id)).await?;
                }
                #[cfg(feature = "aws")]
                Store::Aws(_) => {}
            }
            match morph_id {
                Some(id) => println!("{resource_id} is Morph's {id}: its deliveries go on"),
                None => println!("{resource_id} will be created in Morph again"),
            }
        }
    }
    Ok(())
}

/// Queues the erasure of a call; returns the record as it was. A record that does not read is
/// erased all the same: the worker replaces it with a tombstone.
pub async fn erase(store: &Store, resource_id: &str) -> anyhow::Result<CallRecord> {
    let record = match store.call(resource_id).await? {
        Ok(record) if record.erased_at.is_some() => return Ok(record),
        Ok(record) => record,
        Err(RecordError::Unreadable { call, .. }) => CallRecord::new(call),
        Err(e) => return Err(e.into()),
    };
    store.queue().enqueue(&erasure(&record.key)).await?;
    Ok(record)
}

/// The erasure of a call as it is queued: an event of the call that no provider sends. Its id
/// is the same for every request, so a request repeated while one is queued is dropped by SQS
/// and changes nothing locally.
pub fn erasure(call: &CallKey) -> QueuedWebhook {
    let at = SystemClock.now();
    let mut event = CallEvent::new(call.provider, &call.call_key, at, EventKind::Erased);
    event.id = format!("erase-{}", call.resource_id());
    QueuedWebhook {
        connection_id: call.connection_id.clone(),
        received_at: at,
        event,
        raw: Value::Null,
    }
}

/// One line for a call whose record does not read: what the store knows of it besides.
fn unreadable_summary(unreadable: &RecordError) -> Value {
    match unreadable {
        RecordError::Unreadable { call, reason, .. } => json!({
            "resource_id": call.resource_id(),
            "call": call.to_path(),
            "state": "unreadable",
            "reason": reason,
        }),
        other => json!({ "state": "unreadable", "reason": other.to_string() }),
    }
}

/// Polls the call until it is erased, for at most `wait`.
async fn wait_until_erased(
    store: &Store,
    mut record: CallRecord,
    wait: Duration,
) -> anyhow::Result<CallRecord> {
    let deadline = tokio::time::Instant::now() + wait;
    while state(&record, &[]) != "erased" && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Until the worker replaces it, a record that does not read is not erased.
        if let Ok(read) = store.call(&record.resource_id).await? {
            record = read;
        }
    }
    Ok(record)
}

/// The parked deliveries (only the local server parks; on AWS a refused delivery's message
/// waits for the dead-letter queue).
async fn parked(store: &Store) -> anyhow::Result<Vec<ParkedDelivery>> {
    match store {
        Store::Local(store) => store.parked_deliveries().await,
        #[cfg(feature = "aws")]
        Store::Aws(_) => Ok(Vec::new()),
    }
}

/// Where a call stands with the CRM.
pub fn state(record: &CallRecord, parked: &[ParkedDelivery]) -> &'static str {
    let delivered = record.outbox.is_empty();
    if record.erased_at.is_some() {
        if delivered { "erased" } else { "erasing" }
    } else if delivered {
        // Outside an erasure, only a transfer that showed another call deletes one.
        if record.deleted {
            "merged"
        } else {
            "delivered"
        }
    } else if parked.iter().any(|p| p.resource_id == record.resource_id) {
        "parked"
    } else {
        "pending"
    }
}

fn waiting(record: &CallRecord) -> String {
    let revisions: Vec<String> = record
        .outbox
        .iter()
        .map(|d| format!("r{} ({})", d.revision, d.event.as_str()))
        .collect();
    revisions.join(", ")
}

/// One line of `calls list`.
pub fn summary(record: &CallRecord, parked: &[ParkedDelivery]) -> Value {
    let fields = record.resource.as_ref().map(|r| &r.fields);
    json!({
        "resource_id": record.resource_id,
        "call": record.key.to_path(),
        "state": state(record, parked),
        "revision": record.revision,
        "delivered_revision": record.delivered_revision(),
        "events": record.events.len(),
        "status": fields.map(|f| f.status),
        "started_at": fields.map(|f| &f.started_at),
        "erased_at": record.erased_at.map(|t| t.to_rfc3339_millis()),
    })
}

/// What `calls show` prints: the summary, every revision with its delivery state, the events
/// and the resource. Phone numbers are masked: this output ends up in tickets.
pub fn details(record: &CallRecord, parked: &[ParkedDelivery]) -> Value {
    let delivered = record.delivered_revision();
    let revisions: Vec<Value> = (1..=record.revision)
        .map(|revision| {
            let Some(delivery) = record.outbox.iter().find(|d| d.revision == revision) else {
                return json!({ "revision": revision, "state": "delivered" });
            };
            let parked = parked
                .iter()
                .find(|p| p.resource_id == record.resource_id && p.revision == revision);
            // The CRM gets a call's revisions in order: the later ones wait for the first.
            let state = match parked {
                Some(_) => "parked",
                None if revision == delivered + 1 => "pending",
                None => "waiting",
            };
            json!({
                "revision": revision,
                "event": delivery.event.as_str(),
                "idempotency_key": delivery.idempotency_key,
                "state": state,
                "parked": parked.map(|p| json!({
                    "reason": p.reason,
                    "crm_status": p.crm_status,
                    "crm_answer": p.crm_answer,
                    "parked_at": p.parked_at.to_rfc3339_millis(),
                })),
            })
        })
        .collect();
    let events: Vec<Value> = record
        .events
        .iter()
        .map(|e| {
            let kind = serde_json::to_value(&e.kind).unwrap_or_default();
            json!({ "id": e.id, "type": kind["type"], "at": e.at.to_rfc3339_millis() })
        })
        .collect();
    let resource = record.resource.as_ref().map(|r| {
        let f = &r.fields;
        json!({
            "direction": f.direction,
            "status": f.status,
            "startedAt": f.started_at,
            "answeredAt": f.answered_at,
            "endedAt": f.ended_at,
            "duration": f.duration,
            "externalNumber": f.external_number.as_deref().map(mask_number),
            "internalNumber": f.internal_number.as_deref().map(mask_number),
            "users": f.users.iter().map(|u| &u.id).collect::<Vec<_>>(),
            "recording": f.recording_url.is_some(),
        })
    });
    let mut details = summary(record, parked);
    details["merged_into"] = json!(record.merged_into);
    details["revisions"] = json!(revisions);
    details["events"] = json!(events);
    details["resource"] = json!(resource);
    details
}
