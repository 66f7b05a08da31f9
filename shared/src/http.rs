//! The webhooks' front door, one axum [`Router`] for both hosts: `callbridge serve` merges it
//! with its own routes and serves it over its listener, and each ingest Lambda runs it with
//! `lambda_http::run`, mounting only its provider's routes. So a request gets the same status,
//! JSON body and headers from either.
//!
//! The router only translates HTTP: what a webhook or an onboarding request means is decided by
//! [`engine::ingest`](crate::engine::ingest) and [`engine::activation`](crate::engine::activation).
//!
//! - `/webhooks/{provider}/{connection_id}`: a provider's webhook ([`engine::ingest::ingest`]).
//! - `/telsmart/{connection_id}/activate` and `/deactivate`: Telsmart's onboarding
//!   ([`engine::activation::activation`]).
//!
//! Every other path is a 404 with a JSON body; a 405 says in `Allow` which methods would do.

use crate::domain::event::Provider;
use crate::engine;
use crate::engine::activation::{Action, ActivationRequest};
use crate::engine::ingest::{MAX_BODY_BYTES, Rejection, SignatureHeaders, WebhookRequest};
use crate::ports::{Clock, ConnectionDirectory, Queue, UserDirectory};
use crate::telemetry::Telemetry;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request whose body has not arrived within this, once its head has, is answered 408 (the
/// local server's; on Lambda the body is whole before the router sees it).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the front door works with, the host's adapters behind the ports.
#[derive(Clone)]
pub struct FrontDoor {
    pub connections: Arc<dyn ConnectionDirectory>,
    pub queue: Arc<dyn Queue>,
    /// Where Telsmart's onboarding writes; without it, its routes answer 404
    /// `activation_not_configured`.
    pub users: Option<Arc<dyn UserDirectory>>,
    pub clock: Arc<dyn Clock>,
    pub telemetry: Telemetry,
}

/// Which providers' routes a router mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mount {
    /// Every provider's, and a refusal naming an unknown one (the local server).
    Every,
    /// One provider's only (its ingest Lambda, behind the HTTP API's routes for it).
    Only(Provider),
}

/// The front door's routes over `door`, with the JSON 404 as fallback.
pub fn router(door: FrontDoor, mount: Mount) -> Router {
    let webhooks = match mount {
        Mount::Every => Router::new().route(
            "/webhooks/{provider}/{connection_id}",
            any(
                |State(door): State<FrontDoor>,
                 path: Result<Path<(String, String)>, PathRejection>,
                 method: Method,
                 uri: Uri,
                 request: Request| async move {
                    match path {
                        Ok(Path((provider, connection_id))) => {
                            webhook(&door, &provider, &connection_id, request).await
                        }
                        Err(_) => not_found(method, uri).await,
                    }
                },
            ),
        ),
        Mount::Only(provider) => Router::new().route(
            &format!("/webhooks/{provider}/{{connection_id}}"),
            any(
                move |State(door): State<FrontDoor>,
                      path: Result<Path<String>, PathRejection>,
                      method: Method,
                      uri: Uri,
                      request: Request| async move {
                    match path {
                        Ok(Path(connection_id)) => {
                            webhook(&door, provider.as_str(), &connection_id, request).await
                        }
                        Err(_) => not_found(method, uri).await,
                    }
                },
            ),
        ),
    };
    let router = if matches!(mount, Mount::Every | Mount::Only(Provider::Telsmart)) {
        webhooks.route(
            "/telsmart/{connection_id}/{action}",
            any(telsmart_onboarding),
        )
    } else {
        webhooks
    };
    router
        .fallback(not_found)
        // Over the limit axum stops reading; the handlers answer with our own 413.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(door)
}

