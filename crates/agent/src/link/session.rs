//! One session with a receiver: a [`Session`] holds everything a connection
//! needs to remember, and [`Session::run`] waits for the next event and
//! hands it to the method for it: a frame from the receiver
//! ([`Session::on_frame`]), a report from the scheduler
//! ([`Session::on_report`]), a failback probe's answer
//! ([`Session::on_probe`]), a timer ([`Session::on_tick`]: refresh, ping,
//! failback, the liveness deadline), and, between events, the spool having
//! more to send ([`Session::send_due_batch`]).

use super::connect::{Conn, Established, connect_any};
use super::liveness::{Broken, Liveness, write};
use super::{BATCH_HEADROOM, Ended, FLUSH_WAIT, LinkConfig, MAX_IN_FLIGHT, SWITCH_WAIT, State};
use crate::services::Collected;
use crate::spool::Budget;
use anyhow::anyhow;
use futures_util::StreamExt;
use sandglass_core::text::{escape, truncate};
use sandglass_core::time::now_ms;
use sandglass_protocol::{
    Ack, DEFAULT_MAX_FRAME, Fault, FaultCode, FrameCodec, Message, PluginChunk, Probe,
    ProtocolError, Rejected, ReportBatch, Revision, Schedule,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tokio_util::codec::Encoder;

/// Run a session on `established` until the connection fails, the agent
/// stops or an earlier receiver takes over.
pub(super) async fn session(
    config: &Arc<LinkConfig>,
    state: &mut State,
    established: Established,
) -> Ended {
    let address = &config.receivers[established.index];
    tracing::info!(
        receiver = address,
        host = config.host_id,
        pending = state.spool.peek(|s| s.pending()),
        "connected"
    );
    match Session::new(config, state, established).run().await {
        Ok(ended) => ended,
        Err(silent @ Broken::Silent(_)) => Ended::Hung(anyhow!("{address}: {silent}")),
        Err(Broken::Failed(e)) => Ended::Failed(e.context(address.clone())),
    }
}

/// A connection to one receiver and what the link remembers about it.
struct Session<'a> {
    config: &'a Arc<LinkConfig>,
    state: &'a mut State,
    framed: Conn,
    /// The receiver's address, for the log.
    address: &'a str,
    /// Its position in the list: the ones before it are tried for failback.
    index: usize,
    budget: Budget,
    refresh: Duration,
    /// The newest entry sent on this connection.
    sent: u64,
    /// The last entry of each batch sent and not yet answered, oldest first.
    in_flight: VecDeque<u64>,
    alive: Liveness,
    next_refresh: Instant,
    next_ping: Instant,
    wall_clock: WallClock,
    /// When the next batch goes, if there is something to send.
    batch_due: Option<Instant>,
    /// Set once the agent stops: how long it waits for the last acks.
    flush_deadline: Option<Instant>,
    next_failback: Option<Instant>,
    /// A connection attempt to the earlier receivers, running.
    probe: Option<JoinHandle<anyhow::Result<Established>>>,
    /// An earlier receiver that answered, and until when the batches in
    /// flight here may take to be answered before moving to it.
    switch: Option<(Established, Instant)>,
    /// Whether the receiver sends plugins (protocol 1.1).
    serves_plugins: bool,
    /// Whether the daemon still tells which plugins to fetch.
    wanted_open: bool,
}

impl<'a> Session<'a> {
    fn new(config: &'a Arc<LinkConfig>, state: &'a mut State, established: Established) -> Self {
        let Established {
            framed,
            refresh,
            max_frame,
            socket,
            index,
            serves_plugins,
        } = established;
        state.fetcher.reconnected();
        state.fetcher.want(state.wanted.borrow_and_update().clone());
        let budget = Budget {
            entries: config.connection.batch_max,
            // Below the receiver's limit, and below this agent's own (its codec
            // refuses to encode larger frames).
            bytes: max_frame
                .min(DEFAULT_MAX_FRAME as u64)
                .saturating_sub(BATCH_HEADROOM),
        };
        let ping_every = config.connection.ping_interval.0;
        // Everything not acknowledged goes (again), oldest first.
        let (sent, last_seq) = state.spool.peek(|s| (s.acked(), s.last_seq()));
        let now = Instant::now();
        Session {
            config,
            framed,
            address: &config.receivers[index],
            index,
            budget,
            refresh,
            sent,
            in_flight: VecDeque::new(),
            // A healthy receiver answers each Ping at once, so two intervals
            // without a frame mean it hangs.
            alive: Liveness {
                last_heard: now,
                dead_after: ping_every * 2,
                socket,
            },
            next_refresh: now + refresh,
            next_ping: now + ping_every,
            wall_clock: WallClock::new(),
            batch_due: (last_seq > sent).then_some(now),
            flush_deadline: None,
            next_failback: (index > 0).then(|| now + config.connection.failback.0),
            probe: None,
            switch: None,
            serves_plugins,
            wanted_open: true,
            state,
        }
    }

