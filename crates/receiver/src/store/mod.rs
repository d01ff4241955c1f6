//! The embedded store: SQLite in WAL mode with `synchronous = FULL`, so a
//! committed transaction survives a crash or a power cut. One writer thread
//! owns the write connection and commits whatever has queued up as one
//! transaction (group commit: one fsync for many batches); a batch is
//! acknowledged only after the transaction holding it has committed.
//!
//! Reports are indexed by (service, time); a report row holds its values
//! and names the layout of its series, stored once per service, so one
//! metric can be read over time without decoding the rest of what the
//! service sent ([`samples`]).
//!
//! Every agent numbers its spool entries per stream; `stored_ranges` keeps
//! exactly which numbers are stored per (host, stream) ([`super::streams`]),
//! updated in the same transaction as the reports, so an entry sent twice
//! (after a lost Ack, a reconnect or a restart of either side) is
//! acknowledged again but stored once, and a number is never acknowledged
//! unless it is stored.
//!
//! A failed write is answered by what the agent should do about it: a
//! transient failure (disk full, I/O error, database busy) fails the whole
//! transaction and every batch in it is to be sent again; any other failure
//! of one batch rolls back that batch alone, which is refused for good
//! ([`Refusal::Rejected`]) so that it cannot block the agent's stream.

mod ops;
mod plugin_runs;
mod prepared;
mod read;
pub mod retention;
pub mod samples;
mod schema;
#[cfg(test)]
mod tests;

pub use prepared::{Prepared, PreparedEntry, PreparedReport, SeriesCache};
pub use read::{
    StoredReport, host_names, last_report_rowid, latest, parsed, remembered, reports,
    reports_after, service_names, services_of,
};
pub use schema::{open, open_existing, write_heartbeat, write_meta};

use crate::liveness::{Change, HostStatus, Tracker};
use ops::{Caches, apply_op};
use rusqlite::Connection;
use sandglass_core::report::Level;
use sandglass_core::time::now_ms;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Most queued work folded into one transaction.
const MAX_GROUP: usize = 1024;

/// A write for the writer thread.
pub enum Op {
    /// Store a batch; `done` hears back after commit (or the error).
    Batch {
        host: String,
        /// The agent's spool stream the entries are numbered in.
        stream: u64,
        batch: Prepared,
        /// Added to report and gap times to correct the agent's clock.
        offset_ms: i64,
        received_ms: u64,
        done: oneshot::Sender<Result<u64, Refusal>>,
    },
    /// An agent authenticated.
    Connected {
        host: String,
        peer: String,
        agent_version: String,
        plugins: String,
        time_ms: u64,
    },
    Disconnected {
        host: String,
    },
    /// The configuration's services per host, and the hosts' status (a
    /// host the store does not know yet starts with it).
    Scheduled {
        services: Vec<ScheduledService>,
        hosts: Vec<ScheduledHost>,
        time_ms: u64,
    },
    /// The checked versions of the plugins of `plugin_dir`: recorded with
    /// the time first seen (a version seen before keeps its time).
    PluginVersions {
        versions: Vec<PluginVersion>,
        time_ms: u64,
    },
    /// Liveness changes, with the host's resulting status.
    Changes {
        changes: Vec<Change>,
    },
    /// The receiver is alive at `time_ms` (or, `running` false, stopping),
    /// so that `receiver status` can tell live data from a stopped
    /// receiver's last word.
    Heartbeat {
        time_ms: u64,
        running: bool,
    },
    /// Delete at most `max_rows` rows older than `before_ms`; `done` hears
    /// how many went (see `retention`).
    Prune {
        before_ms: u64,
        /// Recorded for `receiver status`.
        retention_ms: u64,
        max_rows: usize,
        done: mpsc::Sender<usize>,
    },
}

/// A service the configuration schedules on a host.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduledService {
    pub host: String,
    pub service: String,
    pub plugin: String,
    /// The plugin build the schedule pins: the reports that arrive while
    /// it is pinned are counted as its runs (`plugin_runs`).
    pub sha256: Option<String>,
    pub interval_ms: u64,
}

/// One checked build of a plugin.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginVersion {
    pub plugin: String,
    pub sha256: String,
    pub size: u64,
}

/// A configured host and its status, since when and why.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduledHost {
    pub host: String,
    pub status: HostStatus,
    pub since_ms: u64,
    pub reason: String,
}

/// The newest report of a service in a committed batch, for liveness.
pub struct Seen {
    pub host: String,
    pub service: String,
    pub time_ms: u64,
    pub level: Level,
    pub text: String,
}

/// Why a batch was not stored.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The store could not write now (disk full, I/O error): send it again.
    Transient(String),
    /// This batch can never be stored: the agent counts it lost and goes on.
    Rejected(String),
}

