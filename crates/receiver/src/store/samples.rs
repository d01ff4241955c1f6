//! How samples sit on disk: a report row keeps only its values, 8 bytes
//! each (`reports.samples`, little-endian f64 in the report's order), and
//! names its *layout*: the list of series (name, kind, unit, labels) those
//! values belong to, stored once per service in `layouts` and shared by
//! every report that sends the same series in the same order — which is
//! nearly every report, since a collector sends the same series run after
//! run.
//!
//! Why: one metric over time is read through the reports' (service, time)
//! index by taking 8 bytes at a known offset from each row, without
//! decoding the rest of what the service sent (plots, `query --metric`);
//! names and labels cost nothing per report; and a report is still one row,
//! which is what lets one SQLite writer keep up with a fleet. A report is
//! kept exactly as sent (order, a series named twice, NaN).
//!
//! Reports stored before layouts (`layout_id` NULL) keep their samples as
//! a MessagePack array in `reports.samples`, read as before; retention ages
//! them out.

use super::prepared::Series;
use anyhow::{Context, bail};
use rusqlite::{Connection, OptionalExtension, params};
use sandglass_core::hash::sha256;
use sandglass_core::report::{MetricKind, Sample};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS layouts (
    id INTEGER PRIMARY KEY,
    service_id INTEGER NOT NULL,
    -- The first 8 bytes of the sha256 of `series`: finds a layout again.
    digest BLOB NOT NULL,
    -- JSON: [[name, kind, unit, [[key, value], ...]], ...] in report order.
    series TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS layouts_by_digest ON layouts (service_id, digest);
";

/// Add `reports.layout_id` to a database made before layouts.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_layout: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('reports') WHERE name = 'layout_id'")?
        .exists([])?;
    if !has_layout {
        conn.execute_batch("ALTER TABLE reports ADD COLUMN layout_id INTEGER")?;
    }
    Ok(())
}

/// One series of a layout: a sample without its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesDesc(
    pub String,
    pub MetricKind,
    pub String,
    pub Vec<(String, String)>,
);

/// A sample's series, taken from it without copying its strings.
impl From<Sample> for SeriesDesc {
    fn from(sample: Sample) -> SeriesDesc {
        SeriesDesc(sample.name, sample.kind, sample.unit, sample.labels)
    }
}

impl SeriesDesc {
    pub(super) fn describes(&self, sample: &Sample) -> bool {
        self.0 == sample.name
            && self.1 == sample.kind
            && self.2 == sample.unit
            && self.3 == sample.labels
    }

    pub(super) fn with(&self, value: f64) -> Sample {
        Sample {
            name: self.0.clone(),
            value,
            kind: self.1,
            unit: self.2.clone(),
            labels: self.3.clone(),
        }
    }
}

/// The writer's newest layout per service id: what the next report of the
/// service almost always has again (as the very same [`Series`], shared by
/// the connection that prepared it).
pub(super) type NewestLayouts = HashMap<i64, (i64, Series)>;

/// The layout id to store for a report of `service_id` with `series`:
/// the service's newest layout if the series are the same (the same
/// pointer, or else equal), else the stored layout with exactly these
/// series, else a new one.
pub(super) fn layout_id(
    tx: &Connection,
    newest: &mut NewestLayouts,
    service_id: i64,
    series: &Series,
) -> anyhow::Result<i64> {
    if let Some((id, known)) = newest.get_mut(&service_id)
        && (Arc::ptr_eq(known, series) || **known == **series)
    {
        // The next report of this connection shares these.
        *known = series.clone();
        return Ok(*id);
    }
    let text = serde_json::to_string(&**series)?;
    let digest = &sha256(text.as_bytes())[..8];
    let found: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM layouts WHERE service_id = ?1 AND digest = ?2 AND series = ?3",
        )?
        .query_row(params![service_id, digest, text], |r| r.get(0))
        .optional()?;
    let id = match found {
        Some(id) => id,
        None => {
            tx.prepare_cached(
                "INSERT INTO layouts (service_id, digest, series) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![service_id, digest, text])?;
            tx.last_insert_rowid()
        }
    };
    newest.insert(service_id, (id, series.clone()));
    Ok(id)
}

/// Layouts read so far, by id: a reader parses each once.
#[derive(Default)]
pub struct Layouts(HashMap<i64, Vec<SeriesDesc>>);

