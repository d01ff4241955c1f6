//! Who may read the page and the API, and act through them.
//!
//! Without a token (only allowed on the loopback interface) everyone who
//! can connect may. With one, scripts send `Authorization: Bearer <token>`,
//! and browsers post the token once to `/login` and get a cookie holding a
//! random session id (never the token): `HttpOnly` so no script reads it,
//! `SameSite=Strict` so no other site's page sends it. Sessions live in
//! memory: a restarted receiver asks for the token again.
//!
//! Requests that change something (`POST /api/...`) must also be JSON
//! (`Content-Type: application/json`, which a cross-site HTML form cannot
//! send) and, when the browser says where it comes from (`Origin`), come
//! from this page.

use super::HttpState;
use super::api::ApiError;
use crate::config::token_matches;
use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use sandglass_core::hash::{hex, sha256};
use sandglass_core::time::now_ms;
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

/// The cookie's name.
const COOKIE: &str = "sandglass_session";
/// How long a browser stays logged in.
const SESSION_MS: u64 = 12 * 3600 * 1000;
/// Most sessions kept; past it the oldest is dropped (bounded memory even
/// when someone logs in in a loop).
const MAX_SESSIONS: usize = 1024;

/// Logged-in browsers: sha256 of the session id -> when it expires.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<[u8; 32], u64>>);

impl Sessions {
    /// A new session id, remembered until it expires.
    fn open(&self, now_ms: u64) -> std::io::Result<String> {
        let mut id = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut id)?;
        let id = hex(&id);
        let mut sessions = self.0.lock().expect("sessions lock");
        sessions.retain(|_, expires| *expires > now_ms);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(sha256(id.as_bytes()), now_ms + SESSION_MS);
        Ok(id)
    }

    fn valid(&self, id: &str, now_ms: u64) -> bool {
        let sessions = self.0.lock().expect("sessions lock");
        sessions
            .get(&sha256(id.as_bytes()))
            .is_some_and(|expires| *expires > now_ms)
    }

    fn close(&self, id: &str) {
        self.0
            .lock()
            .expect("sessions lock")
            .remove(&sha256(id.as_bytes()));
    }
}

/// The session id in the request's cookie, if any.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Whether the request carries the token or a live session (or none is
/// required).
pub fn authorized(state: &HttpState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.token_hash else {
        return true;
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        return token_matches(expected, token);
    }
    session_cookie(headers).is_some_and(|id| state.sessions.valid(id, now_ms()))
}

/// The API's refusal.
pub fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "a token is required: send Authorization: Bearer <[http] token>, or log in at /login",
    )
}

/// `/metrics`' refusal, in text as Prometheus shows it.
pub fn unauthorized_text() -> Response {
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

/// Refuse a request that changes something unless it is authorized, is
/// JSON, and (when it says) comes from this site.
pub fn check_change(state: &HttpState, headers: &HeaderMap) -> Result<(), ApiError> {
    if !authorized(state, headers) {
        return Err(unauthorized());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the request body as JSON with Content-Type: application/json",
        ));
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if let (Some(origin), Some(host)) = (origin, host) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin_host != host {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("a request from {origin} may not change anything here"),
            ));
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /login` (the form's `token`): a session cookie and the page, or
/// the form again saying the token was wrong.
pub async fn login(State(state): State<Arc<HttpState>>, Form(form): Form<LoginForm>) -> Response {
    let Some(expected) = &state.token_hash else {
        return Redirect::to("/").into_response();
    };
    if !token_matches(expected, &form.token) {
        return Redirect::to("/login?wrong=1").into_response();
    }
    let id = match state.sessions.open(now_ms()) {
        Ok(id) => id,
        Err(e) => return ApiError::internal(anyhow::anyhow!("/dev/urandom: {e}")).into_response(),
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_MS / 1000
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: the session ends.
pub async fn logout(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        state.sessions.close(id);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "sandglass_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_are_bounded_and_the_cookie_is_found_among_others() {
        let sessions = Sessions::default();
        let id = sessions.open(1000).unwrap();
        assert_eq!(id.len(), 64);
        assert!(sessions.valid(&id, 2000));
        assert!(!sessions.valid(&id, 1000 + SESSION_MS));
        assert!(!sessions.valid("guessed", 2000));
        for _ in 0..MAX_SESSIONS + 5 {
            sessions.open(3000).unwrap();
        }
        assert!(sessions.0.lock().unwrap().len() <= MAX_SESSIONS);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; sandglass_session=abc; x=1"),
        );
        assert_eq!(session_cookie(&headers), Some("abc"));
    }
}
