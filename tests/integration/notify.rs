//! Notifications end to end: a real agent runs the misbehave fixture in
//! `sequence` mode (one value a second) past a trigger's threshold and back,
//! a real receiver tells a webhook (a tiny HTTP server here on 127.0.0.1) or
//! a command: one message when it fires, one when it recovers, none in a
//! maintenance window, and a webhook that was down gets what is pending once
//! it is up, across a receiver restart too.

use crate::common::reserved_port;
use crate::fleet_support::{Agent, Receiver, wait_until};
use crate::triggers::{sequence_model, sequence_plugins};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const TOKEN: &str = "token-notify-test";

/// A webhook receiver: answers 200 to every POST and keeps the bodies.
struct Hook {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

type Bodies = Arc<Mutex<Vec<Value>>>;

impl Hook {
    fn start(port: u16, bodies: Bodies) -> Hook {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, &bodies),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Hook {
            stop,
            thread: Some(thread),
        }
    }

    /// Close the port: connections are refused from now on.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Read one request (headers, then Content-Length bytes) and answer 200.
fn answer(mut stream: std::net::TcpStream, bodies: &Bodies) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let body = loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
                break body.to_owned();
            }
        }
    };
    bodies
        .lock()
        .unwrap()
        .push(serde_json::from_str(&body).unwrap());
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
}

/// Host `a` reports `values` (one a second) to a trigger that fires above 90
/// and recovers below 50; `notify` is the `[notify]` part.
fn model(values: &[&str], notify: &str) -> String {
    format!(
        "{}[groups.web]\ntemplates = []\n\
         [hosts.a]\ntoken = \"{TOKEN}\"\ngroups = [\"web\"]\nservices = [\"uptime\", \"seq\"]\n\
         [notify]\ngroup_wait = \"1s\"\n{notify}",
        sequence_model(values, "")
    )
}

/// Up past 90 once, back below 50 for good (within this test's time).
fn once_up() -> Vec<&'static str> {
    let mut values = vec!["10", "95", "85", "40"];
    values.extend(std::iter::repeat_n("10", 40));
    values
}

fn webhook(port: u16) -> String {
    format!(
        "[notify.webhooks.ops]\nurl = \"http://127.0.0.1:{port}/hook\"\ntimeout = \"1s\"\n\
         attempts = 50\nbackoff = \"200ms\"\nmax_backoff = \"1s\"\n"
    )
}

fn receiver_json(receiver: &Receiver, args: &[&str]) -> Vec<Value> {
    let config = receiver.config.to_str().unwrap();
    let all = [args, &["--config", config, "--json"]].concat();
    receiver.json(&all).as_array().unwrap().clone()
}

fn notifications(receiver: &Receiver) -> Vec<Value> {
    receiver_json(receiver, &["notifications"])
}

/// A webhook on a free port and a receiver telling it of host `a`
/// reporting `values`.
fn with_webhook(dir: &Path, values: &[&str]) -> (PathBuf, Bodies, Hook, Receiver) {
    let plugins = sequence_plugins(dir);
    let bodies = Bodies::default();
    let port = reserved_port();
    let hook = Hook::start(port, bodies.clone());
    let receiver = Receiver::start(dir, "127.0.0.1:0", &model(values, &webhook(port)));
    (plugins, bodies, hook, receiver)
}

fn kinds(bodies: &Bodies) -> Vec<String> {
    bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap().to_owned())
        .collect()
}

fn recovered(receiver: &Receiver) -> bool {
    receiver_json(receiver, &["events", "--host", "a"])
        .iter()
        .any(|e| e["service"] == "seq" && e["old"] == "WARN" && e["new"] == "OK")
}

#[test]
fn a_trigger_that_fires_and_recovers_is_one_message_each() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, bodies, _hook, receiver) = with_webhook(dir.path(), &once_up());
    let _agent = Agent::start_with(dir.path(), "a", TOKEN, &[&receiver.address], &plugins, "");
    assert!(
        wait_until(Duration::from_secs(40), || kinds(&bodies).len() >= 2),
        "{:?}\n{}",
        kinds(&bodies),
        receiver.log_text()
    );
    // Give a wrong extra message (one per report, one per change) the time to show.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(kinds(&bodies), ["problem", "recovery"]);
    let problem = bodies.lock().unwrap()[0].clone();
    assert_eq!(problem["host"], "a");
    assert_eq!(problem["service"], "seq");
    assert_eq!(problem["trigger"], "high");
    assert_eq!(problem["event"], "trigger_fired");
    assert_eq!(
        (&problem["old"], &problem["new"]),
        (&"OK".into(), &"WARN".into())
    );
    assert_eq!(problem["severity"], "WARN");
    assert!(
        problem["message"].as_str().unwrap().contains("a value 95"),
        "{problem}"
    );
    assert!(problem["time"].as_str().unwrap().ends_with('Z'));
    // The host's own change came in the same message.
    let events: Vec<&str> = problem["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["trigger_fired", "host_problem"], "{problem}");
    let recovery = bodies.lock().unwrap()[1].clone();
    assert_eq!(recovery["event"], "trigger_recovered");
    let listed = notifications(&receiver);
    assert!(
        listed
            .iter()
            .all(|n| n["state"] == "sent" && n["attempts"] == 1),
        "{listed:#?}"
    );
    let log = receiver.log_text();
    assert_eq!(log.matches("notification problem").count(), 1, "{log}");
    assert_eq!(log.matches("notification recovery").count(), 1, "{log}");
}

