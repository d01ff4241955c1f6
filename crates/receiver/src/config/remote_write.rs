//! `[[remote_write]]` in `receiver.toml`: Prometheus remote-write endpoints
//! (VictoriaMetrics, Prometheus, Mimir, ...) that every stored sample is
//! forwarded to (docs/operations.md, "Remote write").
//!
//! ```toml
//! [[remote_write]]
//! name = "vm"                                  # names the endpoint in logs and metrics
//! url = "http://127.0.0.1:8428/api/v1/write"   # plain http only
//! timeout = "10s"                              # one send, connection to answer
//! max_samples_per_send = 5000                  # samples per request
//! max_pending_reports = 10000000               # past it the oldest are skipped, counted
//! backoff = "200ms"                            # after a failed send; doubles ...
//! max_backoff = "10s"                          # ... up to this (also the longest wait after an outage ends)
//! bearer_token = "..."                         # or basic_auth = { username = "u", password = "p" }
//! ```

use super::notify::http_url;
use sandglass_core::names::check_name;
use sandglass_core::units::HumanDuration;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemoteWrite {
    name: String,
    url: String,
    timeout: Option<HumanDuration>,
    max_samples_per_send: Option<usize>,
    max_pending_reports: Option<u64>,
    backoff: Option<HumanDuration>,
    max_backoff: Option<HumanDuration>,
    bearer_token: Option<String>,
    basic_auth: Option<BasicAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuth {
    username: String,
    password: String,
}

/// One validated `[[remote_write]]` endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteWrite {
    pub name: String,
    pub url: String,
    /// `host:port` to connect to.
    pub address: String,
    pub path: String,
    pub timeout: Duration,
    pub max_samples_per_send: usize,
    /// Reports stored but not yet acknowledged by the endpoint, at most;
    /// past it the oldest are skipped (counted and logged), so an endpoint
    /// that is gone for days does not make the receiver send days of data.
    pub max_pending_reports: u64,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// The `Authorization` header value, if the endpoint wants one.
    pub authorization: Option<String>,
}

/// Validate every endpoint; names must be unique (they key the cursor).
pub(super) fn resolve(raw: Vec<RawRemoteWrite>) -> anyhow::Result<Vec<RemoteWrite>> {
    let mut out: Vec<RemoteWrite> = Vec::new();
    for r in raw {
        let where_ = format!("[[remote_write]] name = {:?}", r.name);
        let endpoint = r.resolve().map_err(|e| anyhow::anyhow!("{where_}: {e}"))?;
        if out.iter().any(|o| o.name == endpoint.name) {
            anyhow::bail!("{where_}: two endpoints have this name: rename one of them");
        }
        out.push(endpoint);
    }
    Ok(out)
}

impl RawRemoteWrite {
    fn resolve(self) -> Result<RemoteWrite, String> {
        check_name(&self.name).map_err(|e| format!("name {e}"))?;
        let (address, path) = http_url(
            &self.url,
            "for https put a local TLS proxy (e.g. stunnel) in front of the endpoint",
        )
        .map_err(|e| format!("url {e}"))?;
        let timeout = self.timeout.map_or(Duration::from_secs(10), |d| d.0);
        if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(600) {
            return Err(format!(
                "timeout = \"{}ms\": write between 100ms and 10m",
                timeout.as_millis()
            ));
        }
        let max_samples_per_send = self.max_samples_per_send.unwrap_or(5_000);
        if !(1..=1_000_000).contains(&max_samples_per_send) {
            return Err(format!(
                "max_samples_per_send = {max_samples_per_send}: write between 1 and 1000000"
            ));
        }
        let max_pending_reports = self.max_pending_reports.unwrap_or(10_000_000);
        if max_pending_reports == 0 {
            return Err("max_pending_reports = 0: write at least 1".into());
        }
        let backoff = self.backoff.map_or(Duration::from_millis(200), |d| d.0);
        let max_backoff = self.max_backoff.map_or(Duration::from_secs(10), |d| d.0);
        if backoff.is_zero() || max_backoff < backoff {
            return Err("backoff must be above 0 and max_backoff at least backoff".into());
        }
        let authorization = match (self.bearer_token, self.basic_auth) {
            (Some(_), Some(_)) => {
                return Err("bearer_token and basic_auth both set: keep one".into());
            }
            (Some(token), None) => Some(format!("Bearer {}", header_safe(&token)?)),
            (None, Some(auth)) => Some(format!(
                "Basic {}",
                base64(format!("{}:{}", auth.username, auth.password).as_bytes())
            )),
            (None, None) => None,
        };
        Ok(RemoteWrite {
            name: self.name,
            url: self.url,
            address,
            path,
            timeout,
            max_samples_per_send,
            max_pending_reports,
            backoff,
            max_backoff,
            authorization,
        })
    }
}

