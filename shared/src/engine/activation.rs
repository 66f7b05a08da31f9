//! Telsmart's onboarding: a tenant's user turns the integration on or off in Telsmart, which
//! posts `tenant_id` and `user_extension` to the connection's activation or deactivation URL
//! (`/telsmart/{connection_id}/activate`, `/deactivate`), authenticated as the OAuth client
//! the integrator configured (`activation_client_id`, `activation_client_secret`). An
//! activated extension joins the connection's user directory as the Morph user its
//! `auto_user_id_template` names; a deactivated one leaves it. The local server and the
//! Telsmart ingest Lambda both translate their HTTP request into an [`ActivationRequest`]
//! and the answer back (`docs/crm.md`).

use super::rejection::Rejection;
use crate::domain::connection::Connection;
use crate::domain::event::Provider;
use crate::ports::{ActivatedUsers, ConnectionDirectory, UserDirectory};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Larger bodies are refused: an activation is two short fields.
pub const MAX_ACTIVATION_BYTES: usize = 16 * 1024;
/// An extension is digits only, at most this many: a phone number (`+3228992675`) taken as an
/// extension would turn the calls of that number into a user's internal calls.
pub const MAX_EXTENSION_DIGITS: usize = 6;
/// A tenant id is at most this many letters, digits, `-`, `_` and `.` (Telsmart's are UUIDs):
/// it is written into Morph user ids.
pub const MAX_TENANT_ID_CHARS: usize = 64;
/// Activated users per connection; past it an activation is refused (409 `too_many_users`)
/// until one is deactivated. Every webhook of the connection carries its users.
pub const MAX_ACTIVATED_USERS: usize = 2_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Activate,
    Deactivate,
}

impl Action {
    /// The last segment of the route: `activate` or `deactivate`.
    pub fn from_route(segment: &str) -> Option<Self> {
        match segment {
            "activate" => Some(Action::Activate),
            "deactivate" => Some(Action::Deactivate),
            _ => None,
        }
    }
}

/// An activation or deactivation request as it arrived, whatever the HTTP stack.
#[derive(Clone, Debug)]
pub struct ActivationRequest<'a> {
    pub connection_id: &'a str,
    pub action: Action,
    /// `POST` only.
    pub method: &'a str,
    /// `Authorization: Basic <client id:secret>` (OAuth's `client_secret_basic`).
    pub authorization: Option<&'a str>,
    pub content_type: Option<&'a str>,
    /// JSON or form-encoded: `tenant_id`, `user_extension`, and the client's `client_id` and
    /// `client_secret` when they are not in `Authorization` (`client_secret_post`).
    pub body: &'a [u8],
}

/// The answer to a request taken (HTTP 200).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Activated {
    /// `activated` or `deactivated`.
    pub status: &'static str,
    pub tenant_id: String,
    pub user_extension: String,
    /// The Morph user the extension is now (activation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// Authenticates and carries out one activation or deactivation. The client is checked
