//! A compact encoding for numbers carried from one run to the next, and the
//! rate computation most collectors need from them.
//!
//! The host keeps a plugin's state between runs and across agent restarts; it
//! is opaque bytes to the host. [`Counters`] is a simple, versioned text
//! encoding: a line `t <unix seconds>` followed by `key<TAB>value` lines.

use std::collections::HashMap;

const MAGIC: &str = "sgc1";

/// Counter values at one point in time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// When the values were read, in seconds since the Unix epoch.
    pub time: f64,
    values: HashMap<String, f64>,
}

impl Counters {
    /// Empty counters read at `time`.
    pub fn new(time: f64) -> Self {
        Counters {
            time,
            values: HashMap::new(),
        }
    }

    /// Decode what [`Counters::encode`] produced. Anything else (another
    /// format, a truncated blob) gives `None`: the run then simply has no
    /// previous values, as on a first run.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        let time = lines.next()?.strip_prefix(MAGIC)?.trim().parse().ok()?;
        let mut counters = Counters::new(time);
        for line in lines {
            let (key, value) = line.split_once('\t')?;
            counters.values.insert(key.to_owned(), value.parse().ok()?);
        }
        Some(counters)
    }

    /// Encode for [`crate::Context::set_state`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{MAGIC} {}\n", self.time);
        for (key, value) in &self.values {
            out.push_str(key);
            out.push('\t');
            out.push_str(&value.to_string());
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Record `value` under `key` (tabs and newlines in keys become spaces).
    pub fn set(&mut self, key: &str, value: f64) {
        let key = key.replace(['\t', '\n'], " ");
        self.values.insert(key, value);
    }

    /// The value recorded under `key`.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }

    /// Per-second rate of `key` from `previous` to `self`: `None` on a first
    /// run, when time did not advance, or when the counter went backwards
    /// (a reset or wrap).
    pub fn rate(&self, previous: Option<&Counters>, key: &str) -> Option<f64> {
        let previous = previous?;
        let elapsed = self.time - previous.time;
        let delta = self.get(key)? - previous.get(key)?;
        (elapsed > 0.0 && delta >= 0.0).then(|| delta / elapsed)
    }

    /// Change of `key` from `previous` to `self`, `None` when unknown or negative.
    pub fn delta(&self, previous: Option<&Counters>, key: &str) -> Option<f64> {
        let delta = self.get(key)? - previous?.get(key)?;
        (delta >= 0.0).then_some(delta)
    }
}

/// Seconds since the Unix epoch, from the sandbox's wall clock.
pub fn now() -> f64 {
    crate::host::now().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let mut c = Counters::new(1700000000.5);
        c.set("eth0\trx", 12345.0);
        c.set("lo", 0.25);
        let back = Counters::decode(&c.encode()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.get("eth0 rx"), Some(12345.0));
    }

    #[test]
    fn garbage_decodes_to_none() {
        assert_eq!(Counters::decode(b"\xff\xfe"), None);
        assert_eq!(Counters::decode(b"other 1\n"), None);
        assert_eq!(Counters::decode(b"sgc1 10\nkey-without-value\n"), None);
    }

    #[test]
    fn rate_needs_previous_time_progress_and_no_reset() {
        let mut old = Counters::new(100.0);
        old.set("x", 1000.0);
        let mut new = Counters::new(110.0);
        new.set("x", 1500.0);
        assert_eq!(new.rate(Some(&old), "x"), Some(50.0));
        assert_eq!(new.rate(None, "x"), None);
        assert_eq!(new.rate(Some(&old), "missing"), None);
        new.set("x", 10.0);
        assert_eq!(new.rate(Some(&old), "x"), None, "counter reset");
        let same_time = Counters { time: 100.0, ..new };
        assert_eq!(same_time.rate(Some(&old), "x"), None);
    }
}
