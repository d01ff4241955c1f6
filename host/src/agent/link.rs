//! The agent's connection to its receivers: every report goes into the
//! on-disk spool first; the link connects (exponential backoff with jitter,
//! the first receiver of the list that answers), introduces itself, receives
//! schedules, sends the spool's entries in numbered batches and forgets them
//! when the receiver acknowledges. After a reconnect, a failover or a
//! restart it sends again from the oldest unacknowledged entry; the receiver
//! stores each (stream, number) once.
//!
//! Connected to a later receiver of the list, it tries the earlier ones every
//! `failback` and moves back once the batches in flight are acknowledged, so
//! an entry is stored by one receiver, not two.

use super::installed::Installed;
use super::services::{Collected, now_ms};
use super::spool::{Budget, Spool};
use crate::config::ConnectionConfig;
use crate::protocol::{
    Ack, DEFAULT_MAX_FRAME, FrameCodec, Hello, Message, PROTOCOL_VERSION, Probe, ReportBatch,
    Revision, Schedule, read_preamble, write_preamble,
};
use crate::runtime::abi::ABI_VERSION;
use crate::tls;
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::Framed;

/// Batches sent and not yet acknowledged, at most.
const MAX_IN_FLIGHT: usize = 64;
/// Idle time after which the agent pings the receiver.
const PING_EVERY: Duration = Duration::from_secs(10);
/// How long a stopping agent waits for the last acknowledgements.
const FLUSH_WAIT: Duration = Duration::from_secs(5);
/// How long a failback waits for the batches in flight on the old receiver.
const SWITCH_WAIT: Duration = Duration::from_secs(5);

/// Who the agent is and where its receivers are.
#[derive(Clone)]
pub struct LinkConfig {
    /// In order of preference; never empty.
    pub receivers: Vec<String>,
    pub host_id: String,
    pub token: String,
    pub plugin_dir: PathBuf,
    /// Where the plugins' hashes are remembered between starts.
    pub hash_cache: PathBuf,
    pub connection: ConnectionConfig,
    pub tls: Option<tls::Client>,
}

type Conn = Framed<tls::Stream, FrameCodec>;

/// A connection that was welcomed.
struct Established {
    framed: Conn,
    refresh: Duration,
    /// Position of its receiver in the list.
    index: usize,
}

/// The link's own state, apart from the (shared, read-only) configuration.
struct State {
    spool: Spool,
    reports: mpsc::Receiver<Collected>,
    /// Runs started whose report has not been taken yet: at zero, a cycle's
    /// last report is in and its batch goes without waiting `batch_delay`.
    in_progress: Arc<AtomicUsize>,
    schedules: watch::Sender<Option<Schedule>>,
    revision: u64,
    stopping: bool,
    /// Until the first acknowledgement: when the agent started.
    awaiting_first_ack: Option<std::time::Instant>,
    installed: Installed,
}

impl State {
    /// Put a new report into the spool, then keep its plugin state (or note
    /// that the agent is stopping).
    fn take(&mut self, collected: Option<Collected>) {
        let Some(collected) = collected else {
            self.stopping = true;
            return;
        };
        self.in_progress.fetch_sub(1, Ordering::SeqCst);
        match self.spool.append_report(&collected.report) {
            // Right after the append, in the same thread: the state advances
            // only with a report that is safe.
            Ok(_) => drop(collected.keep_state()),
            Err(e) => tracing::error!(
                service = collected.report.service,
                "{e:#}: this report is lost (free disk space for the spool)"
            ),
        }
    }

    /// Drive `work` to its end while spooling the reports that arrive.
    async fn spooling<T>(&mut self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                report = self.reports.recv(), if !self.stopping => self.take(report),
            }
        }
    }

    fn hello(&mut self, config: &LinkConfig) -> Hello {
        Hello {
            host_id: config.host_id.clone(),
            token: config.token.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            abi_version: ABI_VERSION.into(),
            time_ms: now_ms(),
            schedule_revision: self.revision,
            plugins: self.installed.list(),
            stream: self.spool.stream(),
        }
    }
}

/// How a session ended.
enum Ended {
    /// The agent is stopping and the spool is flushed (or the wait ran out).
    Stopped,
    /// An earlier receiver answers again: continue there.
    Switch(Established),
    Failed(anyhow::Error),
}

