//! Hostile peers on the network, both ways: hand-made agents that lie to the
//! real receiver (frames, lengths, MessagePack bombs, names, numbers, plugin
//! requests, HTTP requests), and a hand-made receiver that lies to the real
//! agent (its Welcome, Acks, rejections, schedules, plugin chunks, errors).
//! Each side must answer with a clear error, keep serving everyone else,
//! lose nothing it holds, and keep peer text out of its log raw.

use crate::fleet_support::{Receiver, wait_until};
use crate::protocol::{RawAgent, TOKEN, model, uptime_report};
use bytes::BytesMut;
use sandglass_core::report::{Level, MetricKind, Sample};
use sandglass_core::time::now_ms;
use sandglass_protocol::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};
use tokio_util::codec::{Decoder, Encoder};

/// A log line a peer would like to forge, and an escape that would clear
/// the operator's terminal.
const FORGED: &str = "x\n2026-01-01T00:00:00.000000Z  INFO forged: all is well\u{1b}[2J";

/// Neither a forged line nor a raw escape made it into `log`, nor a line
/// that quotes a peer's megabytes.
fn assert_log_clean(log: &str) {
    let forged: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("2026-01-01") || l.contains('\u{1b}'))
        .collect();
    assert!(forged.is_empty(), "forged log lines: {forged:?}");
    if let Some(long) = log.lines().find(|l| l.len() > 16 << 10) {
        panic!("a log line of {} bytes: {}…", long.len(), &long[..300]);
    }
}

/// `{tag: number}` in MessagePack, as a frame: a message `tag`.
fn frame_of(tag: &str, number: u64) -> Vec<u8> {
    let payload =
        rmp_serde::to_vec(&std::collections::BTreeMap::from([(tag, number)])).expect("encodes");
    framed(&payload)
}

/// `payload` behind its length.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// A frame of `message`.
fn encoded(message: Message) -> Vec<u8> {
    let mut buf = BytesMut::new();
    FrameCodec::new(DEFAULT_MAX_FRAME)
        .encode(message, &mut buf)
        .unwrap();
    buf.to_vec()
}

/// The first fields of a Hello for `host` with `token`, up to its plugins.
fn hello_fields(host: &str, token: &str) -> Vec<u8> {
    let mut bytes = vec![0x81, 0xa5];
    bytes.extend_from_slice(b"Hello");
    bytes.push(0x99); // nine fields: one more than a Hello has
    for text in [host, token, "raw", "1.0.0"] {
        rmp_serde::encode::write(&mut bytes, text).unwrap();
    }
    bytes.extend_from_slice(&[0x00, 0x00]); // time_ms, schedule_revision
    bytes
}

/// What the receiver answered to an opening: its first frame, or nothing
/// before it closed the connection.
fn answer(address: &str, preamble: &[u8], bytes: &[u8], close: bool) -> Option<Message> {
    let mut tcp = TcpStream::connect(address).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The receiver may close before it read all of it: that is an answer too.
    let _ = tcp.write_all(preamble).and_then(|()| tcp.write_all(bytes));
    if close {
        let _ = tcp.shutdown(Shutdown::Write);
    }
    let mut received = Vec::new();
    let _ = tcp.read_to_end(&mut received);
    if received.len() < 8 {
        return None;
    }
    assert_eq!(&received[..4], b"SGLS", "the receiver's preamble");
    let mut rest = BytesMut::from(&received[8..]);
    FrameCodec::new(DEFAULT_MAX_FRAME)
        .decode(&mut rest)
        .unwrap_or_else(|e| panic!("the receiver's frame: {e}"))
}

const PREAMBLE: &[u8] = b"SGLS\x00\x01\x00\x01";

/// One hostile opening: what it is, its preamble, the bytes after it,
/// whether it then closes its side, and the error it must get (None: the
/// connection ends unanswered).
type Opening<'a> = (&'a str, &'a [u8], &'a [u8], bool, Option<FaultCode>);

