//! The configuration file of the local server (and of `callbridge connections import`): TOML,
//! with one documented default for everything but the connections. See
//! `infra/callbridge.example.toml`.

use crate::domain::connection::{Connection, hash_token};
use crate::domain::event::Provider;
use crate::pipeline::signature::SigningKey;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the local server.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where the local queue and call store live (a SQLite file).
    #[serde(default = "default_data_file")]
    pub data_file: PathBuf,
    #[serde(default)]
    pub crm: CrmConfig,
    #[serde(default)]
    pub connections: Vec<ConnectionConfig>,
}

/// Where and how Morph events are delivered.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmConfig {
    /// Where the Morph events are POSTed; without it they are printed as JSON lines.
    pub url: Option<String>,
    /// Per-request timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per delivery before it is parked.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay; it doubles with every attempt, with jitter.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest delay between two attempts.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

impl Default for CrmConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout_ms: default_timeout_ms(),
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

/// A connection as written in the file: plain tokens, hashed on load.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    pub id: String,
    pub provider: Provider,
    /// The token the provider sends.
    #[serde(default)]
    pub token: Option<String>,
    /// More valid tokens, for a rotation without downtime.
    #[serde(default)]
    pub tokens: Vec<String>,
    #[serde(default)]
    pub account: Option<String>,
    pub connector_id: String,
    pub owner_id: String,
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    #[serde(default)]
    pub recording_url_template: Option<String>,
    /// The Standard Webhooks signing secret (`whsec_<base64>` or raw); when set, webhooks
    /// must carry a valid `webhook-signature` (see `docs/security.md`).
    #[serde(default)]
    pub signing_secret: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:3000".into()
}
fn default_data_file() -> PathBuf {
    PathBuf::from(".callbridge/callbridge.db")
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_max_attempts() -> u32 {
    12
}
fn default_initial_backoff_ms() -> u64 {
    250
}
fn default_max_backoff_ms() -> u64 {
    60_000
}

/// Shortest token we accept: anything shorter can be guessed.
const MIN_TOKEN_LEN: usize = 16;

impl ConnectionConfig {
    pub fn to_connection(&self) -> anyhow::Result<Connection> {
        let tokens: Vec<&String> = self.token.iter().chain(&self.tokens).collect();
        anyhow::ensure!(
            !tokens.is_empty(),
            "connection `{}` has no token (set `token`)",
            self.id
        );
        if let Some(short) = tokens.iter().find(|t| t.len() < MIN_TOKEN_LEN) {
            anyhow::bail!(
                "connection `{}` has a token of {} characters: use at least {MIN_TOKEN_LEN}",
                self.id,
                short.len()
            );
        }
        anyhow::ensure!(
            !self.id.is_empty()
                && self
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "connection id `{}` must be letters, digits, `-` and `_`",
            self.id
        );
        anyhow::ensure!(
            !(self.provider == Provider::Voys && self.account.is_some()),
            "connection `{}`: Voys payloads name no account, so `account` cannot be checked: remove it",
            self.id
        );
        if let Some(secret) = &self.signing_secret {
            SigningKey::parse(secret)
                .map_err(|e| anyhow::anyhow!("connection `{}`: {e}", self.id))?;
        }
        Ok(Connection {
            id: self.id.clone(),
            provider: self.provider,
            token_hashes: tokens.iter().map(|t| hash_token(t)).collect(),
            account: self.account.clone(),
            connector_id: self.connector_id.clone(),
            owner_id: self.owner_id.clone(),
            users: self.users.clone(),
            recording_url_template: self.recording_url_template.clone(),
            signing_secret: self.signing_secret.clone(),
        })
    }
}

impl Config {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Config = toml::from_str(text)?;
        let mut seen = std::collections::BTreeSet::new();
        for c in &config.connections {
            anyhow::ensure!(seen.insert(&c.id), "connection `{}` is defined twice", c.id);
            c.to_connection()?;
        }
        Ok(config)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn connections(&self) -> anyhow::Result<Vec<Connection>> {
        self.connections
            .iter()
            .map(ConnectionConfig::to_connection)
            .collect()
    }
}
