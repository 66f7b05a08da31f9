//! The configuration of both hosts: one typed [`Config`] with one set of defaults, documented
//! once in `infra/callbridge.example.toml`. The local server (and `callbridge connections
//! import`) reads it from that TOML file ([`Config::load`]); a Lambda function reads it from
//! the environment variables the template sets ([`Config::from_vars`], [`ENVIRONMENT`]).

use crate::adapters::crm_http::check_url;
use crate::domain::connection::{
    Activation, ApiCredentials, Connection, Contacts, DeliveryMode, QueueCalls, hash_token,
};
use crate::domain::contact::Country;
use crate::domain::event::Provider;
use crate::engine::breaker::BreakerSettings;
use crate::engine::rate_limit::RateLimit;
use crate::engine::schedule::RetrySchedule;
use crate::engine::signature::SigningKey;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Where the Lambda functions find their tables and queues.
    #[serde(default)]
    pub aws: AwsConfig,
}

/// The AWS resources of the Lambda functions; the template names them in their environment.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    pub connections_table: Option<String>,
    pub calls_table: Option<String>,
    /// The users activated through Telsmart's onboarding.
    pub users_table: Option<String>,
    /// The webhook queue.
    pub queue_url: Option<String>,
    /// Where a call that cannot go on is parked.
    pub dead_letter_queue_url: Option<String>,
    /// How long a warm container (ingest or worker) keeps a connection it read, so how long a
    /// retired token may still be taken, or changed REST credentials not yet used.
    #[serde(default = "default_connection_cache_secs")]
    pub connection_cache_secs: u64,
    /// How long a call's record is kept after its last change.
    #[serde(default = "default_call_retention_days")]
    pub call_retention_days: u64,
}

impl AwsConfig {
    /// `connection_cache_secs` as a duration.
    pub fn connection_cache(&self) -> Duration {
        Duration::from_secs(self.connection_cache_secs)
    }

    /// `call_retention_days` as a duration.
    pub fn call_retention(&self) -> Duration {
        Duration::from_secs(self.call_retention_days * 24 * 3600)
    }
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            connections_table: None,
            calls_table: None,
            users_table: None,
            queue_url: None,
            dead_letter_queue_url: None,
            connection_cache_secs: default_connection_cache_secs(),
            call_retention_days: default_call_retention_days(),
        }
    }
}

/// The environment variables a Lambda function is configured with, and the key of [`Config`]
/// each one sets. Only these are read (`RUST_LOG` and `METRICS_NAMESPACE` are the telemetry's).
pub const ENVIRONMENT: &[(&str, &str)] = &[
    ("CRM_URL", "crm.url"),
    ("CRM_REST_URL", "crm.rest_url"),
    ("CRM_TIMEOUT_MS", "crm.timeout_ms"),
    ("RETRY_HORIZON_SECS", "crm.retry.horizon"),
    ("RETRY_INITIAL_SECS", "crm.retry.initial"),
    ("RETRY_CAP_SECS", "crm.retry.cap"),
    ("BREAKER_OPEN_AFTER", "crm.breaker.open_after"),
    ("BREAKER_PROBE_EVERY_SECS", "crm.breaker.probe_every"),
    ("CRM_RATE_PER_SECOND", "crm.rate_limit.per_second"),
    ("CRM_RATE_BURST", "crm.rate_limit.burst"),
    ("CONNECTIONS_TABLE", "aws.connections_table"),
    ("CALLS_TABLE", "aws.calls_table"),
    ("USERS_TABLE", "aws.users_table"),
    ("QUEUE_URL", "aws.queue_url"),
    ("DEAD_LETTER_QUEUE_URL", "aws.dead_letter_queue_url"),
    ("CONNECTION_CACHE_SECS", "aws.connection_cache_secs"),
    ("CALL_RETENTION_DAYS", "aws.call_retention_days"),
];

