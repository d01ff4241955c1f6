//! Fleet benchmark: N simulated agents (real TCP on 127.0.0.1, the real
//! protocol) against one real `receiver` process with its SQLite store.
//!
//! The phases start once every agent has connected (or failed to). Phase 1,
//! steady: every agent sends a batch of 50 samples (5 reports of 10) every
//! second, at its own point of the second as the agent's scheduler splays
//! hosts (LOCKSTEP=1: every agent at the same instant, the worst case of
//! synchronized clocks). Phase 2, flood: every agent keeps 8 batches in flight and
//! sends the next as soon as one is acknowledged. Printed per phase: samples
//! acknowledged (= durably stored) per second, ack latency p50/p99, and the
//! receiver's CPU and RSS (from /proc/<pid>), and its CPU time per million
//! stored samples. Run: `bash scripts/bench-fleet.sh` (AGENTS=1000
//! STEADY_SECS=5 FLOOD_SECS=10 by default). TRIGGERS=1 adds one trigger per
//! service over every sample it sends (`avg(1m)` of each series, never
//! firing): the CPU per sample with and without is what judging triggers
//! costs.

#[path = "support/simulated.rs"]
mod simulated;

use futures_util::{SinkExt, StreamExt};
use sandglass_protocol::{Ack, Message};
use simulated::{Receiver, batch, connect, env, hosts, percentile, proc_usage};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REPORTS_PER_BATCH: usize = 5;
const SAMPLES_PER_REPORT: usize = 10;
const SAMPLES_PER_BATCH: u64 = (REPORTS_PER_BATCH * SAMPLES_PER_REPORT) as u64;
const SERVICES: [&str; REPORTS_PER_BATCH] = ["uptime", "cpu", "memory", "loadavg", "network"];