/// before the body is read when it comes as HTTP Basic; in the body (`client_secret_post`),
/// before any other field is.
pub async fn activation(
    request: &ActivationRequest<'_>,
    connections: &dyn ConnectionDirectory,
    users: &dyn UserDirectory,
) -> Result<Activated, Rejection> {
    if !request.method.eq_ignore_ascii_case("POST") {
        return Err(Rejection::new(
            405,
            "method_not_allowed",
            "activation requests are sent with POST",
        ));
    }
    let connection = connections
        .connection(request.connection_id)
        .await
        .map_err(|e| unavailable("connection directory", &e))?
        .filter(|c| c.provider == Provider::Telsmart)
        .ok_or_else(|| {
            Rejection::new(
                404,
                "unknown_connection",
                format!("no telsmart connection `{}`", request.connection_id),
            )
        })?;
    let Some(activation) = &connection.activation else {
        return Err(Rejection::new(
            404,
            "activation_not_configured",
            format!(
                "connection `{}` takes no activation requests: its operator sets `activation_client_id`, `activation_client_secret` and `auto_user_id_template`",
                connection.id
            ),
        ));
    };
    let unauthorized = || {
        Rejection::new(
            401,
            "unauthorized",
            "the client id and secret are not this connection's (HTTP Basic, or `client_id` and `client_secret` in a JSON or form body)",
        )
    };
    let basic = basic_credentials(request.authorization);
    if let Some((client_id, client_secret)) = &basic
        && !activation.accepts(client_id, client_secret)
    {
        return Err(unauthorized());
    }
    if request.body.len() > MAX_ACTIVATION_BYTES {
        return Err(Rejection::new(
            413,
            "payload_too_large",
            format!("the body is over {} KiB", MAX_ACTIVATION_BYTES / 1024),
        ));
    }
    let fields = match read_fields(request) {
        Ok(fields) => fields,
        // Without HTTP Basic the credentials are in the body: one that does not read has none.
        Err(_) if basic.is_none() => return Err(unauthorized()),
        Err(rejection) => return Err(rejection),
    };
    let text = |name: &str| match fields.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if basic.is_none()
        && !activation.accepts(
            &text("client_id").unwrap_or_default(),
            &text("client_secret").unwrap_or_default(),
        )
    {
        return Err(unauthorized());
    }

    let invalid = |name: &'static str, message: String| {
        let mut rejection = Rejection::new(400, "invalid_payload", message);
        rejection.field = Some(name.into());
        rejection
    };
    let required = |name: &'static str| {
        text(name).ok_or_else(|| invalid(name, format!("`{name}` is required")))
    };
    let tenant_id = required("tenant_id")?;
    if tenant_id.chars().count() > MAX_TENANT_ID_CHARS
        || !tenant_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            "tenant_id",
            format!(
                "`tenant_id` must be at most {MAX_TENANT_ID_CHARS} letters, digits, `-`, `_` and `.`"
            ),
        ));
    }
    let user_extension = required("user_extension")?;
    if user_extension.len() > MAX_EXTENSION_DIGITS
        || !user_extension.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid(
            "user_extension",
            format!(
                "`user_extension` must be an extension: 1 to {MAX_EXTENSION_DIGITS} digits, not a phone number"
            ),
        ));
    }
    check_account(&connection, &tenant_id)?;

    let (status, user_id) = match request.action {
        Action::Activate => {
            let activated = users
                .activated_users(&connection.id)
                .await
                .map_err(|e| unavailable("user directory", &e))?;
            if activated.len() >= MAX_ACTIVATED_USERS && !activated.contains_key(&user_extension) {
                return Err(Rejection::new(
                    409,
                    "too_many_users",
                    format!(
                        "connection `{}` has {MAX_ACTIVATED_USERS} activated users, its limit: deactivate one first",
                        connection.id
                    ),
                ));
            }
            let user_id = activation.user_id(&tenant_id, &user_extension);
            users
                .activate(&connection.id, &user_extension, &user_id)
                .await
                .map_err(|e| unavailable("user directory", &e))?;
            ("activated", Some(user_id))
        }
        Action::Deactivate => {
            users
                .deactivate(&connection.id, &user_extension)
                .await
                .map_err(|e| unavailable("user directory", &e))?;
            ("deactivated", None)
        }
    };
    Ok(Activated {
        status,
        tenant_id,
        user_extension,
        user_id,
    })
}

/// A connection bound to a tenant takes only that tenant's users.
fn check_account(connection: &Connection, tenant_id: &str) -> Result<(), Rejection> {
    match &connection.account {
        Some(account) if account != tenant_id => Err(Rejection::new(
            403,
            "wrong_account",
            format!("tenant `{tenant_id}` is not this connection's"),
        )),
        _ => Ok(()),
    }
}

