//! Delivery over Morph's REST API (`delivery = "rest"`): one revision of a call becomes a
//! create or update of its `telephonyCall`, then of its transcript (`domain::rest`).
//!
//! Morph's REST API has no idempotency header, so a create is guarded by the call's record:
//! it is claimed there (a conditional write) before it is sent, and the claim becomes Morph's
//! id when the answer comes. A claim found without an id is a create whose fate is unknown (a
//! crash, a timeout or a 5xx after sending): it is never sent again on its own. For
//! [`CLAIM_PATIENCE`] it is taken for another worker's request under way and the delivery is
//! retried; after that the delivery stops as [`DeliveryOutcome::Uncertain`] for an operator
//! to check Morph. Updates (`PATCH` with the whole resource) are idempotent and simply
//! retried. `docs/crm.md` lists the windows that remain.

use crate::domain::connection::Connection;
use crate::domain::record::{CallKey, CallRecord, Delivery};
use crate::domain::rest::{self, RemoteCall, RestModel};
use crate::ports::{CallStore, Clock, Crm, DeliveryOutcome, RestOutcome};
use std::time::Duration;
/// How long a claimed create may be another worker's request still under way: longer than
/// any CRM timeout the deployments allow (15 s), with room for the writes around it.
pub const CLAIM_PATIENCE: Duration = Duration::from_secs(30);

/// Writes one revision of `call` to Morph's REST API; what Morph gave back is saved with
/// the call before this returns. `clock` dates the claims and tells their age.
pub async fn push_revision(
    crm: &dyn Crm,
    store: &dyn CallStore,
    clock: &dyn Clock,
    connection: &Connection,
    call: &CallKey,
    delivery: &Delivery,
) -> DeliveryOutcome {
    match push(crm, store, clock, connection, call, delivery).await {
        Ok(outcome) => outcome,
        Err(e) => DeliveryOutcome::Retry {
            reason: format!("cannot read or write the call: {e}"),
            retry_after: None,
        },
    }
}

async fn push(
    crm: &dyn Crm,
    store: &dyn CallStore,
    clock: &dyn Clock,
    connection: &Connection,
    call: &CallKey,
    delivery: &Delivery,
) -> anyhow::Result<DeliveryOutcome> {
    // The stored state, not the caller's copy: an earlier attempt may have written since.
    let mut remote = match store.load(call).await? {
        Some((record, _)) => record.remote,
        None => anyhow::bail!("the call's record is gone"),
    };
    if remote.create_sent.is_some() {
        // An operator may have settled it from another process (`callbridge calls resolve`),
        // behind a store's cache: only a write is sure to see what is stored.
        change(store, call, |record| {
            remote = record.remote.clone();
            true
        })
        .await?;
    }
    if let Some(sent) = remote.create_sent {
        let age = Duration::from_micros(
            clock
                .now()
                .as_micros()
                .saturating_sub(sent.at.as_micros())
                .try_into()
                .unwrap_or_default(),
        );
        return Ok(match CLAIM_PATIENCE.checked_sub(age) {
            Some(left) => DeliveryOutcome::Retry {
                reason: format!("a create of the {} may be under way", sent.model),
                retry_after: Some(left),
            },
            None => uncertain(
                sent.model,
                "an earlier attempt got no answer from Morph that says whether it made it",
            ),
        });
    }
    for model in rest::steps(delivery, &remote) {
        let request = rest::request(model, delivery, &remote);
        if request.is_create() {
            let mut claimed = false;
            change(store, call, |record| {
                claimed = record.remote.claim_create(model, clock.now());
                claimed
            })
            .await?;
            if !claimed {
                // Claimed between our read and our write: another worker is creating it.
                return Ok(DeliveryOutcome::Retry {
                    reason: format!("another worker is creating the {model}"),
                    retry_after: None,
                });
            }
        }
        let id = match crm.request(connection, &request).await {
            RestOutcome::Taken { id } => id,
            RestOutcome::NotTaken(outcome) => {
                if request.is_create() && !matches!(outcome, DeliveryOutcome::Uncertain { .. }) {
                    change(store, call, |record| record.remote.create_not_done(model)).await?;
                }
                return Ok(outcome);
            }
        };
        if request.is_create() {
            let Some(id) = id else {
                return Ok(uncertain(model, "Morph took it but its answer named no id"));
            };
            change(store, call, |record| record.remote.created(model, &id)).await?;
            remote.created(model, &id);
        }
        if model == RestModel::TelephonyCallTranscript
            && let Some(summary) = rest::summary(delivery)
        {
            let digest = rest::digest(summary);
            change(store, call, |record| record.remote.transcript_sent(&digest)).await?;
            remote.transcript_sent(&digest);
        }
    }
    Ok(DeliveryOutcome::Delivered)
}

fn uncertain(model: RestModel, what_happened: &str) -> DeliveryOutcome {
    DeliveryOutcome::Uncertain {
        reason: format!(
            "a create of the {model} was sent and {what_happened}: sending it again could make two. Look for it in Morph, then `callbridge calls resolve` (docs/crm.md)"
        ),
    }
}

/// Applies `change` to the stored record and saves it when it says it changed.
async fn change(
    store: &dyn CallStore,
    key: &CallKey,
    mut change: impl FnMut(&mut CallRecord) -> bool + Send,
) -> anyhow::Result<()> {
    store.update_stored(key, &mut change).await?;
    Ok(())
}

/// What Morph holds of a call, for an operator who resolved an uncertain create by looking:
/// `Some(id)` when Morph has it (it becomes the call's id), `None` when it has not (the
/// create is sent again). Returns whether there was a create to resolve.
pub async fn resolve_uncertain_create(
    store: &dyn CallStore,
    call: &CallKey,
    found: Option<&str>,
) -> anyhow::Result<bool> {
    let mut resolved = false;
    change(store, call, |record| {
        let remote: &mut RemoteCall = &mut record.remote;
        resolved = match (remote.create_sent.map(|sent| sent.model), found) {
            (None, _) => false,
            (Some(model), Some(id)) => remote.created(model, id),
            (Some(model), None) => remote.create_not_done(model),
        };
        resolved
    })
    .await?;
    Ok(resolved)
}
