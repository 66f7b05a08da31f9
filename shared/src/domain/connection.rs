//! A connection: one provider account of one CRM tenant, with its secret and user directory.

use super::event::Provider;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

/// Everything callbridge knows about one connection. Tokens are held only as SHA-256 hashes.
/// `Debug` never shows the signing secret.
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
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("provider", &self.provider)
            .field("token_hashes", &self.token_hashes)
            .field("account", &self.account)
            .field("connector_id", &self.connector_id)
            .field("owner_id", &self.owner_id)
            .field("users", &self.users)
            .field("recording_url_template", &self.recording_url_template)
            .field(
                "signing_secret",
                &self.signing_secret.as_ref().map(|_| "<redacted>"),
            )
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
    fn builds_recording_urls() {
        assert_eq!(
            connection().recording_url("a.mp3").as_deref(),
            Some("https://rec.example/a.mp3")
        );
    }
}
