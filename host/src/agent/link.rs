//! The agent's connection to its receiver: connect with exponential backoff
//! and jitter, introduce itself, receive schedules, send reports in numbered
//! batches and keep each batch until the receiver acknowledges it; resend
//! what was not acknowledged after a reconnect.
//!
//! Reports wait in memory (bounded by `queue_max`; the oldest are dropped
//! and counted beyond it). Issue 4's on-disk spool replaces this queue.

use super::services::now_ms;
use crate::config::ConnectionConfig;
use crate::protocol::{
    DEFAULT_MAX_FRAME, FrameCodec, Hello, InstalledPlugin, Message, PROTOCOL_VERSION, ReportBatch,
    Schedule, read_preamble, write_preamble,
};
use crate::report::Report;
use crate::runtime::{abi::ABI_VERSION, hex};
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::Framed;

/// Batches sent and not yet acknowledged, at most.
const MAX_IN_FLIGHT: usize = 64;
/// Idle time after which the agent pings the receiver.
const PING_EVERY: Duration = Duration::from_secs(10);
/// How long a stopping agent waits for the last acknowledgements.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Who the agent is and where its receiver is.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub receiver: String,
    pub host_id: String,
    pub token: String,
    pub plugin_dir: PathBuf,
    pub connection: ConnectionConfig,
}

/// Reports waiting to be sent or acknowledged.
struct Outbox {
    queue: VecDeque<Report>,
    unacked: BTreeMap<u64, ReportBatch>,
    next_seq: u64,
    limit: usize,
    dropped: u64,
}

impl Outbox {
    /// Reports not yet acknowledged.
    fn held(&self) -> usize {
        self.queue.len()
            + self
                .unacked
                .values()
                .map(|b| b.reports.len())
                .sum::<usize>()
    }

    fn push(&mut self, report: Report) {
        self.queue.push_back(report);
        if self.held() > self.limit && self.queue.pop_front().is_some() {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "the receiver is away and {} reports are held: dropping the oldest (raise [connection] queue_max to hold more)",
                    self.limit
                );
            }
        }
    }

    fn next_batch(&mut self, max: usize) -> Option<ReportBatch> {
        if self.queue.is_empty() || self.unacked.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let take = self.queue.len().min(max);
        let batch = ReportBatch {
            seq: self.next_seq,
            reports: self.queue.drain(..take).collect(),
        };
        self.next_seq += 1;
        self.unacked.insert(batch.seq, batch.clone());
        Some(batch)
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.unacked.is_empty()
    }
}

/// Keep a connection to the receiver until `reports` closes (the agent is
/// stopping) and what it held is flushed. New schedules go to `schedules`.
pub async fn run(
    config: LinkConfig,
    mut reports: mpsc::Receiver<Report>,
    schedules: watch::Sender<Option<Schedule>>,
    mut revision: u64,
) {
    let mut outbox = Outbox {
        queue: VecDeque::new(),
        unacked: BTreeMap::new(),
        next_seq: 1,
        limit: config.connection.queue_max,
        dropped: 0,
    };
    let min = config.connection.reconnect_min.0;
    let mut backoff = min;
    let mut stopping = false;
    loop {
        let mut welcomed = false;
        let result = session(
            &config,
            &mut reports,
            &schedules,
            &mut revision,
            &mut outbox,
            &mut welcomed,
            &mut stopping,
        )
        .await;
        // Ok: the agent is stopping and everything was flushed (or the
        // flush wait ran out).
        let Err(e) = result else { return };
        if welcomed {
            backoff = min;
        }
        if stopping {
            tracing::warn!(
                receiver = config.receiver,
                "{e:#}; stopping with {} reports the receiver has not acknowledged",
                outbox.held()
            );
            return;
        }
        tracing::warn!(
            receiver = config.receiver,
            "{e:#}; reconnecting in about {} ms",
            backoff.as_millis()
        );
        // Jitter of ±25% so a fleet does not reconnect in lockstep.
        let wake = Instant::now() + backoff.mul_f64(0.75 + fastrand::f64() * 0.5);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(wake) => break,
                report = reports.recv() => match report {
                    Some(r) => outbox.push(r),
                    // Stopping: one last attempt to deliver what is held.
                    None => { stopping = true; break; }
                },
            }
        }
        backoff = (backoff * 2).min(config.connection.reconnect_max.0);
    }
}

type Conn = Framed<TcpStream, FrameCodec>;

/// The plugins in `plugin_dir`, for the Hello.
fn installed(dir: &PathBuf) -> Vec<InstalledPlugin> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut plugins: Vec<InstalledPlugin> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_stem()?.to_str()?.to_owned();
            (path.extension()? == "wasm").then_some(())?;
            let bytes = std::fs::read(&path).ok()?;
            Some(InstalledPlugin {
                name,
                sha256: hex(&Sha256::digest(bytes)),
            })
        })
        .collect();
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    plugins
}

