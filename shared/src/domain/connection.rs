//! A connection: one provider account of one CRM tenant, with its secret and user directory.

use super::contact::to_e164;
use super::event::Provider;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

/// Everything callbridge knows about one connection. Tokens are held only as SHA-256 hashes.
/// `Debug` shows no token hash, secret or contact lookup URL (it may hold the lookup's token).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub id: String,
    pub provider: Provider,
    /// Hex SHA-256 of each valid token; two during a rotation.
    pub token_hashes: Vec<String>,
    /// The provider tenant, app or account id; payloads naming another are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub connector_id: String,
    pub owner_id: String,
    /// Directory key (extension, SIP user, TeleCMI user prefix, e-mail) to Morph user id.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Turns a recording file name into a URL: `{file}` is replaced by the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_url_template: Option<String>,
    /// The Standard Webhooks signing secret (`whsec_<base64>` or raw), stored as given: when
    /// set, ingest requires the `webhook-*` signature headers. At rest on AWS it must be
    /// encrypted (a KMS-encrypted table or attribute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    /// Whether the logs may show this connection's phone numbers in full (by default they show
    /// only the last digits).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log_numbers: bool,
    /// How the calls reach Morph: its events, or its REST API (`docs/crm.md`).
    #[serde(default, skip_serializing_if = "DeliveryMode::is_events")]
    pub delivery: DeliveryMode,
    /// This connection's key and secret of Morph's REST API; without them, the deployment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_credentials: Option<ApiCredentials>,
    /// How the other party of a call is found among the CRM's contacts.
    #[serde(default, skip_serializing_if = "Contacts::is_empty")]
    pub contacts: Contacts,
    /// Telsmart's onboarding: who may activate users, and which Morph user an activated
    /// extension becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
    /// Which legs of a Telsmart queue (or group) call the CRM shows.
    #[serde(default, skip_serializing_if = "QueueCalls::is_default")]
    pub queue_calls: QueueCalls,
}

/// Telsmart rings every member of a queue on a leg of its own: which of those legs the CRM
/// shows (`docs/providers/telsmart.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueCalls {
    /// The legs a member answered: one call per customer call taken, with its agent.
    #[default]
    Answered,
    /// Every member's leg, a missed call for each member who did not answer.
    EveryMember,
}

impl QueueCalls {
    pub fn is_default(&self) -> bool {
        *self == QueueCalls::default()
    }
}

/// How a connection's calls reach Morph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// `telephonyCall::created|updated|deleted` events, POSTed to one URL.
    #[default]
    Events,
    /// `POST` and `PATCH` on `/v1/resources/telephonyCall` of Morph's REST API.
    Rest,
}

impl DeliveryMode {
    pub fn is_events(&self) -> bool {
        *self == DeliveryMode::Events
    }
}

/// A key and secret of Morph's REST API (`x-api-key`, `x-api-secret`). `Debug` shows neither.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCredentials {
    pub api_key: String,
    pub api_secret: String,
}

impl std::fmt::Debug for ApiCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiCredentials(<redacted>)")
    }
}

/// Where a call's other party is looked up among the CRM's contacts.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contacts {
    /// E.164 number to Morph `genericContact` id: resolved while mapping, no I/O.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub numbers: BTreeMap<String, String>,
    /// An HTTP lookup by number: `{number}` is replaced by the E.164 number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup_url: Option<String>,
    /// The ISO 3166 country of numbers written without a country code (`BE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_country: Option<String>,
}

impl std::fmt::Debug for Contacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contacts")
            .field("numbers", &self.numbers.len())
            .field(
                "lookup_url",
                &self.lookup_url.as_ref().map(|_| "<redacted>"),
            )
            .field("default_country", &self.default_country)
            .finish()
    }
}

impl Contacts {
    pub fn is_empty(&self) -> bool {
        self == &Contacts::default()
    }

    /// A number in E.164, in this connection's country.
    pub fn e164(&self, number: &str) -> Option<String> {
        let country = self.default_country.as_deref().and_then(|c| c.parse().ok());
        to_e164(number, country)
    }
}

/// Telsmart's activation and deactivation requests, authenticated as an OAuth client.
/// `Debug` never shows the secret's hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub client_id: String,
    /// Hex SHA-256 of the client secret.
    pub client_secret_hash: String,
    /// The Morph user id of an activated extension: `{user_extension}` and `{tenant_id}` are
    /// replaced by the request's.
    pub user_id_template: String,
}

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activation")
            .field("client_id", &self.client_id)
            .field("user_id_template", &self.user_id_template)
            .finish_non_exhaustive()
    }
}

