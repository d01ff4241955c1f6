//! The receiver's store, measured on disk and when read: bytes per stored
//! sample, samples/s through the writer, and the time to read one metric of
//! one host over the whole range (what a plot and `query --metric` do)
//! against reading every report of the service.
//!
//! Ten hosts report three services, as the core collectors do: `cpu` (20
//! counters labelled by cpu and mode), `memory` (10 unlabelled gauges in
//! bytes) and `loadavg` (3 fractional gauges), one report per service per
//! minute for `MINUTES` minutes, sent in batches of 50 reports.
//!
//! `bash scripts/bench-store.sh` (or `cargo bench --profile release --workspace --bench store`: the release profile and the workspace's features reuse the test build).

use sandglass_core::report::{Cost, Level, MetricKind, Report, Sample, Status};
use sandglass_protocol::{Entry, ReportBatch};
use sandglass_receiver::liveness::Tracker;
use sandglass_receiver::query::Query;
use sandglass_receiver::store::{self, Op, ScheduledService, SeriesCache, Store};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const HOSTS: usize = 10;
const MINUTES: u64 = 2_000;
const START_MS: u64 = 1_700_000_000_000;
const SERVICES: [&str; 3] = ["cpu", "memory", "loadavg"];

fn sample(name: &str, value: f64, kind: MetricKind, unit: &str, labels: &[(&str, &str)]) -> Sample {
    Sample {
        name: name.into(),
        value,
        kind,
        unit: unit.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

/// The samples of `service` at minute `m` of host `h`: values that move as
/// real ones do (counters grow, gauges wander, load is fractional).
fn samples(service: &str, h: usize, m: u64) -> Vec<Sample> {
    let wobble = ((m * 7919 + h as u64 * 104_729) % 1000) as f64;
    match service {
        "cpu" => (0..20)
            .map(|i| {
                let cpu = format!("cpu{}", i / 4);
                let mode = ["user", "system", "idle", "iowait"][i % 4];
                let value = 1_000_000.0 + (m * 600 + i as u64 * 37) as f64 + wobble;
                sample(
                    "cpu_jiffies_total",
                    value,
                    MetricKind::Counter,
                    "jiffies",
                    &[("cpu", &cpu), ("mode", mode)],
                )
            })
            .collect(),
        "memory" => (0..10)
            .map(|i| {
                let value = 8_000_000_000.0 + (i as f64) * 1.0e8 + wobble * 4096.0;
                sample(
                    &format!("memory_field{i}_bytes"),
                    value,
                    MetricKind::Gauge,
                    "bytes",
                    &[],
                )
            })
            .collect(),
        _ => ["load1", "load5", "load15"]
            .iter()
            .map(|name| sample(name, wobble / 1000.0 + 0.25, MetricKind::Gauge, "", &[]))
            .collect(),
    }
}

fn report(service: &str, h: usize, m: u64) -> Report {
    Report {
        service: service.into(),
        plugin: service.into(),
        time_ms: START_MS + m * 60_000,
        status: Status {
            level: Level::Ok,
            text: format!("{service} fine"),
        },
        samples: samples(service, h, m),
        cost: Cost::default(),
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let conn = store::open(&path).unwrap();
    let (store, writer) = Store::start(conn, Arc::new(Mutex::new(Tracker::default())));
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let services = (0..HOSTS)
        .flat_map(|h| {
            SERVICES.map(|service| ScheduledService {
                host: format!("host-{h}"),
                service: service.into(),
                plugin: service.into(),
                // Pinned, as the receiver pins every plugin of its
                // plugin_dir: each report is counted for its build too.
                sha256: Some("c".repeat(64)),
                interval_ms: 60_000,
            })
        })
        .collect();
    let mut stored_samples = 0usize;
    let started = Instant::now();
    tokio.block_on(async {
        store
            .send(Op::Scheduled {
                services,
                hosts: vec![],
                time_ms: START_MS,
            })
            .await;
        let mut acks = Vec::new();
        // As the hosts' connections keep them: a series seen is shared.
        let mut series: Vec<SeriesCache> = (0..HOSTS).map(|_| SeriesCache::default()).collect();
        for first in (0..MINUTES).step_by(50) {
            for (h, series) in series.iter_mut().enumerate() {
                for service in SERVICES {
                    let entries: Vec<Entry> = (first..(first + 50).min(MINUTES))
                        .map(|m| Entry::Report(report(service, h, m)))
                        .collect();
                    stored_samples += entries
                        .iter()
                        .map(|e| match e {
                            Entry::Report(r) => r.samples.len(),
                            Entry::Gap(_) => 0,
                        })
                        .sum::<usize>();
                    let (done, acked) = tokio::sync::oneshot::channel();
                    store
                        .send(Op::Batch {
                            host: format!("host-{h}"),
                            stream: SERVICES.iter().position(|s| *s == service).unwrap() as u64 + 1,
                            batch: series.prepare(ReportBatch {
                                seq: first + 1,
                                entries,
                                settled: 0,
                            }),
                            offset_ms: 0,
                            received_ms: START_MS + MINUTES * 60_000,
                            done,
                        })
                        .await;
                    acks.push(acked);
                }
            }
        }
        for acked in acks {
            acked.await.unwrap().unwrap();
        }
    });
    let write_secs = started.elapsed().as_secs_f64();
    drop(store);
    writer.join().unwrap();

    let conn = store::open_existing(&path).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let (size, free) = store::retention::size(&conn).unwrap();
    println!(
        "stored {stored_samples} samples in {write_secs:.2} s: {:.0} samples/s; database {:.1} MiB, {:.1} bytes per sample",
        stored_samples as f64 / write_secs,
        (size - free) as f64 / 1048576.0,
        (size - free) as f64 / stored_samples as f64
    );

    let range = Query {
        host: Some("host-3".into()),
        service: Some("cpu".into()),
        since_ms: START_MS,
        until_ms: START_MS + MINUTES * 60_000,
        ..Query::default()
    };
    let one_metric = Query {
        metric: Some("cpu_jiffies_total".into()),
        labels: vec![
            ("cpu".into(), "cpu2".into()),
            ("mode".into(), "user".into()),
        ],
        ..range.clone()
    };
    for (what, query) in [("one series", &one_metric), ("whole service", &range)] {
        let rounds = 10;
        let started = Instant::now();
        let mut points = 0;
        for _ in 0..rounds {
            points = query.run(&conn).unwrap().len();
        }
        println!(
            "read {what} of host-3/cpu over {MINUTES} minutes: {points} points in {:.2} ms",
            started.elapsed().as_secs_f64() * 1000.0 / rounds as f64
        );
    }
}