impl Layouts {
    /// The series of layout `id`.
    pub fn get(&mut self, conn: &Connection, id: i64) -> anyhow::Result<&[SeriesDesc]> {
        let series = match self.0.entry(id) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(new) => {
                let text: String = conn
                    .prepare_cached("SELECT series FROM layouts WHERE id = ?1")?
                    .query_row([id], |r| r.get(0))
                    .with_context(|| format!("a report names layout {id}, which is not stored"))?;
                new.insert(
                    serde_json::from_str(&text).with_context(|| format!("damaged layout {id}"))?,
                )
            }
        };
        Ok(series)
    }

    /// The samples of one stored report: its values in its layout, or (no
    /// layout: stored before layouts) its MessagePack array.
    pub fn samples(
        &mut self,
        conn: &Connection,
        layout: Option<i64>,
        bytes: &[u8],
    ) -> anyhow::Result<Vec<Sample>> {
        let Some(id) = layout else {
            return Ok(rmp_serde::from_slice(bytes)?);
        };
        let series = self.get(conn, id)?;
        let values = values(bytes, series.len())?;
        Ok(series.iter().zip(values).map(|(d, v)| d.with(v)).collect())
    }
}

/// The values of a report's bytes, which must hold `count`.
fn values(bytes: &[u8], count: usize) -> anyhow::Result<impl Iterator<Item = f64> + '_> {
    if bytes.len() != count * 8 {
        bail!("damaged values: {} bytes for {count} series", bytes.len());
    }
    Ok(bytes.chunks_exact(8).map(value))
}

fn value(bytes: &[u8]) -> f64 {
    f64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

/// One value of a metric, as [`metric`] finds it.
pub struct Found {
    pub host: String,
    pub service: String,
    pub time_ms: u64,
    pub sample: Sample,
}

/// Every value of `metric` with all of `labels` from `since_ms` (included)
/// to `until_ms` (excluded), of one host or all and one service or all,
/// ordered by time, host and service (series in report order within).
/// Reads 8 bytes per series per report; a service none of whose layouts
/// has the metric reads only its reports stored before layouts.
pub fn metric(
    conn: &Connection,
    scope: (Option<&str>, Option<&str>),
    metric: &str,
    labels: &[(String, String)],
    (since_ms, until_ms): (u64, u64),
) -> anyhow::Result<Vec<Found>> {
    let wanted = |name: &str, series_labels: &[(String, String)]| {
        name == metric && labels.iter().all(|l| series_labels.contains(l))
    };
    let services: Vec<(i64, String, String)> = conn
        .prepare_cached(
            "SELECT id, host, name FROM services
             WHERE (?1 IS NULL OR host = ?1) AND (?2 IS NULL OR name = ?2) ORDER BY host, name",
        )?
        .query_map(params![scope.0, scope.1], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut layouts = Layouts::default();
    // Per layout id: the positions of the wanted series.
    let mut picks: HashMap<i64, Vec<usize>> = HashMap::new();
    let mut found = Vec::new();
    for (service_id, host, service) in services {
        let ids: Vec<i64> = conn
            .prepare_cached("SELECT id FROM layouts WHERE service_id = ?1")?
            .query_map([service_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut any = false;
        for id in ids {
            let series = layouts.get(conn, id)?;
            let positions: Vec<usize> = (0..series.len())
                .filter(|&i| wanted(&series[i].0, &series[i].3))
                .collect();
            any |= !positions.is_empty();
            picks.insert(id, positions);
        }
        let mut rows = conn.prepare_cached(
            "SELECT time_ms, layout_id, samples FROM reports
             WHERE service_id = ?1 AND time_ms >= ?2 AND time_ms < ?3
               AND (?4 OR layout_id IS NULL)
             ORDER BY time_ms",
        )?;
        let rows = rows.query_map(params![service_id, since_ms, until_ms, any], |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        for row in rows {
            let (time_ms, layout, bytes) = row?;
            let at = |sample: Sample| Found {
                host: host.clone(),
                service: service.clone(),
                time_ms,
                sample,
            };
            let Some(id) = layout else {
                let old: Vec<Sample> = rmp_serde::from_slice(&bytes)
                    .with_context(|| format!("damaged samples of {host}/{service} at {time_ms}"))?;
                found.extend(
                    old.into_iter()
                        .filter(|s| wanted(&s.name, &s.labels))
                        .map(at),
                );
                continue;
            };
            let series = layouts.get(conn, id)?;
            if bytes.len() != series.len() * 8 {
                bail!(
                    "damaged values of {host}/{service} at {time_ms}: {} bytes for {} series",
                    bytes.len(),
                    series.len()
                );
            }
            for &i in picks.get(&id).map_or(&[][..], Vec::as_slice) {
                found.push(at(series[i].with(value(&bytes[i * 8..i * 8 + 8]))));
            }
        }
    }
    // Stable: within one time and service, series keep their report order.
    found.sort_by(|a, b| (a.time_ms, &a.host, &a.service).cmp(&(b.time_ms, &b.host, &b.service)));
    Ok(found)
}
