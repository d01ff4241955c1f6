//! `[http]` in `receiver.toml`: where the HTTP listener (`/metrics`)
//! listens, and the bearer token it requires.

use anyhow::bail;
use sandglass_core::hash::sha256;
use serde::Deserialize;

/// `[http]`: the receiver's HTTP listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    listen: String,
    token: Option<String>,
}

/// `[http]` of the receiver.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpSettings {
    pub listen: String,
    /// sha256 of the bearer token, if one is required.
    pub token_hash: Option<[u8; 32]>,
}

impl RawHttp {
    /// Beyond the loopback interface, a token is required: the page and
    /// the metrics tell what runs where.
    pub(super) fn resolve(self) -> anyhow::Result<HttpSettings> {
        let loopback = match self.listen.parse::<std::net::SocketAddr>() {
            Ok(address) => address.ip().is_loopback(),
            Err(_) => self.listen.starts_with("localhost:"),
        };
        if let Some(token) = &self.token
            && token.len() < 8
        {
            bail!("token is shorter than 8 characters: use a long random one");
        }
        if !loopback && self.token.is_none() {
            bail!(
                "listen = {:?} is reachable from other machines: set token = \"...\" (clients send Authorization: Bearer <token>) or listen on 127.0.0.1",
                self.listen
            );
        }
        Ok(HttpSettings {
            listen: self.listen,
            token_hash: self.token.map(|t| sha256(t.as_bytes())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(listen: &str, token: Option<&str>) -> anyhow::Result<HttpSettings> {
        RawHttp {
            listen: listen.into(),
            token: token.map(Into::into),
        }
        .resolve()
    }

    #[test]
    fn beyond_the_loopback_interface_a_token_is_required() {
        assert_eq!(http("127.0.0.1:7532", None).unwrap().token_hash, None);
        assert!(http("[::1]:7532", None).is_ok());
        assert!(http("localhost:7532", None).is_ok());
        let err = http("0.0.0.0:7532", None).unwrap_err().to_string();
        assert!(
            err.contains("token") && err.contains("0.0.0.0:7532"),
            "{err}"
        );
        let err = http("0.0.0.0:7532", Some("short")).unwrap_err().to_string();
        assert!(err.contains("8 characters"), "{err}");
        assert_eq!(
            http("0.0.0.0:7532", Some("long-enough-token"))
                .unwrap()
                .token_hash,
            Some(sha256(b"long-enough-token"))
        );
    }
}
