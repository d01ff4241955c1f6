//! Remote write: every stored sample, forwarded to the Prometheus
//! remote-write endpoints of `[[remote_write]]` (VictoriaMetrics,
//! Prometheus, Mimir, ...).
//!
//! The durable queue is the store itself: every report is already in the
//! `reports` table, so an endpoint's queue is a cursor, the last row the
//! endpoint acknowledged, kept in the database (`meta`, key
//! `remote_write.<name>`) and advanced only after a 2xx answer. An endpoint
//! that is down loses nothing while its rows are kept; a receiver restart
//! resumes at the cursor.
//!
//! Each endpoint has a thread of its own with its own connection: it reads
//! the rows after the cursor (`store::reports_after`), sends them in
//! requests of at most `max_samples_per_send` samples ([`encode`]), and
//! - on 2xx advances the cursor;
//! - on a connection failure, a timeout, 429 or 5xx tries the same request
//!   again after a backoff that doubles up to `max_backoff`;
//! - on another 4xx (the endpoint will never take it) logs, counts the
//!   samples as dropped and goes on.
//!
//! Bounded: when more than `max_pending_reports` rows wait, or rows were
//! deleted by retention before they were sent, the cursor skips ahead and
//! what it skipped is counted and logged. The store writer never waits on
//! an endpoint; only the cursor update (one small row) takes SQLite's write
//! lock, once per request.
//!
//! Delivery is at least once: a crash between the endpoint's answer and the
//! cursor update sends that request again, and a report stored by two
//! receivers (an agent failing over before its Ack arrived) is sent by both.
//! Both repeat the same series, timestamp and value, which
//! VictoriaMetrics' `-dedup.minScrapeInterval` keeps once.

mod encode;

use crate::config::RemoteWrite;
use crate::http_post;
use crate::store;
use encode::Request;
use rusqlite::{Connection, OptionalExtension};
use sandglass_core::time::now_ms;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How often an endpoint that is caught up looks for new rows.
const POLL: Duration = Duration::from_millis(200);

/// How long a stopping receiver gives each endpoint to take what was stored
/// since its last poll (the last reports before a stop or a failover would
/// otherwise wait for this receiver's next start).
const DRAIN: Duration = Duration::from_secs(5);
/// Rows read at a time while filling a request.
const READ_ROWS: usize = 256;

/// One endpoint's progress, for `/metrics`.
#[derive(Debug, Default)]
pub struct Progress {
    pub name: String,
    /// Samples the endpoint acknowledged.
    pub sent_samples: AtomicU64,
    /// Samples the endpoint refused for good (4xx).
    pub dropped_samples: AtomicU64,
    /// Samples of requests that failed and were sent again.
    pub retried_samples: AtomicU64,
    /// Stored reports never sent: skipped past `max_pending_reports`, or
    /// deleted by retention before they were sent.
    pub skipped_reports: AtomicU64,
    /// Stored reports not yet acknowledged.
    pub pending_reports: AtomicU64,
    /// Samples in the request being sent (0 when caught up).
    pub pending_samples: AtomicU64,
    /// Age of the oldest report not yet acknowledged (0 when caught up).
    pub lag_ms: AtomicU64,
}

/// The running endpoints; dropping it stops their threads after they sent
/// what is stored, for at most [`DRAIN`] (what is left keeps its place: the
/// cursor moves only after the endpoint's 2xx).
pub struct RemoteWriters {
    pub progress: Vec<Arc<Progress>>,
    stop: Vec<mpsc::Sender<()>>,
    /// Closed by each thread as it ends (in a mutex: the server shares
    /// this, and a receiver is not `Sync`).
    ended: std::sync::Mutex<Vec<mpsc::Receiver<()>>>,
}

impl Drop for RemoteWriters {
    fn drop(&mut self) {
        self.stop.clear();
        let deadline = std::time::Instant::now() + DRAIN + POLL;
        let ended = self.ended.get_mut().unwrap_or_else(|e| e.into_inner());
        for ended in ended.iter() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let _ = ended.recv_timeout(left);
        }
    }
}

