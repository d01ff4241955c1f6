//! `/api/...`: what the page shows, as JSON, for the page and for scripts
//! (`docs/http-api.md`). Reads take query parameters; an unknown one is an
//! error naming it, not silently ignored. Changes (`POST`) take a JSON
//! body and go through the same functions as `receiver ack` and
//! `receiver maintenance`. Every error is `{"error": "..."}` with a 4xx
//! status saying whose fault it is (5xx only for the receiver's own).

use super::{HttpState, auth, hosts, series};
use crate::notify::admin;
use crate::query::when::TimeArg;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandglass_core::time::now_ms;
use sandglass_core::units::HumanDuration;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

const DAY_MS: u64 = 86_400_000;

/// An answer that is not what was asked for: status and message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// The receiver's own failure (its database), logged.
    pub fn internal(e: anyhow::Error) -> ApiError {
        tracing::warn!("HTTP API: {e:#}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> ApiError {
        ApiError::internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            json_body(&serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

fn json_body<T: Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => ApiError::internal(e.into()).into_response(),
    }
}

/// A handler's answer: JSON, or an error as JSON.
pub type ApiResult<T> = Result<Json<T>, ApiError>;

/// A value answered as JSON.
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        json_body(&self.0)
    }
}

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/hosts", get(host_list))
        .route("/hosts/{host}", get(host_page))
        .route("/series", get(series_values))
        .route("/events", get(event_list))
        .route("/ack", post(ack))
        .route("/maintenance", post(maintenance))
        .route("/maintenance/{id}/end", post(end_maintenance))
}

/// A request's query parameters, taken one by one; what is left over is an
/// error naming it.
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// The value of `name` (the last, if repeated).
    pub fn take(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        self.0.retain(|(k, v)| {
            if k == name {
                found = Some(v.clone());
            }
            k != name
        });
        found.filter(|v| !v.is_empty())
    }

    /// Every value of `name`.
    pub fn take_all(&mut self, name: &str) -> Vec<String> {
        let (taken, rest) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(k, _)| k == name);
        self.0 = rest;
        taken.into_iter().map(|(_, v)| v).collect()
    }

    /// `name` as a number in `range`, or `default`.
    pub fn number(
        &mut self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
        default: u64,
    ) -> Result<u64, ApiError> {
        let Some(text) = self.take(name) else {
            return Ok(default);
        };
        text.parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name}={text:?}: give a whole number from {} to {}",
                    range.start(),
                    range.end()
                ))
            })
    }

    /// `name` as a time (`1h` back from now, or ISO-8601), if given.
    pub fn time(&mut self, name: &str, now_ms: u64) -> Result<Option<u64>, ApiError> {
        let Some(text) = self.take(name) else {
            return Ok(None);
        };
        let at: TimeArg = text
            .parse()
            .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))?;
        Ok(Some(at.resolve(now_ms)))
    }

    /// Fail if a parameter was not taken: a typo must not pass for "all".
    pub fn finish(self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(ApiError::bad_request(format!(
                "unknown parameter {k:?}: this endpoint takes {}",
                known.join(", ")
            ))),
        }
    }
}