/// The environment variable that sets `key`, to name it in an error.
fn variable_of(key: &str) -> &str {
    ENVIRONMENT
        .iter()
        .find(|(_, k)| *k == key)
        .map_or(key, |(variable, _)| variable)
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
    /// When a delivery the CRM did not take is tried again, and for how long (`[crm.retry]`:
    /// `horizon`, `initial`, `cap`, in seconds).
    #[serde(default)]
    pub retry: RetrySchedule,
    /// When a CRM destination failing call after call stops being sent to, and how often it
    /// is probed (`[crm.breaker]`: `open_after`, `probe_every` in seconds).
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// Requests per second to one CRM destination (`[crm.rate_limit]`: `per_second`,
    /// `burst`); on AWS per worker instance.
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// The root of Morph's REST API (`https://api.example/`), for connections with
    /// `delivery = "rest"`; without it (and without `url`) their requests are printed.
    #[serde(default)]
    pub rest_url: Option<String>,
    /// The REST API key and secret of connections that have none of their own (given to them
    /// when the connections are read, and by `callbridge connections import`).
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default)]
    pub api_secret: Option<Secret>,
}

/// A secret of the configuration file: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl CrmConfig {
    /// The REST credentials of connections without their own.
    fn api_credentials(&self) -> anyhow::Result<Option<ApiCredentials>> {
        api_credentials("[crm]", self.api_key.as_ref(), self.api_secret.as_ref())
    }
}

/// Both a key and a secret, or neither.
fn api_credentials(
    owner: &str,
    key: Option<&Secret>,
    secret: Option<&Secret>,
) -> anyhow::Result<Option<ApiCredentials>> {
    match (key, secret) {
        (Some(key), Some(secret)) => Ok(Some(ApiCredentials {
            api_key: key.0.clone(),
            api_secret: secret.0.clone(),
        })),
        (None, None) => Ok(None),
        _ => anyhow::bail!("{owner}: `api_key` and `api_secret` go together"),
    }
}

impl Default for CrmConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout_ms: default_timeout_ms(),
            retry: RetrySchedule::default(),
            breaker: BreakerSettings::default(),
            rate_limit: RateLimit::default(),
            rest_url: None,
            api_key: None,
            api_secret: None,
        }
    }
}

/// A connection as written in the file: plain tokens, hashed on load. `Debug` shows no token,
/// secret or lookup URL (which may hold one).
#[derive(Clone, Deserialize)]
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
    /// Show this connection's phone numbers in full in the logs (masked by default).
    #[serde(default)]
    pub log_numbers: bool,
    /// `events` (the default) or `rest`: see `docs/crm.md`.
    #[serde(default)]
    pub delivery: DeliveryMode,
    /// This connection's REST API key and secret, over those of `[crm]`.
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default)]
    pub api_secret: Option<Secret>,
    /// Phone number (any way of writing it) to Morph `genericContact` id.
    #[serde(default)]
    pub contacts: BTreeMap<String, String>,
    /// Looks the other party up by number: `{number}` becomes the E.164 number.
    #[serde(default)]
    pub contact_lookup_url: Option<String>,
    /// The ISO 3166 country of numbers written without a country code (`BE`).
    #[serde(default)]
    pub default_country: Option<String>,
    /// Telsmart onboarding: the OAuth client id and secret of the activation requests.
    #[serde(default)]
    pub activation_client_id: Option<String>,
    #[serde(default)]
    pub activation_client_secret: Option<Secret>,
    /// The Morph user id of an activated extension (`{user_extension}`, `{tenant_id}`).
    #[serde(default)]
    pub auto_user_id_template: Option<String>,
    /// Telsmart: `answered` (the default) shows a queue call on the leg of the member who
    /// answered it; `every_member` shows every member's leg (`docs/providers/telsmart.md`).
    #[serde(default)]
    pub queue_calls: QueueCalls,
}

impl std::fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |value: bool| if value { "<redacted>" } else { "<none>" };
        f.debug_struct("ConnectionConfig")
            .field("id", &self.id)
            .field("provider", &self.provider)
            .field("tokens", &self.token.iter().chain(&self.tokens).count())
            .field("account", &self.account)
            .field("connector_id", &self.connector_id)
            .field("owner_id", &self.owner_id)
            .field("users", &self.users)
            .field("recording_url_template", &self.recording_url_template)
            .field("signing_secret", &set(self.signing_secret.is_some()))
            .field("log_numbers", &self.log_numbers)
            .field("delivery", &self.delivery)
            .field("api_key", &self.api_key)
            .field("api_secret", &self.api_secret)
            .field("contacts", &self.contacts)
            .field(
                "contact_lookup_url",
                &set(self.contact_lookup_url.is_some()),
            )
            .field("default_country", &self.default_country)
            .field("activation_client_id", &self.activation_client_id)
            .field("activation_client_secret", &self.activation_client_secret)
            .field("auto_user_id_template", &self.auto_user_id_template)
            .finish()
    }
}

