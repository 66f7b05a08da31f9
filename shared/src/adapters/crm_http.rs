//! The CRM over HTTP: one Morph event per POST, with the headers Morph reads; and, for
//! connections in REST mode, the requests of Morph's REST API.
//!
//! Every request carries a connection's identity, and REST requests its API key and secret, so
//! redirects are never followed (a 3xx is Morph's refusal, parked like a 4xx: the URL to fix is
//! ours) and only `https://` URLs are taken, but for a loopback host (the local CRM recorder,
//! the tests): see [`check_url`] and `docs/security.md`.

use crate::domain::connection::{ApiCredentials, Connection, DeliveryMode};
use crate::domain::record::Delivery;
use crate::domain::rest::{RestMethod, RestRequest};
use crate::engine::breaker::destination_key;
use crate::ports::{Crm, DeliveryOutcome, RestOutcome};
use async_trait::async_trait;
use reqwest::header::{LOCATION, RETRY_AFTER};
use reqwest::{Response, StatusCode, Url, redirect};
use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

/// Longest CRM answer (in characters) kept for a parked delivery.
const MAX_ANSWER_CHARS: usize = 2048;

pub struct HttpCrm {
    client: reqwest::Client,
    /// Where the events go; `None`: a deployment that writes over REST only.
    events_url: Option<String>,
    /// The root of Morph's REST API; requests go to `{rest_url}/v1/resources/...`.
    rest_url: Option<String>,
}

/// A create's answer: `{"object": "resourceRef", "model", "id", "remote": {"id"}}`; only the
/// id matters here.
#[derive(Deserialize)]
struct ResourceRefAnswer {
    id: String,
}

impl HttpCrm {
    /// `url` receives every event; `timeout` bounds each request, connection included.
    pub fn new(url: impl Into<String>, timeout: Duration) -> anyhow::Result<Self> {
        Self::build(Some(url.into()), None, timeout)
    }

    /// Events to `events_url`, REST requests to `rest_url`; either may be absent, and what goes
    /// nowhere is refused (the configuration check makes that a mistake of the operator).
    pub fn build(
        events_url: Option<String>,
        rest_url: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        for (setting, url) in [("the CRM URL", &events_url), ("the REST URL", &rest_url)] {
            if let Some(url) = url {
                check_url(setting, url)?;
            }
        }
        let client = client_builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .build()?;
        Ok(Self {
            client,
            events_url,
            rest_url,
        })
    }
}

#[async_trait]
impl Crm for HttpCrm {
    /// The connector at the URL the connection's deliveries go to, as a SHA-256 (the URL may
    /// carry a secret): two connections of one connector share a breaker, another CRM behind
    /// the same Morph keeps flowing.
    fn destination(&self, connection: &Connection) -> String {
        let url = match connection.delivery {
            DeliveryMode::Events => &self.events_url,
            DeliveryMode::Rest => &self.rest_url,
        };
        destination_key(&format!(
            "{}\n{}",
            url.as_deref().unwrap_or_default(),
            connection.connector_id
        ))
    }

    async fn deliver(&self, connection: &Connection, delivery: &Delivery) -> DeliveryOutcome {
        let Some(url) = &self.events_url else {
            return not_configured("events", "crm.url (CRM_URL)");
        };
        let request = morph_headers(connection, delivery)
            .into_iter()
            .fold(self.client.post(url), |request, (name, value)| {
                request.header(name, value)
            });
        match request.json(&delivery.body).send().await {
            Ok(response) if response.status().is_success() => DeliveryOutcome::Delivered,
            // A CRM that refuses a key it already took has the revision: sending it again
            // would only be refused again, and the call's later revisions wait behind it.
            Ok(response) if response.status() == StatusCode::CONFLICT => {
                tracing::warn!(
                    resource_id = %delivery.resource_id,
                    revision = delivery.revision,
                    idempotency_key = %delivery.idempotency_key,
                    "the CRM answered 409 to a key it already took: counted as delivered"
                );
                DeliveryOutcome::Delivered
            }
            Ok(response) => refusal(response).await,
            Err(e) => DeliveryOutcome::Retry {
                reason: describe(&e),
                retry_after: None,
            },
        }
    }

    async fn request(&self, connection: &Connection, request: &RestRequest) -> RestOutcome {
        let Some(rest_url) = &self.rest_url else {
            return RestOutcome::NotTaken(not_configured(
                "REST requests",
                "crm.rest_url (CRM_REST_URL)",
            ));
        };
        let Some(credentials) = &connection.api_credentials else {
            return RestOutcome::NotTaken(DeliveryOutcome::Reject {
                status: 401,
                body: format!(
                    "connection `{}` has no REST API key and secret (its own, or `[crm]`'s)",
                    connection.id
                ),
            });
        };
        let url = format!("{}{}", rest_url.trim_end_matches('/'), request.path);
        let method = match request.method {
            RestMethod::Post => reqwest::Method::POST,
            RestMethod::Patch => reqwest::Method::PATCH,
        };
        let sent = rest_headers(connection, credentials)
            .into_iter()
            .fold(self.client.request(method, url), |r, (name, value)| {
                r.header(name, value)
            })
            .json(&request.body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // Never connected: the request surely did not reach Morph.
            Err(e) if e.is_connect() => {
                return RestOutcome::NotTaken(DeliveryOutcome::Retry {
                    reason: describe(&e),
                    retry_after: None,
                });
            }
            Err(e) => return RestOutcome::NotTaken(lost(request, describe(&e))),
        };
        let status = response.status();
        if !status.is_success() {
            if request.is_create() && may_have_been_done(status) {
                return RestOutcome::NotTaken(lost(request, format!("HTTP {}", status.as_u16())));
            }
            return RestOutcome::NotTaken(refusal(response).await);
        }
        if !request.is_create() {
            return RestOutcome::Taken { id: None };
        }
        // A create's answer that does not read leaves `id` empty: Morph made something we
        // cannot name, which the pipeline treats as uncertain.
        let id = response
            .json::<ResourceRefAnswer>()
            .await
            .ok()
            .map(|answer| answer.id)
            .filter(|id| !id.is_empty());
        RestOutcome::Taken { id }
    }
}

