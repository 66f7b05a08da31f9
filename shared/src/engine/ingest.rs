//! Ingest: one HTTP webhook in, one queued event out, or a clear refusal. The front door both
//! hosts mount ([`crate::http`]) translates a request into a [`WebhookRequest`] and the answer
//! back; what is accepted, and why not, is decided here.

pub use super::rejection::Rejection;
pub use super::signature::SignatureHeaders;
use super::signature::{self, SigningKey};
use crate::domain::event::{EventKind, Provider};
use crate::domain::providers::{self, ParseError};
use crate::domain::time::Timestamp;
use crate::ports::{ConnectionDirectory, MAX_MESSAGE_BYTES, MessageTooLarge, Queue, QueuedWebhook};
use serde::Serialize;
use serde_json::{Map, Value};

/// Larger bodies are refused with 413; the largest real webhook (a Telsmart summary) is a few KiB.
/// The queued message holds the payload again (re-serialised) beside the envelope: the
/// connection id, the time and the parsed event, which copies some of the payload's fields
/// (a summary of up to [`MAX_SUMMARY_BYTES`]). The allowance covers that summary and 8 KiB for
/// the rest (about 600 bytes on a real Telsmart webhook):
/// 1,048,576 - (32,768 + 8,192) = 1,007,616 bytes (984 KiB).
/// A body within it whose message still does not fit (escapes that grow when re-serialised,
/// large copied fields) is refused with 413 when it is queued ([`MessageTooLarge`]).
pub const MAX_BODY_BYTES: usize = MAX_MESSAGE_BYTES - ENVELOPE_ALLOWANCE_BYTES;

/// What the queued message may add to the body: see [`MAX_BODY_BYTES`].
const ENVELOPE_ALLOWANCE_BYTES: usize = MAX_SUMMARY_BYTES + 8 * 1024;

/// Deepest nesting of a payload, its top object being level 1. The queued message and the call
/// record wrap a payload (and the Telsmart summary it carries) a dozen levels deeper, and
/// serde_json reads nothing deeper than 128 levels: a payload deeper than this could be
/// accepted and then never read back. Real webhooks nest 4 levels at most.
pub const MAX_NESTING_DEPTH: usize = 32;

/// Largest Telsmart summary, as JSON: it is kept in the call's record and in every revision's
/// `rawResource`, and a record must stay well inside DynamoDB's 400 KB item
/// ([`crate::domain::record::MAX_RECORD_BYTES`]). Real summaries are a few KiB.
pub const MAX_SUMMARY_BYTES: usize = 32 * 1024;

/// A webhook as it arrived, whatever the HTTP stack.
#[derive(Clone, Debug, Default)]
pub struct WebhookRequest<'a> {
    pub provider: &'a str,
    pub connection_id: &'a str,
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// The Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`);
    /// required only by a connection with a `signing_secret`.
    pub signature: SignatureHeaders<'a>,
}

/// The answer to an accepted webhook (HTTP 202).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub status: &'static str,
    pub event_id: String,
    pub resource_id: String,
    /// The provider's key of the call, for the logs (the sender knows it already).
    #[serde(skip)]
    pub call_key: String,
}

impl Rejection {
    fn invalid(e: ParseError) -> Self {
        Self {
            status: 400,
            error: "invalid_payload",
            message: e.to_string(),
            field: e.field,
        }
    }

    /// A body over [`MAX_BODY_BYTES`], whichever HTTP stack noticed it.
    pub fn body_too_large() -> Self {
        Self::new(
            413,
            "payload_too_large",
            format!("the body is over the limit of {MAX_BODY_BYTES} bytes"),
        )
    }
}

/// The methods `provider`'s webhooks come with, as HTTP's `Allow` header lists them: TeleCMI may
/// send an event as a GET, in the query string.
pub fn allowed_methods(provider: Provider) -> &'static str {
    match provider {
        Provider::Telecmi => "GET, POST",
        _ => "POST",
    }
}

