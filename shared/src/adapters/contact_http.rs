//! The contact lookup of connections with a `contact_lookup_url`: `GET` the URL with
//! `{number}` replaced by the E.164 number (URL-encoded), answered with
//! `{"contact_id": "contact_123"}`, `{"contact_id": null}` or a 404 when there is no contact.
//! Answers are kept for a minute, so the events of one call (and a burst of calls from one
//! number) cost one request (one for all that ask at once). The URL may hold the lookup's token: it must be `https://` (but
//! for a loopback host) and a redirect is not followed, as for the CRM.

use crate::adapters::cached;
use crate::adapters::crm_http::{check_url, client_builder};
use crate::domain::connection::Connection;
use crate::ports::ContactLookup;
use async_trait::async_trait;
use moka::future::Cache;
use reqwest::StatusCode;
use serde::Deserialize;
use std::time::Duration;

/// Per request, connection included: the lookup holds up the call's event, and a contact is
/// worth less than a popup in time.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long an answer (a contact or none) is kept.
const CACHE_FOR: Duration = Duration::from_secs(60);
/// Past this many answers the least used go.
const MAX_CACHED: u64 = 4096;

pub struct HttpContactLookup {
    client: reqwest::Client,
    /// By URL, the answer (`None`: no contact).
    cache: Cache<String, Option<String>>,
}

#[derive(Deserialize)]
struct Answer {
    contact_id: Option<String>,
}

impl Default for HttpContactLookup {
    fn default() -> Self {
        let client = client_builder()
            .timeout(TIMEOUT)
            .build()
            // As `reqwest::Client::new`: only a TLS backend that cannot start fails here.
            .expect("an HTTP client");
        Self {
            client,
            cache: cached::bounded(MAX_CACHED, CACHE_FOR),
        }
    }
}

impl HttpContactLookup {
    async fn ask(&self, url: &str) -> anyhow::Result<Option<String>> {
        // Without the URL in the errors: it holds the number, and maybe the lookup's token.
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(reqwest::Error::without_url)?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_redirection() => anyhow::bail!(
                "the lookup answered HTTP {} (a redirect): not followed, it would take the number and the URL's token elsewhere",
                status.as_u16()
            ),
            status if status.is_success() => Ok(response
                .json::<Answer>()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "the answer is not {{\"contact_id\": ...}}: {}",
                        e.without_url()
                    )
                })?
                .contact_id
                .filter(|id| !id.is_empty())),
            status => anyhow::bail!("the lookup answered HTTP {}", status.as_u16()),
        }
    }
}

#[async_trait]
impl ContactLookup for HttpContactLookup {
    async fn contact(&self, connection: &Connection, e164: &str) -> anyhow::Result<Option<String>> {
        let Some(template) = &connection.contacts.lookup_url else {
            return Ok(None);
        };
        let number: String = form_urlencoded::byte_serialize(e164.as_bytes()).collect();
        let url = template.replace("{number}", &number);
        check_url("`contact_lookup_url`", template)?;
        cached::get_or_read(&self.cache, &url, self.ask(&url)).await
    }
}
