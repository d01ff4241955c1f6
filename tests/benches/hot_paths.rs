//! Criterion benchmarks of the agent's and receiver's hot paths:
//!
//! - `sandbox_entry/{lean,wasi}`: a run of a plugin that does nothing
//!   (instantiate, call, tear down), in each sandbox;
//! - `collector/<name>/{sandbox,wasi,native}`: each core collector in the
//!   sandbox (a lean collector), the same source built for WASI, and its
//!   parser called natively on the same `/proc` file — the ratio to native
//!   is the sandbox's price;
//! - `encode_batch`: MessagePack framing of a 50-report batch;
//! - `spool_append`: one report into the on-disk spool;
//! - `receiver_store/{1,20}_agents`: decoding framed 50-report batches (1,000
//!   samples each) from one or twenty agents at once and storing them in
//!   SQLite, committed, as the receiver acknowledges.
//!
//! `bash scripts/bench-hot-paths.sh` builds the plugins first, then
//! `cargo bench --profile release --workspace --bench hot_paths`.

#[path = "support/natives.rs"]
mod natives;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use sandglass_agent::spool::Spool;
use sandglass_core::report::{Cost, Level, MetricKind, Report, Sample, Status};
use sandglass_plugin_sdk::Context;
use sandglass_protocol::{Entry, FrameCodec, Message, ReportBatch};
use sandglass_receiver::liveness::Tracker;
use sandglass_receiver::store::{Op, ScheduledService, SeriesCache, Store};
use sandglass_runtime::{Limits, RunRequest, Runtime, View};
use sandglass_tests::root;
use std::sync::{Arc, Mutex};
use tokio_util::codec::{Decoder, Encoder};

fn request() -> RunRequest {
    RunRequest {
        service: "bench".into(),
        params: Vec::new(),
        state: None,
        limits: Limits::default(),
        view: Arc::new(View::new(false, &[]).unwrap()),
    }
}

fn sandbox(c: &mut Criterion) {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Some(cache.path().to_owned())).unwrap();
    let load = |path: &str| {
        let path = root().join(path);
        assert!(
            path.exists(),
            "run scripts/build-plugins.sh first (scripts/bench-hot-paths.sh does)"
        );
        runtime.load(&path).unwrap()
    };
    let req = request();
    // The misbehave fixture without a mode does nothing: built lean and
    // for WASI from one source.
    let mut entry = c.benchmark_group("sandbox_entry");
    for (sandbox, path) in [
        ("lean", "target/fixtures/misbehave-lean.wasm"),
        ("wasi", "target/fixtures/misbehave.wasm"),
    ] {
        let noop = load(path);
        entry.bench_function(sandbox, |b| b.iter(|| runtime.run_here(&noop, &req)));
    }
    entry.finish();

    let natives = natives::natives();
    let mut group = c.benchmark_group("collector");
    for (name, file, parse) in natives {
        // The core plugin (lean), and the same source built for WASI.
        for (sandbox, path) in [
            ("sandbox", format!("target/plugins/{name}.wasm")),
            ("wasi", format!("target/fixtures/{name}-wasi.wasm")),
        ] {
            let plugin = load(&path);
            group.bench_function(format!("{name}/{sandbox}"), |b| {
                b.iter(|| runtime.run_here(&plugin, &req))
            });
        }
        group.bench_function(format!("{name}/native"), |b| {
            b.iter(|| {
                let text = std::fs::read_to_string(file).unwrap();
                let mut ctx = Context::new(Vec::new(), None);
                parse(&text, &mut ctx);
                ctx
            })
        });
    }
    group.finish();
}

/// A report like the core collectors send: 20 labelled samples.
fn report(time_ms: u64) -> Report {
    Report {
        service: "cpu".into(),
        plugin: "cpu".into(),
        time_ms,
        status: Status {
            level: Level::Ok,
            text: "cpu 12%".into(),
        },
        samples: (0..20)
            .map(|i| Sample {
                name: "cpu_jiffies_total".into(),
                value: 1_000_000.0 + i as f64,
                kind: MetricKind::Counter,
                unit: "jiffies".into(),
                labels: vec![
                    ("cpu".into(), format!("cpu{i}")),
                    ("mode".into(), "user".into()),
                ],
            })
            .collect(),
        cost: Cost::default(),
    }
}

fn batch(seq: u64) -> ReportBatch {
    ReportBatch {
        seq,
        entries: (0..50)
            .map(|i| Entry::Report(report(1_700_000_000_000 + i)))
            .collect(),
        settled: 0,
    }
}

fn encode(c: &mut Criterion) {
    let mut codec = FrameCodec::new(8 << 20);
    let mut out = BytesMut::new();
    c.bench_function("encode_batch", |b| {
        b.iter_batched(
            || batch(1),
            |batch| {
                out.clear();
                codec.encode(Message::Reports(batch), &mut out).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
}

fn spool(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
    let report = report(1_700_000_000_000);
    c.bench_function("spool_append", |b| {
        b.iter(|| spool.append_report(&report).unwrap())
    });
}

fn receiver(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let conn = sandglass_receiver::store::open(&dir.path().join("bench.db")).unwrap();
    let (store, _writer) = Store::start(conn, Arc::new(Mutex::new(Tracker::default())));
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The receiver stores reports only of services it scheduled.
    let services = (0..20)
        .map(|agent| ScheduledService {
            host: format!("bench-{agent}"),
            service: "cpu".into(),
            plugin: "cpu".into(),
            // Pinned, as plugin_dir pins: each report is counted for it.
            sha256: Some("c".repeat(64)),
            interval_ms: 1_000,
        })
        .collect();
    tokio.block_on(store.send(Op::Scheduled {
        services,
        hosts: vec![],
        time_ms: 0,
    }));
    let (mut encoder, mut decoder) = (FrameCodec::new(8 << 20), FrameCodec::new(8 << 20));
    let mut seq = 0;
    // `agents` frames of one 50-report batch each, as that many agents send
    // them at once: decoded, stored and committed (the receiver acknowledges
    // only then). One agent: the latency of a lone commit; twenty: what the
    // writer's group commit sustains.
    for agents in [1u64, 20] {
        // One per agent's connection: a connection keeps its reports' series.
        let mut series: Vec<SeriesCache> = (0..agents).map(|_| SeriesCache::default()).collect();
        c.bench_function(&format!("receiver_store/{agents}_agents"), |b| {
            b.iter_batched(
                || {
                    (0..agents)
                        .map(|_| {
                            seq += 50;
                            let mut frame = BytesMut::new();
                            encoder
                                .encode(Message::Reports(batch(seq)), &mut frame)
                                .unwrap();
                            frame
                        })
                        .collect::<Vec<_>>()
                },
                |frames| {
                    tokio.block_on(async {
                        let mut stored = Vec::new();
                        for (agent, mut frame) in frames.into_iter().enumerate() {
                            let Some(Message::Reports(batch)) = decoder.decode(&mut frame).unwrap()
                            else {
                                panic!("not a batch");
                            };
                            // As each agent's connection does before the writer.
                            let batch = series[agent].prepare(batch);
                            let (done, acked) = tokio::sync::oneshot::channel();
                            store
                                .send(Op::Batch {
                                    host: format!("bench-{agent}"),
                                    stream: 1,
                                    batch,
                                    offset_ms: 0,
                                    received_ms: 0,
                                    done,
                                })
                                .await;
                            stored.push(acked);
                        }
                        for acked in stored {
                            acked.await.unwrap().unwrap();
                        }
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, sandbox, encode, spool, receiver);
criterion_main!(benches);