/// Start one thread per endpoint, reading `database`.
pub fn start(endpoints: &[RemoteWrite], database: &Path) -> RemoteWriters {
    let mut progress = Vec::new();
    let mut stop = Vec::new();
    let mut ended = Vec::new();
    for endpoint in endpoints {
        let shown = Arc::new(Progress {
            name: endpoint.name.clone(),
            ..Progress::default()
        });
        let (tx, rx) = mpsc::channel();
        let (ended_tx, ended_rx) = mpsc::channel::<()>();
        let writer = Writer {
            endpoint: endpoint.clone(),
            database: database.to_owned(),
            progress: shown.clone(),
            stop: rx,
            drain_until: std::cell::Cell::new(None),
        };
        std::thread::Builder::new()
            .name(format!("remote-write-{}", endpoint.name))
            .spawn(move || {
                writer.run();
                drop(ended_tx);
            })
            .expect("spawn a remote-write thread");
        progress.push(shown);
        stop.push(tx);
        ended.push(ended_rx);
    }
    RemoteWriters {
        progress,
        stop,
        ended: std::sync::Mutex::new(ended),
    }
}

struct Writer {
    endpoint: RemoteWrite,
    database: PathBuf,
    progress: Arc<Progress>,
    stop: mpsc::Receiver<()>,
    /// Once the receiver is stopping: until when it still sends.
    drain_until: std::cell::Cell<Option<std::time::Instant>>,
}

/// What became of one request.
enum Sent {
    /// Acknowledged, or refused for good: the cursor moves on.
    Done,
    /// Try it again after the backoff.
    Again,
}

