//! Retention: reports, gaps and events older than `retention` are deleted
//! in small steps, each its own short write on the writer thread between
//! batches, so housekeeping never stalls ingestion. SQLite reuses the freed
//! pages: the file stops growing once it holds `retention` of history.

use rusqlite::{Connection, params};

/// Delete up to `max_rows` rows older than `before_ms`: reports (by the
/// per-service time index), then gaps, events and plugin run counts. Returns how many went.
pub(super) fn prune(tx: &Connection, before_ms: u64, max_rows: usize) -> rusqlite::Result<usize> {
    let mut left = max_rows;
    let services: Vec<i64> = tx
        .prepare_cached("SELECT id FROM services")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut reports = tx.prepare_cached(
        "DELETE FROM reports WHERE rowid IN
           (SELECT rowid FROM reports WHERE service_id = ?1 AND time_ms < ?2 LIMIT ?3)",
    )?;
    for id in services {
        if left == 0 {
            break;
        }
        left -= reports.execute(params![id, before_ms, left as i64])?;
    }
    for (table, time) in [
        ("gaps", "received_ms"),
        ("events", "time_ms"),
        ("plugin_runs", "bucket_ms"),
    ] {
        if left == 0 {
            break;
        }
        left -= tx.execute(
            &format!(
                "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {time} < ?1 LIMIT ?2)"
            ),
            params![before_ms, left as i64],
        )?;
    }
    Ok(max_rows - left)
}

/// The database's size and how much of it is free pages, in bytes.
pub fn size(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    let pragma = |name: &str| conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, u64>(0));
    let page = pragma("page_size")?;
    Ok((
        pragma("page_count")? * page,
        pragma("freelist_count")? * page,
    ))
}
