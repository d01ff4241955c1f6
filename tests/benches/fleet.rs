//! Fleet benchmark: N simulated agents (real TCP on 127.0.0.1, the real
//! protocol) against one real `receiver` process with its SQLite store.
//!
//! Phase 1, steady: every agent sends a batch of 50 samples (5 reports of 10)
//! every second. Phase 2, flood: every agent keeps 8 batches in flight and
//! sends the next as soon as one is acknowledged. Printed per phase: samples
//! acknowledged (= durably stored) per second, ack latency p50/p99, and the
//! receiver's CPU and RSS (from /proc/<pid>). Run: `bash scripts/bench-fleet.sh`
//! (AGENTS=1000 STEADY_SECS=5 FLOOD_SECS=10 by default).

use futures_util::{SinkExt, StreamExt};
use sandglass_core::report::{Cost, Level, MetricKind, Report, Sample, Status};
use sandglass_protocol::{
    Ack, DEFAULT_MAX_FRAME, Entry, FrameCodec, Hello, Message, ReportBatch, read_preamble,
    write_preamble,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const REPORTS_PER_BATCH: usize = 5;
const SAMPLES_PER_REPORT: usize = 10;
const SAMPLES_PER_BATCH: u64 = (REPORTS_PER_BATCH * SAMPLES_PER_REPORT) as u64;
const SERVICES: [&str; 5] = ["uptime", "cpu", "memory", "loadavg", "network"];

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The receiver's CPU time (ms) and RSS / peak RSS (KiB).
fn proc_usage(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (ticks * 10, kib("VmRSS:"), kib("VmHWM:"))
}

fn batch(seq: u64, time_ms: u64) -> ReportBatch {
    let reports: Vec<Report> = SERVICES
        .iter()
        .map(|service| Report {
            service: service.to_string(),
            plugin: service.to_string(),
            time_ms,
            status: Status {
                level: Level::Ok,
                text: "fine".into(),
            },
            samples: (0..SAMPLES_PER_REPORT)
                .map(|i| Sample {
                    name: format!("{service}_metric"),
                    value: (seq * 7 + i as u64) as f64,
                    kind: MetricKind::Gauge,
                    unit: String::new(),
                    labels: vec![("n".into(), i.to_string())],
                })
                .collect(),
            cost: Cost::default(),
        })
        .collect();
    ReportBatch {
        seq,
        entries: reports.into_iter().map(Entry::Report).collect(),
        settled: 0,
    }
}

#[derive(Default)]
struct Tally {
    acked_samples: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

/// One simulated agent: hello, then batches paced by `steady_until` (one
/// per second) and then as fast as acks allow until `flood_until`.
async fn agent(
    address: String,
    host: String,
    start: Instant,
    steady_until: Instant,
    flood_until: Instant,
    steady: Arc<Tally>,
    flood: Arc<Tally>,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(&address).await?;
    stream.set_nodelay(true)?;
    write_preamble(&mut stream).await?;
    read_preamble(&mut stream).await?;
    let mut framed = Framed::new(stream, FrameCodec::new(DEFAULT_MAX_FRAME));
    framed
        .send(Message::Hello(Hello {
            host_id: host.clone(),
            token: format!("token-{host}"),
            agent_version: "bench".into(),
            abi_version: "1.0.0".into(),
            time_ms: sandglass_core::time::now_ms(),
            schedule_revision: 0,
            plugins: vec![],
            stream: 1,
        }))
        .await?;
    // Report times in the past, one ms apart per batch: unique per service.
    let mut time_ms = sandglass_core::time::now_ms() - 10 * 86_400_000;
    // The next entry number: each batch numbers its entries on from here.
    let mut seq = 1;
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut next_steady = start;
    loop {
        let now = Instant::now();
        if now >= flood_until && sent.is_empty() {
            return Ok(());
        }
        let flooding = now >= steady_until;
        if now < flood_until && ((flooding && sent.len() < 8) || (!flooding && now >= next_steady))
        {
            time_ms += 1;
            let batch = batch(seq, time_ms);
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

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
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
    // TRIGGER=1: a trigger judges every cpu sample (10 series per host, a
    // 1-minute window each; it never fires), to price trigger evaluation.
    if env("TRIGGER", 0) == 1 {
        config.push_str(
            "[triggers.busy]\nservice = \"cpu\"\nmetric = \"cpu_metric\"\nwhen = \"avg(1m) > 1000000000\"\n",
        );
    }
    for i in 0..agents {
        config.push_str(&format!(
            "[hosts.h{i}]\ntoken = \"token-h{i}\"\ntemplates = [\"all\"]\n"
        ));
    }
    let config_path = dir.path().join("receiver.toml");
    std::fs::write(&config_path, config)?;
    let mut receiver = Command::new(sandglass_tests::binary("receiver"))
        .args([
            "run",
            "--config",
            config_path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        // The simulated report times are old, so hosts turn UNREACHABLE:
        // expected here, and not worth a log line each.
        .env("SANDGLASS_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(receiver.stdout.take().unwrap()).read_line(&mut line)?;
    let address = line.trim().trim_start_matches("listening on ").to_owned();
    let pid = receiver.id();
    let idle = proc_usage(pid);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let steady = Arc::new(Tally::default());
    let flood = Arc::new(Tally::default());
    let start = Instant::now() + Duration::from_secs(2);
    let steady_until = start + Duration::from_secs(steady_secs);
    let flood_until = steady_until + Duration::from_secs(flood_secs);
    let (cpu_steady, cpu_flood, rss) = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..agents {
            tasks.spawn(agent(
                address.clone(),
                format!("h{i}"),
                start,
                steady_until,
                flood_until,
                steady.clone(),
                flood.clone(),
            ));
        }
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
        (at_flood.0 - at_start.0, at_end.0 - at_flood.0, at_end)
    });
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = receiver.wait();
    let conn = rusqlite::Connection::open(dir.path().join("fleet.db"))?;
    let stored: u64 = conn.query_row("SELECT count(*) FROM reports", [], |r| r.get(0))?;

    println!(
        "fleet: {agents} agents, batches of {SAMPLES_PER_BATCH} samples ({REPORTS_PER_BATCH} reports x {SAMPLES_PER_REPORT}), receiver pid {pid}"
    );
    println!("receiver idle RSS {:.1} MiB", idle.1 as f64 / 1024.0);
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
            "{name:<32} {:>10.0} samples/s durable   ack p50 {:>7.1} ms  p99 {:>7.1} ms   receiver CPU {:>5.1}% of one core, {:.2} ms per 1000 samples",
            samples as f64 / secs as f64,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            cpu_ms as f64 / (secs as f64 * 10.0),
            cpu_ms as f64 * 1000.0 / samples.max(1) as f64,
        );
    }
    println!(
        "receiver RSS at the end {:.1} MiB, peak {:.1} MiB",
        rss.1 as f64 / 1024.0,
        rss.2 as f64 / 1024.0
    );
    let acked_reports = (steady.acked_samples.load(Ordering::Relaxed)
        + flood.acked_samples.load(Ordering::Relaxed))
        / SAMPLES_PER_REPORT as u64;
    println!("reports acknowledged {acked_reports}, rows in the store after shutdown {stored}");
    Ok(())
}
