//! `callbridge deliveries`: the deliveries the local server parked because the CRM refused
//! them or their attempts ran out, and how to send them again.

use callbridge_shared::adapters::sqlite::{ParkedDelivery, SqliteStore};
use callbridge_shared::config::Config;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List the parked deliveries, one JSON object per line, oldest first.
    List(StoreArgs),
    /// Un-park deliveries: a running server sends them again within a second, in order
    /// with the rest of their call (or the next `callbridge serve` does).
    Retry {
        #[command(flatten)]
        store: StoreArgs,
        /// Only the delivery of this resource id (all of them without it).
        #[arg(long)]
        resource: Option<String>,
    },
}

#[derive(clap::Args)]
struct StoreArgs {
    /// The server's configuration file: its `data_file` holds the deliveries.
    #[arg(long)]
    config: PathBuf,
}

impl StoreArgs {
    async fn open(&self) -> anyhow::Result<SqliteStore> {
        let config = Config::load(&self.config)?;
        anyhow::ensure!(
            config.data_file.exists(),
            "there is no data file at {}: has the server run with this configuration?",
            config.data_file.display()
        );
        SqliteStore::open(&config.data_file).await
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::List(store) => {
            let parked = store.open().await?.parked_deliveries().await?;
            for delivery in &parked {
                println!("{}", to_json(delivery));
            }
            eprintln!("{} parked", parked.len());
        }
        Command::Retry { store, resource } => {
            let unparked = store.open().await?.unpark(resource.as_deref()).await?;
            if let (Some(resource), 0) = (&resource, unparked) {
                anyhow::bail!("no delivery of {resource} is parked");
            }
            println!("{unparked} un-parked");
        }
    }
    Ok(())
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
