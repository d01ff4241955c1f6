//! Reconnect benchmark (issue 19): AGENTS simulated agents (default 10,000;
//! real TCP on 127.0.0.1, the real protocol) connected to one real
//! `receiver`, each reporting a small batch every 1–5 s (its own period,
//! its own phase). Then the receiver is stopped — SIGKILL, then SIGTERM, or
//! as RESTARTS says (`kill,term` by default) — and started again at once on
//! the same address with the same database, and every agent reconnects as
//! the real agent does.
//!
//! The reconnect policy imitated is the agent's with its default
//! `[connection]` settings (crates/agent/src/link/mod.rs `deliver`,
//! crates/agent/src/link/connect.rs, crates/agent/src/config.rs): after a
//! lost connection or a failed attempt it waits `reconnect_min` (500 ms),
//! doubled after each wait up to `reconnect_max` (30 s), each wait drawn
//! in ±25%, and back to 500 ms once welcomed; an attempt gives the TCP
//! connect and the preamble `timeout` (30 s) and the Welcome 2 ×
//! `ping_interval` (20 s). Once welcomed it sends again, in order, what was
//! not acknowledged (as the real agent resends its spool).
//!
//! Printed per restart: how long the receiver took to listen again; the
//! time from the signal until every agent was welcomed again, and per agent
//! p50/p99/max; attempts per agent; how the failed attempts ended (refused,
//! closed in the handshake, a Busy fault, another fault, a timeout); the
//! receiver's CPU and peak RSS from listening until the last agent was
//! back. At the end: whether every batch was acknowledged. An agent not
//! back within BOUND_SECS (default 120) of a restart, or a batch never
//! acknowledged, fails the run (non-zero exit).
//! Run: `bash scripts/bench-reconnect.sh` (AGENTS, RESTARTS, BOUND_SECS,
//! SETTLE_SECS: seconds of reporting before each restart and at the end,
//! default 5).

#[path = "support/simulated.rs"]
mod simulated;

use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use sandglass_protocol::{Ack, FaultCode, Message, ProtocolError, ReportBatch};
use simulated::{Link, Receiver, batch, connect, env, hosts, percentile, proc_usage};
use std::collections::{BTreeMap, HashSet};
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

const SERVICES: [&str; 1] = ["uptime"];
const SAMPLES_PER_REPORT: usize = 5;
/// The agent's `[connection]` defaults (crates/agent/src/config.rs).
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// 2 × `ping_interval`: how long the agent waits for the receiver's
/// Welcome (CONNECT_TIMEOUT here covers the connect and the preambles).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on the last acknowledgements once the agents are told to stop.
const LAST_ACKS: Duration = Duration::from_secs(30);

/// How a connection attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Failure {
    /// Nothing listening (the receiver not up yet).
    Refused,
    /// The receiver closed or reset the connection before the Welcome.
    Closed,
    /// A Busy fault (max_connections).
    Busy,
    /// Any other fault.
    Fault,
    /// No answer within the agent's timeouts.
    Timeout,
    /// Another connection error.
    Other,
}

const FAILURES: [(Failure, &str); 6] = [
    (Failure::Refused, "refused"),
    (Failure::Closed, "closed in handshake"),
    (Failure::Busy, "Busy"),
    (Failure::Fault, "other fault"),
    (Failure::Timeout, "timeout"),
    (Failure::Other, "other error"),
];

/// The io::Error kind under a failed attempt, if there is one.
fn io_kind(e: &anyhow::Error) -> Option<ErrorKind> {
    e.chain().find_map(|c| {
        c.downcast_ref::<std::io::Error>().map(|e| e.kind()).or(
            match c.downcast_ref::<ProtocolError>() {
                Some(ProtocolError::Io(e)) => Some(e.kind()),
                _ => None,
            },
        )
    })
}

fn classify(e: &anyhow::Error) -> Failure {
    match io_kind(e) {
        Some(ErrorKind::ConnectionRefused) => Failure::Refused,
        Some(ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
            Failure::Closed
        }
        _ => Failure::Other,
    }
}