#[derive(Default)]
struct Tally {
    acked_samples: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

/// Agents that tried to connect, and those that did.
#[derive(Default)]
struct Connecting {
    tried: AtomicU64,
    connected: AtomicU64,
}

/// When the phases run, known once every agent has connected.
#[derive(Clone, Copy)]
struct Phases {
    start: Instant,
    steady_until: Instant,
    flood_until: Instant,
}

/// Where in each second `host` sends in the steady phase: spread evenly
/// and stable per host, as the agent's scheduler places a host's runs on
/// its grid (a hash of the host name), or 0 for all with LOCKSTEP=1.
fn splay(host: &str, lockstep: bool) -> Duration {
    if lockstep {
        return Duration::ZERO;
    }
    let mut h = DefaultHasher::new();
    host.hash(&mut h);
    Duration::from_millis(h.finish() % 1_000)
}

/// One simulated agent: hello, then (once `phases` is known) batches paced
/// by `steady_until` (one per second) and then as fast as acks allow
/// until `flood_until`.
async fn agent(
    address: String,
    host: String,
    connecting: Arc<Connecting>,
    mut phases: tokio::sync::watch::Receiver<Option<Phases>>,
    steady: Arc<Tally>,
    flood: Arc<Tally>,
) -> anyhow::Result<()> {
    let link = connect(&address, &host).await;
    if link.is_ok() {
        connecting.connected.fetch_add(1, Ordering::Relaxed);
    }
    // Connected or refused: either way the phases do not wait for it.
    connecting.tried.fetch_add(1, Ordering::Relaxed);
    let mut framed = link?;
    let Phases {
        start,
        steady_until,
        flood_until,
    } = *phases
        .wait_for(Option::is_some)
        .await?
        .as_ref()
        .expect("set");
    // Report times in the past, one service interval (1 s) apart per batch,
    // as a real agent's runs are: unique per service, and a trigger's window
    // holds what it would in production (60 values for `avg(1m)`). The flood
    // phase sends far faster than that, so its times run ahead of the
    // clock, but from ten days back they stay in the past.
    let mut time_ms = sandglass_core::time::now_ms() - 10 * 86_400_000;
    // The next entry number: each batch numbers its entries on from here.
    let mut seq = 1;
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut next_steady = start + splay(&host, env("LOCKSTEP", 0) > 0);
    loop {
        let now = Instant::now();
        if now >= flood_until && sent.is_empty() {
            return Ok(());
        }
        let flooding = now >= steady_until;
        if now < flood_until && ((flooding && sent.len() < 8) || (!flooding && now >= next_steady))
        {
            time_ms += 1_000;
            let batch = batch(&SERVICES, SAMPLES_PER_REPORT, seq, time_ms);
            seq = batch.last_seq() + 1;
            sent.insert(batch.last_seq(), now);
            framed.send(Message::Reports(batch)).await?;
            next_steady += Duration::from_secs(1);
            continue;
        }
        let wait = if flooding {
            flood_until
        } else {
            next_steady.min(steady_until)
        };
        tokio::select! {
            frame = framed.next() => match frame {
                Some(Ok(Message::Ack(Ack { seq }))) => {
                    if let Some(start) = sent.remove(&seq) {
                        let tally = if start >= steady_until { &flood } else { &steady };
                        tally.acked_samples.fetch_add(SAMPLES_PER_BATCH, Ordering::Relaxed);
                        tally.latencies_us.lock().unwrap().push(start.elapsed().as_micros() as u64);
                    }
                }
                Some(Ok(Message::Error(f))) => anyhow::bail!("{host}: {f}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("{host}: closed"),
            },
            () = tokio::time::sleep_until(wait.into()) => {}
        }
    }
}

fn main() -> anyhow::Result<()> {
    let agents = env("AGENTS", 1000);
    let steady_secs = env("STEADY_SECS", 5);
    let flood_secs = env("FLOOD_SECS", 10);
    let dir = tempfile::tempdir()?;
    let mut config = String::from(
        "database = \"fleet.db\"\nmax_connections = 100000\n[services.uptime]\nplugin = \"uptime\"\ninterval = \"1s\"\n",
    );
    for s in &SERVICES[1..] {
        config.push_str(&format!(
            "[services.{s}]\nplugin = \"{s}\"\ninterval = \"1s\"\n"
        ));
    }
    config.push_str(
        "[templates.all]\nservices = [\"uptime\", \"cpu\", \"memory\", \"loadavg\", \"network\"]\n",
    );
    if env("TRIGGERS", 0) > 0 {
        for s in SERVICES {
            config.push_str(&format!(
                "[triggers.busy_{s}]\nservice = \"{s}\"\nmetric = \"{s}_metric\"\nwhen = \"avg(1m) > 1e15\"\n"
            ));
        }
    }
    config.push_str(&hosts(agents, "all"));
    let config_path = dir.path().join("receiver.toml");
    std::fs::write(&config_path, config)?;
    let receiver = Receiver::start(&config_path)?;
    let (address, pid) = (receiver.address.clone(), receiver.pid);
    let idle = proc_usage(pid);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let steady = Arc::new(Tally::default());
    let flood = Arc::new(Tally::default());
    let connecting = Arc::new(Connecting::default());
    let (set_phases, phases) = tokio::sync::watch::channel(None);
    let (cpu_steady, cpu_flood, rss) = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let since = Instant::now();
        for i in 0..agents {
            tasks.spawn(agent(
                address.clone(),
                format!("h{i}"),
                connecting.clone(),
                phases.clone(),
                steady.clone(),
                flood.clone(),
            ));
        }
        // Every agent has connected (or failed to), or two minutes passed.
        while connecting.tried.load(Ordering::Relaxed) < agents
            && since.elapsed() < Duration::from_secs(120)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "{} of {agents} agents connected in {:.1} s",
            connecting.connected.load(Ordering::Relaxed),
            since.elapsed().as_secs_f64()
        );
        let start = Instant::now() + Duration::from_secs(1);
        let steady_until = start + Duration::from_secs(steady_secs);
        set_phases.send_replace(Some(Phases {
            start,
            steady_until,
            flood_until: steady_until + Duration::from_secs(flood_secs),
        }));
        tokio::time::sleep_until(start.into()).await;
        let at_start = proc_usage(pid);
        tokio::time::sleep_until(steady_until.into()).await;
        let at_flood = proc_usage(pid);
        let mut failures = 0;
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                failures += 1;
                if failures <= 3 {
                    eprintln!("agent failed: {e:#}");
                }
            }
        }
        let at_end = proc_usage(pid);
        (
            at_flood.cpu_ms - at_start.cpu_ms,
            at_end.cpu_ms - at_flood.cpu_ms,
            at_end,
        )
    });
    receiver.stop();
    let conn = rusqlite::Connection::open(dir.path().join("fleet.db"))?;
    let stored: u64 = conn.query_row("SELECT count(*) FROM reports", [], |r| r.get(0))?;

    println!(
        "fleet: {agents} agents, batches of {SAMPLES_PER_BATCH} samples ({REPORTS_PER_BATCH} reports x {SAMPLES_PER_REPORT}), receiver pid {pid}"
    );
    println!("receiver idle RSS {:.1} MiB", idle.rss_kib as f64 / 1024.0);
    for (name, tally, secs, cpu_ms) in [
        (
            "steady (1 batch/s per agent)",
            &steady,
            steady_secs,
            cpu_steady,
        ),
        (
            "flood (8 in flight per agent)",
            &flood,
            flood_secs,
            cpu_flood,
        ),
    ] {
        let mut lat = tally.latencies_us.lock().unwrap().clone();
        lat.sort();
        let samples = tally.acked_samples.load(Ordering::Relaxed);
        println!(
            "{name:<32} {:>10.0} samples/s durable   ack p50 {:>7.1} ms  p99 {:>7.1} ms   receiver CPU {:>5.1}% of one core, {:.0} ms per million samples",
            samples as f64 / secs as f64,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            cpu_ms as f64 / (secs as f64 * 10.0),
            cpu_ms as f64 * 1e6 / samples.max(1) as f64,
        );
    }
    println!(
        "receiver RSS at the end {:.1} MiB, peak {:.1} MiB",
        rss.rss_kib as f64 / 1024.0,
        rss.peak_kib as f64 / 1024.0
    );
    let acked_reports = (steady.acked_samples.load(Ordering::Relaxed)
        + flood.acked_samples.load(Ordering::Relaxed))
        / SAMPLES_PER_REPORT as u64;
    println!("reports acknowledged {acked_reports}, rows in the store after shutdown {stored}");
    Ok(())
}