impl Activation {
    /// Whether the client id and secret are this connection's, compared in constant time.
    pub fn accepts(&self, client_id: &str, client_secret: &str) -> bool {
        let id = bool::from(self.client_id.as_bytes().ct_eq(client_id.as_bytes()));
        let secret = bool::from(
            self.client_secret_hash
                .as_bytes()
                .ct_eq(hash_token(client_secret).as_bytes()),
        );
        id & secret
    }

    /// The Morph user id of an activated extension.
    pub fn user_id(&self, tenant_id: &str, user_extension: &str) -> String {
        self.user_id_template
            .replace("{tenant_id}", tenant_id)
            .replace("{user_extension}", user_extension)
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("provider", &self.provider)
            .field("tokens", &self.token_hashes.len())
            .field("account", &self.account)
            .field("connector_id", &self.connector_id)
            .field("owner_id", &self.owner_id)
            .field("users", &self.users)
            .field("recording_url_template", &self.recording_url_template)
            .field(
                "signing_secret",
                &self.signing_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("log_numbers", &self.log_numbers)
            .field("delivery", &self.delivery)
            .field("api_credentials", &self.api_credentials)
            .field("contacts", &self.contacts)
            .field("activation", &self.activation)
            .field("queue_calls", &self.queue_calls)
            .finish()
    }
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Connection {
    /// Whether `token` is one of the connection's tokens, compared in constant time.
    pub fn accepts_token(&self, token: &str) -> bool {
        let presented = hash_token(token);
        self.token_hashes.iter().fold(false, |found, valid| {
            found | bool::from(valid.as_bytes().ct_eq(presented.as_bytes()))
        })
    }

    /// The Morph user id behind a directory key.
    pub fn user_id(&self, directory_key: &str) -> Option<&str> {
        self.users.get(directory_key).map(String::as_str)
    }

    /// The connection with the users activated through Telsmart's onboarding joined to its
    /// directory. A user the configuration names keeps the configuration's Morph user: it was
    /// set by hand, the template only guesses.
    pub fn with_activated_users(mut self, activated: &BTreeMap<String, String>) -> Self {
        for (extension, user_id) in activated {
            self.users
                .entry(extension.clone())
                .or_insert_with(|| user_id.clone());
        }
        self
    }

    /// The recording URL for a file name, if the connection has a template.
    pub fn recording_url(&self, file: &str) -> Option<String> {
        self.recording_url_template
            .as_ref()
            .map(|template| template.replace("{file}", file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> Connection {
        Connection {
            id: "acme".into(),
            provider: Provider::Telsmart,
            token_hashes: vec![hash_token("old-secret"), hash_token("new-secret")],
            account: None,
            connector_id: "conn".into(),
            owner_id: "owner".into(),
            users: BTreeMap::new(),
            recording_url_template: Some("https://rec.example/{file}".into()),
            signing_secret: None,
            log_numbers: false,
            delivery: DeliveryMode::Events,
            api_credentials: None,
            contacts: Contacts::default(),
            activation: None,
            queue_calls: QueueCalls::default(),
        }
    }

    #[test]
    fn accepts_every_token_of_a_rotation_and_nothing_else() {
        let c = connection();
        assert!(c.accepts_token("old-secret"));
        assert!(c.accepts_token("new-secret"));
        assert!(!c.accepts_token("new-secre"));
        assert!(!c.accepts_token(""));
    }

    #[test]
    fn activation_takes_only_its_client_and_names_users_by_template() {
        let activation = Activation {
            client_id: "telsmart".into(),
            client_secret_hash: hash_token("client-secret"),
            user_id_template: "usr_{tenant_id}_{user_extension}".into(),
        };
        assert!(activation.accepts("telsmart", "client-secret"));
        assert!(!activation.accepts("telsmart", "client-secreT"));
        assert!(!activation.accepts("other", "client-secret"));
        assert_eq!(activation.user_id("t1", "200"), "usr_t1_200");
        assert!(!format!("{activation:?}").contains(&hash_token("client-secret")));
    }

    #[test]
    fn configured_users_win_over_activated_ones() {
        let mut c = connection();
        c.users.insert("200".into(), "usr_john".into());
        let c = c.with_activated_users(&BTreeMap::from([
            ("200".to_string(), "auto_200".to_string()),
            ("210".to_string(), "auto_210".to_string()),
        ]));
        assert_eq!(c.user_id("200"), Some("usr_john"));
        assert_eq!(c.user_id("210"), Some("auto_210"));
    }

    #[test]
    fn api_credentials_never_show() {
        let mut c = connection();
        c.api_credentials = Some(ApiCredentials {
            api_key: "key-123".into(),
            api_secret: "secret-456".into(),
        });
        let shown = format!("{c:?}");
        assert!(!shown.contains("key-123") && !shown.contains("secret-456"));
    }

    #[test]
    fn builds_recording_urls() {
        assert_eq!(
            connection().recording_url("a.mp3").as_deref(),
            Some("https://rec.example/a.mp3")
        );
    }
}