/// The HTTP client of every request that names a connection: it follows no redirect, so
/// neither credentials nor a call's data can be sent on to a host the operator did not name.
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .user_agent(concat!("callbridge/", env!("CARGO_PKG_VERSION")))
}

/// Whether `url` may be sent credentials and calls: `https://`, or `http://` to a loopback host
/// (`localhost`, 127.0.0.0/8, `::1`), where nothing crosses a network.
pub fn check_url(setting: &str, url: &str) -> anyhow::Result<()> {
    // The URL itself is never repeated: it may hold a token.
    let parsed = Url::parse(url).map_err(|e| anyhow::anyhow!("{setting} is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" if !host.is_empty() => Ok(()),
        "http" if loopback => Ok(()),
        _ => anyhow::bail!(
            "{setting} must be an https:// URL (http:// only to localhost, for tests): it carries credentials and calls"
        ),
    }
}

/// A request whose fate is unknown: an update is safe to send again, a create is not.
fn lost(request: &RestRequest, reason: String) -> DeliveryOutcome {
    if request.is_create() {
        DeliveryOutcome::Uncertain {
            reason: format!(
                "the create of the {} got no answer ({reason}): Morph may have made it, and sending it again could make two. Look for it in Morph, then `callbridge calls resolve` (docs/crm.md)",
                request.model
            ),
        }
    } else {
        DeliveryOutcome::Retry {
            reason,
            retry_after: None,
        }
    }
}

/// A 5xx may come after the work was done; 503 is the one that says it was not.
fn may_have_been_done(status: StatusCode) -> bool {
    status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE
}

fn not_configured(what: &str, setting: &str) -> DeliveryOutcome {
    DeliveryOutcome::Reject {
        status: 501,
        body: format!("this deployment sends no {what}: set {setting}"),
    }
}

/// What an answer other than 2xx means: try again, or give up with Morph's answer.
async fn refusal(response: Response) -> DeliveryOutcome {
    let status = response.status();
    if status.is_redirection() {
        let location: String = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nowhere")
            .chars()
            .take(MAX_ANSWER_CHARS)
            .collect();
        return DeliveryOutcome::Reject {
            status: status.as_u16(),
            body: format!(
                "a redirect to `{location}`, not followed: it would take the connection's credentials and the call there. Set the CRM URL to where Morph answers"
            ),
        };
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(MAX_ANSWER_CHARS)
        .collect();
    if is_permanent(status) {
        DeliveryOutcome::Reject {
            status: status.as_u16(),
            body,
        }
    } else {
        DeliveryOutcome::Retry {
            reason: format!("HTTP {}", status.as_u16()),
            retry_after,
        }
    }
}

/// The headers of Morph's REST API, as `(name, value)`. Only ever sent, never logged.
fn rest_headers<'a>(
    connection: &'a Connection,
    credentials: &'a ApiCredentials,
) -> [(&'static str, &'a str); 4] {
    [
        ("x-api-key", &credentials.api_key),
        ("x-api-secret", &credentials.api_secret),
        ("x-connector-id", &connection.connector_id),
        ("x-owner-id", &connection.owner_id),
    ]
}

/// The headers Morph reads with an event, as `(name, value)`.
pub fn morph_headers<'a>(
    connection: &'a Connection,
    delivery: &'a Delivery,
) -> [(&'static str, &'a str); 4] {
    [
        ("x-connector-id", &connection.connector_id),
        // Morph's event docs spell it `x-conector-id`, its REST API `x-connector-id`: send both.
        ("x-conector-id", &connection.connector_id),
        ("x-owner-id", &connection.owner_id),
        ("x-idempotency-key", &delivery.idempotency_key),
    ]
}

/// 4xx answers that no retry can fix; 408, 409, 425 and 429 are worth another try. (An event's
/// 409 never gets here: it says the CRM has the key already.)
fn is_permanent(status: StatusCode) -> bool {
    status.is_client_error() && !matches!(status.as_u16(), 408 | 409 | 425 | 429)
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        format!("request failed: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11's list: 408, 425, 429 (and 409, whose event form means "taken") and every 5xx
    /// are retried; every other 4xx is parked at once.
    #[test]
    fn only_the_answers_a_retry_can_fix_are_retried() {
        for retried in [408, 409, 425, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(retried).unwrap();
            assert!(!is_permanent(status), "{retried} is retried");
        }
        for parked in [400, 401, 403, 404, 405, 410, 413, 415, 422, 451] {
            let status = StatusCode::from_u16(parked).unwrap();
            assert!(is_permanent(status), "{parked} is parked");
        }
    }
}
