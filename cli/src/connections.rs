//! `callbridge connections import FILE`: loads the connections of a configuration file in the
//! local server's format into the DynamoDB connections table of an AWS deployment, tokens
//! hashed on the way. A connection already there is replaced; others are left alone. The AWS
//! account, region and endpoint are the SDK's usual ones (`AWS_PROFILE`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, ...).

use callbridge_shared::aws::aws_config;
use callbridge_shared::aws::aws_sdk_dynamodb;
use callbridge_shared::aws::connections::DynamoConnections;
use callbridge_shared::config::Config;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Load the connections of a configuration file (the TOML of `callbridge serve`) into
    /// DynamoDB; tokens are stored as hashes.
    Import(ImportArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The configuration file; only its `[[connections]]` are read.
    file: PathBuf,
    /// The connections table: the stack's `ConnectionsTableName` output.
    #[arg(long, env = "CONNECTIONS_TABLE")]
    table: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Import(args) => {
            let aws = aws_config::load_from_env().await;
            let table = DynamoConnections::new(
                aws_sdk_dynamodb::Client::new(&aws),
                &args.table,
                Arc::default(),
            );
            let imported = import(&args.file, &table).await?;
            println!(
                "imported {} connections into {}: {}",
                imported.len(),
                args.table,
                imported.join(", ")
            );
            Ok(())
        }
    }
}

/// Writes every connection of `file` to `table` and returns their ids. Nothing is written
/// when the file has a mistake.
pub async fn import(file: &Path, table: &DynamoConnections) -> anyhow::Result<Vec<String>> {
    let connections = Config::load(file)?.connections()?;
    for connection in &connections {
        table.put(connection).await?;
    }
    Ok(connections.into_iter().map(|c| c.id).collect())
}
