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
//! phase, how long its threads waited for a CPU (contention for the cores,
//! which the simulated agents share with it) and its peak RSS. FETCHING=n
//! has only the first n agents fetch, and prints the others' acks apart: a
//! delay they share is not the chunks queued on a connection. Wrong bytes,
//! a refusal, or an agent still without the plugin after TIMEOUT_SECS
//! (default 600) fail the run.
//! Run: `bash scripts/bench-plugin-transfer.sh`.

#[path = "support/fetch.rs"]
mod fetch;
#[path = "support/simulated.rs"]
mod simulated;

use anyhow::{Context, bail};
use fetch::Fetch;
use futures_util::{SinkExt, StreamExt};
use sandglass_core::hash::sha256_hex;
use sandglass_protocol::{Ack, Message};
use simulated::{Link, Receiver, Usage, batch, connect, env, hosts, percentile, proc_usage};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

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
    /// Whether it fetched the plugin (see FETCHING).
    fetched: bool,
    /// Per acknowledged batch: when it was sent, and its ack latency (µs).
    acks: Vec<(Instant, u64)>,
    /// Plugin bytes received.
    bytes: u64,
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

/// One simulated agent: reports every `every` from `phases.start`; if it
/// `fetches`, fetches the pinned plugin from `phases.transfer` on and says
/// so on `completed`; stops reporting once `stop` says every agent that
/// fetches has it.
async fn agent(
    address: String,
    host: String,
    fetches: bool,
    phases: Phases,
    every: Duration,
    completed: mpsc::UnboundedSender<Instant>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Outcome> {
    let mut link = connect(&address, &host).await?;
    let sha256 = tokio::time::timeout(SHORT_WAIT, pinned(&mut link))
        .await
        .context("no schedule")??;
    let mut fetch = Fetch::new(sha256);
    let mut storing = None;
    let mut asked = !fetches;
    let mut done = !fetches;
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
                fetched: fetches,
                acks,
                bytes: fetch.have(),
            });
        }
        if !done && now >= phases.deadline {
            bail!(
                "still without the whole plugin at the deadline: {} of {} bytes",
                fetch.have(),
                fetch.size()
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

/// Ack latencies (µs) of the batches these agents sent within
/// `from..until`, sorted.
fn latencies<'a>(
    outcomes: impl Iterator<Item = &'a Outcome>,
    from: Instant,
    until: Instant,
) -> Vec<u64> {
    let mut all: Vec<u64> = outcomes
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

/// How long the threads of `pid` have waited, runnable, for a CPU (ms; the
/// second field of /proc/<pid>/task/*/schedstat): what contention for the
/// machine's cores costs the process, acks included.
fn cpu_wait_ms(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let waited_ns: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    waited_ns / 1_000_000
}

/// Milliseconds waited per second between two readings.
fn wait_per_second(from: u64, to: u64, over: Duration) -> f64 {
    to.saturating_sub(from) as f64 / over.as_secs_f64()
}

/// The run's settings, from the environment.
struct Settings {
    agents: usize,
    /// How many of the agents fetch the plugin (the first ones); the rest
    /// only report, on connections that carry no chunks.
    fetching: usize,
    baseline: Duration,
    every: Duration,
    timeout: Duration,
}

fn main() -> anyhow::Result<()> {
    let agents = env("AGENTS", 100) as usize;
    let settings = Settings {
        agents,
        fetching: (env("FETCHING", agents as u64) as usize).clamp(1, agents),
        baseline: Duration::from_secs(env("BASELINE_SECS", 5)),
        every: Duration::from_millis(env("REPORT_MS", 100)),
        timeout: Duration::from_secs(env("TIMEOUT_SECS", 600)),
    };
    let wasm = std::fs::read(sandglass_tests::plugin(PLUGIN))?;
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
    let result = run(&receiver, &settings);
    receiver.stop();
    let run = result?;
    print(&settings, &wasm, &run)
}

/// Check what the agents received and print the figures.
fn print(settings: &Settings, wasm: &[u8], run: &Run) -> anyhow::Result<()> {
    let Settings {
        agents, fetching, ..
    } = *settings;
    let served: u64 = run.outcomes.iter().map(|o| o.bytes).sum();
    if served != wasm.len() as u64 * fetching as u64 {
        bail!(
            "{served} plugin bytes received, not {fetching} x {}",
            wasm.len()
        );
    }
    let mut delivered: Vec<Duration> = run
        .completions
        .iter()
        .map(|t| *t - run.phases.transfer)
        .collect();
    delivered.sort_unstable();
    let transfer = delivered[delivered.len() - 1];
    let (start, from, until) = (
        run.phases.start,
        run.phases.transfer,
        run.phases.transfer + transfer,
    );
    let fetched = || run.outcomes.iter().filter(|o| o.fetched);
    let before = latencies(run.outcomes.iter(), start, from);
    let during = latencies(fetched(), from, until);
    let mb = served as f64 / 1e6;

    println!(
        "plugin transfer: {fetching} of {agents} agents fetch plugin {PLUGIN}, {:.1} MB (sha256 {}); a batch of {} reports every {} ms per agent",
        wasm.len() as f64 / 1e6,
        &sha256_hex(wasm)[..12],
        SERVICES.len(),
        settings.every.as_millis()
    );
    println!(
        "delivered to every agent in {:.2} s (median agent {:.2} s); {mb:.0} MB served, {:.0} MB/s",
        secs(transfer),
        secs(delivered[delivered.len() / 2]),
        mb / secs(transfer)
    );
    let mut rows = vec![
        ("baseline (reports only)", before.clone(), run.cpu_baseline),
        ("during the transfer", during.clone(), run.cpu_transfer),
    ];
    if fetching < agents {
        rows.push((
            "  agents not fetching",
            latencies(run.outcomes.iter().filter(|o| !o.fetched), from, until),
            run.cpu_transfer,
        ));
    }
    for (name, lat, cpu) in &rows {
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
    println!(
        "receiver threads runnable but waiting for a CPU: {:.0} ms per second in the baseline, {:.0} ms per second during the transfer",
        run.wait_baseline, run.wait_transfer
    );
    Ok(())
}

/// What a run measured.
struct Run {
    phases: Phases,
    outcomes: Vec<Outcome>,
    /// When each fetching agent had the whole plugin.
    completions: Vec<Instant>,
    idle: Usage,
    end: Usage,
    cpu_baseline: f64,
    cpu_transfer: f64,
    cpu_agents: f64,
    /// Receiver threads' wait for a CPU, ms per second, per phase.
    wait_baseline: f64,
    wait_transfer: f64,
}

/// Both phases against the started receiver.
fn run(receiver: &Receiver, settings: &Settings) -> anyhow::Result<Run> {
    let pid = receiver.pid;
    let idle = proc_usage(pid);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let start = Instant::now() + Duration::from_secs(2);
    let phases = Phases {
        start,
        transfer: start + settings.baseline,
        deadline: start + settings.baseline + settings.timeout,
    };
    runtime.block_on(async {
        let (completed, mut completions_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..settings.agents {
            let host = format!("h{i}");
            let task = agent(
                receiver.address.clone(),
                host.clone(),
                i < settings.fetching,
                phases,
                settings.every,
                completed.clone(),
                stop_rx.clone(),
            );
            tasks.spawn(async move { task.await.with_context(|| format!("agent {host}")) });
        }
        tokio::time::sleep_until(phases.start.into()).await;
        let (at_start, wait_at_start) = (proc_usage(pid), cpu_wait_ms(pid));
        tokio::time::sleep_until(phases.transfer.into()).await;
        let (at_transfer, wait_at_transfer) = (proc_usage(pid), cpu_wait_ms(pid));
        let agents_at_transfer = proc_usage(std::process::id());
        let mut completions = Vec::with_capacity(settings.fetching);
        while completions.len() < settings.fetching {
            tokio::select! {
                Some(at) = completions_rx.recv() => completions.push(at),
                Some(ended) = tasks.join_next() => {
                    ended??;
                    bail!("an agent stopped before every agent had the plugin");
                }
            }
        }
        let (at_done, wait_at_done) = (proc_usage(pid), cpu_wait_ms(pid));
        let agents_at_done = proc_usage(std::process::id());
        let last = completions.iter().max().copied().unwrap_or(phases.transfer);
        let _ = stop.send(true);
        let mut outcomes = Vec::with_capacity(settings.agents);
        while let Some(ended) = tasks.join_next().await {
            outcomes.push(ended??);
        }
        let transfer = last - phases.transfer;
        Ok(Run {
            phases,
            outcomes,
            completions,
            idle,
            end: proc_usage(pid),
            cpu_baseline: cpu_percent(at_start, at_transfer, settings.baseline),
            cpu_transfer: cpu_percent(at_transfer, at_done, transfer),
            cpu_agents: cpu_percent(agents_at_transfer, agents_at_done, transfer),
            wait_baseline: wait_per_second(wait_at_start, wait_at_transfer, settings.baseline),
            wait_transfer: wait_per_second(wait_at_transfer, wait_at_done, transfer),
        })
    })
}
