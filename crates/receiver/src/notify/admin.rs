//! `receiver ack`, `receiver maintenance` and `receiver notifications`:
//! what people do about notifications, written to (and read from) the
//! receiver's database, which the running receiver reads every second.

use super::message::rfc3339;
use super::queue::NotificationView;
use crate::config::Model;
use anyhow::{Context, bail};
use rusqlite::{Connection, OptionalExtension, params};
use sandglass_core::text::Escaped;
use sandglass_core::time::days_from_civil;
use serde::Serialize;
use std::fmt::Write;

/// Make sure the notification tables exist (a database an older receiver
/// made has none).
pub fn prepare(conn: &Connection) -> anyhow::Result<()> {
    conn.execute_batch(super::SCHEMA)
        .context("cannot create the notification tables")
}

/// Acknowledge the problem of `host` (or of one of its services): no more
/// notifications about it until it recovers. Returns the ack's id.
pub fn ack(
    conn: &Connection,
    host: &str,
    service: Option<&str>,
    comment: &str,
    now_ms: u64,
) -> anyhow::Result<i64> {
    let status: Option<String> = conn
        .query_row("SELECT status FROM hosts WHERE name = ?1", [host], |r| {
            r.get(0)
        })
        .optional()?;
    match status.as_deref() {
        None => bail!("no host {host:?} in the receiver's database: see `receiver status`"),
        Some("PROBLEM" | "UNREACHABLE") => {}
        Some(s) => bail!("host {host} is {s}: there is no problem to acknowledge"),
    }
    if let Some(service) = service {
        let known: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM services WHERE host = ?1 AND name = ?2)",
            params![host, service],
            |r| r.get(0),
        )?;
        if !known {
            bail!("host {host} has no service {service:?}: see `receiver status`");
        }
    }
    conn.execute(
        "INSERT INTO acks (host, service, comment, time_ms) VALUES (?1, ?2, ?3, ?4)",
        params![host, service, comment, now_ms],
    )?;
    Ok(conn.last_insert_rowid())
}

/// What a maintenance window covers.
pub enum Scope {
    Host(String),
    Group(String),
}

/// Open a maintenance window; returns its id. The host or group must be in
/// the configuration (a typo would silence no one).
pub fn maintenance(
    conn: &Connection,
    model: &Model,
    scope: &Scope,
    (from_ms, until_ms): (u64, u64),
    comment: &str,
    now_ms: u64,
) -> anyhow::Result<i64> {
    let (host, group) = match scope {
        Scope::Host(h) if model.hosts.contains_key(h) => (Some(h), None),
        Scope::Host(h) => bail!("no host {h:?} in the configuration: see `receiver check`"),
        Scope::Group(g) if model.hosts.values().any(|h| h.groups.contains(g)) => (None, Some(g)),
        Scope::Group(g) => {
            bail!("no host is in group {g:?}: check [groups.{g}] and the hosts' groups")
        }
    };
    if until_ms <= from_ms || until_ms <= now_ms {
        bail!("the window ends before it starts or in the past: check --from, --until and --for");
    }
    conn.execute(
        "INSERT INTO maintenance (host, grp, from_ms, until_ms, comment, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![host, group, from_ms, until_ms, comment, now_ms],
    )?;
    Ok(conn.last_insert_rowid())
}

/// End window `id` now.
pub fn end_maintenance(conn: &Connection, id: i64, now_ms: u64) -> anyhow::Result<()> {
    let n = conn.execute(
        "UPDATE maintenance SET ended_ms = ?2 WHERE id = ?1 AND ended_ms IS NULL AND until_ms > ?2",
        params![id, now_ms],
    )?;
    if n == 0 {
        bail!("no current maintenance window #{id}: see `receiver maintenance --list`");
    }
    Ok(())
}

/// A maintenance window as `receiver maintenance --list --json` prints it.
#[derive(Debug, Serialize)]
pub struct WindowView {
    pub id: i64,
    pub host: Option<String>,
    pub group: Option<String>,
    pub from_ms: u64,
    pub until_ms: u64,
    pub comment: String,
}

