//! The embedded store: SQLite in WAL mode with `synchronous = FULL`, so a
//! committed transaction survives a crash or a power cut. One writer thread
//! owns the write connection and commits whatever has queued up as one
//! transaction (group commit: one fsync for many batches); a batch is
//! acknowledged only after the transaction holding it has committed.
//!
//! Samples are stored per report as one MessagePack blob (the report's
//! samples array), indexed by (service, time): one row per report instead of
//! one per sample is what lets a single SQLite writer keep up with a fleet.
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

use super::liveness::{Change, HostStatus, Remembered, RememberedHost, Tracker};
use super::streams::{self, RangeSet};
use anyhow::Context;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sandglass_core::report::{Level, Sample};
use sandglass_core::text::Escaped;
use sandglass_protocol::{Entry, Gap, ReportBatch};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    connected INTEGER NOT NULL DEFAULT 0,
    peer TEXT,
    agent_version TEXT,
    plugins TEXT,
    connected_ms INTEGER
);
CREATE TABLE IF NOT EXISTS services (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    name TEXT NOT NULL,
    plugin TEXT NOT NULL DEFAULT '',
    interval_ms INTEGER NOT NULL DEFAULT 0,
    scheduled INTEGER NOT NULL DEFAULT 0,
    scheduled_since_ms INTEGER,
    last_ms INTEGER,
    level TEXT,
    text TEXT,
    late TEXT,
    UNIQUE (host, name)
);
CREATE TABLE IF NOT EXISTS reports (
    service_id INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    level TEXT NOT NULL,
    text TEXT NOT NULL,
    samples BLOB NOT NULL
);
DROP INDEX IF EXISTS reports_by_time;
CREATE INDEX IF NOT EXISTS reports_by_service_time ON reports (service_id, time_ms);
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    reports INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    host TEXT NOT NULL,
    service TEXT,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    reason TEXT NOT NULL
);
";

/// Most queued work folded into one transaction.
const MAX_GROUP: usize = 1024;

/// Bytes the WAL file is truncated to after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 16 << 20;

