//! The receiver's HTTP listener (`[http]` in `receiver.toml`, off unless
//! configured): `/metrics` for Prometheus. A bearer token guards it when
//! configured (required when it listens beyond the loopback interface).
//!
//! Every answer is read from the database on a blocking thread through its
//! own read-only connection (SQLite's WAL lets readers in while the writer
//! commits), so a scrape never holds up ingestion.

pub mod metrics;

use crate::config::token_matches;
use crate::store;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the handlers need from the running receiver.
pub struct HttpState {
    pub database: PathBuf,
    /// sha256 of the bearer token, if one is required.
    pub token_hash: Option<[u8; 32]>,
    /// Agents connected now.
    pub connected_agents: Box<dyn Fn() -> usize + Send + Sync>,
    /// Each remote-write endpoint's progress.
    pub remote_write: Vec<Arc<crate::remote_write::Progress>>,
    /// The receiver's counters.
    pub health: Arc<crate::health::Health>,
}

/// Serve until `cancel`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await?;
    Ok(())
}

/// Whether the request carries the token (or none is required).
fn authorized(state: &HttpState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.token_hash else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| token_matches(expected, token))
}

fn unauthorized() -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        "a bearer token is required: Authorization: Bearer <[http] token>\n",
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn metrics(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let health = metrics::Health {
        connected_agents: (state.connected_agents)(),
        remote_write: state.remote_write.clone(),
        counters: state.health.clone(),
    };
    let database = state.database.clone();
    let read = tokio::task::spawn_blocking(move || {
        let conn = store::open_existing(&database)?;
        metrics::exposition(&conn, &health)
    })
    .await;
    match read {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::warn!("/metrics: {e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
