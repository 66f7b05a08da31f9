//! A CRM that prints each Morph event (or REST request) as one JSON line with its headers: what
//! the local server does without `crm.url` and `crm.rest_url`, so a newcomer sees the events. Nothing else may write to standard
//! output then (logs go to standard error).

use super::crm_http::morph_headers;
use crate::domain::connection::Connection;
use crate::domain::record::Delivery;
use crate::domain::rest::{RestMethod, RestRequest, digest};
use crate::ports::{Crm, DeliveryOutcome, RestOutcome};
use async_trait::async_trait;
use serde_json::{Map, Value, json};
use std::pin::Pin;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

pub struct StdoutCrm {
    /// Locked for a whole line, so lines of concurrent deliveries never interleave.
    out: Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
}

impl Default for StdoutCrm {
    fn default() -> Self {
        Self::writing_to(tokio::io::stdout())
    }
}

impl StdoutCrm {
    /// Prints to `out` instead of standard output.
    pub fn writing_to(out: impl AsyncWrite + Send + 'static) -> Self {
        Self {
            out: Mutex::new(Box::pin(out)),
        }
    }
}

/// One line: `{"headers": {...}, "event": <the Morph event>}`.
fn line(connection: &Connection, delivery: &Delivery) -> Vec<u8> {
    let headers: Map<String, Value> = morph_headers(connection, delivery)
        .into_iter()
        .map(|(name, value)| (name.to_owned(), Value::from(value)))
        .collect();
    let mut line = json!({ "headers": headers, "event": delivery.body }).to_string();
    line.push('\n');
    line.into_bytes()
}

/// One line for a REST request: `{"headers": {...}, "request": {"method", "path", "body"}}`,
/// without the API key and secret.
fn rest_line(connection: &Connection, request: &RestRequest) -> Vec<u8> {
    let method = match request.method {
        RestMethod::Post => "POST",
        RestMethod::Patch => "PATCH",
    };
    let mut line = json!({
        "headers": { "x-connector-id": connection.connector_id, "x-owner-id": connection.owner_id },
        "request": { "method": method, "path": request.path, "body": request.body },
    })
    .to_string();
    line.push('\n');
    line.into_bytes()
}

impl StdoutCrm {
    async fn print(&self, line: &[u8]) -> Result<(), DeliveryOutcome> {
        let mut out = self.out.lock().await;
        async {
            out.write_all(line).await?;
            out.flush().await
        }
        .await
        .map_err(|e| DeliveryOutcome::Retry {
            reason: format!("cannot write to standard output: {e}"),
            retry_after: None,
        })
    }
}

#[async_trait]
impl Crm for StdoutCrm {
    async fn deliver(&self, connection: &Connection, delivery: &Delivery) -> DeliveryOutcome {
        match self.print(&line(connection, delivery)).await {
            Ok(()) => DeliveryOutcome::Delivered,
            Err(outcome) => outcome,
        }
    }

    /// Prints the request; a create is answered with an id made from its body, so a dry run
    /// goes on to the updates as against Morph.
    async fn request(&self, connection: &Connection, request: &RestRequest) -> RestOutcome {
        match self.print(&rest_line(connection, request)).await {
            Ok(()) => RestOutcome::Taken {
                id: request
                    .is_create()
                    .then(|| format!("printed_{}", digest(&request.body))),
            },
            Err(outcome) => RestOutcome::NotTaken(outcome),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::resource::MorphEventType;
    use tokio::io::AsyncBufReadExt;

    fn connection() -> Connection {
        crate::config::test_connection("").unwrap()
    }

    #[tokio::test]
    async fn prints_one_json_line_per_event_with_its_headers() {
        let (written, read) = tokio::io::duplex(4096);
        let crm = StdoutCrm::writing_to(written);
        let connection = connection();
        let delivery = Delivery {
            resource_id: "res".into(),
            revision: 3,
            event: MorphEventType::Updated,
            idempotency_key: "res-r3".into(),
            body: json!({ "type": "telephonyCall::updated" }),
            closed: None,
            received_at: None,
            attempted: false,
            waiting: None,
        };

        assert_eq!(
            crm.deliver(&connection, &delivery).await,
            DeliveryOutcome::Delivered
        );
        let mut lines = tokio::io::BufReader::new(read).lines();
        let printed: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(printed["headers"]["x-idempotency-key"], "res-r3");
        assert_eq!(printed["headers"]["x-owner-id"], "owner");
        assert_eq!(printed["event"], delivery.body);
    }
}
