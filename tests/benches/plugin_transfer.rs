//! Plugin-distribution benchmark (issue 18): AGENTS simulated agents
//! (default 100; real TCP on 127.0.0.1, the real protocol) against one real
//! `receiver` whose `plugin_dir` holds the 18 MB Python plugin `pressure`,
//! which every host's schedule pins by sha256.
//!
//! Every agent reports all along (a batch every REPORT_MS, default 100 ms)
//! and times each acknowledgement. Phase 1, baseline (BASELINE_SECS,
//! default 5): reports only. Phase 2, transfer: all agents fetch the plugin
//! at once, over the connection they report on, as the real agent does
//! (crates/agent/src/link/fetch.rs): one `PluginRequest` at a time from the
//! offset it has, the next only once the previous chunk is stored (here:
//! hashed off the executor), and the sha256 of the whole checked against
//! the pin. It ends when the last agent has the whole plugin. Printed: time
//! to deliver it to every agent (and the median agent), MB served and MB/s,
//! ack latency p50/p99/max per phase and their ratio, the receiver's CPU per
//! phase and peak RSS. Wrong bytes, a refusal, or an agent still without the
//! plugin after TIMEOUT_SECS (default 600) fail the run.
//! Run: `bash scripts/bench-plugin-transfer.sh`.

#[path = "support/simulated.rs"]
mod simulated;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use sandglass_core::hash::{hex, sha256_hex};
use sandglass_protocol::{Ack, Message, PluginChunk, PluginRequest};
use sha2::{Digest, Sha256};
use simulated::{Link, Receiver, Usage, batch, connect, env, hosts, percentile, proc_usage};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The services of every host: a small plugin and the large one.
const SERVICES: [&str; 2] = ["uptime", "pressure"];
const PLUGIN: &str = "pressure";
const SAMPLES_PER_REPORT: usize = 10;
/// Bound on the handshake and on the last acks after the transfer.
const SHORT_WAIT: Duration = Duration::from_secs(30);

/// When each phase starts, for every agent alike.
#[derive(Clone, Copy)]
struct Phases {
    /// The first report (connections are up by then).
    start: Instant,
    /// Every agent sends its first `PluginRequest`.
    transfer: Instant,
    /// An agent without the whole plugin by then fails.
    deadline: Instant,
}

/// What one agent saw.
struct Outcome {
    /// Per acknowledged batch: when it was sent, and its ack latency (µs).
    acks: Vec<(Instant, u64)>,
    /// Plugin bytes received.
    bytes: u64,
}

/// One plugin being fetched, checked as the real agent checks it.
struct Fetch {
    sha256: String,
    /// Bytes received and stored (hashed) so far.
    have: u64,
    /// The whole file's size, from the first chunk.
    size: Option<u64>,
    /// `None` while a chunk is being stored.
    hasher: Option<Sha256>,
}

impl Fetch {
    fn request(&self) -> Message {
        Message::PluginRequest(PluginRequest {
            sha256: self.sha256.clone(),
            offset: self.have,
        })
    }

    /// Check a chunk against what was asked for; returns the work that
    /// stores it (hashing 256 KiB, off the executor like the agent's disk
    /// write).
    fn on_chunk(&mut self, chunk: PluginChunk) -> anyhow::Result<JoinHandle<Sha256>> {
        let len = chunk.bytes.0.len() as u64;
        let size = *self.size.get_or_insert(chunk.size);
        if chunk.sha256 != self.sha256
            || chunk.offset != self.have
            || chunk.size != size
            || len == 0
            || self.have + len > size
        {
            bail!(
                "wrong chunk: plugin {} bytes {}..{} of {}, but {} of {size} bytes of {} were asked for",
                chunk.sha256,
                chunk.offset,
                chunk.offset + len,
                chunk.size,
                self.have,
                self.sha256
            );
        }
        let Some(mut hasher) = self.hasher.take() else {
            bail!(
                "a chunk arrived while the previous one was being stored (one request at a time)"
            );
        };
        self.have += len;
        Ok(tokio::task::spawn_blocking(move || {
            hasher.update(&chunk.bytes.0);
            hasher
        }))
    }