impl Writer {
    fn run(self) {
        let mut backoff = self.endpoint.backoff;
        loop {
            let wait = match self.connect().and_then(|conn| self.forward(&conn)) {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(endpoint = %self.endpoint.name, "remote write: {e:#}");
                    backoff
                }
            };
            backoff = (backoff * 2).min(self.endpoint.max_backoff);
            if self.stopped(wait) {
                return;
            }
        }
    }

    fn connect(&self) -> anyhow::Result<Connection> {
        store::open_existing(&self.database)
    }

    /// Send until stopped; `Err` on a store failure (the caller backs off
    /// and starts over from the stored cursor).
    fn forward(&self, conn: &Connection) -> anyhow::Result<()> {
        let key = format!("remote_write.{}", self.endpoint.name);
        let mut cursor = read_cursor(conn, &key)?;
        let mut backoff = self.endpoint.backoff;
        loop {
            if self
                .drain_until
                .get()
                .is_some_and(|t| std::time::Instant::now() >= t)
            {
                return Ok(());
            }
            let head = store::last_report_rowid(conn)?;
            let bounded = self.bound(cursor, head);
            let (rows, request) = self.next_request(conn, bounded)?;
            let Some(&(last_row, _)) = rows.last() else {
                if bounded != cursor {
                    cursor = save_cursor(conn, &key, bounded)?;
                }
                self.caught_up();
                if self.draining() || self.stopped(POLL) {
                    return Ok(());
                }
                continue;
            };
            let first_row = rows[0].0;
            if bounded > 0 && first_row > bounded + 1 {
                self.skipped(
                    (first_row - bounded - 1) as u64,
                    "deleted by retention before they were sent",
                );
            }
            // What was skipped stays skipped (and counted once), even if
            // this request has to be tried again.
            if first_row - 1 != cursor {
                cursor = save_cursor(conn, &key, first_row - 1)?;
            }
            self.progress
                .pending_reports
                .store((head - bounded).max(0) as u64, Relaxed);
            self.progress
                .pending_samples
                .store(request.samples(), Relaxed);
            self.progress
                .lag_ms
                .store(now_ms().saturating_sub(rows[0].1), Relaxed);
            match self.send(&request) {
                Sent::Done => {
                    cursor = save_cursor(conn, &key, last_row)?;
                    backoff = self.endpoint.backoff;
                }
                Sent::Again => {
                    if self.draining() || self.stopped(backoff) {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(self.endpoint.max_backoff);
                }
            }
        }
    }

    /// The cursor, moved past what does not fit `max_pending_reports` (or
    /// back to the start when the table was emptied and row ids began again).
    fn bound(&self, cursor: i64, head: i64) -> i64 {
        if cursor > head {
            tracing::warn!(
                endpoint = %self.endpoint.name,
                "remote write: the store's newest report ({head}) is older than the endpoint's cursor ({cursor}); the reports table was emptied: sending from its start"
            );
            return 0;
        }
        let limit = self.endpoint.max_pending_reports as i64;
        if head - cursor > limit {
            self.skipped(
                (head - cursor - limit) as u64,
                "more than max_pending_reports waited",
            );
            return head - limit;
        }
        cursor
    }

    /// The rows (id, report time) of the next request and the request:
    /// whole reports after `cursor` up to `max_samples_per_send` samples
    /// (at least one report).
    fn next_request(
        &self,
        conn: &Connection,
        cursor: i64,
    ) -> anyhow::Result<(Vec<(i64, u64)>, Request)> {
        let mut request = Request::default();
        let mut rows = Vec::new();
        let mut after = cursor;
        'read: loop {
            let batch = store::reports_after(conn, after, READ_ROWS)?;
            let full = batch.len() == READ_ROWS;
            for (row, report) in batch {
                let fits = request.samples() + Request::samples_of(&report)
                    <= self.endpoint.max_samples_per_send as u64;
                if !rows.is_empty() && !fits {
                    break 'read;
                }
                request.add(&report);
                rows.push((row, report.time_ms));
                after = row;
            }
            if !full {
                break;
            }
        }
        Ok((rows, request))
    }

    fn send(&self, request: &Request) -> Sent {
        let endpoint = &self.endpoint;
        let mut headers = vec![
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ];
        if let Some(auth) = &endpoint.authorization {
            headers.push(("Authorization", auth));
        }
        let samples = request.samples();
        let answer = http_post::post(
            &endpoint.address,
            &endpoint.path,
            &headers,
            &request.body(),
            endpoint.timeout,
        );
        let progress = &self.progress;
        match answer {
            Ok(a) if a.success() => {
                progress.sent_samples.fetch_add(samples, Relaxed);
                Sent::Done
            }
            Ok(a) if a.status == 429 || a.status >= 500 => {
                tracing::warn!(endpoint = %endpoint.name, url = %endpoint.url, "remote write failed, will retry: {}", a.describe());
                progress.retried_samples.fetch_add(samples, Relaxed);
                Sent::Again
            }
            Ok(a) => {
                tracing::error!(endpoint = %endpoint.name, url = %endpoint.url, samples, "remote write refused, samples dropped: {}", a.describe());
                progress.dropped_samples.fetch_add(samples, Relaxed);
                Sent::Done
            }
            Err(e) => {
                tracing::warn!(endpoint = %endpoint.name, url = %endpoint.url, "remote write failed, will retry: {e}");
                progress.retried_samples.fetch_add(samples, Relaxed);
                Sent::Again
            }
        }
    }

    fn skipped(&self, reports: u64, why: &str) {
        tracing::warn!(endpoint = %self.endpoint.name, reports, "remote write skipped reports: {why}");
        self.progress.skipped_reports.fetch_add(reports, Relaxed);
    }

    fn caught_up(&self) {
        self.progress.pending_reports.store(0, Relaxed);
        self.progress.pending_samples.store(0, Relaxed);
        self.progress.lag_ms.store(0, Relaxed);
    }

    /// Wait `wait`; whether to end now. When the receiver stops, one
    /// more pass first: what was stored since the last poll is sent, for
    /// at most [`DRAIN`] ([`Writer::draining`] then says so).
    fn stopped(&self, wait: Duration) -> bool {
        if self.draining() {
            return true;
        }
        if matches!(self.stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout)) {
            return false;
        }
        self.drain_until
            .set(Some(std::time::Instant::now() + DRAIN));
        false
    }

    /// Whether the receiver is stopping and this is the last pass: it ends
    /// once caught up, at a failed request, or at the drain's deadline.
    fn draining(&self) -> bool {
        self.drain_until.get().is_some()
    }
}

fn read_cursor(conn: &Connection, key: &str) -> anyhow::Result<i64> {
    let value: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    Ok(value.unwrap_or(0))
}

fn save_cursor(conn: &Connection, key: &str, row: i64) -> anyhow::Result<i64> {
    store::write_meta(conn, &[(key, row as u64)])?;
    Ok(row)
}