/// The handle the server uses to queue writes.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Op>,
}
impl Store {
    /// Start the writer thread on `conn`; it updates `tracker` after each
    /// commit. The thread ends when every `Store` handle is dropped.
    pub fn start(
        conn: Connection,
        tracker: Arc<Mutex<Tracker>>,
    ) -> (Store, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || Writer::new(conn, tracker).run(rx))
            .expect("spawn the store writer");
        (Store { tx }, thread)
    }

    /// Queue a heartbeat: the receiver is alive now (or, `running` false,
    /// stopping).
    pub async fn heartbeat(&self, running: bool) {
        self.send(Op::Heartbeat {
            time_ms: now_ms(),
            running,
        })
        .await;
    }

    /// Queue a write; waits only when the writer is far behind.
    pub async fn send(&self, op: Op) {
        if self.tx.send(op).await.is_err() {
            tracing::error!("the store writer has stopped; a write was lost");
        }
    }
}

struct Writer {
    conn: Connection,
    tracker: Arc<Mutex<Tracker>>,
    caches: Caches,
}

impl Writer {
    fn new(conn: Connection, tracker: Arc<Mutex<Tracker>>) -> Writer {
        Writer {
            conn,
            tracker,
            caches: Caches::default(),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Some(op) = rx.blocking_recv() {
            group.push(op);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
            self.commit(&mut group);
        }
    }

    /// Apply `group` in one transaction, then answer every batch in it.
    /// Each op runs in its own savepoint: one that fails for a reason other
    /// than the storage itself (a bug, or input the checks missed) is rolled
    /// back and refused alone, and the rest of the group still commits. A
    /// storage failure (disk full, I/O) fails the whole transaction.
    fn commit(&mut self, group: &mut Vec<Op>) {
        let mut seen = Vec::new();
        let mut failed: Vec<Option<String>> = vec![None; group.len()];
        let result = self.apply(group, &mut seen, &mut failed);
        if let Err(e) = &result {
            tracing::error!("store write failed, batches not acknowledged: {e:#}");
            // The caches may hold what the rolled-back transaction wrote.
            self.caches.clear();
            // Give back what the WAL took while the disk was full, so that
            // freeing space lets the next commit through.
            if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                tracing::warn!("cannot checkpoint the WAL after a failed write: {e}");
            }
        } else {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for s in &seen {
                tracker.seen(&s.host, &s.service, s.time_ms, s.level, &s.text);
            }
            observe_stored(&mut tracker, group, &failed);
        }
        for (op, op_failure) in group.drain(..).zip(failed) {
            if let Op::Batch { batch, done, .. } = op {
                let answer = match (&result, op_failure) {
                    (Err(e), _) => Err(Refusal::Transient(format!(
                        "the receiver could not store the batch: {e:#}"
                    ))),
                    (Ok(()), Some(e)) => Err(Refusal::Rejected(format!(
                        "the receiver could not store batch {}: {e}",
                        batch.seq
                    ))),
                    (Ok(()), None) => Ok(batch.last_seq()),
                };
                let _ = done.send(answer);
            }
        }
    }

    fn apply(
        &mut self,
        group: &[Op],
        seen: &mut Vec<Seen>,
        failed: &mut [Option<String>],
    ) -> anyhow::Result<()> {
        let mut tx = self.conn.transaction()?;
        for (op, failure) in group.iter().zip(failed.iter_mut()) {
            let savepoint = tx.savepoint()?;
            let mut op_seen = Vec::new();
            match apply_op(&savepoint, &mut self.caches, op, &mut op_seen) {
                Ok(()) => {
                    savepoint.commit()?;
                    seen.extend(op_seen);
                }
                Err(e) if is_transient(&e) => return Err(e),
                Err(e) => {
                    drop(savepoint);
                    tracing::error!("a store write was refused and rolled back: {e:#}");
                    *failure = Some(format!("{e:#}"));
                    // The caches may hold what the savepoint wrote.
                    self.caches.clear();
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Judge the samples of the reports just stored against their triggers,
/// in the order they were taken (a batch that was refused is not judged:
/// it comes again).
fn observe_stored(tracker: &mut Tracker, group: &[Op], failed: &[Option<String>]) {
    for (op, failure) in group.iter().zip(failed) {
        let Op::Batch {
            host,
            batch,
            offset_ms,
            received_ms,
            ..
        } = op
        else {
            continue;
        };
        if failure.is_some() {
            continue;
        }
        let clock = ops::Clock {
            offset_ms: *offset_ms,
            received_ms: *received_ms,
        };
        for entry in &batch.entries {
            if let PreparedEntry::Report(report) = entry
                && tracker.judges(host, &report.service)
            {
                let time_ms = ops::corrected(report.time_ms, clock);
                tracker.observe(host, &report.service, &report.samples(), time_ms);
            }
        }
    }
}

/// Whether `e` is the storage failing (worth trying again later) rather
/// than this op being impossible.
fn is_transient(e: &anyhow::Error) -> bool {
    use rusqlite::ErrorCode::*;
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _)) if matches!(
                f.code,
                DiskFull | SystemIoFailure | DatabaseBusy | DatabaseLocked | CannotOpen
                    | OutOfMemory | ReadOnly
            )
        )
    })
}
