//! The CRM over HTTP: one Morph event per POST, with the headers Morph reads.

use crate::domain::connection::Connection;
use crate::domain::record::Delivery;
use crate::ports::{Crm, DeliveryOutcome};
use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use std::time::Duration;

/// Longest CRM answer (in characters) kept for a parked delivery.
const MAX_ANSWER_CHARS: usize = 2048;

pub struct HttpCrm {
    client: reqwest::Client,
    url: String,
}

impl HttpCrm {
    /// `url` receives every event; `timeout` bounds each request, connection included.
    pub fn new(url: impl Into<String>, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .user_agent(concat!("callbridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            url: url.into(),
        })
    }
}

#[async_trait]
impl Crm for HttpCrm {
    async fn deliver(&self, connection: &Connection, delivery: &Delivery) -> DeliveryOutcome {
        let request = morph_headers(connection, delivery)
            .into_iter()
            .fold(self.client.post(&self.url), |request, (name, value)| {
                request.header(name, value)
            });
        let sent = request.json(&delivery.body).send().await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                return DeliveryOutcome::Retry {
                    reason: describe(&e),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return DeliveryOutcome::Delivered;
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

/// 4xx answers that no retry can fix; 408, 409, 425 and 429 are worth another try.
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