/// Keep a connection to a receiver until `reports` closes (the agent is
/// stopping) and what is spooled is flushed, or the flush wait runs out.
/// New schedules go to `schedules`.
pub async fn run(
    config: LinkConfig,
    spool: Spool,
    reports: mpsc::Receiver<Collected>,
    in_progress: Arc<AtomicUsize>,
    schedules: watch::Sender<Option<Schedule>>,
    revision: u64,
) {
    let config = Arc::new(config);
    let mut state = State {
        spool,
        reports,
        in_progress,
        schedules,
        revision,
        stopping: false,
        awaiting_first_ack: Some(crate::daemon::started()),
        installed: Installed::new(config.plugin_dir.clone(), config.hash_cache.clone()),
    };
    let min = config.connection.reconnect_min.0;
    let mut backoff = min;
    let mut next: Option<Established> = None;
    loop {
        let established = match next.take() {
            Some(e) => Ok(e),
            None => {
                let hello = state.hello(&config);
                let all = config.receivers.len();
                state.spooling(connect_any(&config, hello, all)).await
            }
        };
        let failure = match established {
            Ok(e) => {
                backoff = min;
                match session(&config, &mut state, e).await {
                    Ended::Stopped => return,
                    Ended::Switch(e) => {
                        next = Some(e);
                        continue;
                    }
                    Ended::Failed(e) => e,
                }
            }
            Err(e) => e,
        };
        if state.stopping {
            tracing::warn!(
                "{failure:#}; stopping with {} entries in the spool, sent at the next start",
                state.spool.pending()
            );
            return;
        }
        tracing::warn!(
            "{failure:#}; reconnecting in about {} ms",
            backoff.as_millis()
        );
        // Jitter of ±25% so a fleet does not reconnect in lockstep.
        let wake = Instant::now() + backoff.mul_f64(0.75 + fastrand::f64() * 0.5);
        state.spooling(tokio::time::sleep_until(wake)).await;
        backoff = (backoff * 2).min(config.connection.reconnect_max.0);
    }
}

/// The first of the first `upto` receivers that welcomes this agent.
async fn connect_any(
    config: &LinkConfig,
    hello: Hello,
    upto: usize,
) -> anyhow::Result<Established> {
    let mut failures = Vec::new();
    for (index, address) in config.receivers.iter().take(upto).enumerate() {
        match connect(config, address, hello.clone()).await {
            Ok((framed, refresh)) => {
                return Ok(Established {
                    framed,
                    refresh,
                    index,
                });
            }
            Err(e) => failures.push(format!("{address}: {e:#}")),
        }
    }
    bail!("{}", failures.join("; "))
}

async fn connect(
    config: &LinkConfig,
    address: &str,
    hello: Hello,
) -> anyhow::Result<(Conn, Duration)> {
    let timeout = config.connection.timeout.0;
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .context("connect timed out")?
        .context("cannot connect")?;
    tcp.set_nodelay(true)?;
    let mut stream: tls::Stream = match &config.tls {
        None => Box::new(tcp),
        Some(client) => tokio::time::timeout(timeout, client.connect(tcp, address))
            .await
            .context("TLS handshake timed out")??,
    };
    write_preamble(&mut stream).await?;
    let version = tokio::time::timeout(timeout, read_preamble(&mut stream))
        .await
        .context("no answer from the receiver")?
        .with_context(|| match config.tls {
            Some(_) => "the receiver ended the TLS session (if it requires client certificates, set [tls] cert and key)",
            None => "the receiver ended the connection",
        })?;
    let mut framed = Framed::new(stream, FrameCodec::new(DEFAULT_MAX_FRAME));
    if version == PROTOCOL_VERSION {
        framed.send(Message::Hello(hello)).await?;
    }
    let first = tokio::time::timeout(timeout, framed.next())
        .await
        .context("no Welcome from the receiver")?
        .context("the receiver closed the connection")??;
    match first {
        Message::Welcome(w) if version == PROTOCOL_VERSION => {
            Ok((framed, Duration::from_millis(w.refresh_ms.max(1000))))
        }
        Message::Error(f) => {
            tracing::error!(
                receiver = address,
                "the receiver refused this agent: {}",
                f.text
            );
            bail!("refused by the receiver: {f}")
        }
        _ if version != PROTOCOL_VERSION => {
            bail!("the receiver speaks protocol version {version}, this agent {PROTOCOL_VERSION}")
        }
        other => bail!("expected Welcome, got {other:?}"),
    }
}

async fn session(config: &Arc<LinkConfig>, state: &mut State, established: Established) -> Ended {
    let address = &config.receivers[established.index];
    tracing::info!(
        receiver = address,
        host = config.host_id,
        pending = state.spool.pending(),
        "connected"
    );
    match exchange(config, state, established).await {
        Ok(ended) => ended,
        Err(e) => Ended::Failed(e.context(address.clone())),
    }
}