#[test]
fn a_host_in_maintenance_tells_no_one_and_an_ended_window_is_listed_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, bodies, _hook, receiver) = with_webhook(dir.path(), &once_up());
    let config = receiver.config.to_str().unwrap();
    let run = |args: &[&str]| receiver.text(&[args, &["--config", config]].concat());
    assert!(
        run(&[
            "maintenance",
            "--group",
            "web",
            "--for",
            "1h",
            "--comment",
            "upgrade"
        ])
        .starts_with("maintenance window #1")
    );
    let windows = receiver_json(&receiver, &["maintenance", "--list"]);
    assert_eq!(windows.len(), 1);
    assert_eq!(windows[0]["group"], "web");
    // The receiver reads the windows every second.
    std::thread::sleep(Duration::from_millis(1500));
    let _agent = Agent::start_with(dir.path(), "a", TOKEN, &[&receiver.address], &plugins, "");
    assert!(
        wait_until(Duration::from_secs(40), || recovered(&receiver)),
        "{}",
        receiver.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(kinds(&bodies).is_empty(), "{:?}", kinds(&bodies));
    let listed = notifications(&receiver);
    assert!(
        !listed.is_empty()
            && listed
                .iter()
                .all(|n| n["state"] == "suppressed" && n["last_error"] == "maintenance #1"),
        "{listed:#?}"
    );
    run(&["maintenance", "--end", "1"]);
    assert!(receiver_json(&receiver, &["maintenance", "--list"]).is_empty());
    // A host that is OK has nothing to acknowledge.
    let out = Command::new(sandglass_tests::binary("receiver"))
        .args(["ack", "--host", "a", "--config", config])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no problem to acknowledge"),
        "{stderr}"
    );
}

#[test]
fn a_webhook_that_was_down_gets_what_is_pending_across_a_receiver_restart() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = sequence_plugins(dir.path());
    let bodies = Bodies::default();
    let port = reserved_port();
    // High from the second value for 14 s, then low.
    let mut values = vec!["10"];
    values.extend(std::iter::repeat_n("95", 14));
    values.extend(std::iter::repeat_n("10", 30));
    let model = model(&values, &webhook(port));
    let mut receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model);
    let _agent = Agent::start_with(dir.path(), "a", TOKEN, &[&receiver.address], &plugins, "");
    let refused = |receiver: &Receiver, kind: &str| {
        notifications(receiver).iter().any(|n| {
            n["kind"] == kind
                && n["state"] == "pending"
                && n["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("cannot connect"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), || refused(&receiver, "problem")),
        "{:#?}\n{}",
        notifications(&receiver),
        receiver.log_text()
    );
    // The webhook comes up: the problem arrives with the next retry.
    let mut hook = Hook::start(port, bodies.clone());
    assert!(wait_until(Duration::from_secs(10), || kinds(&bodies) == ["problem"]));
    hook.stop();
    // Down again when the value comes back; the receiver dies with the
    // recovery still queued.
    assert!(
        wait_until(Duration::from_secs(30), || refused(&receiver, "recovery")),
        "{:#?}\n{}",
        notifications(&receiver),
        receiver.log_text()
    );
    // Restarted on the same address, so the agent (left running) comes
    // back and the host stays OK.
    receiver.kill();
    let _hook = Hook::start(port, bodies.clone());
    let receiver = Receiver::start(dir.path(), &receiver.address, &model);
    assert!(
        wait_until(Duration::from_secs(10), || kinds(&bodies)
            == ["problem", "recovery"]),
        "{:?}\n{}",
        kinds(&bodies),
        receiver.log_text()
    );
    let listed = notifications(&receiver);
    let recovery = listed.iter().find(|n| n["kind"] == "recovery").unwrap();
    assert_eq!(recovery["state"], "sent");
    assert!(recovery["attempts"].as_u64().unwrap() >= 2, "{recovery}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(kinds(&bodies), ["problem", "recovery"], "nothing twice");
}

#[test]
fn a_command_gets_the_message_on_stdin_and_its_exit_status_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = sequence_plugins(dir.path());
    let out = dir.path().join("told.jsonl");
    let notify = format!(
        "[notify.commands.append]\ncommand = [\"/bin/sh\", \"-c\", \"cat >> {}; echo >> {}\"]\n\
         [notify.commands.broken]\ncommand = [\"/bin/sh\", \"-c\", \"exit 3\"]\n",
        out.display(),
        out.display()
    );
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model(&once_up(), &notify));
    let _agent = Agent::start_with(dir.path(), "a", TOKEN, &[&receiver.address], &plugins, "");
    let told = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(40), || told().len() >= 2),
        "{}",
        receiver.log_text()
    );
    let told = told();
    assert_eq!(
        (&told[0]["kind"], &told[1]["kind"]),
        (&"problem".into(), &"recovery".into())
    );
    assert_eq!(told[0]["trigger"], "high");
    // The outcome is recorded once the command has exited.
    let state = |channel: &str| -> Vec<(String, Value)> {
        notifications(&receiver)
            .iter()
            .filter(|n| n["channel"] == channel)
            .map(|n| {
                (
                    n["state"].as_str().unwrap().to_owned(),
                    n["last_error"].clone(),
                )
            })
            .collect()
    };
    let failed = ("failed".to_owned(), Value::from("exit status: 3"));
    assert!(
        wait_until(Duration::from_secs(10), || state("append")
            == [("sent".into(), Value::Null), ("sent".into(), Value::Null)]
            && state("broken") == [failed.clone(), failed.clone()]),
        "{:?} {:?}",
        state("append"),
        state("broken")
    );
    assert!(
        receiver
            .log_text()
            .contains("given up after 1 attempts: exit status: 3")
    );
}
