//! One function per store operation, each run inside its own savepoint by
//! the writer.

use super::plugin_runs;
use super::prepared::{Prepared, PreparedEntry};
use super::samples::{self, NewestLayouts};
use super::schema::write_heartbeat;
use super::{Op, ScheduledHost, ScheduledService, Seen};
use crate::liveness::{Change, ServiceState, Subject};
use crate::streams::{self, RangeSet};
use rusqlite::{Connection, OptionalExtension, params};
use sandglass_core::report::Level;
use sandglass_core::text::Escaped;
use sandglass_protocol::Gap;
use std::collections::HashMap;

/// What the writer remembers between ops, to spare queries.
#[derive(Default)]
pub(super) struct Caches {
    /// Service ids by host, then service name (looked up without copying
    /// either name).
    pub service_ids: HashMap<String, HashMap<String, i64>>,
    pub layouts: NewestLayouts,
    /// Stored numbers per (host, stream), as in the `stored_ranges` table.
    pub stored: HashMap<(String, u64), RangeSet>,
}

impl Caches {
    /// After a rollback: the caches may hold rows that are gone.
    pub fn clear(&mut self) {
        *self = Caches::default();
    }
}

/// Write one op (inside its savepoint).
pub(super) fn apply_op(
    tx: &Connection,
    caches: &mut Caches,
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
            write_batch(tx, caches, host, *stream, batch, clock, seen)
        }
        Op::Connected {
            host,
            peer,
            agent_version,
            plugins,
            time_ms,
        } => write_connected(tx, host, peer, agent_version, plugins, *time_ms),
        Op::Disconnected { host } => write_disconnected(tx, host),
        Op::Scheduled {
            services,
            hosts,
            time_ms,
        } => write_scheduled(tx, services, hosts, *time_ms),
        Op::PluginVersions { versions, time_ms } => {
            plugin_runs::write_versions(tx, versions, *time_ms)
        }
        Op::Heartbeat { time_ms, running } => Ok(write_heartbeat(tx, *time_ms, *running)?),
        Op::Changes { changes } => write_changes(tx, changes),
        Op::Prune {
            before_ms,
            retention_ms,
            max_rows,
            done,
        } => {
            super::schema::write_meta(tx, &[("retention_ms", *retention_ms)])?;
            let pruned = super::retention::prune(tx, *before_ms, *max_rows)?;
            // Heard before the commit: at worst housekeeping looks again.
            let _ = done.try_send(pruned);
            Ok(())
        }
    }
}

/// An agent authenticated as `host`.
fn write_connected(
    tx: &Connection,
    host: &str,
    peer: &str,
    agent_version: &str,
    plugins: &str,
    time_ms: u64,
) -> anyhow::Result<()> {
    tx.execute(
        "UPDATE hosts SET connected = 1, peer = ?2, agent_version = ?3, plugins = ?4, connected_ms = ?5
         WHERE name = ?1",
        params![host, peer, agent_version, plugins, time_ms],
    )?;
    Ok(())
}

/// The agent of `host` is gone.
fn write_disconnected(tx: &Connection, host: &str) -> anyhow::Result<()> {
    tx.execute("UPDATE hosts SET connected = 0 WHERE name = ?1", [host])?;
    Ok(())
}

/// The configuration's hosts and services: new hosts start with their
/// status; services not in the list are no longer scheduled.
fn write_scheduled(
    tx: &Connection,
    services: &[ScheduledService],
    hosts: &[ScheduledHost],
    time_ms: u64,
) -> anyhow::Result<()> {
    for h in hosts {
        tx.execute(
            "INSERT INTO hosts (name, status, since_ms, reason) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO NOTHING",
            params![h.host, h.status.as_str(), h.since_ms, h.reason],
        )?;
    }
    tx.execute("UPDATE services SET scheduled = 0", [])?;
    for s in services {
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
            params![s.host, s.service, s.plugin, s.interval_ms, time_ms],
        )?;
        plugin_runs::write_pin(tx, &s.host, &s.service, s.sha256.as_deref())?;
    }
    Ok(())
}

/// Liveness, level and trigger changes: in the event log, and as the
/// host's status or the service's lateness.
fn write_changes(tx: &Connection, changes: &[Change]) -> anyhow::Result<()> {
    for c in changes {
        let (old, new) = c.texts();
        tx.execute(
            "INSERT INTO events (time_ms, host, service, old, new, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![c.time_ms, c.host, c.service(), old, new, c.reason],
        )?;
        match &c.subject {
            Subject::Service { name, new, .. } => tx.execute(
                "UPDATE services SET late = ?3 WHERE host = ?1 AND name = ?2",
                params![
                    c.host,
                    name,
                    (*new == ServiceState::Late).then_some(&c.reason)
                ],
            )?,
            Subject::Host { new, .. } => tx.execute(
                "UPDATE hosts SET status = ?2, since_ms = ?3, reason = ?4 WHERE name = ?1",
                params![c.host, new.as_str(), c.time_ms, c.reason],
            )?,
            // The service's level is written with its reports.
            Subject::Level { .. } | Subject::Trigger { .. } => 0,
        };
    }
    Ok(())
}

/// How the agent's clock relates to the receiver's for one batch.
#[derive(Clone, Copy)]
pub(super) struct Clock {
    pub offset_ms: i64,
    pub received_ms: u64,
}

