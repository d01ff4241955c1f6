//! The protocol as docs/protocol.md specifies it, spoken by a hand-written
//! agent against the real receiver: rejected batches leave the connection
//! open, the receiver measures an agent's clock from round trips, a full
//! receiver lets an agent replace its own stale connection, and text from a
//! peer cannot forge a log line.

use crate::fleet_support::{Receiver, wait_until};
use bytes::BytesMut;
use sandglass_core::report::{Cost, MetricKind, Report, Sample, Status};
use sandglass_core::time::now_ms;
use sandglass_protocol::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tokio_util::codec::{Decoder, Encoder};

pub const TOKEN: &str = "protocol-token-0123";

pub fn model(settings: &str) -> String {
    format!(
        r#"{settings}
[services.uptime]
plugin = "uptime"
interval = "1s"
[hosts.a]
token = "{TOKEN}"
services = ["uptime"]
[hosts.b]
token = "{TOKEN}"
services = ["uptime"]
[hosts.c]
token = "{TOKEN}"
services = ["uptime"]
"#
    )
}

/// An agent written from docs/protocol.md, blocking, one frame at a time.
pub struct RawAgent {
    tcp: TcpStream,
    codec: FrameCodec,
    buf: BytesMut,
}

impl RawAgent {
    /// Connect and send the preamble and a Hello for `host` taken now
    /// shifted by `clock_ms`.
    pub fn hello(address: &str, host: &str, clock_ms: i64) -> RawAgent {
        let mut tcp = TcpStream::connect(address).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        tcp.write_all(b"SGLS\x00\x01\x00\x00").unwrap();
        let mut agent = RawAgent {
            tcp,
            codec: FrameCodec::new(DEFAULT_MAX_FRAME),
            buf: BytesMut::new(),
        };
        agent.send(Message::Hello(Hello {
            host_id: host.into(),
            token: TOKEN.into(),
            agent_version: "raw".into(),
            abi_version: "1.0.0".into(),
            time_ms: now_ms().saturating_add_signed(clock_ms),
            schedule_revision: 0,
            plugins: vec![],
            stream: 42,
        }));
        let mut preamble = [0u8; 8];
        agent.tcp.read_exact(&mut preamble).unwrap();
        assert_eq!(&preamble[..4], b"SGLS");
        agent
    }

    pub fn send(&mut self, message: Message) {
        let mut frame = BytesMut::new();
        self.codec.encode(message, &mut frame).unwrap();
        self.tcp.write_all(&frame).unwrap();
    }

    /// The next message, or None when the receiver closed the connection.
    pub fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(m);
            }
            let mut chunk = [0u8; 64 << 10];
            match self.tcp.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Messages until one `pick` takes (answering the receiver's Pings with
    /// our clock shifted by `clock_ms`).
    pub fn until<T>(&mut self, clock_ms: i64, mut pick: impl FnMut(&Message) -> Option<T>) -> T {
        loop {
            let message = self.next().expect("the receiver closed the connection");
            if let Message::Ping(Probe { nonce, .. }) = message {
                self.send(Message::Pong(Probe {
                    nonce,
                    time_ms: now_ms().saturating_add_signed(clock_ms),
                }));
                continue;
            }
            if let Some(t) = pick(&message) {
                return t;
            }
        }
    }
}

/// A report of the uptime service carrying `samples`, OK "fine".
pub fn uptime_report(time_ms: u64, samples: Vec<Sample>) -> Entry {
    Entry::Report(Report {
        service: "uptime".into(),
        plugin: "uptime".into(),
        time_ms,
        status: Status {
            level: sandglass_core::report::Level::Ok,
            text: "fine".into(),
        },
        samples,
        cost: Cost::default(),
    })
}

fn report(time_ms: u64, text: &str) -> Entry {
    let uptime = Sample {
        name: "uptime_seconds".into(),
        value: 1.0,
        kind: MetricKind::Gauge,
        unit: "seconds".into(),
        labels: vec![],
    };
    let mut entry = uptime_report(time_ms, vec![uptime]);
    if let Entry::Report(report) = &mut entry {
        report.status.text = text.into();
    }
    entry
}

fn batch(seq: u64, entries: Vec<Entry>) -> Message {
    Message::Reports(ReportBatch {
        seq,
        entries,
        settled: seq - 1,
    })
}

#[test]
fn a_rejected_batch_leaves_the_connection_open_and_later_batches_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model(""));
    let mut agent = RawAgent::hello(&receiver.address, "a", 0);
    let max_frame = agent.until(0, |m| match m {
        Message::Welcome(w) => Some(w.max_frame),
        _ => None,
    });
    assert_eq!(
        max_frame, DEFAULT_MAX_FRAME as u64,
        "Welcome announces max_frame"
    );
    let now = now_ms();
    // More entries than a batch may hold: rejected, by number range.
    agent.send(batch(1, vec![report(now, "too many"); 10_001]));
    let rejected = agent.until(0, |m| match m {
        Message::Rejected(r) => Some(r.clone()),
        Message::Ack(a) => panic!("acked a batch that cannot be stored: {a:?}"),
        _ => None,
    });
    assert_eq!((rejected.seq, rejected.last_seq), (1, 10_001));
    assert!(
        rejected.reason.contains("10001 entries"),
        "{}",
        rejected.reason
    );
    // The connection goes on: the next batch is stored and acknowledged.
    agent.send(batch(10_002, vec![report(now, "after the rejected one")]));
    let acked = agent.until(0, |m| match m {
        Message::Ack(a) => Some(a.seq),
        _ => None,
    });
    assert_eq!(acked, 10_002);
    assert_eq!(receiver.report_times("a", "uptime").len(), 1);
}

