//! What `receiver status` prints, read from the store of
//! the running receiver (SQLite in WAL mode lets readers in while it writes).

use crate::liveness::HostStatus;
use crate::store;
use rusqlite::{Connection, OptionalExtension};
use sandglass_core::render;
use sandglass_core::report::Sample;
use sandglass_core::text::Escaped;
use serde::Serialize;
use std::fmt::Write;

/// How many latest values `status` shows per service.
const VALUES_SHOWN: usize = 3;

/// A receiver whose heartbeat is older than this is taken for stopped (it
/// writes one every 5 s).
const HEARTBEAT_STALE_MS: u64 = 15_000;

/// Whether the receiver behind a database is running, from its heartbeat,
/// and what its database holds.
#[derive(Debug, Serialize)]
pub struct ReceiverView {
    pub running: bool,
    /// Its newest heartbeat (none: it never ran with this version).
    pub heartbeat_ms: Option<u64>,
    /// The database file's size, and how much of it is free pages that
    /// new data fills before the file grows.
    pub database_bytes: u64,
    pub free_bytes: u64,
    /// How long it keeps history (none: not recorded yet).
    pub retention_ms: Option<u64>,
}

/// The receiver's heartbeat as of `now_ms`.
pub fn receiver(conn: &Connection, now_ms: u64) -> anyhow::Result<ReceiverView> {
    let value = |key: &str| -> anyhow::Result<Option<u64>> {
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    };
    let heartbeat_ms = value("heartbeat_ms")?;
    let running = value("running")? == Some(1)
        && heartbeat_ms.is_some_and(|t| now_ms.saturating_sub(t) < HEARTBEAT_STALE_MS);
    let (database_bytes, free_bytes) = store::retention::size(conn)?;
    Ok(ReceiverView {
        running,
        heartbeat_ms,
        database_bytes,
        free_bytes,
        retention_ms: value("retention_ms")?,
    })
}

#[derive(Debug, Serialize)]
pub struct HostView {
    pub name: String,
    pub status: HostStatus,
    pub since_ms: u64,
    pub reason: String,
    pub connected: bool,
    pub peer: Option<String>,
    pub agent_version: Option<String>,
    /// Reports the agent had to drop (spool full or damaged), as it told us.
    pub lost: Option<LostView>,
    pub services: Vec<ServiceView>,
}

#[derive(Debug, Serialize)]
pub struct LostView {
    pub reports: u64,
    /// Time of the oldest and newest lost report (receiver clock).
    pub first_ms: u64,
    pub last_ms: u64,
    /// When the newest gap record arrived.
    pub received_ms: u64,
    /// The newest gap record's reason.
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub plugin: String,
    pub interval_ms: u64,
    pub last_ms: Option<u64>,
    pub level: Option<String>,
    pub text: Option<String>,
    /// Why the service is late, if it is.
    pub late: Option<String>,
    /// False for a service that reported but is not in the host's schedule
    /// (an agent still on an older schedule, or a third-party agent).
    pub scheduled: bool,
    /// The first samples of the newest report.
    pub values: Vec<Sample>,
}

/// Every host and its scheduled services.
pub fn status(conn: &Connection) -> anyhow::Result<Vec<HostView>> {
    hosts(conn, None, VALUES_SHOWN)
}

/// One host and its services with up to `values_shown` latest values.
pub fn host(
    conn: &Connection,
    name: &str,
    values_shown: usize,
) -> anyhow::Result<Option<HostView>> {
    Ok(hosts(conn, Some(name), values_shown)?.pop())
}