/// One connection attempt: welcomed (and how long the connect and the
/// preambles took), or how it failed.
async fn attempt(address: &str, host: &str) -> Result<(Link, Duration), (Failure, String)> {
    let started = Instant::now();
    let mut link = match tokio::time::timeout(CONNECT_TIMEOUT, connect(address, host)).await {
        Err(_) => return Err((Failure::Timeout, "connect timed out".into())),
        Ok(Err(e)) => return Err((classify(&e), format!("{e:#}"))),
        Ok(Ok(link)) => link,
    };
    let connected = started.elapsed();
    match tokio::time::timeout(ANSWER_TIMEOUT, link.next()).await {
        Err(_) => Err((Failure::Timeout, "no Welcome".into())),
        Ok(Some(Ok(Message::Welcome(_)))) => Ok((link, connected)),
        Ok(Some(Ok(Message::Error(f)))) if f.code == FaultCode::Busy => {
            Err((Failure::Busy, f.to_string()))
        }
        Ok(Some(Ok(Message::Error(f)))) => Err((Failure::Fault, f.to_string())),
        Ok(Some(Ok(other))) => Err((Failure::Other, format!("got {other:?} first"))),
        Ok(Some(Err(e))) => {
            let e = anyhow::Error::new(e);
            Err((classify(&e), format!("{e:#}")))
        }
        Ok(None) => Err((Failure::Closed, "closed before the Welcome".into())),
    }
}

/// The agent's wait before its next attempt: `backoff` ±25%.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(0.75 + fastrand::f64() * 0.5)
}

/// Once the agents are told to stop (the guard dropped: not Send).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One (re)connection: from the lost connection (or the start) to the
/// Welcome.
struct Recovery {
    lost: Instant,
    welcomed: Instant,
    attempts: u32,
    failures: Vec<Failure>,
    /// The welcomed attempt's connect and preamble exchange: a second or
    /// more is a SYN dropped and sent again (the accept queue was full), or
    /// a wait in the queue for the receiver to accept.
    connect: Duration,
}

/// What one agent saw.
struct Outcome {
    recoveries: Vec<Recovery>,
    batches_sent: u64,
    /// Batches never acknowledged (sent again after each reconnect).
    unacked: usize,
    /// The last failed attempt's text, if it never got back.
    stranded: Option<String>,
}

/// How a session ended.
enum Ended {
    Lost,
    Stopped,
}

/// One simulated agent.
struct Agent {
    index: usize,
    address: String,
    host: String,
    /// Its reporting period.
    every: Duration,
    /// Says the agent was welcomed (its index).
    back: mpsc::UnboundedSender<usize>,
    stop: watch::Receiver<bool>,
    /// Batches not acknowledged yet, by their last entry number.
    unacked: BTreeMap<u64, ReportBatch>,
    seq: u64,
    time_ms: u64,
    batches_sent: u64,
}

impl Agent {
    async fn run(mut self) -> Outcome {
        let mut recoveries = Vec::new();
        let mut lost = Instant::now();
        let mut first = true;
        loop {
            let link = match self.reconnect(lost, first).await {
                Ok((link, recovery)) => {
                    recoveries.push(recovery);
                    let _ = self.back.send(self.index);
                    link
                }
                Err(last) => return self.outcome(recoveries, Some(last)),
            };
            first = false;
            match self.session(link).await {
                Ended::Stopped => return self.outcome(recoveries, None),
                Ended::Lost => lost = Instant::now(),
            }
        }
    }

    fn outcome(self, recoveries: Vec<Recovery>, stranded: Option<String>) -> Outcome {
        Outcome {
            recoveries,
            batches_sent: self.batches_sent,
            unacked: self.unacked.len(),
            stranded,
        }
    }