/// `GET /api/hosts?status=&group=&name=&page=&per_page=`.
async fn host_list(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<hosts::HostList> {
    read_only(&state, &headers)?;
    let mut params = Params(pairs);
    let filter = hosts::Filter::from_params(&mut params, &state.live.model())?;
    params.finish(&["status", "group", "name", "page", "per_page"])?;
    state
        .with_db(move |conn, _| hosts::list(conn, &filter))
        .await
        .map(Json)
}

/// `GET /api/hosts/{host}`.
async fn host_page(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(host): Path<String>,
) -> ApiResult<hosts::HostPage> {
    read_only(&state, &headers)?;
    state
        .with_db(move |conn, state| hosts::page(conn, state.live.as_ref(), &host, now_ms()))
        .await
        .map(Json)
}

/// `GET /api/series?host=&service=&metric=&label=k=v&since=&until=&width=&agg=`.
async fn series_values(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<series::Series> {
    read_only(&state, &headers)?;
    let query = series::request(Params(pairs), now_ms())?;
    state
        .with_db(move |conn, _| series::read(conn, &query))
        .await
        .map(Json)
}

/// `GET /api/events?host=&service=&since=&limit=`.
async fn event_list(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Vec<crate::events::EventView>> {
    read_only(&state, &headers)?;
    let mut params = Params(pairs);
    let host = params.take("host");
    let service = params.take("service");
    let now = now_ms();
    let since_ms = params.time("since", now)?.unwrap_or(now - DAY_MS);
    let limit = params.number("limit", 1..=10_000, 100)? as usize;
    params.finish(&["host", "service", "since", "limit"])?;
    state
        .with_db(move |conn, _| {
            if let Some(h) = &host {
                hosts::check_host(conn, h)?;
            }
            let filter = crate::events::Filter {
                host: host.as_deref(),
                service: service.as_deref(),
                since_ms,
                limit,
            };
            crate::events::events(conn, &filter).map_err(ApiError::internal)
        })
        .await
        .map(Json)
}

fn read_only(state: &HttpState, headers: &HeaderMap) -> Result<(), ApiError> {
    if auth::authorized(state, headers) {
        Ok(())
    } else {
        Err(auth::unauthorized())
    }
}

/// A change's JSON body, read after [`auth::check_change`].
fn body<T: DeserializeOwned>(
    state: &HttpState,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<T, ApiError> {
    auth::check_change(state, headers)?;
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("the JSON body: {e}")))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    host: String,
    service: Option<String>,
    #[serde(default)]
    comment: String,
}

#[derive(Serialize)]
struct Created {
    id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until_ms: Option<u64>,
}

/// `POST /api/ack {"host", "service"?, "comment"?}`: as `receiver ack`.
async fn ack(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let request: AckRequest = body(&state, &headers, &bytes)?;
    let id = state
        .with_db(move |conn, _| {
            hosts::check_host(conn, &request.host)?;
            if let Some(service) = &request.service {
                hosts::check_service(conn, &request.host, service)?;
            }
            admin::ack(
                conn,
                &request.host,
                request.service.as_deref(),
                &request.comment,
                now_ms(),
            )
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("{e:#}")))
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id,
            from_ms: None,
            until_ms: None,
        }),
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceRequest {
    host: Option<String>,
    group: Option<String>,
    /// How long from `from` (or now): `2h`.
    #[serde(rename = "for")]
    duration: Option<String>,
    /// Start and end: Unix ms, or `YYYY-MM-DDTHH:MM[:SS]` UTC.
    from: Option<serde_json::Value>,
    until: Option<serde_json::Value>,
    #[serde(default)]
    comment: String,
}

/// A time in a JSON body: Unix ms, or text as `receiver maintenance` takes.
fn body_time(name: &str, value: &serde_json::Value) -> Result<u64, ApiError> {
    let parsed = match value {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| anyhow::anyhow!("negative")),
        serde_json::Value::String(s) => admin::parse_time(s),
        _ => Err(anyhow::anyhow!("not a time")),
    };
    parsed.map_err(|e| {
        ApiError::bad_request(format!(
            "{name}: {e:#} (give Unix milliseconds or \"YYYY-MM-DDTHH:MM\" UTC)"
        ))
    })
}

/// `POST /api/maintenance {"host"|"group", "for"|"until", "from"?,
/// "comment"?}`: as `receiver maintenance`.
async fn maintenance(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let r: MaintenanceRequest = body(&state, &headers, &bytes)?;
    let now = now_ms();
    let scope = match (r.host, r.group) {
        (Some(h), None) => admin::Scope::Host(h),
        (None, Some(g)) => admin::Scope::Group(g),
        _ => return Err(ApiError::bad_request("give either \"host\" or \"group\"")),
    };
    let from = r
        .from
        .map(|v| body_time("from", &v))
        .transpose()?
        .unwrap_or(now);
    let until = match (r.duration, r.until) {
        (Some(d), None) => {
            let HumanDuration(d) = d.parse().map_err(|e| {
                ApiError::bad_request(format!("for: {e} (e.g. \"30m\", \"2h\", \"1d\")"))
            })?;
            from + d.as_millis() as u64
        }
        (None, Some(u)) => body_time("until", &u)?,
        _ => {
            return Err(ApiError::bad_request(
                "say how long: \"for\": \"2h\", or \"until\"",
            ));
        }
    };
    let model = state.live.model();
    let id = state
        .with_db(move |conn, _| {
            admin::maintenance(conn, &model, &scope, (from, until), &r.comment, now).map_err(|e| {
                let status = match scope {
                    admin::Scope::Host(ref h) if !model.hosts.contains_key(h) => {
                        StatusCode::NOT_FOUND
                    }
                    _ => StatusCode::BAD_REQUEST,
                };
                ApiError::new(status, format!("{e:#}"))
            })
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id,
            from_ms: Some(from),
            until_ms: Some(until),
        }),
    ))
}

/// `POST /api/maintenance/{id}/end` (body `{}`): the window ends now.
async fn end_maintenance(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<serde_json::Value> {
    auth::check_change(&state, &headers)?;
    state
        .with_db(move |conn, _| {
            admin::end_maintenance(conn, id, now_ms())
                .map_err(|e| ApiError::not_found(format!("{e:#}")))
        })
        .await?;
    Ok(Json(serde_json::json!({ "ended": id })))
}
