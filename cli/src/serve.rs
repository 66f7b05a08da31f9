//! `callbridge serve`: the bridge on one machine. Webhooks come in over HTTP, the pipeline
//! runs on the embedded store ([`callbridge_shared::hosts::local`]), and Morph events go to
//! `crm.url` or, without one, to standard output as JSON lines (logs go to standard error, so
//! standard output stays clean).

use anyhow::Context;
use axum::extract::State;
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use callbridge_shared::adapters::clock::SystemClock;
use callbridge_shared::adapters::config_directory::ConfigDirectory;
use callbridge_shared::adapters::sqlite::SqliteStore;
use callbridge_shared::config::Config;
use callbridge_shared::domain::contact;
use callbridge_shared::engine::activation::WithActivatedUsers;
use callbridge_shared::engine::ingest::Rejection;
use callbridge_shared::hosts::local::{self, LocalRuntime, Settings};
use callbridge_shared::http::{self, FrontDoor, Mount, allowing, refusal};
use callbridge_shared::ports::Queue;
use callbridge_shared::telemetry::prometheus::CONTENT_TYPE;
use callbridge_shared::telemetry::{LogFormat, PrometheusMetrics, Telemetry, init_logging};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A request whose head has not arrived within this is dropped with its connection: a slow
/// sender holds no connection for long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct Args {
    /// The configuration file (see infra/callbridge.example.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Where to listen, over the configuration's `listen` (`127.0.0.1:0`: any free port).
    #[arg(long)]
    pub listen: Option<String>,
    /// Logs on standard error as `text` or `json`, filtered by RUST_LOG (default `info`).
    #[arg(long, default_value = "text")]
    pub log_format: LogFormat,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let config = Config::load(&args.config)?;
    let store = Arc::new(SqliteStore::open(&config.data_file).await?);
    // Before the server listens, so that no webhook waits for them.
    tokio::task::spawn_blocking(contact::load_numbering_plans).await?;
    let connections = Arc::new(ConfigDirectory::new(config.connections()?));
    let listen = args.listen.as_deref().unwrap_or(&config.listen);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;

    let metrics = Arc::new(PrometheusMetrics::new());
    let telemetry = Telemetry::new(Arc::clone(&metrics) as _);
    // The runtime sees the users activated through Telsmart's onboarding too.
    let with_activated =
        WithActivatedUsers::new(Arc::clone(&connections) as _, Arc::clone(&store) as _);
    let runtime = LocalRuntime::start(
        Arc::clone(&store),
        Arc::new(with_activated),
        local::crm(&config.crm)?,
        Settings::new(&config.crm),
        telemetry.clone(),
    );
    let address = listener.local_addr()?;
    tracing::info!(
        %address,
        data_file = %config.data_file.display(),
        connections = config.connections.len(),
        events = if config.crm.url.is_some() { "crm.url" } else { "stdout" },
        "listening on {address}"
    );
    let server = Server {
        queue: runtime.queue(),
        store,
        connections,
        telemetry,
        metrics,
    };
    serve(listener, router(server)).await;
    runtime.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves HTTP/1.1 on `listener` until Ctrl-C or SIGTERM, then answers the requests under way
/// and returns.
async fn serve(listener: TcpListener, app: Router) {
    let (stopping, stop) = watch::channel(());
    let mut connections = JoinSet::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, mostly: wait for some to be freed.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        connections.spawn(serve_connection(tcp, app.clone(), stop.clone()));
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stopping.send(());
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(tcp: TcpStream, app: Router, mut stop: watch::Receiver<()>) {
    // Small answers go out at once rather than wait on Nagle's algorithm.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "a connection ended with an error");
    }
}

#[derive(Clone)]
struct Server {
    queue: Arc<dyn Queue>,
    store: Arc<SqliteStore>,
    connections: Arc<ConfigDirectory>,
    telemetry: Telemetry,
    /// What `telemetry` counted, for `GET /metrics`.
    metrics: Arc<PrometheusMetrics>,
}

/// The front door over the embedded store, with the local server's own routes.
fn router(server: Server) -> Router {
    let door = FrontDoor {
        connections: Arc::clone(&server.connections) as _,
        queue: Arc::clone(&server.queue),
        users: Some(Arc::clone(&server.store) as _),
        clock: Arc::new(SystemClock),
        telemetry: server.telemetry.clone(),
    };
    http::router(door, Mount::Every).merge(
        Router::new()
            .route("/health", get(health).fallback(get_only))
            .route("/metrics", get(metrics).fallback(get_only))
            .with_state(server),
    )
}

/// 200 when the store answers, with what it holds: `degraded` while webhooks are set aside
/// for an operator (`callbridge deliveries list`), though the rest flows.
async fn health(State(server): State<Server>) -> Response {
    match server.store.health().await {
        Ok(health) => Json(json!({
            "status": if health.dead_letters == 0 { "ok" } else { "degraded" },
            "queued": health.queued,
            "undelivered_calls": health.undelivered_calls,
            "parked": health.parked,
            "set_aside": health.dead_letters,
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the store does not answer");
            let unavailable = Rejection::new(503, "unavailable", "the store does not answer");
            refusal(&unavailable)
        }
    }
}

/// What the server counted since it started, in the Prometheus text format (see
/// `callbridge_shared::telemetry`).
async fn metrics(State(server): State<Server>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        server.metrics.render(),
    )
        .into_response()
}

async fn get_only(method: Method, uri: Uri) -> Response {
    let rejection = Rejection::new(
        405,
        "method_not_allowed",
        format!("{} answers GET, not {method}", uri.path()),
    );
    allowing(refusal(&rejection), "GET")
}

/// Resolves on Ctrl-C or SIGTERM: the server stops taking requests, answers those it has, and
/// stops the runtime (what it was doing is picked up on the next start).
async fn shutdown_signal() {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(unix)]
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            terminate.recv().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
            std::future::pending().await
        }
    }
}

#[cfg(not(unix))]
async fn terminated() {
    std::future::pending().await
}
