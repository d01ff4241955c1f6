//! Which plugin build each service runs, and how its runs went: the data
//! of `receiver plugins`.
//!
//! Reports do not carry the sha256 of the plugin that made them (adding a
//! field to the MessagePack array would break older peers), so a report is
//! counted for the build its service's schedule pins when the report
//! *arrives*. Right after a re-pin, reports the agent made with the old
//! build before it fetched the new one can be counted for the new build:
//! at most one schedule push's worth per service.

use super::PluginVersion;
use rusqlite::{Connection, params};
use sandglass_core::report::Level;

/// Runs are counted per service, build and ten minutes of report time: a
/// row (with its 64-character hash, twice with the index) per report would
/// double what the store takes per sample; one per ten minutes costs about
/// two bytes per sample of a service that runs every minute.
const BUCKET_MS: u64 = 600_000;

/// Record builds not seen before, with `time_ms` as their first sighting.
pub(super) fn write_versions(
    tx: &Connection,
    versions: &[PluginVersion],
    time_ms: u64,
) -> anyhow::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO plugin_versions (plugin, sha256, size, first_seen_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (plugin, sha256) DO NOTHING",
    )?;
    for v in versions {
        insert.execute(params![v.plugin, v.sha256, v.size, time_ms])?;
    }
    Ok(())
}

/// Set (or, for a schedule that pins none, clear) the build a service's
/// schedule pins.
pub(super) fn write_pin(
    tx: &Connection,
    host: &str,
    service: &str,
    sha256: Option<&str>,
) -> anyhow::Result<()> {
    match sha256 {
        Some(sha256) => tx
            .prepare_cached(
                "INSERT INTO service_pins (service_id, sha256)
                 SELECT id, ?3 FROM services WHERE host = ?1 AND name = ?2
                 ON CONFLICT (service_id) DO UPDATE SET sha256 = excluded.sha256",
            )?
            .execute(params![host, service, sha256])?,
        None => tx
            .prepare_cached(
                "DELETE FROM service_pins WHERE service_id IN
                   (SELECT id FROM services WHERE host = ?1 AND name = ?2)",
            )?
            .execute(params![host, service])?,
    };
    Ok(())
}

/// Count one report of service `id` for the build its schedule pins (if
/// it pins one).
pub(super) fn count_run(
    tx: &Connection,
    service_id: i64,
    time_ms: u64,
    level: Level,
) -> anyhow::Result<()> {
    tx.prepare_cached(
        "INSERT INTO plugin_runs (service_id, sha256, bucket_ms, runs, unknown, last_ms)
         SELECT ?1, sha256, ?2, 1, ?3, ?4 FROM service_pins WHERE service_id = ?1
         ON CONFLICT (service_id, sha256, bucket_ms) DO UPDATE SET
            runs = runs + 1,
            unknown = unknown + excluded.unknown,
            last_ms = max(last_ms, excluded.last_ms)",
    )?
    .execute(params![
        service_id,
        time_ms - time_ms % BUCKET_MS,
        (level == Level::Unknown) as i64,
        time_ms
    ])?;
    Ok(())
}
