//! `callbridge deliveries`: what waits for an operator, and sending it again. Locally these are
//! the deliveries the server parked because the CRM refused them or their attempts ran out; on
//! AWS the webhooks the worker gave up on, in the dead-letter queue. One command shape for both:
//! `--config FILE` or `--aws`.

use crate::target::Target;
use callbridge_shared::adapters::sqlite::{ParkedDelivery, SqliteStore};
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
            let parked = target.open_local().await?.parked_deliveries().await?;
            for delivery in &parked {
                println!("{}", to_json(delivery));
            }
            eprintln!("{} parked", parked.len());
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
            if let (Some(resource), 0) = (&resource, unparked) {
                anyhow::bail!("no delivery of {resource} is parked");
            }
            println!("{unparked} un-parked");
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