/// A value that cannot break the request's header lines.
fn header_safe(value: &str) -> Result<&str, String> {
    if value.is_empty() || value.chars().any(|c| c.is_control()) {
        return Err("bearer_token is empty or holds control characters".into());
    }
    Ok(value)
}

/// Standard base64 with padding (RFC 4648), for the Basic header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Vec<RemoteWrite>> {
        #[derive(Deserialize)]
        struct Doc {
            remote_write: Vec<RawRemoteWrite>,
        }
        resolve(toml::from_str::<Doc>(text)?.remote_write)
    }

    #[test]
    fn an_endpoint_gets_its_defaults_and_its_authorization_header() {
        let endpoints = parse(
            "[[remote_write]]\nname = \"vm\"\nurl = \"http://127.0.0.1:8428/api/v1/write\"\n\
             basic_auth = { username = \"Aladdin\", password = \"open sesame\" }\n\
             [[remote_write]]\nname = \"mimir\"\nurl = \"http://mimir\"\nbearer_token = \"t0k\"\n",
        )
        .unwrap();
        assert_eq!(endpoints[0].address, "127.0.0.1:8428");
        assert_eq!(endpoints[0].path, "/api/v1/write");
        assert_eq!(endpoints[0].timeout, Duration::from_secs(10));
        assert_eq!(endpoints[0].max_samples_per_send, 5_000);
        assert_eq!(
            endpoints[0].authorization.as_deref(),
            Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        );
        assert_eq!(endpoints[1].address, "mimir:80");
        assert_eq!(endpoints[1].path, "/");
        assert_eq!(endpoints[1].authorization.as_deref(), Some("Bearer t0k"));
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }

    #[test]
    fn mistakes_are_named_with_their_fix() {
        for (text, expected) in [
            (
                "name = \"vm\"\nurl = \"https://vm/api/v1/write\"",
                "TLS proxy",
            ),
            (
                "name = \"vm\"\nurl = \"http://vm/\"\ntimeout = \"1ms\"",
                "between 100ms",
            ),
            (
                "name = \"vm\"\nurl = \"http://vm/\"\nmax_samples_per_send = 0",
                "between 1",
            ),
            (
                "name = \"vm\"\nurl = \"http://vm/\"\nbatch = 3",
                "unknown field",
            ),
            (
                "name = \"vm\"\nurl = \"http://vm/\"\nbearer_token = \"a\"\nbasic_auth = { username = \"u\", password = \"p\" }",
                "keep one",
            ),
            ("name = \"a b\"\nurl = \"http://vm/\"", "name"),
        ] {
            let e = format!(
                "{:#}",
                parse(&format!("[[remote_write]]\n{text}\n")).unwrap_err()
            );
            assert!(e.contains(expected), "{text}: {e}");
        }
        let e = parse(
            "[[remote_write]]\nname = \"vm\"\nurl = \"http://a/\"\n\
             [[remote_write]]\nname = \"vm\"\nurl = \"http://b/\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("two endpoints"), "{e}");
    }
}