/// Openings that lie in every way before the Hello is accepted: each gets
/// the documented error (or, for a foreign peer, the end of the connection),
/// none takes the receiver down, holds memory for what it claims, or writes
/// its text raw into the log; and a real agent is served after all of them.
#[test]
fn lying_openings_get_their_error_and_the_receiver_serves_the_next_agent() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(
        dir.path(),
        "127.0.0.1:0",
        &model("handshake_timeout = \"3s\""),
    );
    let hello = |host: &str, token: &str| {
        let mut bytes = hello_fields(host, token);
        bytes.extend_from_slice(&[0x90, 0x07, 0xc0]); // plugins, stream, a nil from the future
        framed(&bytes)
    };
    let str_bomb = {
        let mut bytes = vec![0x81, 0xa5];
        bytes.extend_from_slice(b"Hello");
        bytes.extend_from_slice(&[0x98, 0xdb, 0xff, 0xff, 0xff, 0xff, b'x']);
        framed(&bytes)
    };
    let array_bomb = {
        let mut bytes = hello_fields("a", TOKEN);
        bytes.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        framed(&bytes)
    };
    let map_bomb = framed(&[0xdf, 0xff, 0xff, 0xff, 0xff]);
    let deep = {
        let mut bytes = hello_fields("a", TOKEN);
        bytes.extend_from_slice(&[0x90, 0x07]);
        bytes.extend(std::iter::repeat_n(0x91, 60_000));
        bytes.push(0xc0);
        framed(&bytes)
    };
    let long_host = hello(&"h".repeat(60_000), TOKEN);
    let forged_host = hello(FORGED, FORGED);
    let wrong_token = hello("a", "not-the-token");
    let unknown_message = frame_of(FORGED, 1);
    let long_name = frame_of(&"n".repeat(60_000), 1);
    let ack_first = encoded(Message::Ack(Ack { seq: 1 }));
    let truncated = hello("a", TOKEN)[..20].to_vec();
    let over_the_handshake_limit = ((HANDSHAKE_MAX_FRAME + 1) as u32).to_be_bytes();
    use FaultCode::*;
    let cases: Vec<Opening> = vec![
        (
            "a frame of length 0",
            PREAMBLE,
            &[0, 0, 0, 0],
            false,
            Some(Malformed),
        ),
        (
            "a length of 4 GiB",
            PREAMBLE,
            &[0xff; 4],
            false,
            Some(TooLarge),
        ),
        (
            "a length over 64 KiB before the Hello",
            PREAMBLE,
            &over_the_handshake_limit,
            false,
            Some(TooLarge),
        ),
        (
            "bytes that are no MessagePack",
            PREAMBLE,
            &[0, 0, 0, 3, 0xc1, 0xc1, 0xc1],
            false,
            Some(Malformed),
        ),
        (
            "a string claiming 4 GiB",
            PREAMBLE,
            &str_bomb,
            false,
            Some(Malformed),
        ),
        (
            "an array claiming 4 G plugins",
            PREAMBLE,
            &array_bomb,
            false,
            Some(Malformed),
        ),
        (
            "a map claiming 4 G entries",
            PREAMBLE,
            &map_bomb,
            false,
            Some(Malformed),
        ),
        (
            "60,000 nested arrays",
            PREAMBLE,
            &deep,
            false,
            Some(Malformed),
        ),
        (
            "a message named like a log line",
            PREAMBLE,
            &unknown_message,
            false,
            Some(Malformed),
        ),
        (
            "a host id of 60 KB",
            PREAMBLE,
            &long_host,
            false,
            Some(Auth),
        ),
        (
            "a message name of 60 KB",
            PREAMBLE,
            &long_name,
            false,
            Some(Malformed),
        ),
        (
            "control characters in host id and token",
            PREAMBLE,
            &forged_host,
            false,
            Some(Auth),
        ),
        ("a wrong token", PREAMBLE, &wrong_token, false, Some(Auth)),
        (
            "an Ack before the Hello",
            PREAMBLE,
            &ack_first,
            false,
            Some(Protocol),
        ),
        (
            "a Hello cut short",
            PREAMBLE,
            &truncated,
            true,
            Some(Malformed),
        ),
        (
            "protocol version 2",
            b"SGLS\x00\x02\x00\x00",
            &[],
            false,
            Some(Version),
        ),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\n\r\n",
            &[],
            false,
            None,
        ),
        ("a preamble cut short", b"SGLS\x00", &[], true, None),
    ];
    for (what, preamble, bytes, close, expected) in &cases {
        let got = answer(&receiver.address, preamble, bytes, *close);
        let code = match &got {
            Some(Message::Error(f)) => Some(f.code),
            None => None,
            Some(other) => panic!("{what}: answered {other:?}"),
        };
        assert_eq!(code, *expected, "{what}: {got:?}");
    }
    // A flood of wrong tokens is refused one by one, and costs nothing later.
    for _ in 0..200 {
        assert!(matches!(
            answer(&receiver.address, PREAMBLE, &wrong_token, false),
            Some(Message::Error(f)) if f.code == Auth
        ));
    }
    let mut agent = RawAgent::hello(&receiver.address, "a", 0);
    agent.until(0, |m| matches!(m, Message::Welcome(_)).then_some(()));
    agent.send(batch(1, vec![uptime_report(now_ms(), vec![])]));
    agent.until(0, |m| {
        matches!(m, Message::Ack(Ack { seq: 1 })).then_some(())
    });
    assert_log_clean(&receiver.log_text());
}