    /// Attempts with the agent's backoff until welcomed, or the text of
    /// the last failure once told to stop.
    async fn reconnect(&mut self, lost: Instant, first: bool) -> Result<(Link, Recovery), String> {
        let mut backoff = RECONNECT_MIN;
        let mut failures = Vec::new();
        let mut last = String::from("never tried");
        let mut wait = !first;
        loop {
            if wait {
                tokio::select! {
                    () = tokio::time::sleep(jittered(backoff)) => {}
                    () = stopped(&mut self.stop) => return Err(last),
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
            wait = true;
            let tried = tokio::select! {
                tried = attempt(&self.address, &self.host) => tried,
                () = stopped(&mut self.stop) => return Err(last),
            };
            match tried {
                Ok((link, connect)) => {
                    let recovery = Recovery {
                        lost,
                        welcomed: Instant::now(),
                        attempts: failures.len() as u32 + 1,
                        failures,
                        connect,
                    };
                    return Ok((link, recovery));
                }
                Err((failure, text)) => {
                    failures.push(failure);
                    last = text;
                }
            }
        }
    }

    /// Report until the connection is lost, or until told to stop and
    /// every batch is acknowledged (at most LAST_ACKS later).
    async fn session(&mut self, mut link: Link) -> Ended {
        for batch in self.unacked.values() {
            if link.send(Message::Reports(batch.clone())).await.is_err() {
                return Ended::Lost;
            }
        }
        let mut next_report = tokio::time::Instant::now() + self.every.mul_f64(fastrand::f64());
        let mut stopping: Option<tokio::time::Instant> = None;
        loop {
            if stopping.is_some() && self.unacked.is_empty() {
                return Ended::Stopped;
            }
            let until = stopping.unwrap_or(next_report);
            tokio::select! {
                frame = link.next() => match frame {
                    Some(Ok(Message::Ack(Ack { seq }))) => {
                        self.unacked.remove(&seq);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Ended::Lost,
                },
                () = stopped(&mut self.stop), if stopping.is_none() => {
                    stopping = Some(tokio::time::Instant::now() + LAST_ACKS);
                }
                () = tokio::time::sleep_until(until) => {
                    if stopping.is_some() {
                        return Ended::Stopped;
                    }
                    self.time_ms += 1_000;
                    let batch = batch(&SERVICES, SAMPLES_PER_REPORT, self.seq, self.time_ms);
                    self.seq = batch.last_seq() + 1;
                    self.batches_sent += 1;
                    self.unacked.insert(batch.last_seq(), batch.clone());
                    if link.send(Message::Reports(batch)).await.is_err() {
                        return Ended::Lost;
                    }
                    next_report += self.every;
                }
            }
        }
    }
}

/// Wait until every agent has said it is back (each counted once), or
/// until `deadline`; returns how many were.
async fn all_back(
    back: &mut mpsc::UnboundedReceiver<usize>,
    agents: usize,
    deadline: Instant,
) -> usize {
    let mut seen = HashSet::new();
    while seen.len() < agents {
        match tokio::time::timeout_at(deadline.into(), back.recv()).await {
            Ok(Some(index)) => {
                seen.insert(index);
            }
            _ => break,
        }
    }
    seen.len()
}

/// One herd (the first connections, or those after a restart) as
/// measured from outside the agents.
struct Herd {
    name: String,
    /// The signal to the old receiver (for the first herd: the start).
    signalled: Instant,
    /// The new receiver listening.
    listening: Instant,
    /// When the last agent was back, if all were.
    all_back: Option<Instant>,
    /// The receiver's CPU from `listening` to the last agent back.
    cpu_ms: u64,
    rss_kib: u64,
    peak_kib: u64,
    /// Connections this network namespace's listen queues turned away
    /// meanwhile (their SYNs dropped, to be sent again 1, 3, 7 ... s on).
    listen_overflows: u64,
}

impl Herd {
    /// Wait for every agent to be back (at most `bound` after `signalled`)
    /// and measure the receiver `pid` meanwhile.
    async fn measure(
        name: String,
        signalled: Instant,
        pid: u32,
        back: &mut mpsc::UnboundedReceiver<usize>,
        agents: usize,
        bound: Duration,
    ) -> Herd {
        let listening = Instant::now();
        let (at_listen, overflows) = (proc_usage(pid), listen_overflows());
        let count = all_back(back, agents, signalled + bound).await;
        let at_end = proc_usage(pid);
        Herd {
            name,
            signalled,
            listening,
            all_back: (count == agents).then(Instant::now),
            cpu_ms: at_end.cpu_ms - at_listen.cpu_ms,
            rss_kib: at_end.rss_kib,
            peak_kib: at_end.peak_kib,
            listen_overflows: listen_overflows() - overflows,
        }
    }
}

/// TcpExt ListenOverflows of /proc/net/netstat (this network namespace).
fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (tcp_ext.next(), tcp_ext.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

fn receiver_config(dir: &Path, agents: u64) -> anyhow::Result<std::path::PathBuf> {
    // Defaults for everything but what AGENTS needs: a connection each.
    let mut config = String::from("database = \"reconnect.db\"\n");
    if agents > 10_000 {
        config.push_str(&format!("max_connections = {agents}\n"));
    }
    config.push_str("[services.uptime]\nplugin = \"uptime\"\ninterval = \"5s\"\n");
    config.push_str("[templates.all]\nservices = [\"uptime\"]\n");
    config.push_str(&hosts(agents, "all"));
    let path = dir.join("receiver.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

fn main() -> anyhow::Result<()> {
    let agents = env("AGENTS", 10_000);
    let bound = Duration::from_secs(env("BOUND_SECS", 120));
    let settle = Duration::from_secs(env("SETTLE_SECS", 5));
    let signals: Vec<&'static str> = std::env::var("RESTARTS")
        .unwrap_or_else(|_| "kill,term".into())
        .split(',')
        .map(|s| match s.trim() {
            "kill" => Ok("KILL"),
            "term" => Ok("TERM"),
            other => bail!("RESTARTS: unknown {other:?}; give kill and/or term, comma-separated"),
        })
        .collect::<anyhow::Result<_>>()?;
    let dir = tempfile::tempdir()?;
    let config = receiver_config(dir.path(), agents)?;
    // The first start takes a free port; every restart comes back on it.
    let mut receiver = Receiver::start(&config)?;
    let address = receiver.address.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (herds, outcomes, receiver) = runtime.block_on(async move {
        let (back_tx, mut back) = mpsc::unbounded_channel();
        let (stop_tx, stop) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let started = Instant::now();
        for index in 0..agents as usize {
            let agent = Agent {
                index,
                address: address.clone(),
                host: format!("h{index}"),
                every: Duration::from_millis(fastrand::u64(1_000..=5_000)),
                back: back_tx.clone(),
                stop: stop.clone(),
                unacked: BTreeMap::new(),
                seq: 1,
                // Ten days back, a second apart: unique, always past.
                time_ms: sandglass_core::time::now_ms() - 10 * 86_400_000,
                batches_sent: 0,
            };
            tasks.spawn(agent.run());
        }
        let mut herds = vec![
            Herd::measure(
                "first connections".into(),
                started,
                receiver.pid,
                &mut back,
                agents as usize,
                bound,
            )
            .await,
        ];
        for signal in signals {
            tokio::time::sleep(settle).await;
            let signalled = Instant::now();
            // Waiting for the exit blocks: off the agents' threads.
            tokio::task::spawn_blocking(move || receiver.signal(signal)).await?;
            receiver = Receiver::start_at(&config, &address)?;
            let name = format!("restart after SIG{signal}");
            let herd = Herd::measure(
                name,
                signalled,
                receiver.pid,
                &mut back,
                agents as usize,
                bound,
            );
            herds.push(herd.await);
        }
        tokio::time::sleep(settle).await;
        let _ = stop_tx.send(true);
        let mut outcomes = Vec::new();
        while let Some(outcome) = tasks.join_next().await {
            outcomes.push(outcome?);
        }
        anyhow::Ok((herds, outcomes, receiver))
    })?;
    receiver.stop();
    report(agents, &herds, &outcomes)
}

/// Print the figures; an error if an agent was stranded or a batch lost.
fn report(agents: u64, herds: &[Herd], outcomes: &[Outcome]) -> anyhow::Result<()> {
    println!("reconnect: {agents} agents, a batch every 1-5 s each");
    for (i, herd) in herds.iter().enumerate() {
        let next = herds.get(i + 1).map(|h| h.signalled);
        // The recoveries from connections lost after this herd's signal
        // (and before the next one).
        let recoveries: Vec<&Recovery> = outcomes
            .iter()
            .flat_map(|o| &o.recoveries)
            .filter(|r| r.lost >= herd.signalled && next.is_none_or(|n| r.lost < n))
            .collect();
        print_herd(herd, &recoveries);
    }
    let sent: u64 = outcomes.iter().map(|o| o.batches_sent).sum();
    let unacked: usize = outcomes.iter().map(|o| o.unacked).sum();
    println!("batches sent {sent}, not acknowledged at the end {unacked}");
    let stranded: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| o.stranded.as_ref())
        .collect();
    if let Some(last) = stranded.first() {
        bail!(
            "{} agents never got back (one's last failure: {last})",
            stranded.len()
        );
    }
    if herds.iter().any(|h| h.all_back.is_none()) {
        bail!("not every agent was back within BOUND_SECS");
    }
    if unacked > 0 {
        bail!("{unacked} batches were never acknowledged");
    }
    Ok(())
}

fn print_herd(herd: &Herd, recoveries: &[&Recovery]) {
    let mut times_us: Vec<u64> = recoveries
        .iter()
        .map(|r| (r.welcomed - herd.signalled).as_micros() as u64)
        .collect();
    times_us.sort_unstable();
    let attempts: Vec<u32> = recoveries.iter().map(|r| r.attempts).collect();
    let mean = attempts.iter().sum::<u32>() as f64 / attempts.len().max(1) as f64;
    let failures: Vec<String> = FAILURES
        .iter()
        .map(|(kind, name)| {
            let n = recoveries
                .iter()
                .flat_map(|r| &r.failures)
                .filter(|f| *f == kind)
                .count();
            format!("{name} {n}")
        })
        .collect();
    let slow_connects = recoveries
        .iter()
        .filter(|r| r.connect >= Duration::from_secs(1))
        .count();
    let slowest = recoveries
        .iter()
        .map(|r| r.connect)
        .max()
        .unwrap_or_default();
    let busy = herd.all_back.map_or(Duration::ZERO, |t| t - herd.listening);
    println!(
        "{}: receiver listening after {:.2} s; {} agents back {}; per agent p50 {:.2} s p99 {:.2} s max {:.2} s",
        herd.name,
        (herd.listening - herd.signalled).as_secs_f64(),
        recoveries.len(),
        match herd.all_back {
            Some(t) => format!(
                "(all) {:.2} s after the signal",
                (t - herd.signalled).as_secs_f64()
            ),
            None => "(NOT all)".into(),
        },
        percentile(&times_us, 0.5) / 1000.0,
        percentile(&times_us, 0.99) / 1000.0,
        percentile(&times_us, 1.0) / 1000.0,
    );
    println!(
        "  attempts per agent mean {mean:.2} max {}; failed attempts: {}",
        attempts.iter().max().unwrap_or(&0),
        failures.join(", ")
    );
    println!(
        "  connect and preambles of 1 s or more {slow_connects} (slowest {:.2} s), listen queue overflows {}",
        slowest.as_secs_f64(),
        herd.listen_overflows
    );
    println!(
        "  receiver meanwhile: CPU {} ms ({:.0}% of one core over {:.2} s), RSS {:.1} MiB (peak {:.1} MiB)",
        herd.cpu_ms,
        herd.cpu_ms as f64 / busy.as_secs_f64().max(0.001) / 10.0,
        busy.as_secs_f64(),
        herd.rss_kib as f64 / 1024.0,
        herd.peak_kib as f64 / 1024.0
    );
}