/// The stored time of the report `agent` sends now, taken `age_ms` ago on
/// an agent clock `clock_ms` off.
fn stored_time(
    receiver: &Receiver,
    agent: &mut RawAgent,
    seq: u64,
    clock_ms: i64,
    age_ms: u64,
) -> (u64, u64) {
    let taken = now_ms() - age_ms;
    agent.send(batch(
        seq,
        vec![report(taken.saturating_add_signed(clock_ms), "timed")],
    ));
    agent.until(clock_ms, |m| matches!(m, Message::Ack(_)).then_some(()));
    let times = receiver.report_times("b", "uptime");
    (*times.last().unwrap(), taken)
}

#[test]
fn the_agent_clock_is_measured_by_round_trips_not_by_a_late_hello_and_a_step_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model(""));
    // The Hello was stamped 30 s before it went out (a receiver that hung in
    // its preamble); the agent's clock is in fact right.
    let mut agent = RawAgent::hello(&receiver.address, "b", -30_000);
    agent.until(0, |m| matches!(m, Message::Welcome(_)).then_some(()));
    // Our Ping's Pong comes after the receiver's first Ping, which `until`
    // answers: the receiver has measured the offset by then.
    agent.send(Message::Ping(Probe {
        nonce: 7,
        time_ms: 0,
    }));
    agent.until(0, |m| {
        matches!(m, Message::Pong(Probe { nonce: 7, .. })).then_some(())
    });
    let (stored, taken) = stored_time(&receiver, &mut agent, 1, 0, 20_000);
    assert!(
        stored.abs_diff(taken) < 2_000,
        "a report taken at {taken} stored at {stored}: the late Hello was taken for skew"
    );
    // The agent's clock steps an hour back while connected; the receiver's
    // next Ping (every 10 s) measures it.
    const BEHIND: i64 = -3_600_000;
    loop {
        match agent.next().expect("connected") {
            Message::Ping(Probe { nonce, .. }) => {
                agent.send(Message::Pong(Probe {
                    nonce,
                    time_ms: now_ms().saturating_add_signed(BEHIND),
                }));
                break;
            }
            _ => continue,
        }
    }
    agent.send(Message::Ping(Probe {
        nonce: 8,
        time_ms: 0,
    }));
    agent.until(BEHIND, |m| {
        matches!(m, Message::Pong(Probe { nonce: 8, .. })).then_some(())
    });
    let (stored, taken) = stored_time(&receiver, &mut agent, 2, BEHIND, 0);
    assert!(
        stored.abs_diff(taken) < 2_000,
        "a report taken at {taken} (an hour behind on the agent) stored at {stored}"
    );
}

#[test]
fn at_max_connections_an_agent_replaces_its_stale_connection_and_others_hear_busy() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(
        dir.path(),
        "127.0.0.1:0",
        &model("max_connections = 2\nmax_handshakes = 1\n"),
    );
    let welcomed = |agent: &mut RawAgent| {
        agent.until(0, |m| match m {
            Message::Welcome(_) => Some(true),
            Message::Error(f) if f.code == FaultCode::Busy => Some(false),
            _ => None,
        })
    };
    let mut stale = RawAgent::hello(&receiver.address, "a", 0);
    assert!(welcomed(&mut stale));
    let mut other = RawAgent::hello(&receiver.address, "b", 0);
    assert!(welcomed(&mut other));
    // Full. Host a's agent comes back (its old connection is half dead).
    let mut again = RawAgent::hello(&receiver.address, "a", 0);
    assert!(welcomed(&mut again), "replacing its own connection");
    let replaced = stale.until(0, |m| match m {
        Message::Error(f) => Some(f.code),
        _ => None,
    });
    assert_eq!(replaced, FaultCode::Replaced);
    // A third host finds no room.
    let mut third = RawAgent::hello(&receiver.address, "c", 0);
    assert!(!welcomed(&mut third), "busy");
}

#[test]
fn control_characters_from_a_peer_cannot_forge_a_log_line_or_a_status_line() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model(""));
    let forged = "x\n2026-01-01T00:00:00.000000Z  INFO forged: all is well\u{1b}[2J";
    // A refused host id goes to the log.
    let mut refused = RawAgent::hello(&receiver.address, forged, 0);
    assert!(matches!(refused.next(), Some(Message::Error(f)) if f.code == FaultCode::Auth));
    // A status text goes to `receiver status`.
    let mut agent = RawAgent::hello(&receiver.address, "c", 0);
    agent.until(0, |m| matches!(m, Message::Welcome(_)).then_some(()));
    agent.send(batch(1, vec![report(now_ms(), forged)]));
    agent.until(0, |m| matches!(m, Message::Ack(_)).then_some(()));
    assert!(wait_until(Duration::from_secs(10), || {
        receiver.log_text().contains("not known to this receiver")
    }));
    let log = receiver.log_text();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01")),
        "a forged log line: {log}"
    );
    assert!(!log.contains('\u{1b}'), "an escape sequence in the log");
    let output = std::process::Command::new(sandglass_tests::binary("receiver"))
        .args(["status", "--config", receiver.config.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("x\\n2026-01-01"), "{table}");
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "{table:?}"
    );
    assert!(
        !table.lines().any(|l| l.starts_with("2026-01-01")),
        "{table}"
    );
    // JSON keeps the exact text.
    let status = receiver.status();
    let hosts = status.as_array().unwrap();
    let c = hosts.iter().find(|h| h["name"] == "c").unwrap();
    assert_eq!(c["services"][0]["text"], forged);
}