/// Send what the spool holds and handle what the receiver says, until the
/// connection fails, the agent stops or an earlier receiver takes over.
async fn exchange(
    config: &Arc<LinkConfig>,
    state: &mut State,
    established: Established,
) -> anyhow::Result<Ended> {
    let Established {
        mut framed,
        refresh,
        index,
    } = established;
    let batch_max = config.connection.batch_max;
    let batch_delay = config.connection.batch_delay.0;
    let dead_after = config.connection.timeout.0;
    // Everything not acknowledged goes (again), oldest first.
    let mut sent = state.spool.acked();
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let now = Instant::now();
    let mut last_heard = now;
    let mut next_refresh = now + refresh;
    let mut next_ping = now + PING_EVERY;
    let mut batch_due = (state.spool.last_seq() > sent).then_some(now);
    let mut flush_deadline: Option<Instant> = None;
    let failback = config.connection.failback.0;
    let mut next_failback = (index > 0).then(|| now + failback);
    let mut probe: Option<JoinHandle<anyhow::Result<Established>>> = None;
    let mut switch: Option<(Established, Instant)> = None;
    loop {
        let now = Instant::now();
        if let Some((_, deadline)) = &switch {
            if in_flight.is_empty() || now >= *deadline {
                let (next, _) = switch.take().expect("checked");
                tracing::info!(
                    receiver = config.receivers[next.index],
                    "an earlier receiver answers again: moving back to it"
                );
                return Ok(Ended::Switch(next));
            }
        } else {
            let unsent = state.spool.last_seq().saturating_sub(sent);
            let due =
                state.stopping || unsent >= batch_max as u64 || batch_due.is_some_and(|t| t <= now);
            if unsent > 0 && due {
                while in_flight.len() < MAX_IN_FLIGHT {
                    let budget = Budget {
                        entries: batch_max,
                        bytes: u64::MAX,
                    };
                    let Some((seq, entries)) = state.spool.read(sent + 1, budget)? else {
                        break;
                    };
                    let batch = ReportBatch {
                        seq,
                        entries,
                        settled: state.spool.acked(),
                    };
                    sent = batch.last_seq();
                    in_flight.push_back(sent);
                    framed.feed(Message::Reports(batch)).await?;
                }
                framed.flush().await?;
                // Still unsent: the window is full; send on when acks come.
                batch_due = (state.spool.last_seq() > sent).then_some(now);
            }
            if state.spool.last_seq() <= sent {
                batch_due = None;
            }
        }
        if state.stopping {
            if state.spool.pending() == 0 {
                return Ok(Ended::Stopped);
            }
            let deadline = *flush_deadline.get_or_insert(now + FLUSH_WAIT);
            if now >= deadline {
                tracing::warn!(
                    "stopping with {} entries the receiver has not acknowledged; they stay in the spool for the next start",
                    state.spool.pending()
                );
                return Ok(Ended::Stopped);
            }
        }
        let wake = [
            Some(next_refresh),
            Some(next_ping),
            batch_due.filter(|_| in_flight.len() < MAX_IN_FLIGHT && switch.is_none()),
            flush_deadline,
            switch.as_ref().map(|(_, deadline)| *deadline),
            next_failback.filter(|_| probe.is_none() && switch.is_none()),
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
                    Message::Ack(Ack { seq }) => {
                        if let Err(e) = state.spool.ack(seq) {
                            tracing::error!("{e:#}");
                        }
                        if let Some(started) = state.awaiting_first_ack.take() {
                            // Start-up to first data, as operators and benchmarks see it.
                            tracing::info!("first reports stored by the receiver {:.1} ms after the agent started", started.elapsed().as_secs_f64() * 1e3);
                        }
                        while in_flight.front().is_some_and(|last| *last <= seq) {
                            in_flight.pop_front();
                        }
                    }
                    Message::Schedule(schedule) => {
                        tracing::info!(revision = schedule.revision, services = schedule.services.len(), "new schedule");
                        state.revision = schedule.revision;
                        state.schedules.send_replace(Some(schedule));
                    }
                    Message::Unchanged(_) | Message::Pong(_) => {}
                    Message::Ping(Probe { nonce, .. }) => framed.send(Message::Pong(Probe { nonce, time_ms: now_ms() })).await?,
                    Message::Error(f) => bail!("the receiver reports {f}"),
                    other => bail!("unexpected message from the receiver: {other:?}"),
                }
            }
            report = state.reports.recv(), if !state.stopping => {
                let was_empty = state.spool.last_seq() == sent;
                state.take(report);
                // One frame per cycle: at once after its last report, and
                // at most `batch_delay` after its first.
                if state.in_progress.load(Ordering::SeqCst) == 0 {
                    batch_due = Some(Instant::now());
                } else if was_empty && batch_due.is_none() {
                    batch_due = Some(Instant::now() + batch_delay);
                }
            }
            probed = async { probe.as_mut().expect("guarded").await }, if probe.is_some() => {
                probe = None;
                match probed {
                    Ok(Ok(earlier)) => switch = Some((earlier, Instant::now() + SWITCH_WAIT)),
                    Ok(Err(e)) => {
                        tracing::debug!("earlier receivers still away: {e:#}");
                        next_failback = Some(Instant::now() + failback);
                    }
                    Err(e) => {
                        tracing::error!("failback probe failed: {e}");
                        next_failback = Some(Instant::now() + failback);
                    }
                }
            }
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= last_heard + dead_after {
                    bail!("nothing heard from the receiver for {} s", dead_after.as_secs());
                }
                if now >= next_refresh {
                    framed.send(Message::ScheduleRequest(Revision { revision: state.revision })).await?;
                    next_refresh = now + refresh;
                }
                if now >= next_ping {
                    framed.send(Message::Ping(Probe { nonce: now_ms(), time_ms: now_ms() })).await?;
                    next_ping = now + PING_EVERY;
                }
                if next_failback.is_some_and(|t| t <= now) && probe.is_none() && switch.is_none() {
                    next_failback = None;
                    let config = config.clone();
                    let hello = state.hello(&config);
                    probe = Some(tokio::spawn(async move { connect_any(&config, hello, index).await }));
                }
            }
        }
    }
}
