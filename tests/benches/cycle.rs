//! Criterion benchmark of the agent's async side of one collection cycle:
//! five reports (24 labelled samples each, ~120 samples as in
//! `scripts/bench-peers.sh`) put into a real spool in a temporary directory,
//! framed for sending, and acknowledged, with the spool behind the mutex
//! and tokio's blocking pool as the link uses it. Side by side:
//!
//! - `cycle/per_report_read_back`: the way before issue 19 — one append (one
//!   write, one trip to the blocking pool) per report, then one trip that
//!   reads the records back from the segment and decodes them, and the
//!   batch encoded again;
//! - `cycle/burst_from_memory`: the cycle appended with one write in one
//!   trip, its frame spliced from the bytes just written.
//!
//! `cargo bench --profile release --workspace --bench cycle`

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use sandglass_agent::spool::{Budget, Spool};
use sandglass_core::report::{Cost, Level, MetricKind, Report, Sample, Status};
use sandglass_protocol::{FrameCodec, Message, ProtocolError, ReportBatch};
use std::sync::{Arc, Mutex};
use tokio_util::codec::Encoder;

const BUDGET: Budget = Budget {
    entries: 500,
    bytes: 8 << 20,
};

fn cycle_reports() -> Vec<Report> {
    ["cpu", "memory", "loadavg", "network", "filesystem"]
        .into_iter()
        .map(|service| Report {
            service: service.into(),
            plugin: service.into(),
            time_ms: 1_700_000_000_000,
            status: Status {
                level: Level::Ok,
                text: format!("{service} fine"),
            },
            samples: (0..24)
                .map(|i| Sample {
                    name: format!("{service}_total"),
                    value: 1_000_000.0 + i as f64,
                    kind: MetricKind::Counter,
                    unit: "bytes".into(),
                    labels: vec![
                        ("device".into(), format!("dev{i}")),
                        ("mode".into(), "user".into()),
                    ],
                })
                .collect(),
            cost: Cost::default(),
        })
        .collect()
}

/// A spool in a temporary directory behind the link's mutex, and the codec
/// that frames its batches.
struct Link {
    _dir: tempfile::TempDir,
    spool: Arc<Mutex<Spool>>,
    codec: FrameCodec,
    out: BytesMut,
}

impl Link {
    fn new() -> Link {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Mutex::new(Spool::open(dir.path(), 1 << 30).unwrap().0));
        Link {
            _dir: dir,
            spool,
            codec: FrameCodec::new(8 << 20),
            out: BytesMut::new(),
        }
    }

    /// Run `work` on the spool on tokio's blocking pool, as the link does.
    async fn on_pool<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Spool) -> T + Send + 'static,
    ) -> T {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || work(&mut spool.lock().unwrap()))
            .await
            .unwrap()
    }

    /// Frame a batch ending at `last` as the session writes it, then take
    /// the receiver's acknowledgement.
    async fn send<M>(&mut self, batch: M, last: u64)
    where
        FrameCodec: Encoder<M, Error = ProtocolError>,
    {
        self.out.clear();
        self.codec.encode(batch, &mut self.out).unwrap();
        self.on_pool(move |s| s.ack(last).unwrap()).await;
    }
}

fn cycle(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let reports = Arc::new(cycle_reports());
    let mut group = c.benchmark_group("cycle");
    group.bench_function("per_report_read_back", |b| {
        let mut link = Link::new();
        b.iter(|| {
            tokio.block_on(async {
                let from = link.spool.lock().unwrap().last_seq() + 1;
                for i in 0..reports.len() {
                    let reports = reports.clone();
                    link.on_pool(move |s| s.append_report(&reports[i]).unwrap())
                        .await;
                }
                let (seq, entries, settled) = link
                    .on_pool(move |s| {
                        let (seq, entries) = s.read(from, BUDGET).unwrap().unwrap();
                        (seq, entries, s.acked())
                    })
                    .await;
                let batch = ReportBatch {
                    seq,
                    entries,
                    settled,
                };
                let last = batch.last_seq();
                link.send(Message::Reports(batch), last).await;
            })
        })
    });
    group.bench_function("burst_from_memory", |b| {
        let mut link = Link::new();
        b.iter(|| {
            tokio.block_on(async {
                let burst = reports.clone();
                let from = link
                    .on_pool(move |s| s.append_reports(&burst.iter().collect::<Vec<_>>()).unwrap())
                    .await;
                let batch = link
                    .spool
                    .lock()
                    .unwrap()
                    .take_unsent(from, BUDGET)
                    .unwrap();
                let batch = batch.expect("the cycle is in memory");
                let last = batch.last_seq();
                link.send(batch, last).await;
            })
        })
    });
    group.finish();
}

criterion_group!(benches, cycle);
criterion_main!(benches);