/// The newest report of one service in a batch.
struct Latest<'a> {
    time_ms: u64,
    service: &'a str,
    level: Level,
    text: &'a str,
}

/// Store the entries of `batch` not stored before, and record their numbers.
fn write_batch(
    tx: &Connection,
    caches: &mut Caches,
    host: &str,
    stream: u64,
    batch: &Prepared,
    clock: Clock,
    seen: &mut Vec<Seen>,
) -> anyhow::Result<()> {
    let key = (host.to_owned(), stream);
    let stored = match caches.stored.get(&key) {
        Some(set) => set.clone(),
        None => streams::load(tx, host, stream)?,
    };
    let latest = insert_entries(tx, caches, host, batch, &stored, clock)?;
    let mut updated = stored.clone();
    updated.insert(batch.seq, batch.last_seq());
    if batch.settled > 0 {
        // Nothing at or below `settled` comes again: the holes there close.
        updated.insert(1, batch.settled);
    }
    streams::save(tx, host, stream, &stored, &updated)?;
    caches.stored.insert(key, updated);
    update_services(tx, host, latest, seen)
}

/// Insert the reports and gaps of `batch` whose numbers are not in
/// `stored`; count reports of services never scheduled as a gap. Returns
/// the newest report per service id.
fn insert_entries<'b>(
    tx: &Connection,
    caches: &mut Caches,
    host: &str,
    batch: &'b Prepared,
    stored: &RangeSet,
    clock: Clock,
) -> anyhow::Result<HashMap<i64, Latest<'b>>> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO reports (service_id, time_ms, received_ms, seq, level, text, layout_id, samples)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut latest: HashMap<i64, Latest<'b>> = HashMap::new();
    let mut unscheduled: Option<Gap> = None;
    let fresh = batch
        .entries
        .iter()
        .enumerate()
        .map(|(i, entry)| (batch.seq + i as u64, entry))
        .filter(|(seq, _)| !stored.contains(*seq));
    for (seq, entry) in fresh {
        let report = match entry {
            PreparedEntry::Report(report) => report,
            PreparedEntry::Gap(gap) => {
                insert_gap(tx, host, clock, gap)?;
                continue;
            }
        };
        let time_ms = corrected(report.time_ms, clock);
        let Some(id) = service_id(tx, &mut caches.service_ids, host, &report.service)? else {
            count_unscheduled(&mut unscheduled, host, &report.service, time_ms);
            continue;
        };
        let layout = samples::layout_id(tx, &mut caches.layouts, id, &report.series)?;
        insert.execute(params![
            id,
            time_ms,
            clock.received_ms,
            seq,
            report.level.as_str(),
            report.text,
            layout,
            report.values
        ])?;
        plugin_runs::count_run(tx, id, time_ms, report.level)?;
        let newest = latest.entry(id).or_insert(Latest {
            time_ms: 0,
            service: &report.service,
            level: Level::Ok,
            text: "",
        });
        if time_ms >= newest.time_ms {
            *newest = Latest {
                time_ms,
                service: &report.service,
                level: report.level,
                text: &report.text,
            };
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
    Ok(latest)
}

/// Count a report of `service`, which `host` was never scheduled to run,
/// in the gap recorded for such reports.
fn count_unscheduled(unscheduled: &mut Option<Gap>, host: &str, service: &str, time_ms: u64) {
    let gap = unscheduled.get_or_insert_with(|| Gap {
        reports: 0,
        first_ms: time_ms,
        last_ms: time_ms,
        reason: format!(
            "reports for service {service} (and any other service {host} was never scheduled to run) are not stored"
        ),
    });
    gap.reports += 1;
    gap.first_ms = gap.first_ms.min(time_ms);
    gap.last_ms = gap.last_ms.max(time_ms);
}

/// Record each service's newest report (unless a newer one is stored) and
/// tell liveness.
fn update_services(
    tx: &Connection,
    host: &str,
    latest: HashMap<i64, Latest<'_>>,
    seen: &mut Vec<Seen>,
) -> anyhow::Result<()> {
    let mut update = tx.prepare_cached(
        "UPDATE services SET last_ms = ?2, level = ?3, text = ?4
         WHERE id = ?1 AND (last_ms IS NULL OR last_ms <= ?2)",
    )?;
    for (id, l) in latest {
        update.execute(params![id, l.time_ms, l.level.as_str(), l.text])?;
        seen.push(Seen {
            host: host.to_owned(),
            service: l.service.to_owned(),
            time_ms: l.time_ms,
            level: l.level,
            text: l.text.to_owned(),
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
pub(super) fn corrected(time_ms: u64, clock: Clock) -> u64 {
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
    ids: &mut HashMap<String, HashMap<String, i64>>,
    host: &str,
    service: &str,
) -> anyhow::Result<Option<i64>> {
    if let Some(id) = ids.get(host).and_then(|of_host| of_host.get(service)) {
        return Ok(Some(*id));
    }
    let id: Option<i64> = tx
        .prepare_cached("SELECT id FROM services WHERE host = ?1 AND name = ?2")?
        .query_row(params![host, service], |r| r.get(0))
        .optional()?;
    if let Some(id) = id {
        ids.entry(host.to_owned())
            .or_default()
            .insert(service.to_owned(), id);
    }
    Ok(id)
}
