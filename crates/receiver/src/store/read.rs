//! What the store gives back: liveness after a restart, and the stored
//! reports `receiver status` and `receiver query` show.

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
