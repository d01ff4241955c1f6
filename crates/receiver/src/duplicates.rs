//! Two agents configured with the same `host_id` replace each other's
//! connection over and over; each replacement alone looks like a reconnect.
//! This notices the pattern — a host replaced by a connection from another
//! address several times within a window — and says so, once per window.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Replacements from different addresses within [`WINDOW_MS`] that count
/// as two agents fighting over one host id.
const REPLACEMENTS: u32 = 3;
const WINDOW_MS: u64 = 60_000;

#[derive(Default)]
pub struct Duplicates {
    hosts: HashMap<String, Window>,
}

struct Window {
    start_ms: u64,
    count: u32,
    warned: bool,
}

impl Duplicates {
    /// Connection `old` of `host` was replaced by `new` at `now_ms`; the
    /// warning to give, if this looks like two agents with one host id.
    pub fn replaced(
        &mut self,
        host: &str,
        old: SocketAddr,
        new: SocketAddr,
        now_ms: u64,
    ) -> Option<String> {
        // An agent reconnecting replaces its own stale connection from the
        // same host; only replacements from elsewhere count.
        if old.ip() == new.ip() && old.port() == new.port() {
            return None;
        }
        let window = self.hosts.entry(host.to_owned()).or_insert(Window {
            start_ms: now_ms,
            count: 0,
            warned: false,
        });
        if now_ms.saturating_sub(window.start_ms) > WINDOW_MS {
            *window = Window {
                start_ms: now_ms,
                count: 0,
                warned: false,
            };
        }
        window.count += 1;
        if window.count < REPLACEMENTS || window.warned {
            return None;
        }
        window.warned = true;
        Some(format!(
            "two agents use host_id {host} (from {old} and {new}): they replaced each other {} times within {} s; give each host its own host_id and token",
            window.count,
            WINDOW_MS / 1000
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_agents_fighting_over_one_host_id_are_named_once_per_window() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:4000".parse().unwrap(),
            "10.0.0.2:5000".parse().unwrap(),
        );
        let mut d = Duplicates::default();
        assert_eq!(d.replaced("h", a, b, 0), None);
        assert_eq!(d.replaced("h", b, a, 500), None);
        let warning = d.replaced("h", a, b, 1_000).expect("third time warns");
        assert!(warning.contains("host_id h"), "{warning}");
        assert_eq!(d.replaced("h", b, a, 1_500), None, "once per window");
        // A plain reconnect from the same address is not a duplicate.
        assert_eq!(d.replaced("x", a, a, 0), None);
        assert_eq!(d.replaced("x", a, a, 1), None);
        assert_eq!(d.replaced("x", a, a, 2), None);
    }
}