/// A write for the writer thread.
pub enum Op {
    /// Store a batch; `done` hears back after commit (or the error).
    Batch {
        host: String,
        /// The agent's spool stream the entries are numbered in.
        stream: u64,
        batch: ReportBatch,
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
    /// The configuration's services per host: (host, service, plugin, interval).
    Scheduled {
        services: Vec<(String, String, String, u64)>,
        hosts: Vec<(String, HostStatus, u64, String)>,
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

/// Open (creating if needed) the database at `path`, with WAL and the schema.
pub fn open(path: &Path) -> anyhow::Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create database directory {}", dir.display()))?;
    }
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // A WAL that grew while the disk was full is cut back after the next
    // checkpoint instead of keeping the space it took.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    conn.execute_batch(SCHEMA)
        .and_then(|()| conn.execute_batch(streams::SCHEMA))
        .with_context(|| format!("cannot set up the schema of {}", path.display()))?;
    Ok(conn)
}

/// Record that the receiver is alive at `time_ms` (or, `running` false,
/// stopping). Also written directly once before the receiver listens, so
/// that `receiver status` never sees a listening receiver without one.
pub fn write_heartbeat(conn: &Connection, time_ms: u64, running: bool) -> rusqlite::Result<()> {
    let mut set = conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?;
    set.execute(params!["heartbeat_ms", time_ms])?;
    set.execute(params!["running", running as i64])?;
    Ok(())
}

/// Open an existing database for reading (status and query commands).
pub fn open_existing(path: &Path) -> anyhow::Result<Connection> {
    if !path.exists() {
        anyhow::bail!(
            "no receiver database at {}: start `receiver run` with this config first",
            path.display()
        );
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open the receiver database {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// What the store remembers for liveness after a restart.
pub fn remembered(conn: &Connection) -> anyhow::Result<(Vec<RememberedHost>, Vec<Remembered>)> {
    let hosts = conn
        .prepare("SELECT name, status, since_ms, reason FROM hosts")?
        .query_map([], |r| {
            Ok(RememberedHost {
                host: r.get(0)?,
                status: HostStatus::parse(&r.get::<_, String>(1)?),
                since_ms: r.get(2)?,
                reason: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let services = conn
        .prepare(
            "SELECT host, name, interval_ms, scheduled_since_ms, last_ms, late, level, text
             FROM services WHERE scheduled = 1",
        )?
        .query_map([], |r| {
            Ok(Remembered {
                host: r.get(0)?,
                service: r.get(1)?,
                interval_ms: r.get(2)?,
                scheduled_since_ms: r.get(3)?,
                last_ms: r.get(4)?,
                late: r.get(5)?,
                level: r.get::<_, Option<String>>(6)?.map(|l| Level::parse(&l)),
                text: r.get(7)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok((hosts, services))
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
    service_ids: HashMap<(String, String), i64>,
    /// Stored numbers per (host, stream), as in the `stored_ranges` table.
    stored: HashMap<(String, u64), RangeSet>,
}

impl Writer {
    fn new(conn: Connection, tracker: Arc<Mutex<Tracker>>) -> Writer {
        Writer {
            conn,
            tracker,
            service_ids: HashMap::new(),
            stored: HashMap::new(),
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
            self.service_ids.clear();
            self.stored.clear();
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
            let mut caches = Caches {
                service_ids: &mut self.service_ids,
                stored: &mut self.stored,
            };
            match apply_op(&savepoint, &mut caches, op, &mut op_seen) {
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
                    self.service_ids.clear();
                    self.stored.clear();
                }
            }
        }
        tx.commit()?;
        Ok(())
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

/// What the writer remembers between ops, to spare queries.
struct Caches<'a> {
    service_ids: &'a mut HashMap<(String, String), i64>,
    stored: &'a mut HashMap<(String, u64), RangeSet>,
}

/// Write one op (inside its savepoint).
fn apply_op(
    tx: &Connection,
    caches: &mut Caches<'_>,
    op: &Op,
    seen: &mut Vec<Seen>,
) -> anyhow::Result<()> {
    match op {
        Op::Batch {
            host,
            stream,
            batch,
            offset_ms,
            received_ms,
            ..
        } => {
            let clock = Clock {
                offset_ms: *offset_ms,
                received_ms: *received_ms,
            };
            write_batch(tx, caches, host, *stream, batch, clock, seen)?;
        }
        Op::Connected {
            host,
            peer,
            agent_version,
            plugins,
            time_ms,
        } => {
            tx.execute(
                "UPDATE hosts SET connected = 1, peer = ?2, agent_version = ?3, plugins = ?4, connected_ms = ?5
                 WHERE name = ?1",
                params![host, peer, agent_version, plugins, time_ms],
            )?;
        }
        Op::Disconnected { host } => {
            tx.execute("UPDATE hosts SET connected = 0 WHERE name = ?1", [host])?;
        }
        Op::Scheduled {
            services,
            hosts,
            time_ms,
        } => {
            for (host, status, since_ms, reason) in hosts {
                tx.execute(
                    "INSERT INTO hosts (name, status, since_ms, reason) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO NOTHING",
                    params![host, status.as_str(), since_ms, reason],
                )?;
            }
            tx.execute("UPDATE services SET scheduled = 0", [])?;
            for (host, service, plugin, interval_ms) in services {
                tx.execute(
                    "INSERT INTO services (host, name, plugin, interval_ms, scheduled, scheduled_since_ms)
                     VALUES (?1, ?2, ?3, ?4, 1, ?5)
                     ON CONFLICT (host, name) DO UPDATE SET
                        plugin = excluded.plugin,
                        scheduled = 1,
                        scheduled_since_ms = CASE
                            WHEN services.interval_ms = excluded.interval_ms
                                 AND services.scheduled_since_ms IS NOT NULL
                            THEN services.scheduled_since_ms ELSE excluded.scheduled_since_ms END,
                        interval_ms = excluded.interval_ms",
                    params![host, service, plugin, interval_ms, time_ms],
                )?;
            }
        }
        Op::Heartbeat { time_ms, running } => write_heartbeat(tx, *time_ms, *running)?,
        Op::Changes { changes } => {
            for c in changes {
                tx.execute(
                    "INSERT INTO events (time_ms, host, service, old, new, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![c.time_ms, c.host, c.service, c.old, c.new, c.reason],
                )?;
                match &c.service {
                    Some(service) => tx.execute(
                        "UPDATE services SET late = ?3 WHERE host = ?1 AND name = ?2",
                        params![c.host, service, (c.new == "LATE").then_some(&c.reason)],
                    )?,
                    None => tx.execute(
                        "UPDATE hosts SET status = ?2, since_ms = ?3, reason = ?4 WHERE name = ?1",
                        params![c.host, c.new, c.time_ms, c.reason],
                    )?,
                };
            }
        }
    }
    Ok(())
}

/// How the agent's clock relates to the receiver's for one batch.
#[derive(Clone, Copy)]
struct Clock {
    offset_ms: i64,
    received_ms: u64,
}

/// Store the entries of `batch` not stored before, and record their numbers.
fn write_batch(
    tx: &Connection,
    caches: &mut Caches<'_>,
    host: &str,
    stream: u64,
    batch: &ReportBatch,
    clock: Clock,
    seen: &mut Vec<Seen>,
) -> anyhow::Result<()> {
    let key = (host.to_owned(), stream);
    let stored = match caches.stored.get(&key) {
        Some(set) => set.clone(),
        None => streams::load(tx, host, stream)?,
    };
    let mut insert = tx.prepare_cached(
        "INSERT INTO reports (service_id, time_ms, received_ms, seq, level, text, samples)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut latest: HashMap<i64, (u64, &str, Level, &str)> = HashMap::new();
    let mut unscheduled: Option<Gap> = None;
    let fresh = batch
        .entries
        .iter()
        .enumerate()
        .map(|(i, entry)| (batch.seq + i as u64, entry))
        .filter(|(seq, _)| !stored.contains(*seq));
    for (seq, entry) in fresh {
        let report = match entry {
            Entry::Report(report) => report,
            Entry::Gap(gap) => {
                insert_gap(tx, host, clock, gap)?;
                continue;
            }
        };
        let time_ms = corrected(report.time_ms, clock);
        let Some(id) = service_id(tx, caches.service_ids, host, &report.service)? else {
            let gap = unscheduled.get_or_insert_with(|| Gap {
                reports: 0,
                first_ms: time_ms,
                last_ms: time_ms,
                reason: format!(
                    "reports for service {} (and any other service {host} was never scheduled to run) are not stored",
                    report.service
                ),
            });
            gap.reports += 1;
            gap.first_ms = gap.first_ms.min(time_ms);
            gap.last_ms = gap.last_ms.max(time_ms);
            continue;
        };
        let samples = rmp_serde::to_vec(&report.samples)?;
        insert.execute(params![
            id,
            time_ms,
            clock.received_ms,
            seq,
            report.status.level.as_str(),
            report.status.text,
            samples
        ])?;
        let entry = latest
            .entry(id)
            .or_insert((0, &report.service, Level::Ok, ""));
        if time_ms >= entry.0 {
            *entry = (
                time_ms,
                &report.service,
                report.status.level,
                &report.status.text,
            );
        }
    }
    if let Some(gap) = unscheduled {
        // Times are on the receiver's clock already.
        insert_gap(
            tx,
            host,
            Clock {
                offset_ms: 0,
                ..clock
            },
            &gap,
        )?;
    }
    let mut updated = stored.clone();
    updated.insert(batch.seq, batch.last_seq());
    if batch.settled > 0 {
        // Nothing at or below `settled` comes again: the holes there close.
        updated.insert(1, batch.settled);
    }
    streams::save(tx, host, stream, &stored, &updated)?;
    caches.stored.insert(key, updated);
    let mut update = tx.prepare_cached(
        "UPDATE services SET last_ms = ?2, level = ?3, text = ?4
         WHERE id = ?1 AND (last_ms IS NULL OR last_ms <= ?2)",
    )?;
    for (id, (time_ms, service, level, text)) in latest {
        update.execute(params![id, time_ms, level.as_str(), text])?;
        seen.push(Seen {
            host: host.to_owned(),
            service: service.to_owned(),
            time_ms,
            level,
            text: text.to_owned(),
        });
    }
    Ok(())
}

/// Record reports lost on the way (as the agent or the receiver counted
/// them), with their times on the receiver's clock.
fn insert_gap(tx: &Connection, host: &str, clock: Clock, gap: &Gap) -> anyhow::Result<()> {
    tx.prepare_cached(
        "INSERT INTO gaps (host, received_ms, reports, first_ms, last_ms, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        host,
        clock.received_ms,
        gap.reports,
        corrected(gap.first_ms, clock),
        corrected(gap.last_ms, clock),
        gap.reason
    ])?;
    tracing::warn!(
        host,
        reports = gap.reports,
        "reports lost: {}",
        Escaped(&gap.reason)
    );
    Ok(())
}

/// A report's time on the receiver's clock: the agent's time corrected by
/// the measured offset, and never later than its arrival (times of 2^63 and
/// above included: they are far in the future, not negative). Time 0 means
/// the agent gave none (a gap for damaged spool records): the arrival time.
fn corrected(time_ms: u64, clock: Clock) -> u64 {
    // 0 is "no time": such a report is dated by its arrival.
    if time_ms == 0 {
        return clock.received_ms;
    }
    i64::try_from(time_ms)
        .unwrap_or(i64::MAX)
        .saturating_add(clock.offset_ms)
        .clamp(0, clock.received_ms as i64) as u64
}

/// The id of a service the host was ever scheduled to run (the schedule
/// ops insert them), or none: reports for services the receiver never gave
/// the host are not stored, so a peer cannot grow the services table at will.
fn service_id(
    tx: &Connection,
    ids: &mut HashMap<(String, String), i64>,
    host: &str,
    service: &str,
) -> anyhow::Result<Option<i64>> {
    if let Some(id) = ids.get(&(host.to_owned(), service.to_owned())) {
        return Ok(Some(*id));
    }
    let id: Option<i64> = tx
        .prepare_cached("SELECT id FROM services WHERE host = ?1 AND name = ?2")?
        .query_row(params![host, service], |r| r.get(0))
        .optional()?;
    if let Some(id) = id {
        ids.insert((host.to_owned(), service.to_owned()), id);
    }
    Ok(id)
}

/// One stored report, decoded.
pub struct StoredReport {
    pub service: String,
    pub time_ms: u64,
    pub level: String,
    pub text: String,
    pub samples: Vec<Sample>,
}

/// Reports of `host` (optionally one service) since `since_ms`, oldest first.
pub fn reports(
    conn: &Connection,
    host: &str,
    service: Option<&str>,
    since_ms: u64,
) -> anyhow::Result<Vec<StoredReport>> {
    let mut stmt = conn.prepare(
        "SELECT s.name, r.time_ms, r.level, r.text, r.samples FROM reports r
         JOIN services s ON s.id = r.service_id
         WHERE s.host = ?1 AND (?2 IS NULL OR s.name = ?2) AND r.time_ms >= ?3
         ORDER BY r.time_ms, s.name",
    )?;
    let rows = stmt.query_map(params![host, service, since_ms], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, u64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Vec<u8>>(4)?,
        ))
    })?;
    rows.map(|row| {
        let (service, time_ms, level, text, blob) = row?;
        let samples = rmp_serde::from_slice(&blob)
            .with_context(|| format!("damaged samples of {service} at {time_ms}"))?;
        Ok(StoredReport {
            service,
            time_ms,
            level,
            text,
            samples,
        })
    })
    .collect()
}

/// The newest stored report of one service.
pub fn latest(
    conn: &Connection,
    host: &str,
    service: &str,
) -> anyhow::Result<Option<StoredReport>> {
    let row = conn
        .query_row(
            "SELECT r.time_ms, r.level, r.text, r.samples FROM reports r
             JOIN services s ON s.id = r.service_id
             WHERE s.host = ?1 AND s.name = ?2 ORDER BY r.time_ms DESC LIMIT 1",
            params![host, service],
            |r| {
                Ok((
                    r.get::<_, u64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            },
        )
        .optional()?;
    row.map(|(time_ms, level, text, blob)| {
        Ok(StoredReport {
            service: service.to_owned(),
            time_ms,
            level,
            text,
            samples: rmp_serde::from_slice(&blob)?,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_core::report::{Cost, Report, Status};
    use sandglass_protocol::Gap;

    fn batch(seq: u64, runs: std::ops::RangeInclusive<u64>) -> ReportBatch {
        ReportBatch {
            seq,
            entries: runs
                .map(|n| {
                    Entry::Report(Report {
                        service: "svc".into(),
                        plugin: "p".into(),
                        time_ms: 1_000 + n,
                        status: Status::unknown(format!("run {n}")),
                        samples: Vec::new(),
                        cost: Cost::default(),
                    })
                })
                .collect(),
            settled: 0,
        }
    }

    /// Store `batch` for host h in `stream`; the answer (acked number).
    fn send(store: &Store, stream: u64, batch: ReportBatch) -> u64 {
        try_send(store, stream, batch).unwrap()
    }

    /// Store `batch`; the store's answer.
    fn try_send(store: &Store, stream: u64, batch: ReportBatch) -> Result<u64, Refusal> {
        let (done, answer) = oneshot::channel();
        store
            .tx
            .blocking_send(Op::Batch {
                host: "h".into(),
                stream,
                batch,
                offset_ms: 0,
                received_ms: u64::MAX >> 2,
                done,
            })
            .ok()
            .unwrap();
        answer.blocking_recv().unwrap()
    }

    /// `batch` with a report text padded to `pad` bytes.
    fn padded(seq: u64, runs: std::ops::RangeInclusive<u64>, pad: usize) -> ReportBatch {
        let mut b = batch(seq, runs);
        for e in &mut b.entries {
            if let Entry::Report(r) = e {
                r.cost.fuel = pad as u64;
                r.samples.push(sandglass_core::report::Sample {
                    name: "pad".into(),
                    value: 0.0,
                    kind: sandglass_core::report::MetricKind::Gauge,
                    unit: "x".repeat(pad),
                    labels: Vec::new(),
                });
            }
        }
        b
    }

    /// A store on `path` where host h is scheduled to run service svc.
    fn start(path: &Path, tracker: &Arc<Mutex<Tracker>>) -> (Store, std::thread::JoinHandle<()>) {
        start_on(open(path).unwrap(), tracker)
    }

    fn start_on(
        conn: Connection,
        tracker: &Arc<Mutex<Tracker>>,
    ) -> (Store, std::thread::JoinHandle<()>) {
        let (store, writer) = Store::start(conn, tracker.clone());
        store
            .tx
            .blocking_send(Op::Scheduled {
                services: vec![("h".into(), "svc".into(), "p".into(), 1_000)],
                hosts: vec![],
                time_ms: 0,
            })
            .ok()
            .unwrap();
        (store, writer)
    }

    fn texts(path: &Path) -> Vec<String> {
        let conn = open_existing(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT text FROM reports ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn an_entry_sent_twice_is_acknowledged_twice_and_stored_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let stream = u64::MAX - 7; // beyond i64: stored bit for bit
        let (store, writer) = start(&path, &tracker);
        assert_eq!(send(&store, stream, batch(1, 1..=3)), 3);
        assert_eq!(send(&store, stream, batch(1, 1..=3)), 3, "acked again");
        assert_eq!(send(&store, stream, batch(2, 2..=5)), 5, "overlap");
        drop(store);
        writer.join().unwrap();
        // A restarted receiver remembers what it stored.
        let (store, writer) = start(&path, &tracker);
        assert_eq!(send(&store, stream, batch(4, 4..=6)), 6);
        // Another stream of the same host (its spool was wiped) counts anew.
        assert_eq!(send(&store, 9, batch(1, 101..=101)), 1);
        let gap = ReportBatch {
            seq: 2,
            entries: vec![Entry::Gap(Gap {
                reports: 42,
                first_ms: 5,
                last_ms: 6,
                reason: "spool full".into(),
            })],
            settled: 0,
        };
        assert_eq!(send(&store, 9, gap.clone()), 2);
        assert_eq!(send(&store, 9, gap), 2, "a gap is recorded once too");
        drop(store);
        writer.join().unwrap();
        let runs: Vec<String> = (1..=6).chain([101]).map(|n| format!("run {n}")).collect();
        let mut stored = texts(&path);
        stored.sort_by_key(|t| t[4..].parse::<u64>().unwrap());
        assert_eq!(stored, runs);
        let conn = open_existing(&path).unwrap();
        let lost: u64 = conn
            .query_row("SELECT SUM(reports) FROM gaps WHERE host = 'h'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(lost, 42);
    }

    fn stored_runs(path: &Path) -> Vec<u64> {
        let mut runs: Vec<u64> = texts(path)
            .iter()
            .map(|t| t[4..].parse().unwrap())
            .collect();
        runs.sort();
        runs
    }

    /// The disk-full case: a batch whose commit failed sits below a later
    /// batch that committed; its resend must be stored, not taken for a
    /// duplicate (a "highest stored" mark acknowledged it without storing).
    #[test]
    fn a_batch_that_failed_for_lack_of_space_is_stored_when_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let (store, writer) = start(&path, &tracker);
        send(&store, 1, batch(1, 1..=1));
        drop(store);
        writer.join().unwrap();
        // The database may not grow: a real SQLITE_FULL from SQLite itself.
        let conn = open(&path).unwrap();
        let pages: u64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages + 2)
            .unwrap();
        let (store, writer) = start_on(conn, &tracker);
        let big = padded(2, 2..=4, 64 << 10);
        match try_send(&store, 1, big.clone()) {
            Err(Refusal::Transient(text)) => assert!(text.contains("full"), "{text}"),
            other => panic!("a full database is a transient failure, got {other:?}"),
        }
        // A small later batch still fits and commits.
        assert_eq!(send(&store, 1, batch(5, 5..=5)), 5);
        drop(store);
        writer.join().unwrap();
        // Space is back; the agent sends the failed batch again.
        let (store, writer) = start(&path, &tracker);
        assert_eq!(send(&store, 1, big), 4);
        drop(store);
        writer.join().unwrap();
        assert_eq!(stored_runs(&path), vec![1, 2, 3, 4, 5]);
    }

    /// Numbers that jump ahead leave a hole that earlier numbers fill later.
    #[test]
    fn numbers_below_a_jump_ahead_are_stored_when_they_come() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let (store, writer) = start(&path, &tracker);
        assert_eq!(send(&store, 3, batch(10, 10..=11)), 11);
        assert_eq!(send(&store, 3, batch(1, 1..=3)), 3);
        assert_eq!(send(&store, 3, batch(2, 2..=3)), 3, "a duplicate");
        // The agent settles everything below 10: the hole 4..=9 is closed,
        // so an entry from it would be taken as a duplicate from now on.
        let mut settled = batch(12, 12..=12);
        settled.settled = 11;
        assert_eq!(send(&store, 3, settled), 12);
        assert_eq!(send(&store, 3, batch(5, 5..=5)), 5);
        drop(store);
        writer.join().unwrap();
        assert_eq!(stored_runs(&path), vec![1, 2, 3, 10, 11, 12]);
        let conn = open_existing(&path).unwrap();
        let ranges: i64 = conn
            .query_row("SELECT COUNT(*) FROM stored_ranges", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ranges, 1, "one range once settled");
    }

    #[test]
    fn report_times_past_2_63_are_capped_not_wrapped() {
        let clock = Clock {
            offset_ms: 0,
            received_ms: 5_000,
        };
        assert_eq!(corrected(u64::MAX, clock), 5_000);
        assert_eq!(corrected(1 << 63, clock), 5_000);
        assert_eq!(corrected(4_000, clock), 4_000);
        let behind = Clock {
            offset_ms: -10_000,
            received_ms: 5_000,
        };
        assert_eq!(corrected(4_000, behind), 0);
    }

    #[test]
    fn reports_of_services_never_scheduled_are_counted_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let (store, writer) = start(&path, &tracker);
        let mut b = batch(1, 1..=3);
        if let Entry::Report(r) = &mut b.entries[1] {
            r.service = "ghost".into();
        }
        assert_eq!(send(&store, 1, b), 3);
        drop(store);
        writer.join().unwrap();
        assert_eq!(stored_runs(&path), vec![1, 3]);
        let conn = open_existing(&path).unwrap();
        let (lost, reason): (u64, String) = conn
            .query_row("SELECT reports, reason FROM gaps", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(lost, 1);
        assert!(reason.contains("service ghost"), "{reason}");
        let services: i64 = conn
            .query_row("SELECT COUNT(*) FROM services", [], |r| r.get(0))
            .unwrap();
        assert_eq!(services, 1, "no row for the ghost");
    }
}
