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
//!
//! Here: [`run`] and the reconnect loop (backoff, which receiver next).
//! [`connect`] makes one connection, [`session`] drives it event by event,
//! [`liveness`] tells a hung receiver from a slow one, and [`spooler`] keeps
//! the spool's file I/O off the async executor.

mod connect;
mod fetch;
mod liveness;
mod session;
mod spooler;

use super::installed::Installed;
use super::services::Collected;
use super::spool::Spool;
use crate::config::ConnectionConfig;
use connect::{Established, connect_any, rotated};
use sandglass_core::ABI_VERSION;
use sandglass_daemon::tls;
use sandglass_protocol::{Hello, Schedule};
use session::session;
use spooler::SharedSpool;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

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
    /// Where plugins fetched from the receiver go.
    pub fetched_dir: PathBuf,
    pub connection: ConnectionConfig,
    pub tls: Option<tls::Client>,
}

/// The link's own state, apart from the (shared, read-only) configuration.
struct State {
    spool: SharedSpool,
    reports: mpsc::Receiver<Collected>,
    /// Runs started whose report has not been taken yet: at zero, a cycle's
    /// last report is in, and the cycle is spooled and sent without waiting
    /// `batch_delay`.
    in_progress: Arc<AtomicUsize>,
    /// The reports of the cycle under way, spooled together with one write
    /// once its last one is in, or at `burst_due`.
    burst: Vec<Collected>,
    /// `batch_delay` after the burst's first report.
    burst_due: Option<Instant>,
    batch_delay: Duration,
    schedules: watch::Sender<Option<Schedule>>,
    revision: u64,
    stopping: bool,
    /// Until the first acknowledgement: when the agent started.
    awaiting_first_ack: Option<std::time::Instant>,
    installed: Installed,
    /// The pinned plugins the schedule needs from the receiver (sha256).
    wanted: watch::Receiver<Vec<String>>,
    fetcher: fetch::Fetcher,
}

impl State {
    /// Take a new report into the cycle's burst (or note that the agent is
    /// stopping); returns whether the burst was spooled: at the cycle's last
    /// report, or when stopping.
    async fn take(&mut self, collected: Option<Collected>) -> bool {
        let Some(collected) = collected else {
            self.stopping = true;
            return self.spool_burst().await;
        };
        self.in_progress.fetch_sub(1, Ordering::SeqCst);
        if self.burst.is_empty() {
            self.burst_due = Some(Instant::now() + self.batch_delay);
        }
        self.burst.push(collected);
        // The others of the cycle that are in already.
        while let Ok(more) = self.reports.try_recv() {
            self.in_progress.fetch_sub(1, Ordering::SeqCst);
            self.burst.push(more);
        }
        if self.in_progress.load(Ordering::SeqCst) > 0 {
            return false;
        }
        self.spool_burst().await
    }

    /// Put the burst into the spool with one write, then keep the runs'
    /// plugin states; returns whether there was a burst.
    ///
    /// Until then its reports are in memory only, like runs still going:
    /// their plugin states are kept only once they are in the spool, so an
    /// agent killed before runs them again from the old states (at least
    /// once, never skipped).
    async fn spool_burst(&mut self) -> bool {
        self.burst_due = None;
        if self.burst.is_empty() {
            return false;
        }
        let burst = std::mem::take(&mut self.burst);
        let append = move |spool: &mut Spool| {
            let reports: Vec<_> = burst.iter().map(|c| &c.report).collect();
            match spool.append_reports(&reports) {
                // Right after the append, in the same thread: the state
                // advances only with a report that is safe.
                Ok(_) => burst.into_iter().for_each(|c| drop(c.keep_state())),
                // The spool logs when writes start failing and when they
                // work again, and counts the lost reports in a gap entry.
                Err(e) => tracing::debug!(reports = burst.len(), "{e:#}: these reports are lost"),
            }
        };
        self.spool.with(append).await;
        true
    }

    /// Drive `work` to its end while spooling the reports that arrive; none
    /// if the agent stops first. Outside a session there is nothing to
    /// flush, so a stopping agent does not wait for a connect or a backoff
    /// (SIGTERM with the receiver down ends the agent at once; what is
    /// spooled goes out at the next start).
    async fn spooling<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        while !self.stopping {
            let burst_due = self.burst_due;
            tokio::select! {
                out = &mut work => return Some(out),
                report = self.reports.recv() => {
                    self.take(report).await;
                }
                () = sleep_until_some(burst_due) => {
                    self.spool_burst().await;
                }
            }
        }
        None
    }

    /// The agent stops while no receiver is connected.
    fn stop_unconnected(&self, why: &str) {
        tracing::warn!(
            "{why}; stopping with {} entries in the spool, sent at the next start",
            self.spool.peek(Spool::pending)
        );
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
            stream: self.spool.peek(Spool::stream),
        }
    }
}

