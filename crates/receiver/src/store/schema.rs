//! The database file: its schema, opening it for the writer or for the
//! readers, and the receiver's heartbeat.

use super::super::streams;
use anyhow::Context;
use rusqlite::{Connection, OpenFlags, params};
use std::path::Path;

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
    -- The values, 8 bytes each, in the order of the layout (`layout_id`,
    -- added by store/samples.rs); before layouts, a MessagePack array.
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
CREATE TABLE IF NOT EXISTS plugin_versions (
    plugin TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (plugin, sha256)
);
CREATE TABLE IF NOT EXISTS service_pins (
    service_id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plugin_runs (
    service_id INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    bucket_ms INTEGER NOT NULL,
    runs INTEGER NOT NULL,
    unknown INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (service_id, sha256, bucket_ms)
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

/// Bytes the WAL file is truncated to after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 16 << 20;
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
    // The writer runs each batch in a savepoint: what a savepoint would
    // roll back (one batch's pages) is kept in memory, not written to a
    // temporary file per batch. Durability is the WAL's, unchanged.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // A WAL that grew while the disk was full is cut back after the next
    // checkpoint instead of keeping the space it took.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    conn.execute_batch(SCHEMA)
        .and_then(|()| conn.execute_batch(super::samples::SCHEMA))
        .and_then(|()| super::samples::migrate(&conn))
        .and_then(|()| conn.execute_batch(streams::SCHEMA))
        .and_then(|()| conn.execute_batch(crate::notify::SCHEMA))
        .and_then(|()| conn.execute_batch(crate::rollout::SCHEMA))
        .with_context(|| format!("cannot set up the schema of {}", path.display()))?;
    Ok(conn)
}

/// Record that the receiver is alive at `time_ms` (or, `running` false,
/// stopping). Also written directly once before the receiver listens, so
/// that `receiver status` never sees a listening receiver without one.
pub fn write_heartbeat(conn: &Connection, time_ms: u64, running: bool) -> rusqlite::Result<()> {
    write_meta(
        conn,
        &[("heartbeat_ms", time_ms), ("running", running as u64)],
    )
}

/// Set keys of the `meta` table, which `receiver status` reads.
pub fn write_meta(conn: &Connection, pairs: &[(&str, u64)]) -> rusqlite::Result<()> {
    let mut set = conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?;
    for (key, value) in pairs {
        set.execute(params![key, value])?;
    }
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
    // A database last written by a receiver before layouts is read by the
    // same queries.
    conn.execute_batch(super::samples::SCHEMA)
        .and_then(|()| super::samples::migrate(&conn))
        .with_context(|| format!("cannot bring {} up to date", path.display()))?;
    Ok(conn)
}
