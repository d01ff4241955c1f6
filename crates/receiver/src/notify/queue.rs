//! The persistent queue: every message is a row per channel in the
//! receiver's database before anyone is told, so a receiver restart does
//! not drop a pending notification; every attempt is a row too, and what
//! `receiver notifications` lists.

use super::message::Notification;
use crate::config::Channel;
use rusqlite::{Connection, params};
use serde::Serialize;
use std::time::Duration;

/// Notifications (docs/notifications.md): the persistent queue, one row
/// per message and channel, with every attempt; acknowledgements and
/// maintenance windows that `receiver ack` and `receiver maintenance` write
/// and the running receiver reads. Also created by those commands, so that
/// they work on a database an older receiver made.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    host TEXT,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL,
    last_error TEXT,
    done_ms INTEGER
);
CREATE INDEX IF NOT EXISTS notifications_pending ON notifications (state, next_ms);
CREATE TABLE IF NOT EXISTS notification_attempts (
    id INTEGER PRIMARY KEY,
    notification INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS acks (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    service TEXT,
    comment TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    cleared_ms INTEGER
);
CREATE TABLE IF NOT EXISTS maintenance (
    id INTEGER PRIMARY KEY,
    host TEXT,
    grp TEXT,
    from_ms INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    comment TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    ended_ms INTEGER
);
";

/// Record `n` for every channel: pending, or suppressed (and why).
pub fn enqueue(
    conn: &Connection,
    channels: &[Channel],
    n: &Notification,
    suppressed: Option<&str>,
    now_ms: u64,
) -> rusqlite::Result<()> {
    let body = serde_json::to_string(n).expect("a notification always encodes");
    let state = if suppressed.is_some() {
        "suppressed"
    } else {
        "pending"
    };
    let mut insert = conn.prepare_cached(
        "INSERT INTO notifications (created_ms, channel, kind, host, body, state, next_ms, last_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?1, ?7)",
    )?;
    for ch in channels {
        insert.execute(params![
            now_ms, ch.name, n.kind, n.host, body, state, suppressed
        ])?;
    }
    Ok(())
}

/// A queued message whose time has come.
pub struct Due {
    pub id: i64,
    pub channel: String,
    pub body: String,
    pub attempts: u32,
}

/// The pending messages due at `now_ms`, oldest first.
pub fn due(conn: &Connection, now_ms: u64, limit: usize) -> rusqlite::Result<Vec<Due>> {
    conn.prepare_cached(
        "SELECT id, channel, body, attempts FROM notifications
         WHERE state = 'pending' AND next_ms <= ?1 ORDER BY id LIMIT ?2",
    )?
    .query_map(params![now_ms, limit as i64], |r| {
        Ok(Due {
            id: r.get(0)?,
            channel: r.get(1)?,
            body: r.get(2)?,
            attempts: r.get(3)?,
        })
    })?
    .collect()
}

/// How an attempt ended, as recorded.
pub enum Settled {
    Sent,
    /// Tried again at this time.
    Retry(u64),
    GivenUp,
}

/// Record one attempt at `due` through `ch` (None: the channel is no
/// longer configured) and decide what follows.
pub fn record(
    conn: &Connection,
    due: &Due,
    ch: Option<&Channel>,
    outcome: &Result<String, String>,
    now_ms: u64,
) -> rusqlite::Result<Settled> {
    let attempts = due.attempts + 1;
    let (ok, text) = match outcome {
        Ok(t) => (true, t),
        Err(t) => (false, t),
    };
    conn.prepare_cached(
        "INSERT INTO notification_attempts (notification, time_ms, ok, outcome) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![due.id, now_ms, ok, text])?;
    let settled = match ch {
        _ if ok => Settled::Sent,
        Some(ch) if attempts < ch.attempts => Settled::Retry(
            now_ms + backoff(ch.backoff, ch.max_backoff, attempts).as_millis() as u64,
        ),
        _ => Settled::GivenUp,
    };
    let (state, next_ms, done) = match settled {
        Settled::Sent => ("sent", now_ms, Some(now_ms)),
        Settled::Retry(next) => ("pending", next, None),
        Settled::GivenUp => ("failed", now_ms, Some(now_ms)),
    };
    conn.prepare_cached(
        "UPDATE notifications SET state = ?2, attempts = ?3, next_ms = ?4, last_error = ?5, done_ms = ?6
         WHERE id = ?1",
    )?
    .execute(params![due.id, state, attempts, next_ms, (!ok).then_some(text), done])?;
    Ok(settled)
}

/// The wait after the `attempts`-th failed attempt: `base`, doubling each
/// time, never above `max`.
pub fn backoff(base: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(max)
}

/// One notification as `receiver notifications --json` prints it.
#[derive(Debug, Serialize)]
pub struct NotificationView {
    pub id: i64,
    pub created_ms: u64,
    pub channel: String,
    pub kind: String,
    pub host: Option<String>,
    /// pending, sent, failed (given up) or suppressed.
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub done_ms: Option<u64>,
    pub body: serde_json::Value,
}

/// The notifications created since `since_ms`, at most `limit` (the
/// newest), oldest first.
pub fn list(
    conn: &Connection,
    since_ms: u64,
    limit: usize,
) -> anyhow::Result<Vec<NotificationView>> {
    let mut rows = conn
        .prepare(
            "SELECT id, created_ms, channel, kind, host, state, attempts, last_error, done_ms, body
             FROM notifications WHERE created_ms >= ?1 ORDER BY id DESC LIMIT ?2",
        )?
        .query_map(params![since_ms, limit as i64], |r| {
            Ok(NotificationView {
                id: r.get(0)?,
                created_ms: r.get(1)?,
                channel: r.get(2)?,
                kind: r.get(3)?,
                host: r.get(4)?,
                state: r.get(5)?,
                attempts: r.get(6)?,
                last_error: r.get(7)?,
                done_ms: r.get(8)?,
                body: serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.reverse();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let s = Duration::from_secs;
        let waits: Vec<u64> = (1..=6).map(|a| backoff(s(2), s(20), a).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 20, 20]);
        assert_eq!(backoff(s(1), s(600), 200), s(600));
    }
}