/// The windows not yet over, soonest first.
pub fn windows(conn: &Connection, now_ms: u64) -> anyhow::Result<Vec<WindowView>> {
    Ok(conn
        .prepare(
            "SELECT id, host, grp, from_ms, until_ms, comment FROM maintenance
             WHERE ended_ms IS NULL AND until_ms > ?1 ORDER BY from_ms, id",
        )?
        .query_map([now_ms], |r| {
            Ok(WindowView {
                id: r.get(0)?,
                host: r.get(1)?,
                group: r.get(2)?,
                from_ms: r.get(3)?,
                until_ms: r.get(4)?,
                comment: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

pub fn windows_table(windows: &[WindowView]) -> String {
    let mut out = String::new();
    for w in windows {
        let scope = match (&w.host, &w.group) {
            (Some(h), _) => format!("host {h}"),
            (_, Some(g)) => format!("group {g}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "#{}  {scope}  {} .. {}  {}",
            w.id,
            rfc3339(w.from_ms),
            rfc3339(w.until_ms),
            Escaped(&w.comment)
        );
    }
    out
}

pub fn notifications_table(rows: &[NotificationView]) -> String {
    let mut out = String::new();
    for n in rows {
        let _ = writeln!(
            out,
            "#{}  {}  {}  {} {}  {} after {} attempts{}",
            n.id,
            rfc3339(n.created_ms),
            n.channel,
            n.kind,
            n.host
                .as_deref()
                .map_or_else(|| "-".into(), |h| Escaped(h).to_string()),
            n.state,
            n.attempts,
            n.last_error
                .as_deref()
                .map_or_else(String::new, |e| format!(": {}", Escaped(e)))
        );
    }
    out
}

/// A time given on the command line: `YYYY-MM-DDTHH:MM[:SS]` in UTC (a
/// trailing `Z` allowed, a space instead of `T` too) or Unix milliseconds.
pub fn parse_time(text: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || anyhow::anyhow!("time {text:?}: write YYYY-MM-DDTHH:MM[:SS] (UTC)");
    let t = text.trim_end_matches('Z');
    let (date, clock) = t.split_once(['T', ' ']).ok_or_else(bad)?;
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok()).ok_or_else(bad);
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next())?, num(d.next())?, num(d.next())?);
    let mut c = clock.split(':');
    let (h, min) = (num(c.next())?, num(c.next())?);
    let s = c.next().map_or(Ok(0), |s| num(Some(s)))?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || s > 60 {
        return Err(bad());
    }
    let days = days_from_civil(i64::from(y), m, day);
    let secs = days * 86_400 + i64::from(h * 3600 + min * 60 + s);
    u64::try_from(secs * 1000).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::{Item, ItemKind};
    use crate::notify::silence::{Silences, clear_acks};
    use std::collections::BTreeMap;

    #[test]
    fn an_ack_silences_its_host_until_the_recovery_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open(&dir.path().join("r.db")).unwrap();
        conn.execute_batch(
            "INSERT INTO hosts (name, status, since_ms, reason) VALUES ('a', 'PROBLEM', 0, 'x'), ('b', 'OK', 0, '')",
        )
        .unwrap();
        let e = ack(&conn, "b", None, "", 5).unwrap_err();
        assert!(e.to_string().contains("no problem to acknowledge"), "{e}");
        assert!(ack(&conn, "a", Some("nope"), "", 5).is_err());
        let id = ack(&conn, "a", None, "on it", 5).unwrap();
        let item = Item {
            kind: ItemKind::HostProblem,
            host: "a".into(),
            service: None,
            trigger: None,
            old: "OK".into(),
            new: "PROBLEM".into(),
            severity: None,
            message: String::new(),
            time_ms: 0,
        };
        let why = |now| {
            Silences::load(&conn, now).unwrap().why(
                "a",
                std::slice::from_ref(&item),
                &BTreeMap::new(),
                now,
            )
        };
        assert_eq!(why(10), Some(format!("acknowledged #{id}")));
        assert_eq!(clear_acks(&conn, "a", None, 20).unwrap(), 1);
        assert_eq!(why(30), None);
    }

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(parse_time("1970-01-01T00:01").unwrap(), 60_000);
        assert_eq!(
            parse_time("2024-02-29 12:34:56Z").unwrap(),
            1_709_210_096_000
        );
        assert_eq!(parse_time("1234").unwrap(), 1234);
        assert!(parse_time("2024-13-01T00:00").is_err());
        assert!(parse_time("tomorrow").is_err());
    }
}
