//! The embedded store: SQLite in WAL mode with `synchronous = FULL`, so a
//! committed transaction survives a crash or a power cut. One writer thread
//! owns the write connection and commits whatever has queued up as one
//! transaction (group commit: one fsync for many batches); a batch is
//! acknowledged only after the transaction holding it has committed.
//!
//! Samples are stored per report as one MessagePack blob (the report's
//! samples array), indexed by (service, time): one row per report instead of
//! one per sample is what lets a single SQLite writer keep up with a fleet.

use super::liveness::{Change, HostStatus, Remembered, RememberedHost, Tracker};
use crate::protocol::ReportBatch;
use crate::report::Sample;
use anyhow::Context;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
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
CREATE UNIQUE INDEX IF NOT EXISTS reports_by_time ON reports (service_id, time_ms);
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

/// A write for the writer thread.
pub enum Op {
    /// Store a batch; `done` hears back after commit (or the error).
    Batch {
        host: String,
        batch: ReportBatch,
        /// Added to report times to correct the agent's clock.
        offset_ms: i64,
        received_ms: u64,
        done: oneshot::Sender<Result<u64, String>>,
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
    conn.execute_batch(SCHEMA)
        .with_context(|| format!("cannot set up the schema of {}", path.display()))?;
    Ok(conn)
}

/// Open an existing database for reading (status and query commands).
pub fn open_existing(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| {
        format!(
            "no receiver database at {}: start `receiver run` with this config first",
            path.display()
        )
    })?;
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
            "SELECT host, name, interval_ms, scheduled_since_ms, last_ms, late FROM services WHERE scheduled = 1",
        )?
        .query_map([], |r| {
            Ok(Remembered {
                host: r.get(0)?,
                service: r.get(1)?,
                interval_ms: r.get(2)?,
                scheduled_since_ms: r.get(3)?,
                last_ms: r.get(4)?,
                late: r.get(5)?,
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
}

impl Writer {
    fn new(conn: Connection, tracker: Arc<Mutex<Tracker>>) -> Writer {
        Writer {
            conn,
            tracker,
            service_ids: HashMap::new(),
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
    fn commit(&mut self, group: &mut Vec<Op>) {
        let mut seen = Vec::new();
        let result = self.apply(group, &mut seen);
        if let Err(e) = &result {
            tracing::error!("store write failed, batches not acknowledged: {e:#}");
            self.service_ids.clear();
        } else {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for (host, service, time_ms) in &seen {
                tracker.seen(host, service, *time_ms);
            }
        }
        for op in group.drain(..) {
            if let Op::Batch { batch, done, .. } = op {
                let answer = match &result {
                    Ok(()) => Ok(batch.seq),
                    Err(e) => Err(format!("the receiver could not store the batch: {e:#}")),
                };
                let _ = done.send(answer);
            }
        }
    }

    fn apply(&mut self, group: &[Op], seen: &mut Vec<(String, String, u64)>) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        for op in group {
            match op {
                Op::Batch {
                    host,
                    batch,
                    offset_ms,
                    received_ms,
                    ..
                } => {
                    let mut insert = tx.prepare_cached(
                        "INSERT OR IGNORE INTO reports (service_id, time_ms, received_ms, seq, level, text, samples)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?;
                    let mut latest: HashMap<i64, (u64, &str, &str, &str)> = HashMap::new();
                    for report in &batch.reports {
                        let id = service_id(
                            &tx,
                            &mut self.service_ids,
                            host,
                            &report.service,
                            &report.plugin,
                        )?;
                        let time_ms = corrected(report.time_ms, *offset_ms, *received_ms);
                        let samples = rmp_serde::to_vec(&report.samples)?;
                        insert.execute(params![
                            id,
                            time_ms,
                            received_ms,
                            batch.seq,
                            report.status.level.as_str(),
                            report.status.text,
                            samples
                        ])?;
                        let entry = latest.entry(id).or_insert((0, &report.service, "", ""));
                        if time_ms >= entry.0 {
                            *entry = (
                                time_ms,
                                &report.service,
                                report.status.level.as_str(),
                                &report.status.text,
                            );
                        }
                    }
                    let mut update = tx.prepare_cached(
                        "UPDATE services SET last_ms = ?2, level = ?3, text = ?4
                         WHERE id = ?1 AND (last_ms IS NULL OR last_ms <= ?2)",
                    )?;
                    for (id, (time_ms, service, level, text)) in latest {
                        update.execute(params![id, time_ms, level, text])?;
                        seen.push((host.clone(), service.to_owned(), time_ms));
                    }
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
        }
        tx.commit()?;
        Ok(())
    }
}

/// A report's time on the receiver's clock: the agent's time corrected by
/// the offset measured at Hello, and never later than its arrival.
fn corrected(time_ms: u64, offset_ms: i64, received_ms: u64) -> u64 {
    (time_ms as i64)
        .saturating_add(offset_ms)
        .clamp(0, received_ms as i64) as u64
}

fn service_id(
    tx: &rusqlite::Transaction<'_>,
    ids: &mut HashMap<(String, String), i64>,
    host: &str,
    service: &str,
    plugin: &str,
) -> anyhow::Result<i64> {
    if let Some(id) = ids.get(&(host.to_owned(), service.to_owned())) {
        return Ok(*id);
    }
    tx.execute(
        "INSERT INTO services (host, name, plugin) VALUES (?1, ?2, ?3) ON CONFLICT (host, name) DO NOTHING",
        params![host, service, plugin],
    )?;
    let id: i64 = tx.query_row(
        "SELECT id FROM services WHERE host = ?1 AND name = ?2",
        params![host, service],
        |r| r.get(0),
    )?;
    ids.insert((host.to_owned(), service.to_owned()), id);
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
