//! The receiver's HTTP listener (`[http]` or `[web]` in `receiver.toml`,
//! off unless configured): the status page, the JSON API it uses, and
//! `/metrics` for Prometheus, on one port. A token guards all of it when
//! configured (required when it listens beyond the loopback interface).
//!
//! - [`auth`]: the bearer token for scripts, a login form and a session
//!   cookie for browsers;
//! - [`api`]: `/api/...`, JSON in and out, errors as JSON with a 4xx status;
//! - [`hosts`]: the hosts table (filtered, paginated in SQL) and one host's
//!   page, read from the store;
//! - [`series`]: a metric's values over a range, aggregated to the plot's
//!   width by the same code as `receiver query --step`;
//! - [`pages`]: the page and its script and style, compiled into the binary;
//! - [`metrics`]: the Prometheus exposition.
//!
//! Every answer is read from the database on a blocking thread through its
//! own connection (SQLite's WAL lets readers in while the writer commits),
//! so a page or a scrape never holds up ingestion.

pub mod api;
pub mod auth;
pub mod hosts;
pub mod metrics;
pub mod pages;
pub mod series;

use crate::config::Model;
use crate::store;
use crate::triggers::Firing;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the handlers need from the running receiver beyond its database.
pub trait Live: Send + Sync {
    /// Agents connected now.
    fn connected_agents(&self) -> usize;
    /// The configuration in force (hosts' groups; maintenance checks names
    /// against it).
    fn model(&self) -> Arc<Model>;
    /// The triggers firing on `host` now (kept in memory by the receiver).
    fn firing(&self, host: &str) -> Vec<Firing>;
    /// Each remote-write endpoint's progress.
    fn remote_write(&self) -> Vec<Arc<crate::remote_write::Progress>>;
    /// The receiver's counters.
    fn health(&self) -> Arc<crate::health::Health>;
}

/// The listener's state.
pub struct HttpState {
    pub database: PathBuf,
    /// sha256 of the token, if one is required.
    pub token_hash: Option<[u8; 32]>,
    pub live: Box<dyn Live>,
    /// Browsers logged in with the token.
    pub sessions: auth::Sessions,
}

impl HttpState {
    pub fn new(database: PathBuf, token_hash: Option<[u8; 32]>, live: Box<dyn Live>) -> Self {
        HttpState {
            database,
            token_hash,
            live,
            sessions: auth::Sessions::default(),
        }
    }

    /// Run `read` with a connection to the database, on a blocking thread.
    pub async fn with_db<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&rusqlite::Connection, &HttpState) -> Result<T, api::ApiError>
        + Send
        + 'static,
    ) -> Result<T, api::ApiError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = store::open_existing(&state.database).map_err(api::ApiError::internal)?;
            read(&conn, &state)
        })
        .await
        .map_err(|e| api::ApiError::internal(anyhow::anyhow!("{e}")))?
    }
}

/// How long a client may take to send a request's head, and how long a
/// kept-alive connection may wait for its next request. Without it, a
/// client that sends a header a byte at a time, or nothing at all, holds its
/// connection (and a file descriptor) for ever: enough of them and the
/// receiver cannot accept agents either.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a stopping receiver lets the requests under way finish.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serve until `cancel`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/", get(pages::index))
        .route("/hosts/{host}", get(pages::index))
        .route("/assets/{file}", get(pages::asset))
        .route("/login", get(pages::login).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/metrics", get(metrics_text))
        .nest("/api", api::routes())
        .fallback(not_found)
        .layer(middleware::from_fn(security_headers))
        .with_state(state);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors, most likely: wait for some to close.
                tracing::warn!("the HTTP listener cannot accept a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        connections.spawn(connection(tcp, app.clone(), cancel.clone()));
        while connections.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(STOP_WAIT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// One HTTP/1 connection, its request heads bounded by [`HEADER_TIMEOUT`].
async fn connection(tcp: tokio::net::TcpStream, app: axum::Router, cancel: CancellationToken) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
    tokio::pin!(served);
    tokio::select! {
        _ = served.as_mut() => return,
        () = cancel.cancelled() => served.as_mut().graceful_shutdown(),
    }
    let _ = served.await;
}

/// Every answer: no framing by other sites, no scripts or styles but our
/// own, no guessing of content types, nothing cached that a token guards.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if path.starts_with("/api/") {
        return api::ApiError::new(StatusCode::NOT_FOUND, format!("no API endpoint {path}"))
            .into_response();
    }
    (
        StatusCode::NOT_FOUND,
        format!("nothing at {path}: the status page is at /, the API under /api/\n"),
    )
        .into_response()
}

async fn metrics_text(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    if !auth::authorized(&state, request.headers()) {
        return auth::unauthorized_text();
    }
    let health = metrics::Health {
        connected_agents: state.live.connected_agents(),
        remote_write: state.live.remote_write(),
        counters: state.live.health(),
    };
    let read = state
        .with_db(move |conn, _| metrics::exposition(conn, &health).map_err(api::ApiError::internal))
        .await;
    match read {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!("/metrics: {}", e.message);
            (e.status, format!("{}\n", e.message)).into_response()
        }
    }
}
