//! `receiver query` as people and scripts use it: reports sent through the
//! protocol to a real receiver, read back by the real `receiver query`
//! binary: ISO-8601 times (local, `--utc`, `--epoch`), one service across
//! hosts, label filters, `--step` buckets, unknown names refused with exit 1,
//! and a reader that closes the pipe early (`| head -1`).

use crate::fleet_support::Receiver;
use crate::protocol::{RawAgent, model, uptime_report};
use sandglass_core::report::{MetricKind, Sample};
use sandglass_core::time::now_ms;
use sandglass_protocol::{Entry, Message, ReportBatch};
use sandglass_receiver::query::when::utc;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};

/// A zone without daylight saving, one hour east of UTC, written as a
/// POSIX TZ rule so that it needs no zone database.
const TZ: &str = "XST-1";

fn load(cpu: &str, value: f64) -> Sample {
    Sample {
        name: "load".into(),
        value,
        kind: MetricKind::Gauge,
        unit: String::new(),
        labels: vec![("cpu".into(), cpu.into())],
    }
}

/// Send `entries` as host `host` and wait until they are stored.
fn send(address: &str, host: &str, entries: Vec<Entry>) {
    let mut agent = RawAgent::hello(address, host, 0);
    agent.until(0, |m| matches!(m, Message::Welcome(_)).then_some(()));
    agent.send(Message::Reports(ReportBatch {
        seq: 1,
        entries,
        settled: 0,
    }));
    agent.until(0, |m| match m {
        Message::Ack(_) => Some(()),
        Message::Rejected(r) => panic!("rejected: {r:?}"),
        _ => None,
    });
}

/// Hosts a and b report at `base` + 0, 10, ..., 70 s: load of cpu0 is the
/// step number (plus 100 on b), of cpu1 that plus 0.5. Host c reports 5000
/// times, enough output to fill a pipe.
fn fleet(dir: &std::path::Path) -> (Receiver, u64) {
    let receiver = Receiver::start(dir, "127.0.0.1:0", &model(""));
    let base = (now_ms() - 20 * 60_000) / 60_000 * 60_000;
    for (host, offset) in [("a", 0.0), ("b", 100.0)] {
        let entries = (0..8u64)
            .map(|k| {
                let v = k as f64 + offset;
                uptime_report(
                    base + k * 10_000,
                    vec![load("cpu0", v), load("cpu1", v + 0.5)],
                )
            })
            .collect();
        send(&receiver.address, host, entries);
    }
    let many = (0..5000u64)
        .map(|i| uptime_report(base - 30 * 60_000 + i * 100, vec![load("cpu0", i as f64)]))
        .collect();
    send(&receiver.address, "c", many);
    (receiver, base)
}

fn query(receiver: &Receiver, args: &[&str]) -> Output {
    Command::new(sandglass_tests::binary("receiver"))
        .args(["query", "--config", receiver.config.to_str().unwrap()])
        .args(args)
        .env("TZ", TZ)
        .output()
        .unwrap()
}

/// stdout of a query that must succeed, as lines.
fn lines(receiver: &Receiver, args: &[&str]) -> Vec<String> {
    let out = query(receiver, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "query {args:?}: {stderr}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(Into::into)
        .collect()
}

#[test]
fn query_prints_times_for_people_and_reads_across_hosts_labels_and_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, base) = fleet(dir.path());
    let a_cpu0 = ["--host", "a", "--metric", "load", "--label", "cpu=cpu0"];

    // Local time with its offset, UTC, Unix ms.
    let local = utc(base + 3_600_000).replace('Z', "+01:00");
    let first = &lines(&receiver, &a_cpu0)[0];
    assert_eq!(*first, format!("{local}  uptime  load{{cpu=\"cpu0\"}} 0"));
    let first = &lines(&receiver, &[&a_cpu0[..], &["--utc"]].concat())[0];
    assert!(
        first.starts_with(&format!("{}  uptime", utc(base))),
        "{first}"
    );
    let epoch = lines(&receiver, &[&a_cpu0[..], &["--epoch"]].concat());
    assert_eq!(epoch.len(), 8);
    assert!(epoch[7].starts_with(&format!("{}  uptime", base + 70_000)));

    // No --host: one service across hosts, with a host column; --label.
    let across = lines(
        &receiver,
        &[
            "--service",
            "uptime",
            "--label",
            "cpu=cpu1",
            "--since",
            "1d",
            "--epoch",
        ],
    );
    assert_eq!(across.len(), 16, "{across:#?}");
    assert_eq!(
        across[0],
        format!("{base}  a  uptime  load{{cpu=\"cpu1\"}} 0.5")
    );
    assert_eq!(
        across[1],
        format!("{base}  b  uptime  load{{cpu=\"cpu1\"}} 100.5")
    );

    // --step: one point per minute and series; JSON keeps time_ms and adds
    // an ISO time.
    let out = query(
        &receiver,
        &[
            &a_cpu0[..],
            &["--step", "1m", "--agg", "max", "--json", "--utc"],
        ]
        .concat(),
    );
    assert!(out.status.success());
    let points: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary: Vec<(u64, String, f64, u64)> = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let time = p["time"].as_str().unwrap().to_owned();
            let value = p["value"].as_f64().unwrap();
            (
                p["time_ms"].as_u64().unwrap(),
                time,
                value,
                p["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (base, utc(base), 5.0, 6),
            (base + 60_000, utc(base + 60_000), 7.0, 2)
        ]
    );
    assert_eq!(points[0]["host"], "a");

    // An absolute --since and --until, and a known series without data in
    // the range: nothing on stdout, a note on stderr, exit 0.
    let (since, until) = (utc(base + 10_000), utc(base + 30_000));
    let two = lines(
        &receiver,
        &[&a_cpu0[..], &["--since", &since, "--until", &until]].concat(),
    );
    assert_eq!(two.len(), 2, "{two:#?}");
    let out = query(
        &receiver,
        &["--host", "a", "--metric", "load", "--since", "1m"],
    );
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.starts_with("no samples between "), "{note}");
    assert!(note.contains("+01:00 and "), "{note}");
}

#[test]
fn unknown_names_exit_1_naming_them_and_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, _) = fleet(dir.path());
    let refused = |args: &[&str]| {
        let out = query(&receiver, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty());
        String::from_utf8(out.stderr).unwrap()
    };
    let text = refused(&["--host", "nosuch"]);
    assert!(text.contains("no host \"nosuch\""), "{text}");
    assert!(text.contains("hosts: a, b, c"), "{text}");
    let text = refused(&["--host", "a", "--metric", "lod"]);
    assert!(text.contains("no metric \"lod\" on host \"a\""), "{text}");
    assert!(text.contains("did you mean load?"), "{text}");
    let text = refused(&["--service", "uptim"]);
    assert!(
        text.contains("no service \"uptim\" on any host; did you mean uptime?"),
        "{text}"
    );

    // `receiver query ... | head -1`: more output than a pipe holds, and
    // the reader goes away after one line.
    let mut child = Command::new(sandglass_tests::binary("receiver"))
        .args(["query", "--config", receiver.config.to_str().unwrap()])
        .args(["--host", "c", "--since", "1h"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("load{cpu=\"cpu0\"} 0"), "{line}");
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!((status.code(), stderr.as_str()), (Some(0), ""));
}