/// Sleep until `deadline`, or for ever if there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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
    wanted: watch::Receiver<Vec<String>>,
) {
    let config = Arc::new(config);
    let mut state = State {
        spool: SharedSpool::new(spool),
        reports,
        in_progress,
        burst: Vec::new(),
        burst_due: None,
        batch_delay: config.connection.batch_delay.0,
        schedules,
        revision,
        stopping: false,
        awaiting_first_ack: Some(sandglass_daemon::started()),
        installed: Installed::new(config.plugin_dir.clone(), config.hash_cache.clone()),
        wanted,
        fetcher: fetch::Fetcher::new(config.fetched_dir.clone()),
    };
    deliver(&config, &mut state).await;
    if let Err(e) = state.spool.close().await {
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
                let Some(connected) = state.spooling(connect_any(config, hello, &order)).await
                else {
                    return state.stop_unconnected("not connected");
                };
                connected
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
            return state.stop_unconnected(&format!("{failure:#}"));
        }
        tracing::warn!(
            "{failure:#}; reconnecting in about {} ms",
            backoff.as_millis()
        );
        // Jitter of ±25% so a fleet does not reconnect in lockstep.
        let wake = Instant::now() + backoff.mul_f64(0.75 + fastrand::f64() * 0.5);
        if state
            .spooling(tokio::time::sleep_until(wake))
            .await
            .is_none()
        {
            return state.stop_unconnected("waiting to reconnect");
        }
        backoff = (backoff * 2).min(config.connection.reconnect_max.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use sandglass_core::report::{Cost, Report, Status};
    use sandglass_core::time::now_ms;
    use sandglass_core::units::HumanDuration;
    use sandglass_protocol::{
        Ack, DEFAULT_MAX_FRAME, FrameCodec, Message, Rejected, ReportBatch, Welcome, read_preamble,
        write_preamble,
    };
    use sandglass_protocol::{Entry, Gap};
    use std::path::Path;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;
    use tokio_util::codec::Framed;

    /// The receiver's end of a connection, played by the test.
    type Peer = Framed<TcpStream, FrameCodec>;

    pub(super) fn link_config(dir: &Path, receivers: &[&TcpListener]) -> LinkConfig {
        LinkConfig {
            receivers: receivers
                .iter()
                .map(|l| l.local_addr().unwrap().to_string())
                .collect(),
            host_id: "h".into(),
            token: "t".into(),
            plugin_dir: dir.join("plugins"),
            hash_cache: dir.join("installed"),
            fetched_dir: dir.join("fetched"),
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
        reports: mpsc::Sender<Collected>,
        in_progress: Arc<AtomicUsize>,
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
            task: tokio::spawn(run(
                config,
                spool,
                reports,
                in_progress.clone(),
                schedules,
                0,
                watch::channel(Vec::new()).1,
            )),
            reports: reports_tx,
            in_progress,
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

    /// The report of a run of service `name`, made by a real runner (of a
    /// service the agent refuses to run: UNKNOWN, saying why).
    fn collected(runner: &crate::services::ServiceRunner, name: &str) -> Collected {
        runner.run(&crate::config::Service {
            name: name.into(),
            plugin: "p".into(),
            plugin_path: "/nonexistent/p.wasm".into(),
            params: Vec::new(),
            sys: false,
            files: Vec::new(),
            limits: sandglass_runtime::Limits::default(),
            sha256: None,
            interval: Duration::from_secs(1),
            refused: Some(format!("{name} is refused in this test")),
        })
    }

    /// The services of `link`'s host fire: `running` runs start, and
    /// `finished` of them report.
    async fn cycle(
        link: &Running,
        runner: &crate::services::ServiceRunner,
        running: usize,
        finished: &[&str],
    ) {
        link.in_progress.fetch_add(running, Ordering::SeqCst);
        for name in finished {
            link.reports.send(collected(runner, name)).await.unwrap();
        }
    }

    fn services(batch: &ReportBatch) -> Vec<String> {
        let names = batch.entries.iter().map(|entry| match entry {
            Entry::Report(report) => report.service.clone(),
            Entry::Gap(gap) => panic!("a gap: {gap:?}"),
        });
        names.collect()
    }

    #[tokio::test]
    async fn a_cycle_goes_in_one_batch_at_its_last_report_or_batch_delay_after_its_first() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let runner = crate::services::ServiceRunner::with_compiler(
            &dir.path().join("state"),
            sandglass_runtime::Compiler::InProcess,
        )
        .unwrap();
        let (spool, _) = Spool::open(&dir.path().join("spool"), 64 << 20).unwrap();
        let mut config = link_config(dir.path(), &[&receiver]);
        // No ping wakes the link meanwhile: only `batch_delay` sends the
        // cycle that waits for its hung run.
        config.connection.ping_interval = HumanDuration(Duration::from_secs(60));
        let link = start(config, spool);
        let (mut peer, _) = within(10, welcome(&receiver, DEFAULT_MAX_FRAME as u64)).await;
        cycle(&link, &runner, 3, &["a", "b", "c"]).await;
        let sent = within(10, batch(&mut peer)).await;
        assert_eq!(
            (sent.seq, services(&sent)),
            (1, vec!["a".into(), "b".into(), "c".into()])
        );
        // One run of the next cycle hangs: the others go `batch_delay`
        // after the first of them, in one batch.
        cycle(&link, &runner, 3, &["d", "e"]).await;
        let sent = within(10, batch(&mut peer)).await;
        assert_eq!(
            (sent.seq, services(&sent)),
            (4, vec!["d".into(), "e".into()])
        );
        assert_eq!(link.in_progress.load(Ordering::SeqCst), 1);
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