    /// Between events, do what is due; then wait for the next event and
    /// dispatch it.
    async fn run(mut self) -> Result<Ended, Broken> {
        loop {
            if let Some(ended) = self.between_events().await? {
                return Ok(ended);
            }
            let wake = self.next_wake();
            tokio::select! {
                // Reports first: the scheduler makes them at its own pace, so
                // they cannot crowd out the rest, while a receiver sending
                // frames without pause would crowd them out (none was spooled
                // or sent during a flood of Pongs). Then frames: after a long
                // write, what the receiver said meanwhile counts before its
                // silence is judged.
                biased;
                report = self.state.reports.recv(), if !self.state.stopping => {
                    self.on_report(report).await;
                }
                frame = self.framed.next() => self.on_frame(frame).await?,
                probed = async { self.probe.as_mut().expect("guarded").await }, if self.probe.is_some() => {
                    self.on_probe(probed);
                }
                changed = self.state.wanted.changed(), if self.wanted_open => {
                    self.wanted_open = changed.is_ok();
                    let wanted = self.state.wanted.borrow_and_update().clone();
                    self.state.fetcher.want(wanted);
                }
                () = tokio::time::sleep_until(wake) => self.on_tick().await?,
            }
        }
    }

    /// Spool a cycle that waited `batch_delay`; move to an earlier receiver
    /// once the batches in flight are answered, or send the next batch; and
    /// end a stopping agent's session once the spool is flushed or the flush
    /// wait runs out.
    async fn between_events(&mut self) -> Result<Option<Ended>, Broken> {
        let now = Instant::now();
        // A cycle whose last report did not come within `batch_delay`.
        if self.state.burst_due.is_some_and(|t| t <= now) && self.state.spool_burst().await {
            self.batch_due = Some(now);
        }
        if let Some((_, deadline)) = &self.switch {
            if self.in_flight.is_empty() || now >= *deadline {
                return Ok(Some(self.move_back().await));
            }
        } else {
            self.send_due_batch(now).await?;
            self.request_plugin().await?;
        }
        if !self.state.stopping {
            return Ok(None);
        }
        let pending = self.state.spool.peek(|s| s.pending());
        if pending == 0 {
            return Ok(Some(Ended::Stopped));
        }
        let deadline = *self.flush_deadline.get_or_insert(now + FLUSH_WAIT);
        if now >= deadline {
            tracing::warn!(
                "stopping with {pending} entries the receiver has not acknowledged; they stay in the spool for the next start"
            );
            return Ok(Some(Ended::Stopped));
        }
        Ok(None)
    }

    /// Leave this receiver for the earlier one that answered.
    async fn move_back(&mut self) -> Ended {
        let (next, _) = self.switch.take().expect("checked");
        let to = &self.config.receivers[next.index];
        tracing::info!(
            receiver = to,
            "an earlier receiver answers again: moving back to it"
        );
        // So this receiver shows the host as moved, not unreachable.
        let moved = Message::Error(Fault {
            code: FaultCode::Moved,
            text: format!("the agent moves back to {to}"),
        });
        if let Err(e) = self.write(moved).await {
            tracing::debug!("could not say goodbye to {}: {e}", self.address);
        }
        Ended::Switch(next)
    }