fn sample(name: &str, value: f64, labels: Vec<(String, String)>) -> Sample {
    Sample {
        name: name.into(),
        value,
        kind: MetricKind::Gauge,
        unit: String::new(),
        labels,
    }
}

fn batch(seq: u64, entries: Vec<Entry>) -> Message {
    Message::Reports(ReportBatch {
        seq,
        entries,
        settled: 0,
    })
}

/// The next answer that is not a Ping (answered), a Pong or a Schedule.
fn next_answer(agent: &mut RawAgent) -> Option<Message> {
    loop {
        match agent.next()? {
            Message::Ping(Probe { nonce, .. }) => agent.send(Message::Pong(Probe {
                nonce,
                time_ms: now_ms(),
            })),
            Message::Pong(_) | Message::Schedule(_) => {}
            other => return Some(other),
        }
    }
}

/// An authenticated agent that lies: values and times no plugin gives,
/// numbers out of order or out of range, huge batches within the frame
/// limit, requests for plugins that do not exist. Each lie gets its
/// documented answer; storable data is stored; and another agent's batch is
/// acknowledged after all of it.
#[test]
fn an_authenticated_agent_that_lies_gets_its_answers_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model(""));
    let mut liar = RawAgent::hello(&receiver.address, "a", 0);
    liar.until(0, |m| matches!(m, Message::Welcome(_)).then_some(()));
    let now = now_ms();
    // Values of every kind, times from the far future, of 0 and of 2^64-1,
    // duplicate names, label text with control characters.
    let odd = vec![
        sample("v", f64::NAN, vec![]),
        sample("v", f64::INFINITY, vec![]),
        sample("v", f64::NEG_INFINITY, vec![]),
        sample("v", -0.0, vec![(FORGED.into(), FORGED.into())]),
    ];
    let entries = vec![
        uptime_report(u64::MAX, odd.clone()),
        uptime_report(0, odd.clone()),
        uptime_report(now + 10 * 365 * 86_400_000, odd),
        Entry::Gap(Gap {
            reports: u64::MAX,
            first_ms: u64::MAX,
            last_ms: 0,
            reason: FORGED.into(),
        }),
    ];
    liar.send(batch(1, entries));
    assert_eq!(next_answer(&mut liar), Some(Message::Ack(Ack { seq: 4 })));
    let latest = now_ms();
    for time in receiver.report_times("a", "uptime") {
        assert!(time <= latest, "a report time {time} after its arrival");
    }
    // Numbers that jump far ahead, then go back: each batch is answered.
    for seq in [1 << 62, 1000, 2] {
        liar.send(batch(seq, vec![uptime_report(now, vec![])]));
        assert_eq!(next_answer(&mut liar), Some(Message::Ack(Ack { seq })));
    }
    // 700,000 labels in one sample, and 250,000 samples in one report,
    // each within the frame limit.
    let labels = (0..700_000)
        .map(|i| (i.to_string(), String::new()))
        .collect();
    liar.send(batch(
        3,
        vec![uptime_report(now, vec![sample("many", 1.0, labels)])],
    ));
    let samples = (0..250_000)
        .map(|i| sample(&format!("m{i}"), 1.0, vec![]))
        .collect();
    liar.send(batch(4, vec![uptime_report(now, samples)]));
    for seq in [3, 4] {
        let answer = next_answer(&mut liar);
        assert!(
            matches!(answer, Some(Message::Ack(Ack { seq: s })) | Some(Message::Rejected(Rejected { last_seq: s, .. })) if s == seq),
            "batch {seq}: {answer:?}"
        );
    }
    // Plugins nobody has, by names that are no hash, at offsets past any end.
    for (sha256, offset) in [
        (FORGED.to_owned(), 0),
        ("ab".repeat(32), u64::MAX),
        ("../../etc/passwd".to_owned(), 0),
        ("x".repeat(60_000), 0),
    ] {
        liar.send(Message::PluginRequest(PluginRequest { sha256, offset }));
        let answer = next_answer(&mut liar);
        assert!(
            matches!(answer, Some(Message::PluginUnavailable(_))),
            "{answer:?}"
        );
    }
    // Another agent is served meanwhile and after.
    let mut other = RawAgent::hello(&receiver.address, "b", 0);
    other.until(0, |m| matches!(m, Message::Welcome(_)).then_some(()));
    other.send(batch(1, vec![uptime_report(now_ms(), vec![])]));
    assert_eq!(next_answer(&mut other), Some(Message::Ack(Ack { seq: 1 })));
    // Numbers the receiver cannot store end the connection with Protocol.
    for (what, bad) in [
        ("number 0", batch(0, vec![uptime_report(now, vec![])])),
        (
            "numbers past 2^63",
            batch(u64::MAX, vec![uptime_report(now, vec![])]),
        ),
        ("no entries", batch(5, vec![])),
    ] {
        let mut agent = RawAgent::hello(&receiver.address, "c", 0);
        agent.until(0, |m| matches!(m, Message::Welcome(_)).then_some(()));
        agent.send(bad);
        let answer = next_answer(&mut agent);
        assert!(
            matches!(&answer, Some(Message::Error(f)) if f.code == FaultCode::Protocol),
            "{what}: {answer:?}"
        );
        assert_eq!(next_answer(&mut agent), None, "{what}: the connection ends");
    }
    assert!(wait_until(Duration::from_secs(10), || receiver
        .log_text()
        .contains("plugin request refused")));
    assert_log_clean(&receiver.log_text());
}