/// Where the local server listens unless told otherwise (`callbridge replay` sends there).
pub fn default_listen() -> String {
    "127.0.0.1:3000".into()
}
fn default_data_file() -> PathBuf {
    PathBuf::from(".callbridge/callbridge.db")
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_connection_cache_secs() -> u64 {
    60
}
fn default_call_retention_days() -> u64 {
    30
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
            log_numbers: self.log_numbers,
            delivery: self.delivery,
            api_credentials: api_credentials(
                &format!("connection `{}`", self.id),
                self.api_key.as_ref(),
                self.api_secret.as_ref(),
            )?,
            contacts: self.contacts()?,
            activation: self.activation()?,
            queue_calls: self.queue_calls,
        })
    }

    /// The contact directory, its numbers in E.164 so that any way of writing them matches.
    fn contacts(&self) -> anyhow::Result<Contacts> {
        let id = &self.id;
        if let Some(country) = &self.default_country {
            country
                .parse::<Country>()
                .map_err(|e| anyhow::anyhow!("connection `{id}`: `default_country` {e}"))?;
        }
        if let Some(url) = &self.contact_lookup_url {
            anyhow::ensure!(
                url.contains("{number}"),
                "connection `{id}`: `contact_lookup_url` must have `{{number}}` in it"
            );
            check_url(&format!("connection `{id}`: `contact_lookup_url`"), url)?;
        }
        let mut contacts = Contacts {
            numbers: BTreeMap::new(),
            lookup_url: self.contact_lookup_url.clone(),
            default_country: self.default_country.clone(),
        };
        for (number, contact_id) in &self.contacts {
            let e164 = contacts.e164(number).ok_or_else(|| {
                anyhow::anyhow!(
                    "connection `{id}`: contact number `{number}` is not a phone number{}",
                    if self.default_country.is_none() {
                        " (a national number needs `default_country`)"
                    } else {
                        ""
                    }
                )
            })?;
            if let Some(other) = contacts.numbers.insert(e164.clone(), contact_id.clone()) {
                anyhow::ensure!(
                    other == *contact_id,
                    "connection `{id}`: {e164} is both `{other}` and `{contact_id}` in `contacts`"
                );
            }
        }
        Ok(contacts)
    }

    /// Telsmart's onboarding, when all three of its keys are set.
    fn activation(&self) -> anyhow::Result<Option<Activation>> {
        let id = &self.id;
        let (client_id, secret, template) = match (
            &self.activation_client_id,
            &self.activation_client_secret,
            &self.auto_user_id_template,
        ) {
            (None, None, None) => return Ok(None),
            (Some(client_id), Some(secret), Some(template)) => (client_id, secret, template),
            _ => anyhow::bail!(
                "connection `{id}`: `activation_client_id`, `activation_client_secret` and `auto_user_id_template` go together"
            ),
        };
        anyhow::ensure!(
            self.provider == Provider::Telsmart,
            "connection `{id}`: activation requests are Telsmart's onboarding; a {} connection has none",
            self.provider
        );
        anyhow::ensure!(
            secret.0.len() >= MIN_TOKEN_LEN,
            "connection `{id}`: `activation_client_secret` must have at least {MIN_TOKEN_LEN} characters"
        );
        anyhow::ensure!(
            template.contains("{user_extension}"),
            "connection `{id}`: `auto_user_id_template` must contain `{{user_extension}}`, or every user would be one"
        );
        Ok(Some(Activation {
            client_id: client_id.clone(),
            client_secret_hash: hash_token(&secret.0),
            user_id_template: template.clone(),
        }))
    }
}