    /// The chunk is stored: the next request, or `None` once the whole
    /// plugin is here with the sha256 asked for.
    fn stored(&mut self, hasher: Sha256) -> anyhow::Result<Option<Message>> {
        if Some(self.have) != self.size {
            self.hasher = Some(hasher);
            return Ok(Some(self.request()));
        }
        let got = hex(&hasher.finalize());
        if got != self.sha256 {
            bail!(
                "wrong bytes: the plugin received has sha256 {got}, not the {} asked for",
                self.sha256
            );
        }
        Ok(None)
    }
}

/// Read frames up to the schedule; the sha256 it pins the plugin at.
async fn pinned(link: &mut Link) -> anyhow::Result<String> {
    loop {
        match link.next().await {
            Some(Ok(Message::Schedule(schedule))) => {
                return schedule
                    .services
                    .iter()
                    .find(|s| s.plugin == PLUGIN)
                    .and_then(|s| s.sha256.clone())
                    .with_context(|| format!("the schedule does not pin plugin {PLUGIN}"));
            }
            Some(Ok(Message::Error(f))) => bail!("refused: {f}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the receiver closed the connection before the schedule"),
        }
    }
}

/// One simulated agent: reports every `every` from `phases.start`,
/// fetches the pinned plugin from `phases.transfer` on and says so on
/// `completed`, and stops reporting once `stop` says every agent has it.
async fn agent(
    address: String,
    host: String,
    phases: Phases,
    every: Duration,
    completed: mpsc::UnboundedSender<Instant>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Outcome> {
    let mut link = connect(&address, &host).await?;
    let sha256 = tokio::time::timeout(SHORT_WAIT, pinned(&mut link))
        .await
        .context("no schedule")??;
    let mut fetch = Fetch {
        sha256,
        have: 0,
        size: None,
        hasher: Some(Sha256::new()),
    };
    let mut storing: Option<JoinHandle<Sha256>> = None;
    let mut asked = false;
    let mut done = false;
    let mut stopping = false;
    // Report times ten days back, a service interval apart (as in fleet.rs):
    // unique per service, always in the past.
    let mut time_ms = sandglass_core::time::now_ms() - 10 * 86_400_000;
    let mut seq = 1;
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut acks = Vec::new();
    let mut next_report = phases.start;
    loop {
        let now = Instant::now();
        if stopping && sent.is_empty() {
            return Ok(Outcome {
                acks,
                bytes: fetch.have,
            });
        }
        if !done && now >= phases.deadline {
            bail!(
                "still without the whole plugin at the deadline: {} of {} bytes",
                fetch.have,
                fetch.size.unwrap_or_default()
            );
        }
        if !stopping && now >= next_report {
            time_ms += 1_000;
            let batch = batch(&SERVICES, SAMPLES_PER_REPORT, seq, time_ms);
            seq = batch.last_seq() + 1;
            sent.insert(batch.last_seq(), now);
            link.send(Message::Reports(batch)).await?;
            next_report += every;
            continue;
        }
        if !asked && now >= phases.transfer {
            asked = true;
            link.send(fetch.request()).await?;
            continue;
        }
        let wake = if stopping {
            now + SHORT_WAIT
        } else if asked {
            next_report
        } else {
            next_report.min(phases.transfer)
        };
        tokio::select! {
            frame = link.next() => match frame {
                Some(Ok(Message::Ack(Ack { seq }))) => {
                    if let Some(sent_at) = sent.remove(&seq) {
                        acks.push((sent_at, sent_at.elapsed().as_micros() as u64));
                    }
                }
                Some(Ok(Message::PluginChunk(chunk))) => storing = Some(fetch.on_chunk(chunk)?),
                Some(Ok(Message::PluginUnavailable(u))) => {
                    bail!("the receiver cannot send plugin {}: {}", u.sha256, u.reason)
                }
                Some(Ok(Message::Error(f))) => bail!("the receiver ended the connection: {f}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the receiver closed the connection"),
            },
            hasher = async { storing.as_mut().expect("storing").await }, if storing.is_some() => {
                storing = None;
                match fetch.stored(hasher?)? {
                    Some(next) => link.send(next).await?,
                    None => {
                        done = true;
                        let _ = completed.send(Instant::now());
                    }
                }
            }
            // (The guard `wait_for` returns is not Send: dropped inside.)
            () = async { drop(stop.wait_for(|stop| *stop).await) }, if !stopping => stopping = true,
            () = tokio::time::sleep_until(wake.into()) => {
                if stopping {
                    bail!("{} batches unacknowledged {SHORT_WAIT:?} after the transfer", sent.len());
                }
            }
        }
    }
}

/// Ack latencies (µs) of the batches sent within `from..until`, sorted.
fn latencies(outcomes: &[Outcome], from: Instant, until: Instant) -> Vec<u64> {
    let mut all: Vec<u64> = outcomes
        .iter()
        .flat_map(|o| &o.acks)
        .filter(|(sent, _)| (from..until).contains(sent))
        .map(|(_, us)| *us)
        .collect();
    all.sort_unstable();
    all
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Receiver CPU between two readings, in % of one core.
fn cpu_percent(from: Usage, to: Usage, over: Duration) -> f64 {
    (to.cpu_ms - from.cpu_ms) as f64 / (over.as_secs_f64() * 10.0)
}

fn main() -> anyhow::Result<()> {
    let agents = env("AGENTS", 100) as usize;
    let baseline = Duration::from_secs(env("BASELINE_SECS", 5));
    let every = Duration::from_millis(env("REPORT_MS", 100));
    let timeout = Duration::from_secs(env("TIMEOUT_SECS", 600));

    let wasm = std::fs::read(sandglass_tests::plugin(PLUGIN))?;
    let sha256 = sha256_hex(&wasm);
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    for name in SERVICES {
        std::fs::copy(
            sandglass_tests::plugin(name),
            plugins.join(format!("{name}.wasm")),
        )?;
    }
    let services: String = SERVICES
        .iter()
        .map(|s| format!("[services.{s}]\nplugin = \"{s}\"\ninterval = \"1s\"\n"))
        .collect();
    let config = format!(
        "database = \"transfer.db\"\nplugin_dir = \"plugins\"\n{services}[templates.all]\nservices = {SERVICES:?}\n{}",
        hosts(agents as u64, "all")
    );
    let config_path = dir.path().join("receiver.toml");
    std::fs::write(&config_path, config)?;
    let receiver = Receiver::start(&config_path)?;
    let result = run(&receiver, agents, baseline, every, timeout);
    receiver.stop();
    let run = result?;

    let served: u64 = run.outcomes.iter().map(|o| o.bytes).sum();
    if served != wasm.len() as u64 * agents as u64 {
        bail!(
            "{served} plugin bytes received, not {agents} x {}",
            wasm.len()
        );
    }
    let mut delivered: Vec<Duration> = run
        .completions
        .iter()
        .map(|t| *t - run.phases.transfer)
        .collect();
    delivered.sort_unstable();
    let last = run.phases.transfer + delivered[delivered.len() - 1];
    let transfer = last - run.phases.transfer;
    let before = latencies(&run.outcomes, run.phases.start, run.phases.transfer);
    let during = latencies(&run.outcomes, run.phases.transfer, last);
    let mb = served as f64 / 1e6;

    println!(
        "plugin transfer: {agents} agents, plugin {PLUGIN} {:.1} MB (sha256 {}), a batch of {} reports every {} ms per agent",
        wasm.len() as f64 / 1e6,
        &sha256[..12],
        SERVICES.len(),
        every.as_millis()
    );
    println!(
        "delivered to every agent in {:.2} s (median agent {:.2} s); {mb:.0} MB served, {:.0} MB/s",
        secs(transfer),
        secs(delivered[delivered.len() / 2]),
        mb / secs(transfer)
    );
    for (name, lat, cpu) in [
        ("baseline (reports only)", &before, run.cpu_baseline),
        ("during the transfer", &during, run.cpu_transfer),
    ] {
        println!(
            "{name:<24} {:>6} acks   ack p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms   receiver CPU {cpu:>5.1}% of one core",
            lat.len(),
            percentile(lat, 0.5),
            percentile(lat, 0.99),
            percentile(lat, 1.0),
        );
    }
    println!(
        "ack p99 during / baseline: {:.1}x; p50: {:.1}x",
        percentile(&during, 0.99) / percentile(&before, 0.99),
        percentile(&during, 0.5) / percentile(&before, 0.5)
    );
    println!(
        "receiver RSS idle {:.1} MiB, peak {:.1} MiB; simulated agents' CPU during the transfer {:.0}% of one core",
        run.idle.rss_kib as f64 / 1024.0,
        run.end.peak_kib as f64 / 1024.0,
        run.cpu_agents
    );
    Ok(())
}

/// What a run measured.
struct Run {
    phases: Phases,
    outcomes: Vec<Outcome>,
    /// When each agent had the whole plugin.
    completions: Vec<Instant>,
    idle: Usage,
    end: Usage,
    cpu_baseline: f64,
    cpu_transfer: f64,
    cpu_agents: f64,
}

/// Both phases against the started receiver.
fn run(
    receiver: &Receiver,
    agents: usize,
    baseline: Duration,
    every: Duration,
    timeout: Duration,
) -> anyhow::Result<Run> {
    let pid = receiver.pid;
    let idle = proc_usage(pid);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let start = Instant::now() + Duration::from_secs(2);
    let phases = Phases {
        start,
        transfer: start + baseline,
        deadline: start + baseline + timeout,
    };
    runtime.block_on(async {
        let (completed, mut completions_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..agents {
            let host = format!("h{i}");
            let task = agent(
                receiver.address.clone(),
                host.clone(),
                phases,
                every,
                completed.clone(),
                stop_rx.clone(),
            );
            tasks.spawn(async move { task.await.with_context(|| format!("agent {host}")) });
        }
        tokio::time::sleep_until(phases.start.into()).await;
        let at_start = proc_usage(pid);
        tokio::time::sleep_until(phases.transfer.into()).await;
        let at_transfer = proc_usage(pid);
        let agents_at_transfer = proc_usage(std::process::id());
        let mut completions = Vec::with_capacity(agents);
        while completions.len() < agents {
            tokio::select! {
                Some(at) = completions_rx.recv() => completions.push(at),
                Some(ended) = tasks.join_next() => {
                    ended??;
                    bail!("an agent stopped before every agent had the plugin");
                }
            }
        }
        let at_done = proc_usage(pid);
        let agents_at_done = proc_usage(std::process::id());
        let last = completions.iter().max().copied().unwrap_or(phases.transfer);
        let _ = stop.send(true);
        let mut outcomes = Vec::with_capacity(agents);
        while let Some(ended) = tasks.join_next().await {
            outcomes.push(ended??);
        }
        Ok(Run {
            phases,
            outcomes,
            completions,
            idle,
            end: proc_usage(pid),
            cpu_baseline: cpu_percent(at_start, at_transfer, baseline),
            cpu_transfer: cpu_percent(at_transfer, at_done, last - phases.transfer),
            cpu_agents: cpu_percent(agents_at_transfer, agents_at_done, last - phases.transfer),
        })
    })
}