/// A receiver written to lie to the real agent, blocking, one frame at a
/// time.
struct LyingReceiver {
    tcp: TcpStream,
    codec: FrameCodec,
    buf: BytesMut,
    /// Past it the agent counts as gone (its Pings would keep a read going).
    deadline: Instant,
}

impl LyingReceiver {
    /// The agent's next connection, through its Hello.
    fn accept(listener: &std::net::TcpListener) -> LyingReceiver {
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut preamble = [0u8; 8];
        tcp.read_exact(&mut preamble).unwrap();
        tcp.write_all(PREAMBLE).unwrap();
        let mut receiver = LyingReceiver {
            tcp,
            codec: FrameCodec::new(DEFAULT_MAX_FRAME),
            buf: BytesMut::new(),
            deadline: Instant::now() + Duration::from_secs(120),
        };
        assert!(matches!(receiver.next(), Some(Message::Hello(_))));
        receiver
    }

    fn send(&mut self, message: Message) {
        self.tcp.write_all(&encoded(message)).unwrap();
    }

    fn welcome(&mut self, max_frame: u64) {
        self.send(Message::Welcome(Welcome {
            receiver_version: "lying".into(),
            time_ms: now_ms(),
            refresh_ms: 60_000,
            max_frame,
        }));
    }

    /// The agent's next frame; None once it closed the connection (or said
    /// nothing for 30 s, or the session's two minutes are over).
    fn next(&mut self) -> Option<Message> {
        while Instant::now() < self.deadline {
            if let Some(m) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(m);
            }
            let mut chunk = [0u8; 64 << 10];
            match self.tcp.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        None
    }