    /// The spool has more to send: send one batch if it is due and the
    /// window has room.
    async fn send_due_batch(&mut self, now: Instant) -> Result<(), Broken> {
        let unsent = self.last_seq().saturating_sub(self.sent);
        let due = self.state.stopping
            || unsent >= self.budget.entries as u64
            || self.batch_due.is_some_and(|t| t <= now);
        // One batch per turn, so that a Ping arriving meanwhile is
        // answered after one batch, not after a window of them.
        if unsent > 0 && due && self.in_flight.len() < MAX_IN_FLIGHT {
            let (from, budget) = (self.sent + 1, self.budget);
            // The cycle just spooled is still in memory, encoded: no file
            // I/O, so no trip to the blocking pool.
            if let Some(batch) = self.state.spool.peek_mut(|s| s.take_unsent(from, budget))? {
                self.sent = batch.last_seq();
                self.in_flight.push_back(self.sent);
                self.write(batch).await?;
            } else {
                let read = self
                    .state
                    .spool
                    .with(move |s| Ok::<_, anyhow::Error>((s.read(from, budget)?, s.acked())))
                    .await?;
                if let (Some((seq, entries)), settled) = read {
                    let batch = ReportBatch {
                        seq,
                        entries,
                        settled,
                    };
                    self.sent = batch.last_seq();
                    self.in_flight.push_back(self.sent);
                    self.write(Message::Reports(batch)).await?;
                }
            }
            // Still unsent: the next batch at once, or when acks open
            // the window.
            self.batch_due = (self.last_seq() > self.sent).then_some(now);
        }
        if self.last_seq() <= self.sent {
            self.batch_due = None;
        }
        Ok(())
    }