impl Config {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
        let mut seen = std::collections::BTreeSet::new();
        for c in &config.connections {
            anyhow::ensure!(seen.insert(&c.id), "connection `{}` is defined twice", c.id);
            c.to_connection()?;
            config.check_delivery(c)?;
        }
        config.crm.api_credentials()?;
        let crm = &config.crm;
        for (setting, url) in [
            ("`[crm] url`", &crm.url),
            ("`[crm] rest_url`", &crm.rest_url),
        ] {
            if let Some(url) = url {
                check_url(setting, url)?;
            }
        }
        Ok(config)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The configuration of a Lambda function: `vars` (a variable's value by its name; the
    /// process environment in production) over the defaults. An empty variable is not set, as
    /// the template's empty parameters are. An error names the variable, never its value.
    pub fn from_vars(vars: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let figment = ENVIRONMENT
            .iter()
            .filter_map(|(variable, key)| {
                let value = vars(variable).filter(|value| !value.is_empty())?;
                // Read as figment's own environment provider reads a value: numbers as numbers.
                let value: figment::value::Value = value.parse().unwrap_or_else(|e| match e {});
                Some((*key, value))
            })
            .fold(figment::Figment::new(), |figment, (key, value)| {
                figment.merge(figment::providers::Serialized::default(key, value))
            });
        figment.extract().map_err(|e| {
            let key = e.path.join(".");
            let expected = match &e.kind {
                figment::error::Kind::InvalidType(_, expected)
                | figment::error::Kind::InvalidValue(_, expected) => expected.as_str(),
                _ => "a valid value",
            };
            // serde names an integer by its Rust type (`u64`).
            let expected = match expected.strip_prefix('u').map(str::parse::<u8>) {
                Some(Ok(_)) => "a whole number",
                _ => expected,
            };
            anyhow::anyhow!(
                "the environment variable {} must be {expected}",
                variable_of(&key)
            )
        })
    }

    /// The configuration of a Lambda function, from its process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// A setting a Lambda function cannot do without (`key` of [`ENVIRONMENT`]), or an error
    /// naming its environment variable.
    pub fn required<'a>(value: &'a Option<String>, key: &str) -> anyhow::Result<&'a str> {
        value.as_deref().ok_or_else(|| {
            anyhow::anyhow!("the environment variable {} is not set", variable_of(key))
        })
    }

    /// With an HTTP CRM, each connection's delivery mode needs its URL: without either URL
    /// everything is printed, but a URL for one mode alone would print the other's silently.
    fn check_delivery(&self, connection: &ConnectionConfig) -> anyhow::Result<()> {
        let crm = &self.crm;
        if crm.url.is_none() && crm.rest_url.is_none() {
            return Ok(());
        }
        let (needed, key) = match connection.delivery {
            DeliveryMode::Events => (&crm.url, "url"),
            DeliveryMode::Rest => (&crm.rest_url, "rest_url"),
        };
        anyhow::ensure!(
            needed.is_some(),
            "connection `{}` delivers with `delivery = \"{}\"`: set `[crm] {key}` too",
            connection.id,
            if connection.delivery.is_events() {
                "events"
            } else {
                "rest"
            },
        );
        Ok(())
    }

    /// The connections; one in REST mode without credentials of its own takes `[crm]`'s, so
    /// they travel with it (into the encrypted connections table on AWS).
    pub fn connections(&self) -> anyhow::Result<Vec<Connection>> {
        let shared = self.crm.api_credentials()?;
        self.connections
            .iter()
            .map(|c| {
                let mut connection = c.to_connection()?;
                if connection.delivery == DeliveryMode::Rest && connection.api_credentials.is_none()
                {
                    connection.api_credentials.clone_from(&shared);
                }
                Ok(connection)
            })
            .collect()
    }
}

/// Where and why the file does not read, without `toml`'s quote of the line: the line may be a
/// token or a secret, and so may a value quoted in the message (`invalid type: string "..."`).
fn parse_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let mut message = String::new();
    for (i, part) in e.message().split('"').enumerate() {
        message.push_str(if i % 2 == 1 { "\"…\"" } else { part });
    }
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            anyhow::anyhow!("TOML error at line {line}, column {column}: {message}")
        }
        None => anyhow::anyhow!("TOML error: {message}"),
    }
}

