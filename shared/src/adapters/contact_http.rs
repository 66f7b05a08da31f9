//! The contact lookup of connections with a `contact_lookup_url`: `GET` the URL with
//! `{number}` replaced by the E.164 number (URL-encoded), answered with
//! `{"contact_id": "contact_123"}`, `{"contact_id": null}` or a 404 when there is no contact.
//! Answers are kept for a minute, so the events of one call (and a burst of calls from one
//! number) cost one request. The URL may hold the lookup's token: it must be `https://` (but
//! for a loopback host) and a redirect is not followed, as for the CRM.

use crate::adapters::crm_http::{check_url, client_builder};
use crate::domain::connection::Connection;
use crate::ports::ContactLookup;
use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Per request, connection included: the lookup holds up the call's event, and a contact is
/// worth less than a popup in time.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long an answer (a contact or none) is kept.
const CACHE_FOR: Duration = Duration::from_secs(60);
/// Past this many answers the expired ones go, and if that is not enough, all of them.
const MAX_CACHED: usize = 4096;

pub struct HttpContactLookup {
    client: reqwest::Client,
    /// By URL: when it was answered, and the answer.
    cache: Mutex<HashMap<String, (Instant, Option<String>)>>,
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
            cache: Mutex::default(),
        }
    }
}

impl HttpContactLookup {
    fn cache(&self) -> MutexGuard<'_, HashMap<String, (Instant, Option<String>)>> {
        // Plain data: still good after a panic elsewhere.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

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
        if let Some((at, answer)) = self.cache().get(&url)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(answer.clone());
        }
        let answer = self.ask(&url).await?;
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(url, (Instant::now(), answer.clone()));
        Ok(answer)
    }
}
