//! Fuzzing the receiver's frame decoder and message parser: valid frames of
//! every message kind, mutated (bit flips, interesting bytes, cut, spliced,
//! lengths rewritten) and pure noise, decoded as a receiver would. A panic
//! fails the test (the input is saved under target/fuzz-findings/ first),
//! and so does decoding that allocates far more than it was sent.
//!
//! `SANDGLASS_FUZZ_SECS` (default 3) sets how long it runs and
//! `SANDGLASS_FUZZ_SEED` makes a run repeatable; `scripts/fuzz.sh` runs it
//! for 10 minutes.

use bytes::BytesMut;
use sandglass_core::report::{Cost, Level, MetricKind, Report, Sample, Status};
use sandglass_protocol::GrantName;
use sandglass_protocol::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::codec::{Decoder, Encoder};

/// The system allocator, counting bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest frame the fuzzed decoder accepts (as after a handshake,
/// scaled down so the memory bound below stays tight).
const MAX_FRAME: usize = 1 << 20;

fn report(n: u64) -> Report {
    Report {
        service: format!("svc{n}"),
        plugin: "cpu".into(),
        time_ms: 1_700_000_000_000 + n,
        status: Status {
            level: Level::Warn,
            text: "load high".into(),
        },
        samples: (0..3)
            .map(|i| Sample {
                name: "cpu_seconds".into(),
                value: i as f64 * 1.5,
                kind: MetricKind::Counter,
                unit: "seconds".into(),
                labels: vec![("cpu".into(), i.to_string())],
            })
            .collect(),
        cost: Cost {
            wall_micros: 40,
            fuel: 1000,
            peak_memory: 65536,
        },
    }
}

/// One valid message of every kind.
fn seeds() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            host_id: "web-1".into(),
            token: "0123456789abcdef".into(),
            agent_version: "0.1.0".into(),
            abi_version: "1.0.0".into(),
            time_ms: 1_700_000_000_000,
            schedule_revision: 42,
            plugins: vec![InstalledPlugin {
                name: "cpu".into(),
                sha256: "ab".repeat(32),
            }],
            stream: 7,
        }),
        Message::Reports(ReportBatch {
            seq: 1,
            entries: vec![
                Entry::Report(report(1)),
                Entry::Gap(Gap {
                    reports: 3,
                    first_ms: 1,
                    last_ms: 2,
                    reason: "spool full".into(),
                }),
                Entry::Report(report(2)),
            ],
            settled: 0,
        }),
        Message::Schedule(Schedule {
            revision: 9,
            services: vec![ScheduledService {
                name: "cpu".into(),
                plugin: "cpu".into(),
                sha256: Some("cd".repeat(32)),
                interval_ms: 10_000,
                params: vec![("warn".into(), "90".into())],
                grants: vec![GrantName::Sys, GrantName::Files],
                files: vec!["/var/log".into()],
                limits: ServiceLimits {
                    fuel: Some(1),
                    memory: Some(2),
                    ..Default::default()
                },
            }],
        }),
        Message::ScheduleRequest(Revision { revision: 3 }),
        Message::Unchanged(Revision { revision: 3 }),
        Message::Ack(Ack { seq: 77 }),
        Message::Error(Fault {
            code: FaultCode::Auth,
            text: "no".into(),
        }),
        Message::Ping(Probe {
            nonce: 1,
            time_ms: 5,
        }),
        Message::Pong(Probe {
            nonce: 2,
            time_ms: 6,
        }),
        Message::Rejected(Rejected {
            seq: 4,
            last_seq: 9,
            reason: "too big".into(),
        }),
        Message::PluginRequest(PluginRequest {
            sha256: "ef".repeat(32),
            offset: 262_144,
        }),
        Message::PluginChunk(PluginChunk {
            sha256: "ef".repeat(32),
            offset: 262_144,
            size: 300_000,
            bytes: Bytes((0..600).map(|i| (i % 256) as u8).collect()),
        }),
        Message::PluginUnavailable(PluginUnavailable {
            sha256: "ef".repeat(32),
            reason: "no such plugin".into(),
        }),
    ]
}

fn encode(message: &Message) -> Vec<u8> {
    let mut buf = BytesMut::new();
    FrameCodec::new(MAX_FRAME)
        .encode(message.clone(), &mut buf)
        .unwrap();
    buf.to_vec()
}

/// Bytes that MessagePack and the length prefix give meaning to.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc4, 0xc5, 0xc6, 0xca,
    0xcb, 0xcf, 0xd3, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff,
];

