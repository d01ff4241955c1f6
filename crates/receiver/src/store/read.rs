//! What the store gives back: liveness after a restart, and the stored
//! reports `receiver status` and `receiver query` show.

use super::samples::Layouts;
use crate::liveness::{Remembered, RememberedHost, UnknownState};
use anyhow::Context;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};
use sandglass_core::report::{Level, Sample};

/// Column `i` of `row`, a state stored as text: one this receiver does not
/// know is an error that names it.
pub fn parsed<T>(row: &Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr<Err = UnknownState>,
{
    row.get::<_, String>(i)?
        .parse()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e)))
}

/// What the store remembers for liveness after a restart.
pub fn remembered(conn: &Connection) -> anyhow::Result<(Vec<RememberedHost>, Vec<Remembered>)> {
    let hosts = conn
        .prepare("SELECT name, status, since_ms, reason FROM hosts")?
        .query_map([], |r| {
            Ok(RememberedHost {
                host: r.get(0)?,
                status: parsed(r, 1)?,
                since_ms: r.get(2)?,
                reason: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()
        .context("cannot read the hosts' status")?;
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

/// One stored report, decoded.
pub struct StoredReport {
    pub host: String,
    pub service: String,
    pub time_ms: u64,
    pub level: String,
    pub text: String,
    pub samples: Vec<Sample>,
}

/// Reports from `since_ms` (included) to `until_ms` (excluded), oldest
/// first, of one host or all (`None`) and one service or all.
pub fn reports(
    conn: &Connection,
    host: Option<&str>,
    service: Option<&str>,
    since_ms: u64,
    until_ms: u64,
) -> anyhow::Result<Vec<StoredReport>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.host, s.name, r.time_ms, r.level, r.text, r.layout_id, r.samples FROM reports r
         JOIN services s ON s.id = r.service_id
         WHERE (?1 IS NULL OR s.host = ?1) AND (?2 IS NULL OR s.name = ?2)
           AND r.time_ms >= ?3 AND r.time_ms < ?4
         ORDER BY r.time_ms, s.host, s.name",
    )?;
    let rows = stmt.query_map(params![host, service, since_ms, until_ms], |r| {
        Ok((
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, Vec<u8>>(6)?,
        ))
    })?;
    let mut layouts = Layouts::default();
    rows.map(|row| {
        let (head, layout, bytes) = row?;
        stored_report(conn, &mut layouts, head, layout, &bytes)
    })
    .collect()
}

/// What a report row holds before its samples: host, service, time,
/// level, text.
type ReportHead = (String, String, u64, String, String);

fn stored_report(
    conn: &Connection,
    layouts: &mut Layouts,
    (host, service, time_ms, level, text): ReportHead,
    layout: Option<i64>,
    bytes: &[u8],
) -> anyhow::Result<StoredReport> {
    let samples = layouts
        .samples(conn, layout, bytes)
        .with_context(|| format!("damaged samples of {host}/{service} at {time_ms}"))?;
    Ok(StoredReport {
        host,
        service,
        time_ms,
        level,
        text,
        samples,
    })
}

/// Up to `limit` stored reports after row `after_rowid` of `reports`, in
/// row order (the order they were stored), each with its row id: what
/// remote write reads, keeping the last row an endpoint acknowledged as its
/// cursor.
pub fn reports_after(
    conn: &Connection,
    after_rowid: i64,
    limit: usize,
) -> anyhow::Result<Vec<(i64, StoredReport)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.host, s.name, r.time_ms, r.level, r.text, r.layout_id, r.samples, r.rowid
         FROM reports r JOIN services s ON s.id = r.service_id
         WHERE r.rowid > ?1 ORDER BY r.rowid LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_rowid, limit as i64], |r| {
        Ok((
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, Vec<u8>>(6)?,
            r.get::<_, i64>(7)?,
        ))
    })?;
    let mut layouts = Layouts::default();
    rows.map(|row| {
        let (head, layout, bytes, rowid) = row?;
        Ok((
            rowid,
            stored_report(conn, &mut layouts, head, layout, &bytes)?,
        ))
    })
    .collect()
}

/// The newest row id of `reports` (0 when it is empty).
pub fn last_report_rowid(conn: &Connection) -> anyhow::Result<i64> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(rowid), 0) FROM reports", [], |r| {
            r.get(0)
        })?,
    )
}

/// Every host the store knows: configured, or seen reporting.
pub fn host_names(conn: &Connection) -> anyhow::Result<Vec<String>> {
    names(
        conn,
        "SELECT name FROM hosts UNION SELECT host FROM services ORDER BY 1",
        [],
    )
}

/// Every service of one host (or of all) the store knows: scheduled, or
/// seen reporting.
pub fn service_names(conn: &Connection, host: Option<&str>) -> anyhow::Result<Vec<String>> {
    names(
        conn,
        "SELECT DISTINCT name FROM services WHERE ?1 IS NULL OR host = ?1 ORDER BY 1",
        [host],
    )
}

/// The (host, service) pairs in scope.
pub fn services_of(
    conn: &Connection,
    host: Option<&str>,
    service: Option<&str>,
) -> anyhow::Result<Vec<(String, String)>> {
    Ok(conn
        .prepare(
            "SELECT host, name FROM services
             WHERE (?1 IS NULL OR host = ?1) AND (?2 IS NULL OR name = ?2) ORDER BY host, name",
        )?
        .query_map(params![host, service], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

fn names(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> anyhow::Result<Vec<String>> {
    Ok(conn
        .prepare(sql)?
        .query_map(args, |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// The newest stored report of one service.
pub fn latest(
    conn: &Connection,
    host: &str,
    service: &str,
) -> anyhow::Result<Option<StoredReport>> {
    let row = conn
        .prepare_cached(
            "SELECT r.time_ms, r.level, r.text, r.layout_id, r.samples FROM reports r
             JOIN services s ON s.id = r.service_id
             WHERE s.host = ?1 AND s.name = ?2 ORDER BY r.time_ms DESC LIMIT 1",
        )?
        .query_row(params![host, service], |r| {
            Ok((
                (
                    host.to_owned(),
                    service.to_owned(),
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                ),
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })
        .optional()?;
    row.map(|(head, layout, bytes)| {
        stored_report(conn, &mut Layouts::default(), head, layout, &bytes)
    })
    .transpose()
}