    /// The agent's next batch (its Pings answered).
    fn batch(&mut self) -> ReportBatch {
        loop {
            match self.next().expect("the agent left") {
                Message::Reports(batch) => return batch,
                Message::Ping(Probe { nonce, .. }) => self.send(Message::Pong(Probe {
                    nonce,
                    time_ms: now_ms(),
                })),
                _ => {}
            }
        }
    }
}

fn scheduled(name: &str, plugin: &str, sha256: Option<&str>) -> ScheduledService {
    ScheduledService {
        name: name.into(),
        plugin: plugin.into(),
        sha256: sha256.map(Into::into),
        interval_ms: 0,
        params: vec![],
        grants: vec![],
        files: vec![],
        limits: ServiceLimits::default(),
    }
}

/// A receiver that acknowledges and refuses numbers the agent never sent,
/// announces a frame limit of 0, schedules plugins by paths and hashes that
/// point out of the plugin directories, and says things meant to forge the
/// agent's log. The agent loses no report: it counts answers only up to what
/// it sent, refuses the broken Welcome with a clear error, reports UNKNOWN
/// for the services it cannot run, and logs the receiver's words escaped.
#[test]
fn a_lying_receiver_makes_the_agent_lose_nothing_and_forge_nothing() {
    crate::common::build_plugins();
    let dir = tempfile::tempdir().unwrap();
    let address = crate::common::reserved_address();
    let listener = std::net::TcpListener::bind(&address).unwrap();
    let mut agent = crate::fleet_support::Agent::start_with(
        dir.path(),
        "h",
        "some-token",
        &[&address],
        &crate::common::root().join("target/plugins"),
        "batch_max = 1\n",
    );
    let mut first = LyingReceiver::accept(&listener);
    first.welcome(DEFAULT_MAX_FRAME as u64);
    first.send(Message::Schedule(Schedule {
        revision: 1,
        services: vec![
            scheduled("up1", "uptime", None),
            scheduled("up2", "uptime", None),
            scheduled("up3", "uptime", None),
            scheduled("escape", "../../../../etc/passwd", None),
            scheduled("pinned", "uptime", Some("../../../../tmp/x")),
            scheduled(FORGED, "uptime", None),
        ],
    }));
    // The window fills (64 batches of one entry, none answered), and more
    // reports wait unsent; then an Ack for every number there is.
    let mut reports = Vec::new();
    let mut window = |receiver: &mut LyingReceiver, mut batches: Vec<ReportBatch>| {
        while batches.len() < 64 {
            batches.push(receiver.batch());
        }
        for entry in batches.iter().flat_map(|b| &b.entries) {
            if let Entry::Report(r) = entry {
                reports.push(r.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(1500));
        (batches[0].seq, batches[63].last_seq())
    };
    let (_, sent) = window(&mut first, vec![]);
    first.send(Message::Ack(Ack { seq: u64::MAX }));
    let next = first.batch();
    assert_eq!(
        next.seq,
        sent + 1,
        "the reports spooled but not sent were dropped by an Ack for them"
    );
    // The same with a refusal of numbers never sent.
    let (from, sent) = window(&mut first, vec![next]);
    first.send(Message::Rejected(Rejected {
        seq: from,
        last_seq: u64::MAX,
        reason: FORGED.into(),
    }));
    assert_eq!(first.batch().seq, sent + 1, "refused beyond what was sent");
    let acked = sent;
    first.send(Message::Error(Fault {
        code: FaultCode::Internal,
        text: FORGED.into(),
    }));
    assert!(
        std::iter::from_fn(|| first.next()).count() < 1000,
        "the agent closes after an Error"
    );
    for (service, why) in [("escape", "may only hold"), ("pinned", "64 hex digits")] {
        let report = reports
            .iter()
            .find(|r| r.service == service)
            .unwrap_or_else(|| panic!("no report of {service}"));
        assert_eq!(report.status.level, Level::Unknown, "{service}");
        assert!(report.status.text.contains(why), "{:?}", report.status.text);
    }
    assert!(reports.iter().all(|r| r.service != FORGED));
    // A Welcome that allows no frame: refused, nothing sent.
    let mut broken = LyingReceiver::accept(&listener);
    broken.welcome(0);
    while let Some(message) = broken.next() {
        assert!(
            !matches!(message, Message::Reports(_)),
            "batches sent to a receiver that takes frames of 0 bytes"
        );
    }
    // An honest receiver at last: the stream goes on from the last number
    // answered, and the refused window is one gap of exactly its reports.
    let mut honest = LyingReceiver::accept(&listener);
    honest.welcome(DEFAULT_MAX_FRAME as u64);
    let batch = honest.batch();
    assert_eq!(batch.seq, acked + 1, "entries lost between the sessions");
    let mut gap = None;
    let mut batch = batch;
    for _ in 0..10_000 {
        honest.send(Message::Ack(Ack {
            seq: batch.last_seq(),
        }));
        gap = batch.entries.iter().find_map(|e| match e {
            Entry::Gap(g) => Some(g.clone()),
            _ => None,
        });
        if gap.is_some() {
            break;
        }
        batch = honest.batch();
    }
    let gap = gap.expect("the refused window's gap");
    assert_eq!(gap.reports, 64, "{gap:?}");
    assert!(wait_until(Duration::from_secs(10), || agent
        .log_text()
        .contains("announces frames of at most 0 bytes")));
    let log = agent.log_text();
    assert!(log.contains("but only"), "{log}");
    agent.stop();
    assert_log_clean(&agent.log_text());
}

/// One raw HTTP exchange on a new connection: the status line and the rest.
fn http_exchange(address: &str, request: &[u8]) -> (String, String) {
    let mut tcp = TcpStream::connect(address).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = tcp.write_all(request);
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (status, rest) = answer.split_once("\r\n").unwrap_or((&answer, ""));
    (status.to_owned(), rest.to_owned())
}

/// Requests at the status page's listener that try to read files beside
/// its assets, overflow its header and address buffers, or get in with
/// broken credentials: each is turned away without a file's bytes, and the
/// listener serves a proper request afterwards.
#[test]
fn hostile_http_requests_are_turned_away_and_the_page_still_serves() {
    const HTTP_TOKEN: &str = "http-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(
        dir.path(),
        "127.0.0.1:0",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\ntoken = \"{HTTP_TOKEN}\"\n{}",
            model("")
        ),
    );
    let http = receiver.http.clone().expect("the http listener");
    let address = http
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let get = |path: &str, headers: &str| {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
        http_exchange(&address, request.as_bytes())
    };
    let bearer = format!("Authorization: Bearer {HTTP_TOKEN}\r\n");
    for path in [
        "/assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/assets/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/assets/../../../../etc/passwd",
        "/assets/app.js%00.css",
        "/hosts/..%2f..%2fetc%2fpasswd",
        "/api/hosts/..%2f..%2f..%2fetc%2fpasswd",
        "//etc/passwd",
    ] {
        let (status, body) = get(path, &bearer);
        assert!(!body.contains("root:"), "{path}: {status}\n{body}");
        assert!(
            !status.contains(" 5"),
            "{path}: a server error: {status}\n{body}"
        );
    }
    let long_path = format!("/api/hosts/{}", "h".repeat(200_000));
    let long_query = format!(
        "/login?{}",
        (0..20_000)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join("&")
    );
    let huge_header = format!("X-Pad: {}\r\n", "p".repeat(1 << 20));
    let many_headers: String = (0..5_000).map(|i| format!("X-{i}: v\r\n")).collect();
    let bad_credentials = [
        format!("Cookie: {}\r\n", "s=".repeat(20_000)),
        "Cookie: sandglass_session=\u{1b}[2J; sandglass_session=../../x\r\n".to_owned(),
        "Authorization: Bearer \u{7f}\u{1b}\r\n".to_owned(),
        format!("Authorization: Bearer {}\r\n", "t".repeat(100_000)),
        "Authorization: Basic Og==\r\n".to_owned(),
    ];
    for (what, path, headers) in [
        ("a 200 KB path", long_path.as_str(), bearer.clone()),
        (
            "20,000 query parameters",
            long_query.as_str(),
            String::new(),
        ),
        ("a 1 MiB header", "/api/hosts", huge_header),
        ("5,000 headers", "/api/hosts", many_headers),
    ] {
        let (status, _) = get(path, &headers);
        assert!(!status.contains(" 5"), "{what}: a server error: {status}");
    }
    for headers in &bad_credentials {
        let (status, body) = get("/api/hosts", headers);
        // 400 for what is no header value at all (control characters).
        assert!(
            status.contains(" 401") || status.contains(" 400"),
            "{headers:?}: {status}\n{body}"
        );
    }
    // Slow loris: a head one byte at a time, and a connection that never
    // says anything. Both are let go (kept, thousands of them would take
    // every descriptor the receiver has, and agents could not connect);
    // the page serves meanwhile.
    let mut trickle = TcpStream::connect(&address).unwrap();
    let mut silent = TcpStream::connect(&address).unwrap();
    for tcp in [&trickle, &silent] {
        tcp.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }
    let head = b"GET /api/hosts HTTP/1.1\r\nHost: x\r\nX-Slow: ".repeat(100);
    let closed = |tcp: &mut TcpStream| match tcp.read(&mut [0u8; 256]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    let (mut trickle_closed, mut silent_closed) = (false, false);
    for byte in head.iter().take(120) {
        trickle_closed =
            trickle_closed || trickle.write_all(&[*byte]).is_err() || closed(&mut trickle);
        silent_closed = silent_closed || closed(&mut silent);
        if trickle_closed && silent_closed {
            break;
        }
    }
    assert!(
        trickle_closed,
        "a head sent a byte every half second was kept for a minute"
    );
    assert!(silent_closed, "a silent connection was kept for a minute");
    let (status, body) = get("/api/hosts", &bearer);
    assert!(status.contains(" 200"), "{status}\n{body}");
    assert_log_clean(&receiver.log_text());
}

/// A receiver that sends frames without pause (here Pongs nobody asked for)
/// must not keep the agent from its own work: its reports are still spooled
/// and sent while the flood goes on.
#[test]
fn a_receiver_flooding_frames_does_not_hold_up_the_agents_reports() {
    crate::common::build_plugins();
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let _agent = crate::fleet_support::Agent::start_with(
        dir.path(),
        "h",
        "some-token",
        &[&address],
        &crate::common::root().join("target/plugins"),
        "",
    );
    let mut receiver = LyingReceiver::accept(&listener);
    receiver.welcome(DEFAULT_MAX_FRAME as u64);
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood = {
        let (mut tcp, flooding) = (receiver.tcp.try_clone().unwrap(), flooding.clone());
        let pong = encoded(Message::Pong(Probe {
            nonce: 7,
            time_ms: now_ms(),
        }));
        let burst: Vec<u8> = pong.repeat((1 << 20) / pong.len());
        // The schedule goes in the middle of the flood: the agent has
        // nothing to report before it.
        let mut schedule_then_burst = burst.clone();
        schedule_then_burst.extend(encoded(Message::Schedule(Schedule {
            revision: 1,
            services: vec![scheduled("up", "uptime", None)],
        })));
        schedule_then_burst.extend(&burst);
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(30);
            let mut next = &schedule_then_burst;
            while flooding.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < until {
                if tcp.write_all(next).is_err() {
                    break;
                }
                next = &burst;
            }
            // Still running when the batch came: the batch came during the flood.
            flooding.swap(false, std::sync::atomic::Ordering::SeqCst)
        })
    };
    // No Ping is answered meanwhile: the flood's frames keep the link alive,
    // and a second writer on the socket would interleave with it.
    let batch = std::iter::from_fn(|| receiver.next())
        .find_map(|m| match m {
            Message::Reports(batch) => Some(batch),
            _ => None,
        })
        .expect("the agent sent no batch");
    let during_flood = flooding.swap(false, std::sync::atomic::Ordering::SeqCst);
    flood.join().unwrap();
    assert!(
        during_flood,
        "the agent's first batch came only after the flood ended"
    );
    assert!(
        batch
            .entries
            .iter()
            .any(|e| matches!(e, Entry::Report(r) if r.service == "up")),
        "{batch:?}"
    );
}