async fn connect(config: &LinkConfig, revision: u64) -> anyhow::Result<(Conn, Message)> {
    let timeout = config.connection.timeout.0;
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(&config.receiver))
        .await
        .context("connect timed out")?
        .context("cannot connect")?;
    stream.set_nodelay(true)?;
    write_preamble(&mut stream).await?;
    let hello = Message::Hello(Hello {
        host_id: config.host_id.clone(),
        token: config.token.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        abi_version: ABI_VERSION.into(),
        time_ms: now_ms(),
        schedule_revision: revision,
        plugins: installed(&config.plugin_dir),
    });
    let version = tokio::time::timeout(timeout, read_preamble(&mut stream))
        .await
        .context("no answer from the receiver")??;
    let mut framed = Framed::new(stream, FrameCodec::new(DEFAULT_MAX_FRAME));
    if version == PROTOCOL_VERSION {
        framed.send(hello).await?;
    }
    let first = tokio::time::timeout(timeout, framed.next())
        .await
        .context("no Welcome from the receiver")?
        .context("the receiver closed the connection")??;
    if version != PROTOCOL_VERSION && !matches!(first, Message::Error(_)) {
        bail!("the receiver speaks protocol version {version}, this agent {PROTOCOL_VERSION}");
    }
    Ok((framed, first))
}

#[allow(clippy::too_many_arguments)]
async fn session(
    config: &LinkConfig,
    reports: &mut mpsc::Receiver<Report>,
    schedules: &watch::Sender<Option<Schedule>>,
    revision: &mut u64,
    outbox: &mut Outbox,
    welcomed: &mut bool,
    stopping: &mut bool,
) -> anyhow::Result<()> {
    let (mut framed, first) = connect(config, *revision).await?;
    let refresh = match first {
        Message::Welcome(w) => Duration::from_millis(w.refresh_ms.max(1000)),
        Message::Error(f) => {
            tracing::error!(
                receiver = config.receiver,
                "the receiver refused this agent: {}",
                f.text
            );
            bail!("refused by the receiver: {f}");
        }
        other => bail!("expected Welcome, got {other:?}"),
    };
    *welcomed = true;
    tracing::info!(
        receiver = config.receiver,
        host = config.host_id,
        "connected"
    );
    // What was sent before and not acknowledged goes again, in order.
    for batch in outbox.unacked.values() {
        framed.feed(Message::Reports(batch.clone())).await?;
    }
    framed.flush().await?;
    let dead_after = config.connection.timeout.0;
    let mut last_heard = Instant::now();
    let mut next_refresh = Instant::now() + refresh;
    let mut next_ping = Instant::now() + PING_EVERY;
    let mut batch_due: Option<Instant> = None;
    let mut flush_deadline: Option<Instant> = None;
    loop {
        // Send what is due.
        let full = outbox.queue.len() >= config.connection.batch_max;
        if full || *stopping || batch_due.is_some_and(|t| t <= Instant::now()) {
            while let Some(batch) = outbox.next_batch(config.connection.batch_max) {
                framed.feed(Message::Reports(batch)).await?;
                if outbox.queue.len() < config.connection.batch_max && !*stopping {
                    break;
                }
            }
            framed.flush().await?;
            batch_due = (!outbox.queue.is_empty())
                .then(|| Instant::now() + config.connection.batch_delay.0);
        }
        if *stopping {
            if outbox.is_empty() {
                return Ok(());
            }
            let deadline = *flush_deadline.get_or_insert_with(|| Instant::now() + FLUSH_WAIT);
            if Instant::now() >= deadline {
                tracing::warn!(
                    "stopping with {} reports the receiver has not acknowledged",
                    outbox.held()
                );
                return Ok(());
            }
        }
        let wake = [
            Some(next_refresh),
            Some(next_ping),
            batch_due,
            flush_deadline,
            Some(last_heard + dead_after),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("always some deadline");
        tokio::select! {
            frame = framed.next() => {
                let message = match frame {
                    None => bail!("the receiver closed the connection"),
                    Some(Err(e)) => bail!("bad frame from the receiver: {e}"),
                    Some(Ok(m)) => m,
                };
                last_heard = Instant::now();
                match message {
                    Message::Ack { seq } => {
                        outbox.unacked.remove(&seq);
                    }
                    Message::Schedule(schedule) => {
                        tracing::info!(revision = schedule.revision, services = schedule.services.len(), "new schedule");
                        *revision = schedule.revision;
                        schedules.send_replace(Some(schedule));
                    }
                    Message::Unchanged { .. } | Message::Pong { .. } => {}
                    Message::Ping { nonce } => framed.send(Message::Pong { nonce }).await?,
                    Message::Error(f) => bail!("the receiver reports {f}"),
                    other => bail!("unexpected message from the receiver: {other:?}"),
                }
            }
            report = reports.recv(), if !*stopping => match report {
                Some(r) => {
                    outbox.push(r);
                    batch_due.get_or_insert_with(|| Instant::now() + config.connection.batch_delay.0);
                }
                None => *stopping = true,
            },
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= last_heard + dead_after {
                    bail!("nothing heard from the receiver for {} s", dead_after.as_secs());
                }
                if now >= next_refresh {
                    framed.send(Message::ScheduleRequest { revision: *revision }).await?;
                    next_refresh = now + refresh;
                }
                if now >= next_ping {
                    framed.send(Message::Ping { nonce: now_ms() }).await?;
                    next_ping = now + PING_EVERY;
                }
            }
        }
    }
}
