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
//! an entry is stored by one receiver, not two. A receiver that stays silent
//! for twice `ping_interval` (it hangs: stopped, or its host is) is left at
//! once for the next one of the list, without trying it again first.
//!
//! Every batch stays below the frame limit the receiver announces in its
//! Welcome. Entries the receiver refuses (`Rejected`) are recorded as lost in
//! a gap entry and never sent again, so no entry can block the stream.

use super::installed::Installed;
use super::services::Collected;
use super::spool::{Budget, Spool};
use crate::config::ConnectionConfig;
use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use sandglass_core::ABI_VERSION;
use sandglass_core::text::Escaped;
use sandglass_core::time::now_ms;
use sandglass_daemon::tls;
use sandglass_protocol::{
    Ack, DEFAULT_MAX_FRAME, Fault, FaultCode, FrameCodec, Hello, Message, PROTOCOL_VERSION, Probe,
    Rejected, ReportBatch, Revision, Schedule, Welcome, read_preamble, write_preamble,
};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
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
/// Room in a frame for the `Reports` message around its entries (the spool
/// counts each entry with its own overhead).
const BATCH_HEADROOM: u64 = 256;
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
    /// The largest frame the receiver accepts.
    max_frame: u64,
    /// The TCP socket under it (and under TLS), to see whether the
    /// receiver takes what is sent.
    socket: RawFd,
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
            // The spool logs when writes start failing and when they work
            // again, and counts the lost reports in a gap entry.
            Err(e) => tracing::debug!(
                service = collected.report.service,
                "{e:#}: this report is lost"
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
            // Set when the Hello is sent.
            time_ms: 0,
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
    /// The receiver hangs: continue with the next one.
    Hung(anyhow::Error),
    Failed(anyhow::Error),
}

/// Why a connection broke.
#[derive(Debug, thiserror::Error)]
enum Broken {
    /// Nothing heard, or a write not taken, for this long: the receiver hangs.
    #[error("nothing heard from the receiver for {} s", .0.as_secs_f64())]
    Silent(Duration),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// When the receiver was last heard from, and how long a silence means that
/// it hangs.
struct Liveness {
    last_heard: Instant,
    dead_after: Duration,
    socket: RawFd,
}

impl Liveness {
    fn deadline(&self) -> Instant {
        self.last_heard + self.dead_after
    }
}

/// Send `message`. A hung receiver stops reading, and a write to it would
/// wait forever once the socket is full; a receiver behind a slow link reads
/// slowly. So a write that waits goes on while the receiver's host
/// acknowledges bytes, and is given up when it did not for the whole
/// liveness limit.
async fn write(framed: &mut Conn, message: Message, alive: &mut Liveness) -> Result<(), Broken> {
    let send = framed.send(message);
    tokio::pin!(send);
    let mut unacked = unacknowledged(alive.socket);
    // A tenth of the limit at least, so that a write starting late in a
    // quiet spell is not judged on a moment's stall.
    let mut deadline = alive.deadline().max(Instant::now() + alive.dead_after / 10);
    let mut waited = false;
    loop {
        match tokio::time::timeout_at(deadline, &mut send).await {
            Ok(sent) => {
                if waited {
                    // It read what was sent: as good as hearing from it.
                    alive.last_heard = Instant::now();
                }
                return sent.map_err(|e| Broken::Failed(e.into()));
            }
            Err(_) => {
                let now = unacknowledged(alive.socket);
                if now.is_none() || now == unacked {
                    return Err(Broken::Silent(alive.dead_after));
                }
                (unacked, waited) = (now, true);
                deadline = Instant::now() + alive.dead_after;
            }
        }
    }
}

/// Bytes sent on `socket` that the peer's host has not acknowledged yet
/// (TIOCOUTQ): while a write waits, the count moves as long as the peer
/// reads, and stands still when it has stopped.
fn unacknowledged(socket: RawFd) -> Option<libc::c_int> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ stores one c_int through a pointer valid for it; an
    // fd that is not a socket only makes the call fail.
    let done = unsafe { libc::ioctl(socket, libc::TIOCOUTQ, &mut queued) };
    (done == 0).then_some(queued)
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
        awaiting_first_ack: Some(sandglass_daemon::started()),
        installed: Installed::new(config.plugin_dir.clone(), config.hash_cache.clone()),
    };
    deliver(&config, &mut state).await;
    if let Err(e) = state.spool.close() {
        tracing::warn!("{e:#}: the next start skips a few entry numbers");
    }
}