/// The `acme` Telsmart connection the unit tests use, with `keys` added to its block.
#[cfg(test)]
pub(crate) fn test_connection(keys: &str) -> anyhow::Result<Connection> {
    let config = Config::parse(&format!(
        r#"
        [[connections]]
        id = "acme"
        provider = "telsmart"
        token = "acme-token-0123456789"
        connector_id = "conn"
        owner_id = "owner"
        {keys}
        "#
    ))?;
    Ok(config.connections()?.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example's commented keys of the CRM side, as an operator turns them on.
    fn example_with_crm_keys() -> String {
        let example = include_str!("../../infra/callbridge.example.toml");
        let keys = [
            "# url = ",
            "# rest_url = ",
            "# api_key = ",
            "# api_secret = ",
            "# delivery = ",
            "# default_country = ",
            "# contacts = ",
            "# contact_lookup_url = ",
            "# activation_client_id = ",
            "# activation_client_secret = ",
            "# auto_user_id_template = ",
        ];
        example
            .lines()
            .map(|line| match keys.iter().find(|k| line.starts_with(*k)) {
                Some(_) => &line[2..],
                None => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A Lambda's environment: every variable [`ENVIRONMENT`] names, as `vars` changes them.
    fn environment(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let mut all: BTreeMap<&str, &str> = ENVIRONMENT
            .iter()
            .map(|(variable, key)| (*variable, *key))
            .collect();
        all.extend(vars.iter().copied());
        Config::from_vars(|name| all.get(name).map(|value| (*value).to_owned()))
    }

    #[test]
    fn every_variable_of_the_environment_sets_its_key() {
        let config = environment(&[
            ("CRM_TIMEOUT_MS", "1500"),
            ("RETRY_HORIZON_SECS", "3600"),
            ("RETRY_INITIAL_SECS", "0.5"),
            ("RETRY_CAP_SECS", "30"),
            ("BREAKER_OPEN_AFTER", "3"),
            ("BREAKER_PROBE_EVERY_SECS", "2"),
            ("CRM_RATE_PER_SECOND", "2.5"),
            ("CRM_RATE_BURST", "4"),
            ("CONNECTION_CACHE_SECS", "5"),
            ("CALL_RETENTION_DAYS", "7"),
        ])
        .unwrap();
        let (crm, aws) = (&config.crm, &config.aws);
        assert_eq!(crm.url.as_deref(), Some("crm.url"));
        assert_eq!(crm.rest_url.as_deref(), Some("crm.rest_url"));
        assert_eq!(crm.timeout_ms, 1_500);
        assert_eq!(
            crm.retry,
            RetrySchedule {
                horizon: Duration::from_secs(3600),
                initial: Duration::from_millis(500),
                cap: Duration::from_secs(30),
            }
        );
        assert_eq!(
            crm.breaker,
            BreakerSettings {
                open_after: 3,
                probe_every: Duration::from_secs(2),
            }
        );
        assert_eq!(
            crm.rate_limit,
            RateLimit {
                per_second: 2.5,
                burst: 4,
            }
        );
        for (value, key) in [
            (&aws.connections_table, "aws.connections_table"),
            (&aws.calls_table, "aws.calls_table"),
            (&aws.users_table, "aws.users_table"),
            (&aws.queue_url, "aws.queue_url"),
            (&aws.dead_letter_queue_url, "aws.dead_letter_queue_url"),
        ] {
            assert_eq!(value.as_deref(), Some(key));
        }
        assert_eq!((aws.connection_cache_secs, aws.call_retention_days), (5, 7));
    }

    #[test]
    fn the_environment_and_the_file_share_their_defaults() {
        let from_env = Config::from_vars(|_| None).unwrap();
        let from_file = Config::parse("").unwrap();
        assert_eq!(format!("{from_env:?}"), format!("{from_file:?}"));
        // The documented schedule: 72 hours, 250 ms doubling to 5 minutes; a breaker opening
        // after 5 failures, probing every 30 s; 10 requests a second, 20 at once.
        assert_eq!(
            from_env.crm.retry,
            RetrySchedule {
                horizon: Duration::from_secs(72 * 3600),
                initial: Duration::from_millis(250),
                cap: Duration::from_secs(300),
            }
        );
        assert_eq!(
            (
                from_env.crm.breaker.open_after,
                from_env.crm.breaker.probe_every
            ),
            (5, Duration::from_secs(30))
        );
        assert_eq!(
            from_env.crm.rate_limit,
            RateLimit {
                per_second: 10.0,
                burst: 20,
            }
        );
        assert_eq!(from_env.aws.connection_cache_secs, 60);
        assert_eq!(from_env.aws.call_retention_days, 30);
        // An empty variable is one the template left unset (an empty parameter).
        let empty = Config::from_vars(|name| (name == "CRM_REST_URL").then(String::new));
        assert_eq!(empty.unwrap().crm.rest_url, None);
    }

    #[test]
    fn a_bad_or_missing_variable_is_named_without_its_value() {
        let error = Config::from_vars(|name| {
            (name == "CRM_TIMEOUT_MS").then(|| "five-seconds-secret".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("CRM_TIMEOUT_MS"), "{error}");
        assert!(error.contains("whole number"), "{error}");
        assert!(!error.contains("five-seconds-secret"), "{error}");
        let config = Config::from_vars(|_| None).unwrap();
        let missing = Config::required(&config.aws.queue_url, "aws.queue_url")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("QUEUE_URL is not set"), "{missing}");
    }

    #[test]
    fn the_examples_crm_keys_read_when_turned_on() {
        let config = Config::parse(&example_with_crm_keys()).unwrap();
        let telsmart = config.connections().unwrap().remove(0);
        assert_eq!(telsmart.delivery, DeliveryMode::Rest);
        assert_eq!(
            telsmart
                .contacts
                .numbers
                .get("+3228992675")
                .map(String::as_str),
            Some("contact_123")
        );
        let activation = telsmart.activation.unwrap();
        assert_eq!(activation.user_id("t1", "220"), "usr_220");
        assert_eq!(
            telsmart.api_credentials.unwrap().api_key,
            "this-connection-s-morph-api-key"
        );
        // Secrets never show.
        let shown = format!("{config:?} {:?}", config.connections().unwrap());
        for secret in [
            "morph-api-secret",
            "this-connection-s-morph-api-secret",
            "demo-activation-secret-change-me",
        ] {
            assert!(!shown.contains(secret), "{secret} shows");
        }
    }

    #[test]
    fn debug_shows_no_token_or_secret() {
        let config = Config::parse(
            r#"
            [crm]
            url = "https://crm.example/events"

            [[connections]]
            id = "acme"
            provider = "telsmart"
            token = "first-token-0123456789"
            tokens = ["second-token-0123456789"]
            signing_secret = "signing-secret-0123456789"
            connector_id = "conn"
            owner_id = "owner"
            api_key = "rest-key-0123456789"
            api_secret = "rest-secret-0123456789"
            contact_lookup_url = "https://crm.example/lookup/{number}?key=lookup-key-0123456789"
            activation_client_id = "telsmart"
            activation_client_secret = "activation-secret-0123456789"
            auto_user_id_template = "usr_{user_extension}"
            "#,
        )
        .unwrap();
        let connections = config.connections().unwrap();
        let shown = format!("{config:?} {:?} {connections:?}", config.connections);
        let hashes = &connections[0].token_hashes;
        for secret in [
            "first-token-0123456789",
            "second-token-0123456789",
            "signing-secret-0123456789",
            "rest-key-0123456789",
            "rest-secret-0123456789",
            "lookup-key-0123456789",
            "activation-secret-0123456789",
            &hashes[0],
            &hashes[1],
        ] {
            assert!(!shown.contains(secret), "{secret} shows in {shown}");
        }
        assert!(
            shown.contains("acme") && shown.contains("tokens: 2"),
            "{shown}"
        );
    }

    #[test]
    fn a_file_that_does_not_read_is_reported_without_its_values() {
        for (text, line) in [
            // A line that is not TOML: toml would quote it.
            (
                "[[connections]]\nid = \"acme\"\ntoken = acme-token-0123456789\n",
                3,
            ),
            // A value of the wrong type: serde would quote it.
            (
                "[[connections]]\nid = \"acme\"\nlog_numbers = \"acme-token-0123456789\"\n",
                3,
            ),
            (
                "listen = \"x\"\n[crm]\ntimeout_ms = \"acme-token-0123456789\"\n",
                3,
            ),
        ] {
            let error = Config::parse(text).unwrap_err().to_string();
            assert!(!error.contains("acme-token"), "{error}");
            assert!(error.contains(&format!("line {line}")), "{error}");
        }
    }

    #[test]
    fn a_rest_connection_without_credentials_takes_the_crms() {
        let config = Config::parse(
            r#"
            [crm]
            api_key = "shared-key"
            api_secret = "shared-secret"

            [[connections]]
            id = "rest"
            provider = "telsmart"
            token = "rest-token-0123456789"
            connector_id = "conn"
            owner_id = "owner"
            delivery = "rest"

            [[connections]]
            id = "events"
            provider = "telsmart"
            token = "events-token-0123456789"
            connector_id = "conn"
            owner_id = "owner"
            "#,
        )
        .unwrap();
        let connections = config.connections().unwrap();
        assert_eq!(
            connections[0].api_credentials.as_ref().unwrap().api_key,
            "shared-key"
        );
        // A connection that takes events has no use for them, so they stay where they are.
        assert!(connections[1].api_credentials.is_none());
    }

    #[test]
    fn contact_numbers_are_read_in_the_connections_country() {
        let c = test_connection(
            r#"default_country = "be"
            contacts = { "02 899 26 75" = "contact_123", "+31 20 794 8000" = "contact_nl" }"#,
        )
        .unwrap();
        assert_eq!(
            c.contacts.numbers.keys().collect::<Vec<_>>(),
            ["+31207948000", "+3228992675"]
        );
    }

    #[test]
    fn mistakes_of_the_crm_keys_are_named() {
        for (keys, expected) in [
            (r#"api_key = "k""#, "go together"),
            (r#"contacts = { "02 899 26 75" = "c" }"#, "default_country"),
            (
                r#"contacts = { "+32 2 899 26 75" = "a", "+3228992675" = "b" }"#,
                "both",
            ),
            (r#"default_country = "Belgium""#, "ISO 3166"),
            (
                r#"contact_lookup_url = "https://crm.example/lookup""#,
                "{number}",
            ),
            (r#"activation_client_id = "telsmart""#, "go together"),
            (
                r#"activation_client_id = "t"
                activation_client_secret = "short"
                auto_user_id_template = "usr_{user_extension}""#,
                "at least",
            ),
            (
                r#"activation_client_id = "t"
                activation_client_secret = "long-enough-secret-0123"
                auto_user_id_template = "usr_john""#,
                "{user_extension}",
            ),
        ] {
            let error = test_connection(keys).unwrap_err().to_string();
            assert!(error.contains(expected), "{keys}: {error}");
        }
        let teltel = Config::parse(
            r#"
            [[connections]]
            id = "acme"
            provider = "teltel"
            token = "acme-token-0123456789"
            connector_id = "conn"
            owner_id = "owner"
            activation_client_id = "t"
            activation_client_secret = "long-enough-secret-0123"
            auto_user_id_template = "usr_{user_extension}"
            "#,
        );
        assert!(teltel.unwrap_err().to_string().contains("Telsmart"));
    }

    #[test]
    fn each_delivery_mode_needs_its_url_once_the_crm_is_over_http() {
        let config = |crm: &str, delivery: &str| {
            Config::parse(&format!(
                r#"
                [crm]
                {crm}

                [[connections]]
                id = "acme"
                provider = "telsmart"
                token = "acme-token-0123456789"
                connector_id = "conn"
                owner_id = "owner"
                delivery = "{delivery}"
                "#
            ))
        };
        assert!(config("", "rest").is_ok());
        assert!(config(r#"rest_url = "https://m""#, "rest").is_ok());
        assert!(config(r#"url = "https://e""#, "events").is_ok());
        let rest_without = config(r#"url = "https://e""#, "rest").unwrap_err();
        assert!(
            rest_without.to_string().contains("rest_url"),
            "{rest_without}"
        );
        let events_without = config(r#"rest_url = "https://m""#, "events").unwrap_err();
        assert!(
            events_without.to_string().contains("`[crm] url`"),
            "{events_without}"
        );
    }
}
