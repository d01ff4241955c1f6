//! The receiver's own health, counted as it runs and shown on `/metrics`:
//! batches, reports and samples received, gap records, plugin failures by
//! reason, and how long a batch waits for its commit.

use sandglass_core::report::Level;
use sandglass_protocol::{Entry, ReportBatch};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the commit latency histogram's buckets.
pub const COMMIT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Why a plugin run failed, from the text of its UNKNOWN report: the
/// runtime writes each failure with one of these openings
/// (`sandglass_runtime::failure::RunFailure`, which the receiver does not
/// depend on). A plugin's own UNKNOWN verdict matches none: not a failure.
const FAILURE_OPENINGS: [(&str, &str); 12] = [
    ("fuel limit ", "fuel"),
    ("deadline ", "deadline"),
    ("memory limit ", "memory"),
    ("output limit: ", "output"),
    ("open files limit ", "open_files"),
    ("stdout/stderr limit ", "stdio"),
    ("state limit ", "state"),
    ("trap: ", "trap"),
    ("plugin error: ", "plugin_error"),
    ("command exited with a failure status", "exit"),
    ("unreadable output: ", "unreadable_output"),
    ("not run: ", "not_run"),
];

/// Counters since the receiver started.
#[derive(Debug, Default)]
pub struct Health {
    pub batches: AtomicU64,
    pub reports: AtomicU64,
    pub samples: AtomicU64,
    /// Gap records agents sent (each stands for reports they lost).
    pub gaps: AtomicU64,
    /// Failed plugin runs, by reason (see [`FAILURE_OPENINGS`]).
    failures: Mutex<Vec<(&'static str, u64)>>,
    /// Batches per commit latency bucket (the last is +Inf).
    commit_buckets: [AtomicU64; COMMIT_BUCKETS.len() + 1],
    commit_micros: AtomicU64,
}

/// The commit latency histogram: cumulative bucket counts (the last is
/// +Inf, the count), and the sum in seconds.
pub struct CommitLatency {
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
}

impl Health {
    /// A batch the receiver is about to store.
    pub fn received(&self, batch: &ReportBatch) {
        self.batches.fetch_add(1, Relaxed);
        for entry in &batch.entries {
            match entry {
                Entry::Report(report) => {
                    self.reports.fetch_add(1, Relaxed);
                    self.samples.fetch_add(report.samples.len() as u64, Relaxed);
                    if report.status.level == Level::Unknown
                        && let Some(reason) = failure_reason(&report.status.text)
                    {
                        let mut failures = self.failures.lock().expect("failures lock");
                        match failures.iter_mut().find(|(r, _)| *r == reason) {
                            Some((_, n)) => *n += 1,
                            None => failures.push((reason, 1)),
                        }
                    }
                }
                Entry::Gap(_) => {
                    self.gaps.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// A batch was committed `waited` after it was queued for the store.
    pub fn committed(&self, waited: Duration) {
        let seconds = waited.as_secs_f64();
        let bucket = COMMIT_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(COMMIT_BUCKETS.len());
        self.commit_buckets[bucket].fetch_add(1, Relaxed);
        self.commit_micros
            .fetch_add(waited.as_micros() as u64, Relaxed);
    }

    /// Failures by reason, sorted.
    pub fn failures(&self) -> Vec<(&'static str, u64)> {
        let mut failures = self.failures.lock().expect("failures lock").clone();
        failures.sort();
        failures
    }

    pub fn commit_latency(&self) -> CommitLatency {
        let mut total = 0;
        let cumulative = self
            .commit_buckets
            .iter()
            .map(|n| {
                total += n.load(Relaxed);
                total
            })
            .collect();
        CommitLatency {
            cumulative,
            sum_seconds: self.commit_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// The reason of a failed run's status text, if it is one.
fn failure_reason(text: &str) -> Option<&'static str> {
    FAILURE_OPENINGS
        .iter()
        .find(|(opening, _)| text.starts_with(opening))
        .map(|(_, reason)| *reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_core::report::{Cost, Report, Status};
    use sandglass_protocol::Gap;

    fn report(level: Level, text: &str) -> Entry {
        Entry::Report(Report {
            service: "s".into(),
            plugin: "p".into(),
            time_ms: 1,
            status: Status {
                level,
                text: text.into(),
            },
            samples: Vec::new(),
            cost: Cost::default(),
        })
    }

    #[test]
    fn failures_are_counted_by_reason_and_a_plugins_own_unknown_is_not_one() {
        let health = Health::default();
        health.received(&ReportBatch {
            seq: 1,
            settled: 0,
            entries: vec![
                report(Level::Unknown, "fuel limit 1000 exhausted"),
                report(Level::Unknown, "deadline 2s exceeded"),
                report(Level::Unknown, "fuel limit 5 exhausted"),
                report(Level::Unknown, "no data from the device yet"),
                report(Level::Crit, "fuel limit is a word in a CRIT text"),
                Entry::Gap(Gap {
                    reports: 3,
                    first_ms: 1,
                    last_ms: 2,
                    reason: "spool full".into(),
                }),
            ],
        });
        assert_eq!(health.failures(), vec![("deadline", 1), ("fuel", 2)]);
        assert_eq!(health.batches.load(Relaxed), 1);
        assert_eq!(health.reports.load(Relaxed), 5);
        assert_eq!(health.gaps.load(Relaxed), 1);
    }

    #[test]
    fn commit_latency_falls_in_cumulative_buckets() {
        let health = Health::default();
        health.committed(Duration::from_micros(500));
        health.committed(Duration::from_millis(30));
        health.committed(Duration::from_secs(9));
        let latency = health.commit_latency();
        assert_eq!(latency.cumulative[0], 1); // <= 1 ms
        assert_eq!(latency.cumulative[4], 1); // <= 25 ms
        assert_eq!(latency.cumulative[5], 2); // <= 50 ms
        assert_eq!(latency.cumulative[11], 2); // <= 5 s
        assert_eq!(latency.cumulative[12], 3); // +Inf
        assert!((latency.sum_seconds - 9.0305).abs() < 1e-9);
    }
}
