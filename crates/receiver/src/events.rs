//! `receiver events`: the event log — every change of a host's status, of
//! whether a service reports in time, of the level a service reports, and
//! every trigger firing or recovering — newest last.

use rusqlite::{Connection, params};
use sandglass_core::text::Escaped;
use serde::Serialize;
use std::fmt::Write;

/// One event as `receiver events --json` prints it.
#[derive(Debug, Serialize)]
pub struct EventView {
    pub time_ms: u64,
    pub host: String,
    /// None for the host's own status.
    pub service: Option<String>,
    pub old: String,
    pub new: String,
    pub reason: String,
}

/// What to list.
#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub host: Option<&'a str>,
    pub service: Option<&'a str>,
    pub since_ms: u64,
    /// Most events, the newest of them.
    pub limit: usize,
}

/// The events matching `filter`, oldest first.
pub fn events(conn: &Connection, filter: &Filter) -> anyhow::Result<Vec<EventView>> {
    let mut statement = conn.prepare(
        "SELECT time_ms, host, service, old, new, reason FROM events
         WHERE time_ms >= ?1 AND (?2 IS NULL OR host = ?2) AND (?3 IS NULL OR service = ?3)
         ORDER BY time_ms DESC, id DESC LIMIT ?4",
    )?;
    let mut events = statement
        .query_map(
            params![
                filter.since_ms,
                filter.host,
                filter.service,
                filter.limit as i64
            ],
            |row| {
                Ok(EventView {
                    time_ms: row.get(0)?,
                    host: row.get(1)?,
                    service: row.get(2)?,
                    old: row.get(3)?,
                    new: row.get(4)?,
                    reason: row.get(5)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    events.reverse();
    Ok(events)
}

/// The events as a table for people; every text an agent or plugin chose
/// is escaped.
pub fn table(events: &[EventView], now_ms: u64) -> String {
    let mut out = String::new();
    for e in events {
        let _ = writeln!(
            out,
            "{:>9}  {} {}  {} -> {}  {}",
            super::view::age(now_ms, e.time_ms),
            Escaped(&e.host),
            e.service
                .as_deref()
                .map(Escaped)
                .map_or_else(|| "(host)".to_owned(), |s| s.to_string()),
            e.old,
            e.new,
            Escaped(&e.reason)
        );
    }
    out
}