/// The body's fields: a JSON object, or a form (OAuth clients often post forms).
fn read_fields(request: &ActivationRequest<'_>) -> Result<Map<String, Value>, Rejection> {
    let is_form = request.content_type.is_some_and(|t| {
        t.trim_start()
            .starts_with("application/x-www-form-urlencoded")
    });
    if is_form {
        return Ok(form_urlencoded::parse(request.body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect());
    }
    match serde_json::from_slice(request.body) {
        Ok(Value::Object(fields)) => Ok(fields),
        _ => Err(Rejection::new(
            400,
            "invalid_payload",
            "the body must be a JSON object or a form with `tenant_id` and `user_extension`",
        )),
    }
}

/// `Authorization: Basic base64(client_id:client_secret)`.
fn basic_credentials(authorization: Option<&str>) -> Option<(String, String)> {
    let (scheme, encoded) = authorization?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

fn unavailable(what: &str, e: &anyhow::Error) -> Rejection {
    tracing::error!(error = %e, "the {what} is unavailable");
    Rejection::new(
        503,
        "unavailable",
        format!("the {what} is unavailable, retry later"),
    )
}

/// A connection directory whose connections include the users activated on them: what the
/// local runtime reads its connections through. (On AWS the connections table holds the
/// activated users beside the connection, and reads them in the same request.) A connection
/// joined to its users is kept until either changes, so a lookup costs the same with 2,000
/// users as with none.
pub struct WithActivatedUsers {
    connections: Arc<dyn ConnectionDirectory>,
    users: Arc<dyn UserDirectory>,
    joined: Mutex<HashMap<String, Joined>>,
}

/// A connection with its activated users, and the two it was made of.
struct Joined {
    connection: Arc<Connection>,
    users: ActivatedUsers,
    joined: Arc<Connection>,
}

impl WithActivatedUsers {
    pub fn new(connections: Arc<dyn ConnectionDirectory>, users: Arc<dyn UserDirectory>) -> Self {
        Self {
            connections,
            users,
            joined: Mutex::default(),
        }
    }

    fn joined(&self) -> MutexGuard<'_, HashMap<String, Joined>> {
        // Plain data: still good after a panic elsewhere.
        self.joined.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ConnectionDirectory for WithActivatedUsers {
    async fn connection(&self, id: &str) -> anyhow::Result<Option<Arc<Connection>>> {
        let Some(connection) = self.connections.connection(id).await? else {
            return Ok(None);
        };
        // Only a connection that takes activations can have activated users to read, so the
        // joined ones are as many as those connections.
        if connection.activation.is_none() {
            return Ok(Some(connection));
        }
        let users = self.users.activated_users(id).await?;
        if users.is_empty() {
            return Ok(Some(connection));
        }
        if let Some(kept) = self.joined().get(id)
            && Arc::ptr_eq(&kept.connection, &connection)
            && Arc::ptr_eq(&kept.users, &users)
        {
            return Ok(Some(Arc::clone(&kept.joined)));
        }
        let joined = Arc::new(Connection::clone(&connection).with_activated_users(&users));
        self.joined().insert(
            id.to_owned(),
            Joined {
                connection,
                users,
                joined: Arc::clone(&joined),
            },
        );
        Ok(Some(joined))
    }
}

#[cfg(all(test, feature = "local"))]
mod tests {
    use super::*;
    use crate::adapters::config_directory::ConfigDirectory;
    use crate::adapters::sqlite::SqliteStore;
    use crate::config::Config;

    const CONFIG: &str = r#"
        [[connections]]
        id = "acme"
        provider = "telsmart"
        token = "acme-token-0123456789"
        account = "tenant-1"
        connector_id = "conn"
        owner_id = "owner"
        users = { "200" = "usr_john" }
        activation_client_id = "telsmart-client"
        activation_client_secret = "telsmart-secret-0123456789"
        auto_user_id_template = "usr_{user_extension}"

        [[connections]]
        id = "plain"
        provider = "telsmart"
        token = "plain-token-0123456789"
        connector_id = "conn"
        owner_id = "owner"

        [[connections]]
        id = "open"
        provider = "telsmart"
        token = "open-token-0123456789"
        connector_id = "conn"
        owner_id = "owner"
        activation_client_id = "telsmart-client"
        activation_client_secret = "telsmart-secret-0123456789"
        auto_user_id_template = "usr_{tenant_id}_{user_extension}"
    "#;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<SqliteStore>,
        connections: Arc<ConfigDirectory>,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let config = Config::parse(CONFIG).unwrap();
        Fixture {
            _dir: dir,
            store,
            connections: Arc::new(ConfigDirectory::new(config.connections().unwrap())),
        }
    }

    fn basic(id: &str, secret: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
    }

    fn request<'a>(
        action: Action,
        authorization: Option<&'a str>,
        body: &'a [u8],
    ) -> ActivationRequest<'a> {
        ActivationRequest {
            connection_id: "acme",
            action,
            method: "POST",
            authorization,
            content_type: Some("application/json"),
            body,
        }
    }

    #[tokio::test]
    async fn an_activated_extension_joins_the_directory_and_a_deactivated_one_leaves() {
        let f = fixture().await;
        let auth = basic("telsmart-client", "telsmart-secret-0123456789");
        let body = br#"{"tenant_id": "tenant-1", "user_extension": 210}"#;
        let done = activation(
            &request(Action::Activate, Some(&auth), body),
            &*f.connections,
            &*f.store,
        )
        .await
        .unwrap();
        assert_eq!(done.status, "activated");
        assert_eq!(done.user_id.as_deref(), Some("usr_210"));

        let directory = WithActivatedUsers::new(f.connections.clone(), f.store.clone());
        let acme = directory.connection("acme").await.unwrap().unwrap();
        assert_eq!(acme.user_id("210"), Some("usr_210"));
        assert_eq!(acme.user_id("200"), Some("usr_john"));

        // client_secret_post, as a form.
        let form = b"tenant_id=tenant-1&user_extension=210&client_id=telsmart-client&client_secret=telsmart-secret-0123456789";
        let mut deactivate = request(Action::Deactivate, None, form);
        deactivate.content_type = Some("application/x-www-form-urlencoded");
        let done = activation(&deactivate, &*f.connections, &*f.store)
            .await
            .unwrap();
        assert_eq!(done.status, "deactivated");
        let acme = directory.connection("acme").await.unwrap().unwrap();
        assert_eq!(acme.user_id("210"), None);
    }

    #[tokio::test]
    async fn refusals_say_why() {
        let f = fixture().await;
        let good = basic("telsmart-client", "telsmart-secret-0123456789");
        let bad = basic("telsmart-client", "wrong-secret-0123456789");
        let body: &[u8] = br#"{"tenant_id": "tenant-1", "user_extension": "210"}"#;
        let cases: Vec<(ActivationRequest<'_>, u16, &str)> = vec![
            (
                request(Action::Activate, Some(&bad), body),
                401,
                "unauthorized",
            ),
            (request(Action::Activate, None, body), 401, "unauthorized"),
            (
                request(
                    Action::Activate,
                    Some(&good),
                    br#"{"tenant_id": "tenant-2", "user_extension": "210"}"#,
                ),
                403,
                "wrong_account",
            ),
            (
                request(
                    Action::Activate,
                    Some(&good),
                    br#"{"tenant_id": "tenant-1"}"#,
                ),
                400,
                "invalid_payload",
            ),
            (
                request(Action::Activate, Some(&good), b"not json"),
                400,
                "invalid_payload",
            ),
            (
                ActivationRequest {
                    connection_id: "plain",
                    ..request(Action::Activate, Some(&good), body)
                },
                404,
                "activation_not_configured",
            ),
            (
                ActivationRequest {
                    connection_id: "nobody",
                    ..request(Action::Activate, Some(&good), body)
                },
                404,
                "unknown_connection",
            ),
            (
                ActivationRequest {
                    method: "GET",
                    ..request(Action::Activate, Some(&good), body)
                },
                405,
                "method_not_allowed",
            ),
        ];
        for (request, status, error) in cases {
            let rejection = activation(&request, &*f.connections, &*f.store)
                .await
                .unwrap_err();
            assert_eq!(
                (rejection.status, rejection.error),
                (status, error),
                "{request:?}"
            );
        }
        assert!(f.store.activated_users("acme").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn hostile_tenant_ids_and_extensions_are_refused_naming_the_field() {
        let f = fixture().await;
        let good = basic("telsmart-client", "telsmart-secret-0123456789");
        let long_tenant = "t".repeat(MAX_TENANT_ID_CHARS + 1);
        let cases = [
            // Without `account`, the tenant id still becomes part of a user id.
            ("open", "../other-tenant", "210", "tenant_id"),
            ("open", "t1\nforged", "210", "tenant_id"),
            ("open", "{user_extension}", "210", "tenant_id"),
            ("open", long_tenant.as_str(), "210", "tenant_id"),
            // A phone number would make that number's calls a user's internal calls.
            ("open", "t1", "+3228992675", "user_extension"),
            ("open", "t1", "3228992675", "user_extension"),
            ("open", "t1", "1234567", "user_extension"),
            ("open", "t1", "20 0", "user_extension"),
            ("open", "t1", "abc", "user_extension"),
            ("acme", "tenant-1", "+32 2 899 26 75", "user_extension"),
        ];
        for (connection_id, tenant, extension, field) in cases {
            let body = serde_json::to_vec(
                &serde_json::json!({"tenant_id": tenant, "user_extension": extension}),
            )
            .unwrap();
            let rejection = activation(
                &ActivationRequest {
                    connection_id,
                    ..request(Action::Activate, Some(&good), &body)
                },
                &*f.connections,
                &*f.store,
            )
            .await
            .unwrap_err();
            assert_eq!(
                (
                    rejection.status,
                    rejection.error,
                    rejection.field.as_deref()
                ),
                (400, "invalid_payload", Some(field)),
                "{tenant:?} {extension:?}: {}",
                rejection.message
            );
        }
        for connection_id in ["open", "acme"] {
            assert!(
                f.store
                    .activated_users(connection_id)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
        // What an extension and a tenant id are, is taken.
        let done = activation(
            &ActivationRequest {
                connection_id: "open",
                ..request(
                    Action::Activate,
                    Some(&good),
                    br#"{"tenant_id": "b11d749b-8eb7-4236-a068-3d94ba3860d6", "user_extension": "200"}"#,
                )
            },
            &*f.connections,
            &*f.store,
        )
        .await
        .unwrap();
        assert_eq!(
            done.user_id.as_deref(),
            Some("usr_b11d749b-8eb7-4236-a068-3d94ba3860d6_200")
        );
    }

    #[tokio::test]
    async fn the_client_is_checked_before_the_body_is_read() {
        let f = fixture().await;
        let bad = basic("telsmart-client", "wrong-secret-0123456789");
        let oversized = vec![b'x'; MAX_ACTIVATION_BYTES + 1];
        let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let cases: [(Option<&str>, &[u8]); 4] = [
            (Some(&bad), b"not json"),
            (Some(&bad), &oversized),
            (Some(&bad), nested.as_bytes()),
            // Without HTTP Basic, a body that does not read holds no credentials.
            (None, b"not json"),
        ];
        for (authorization, body) in cases {
            let rejection = activation(
                &request(Action::Activate, authorization, body),
                &*f.connections,
                &*f.store,
            )
            .await
            .unwrap_err();
            assert_eq!(
                (rejection.status, rejection.error),
                (401, "unauthorized"),
                "{authorization:?}, {} bytes",
                body.len()
            );
        }
    }

    #[tokio::test]
    async fn activated_users_are_bounded_per_connection() {
        let f = fixture().await;
        for extension in 0..MAX_ACTIVATED_USERS {
            f.store
                .activate("acme", &extension.to_string(), "usr")
                .await
                .unwrap();
        }
        let good = basic("telsmart-client", "telsmart-secret-0123456789");
        let activate = |extension: &'static str| {
            let body = format!(r#"{{"tenant_id": "tenant-1", "user_extension": "{extension}"}}"#);
            let auth = good.clone();
            let f = &f;
            async move {
                activation(
                    &request(Action::Activate, Some(&auth), body.as_bytes()),
                    &*f.connections,
                    &*f.store,
                )
                .await
            }
        };
        let refused = activate("999999").await.unwrap_err();
        assert_eq!((refused.status, refused.error), (409, "too_many_users"));
        assert!(refused.message.contains(&MAX_ACTIVATED_USERS.to_string()));
        // One already there may be activated again; after a deactivation, a new one fits.
        assert!(activate("7").await.is_ok());
        f.store.deactivate("acme", "7").await.unwrap();
        assert!(activate("999999").await.is_ok());
        assert_eq!(
            f.store.activated_users("acme").await.unwrap().len(),
            MAX_ACTIVATED_USERS
        );
    }

    #[tokio::test]
    async fn a_connection_joined_to_its_users_is_kept_until_they_change() {
        let f = fixture().await;
        for extension in 0..MAX_ACTIVATED_USERS {
            f.store
                .activate("acme", &format!("{}", 100_000 + extension), "usr")
                .await
                .unwrap();
        }
        let directory = WithActivatedUsers::new(f.connections.clone(), f.store.clone());
        let first = directory.connection("acme").await.unwrap().unwrap();
        let again = directory.connection("acme").await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "joined again for every lookup");
        assert_eq!(first.users.len(), MAX_ACTIVATED_USERS + 1);

        f.store.activate("acme", "210", "usr_210").await.unwrap();
        let changed = directory.connection("acme").await.unwrap().unwrap();
        assert_eq!(changed.user_id("210"), Some("usr_210"));
        f.store.deactivate("acme", "210").await.unwrap();
        let back = directory.connection("acme").await.unwrap().unwrap();
        assert_eq!(back.user_id("210"), None);
    }
}