/// Authenticates, validates and queues one webhook. Nothing refused is queued.
pub async fn ingest(
    request: &WebhookRequest<'_>,
    connections: &dyn ConnectionDirectory,
    queue: &dyn Queue,
    received_at: Timestamp,
) -> Result<Accepted, Rejection> {
    let provider: Provider = request
        .provider
        .parse()
        .map_err(|e: String| Rejection::new(404, "unknown_provider", e))?;
    let not_found = || {
        Rejection::new(
            404,
            "unknown_connection",
            format!("no {provider} connection `{}`", request.connection_id),
        )
    };
    let connection = connections
        .connection(request.connection_id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "connection directory unavailable");
            Rejection::new(
                503,
                "unavailable",
                "the connection directory is unavailable, retry later",
            )
        })?
        .filter(|c| c.provider == provider)
        .ok_or_else(not_found)?;

    let method = request.method.to_ascii_uppercase();
    if !allowed_methods(provider).split(", ").any(|m| m == method) {
        return Err(Rejection::new(
            405,
            "method_not_allowed",
            format!(
                "{provider} webhooks are sent with {}",
                allowed_methods(provider).replace(", ", " or ")
            ),
        ));
    }
    // TeleCMI's GET carries the event in its query string.
    let from_query = method == "GET";

    // Authenticate before the body is even looked at.
    let query_pairs: Vec<(String, String)> = request
        .query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let token = bearer_token(request.authorization).or_else(|| {
        query_pairs
            .iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.as_str())
    });
    match token {
        None => {
            return Err(Rejection::new(
                401,
                "unauthorized",
                "a token is required: `Authorization: Bearer <token>` or the `token` query parameter",
            ));
        }
        Some(token) if !connection.accepts_token(token) => {
            return Err(Rejection::new(
                401,
                "unauthorized",
                "the token is not valid for this connection",
            ));
        }
        Some(_) => {}
    }
    if let Some(secret) = &connection.signing_secret {
        verify_signature(request, secret, from_query, received_at)?;
    }

    let payload = if from_query {
        object_of_pairs(query_pairs.into_iter().filter(|(k, _)| k != "token"))
    } else {
        read_body(request)?
    };
    check_nesting(&payload)?;
    let webhook = providers::parse(provider, &payload).map_err(Rejection::invalid)?;
    if let EventKind::Summary { summary } = &webhook.event.kind {
        let bytes = summary.to_string().len();
        if bytes > MAX_SUMMARY_BYTES {
            return Err(Rejection {
                field: Some("summary".into()),
                ..Rejection::new(
                    413,
                    "summary_too_large",
                    format!(
                        "the summary is {bytes} bytes as JSON, over the limit of {} KiB",
                        MAX_SUMMARY_BYTES / 1024
                    ),
                )
            });
        }
    }
    if let Some(expected) = &connection.account {
        // A connection bound to an account takes only payloads that name it: one that names
        // none could come from any tenant holding a leaked token.
        match &webhook.account {
            Some(named) if named == expected => {}
            Some(named) => {
                return Err(Rejection::new(
                    403,
                    "wrong_account",
                    format!("the payload names account `{named}`, which is not this connection's"),
                ));
            }
            None => {
                return Err(Rejection::new(
                    403,
                    "wrong_account",
                    "the payload names no account, and this connection takes only its own",
                ));
            }
        }
    }

    let queued = QueuedWebhook {
        connection_id: connection.id.clone(),
        received_at,
        event: webhook.event,
        raw: payload,
    };
    queue
        .enqueue(&queued)
        .await
        .map_err(|e| match MessageTooLarge::of(&e) {
            // No retry can make it fit: the sender must know, and nothing went wrong here.
            Some(too_large) => Rejection::new(
                413,
                "payload_too_large",
                format!("the webhook does not fit in the queue: {too_large}"),
            ),
            None => {
                tracing::error!(error = %e, "queue unavailable");
                Rejection::new(503, "unavailable", "the queue is unavailable, retry later")
            }
        })?;
    Ok(Accepted {
        status: "accepted",
        event_id: queued.event.id.clone(),
        resource_id: queued.call().resource_id(),
        call_key: queued.event.call_key,
    })
}

