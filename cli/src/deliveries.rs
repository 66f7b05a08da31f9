//! `callbridge deliveries`: what waits for an operator, and sending it again. Locally these are
//! the deliveries the server parked because the CRM refused them or their attempts ran out, and
//! the webhooks it set aside (a message or a record that does not read, a record that would be
//! too large); on AWS the webhooks the worker gave up on, in the dead-letter queue. One command
//! shape for both: `--config FILE` or `--aws`.

use crate::target::Target;
use callbridge_shared::adapters::sqlite::{DeadLetter, ParkedDelivery, SqliteStore};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Locally, the parked deliveries, one JSON object per line, oldest first; on AWS, how many
    /// webhooks the dead-letter queue holds.
    List(Target),
    /// Send them again. Locally, un-park deliveries: a running server sends them within a
    /// second, in order with the rest of their call (or the next `callbridge serve` does). On
    /// AWS, move the dead-letter queue's webhooks back to the webhook queue, in order per call;
    /// the worker processes them again, which changes nothing for what was done already.
    Retry {
        #[command(flatten)]
        target: Target,
        /// Only the delivery of this resource id (locally; all of them without it).
        #[arg(long)]
        resource: Option<String>,
    },
    /// Delete what waits of one call, never to be sent (its raw webhooks hold personal data):
    /// locally its parked delivery and webhooks set aside; on AWS its messages in the
    /// dead-letter queue, which otherwise keeps them 14 days. `calls erase` does the local part
    /// itself.
    Purge {
        #[command(flatten)]
        target: Target,
        /// The call's resource id (`call_...`).
        #[arg(long)]
        resource: String,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::List(target) => {
            #[cfg(feature = "aws")]
            if target.aws.aws {
                let (sqs, dead_letters, _) = crate::redrive::queues(&target.aws).await?;
                let waiting = crate::redrive::waiting(&sqs, &dead_letters).await?;
                println!("{waiting} webhooks in the dead-letter queue");
                return Ok(());
            }
            let store = target.open_local().await?;
            let parked = store.parked_deliveries().await?;
            for delivery in &parked {
                println!("{}", to_json(delivery));
            }
            let set_aside = store.dead_letters().await?;
            for dead_letter in &set_aside {
                println!("{}", dead_letter_json(dead_letter));
            }
            eprintln!(
                "{} parked, {} webhooks set aside",
                parked.len(),
                set_aside.len()
            );
        }
        Command::Retry { target, resource } => {
            #[cfg(feature = "aws")]
            if target.aws.aws {
                anyhow::ensure!(
                    resource.is_none(),
                    "--resource is for the local store: the dead-letter queue is redriven whole"
                );
                let (sqs, dead_letters, queue) = crate::redrive::queues(&target.aws).await?;
                let progress = progress(crate::redrive::waiting(&sqs, &dead_letters).await?);
                let moved = crate::redrive::redrive(&sqs, &dead_letters, &queue, &progress).await?;
                progress.finish_and_clear();
                println!("{moved} webhooks moved back to the queue");
                return Ok(());
            }
            let store = target.open_local().await?;
            let unparked = unpark(&store, resource.as_deref()).await?;
            let requeued = store.requeue_dead_letters(resource.as_deref()).await?;
            if let (Some(resource), 0, 0) = (&resource, unparked, requeued) {
                anyhow::bail!("no delivery of {resource} is parked, no webhook of it set aside");
            }
            match requeued {
                0 => println!("{unparked} un-parked"),
                _ => println!("{unparked} un-parked, {requeued} webhooks set aside queued again"),
            }
        }
        Command::Purge { target, resource } => {
            #[cfg(feature = "aws")]
            if target.aws.aws {
                let (sqs, dead_letters, _) = crate::redrive::queues(&target.aws).await?;
                let purged = crate::redrive::purge(&sqs, &dead_letters, &resource).await?;
                println!("{purged} webhooks of {resource} deleted from the dead-letter queue");
                return Ok(());
            }
            target.open_local().await?.forget_erased(&resource).await?;
            println!("nothing of {resource} waits any more");
        }
    }
    Ok(())
}

/// Un-parks the parked deliveries (of `resource` only, if given) one by one, showing the
/// progress; returns how many.
pub async fn unpark(store: &SqliteStore, resource: Option<&str>) -> anyhow::Result<usize> {
    let parked: Vec<ParkedDelivery> = store
        .parked_deliveries()
        .await?
        .into_iter()
        .filter(|p| resource.is_none_or(|r| r == p.resource_id))
        .collect();
    let progress = progress(parked.len() as u64);
    let mut unparked = 0;
    for delivery in &parked {
        unparked += store.unpark(Some(&delivery.resource_id)).await?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(unparked)
}

/// A bar on standard error when it is a terminal (indicatif hides it otherwise).
fn progress(total: u64) -> ProgressBar {
    let style = ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} {eta}")
        .expect("a valid template");
    ProgressBar::new(total).with_style(style)
}

fn dead_letter_json(dead_letter: &DeadLetter) -> Value {
    json!({
        "set_aside": dead_letter.seq,
        "resource_id": dead_letter.resource_id,
        "reason": dead_letter.reason,
        "parked_at": dead_letter.parked_at.to_rfc3339_millis(),
    })
}

fn to_json(delivery: &ParkedDelivery) -> Value {
    json!({
        "resource_id": delivery.resource_id,
        "revision": delivery.revision,
        "idempotency_key": delivery.idempotency_key,
        "reason": delivery.reason,
        "crm_status": delivery.crm_status,
        "crm_answer": delivery.crm_answer,
        "parked_at": delivery.parked_at.to_rfc3339_millis(),
    })
}