/// One webhook, decided by [`engine::ingest::ingest`], logged and counted.
async fn webhook(
    door: &FrontDoor,
    provider: &str,
    connection_id: &str,
    request: Request,
) -> Response {
    let started = Instant::now();
    let refused = |rejection: Rejection| {
        door.telemetry
            .webhook(provider, connection_id, Err(&rejection), started.elapsed());
        let allow = provider
            .parse::<Provider>()
            .map_or("POST", engine::ingest::allowed_methods);
        allowing(refusal(&rejection), allow)
    };
    let (parts, body) = request.into_parts();
    let body = match read_body(Request::from_parts(parts.clone(), body)).await {
        Ok(body) => body,
        Err(rejection) => return refused(rejection),
    };
    let header = header_lookup(&parts.headers);
    let request = WebhookRequest {
        provider,
        connection_id,
        method: parts.method.as_str(),
        authorization: header(header::AUTHORIZATION.as_str()),
        query: parts.uri.query(),
        content_type: header(header::CONTENT_TYPE.as_str()),
        body: &body,
        signature: SignatureHeaders::from_lookup(header),
    };
    match engine::ingest::ingest(&request, &*door.connections, &*door.queue, door.clock.now()).await
    {
        Ok(accepted) => {
            door.telemetry
                .webhook(provider, connection_id, Ok(&accepted), started.elapsed());
            (StatusCode::ACCEPTED, Json(accepted)).into_response()
        }
        Err(rejection) => refused(rejection),
    }
}

/// Telsmart's onboarding: `POST /telsmart/{connection_id}/activate` or `/deactivate`.
async fn telsmart_onboarding(
    State(door): State<FrontDoor>,
    Path((connection_id, action)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let Some(action) = Action::from_route(&action) else {
        return not_found(method, uri).await;
    };
    let answer = match (read_body(request).await, &door.users) {
        (Err(rejection), _) => Err(rejection),
        (Ok(_), None) => Err(Rejection::new(
            404,
            "activation_not_configured",
            "this function has no USERS_TABLE: the template gives it to Telsmart's",
        )),
        (Ok(body), Some(users)) => {
            let header = header_lookup(&headers);
            let request = ActivationRequest {
                connection_id: &connection_id,
                action,
                method: method.as_str(),
                authorization: header(header::AUTHORIZATION.as_str()),
                content_type: header(header::CONTENT_TYPE.as_str()),
                body: &body,
            };
            engine::activation::activation(&request, &*door.connections, &**users).await
        }
    };
    match answer {
        Ok(done) => {
            tracing::info!(
                connection = connection_id,
                status = done.status,
                user_extension = done.user_extension,
                "telsmart onboarding"
            );
            Json(done).into_response()
        }
        Err(rejection) => {
            tracing::info!(
                connection = connection_id,
                status = rejection.status,
                error = rejection.error,
                reason = rejection.message,
                "telsmart onboarding refused"
            );
            let mut response = allowing(refusal(&rejection), "POST");
            if rejection.status == 401 {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"callbridge\""),
                );
            }
            response
        }
    }
}

/// A header's value by its name, when it is text.
fn header_lookup<'h>(headers: &'h HeaderMap) -> impl Fn(&str) -> Option<&'h str> + Copy + 'h {
    |name| headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's body, if it arrives within [`BODY_READ_TIMEOUT`] and the size limit.
async fn read_body(request: Request) -> Result<Bytes, Rejection> {
    match tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(request, &())).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(unreadable_body(&e)),
        Err(_) => Err(Rejection::new(
            408,
            "request_timeout",
            format!(
                "the body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )),
    }
}

fn unreadable_body(e: &BytesRejection) -> Rejection {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Rejection::body_too_large()
    } else {
        Rejection::new(400, "unreadable_body", e.body_text())
    }
}

/// The rejection's status and JSON body.
pub fn refusal(rejection: &Rejection) -> Response {
    let status =
        StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(rejection.body())).into_response()
}

/// A 405 says which methods would do.
pub fn allowing(mut response: Response, methods: &'static str) -> Response {
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(methods));
    }
    response
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let rejection = Rejection::new(
        404,
        "not_found",
        format!(
            "nothing at {method} {}: webhooks go to /webhooks/<provider>/<connection id>",
            uri.path()
        ),
    );
    refusal(&rejection)
}