    /// When the loop must look again even if nothing arrives.
    fn next_wake(&self) -> Instant {
        let window_open = self.in_flight.len() < MAX_IN_FLIGHT && self.switch.is_none();
        [
            Some(self.next_refresh),
            Some(self.next_ping),
            self.state.burst_due,
            self.batch_due.filter(|_| window_open),
            self.flush_deadline,
            self.switch.as_ref().map(|(_, deadline)| *deadline),
            self.next_failback
                .filter(|_| self.probe.is_none() && self.switch.is_none()),
            Some(self.alive.deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("always some deadline")
    }

    /// A frame from the receiver (or the end of the connection).
    async fn on_frame<E: std::fmt::Display>(
        &mut self,
        frame: Option<Result<Message, E>>,
    ) -> Result<(), Broken> {
        let message = match frame {
            None => return Err(anyhow!("the receiver closed the connection").into()),
            Some(Err(e)) => {
                return Err(
                    anyhow!("bad frame from the receiver: {}", quoted(&e.to_string())).into(),
                );
            }
            Some(Ok(m)) => m,
        };
        self.alive.last_heard = Instant::now();
        match message {
            Message::Ack(Ack { seq }) => self.on_ack(seq).await,
            Message::Rejected(rejected) => self.on_rejected(rejected).await,
            Message::Schedule(schedule) => self.on_schedule(schedule),
            Message::Unchanged(_) | Message::Pong(_) => {}
            Message::Ping(Probe { nonce, .. }) => {
                let pong = Message::Pong(Probe {
                    nonce,
                    time_ms: now_ms(),
                });
                self.write(pong).await?;
            }
            Message::Error(f) => {
                return Err(anyhow!("the receiver reports {}", quoted(&f.to_string())).into());
            }
            Message::PluginChunk(chunk) => self.on_plugin_chunk(chunk).await?,
            Message::PluginUnavailable(u) => self.state.fetcher.on_unavailable(&u),
            other => {
                let other = quoted(&format!("{other:?}"));
                return Err(anyhow!("unexpected message from the receiver: {other}").into());
            }
        }
        Ok(())
    }

    /// Ask for the next chunk of a plugin the schedule needs, unless one
    /// is asked for already.
    async fn request_plugin(&mut self) -> Result<(), Broken> {
        if !self.serves_plugins {
            return Ok(());
        }
        match self.state.fetcher.next_request() {
            Some(request) => self.write(Message::PluginRequest(request)).await,
            None => Ok(()),
        }
    }

    /// A chunk of the plugin asked for: stored off the executor (the last
    /// one hashes the whole file).
    async fn on_plugin_chunk(&mut self, chunk: PluginChunk) -> Result<(), Broken> {
        let work = self.state.fetcher.on_chunk(&chunk)?;
        let outcome = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| anyhow!("storing a plugin chunk failed: {e}"))?;
        self.state.fetcher.stored(&outcome);
        Ok(())
    }

    /// The receiver stored everything up to `seq`. It cannot have stored
    /// what was not sent: an Ack beyond it would drop spooled reports no
    /// receiver has, so it counts only up to what was sent.
    async fn on_ack(&mut self, seq: u64) {
        let seq = self.within_sent("acknowledged", seq);
        if let Err(e) = self.state.spool.with(move |s| s.ack(seq)).await {
            tracing::error!("{e:#}");
        }
        if let Some(started) = self.state.awaiting_first_ack.take() {
            // Start-up to first data, as operators and benchmarks see it.
            tracing::info!(
                "first reports stored by the receiver {:.1} ms after the agent started",
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        settle(&mut self.in_flight, seq);
    }

    /// The receiver will never store `seq..=last_seq`.
    async fn on_rejected(&mut self, rejected: Rejected) {
        let Rejected {
            seq,
            last_seq,
            reason,
        } = rejected;
        let last_seq = self.within_sent("refused", last_seq);
        tracing::warn!(
            receiver = self.address,
            first = seq,
            last = last_seq,
            "the receiver refused entries; recording them as lost: {}",
            quoted(&reason)
        );
        let rejected = self
            .state
            .spool
            .with(move |s| s.reject(seq, last_seq, &reason));
        if let Err(e) = rejected.await {
            tracing::error!("{e:#}");
        }
        settle(&mut self.in_flight, last_seq);
        // The gap entry for them goes at once.
        self.batch_due.get_or_insert(Instant::now());
    }

    /// `seq` from an answer of the receiver, cut to the newest entry sent
    /// on this connection (what it says of later numbers is a mistake).
    fn within_sent(&self, what: &str, seq: u64) -> u64 {
        if seq > self.sent {
            tracing::warn!(
                receiver = self.address,
                "the receiver {what} entries up to {seq}, but only {} were sent: counting up to {}",
                self.sent,
                self.sent
            );
        }
        seq.min(self.sent)
    }

    fn on_schedule(&mut self, schedule: Schedule) {
        tracing::info!(
            revision = schedule.revision,
            services = schedule.services.len(),
            "new schedule"
        );
        self.state.revision = schedule.revision;
        self.state.schedules.send_replace(Some(schedule));
    }

    /// A report from the scheduler (or `None`: the agent is stopping).
    async fn on_report(&mut self, report: Option<Collected>) {
        // One frame per cycle: at once after its last report is spooled
        // (with the others, at most `batch_delay` after its first).
        if self.state.take(report).await {
            self.batch_due = Some(Instant::now());
        }
        if self.wall_clock.stepped() {
            // The receiver corrects report times by the offset it
            // measures; a Ping now makes it measure again.
            tracing::warn!(
                "the system clock stepped; asking the receiver to measure the offset again"
            );
            self.next_ping = Instant::now();
        }
    }

    /// The failback probe ended: an earlier receiver answered, or not.
    fn on_probe(&mut self, probed: Result<anyhow::Result<Established>, JoinError>) {
        self.probe = None;
        let retry = Instant::now() + self.config.connection.failback.0;
        match probed {
            Ok(Ok(earlier)) => self.switch = Some((earlier, Instant::now() + SWITCH_WAIT)),
            Ok(Err(e)) => {
                tracing::debug!("earlier receivers still away: {e:#}");
                self.next_failback = Some(retry);
            }
            Err(e) => {
                tracing::error!("failback probe failed: {e}");
                self.next_failback = Some(retry);
            }
        }
    }

    /// A timer: judge the receiver's silence, ask for the schedule, ping,
    /// try the earlier receivers.
    async fn on_tick(&mut self) -> Result<(), Broken> {
        let now = Instant::now();
        if now >= self.alive.deadline() {
            return Err(Broken::Silent(self.alive.dead_after));
        }
        if now >= self.next_refresh {
            let revision = self.state.revision;
            self.write(Message::ScheduleRequest(Revision { revision }))
                .await?;
            self.next_refresh = now + self.refresh;
        }
        if now >= self.next_ping {
            let ping = Message::Ping(Probe {
                nonce: now_ms(),
                time_ms: now_ms(),
            });
            self.write(ping).await?;
            self.next_ping = now + self.config.connection.ping_interval.0;
        }
        let failback_due = self.next_failback.is_some_and(|t| t <= now);
        if failback_due && self.probe.is_none() && self.switch.is_none() {
            self.next_failback = None;
            let config = self.config.clone();
            let hello = self.state.hello(&config);
            let earlier: Vec<usize> = (0..self.index).collect();
            self.probe = Some(tokio::spawn(async move {
                connect_any(&config, hello, &earlier).await
            }));
        }
        Ok(())
    }

    async fn write<M>(&mut self, message: M) -> Result<(), Broken>
    where
        FrameCodec: Encoder<M, Error = ProtocolError>,
    {
        write(&mut self.framed, message, &mut self.alive).await
    }

    /// The number of the newest entry in the spool.
    fn last_seq(&self) -> u64 {
        self.state.spool.peek(|s| s.last_seq())
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

/// Text from the receiver for the log: escaped, and cut to 4 KiB (a frame
/// may hold megabytes of it).
fn quoted(text: &str) -> String {
    escape(truncate(text, 4096)).into_owned()
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
}