fn hosts(
    conn: &Connection,
    only: Option<&str>,
    values_shown: usize,
) -> anyhow::Result<Vec<HostView>> {
    let mut hosts: Vec<HostView> = conn
        .prepare(
            "SELECT name, status, since_ms, reason, connected, peer, agent_version FROM hosts
             WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
        )?
        .query_map([only], |r| {
            Ok(HostView {
                name: r.get(0)?,
                status: store::parsed(r, 1)?,
                since_ms: r.get(2)?,
                reason: r.get(3)?,
                connected: r.get(4)?,
                peer: r.get(5)?,
                agent_version: r.get(6)?,
                lost: None,
                services: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    for host in &mut hosts {
        host.lost = lost(conn, &host.name)?;
        host.services = services(conn, &host.name, values_shown)?;
    }
    Ok(hosts)
}

/// What `host`'s agent said it lost, if anything.
pub fn lost(conn: &Connection, host: &str) -> anyhow::Result<Option<LostView>> {
    Ok(conn
        .prepare_cached(
            "SELECT SUM(reports), MIN(first_ms), MAX(last_ms), MAX(received_ms),
                    (SELECT reason FROM gaps g2 WHERE g2.host = ?1 ORDER BY id DESC LIMIT 1)
             FROM gaps WHERE host = ?1 HAVING COUNT(*) > 0",
        )?
        .query_row([host], |r| {
            Ok(LostView {
                reports: r.get(0)?,
                first_ms: r.get(1)?,
                last_ms: r.get(2)?,
                received_ms: r.get(3)?,
                reason: r.get(4)?,
            })
        })
        .optional()?)
}

/// `host`'s scheduled services (and those that reported though not
/// scheduled), each with up to `values_shown` samples of its newest report.
pub fn services(
    conn: &Connection,
    host: &str,
    values_shown: usize,
) -> anyhow::Result<Vec<ServiceView>> {
    let mut services: Vec<ServiceView> = conn
        .prepare_cached(
            "SELECT name, plugin, interval_ms, last_ms, level, text, late, scheduled FROM services
             WHERE host = ?1 AND (scheduled = 1 OR last_ms IS NOT NULL) ORDER BY scheduled DESC, name",
        )?
        .query_map([host], |r| {
            Ok(ServiceView {
                name: r.get(0)?,
                plugin: r.get(1)?,
                interval_ms: r.get(2)?,
                last_ms: r.get(3)?,
                level: r.get(4)?,
                text: r.get(5)?,
                late: r.get(6)?,
                scheduled: r.get(7)?,
                values: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    for service in &mut services {
        if let Some(latest) = store::latest(conn, host, &service.name)? {
            service.values = latest.samples.into_iter().take(values_shown).collect();
        }
    }
    Ok(services)
}

/// `12s ago`, `5m ago`, `3h ago`.
pub(crate) fn age(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..120 => format!("{s}s ago"),
        120..7200 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

/// The human form of `status`. Every string an agent or plugin chose is
/// escaped: a status text must not forge a line or drive the terminal.
pub fn status_table(receiver: &ReceiverView, hosts: &[HostView], now_ms: u64) -> String {
    let mut out = String::new();
    if !receiver.running {
        let _ = match receiver.heartbeat_ms {
            Some(t) => writeln!(
                out,
                "the receiver is not running: this is its last word, {} (times below are as of then)",
                age(now_ms, t)
            ),
            None => writeln!(out, "the receiver is not running (no heartbeat recorded)"),
        };
    }
    if hosts.is_empty() {
        out.push_str("no hosts configured\n");
    }
    for h in hosts {
        let link = match (&h.connected, &h.peer) {
            (true, Some(peer)) => format!("connected from {peer}"),
            _ => "not connected".into(),
        };
        let _ = writeln!(
            out,
            "{} {} since {} ({link}): {}",
            h.name,
            h.status,
            age(now_ms, h.since_ms),
            Escaped(&h.reason)
        );
        if let Some(lost) = &h.lost {
            let _ = writeln!(
                out,
                "  LOST {} reports the agent could not keep (newest lost {}, told {}): {}",
                lost.reports,
                age(now_ms, lost.last_ms),
                age(now_ms, lost.received_ms),
                Escaped(&lost.reason)
            );
        }
        for s in &h.services {
            let last = s.last_ms.map_or("never".into(), |t| age(now_ms, t));
            let level = s.level.as_deref().unwrap_or("-");
            let values: Vec<String> = s.values.iter().map(render::sample).collect();
            let _ = writeln!(
                out,
                "  {:<12} every {:<6} last {:<9} {:<7} {}{}{}",
                s.name,
                sandglass_core::units::HumanDuration(std::time::Duration::from_millis(
                    s.interval_ms
                ))
                .to_string(),
                last,
                level,
                Escaped(s.text.as_deref().unwrap_or("")),
                if values.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", Escaped(&values.join(", ")))
                },
                if s.scheduled {
                    ""
                } else {
                    " (not in the schedule)"
                }
            );
            if let Some(late) = &s.late {
                let _ = writeln!(out, "  {:<12} LATE: {}", "", Escaped(late));
            }
        }
    }
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    let _ = writeln!(
        out,
        "database {:.1} MiB ({:.1} MiB free for new data){}",
        mib(receiver.database_bytes),
        mib(receiver.free_bytes),
        receiver.retention_ms.map_or(String::new(), |ms| format!(
            ", keeping {} of history",
            sandglass_core::units::HumanDuration(std::time::Duration::from_millis(ms))
        ))
    );
    out
}