/// Keep a connection to a receiver until the agent stops.
async fn deliver(config: &Arc<LinkConfig>, state: &mut State) {
    let all = config.receivers.len();
    let min = config.connection.reconnect_min.0;
    let mut backoff = min;
    let mut next: Option<Established> = None;
    let mut order = rotated(all, 0);
    loop {
        let established = match next.take() {
            Some(e) => Ok(e),
            None => {
                let hello = state.hello(config);
                state.spooling(connect_any(config, hello, &order)).await
            }
        };
        order = rotated(all, 0);
        let failure = match established {
            Ok(e) => {
                backoff = min;
                let index = e.index;
                match session(config, state, e).await {
                    Ended::Stopped => return,
                    Ended::Switch(e) => {
                        next = Some(e);
                        continue;
                    }
                    // Trying a hung receiver again costs a whole connect
                    // timeout: the next one first, at once.
                    Ended::Hung(e) if !state.stopping => {
                        tracing::warn!("{e:#}; trying the next receiver at once");
                        order = rotated(all, index + 1);
                        continue;
                    }
                    Ended::Hung(e) | Ended::Failed(e) => e,
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

/// The positions of `n` receivers from `first` on, wrapping around.
fn rotated(n: usize, first: usize) -> Vec<usize> {
    (0..n).map(|i| (first + i) % n).collect()
}

/// The first receiver, of those at positions `order`, that welcomes this agent.
async fn connect_any(
    config: &LinkConfig,
    hello: Hello,
    order: &[usize],
) -> anyhow::Result<Established> {
    let mut failures = Vec::new();
    for &index in order {
        let address = &config.receivers[index];
        match connect(config, address, hello.clone()).await {
            Ok((framed, welcome, socket)) => {
                return Ok(Established {
                    framed,
                    refresh: Duration::from_millis(welcome.refresh_ms.max(1000)),
                    max_frame: welcome.max_frame,
                    socket,
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
    mut hello: Hello,
) -> anyhow::Result<(Conn, Welcome, RawFd)> {
    let timeout = config.connection.timeout.0;
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .context("connect timed out")?
        .context("cannot connect")?;
    tcp.set_nodelay(true)?;
    let socket = tcp.as_raw_fd();
    let mut stream: tls::Stream = match &config.tls {
        None => Box::new(tcp),
        Some(client) => tokio::time::timeout(timeout, client.connect(tcp, address))
            .await
            .context("TLS handshake timed out")??,
    };
    write_preamble(&mut stream).await?;
    // A live receiver answers at once; one that accepted the connection but
    // says nothing hangs (its backlog took the connect): no longer than the
    // silence that ends a session.
    let answer = timeout.min(config.connection.ping_interval.0 * 2);
    let version = tokio::time::timeout(answer, read_preamble(&mut stream))
        .await
        .context("no answer from the receiver")?
        .with_context(|| match config.tls {
            Some(_) => "the receiver ended the TLS session (if it requires client certificates, set [tls] cert and key)",
            None => "the receiver ended the connection",
        })?;
    let mut framed = Framed::new(stream, FrameCodec::new(DEFAULT_MAX_FRAME));
    if version == PROTOCOL_VERSION {
        // Now, not before connecting: the receiver takes the difference to
        // its clock for clock skew, and a slow connect is not skew.
        hello.time_ms = now_ms();
        framed.send(Message::Hello(hello)).await?;
    }
    let first = tokio::time::timeout(answer, framed.next())
        .await
        .context("no Welcome from the receiver")?
        .context("the receiver closed the connection")??;
    match first {
        Message::Welcome(welcome) if version == PROTOCOL_VERSION => Ok((framed, welcome, socket)),
        Message::Error(f) => {
            let f = Escaped(&f.to_string()).to_string();
            tracing::error!(receiver = address, "the receiver refused this agent: {f}");
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
        Err(silent @ Broken::Silent(_)) => Ended::Hung(anyhow!("{address}: {silent}")),
        Err(Broken::Failed(e)) => Ended::Failed(e.context(address.clone())),
    }
}

/// Send what the spool holds and handle what the receiver says, until the
/// connection fails, the agent stops or an earlier receiver takes over.
async fn exchange(
    config: &Arc<LinkConfig>,
    state: &mut State,
    established: Established,
) -> Result<Ended, Broken> {
    let Established {
        mut framed,
        refresh,
        max_frame,
        socket,
        index,
    } = established;
    let address = &config.receivers[index];
    let budget = Budget {
        entries: config.connection.batch_max,
        // Below the receiver's limit, and below this agent's own (its codec
        // refuses to encode larger frames).
        bytes: max_frame
            .min(DEFAULT_MAX_FRAME as u64)
            .saturating_sub(BATCH_HEADROOM),
    };
    let batch_delay = config.connection.batch_delay.0;
    let ping_every = config.connection.ping_interval.0;
    // Everything not acknowledged goes (again), oldest first.
    let mut sent = state.spool.acked();
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let now = Instant::now();
    // A healthy receiver answers each Ping at once, so two intervals
    // without a frame mean it hangs.
    let mut alive = Liveness {
        last_heard: now,
        dead_after: ping_every * 2,
        socket,
    };
    let mut next_refresh = now + refresh;
    let mut next_ping = now + ping_every;
    let mut wall_clock = WallClock::new();
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
                let to = &config.receivers[next.index];
                tracing::info!(
                    receiver = to,
                    "an earlier receiver answers again: moving back to it"
                );
                // So this receiver shows the host as moved, not unreachable.
                let moved = Message::Error(Fault {
                    code: FaultCode::Moved,
                    text: format!("the agent moves back to {to}"),
                });
                if let Err(e) = write(&mut framed, moved, &mut alive).await {
                    tracing::debug!("could not say goodbye to {address}: {e}");
                }
                return Ok(Ended::Switch(next));
            }
        } else {
            let unsent = state.spool.last_seq().saturating_sub(sent);
            let due = state.stopping
                || unsent >= budget.entries as u64
                || batch_due.is_some_and(|t| t <= now);
            // One batch per turn, so that a Ping arriving meanwhile is
            // answered after one batch, not after a window of them.
            if unsent > 0 && due && in_flight.len() < MAX_IN_FLIGHT {
                if let Some((seq, entries)) = state.spool.read(sent + 1, budget)? {
                    let batch = ReportBatch {
                        seq,
                        entries,
                        settled: state.spool.acked(),
                    };
                    sent = batch.last_seq();
                    in_flight.push_back(sent);
                    write(&mut framed, Message::Reports(batch), &mut alive).await?;
                }
                // Still unsent: the next batch at once, or when acks open
                // the window.
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
            Some(alive.deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("always some deadline");
        tokio::select! {
            // Frames first: after a long write, what the receiver said
            // meanwhile counts before its silence is judged.
            biased;
            frame = framed.next() => {
                let message = match frame {
                    None => return Err(anyhow!("the receiver closed the connection").into()),
                    Some(Err(e)) => return Err(anyhow!("bad frame from the receiver: {e}").into()),
                    Some(Ok(m)) => m,
                };
                alive.last_heard = Instant::now();
                match message {
                    Message::Ack(Ack { seq }) => {
                        if let Err(e) = state.spool.ack(seq) {
                            tracing::error!("{e:#}");
                        }
                        if let Some(started) = state.awaiting_first_ack.take() {
                            // Start-up to first data, as operators and benchmarks see it.
                            tracing::info!("first reports stored by the receiver {:.1} ms after the agent started", started.elapsed().as_secs_f64() * 1e3);
                        }
                        settle(&mut in_flight, seq);
                    }
                    Message::Rejected(Rejected { seq, last_seq, reason }) => {
                        tracing::warn!(receiver = address, first = seq, last = last_seq, "the receiver refused entries; recording them as lost: {reason}");
                        if let Err(e) = state.spool.reject(seq, last_seq, &reason) {
                            tracing::error!("{e:#}");
                        }
                        settle(&mut in_flight, last_seq);
                        // The gap entry for them goes at once.
                        batch_due.get_or_insert(Instant::now());
                    }
                    Message::Schedule(schedule) => {
                        tracing::info!(revision = schedule.revision, services = schedule.services.len(), "new schedule");
                        state.revision = schedule.revision;
                        state.schedules.send_replace(Some(schedule));
                    }
                    Message::Unchanged(_) | Message::Pong(_) => {}
                    Message::Ping(Probe { nonce, .. }) => {
                        let pong = Message::Pong(Probe { nonce, time_ms: now_ms() });
                        write(&mut framed, pong, &mut alive).await?;
                    }
                    Message::Error(f) => return Err(anyhow!("the receiver reports {f}").into()),
                    other => return Err(anyhow!("unexpected message from the receiver: {other:?}").into()),
                }
            }
            report = state.reports.recv(), if !state.stopping => {
                let was_empty = state.spool.last_seq() == sent;
                state.take(report);
                if wall_clock.stepped() {
                    // The receiver corrects report times by the offset it
                    // measures; a Ping now makes it measure again.
                    tracing::warn!("the system clock stepped; asking the receiver to measure the offset again");
                    next_ping = Instant::now();
                }
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
                if now >= alive.deadline() {
                    return Err(Broken::Silent(alive.dead_after));
                }
                if now >= next_refresh {
                    let request = Message::ScheduleRequest(Revision { revision: state.revision });
                    write(&mut framed, request, &mut alive).await?;
                    next_refresh = now + refresh;
                }
                if now >= next_ping {
                    let ping = Message::Ping(Probe { nonce: now_ms(), time_ms: now_ms() });
                    write(&mut framed, ping, &mut alive).await?;
                    next_ping = now + ping_every;
                }
                if next_failback.is_some_and(|t| t <= now) && probe.is_none() && switch.is_none() {
                    next_failback = None;
                    let config = config.clone();
                    let hello = state.hello(&config);
                    let earlier: Vec<usize> = (0..index).collect();
                    probe = Some(tokio::spawn(async move { connect_any(&config, hello, &earlier).await }));
                }
            }
        }
    }
}

/// Notices the wall clock stepping (an NTP step, `date -s`) by comparing
/// it with the monotonic clock between two looks.
struct WallClock {
    wall_ms: u64,
    mono: std::time::Instant,
}

impl WallClock {
    /// A step larger than this counts; below, it is drift or rounding.
    const STEP_MS: u64 = 1000;

    fn new() -> WallClock {
        WallClock {
            wall_ms: now_ms(),
            mono: std::time::Instant::now(),
        }
    }

    /// Whether the wall clock moved apart from the monotonic one since the
    /// last look.
    fn stepped(&mut self) -> bool {
        let (wall_ms, mono) = (now_ms(), std::time::Instant::now());
        let expected = self.wall_ms + mono.duration_since(self.mono).as_millis() as u64;
        *self = WallClock { wall_ms, mono };
        wall_ms.abs_diff(expected) > Self::STEP_MS
    }
}

/// Batches up to `seq` are answered (stored, or refused): out of flight.
fn settle(in_flight: &mut VecDeque<u64>, seq: u64) {
    while in_flight.front().is_some_and(|last| *last <= seq) {
        in_flight.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_core::report::{Cost, Report, Status};
    use sandglass_core::units::HumanDuration;
    use sandglass_protocol::{Entry, Gap};
    use std::path::Path;
    use tokio::net::TcpListener;

    #[test]
    fn a_step_of_the_wall_clock_is_noticed_and_steady_time_is_not() {
        assert!(!WallClock::new().stepped());
        let mut behind = WallClock {
            wall_ms: now_ms() + 3_600_000,
            mono: std::time::Instant::now(),
        };
        assert!(behind.stepped(), "an hour back");
        assert!(!behind.stepped(), "and then steady again");
    }

    /// The receiver's end of a connection, played by the test.
    type Peer = Framed<TcpStream, FrameCodec>;

    fn link_config(dir: &Path, receivers: &[&TcpListener]) -> LinkConfig {
        LinkConfig {
            receivers: receivers
                .iter()
                .map(|l| l.local_addr().unwrap().to_string())
                .collect(),
            host_id: "h".into(),
            token: "t".into(),
            plugin_dir: dir.join("plugins"),
            hash_cache: dir.join("installed"),
            connection: ConnectionConfig {
                reconnect_min: HumanDuration(Duration::from_millis(50)),
                reconnect_max: HumanDuration(Duration::from_millis(200)),
                ..ConnectionConfig::default()
            },
            tls: None,
        }
    }

    /// A spool in `dir` holding `n` reports with `pad` bytes of status text.
    fn spool(dir: &Path, n: u64, pad: usize) -> Spool {
        let (mut spool, _) = Spool::open(&dir.join("spool"), 64 << 20).unwrap();
        for i in 1..=n {
            let report = Report {
                service: "svc".into(),
                plugin: "p".into(),
                time_ms: 1000 + i,
                status: Status::unknown(format!("run {i} {}", "x".repeat(pad))),
                samples: Vec::new(),
                cost: Cost::default(),
            };
            spool.append_report(&report).unwrap();
        }
        spool
    }

    /// The link running on `spool` until the test ends.
    struct Running {
        task: JoinHandle<()>,
        _reports: mpsc::Sender<Collected>,
        _schedules: watch::Receiver<Option<Schedule>>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn start(config: LinkConfig, spool: Spool) -> Running {
        let (reports_tx, reports) = mpsc::channel(16);
        let (schedules, schedules_rx) = watch::channel(None);
        let in_progress = Arc::new(AtomicUsize::new(0));
        Running {
            task: tokio::spawn(run(config, spool, reports, in_progress, schedules, 0)),
            _reports: reports_tx,
            _schedules: schedules_rx,
        }
    }

    /// Accept one connection, read the agent's preamble, answer with ours,
    /// read the Hello and welcome it, announcing `max_frame`. The peer's
    /// codec refuses frames over `max_frame`, as a receiver does.
    async fn welcome(listener: &TcpListener, max_frame: u64) -> (Peer, Hello) {
        let (mut tcp, _) = listener.accept().await.unwrap();
        read_preamble(&mut tcp).await.unwrap();
        write_preamble(&mut tcp).await.unwrap();
        let mut peer = Framed::new(tcp, FrameCodec::new(max_frame as usize));
        let Some(Ok(Message::Hello(hello))) = peer.next().await else {
            panic!("no Hello")
        };
        let welcome = Welcome {
            receiver_version: "test".into(),
            time_ms: now_ms(),
            refresh_ms: 60_000,
            max_frame,
        };
        peer.send(Message::Welcome(welcome)).await.unwrap();
        (peer, hello)
    }

    /// The next batch the agent sends (Pings answered on the way).
    async fn batch(peer: &mut Peer) -> ReportBatch {
        loop {
            match peer.next().await {
                Some(Ok(Message::Reports(batch))) => return batch,
                Some(Ok(Message::Ping(probe))) => peer.send(Message::Pong(probe)).await.unwrap(),
                Some(Ok(_)) => {}
                other => panic!("expected a batch, got {other:?}"),
            }
        }
    }

    async fn within<T>(limit: u64, work: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(limit), work)
            .await
            .expect("the agent did not get there in time")
    }

    #[tokio::test]
    async fn batches_stay_below_the_frame_limit_the_receiver_announces() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // 40 reports of ~3 KiB: 120 KiB, one batch by count (batch_max 500).
        let _link = start(
            link_config(dir.path(), &[&receiver]),
            spool(dir.path(), 40, 3000),
        );
        let limit = 16 << 10;
        let (mut peer, _) = within(10, welcome(&receiver, limit)).await;
        let mut received = 0;
        while received < 40 {
            // A larger frame fails to decode here, as at a receiver.
            let batch = within(10, batch(&mut peer)).await;
            assert_eq!(batch.seq, received + 1, "in order, nothing skipped");
            received += batch.entries.len() as u64;
            let ack = Message::Ack(Ack {
                seq: batch.last_seq(),
            });
            peer.send(ack).await.unwrap();
        }
        assert_eq!(received, 40);
    }

    #[tokio::test]
    async fn refused_entries_go_as_a_gap_with_the_reason_and_are_never_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = link_config(dir.path(), &[&receiver]);
        config.connection.batch_max = 2;
        let _link = start(config, spool(dir.path(), 5, 10));
        let (mut peer, _) = within(10, welcome(&receiver, DEFAULT_MAX_FRAME as u64)).await;
        let mut seen = Vec::new();
        let gap = loop {
            let batch = within(10, batch(&mut peer)).await;
            let answer = if batch.seq == 1 {
                Message::Rejected(Rejected {
                    seq: 1,
                    last_seq: batch.last_seq(),
                    reason: "failed validation".into(),
                })
            } else {
                Message::Ack(Ack {
                    seq: batch.last_seq(),
                })
            };
            peer.send(answer).await.unwrap();
            let mut gaps: Vec<Gap> = Vec::new();
            for (i, entry) in batch.entries.into_iter().enumerate() {
                let seq = batch.seq + i as u64;
                assert!(!seen.contains(&seq), "entry {seq} sent again");
                seen.push(seq);
                if let Entry::Gap(gap) = entry {
                    gaps.push(gap);
                }
            }
            if let Some(gap) = gaps.pop() {
                break gap;
            }
        };
        assert_eq!(gap.reports, 2);
        assert_eq!((gap.first_ms, gap.last_ms), (1001, 1002));
        assert_eq!(gap.reason, "refused by the receiver: failed validation");
    }

    #[tokio::test]
    async fn the_hello_carries_the_time_it_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = link_config(dir.path(), &[&receiver]);
        let address = config.receivers[0].clone();
        let hello = Hello {
            host_id: "h".into(),
            token: "t".into(),
            agent_version: "0".into(),
            abi_version: "0".into(),
            time_ms: 0,
            schedule_revision: 0,
            plugins: Vec::new(),
            stream: 1,
        };
        let agent =
            tokio::spawn(async move { connect(&config, &address, hello).await.map(|_| ()) });
        // A receiver slow to answer: its preamble comes a while after the
        // connection is made.
        let (mut tcp, _) = receiver.accept().await.unwrap();
        read_preamble(&mut tcp).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answered = now_ms();
        write_preamble(&mut tcp).await.unwrap();
        let mut peer = Framed::new(tcp, FrameCodec::new(DEFAULT_MAX_FRAME));
        let Some(Ok(Message::Hello(hello))) = peer.next().await else {
            panic!("no Hello")
        };
        assert!(
            hello.time_ms >= answered,
            "the Hello's time {} is from before the receiver answered ({answered})",
            hello.time_ms
        );
        drop(peer);
        assert!(agent.await.unwrap().is_err(), "no Welcome came");
    }

    /// Two receivers, the first about to hang; pings every 200 ms, and a
    /// connect timeout long enough that waiting for it shows.
    async fn hung_and_next(dir: &Path) -> (TcpListener, TcpListener, LinkConfig) {
        let (hung, next) = (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let mut config = link_config(dir, &[&hung, &next]);
        config.connection.ping_interval = HumanDuration(Duration::from_millis(200));
        config.connection.timeout = HumanDuration(Duration::from_secs(60));
        (hung, next, config)
    }

    #[tokio::test]
    async fn a_silent_receiver_is_left_for_the_next_one_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (hung, next, config) = hung_and_next(dir.path()).await;
        // ~7 MB: more than the sockets hold, so the write to the silent
        // receiver blocks too.
        let _link = start(config, spool(dir.path(), 70, 100_000));
        // Welcomed, then silent: reads nothing, answers nothing, stays open.
        let (_silent, _) = within(10, welcome(&hung, DEFAULT_MAX_FRAME as u64)).await;
        let (mut peer, _) = within(20, welcome(&next, DEFAULT_MAX_FRAME as u64)).await;
        let batch = within(10, batch(&mut peer)).await;
        assert_eq!(
            (batch.seq, batch.entries.len()),
            (1, 70),
            "everything, again"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(10), hung.accept())
                .await
                .is_err(),
            "the hung receiver was tried again first"
        );
    }

    #[tokio::test]
    async fn a_receiver_that_takes_the_connection_but_never_answers_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let (_hung, next, config) = hung_and_next(dir.path()).await;
        let _link = start(config, spool(dir.path(), 3, 10));
        // `hung` never accepts: the kernel's backlog takes the connection and
        // nothing ever answers. The agent moves on within 2 x ping_interval,
        // not the 60 s connect timeout.
        let (mut peer, _) = within(5, welcome(&next, DEFAULT_MAX_FRAME as u64)).await;
        let batch = within(5, batch(&mut peer)).await;
        assert_eq!((batch.seq, batch.entries.len()), (1, 3));
    }

    #[tokio::test]
    async fn a_slow_link_is_waited_for_while_it_takes_bytes() {
        use tokio::io::AsyncReadExt;
        use tokio_util::codec::Decoder;
        let dir = tempfile::tempdir().unwrap();
        let receiver = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = link_config(dir.path(), &[&receiver]);
        // Silent for 400 ms means hung; the batch below takes seconds.
        config.connection.ping_interval = HumanDuration(Duration::from_millis(200));
        let _link = start(config, spool(dir.path(), 70, 100_000));
        let (peer, _) = within(10, welcome(&receiver, DEFAULT_MAX_FRAME as u64)).await;
        // Read the ~7 MB batch at ~1 MB/s, saying nothing meanwhile.
        let mut parts = peer.into_parts();
        let batch = 'read: loop {
            while let Some(message) = parts.codec.decode(&mut parts.read_buf).unwrap() {
                if let Message::Reports(batch) = message {
                    break 'read batch;
                }
            }
            let mut chunk = vec![0; 64 << 10];
            let n = parts.io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the agent gave up a receiver that was reading");
            parts.read_buf.extend_from_slice(&chunk[..n]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!((batch.seq, batch.entries.len()), (1, 70));
    }
}