fn mutate(input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    // Most of the time keep the length prefix true to the bytes, so the
    // mutation reaches the MessagePack parser instead of the length check.
    let honest_length = fastrand::u8(0..4) != 0;
    for _ in 0..fastrand::usize(1..=4) {
        let len = input.len().max(1);
        match fastrand::u8(0..8) {
            0 if !input.is_empty() => input[fastrand::usize(..len)] ^= 1 << fastrand::u8(0..8),
            1 if !input.is_empty() => {
                input[fastrand::usize(..len)] = INTERESTING[fastrand::usize(..INTERESTING.len())]
            }
            2 => input.truncate(fastrand::usize(..=input.len())),
            3 => {
                let at = fastrand::usize(..=input.len());
                let other = &corpus[fastrand::usize(..corpus.len())];
                let from = fastrand::usize(..=other.len());
                input.splice(at..at, other[from..].iter().copied());
            }
            4 if input.len() >= 4 => {
                // A lying length prefix: small, huge, or off by a little.
                let real = u32::from_be_bytes(input[..4].try_into().unwrap());
                let fake = match fastrand::u8(0..3) {
                    0 => fastrand::u32(..),
                    1 => real.wrapping_add(fastrand::u32(0..16)).wrapping_sub(8),
                    _ => fastrand::u32(0..64),
                };
                input[..4].copy_from_slice(&fake.to_be_bytes());
            }
            5 => {
                let at = fastrand::usize(..=input.len());
                let n = fastrand::usize(1..32);
                input.splice(at..at, std::iter::repeat_with(|| fastrand::u8(..)).take(n));
            }
            6 if input.len() > 1 => {
                let at = fastrand::usize(..input.len());
                let n = fastrand::usize(1..=(input.len() - at));
                input.drain(at..at + n);
            }
            _ => {
                // A MessagePack container header claiming a huge size.
                let at = fastrand::usize(..=input.len());
                let header = [
                    [0xdd, 0xff, 0xff, 0xff, 0xff],
                    [0xdf, 0x7f, 0xff, 0xff, 0xff],
                    [0xdb, 0xff, 0xff, 0xff, 0xf0],
                ][fastrand::usize(..3)];
                input.splice(at..at, header);
            }
        }
    }
    if honest_length && input.len() >= 4 {
        let len = (input.len() - 4) as u32;
        input[..4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Decode `input` as a receiver would, frame after frame; return the bytes
/// the decoding allocated at its peak and the messages decoded.
fn decode_all(input: &[u8]) -> (usize, u64) {
    let mut buf = BytesMut::from(input);
    let mut codec = FrameCodec::new(MAX_FRAME);
    let base = IN_USE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut decoded = 0;
    while let Ok(Some(message)) = codec.decode_eof(&mut buf) {
        decoded += 1;
        drop(message);
    }
    (PEAK.load(Ordering::Relaxed).saturating_sub(base), decoded)
}

fn save_finding(input: &[u8]) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-findings");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{:016x}.bin", fastrand::u64(..)));
    std::fs::write(&path, input).unwrap();
    path
}

#[test]
fn decoder_survives_mutated_and_random_frames_in_bounded_memory() {
    let secs: u64 = std::env::var("SANDGLASS_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("SANDGLASS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    fastrand::seed(seed);
    let corpus: Vec<Vec<u8>> = seeds().iter().map(encode).collect();
    // The seeds themselves decode to what was encoded.
    for (message, bytes) in seeds().iter().zip(&corpus) {
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = FrameCodec::new(MAX_FRAME).decode(&mut buf).unwrap();
        assert_eq!(decoded.as_ref(), Some(message));
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut cases, mut worst, mut messages) = (0u64, 0usize, 0u64);
    while Instant::now() < deadline {
        for _ in 0..256 {
            let mut input = if fastrand::u8(0..10) == 0 {
                (0..fastrand::usize(0..512))
                    .map(|_| fastrand::u8(..))
                    .collect()
            } else {
                corpus[fastrand::usize(..corpus.len())].clone()
            };
            mutate(&mut input, &corpus);
            let outcome = std::panic::catch_unwind(|| decode_all(&input));
            let peak = match outcome {
                Ok((peak, decoded)) => {
                    messages += decoded;
                    peak
                }
                Err(panic) => {
                    let path = save_finding(&input);
                    eprintln!("decoder panicked on {} (seed {seed})", path.display());
                    std::panic::resume_unwind(panic);
                }
            };
            // Memory in proportion to what was sent, plus what serde may
            // reserve for a claimed length (it caps that at 1 MiB per
            // sequence, and decoding stops at the first that lies).
            let bound = 64 * input.len() + (4 << 20);
            if peak > bound {
                let path = save_finding(&input);
                panic!(
                    "decoding {} bytes allocated {peak} bytes (bound {bound}); input in {} (seed {seed})",
                    input.len(),
                    path.display()
                );
            }
            worst = worst.max(peak);
            cases += 1;
        }
    }
    eprintln!(
        "fuzz: {cases} inputs in {secs} s (seed {seed}), {messages} of them decoded to a message, no panic; largest decoding peak {worst} bytes"
    );
    assert!(cases > 0);
}