/// A signed connection's check, still before the body is parsed (but after its size is known,
/// so no more than [`MAX_BODY_BYTES`] are hashed).
fn verify_signature(
    request: &WebhookRequest<'_>,
    secret: &str,
    from_query: bool,
    received_at: Timestamp,
) -> Result<(), Rejection> {
    if from_query {
        return Err(Rejection::new(
            405,
            "method_not_allowed",
            "this connection requires signed webhooks, sent with POST: a signature covers the body, not the query string",
        ));
    }
    if request.body.len() > MAX_BODY_BYTES {
        return Err(Rejection::body_too_large());
    }
    let key = SigningKey::parse(secret).map_err(|e| {
        tracing::error!(connection = request.connection_id, error = %e, "unusable signing secret");
        Rejection::new(
            500,
            "misconfigured",
            "this connection's signing secret is unusable: its operator must fix it",
        )
    })?;
    signature::verify(&key, &request.signature, request.body, received_at)
}

fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn object_of_pairs(pairs: impl Iterator<Item = (String, String)>) -> Value {
    Value::Object(
        pairs
            .map(|(k, v)| (k, Value::String(v)))
            .collect::<Map<_, _>>(),
    )
}

fn read_body(request: &WebhookRequest<'_>) -> Result<Value, Rejection> {
    if request.body.len() > MAX_BODY_BYTES {
        return Err(Rejection::body_too_large());
    }
    let media_type = request.content_type.map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let payload = match media_type.as_deref() {
        // Providers are not all careful with their headers: a JSON body is read as JSON
        // whether it is labelled JSON, plain text, or not at all.
        None | Some("") | Some("application/json") | Some("text/plain") => {
            parse_json(request.body)?
        }
        Some(t) if t.ends_with("+json") => parse_json(request.body)?,
        Some("application/x-www-form-urlencoded") => {
            object_of_pairs(form_urlencoded::parse(request.body).into_owned())
        }
        Some(other) => {
            return Err(Rejection::new(
                415,
                "unsupported_media_type",
                format!(
                    "`{other}` is not accepted: send application/json or application/x-www-form-urlencoded"
                ),
            ));
        }
    };
    if !payload.is_object() {
        return Err(Rejection::new(
            400,
            "invalid_payload",
            "the payload must be a JSON object",
        ));
    }
    Ok(payload)
}

/// Refuses a payload nested deeper than [`MAX_NESTING_DEPTH`], whether or not a parser reads
/// the deep part: all of it is queued and stored.
fn check_nesting(payload: &Value) -> Result<(), Rejection> {
    let depth = nesting_depth(payload);
    if depth > MAX_NESTING_DEPTH {
        return Err(Rejection::new(
            400,
            "too_deeply_nested",
            format!("the payload nests {depth} levels deep, over the limit of {MAX_NESTING_DEPTH}"),
        ));
    }
    Ok(())
}

/// Levels of arrays and objects; a scalar is level 0. The payload was parsed by serde_json,
/// so this recursion is at most 128 deep.
fn nesting_depth(value: &Value) -> usize {
    let children = match value {
        Value::Array(items) => items.iter().map(nesting_depth).max(),
        Value::Object(fields) => fields.values().map(nesting_depth).max(),
        _ => return 0,
    };
    1 + children.unwrap_or(0)
}

fn parse_json(body: &[u8]) -> Result<Value, Rejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::new(400, "invalid_payload", "the body is empty"));
    }
    serde_json::from_slice(body).map_err(|e| {
        Rejection::new(
            400,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    })
}
