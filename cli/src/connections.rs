//! `callbridge connections`: the connections of an AWS deployment, in its DynamoDB connections
//! table. `import` loads a configuration file in the local server's format; `add`, `list`,
//! `rotate` and `retire-token` manage one connection at a time. Tokens are stored as hashes
//! only: a token this command makes is printed once and never again. The AWS account, region
//! and endpoint are the SDK's usual ones (`AWS_PROFILE`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...).
//!
//! The functions keep a connection for a minute, so a change is in force within a minute.

use callbridge_shared::adapters::aws::aws_config;
use callbridge_shared::adapters::aws::aws_sdk_dynamodb;
use callbridge_shared::adapters::aws::dynamo_connections::DynamoConnections;
use callbridge_shared::config::{AwsConfig, Config, ConnectionConfig};
use callbridge_shared::domain::connection::{Connection, hash_token};
use callbridge_shared::domain::event::Provider;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Characters of a token this command makes: about 238 bits.
const TOKEN_CHARS: usize = 40;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// The connections table: the stack's `ConnectionsTableName` output.
    #[arg(long, env = "CONNECTIONS_TABLE", global = true)]
    table: Option<String>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Load the connections of a configuration file (the TOML of `callbridge serve`) into
    /// DynamoDB; tokens are stored as hashes.
    Import {
        /// The configuration file; only its `[[connections]]` are read.
        file: PathBuf,
    },
    /// Add a connection with a new token, printed once on standard output.
    Add(AddArgs),
    /// List the connections, one JSON object per line (tokens only counted).
    List,
    /// Make a second token, valid alongside the first until `retire-token`; printed once.
    Rotate { id: String },
    /// Drop the older token of a connection that has two: only the newest stays valid.
    RetireToken { id: String },
}

#[derive(clap::Args)]
struct AddArgs {
    /// Letters, digits, `-` and `_`: it is part of the webhook URL.
    id: String,
    #[arg(long)]
    provider: Provider,
    /// The Morph connector id (`x-connector-id`).
    #[arg(long)]
    connector_id: String,
    /// The Morph owner id (`x-owner-id`).
    #[arg(long)]
    owner_id: String,
    /// The provider's tenant, app or account id: payloads naming another are refused.
    #[arg(long)]
    account: Option<String>,
    /// A user of the directory, `KEY=MORPH_USER_ID` (an extension, SIP user or e-mail); repeat
    /// it for each.
    #[arg(long = "user", value_parser = parse_user)]
    users: Vec<(String, String)>,
    /// Turns a recording file name into a URL: `{file}` is replaced by the name.
    #[arg(long)]
    recording_url_template: Option<String>,
    /// Show this connection's phone numbers in full in the logs (masked by default).
    #[arg(long)]
    log_numbers: bool,
}

fn parse_user(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, id)| (key.to_string(), id.to_string()))
        .ok_or_else(|| format!("`{text}` is not KEY=MORPH_USER_ID"))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let name = args.table.ok_or_else(|| {
        anyhow::anyhow!("say which table: --table (or CONNECTIONS_TABLE), the stack's `ConnectionsTableName` output")
    })?;
    let aws = aws_config::load_from_env().await;
    let table = DynamoConnections::new(
        aws_sdk_dynamodb::Client::new(&aws),
        &name,
        Arc::default(),
        AwsConfig::default().connection_cache(),
    );
    match args.command {
        Command::Import { file } => {
            let imported = import(&file, &table).await?;
            println!(
                "imported {} connections into {name}: {}",
                imported.len(),
                imported.join(", ")
            );
        }
        Command::Add(add_args) => {
            let (connection, token) = add(&table, add_args).await?;
            println!("{token}");
            eprintln!(
                "added {}: give {} the URL <the stack's WebhookUrl output>/webhooks/{}/{} and \
                 this token as `Authorization: Bearer <token>` (or `?token=`); it is not shown again",
                connection.id, connection.provider, connection.provider, connection.id
            );
        }
        Command::List => {
            for connection in table.list().await? {
                println!("{}", summary(&connection));
            }
        }
        Command::Rotate { id } => {
            let token = rotate(&table, &id).await?;
            println!("{token}");
            eprintln!(
                "{id} now takes its old token and this new one (within a minute): switch the \
                 provider to it, then `callbridge connections retire-token {id}`; it is not shown again"
            );
        }
        Command::RetireToken { id } => {
            retire_token(&table, &id).await?;
            println!("{id}: only the newest token is valid now (within a minute)");
        }
    }
    Ok(())
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

/// A token for a provider to send: random letters and digits.
fn new_token() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(TOKEN_CHARS)
        .map(char::from)
        .collect()
}

/// Creates a connection with a new token; returns it and the token.
async fn add(table: &DynamoConnections, args: AddArgs) -> anyhow::Result<(Connection, String)> {
    let token = new_token();
    // Read and checked as the configuration file's connections are.
    let config: ConnectionConfig = serde_json::from_value(json!({
        "id": args.id,
        "provider": args.provider,
        "token": token,
        "account": args.account,
        "connector_id": args.connector_id,
        "owner_id": args.owner_id,
        "users": args.users.into_iter().collect::<BTreeMap<_, _>>(),
        "recording_url_template": args.recording_url_template,
        "log_numbers": args.log_numbers,
    }))?;
    let connection = config.to_connection()?;
    table.create(&connection).await?;
    Ok((connection, token))
}

/// Adds a second token to a connection that has one; returns it.
pub async fn rotate(table: &DynamoConnections, id: &str) -> anyhow::Result<String> {
    let token = new_token();
    table
        .update(id, |connection| {
            anyhow::ensure!(
                connection.token_hashes.len() < 2,
                "{id} has {} valid tokens already: retire the old one first (`callbridge connections retire-token {id}`)",
                connection.token_hashes.len()
            );
            connection.token_hashes.push(hash_token(&token));
            Ok(())
        })
        .await?;
    Ok(token)
}

/// Keeps only the newest of a connection's tokens.
pub async fn retire_token(table: &DynamoConnections, id: &str) -> anyhow::Result<()> {
    table
        .update(id, |connection| {
            let count = connection.token_hashes.len();
            anyhow::ensure!(count > 1, "{id} has one token only: nothing to retire");
            connection.token_hashes.drain(..count - 1);
            Ok(())
        })
        .await?;
    Ok(())
}

/// One line of `connections list`: what an operator checks, no secret, no hash.
fn summary(connection: &Connection) -> Value {
    json!({
        "id": connection.id,
        "provider": connection.provider,
        "account": connection.account,
        "connector_id": connection.connector_id,
        "owner_id": connection.owner_id,
        "tokens": connection.token_hashes.len(),
        "users": connection.users.len(),
        "signed": connection.signing_secret.is_some(),
        "log_numbers": connection.log_numbers,
    })
}
