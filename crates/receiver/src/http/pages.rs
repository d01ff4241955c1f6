//! The status page: one HTML file, a script and a style sheet, compiled
//! into the binary (`crates/receiver/assets/`); nothing is fetched from
//! elsewhere. The script reads `/api/...` and redraws in place every few
//! seconds; plots are SVG it draws from the points the API gives.

use super::{HttpState, auth};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::sync::Arc;

const INDEX: &str = include_str!("../../assets/index.html");
const LOGIN: &str = include_str!("../../assets/login.html");

/// The files under `/assets/`, with their content types.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app.js"),
    ),
    (
        "plot.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/plot.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/app.css"),
    ),
];

/// `/` and `/hosts/{host}`: the page (the script reads which from the
/// address), or the login form when a token is needed.
pub async fn index(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if !auth::authorized(&state, &headers) {
        return Redirect::to("/login").into_response();
    }
    Html(INDEX).into_response()
}

/// `GET /login`: the form asking for the token.
pub async fn login(
    State(state): State<Arc<HttpState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if state.token_hash.is_none() {
        return Redirect::to("/").into_response();
    }
    let note = if query.contains_key("wrong") {
        "<p class=\"error\">That is not the token: see <code>[http] token</code> in receiver.toml.</p>"
    } else {
        ""
    };
    Html(LOGIN.replace("<!--NOTE-->", note)).into_response()
}

/// `/assets/{file}`: the script and style, cacheable for an hour (a new
/// receiver version may change them).
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, ..)| *name == file) {
        Some((_, kind, text)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            *text,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, format!("no asset {file:?}\n")).into_response(),
    }
}
