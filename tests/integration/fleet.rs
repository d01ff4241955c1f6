//! One receiver and several agents, all real processes on 127.0.0.1, with
//! the real core plugins: schedules, cadence, liveness, reload, refusals.

use crate::common::reserved_address;
use crate::fleet_support::{Agent, Receiver, sorted_gaps, wait_until};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const TOKEN_A: &str = "token-aaaaaaaa";
const TOKEN_B: &str = "token-bbbbbbbb";
const TOKEN_C: &str = "token-cccccccc";

/// Three hosts reaching their services by different paths of the model.
fn fleet_model(uptime_interval: &str) -> String {
    format!(
        r#"
[services.uptime]
plugin = "uptime"
interval = "{uptime_interval}"
[services.loadavg]
plugin = "loadavg"
interval = "2s"
[services.memory]
plugin = "memory"
interval = "1s"
[templates.base]
services = ["uptime", "loadavg"]
[templates.mem]
services = ["memory"]
[groups.g1]
templates = ["base"]
[hosts.a]
token = "{TOKEN_A}"
groups = ["g1"]
[hosts.b]
token = "{TOKEN_B}"
templates = ["base", "mem"]
[hosts.c]
token = "{TOKEN_C}"
groups = ["g1"]
services = ["memory"]
"#
    )
}

fn median(gaps: &[u64]) -> u64 {
    gaps[gaps.len() / 2]
}

#[test]
fn three_agents_report_at_their_cadence_and_liveness_follows_them() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &fleet_model("1s"));
    let _a = Agent::start(dir.path(), "a", TOKEN_A, &receiver.address);
    let _b = Agent::start(dir.path(), "b", TOKEN_B, &receiver.address);
    let mut c = Agent::start(dir.path(), "c", TOKEN_C, &receiver.address);
    assert!(
        wait_until(Duration::from_secs(20), || ["a", "b", "c"]
            .iter()
            .all(|h| receiver.host_status(h) == "OK")),
        "all hosts OK: {:#}\n{}\nagent c: {}",
        receiver.status(),
        receiver.log_text(),
        c.log_text()
    );
    // Enough reports of every host to judge the cadence (on a loaded
    // machine the three agents do not start together).
    assert!(wait_until(Duration::from_secs(30), || ["a", "b", "c"]
        .iter()
        .all(|h| receiver.report_times(h, "loadavg").len() >= 5)));
    for host in ["a", "b", "c"] {
        let uptime = sorted_gaps(&receiver.report_times(host, "uptime"));
        assert!(
            (800..=1200).contains(&median(&uptime)),
            "{host} uptime every ~1s: {uptime:?}"
        );
        let loadavg = sorted_gaps(&receiver.report_times(host, "loadavg"));
        assert!(
            (1800..=2200).contains(&median(&loadavg)),
            "{host} loadavg every ~2s: {loadavg:?}"
        );
    }
    let refused = receiver.query_refused(&["--host", "a", "--service", "memory"]);
    assert!(
        refused.contains("no service \"memory\" on host \"a\""),
        "a does not run memory: {refused}"
    );
    assert!(!receiver.report_times("b", "memory").is_empty());
    assert!(!receiver.report_times("c", "memory").is_empty());

    // c goes away: UNREACHABLE after interval (1s) + tolerance (2s), with slack.
    c.stop();
    assert!(
        wait_until(Duration::from_secs(10), || receiver.host_status("c")
            == "UNREACHABLE"),
        "{:#}",
        receiver.status()
    );
    let status = receiver.status();
    let c_view = status
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "c")
        .unwrap();
    assert!(
        c_view["reason"]
            .as_str()
            .unwrap()
            .contains("liveness service uptime"),
        "{c_view:#}"
    );
    assert_eq!(receiver.host_status("a"), "OK");
    assert_eq!(receiver.host_status("b"), "OK");
    // c comes back.
    let _c = Agent::start(dir.path(), "c", TOKEN_C, &receiver.address);
    assert!(
        wait_until(Duration::from_secs(15), || receiver.host_status("c")
            == "OK"),
        "{:#}",
        receiver.status()
    );
}

#[test]
fn an_edited_interval_reaches_the_running_agent() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &fleet_model("2s"));
    let agent = Agent::start(dir.path(), "a", TOKEN_A, &receiver.address);
    assert!(wait_until(Duration::from_secs(20), || receiver
        .report_times("a", "uptime")
        .len()
        >= 4));
    let before = sorted_gaps(&receiver.report_times("a", "uptime"));
    assert!((1800..=2200).contains(&median(&before)), "{before:?}");
    // Edit the file in place; the receiver notices by itself.
    let text = std::fs::read_to_string(&receiver.config).unwrap();
    std::fs::write(
        &receiver.config,
        text.replacen("interval = \"2s\"", "interval = \"500ms\"", 1),
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log_text()
            .matches("schedule applied")
            .count()
            >= 2),
        "agent log: {}",
        agent.log_text()
    );
    let changed_at = *receiver.report_times("a", "uptime").last().unwrap();
    assert!(wait_until(Duration::from_secs(20), || receiver
        .report_times("a", "uptime")
        .iter()
        .filter(|t| **t > changed_at)
        .count()
        >= 6));
    let after: Vec<u64> = receiver
        .report_times("a", "uptime")
        .into_iter()
        .filter(|t| *t > changed_at)
        .collect();
    let gaps = sorted_gaps(&after);
    assert!(
        (400..=650).contains(&median(&gaps)),
        "every ~500ms now: {gaps:?}"
    );
    assert!(receiver.log_text().contains("configuration reloaded"));
}

#[test]
fn a_wrong_token_is_refused_on_both_sides_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &fleet_model("1s"));
    let agent = Agent::start(dir.path(), "a", "not-the-token", &receiver.address);
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log_text()
            .contains("wrong token for host a")),
        "agent log: {}",
        agent.log_text()
    );
    assert!(
        receiver.log_text().contains("wrong token for host a"),
        "{}",
        receiver.log_text()
    );
    assert!(
        !receiver.log_text().contains("not-the-token"),
        "tokens never reach a log"
    );
    assert!(
        !agent.log_text().contains("not-the-token"),
        "tokens never reach a log"
    );
    assert!(receiver.report_times("a", "uptime").is_empty());
    // Never up: PENDING, or UNREACHABLE once its first reports are overdue
    // (a loaded machine takes that long to get here).
    let status = receiver.host_status("a");
    assert!(status == "PENDING" || status == "UNREACHABLE", "{status}");
}

/// Read what the receiver answers to raw bytes: its preamble, then frames.
fn raw_exchange(address: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn malformed_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &fleet_model("1s"));
    let _agent = Agent::start(dir.path(), "a", TOKEN_A, &receiver.address);
    assert!(wait_until(Duration::from_secs(20), || receiver
        .host_status("a")
        == "OK"));
    let preamble = b"SGLS\x00\x01\x00\x00";
    // Garbage in a frame: an Error frame naming it, then the connection closes.
    let mut garbage = preamble.to_vec();
    garbage.extend_from_slice(&[0, 0, 0, 4, 0xc1, 0xc1, 0xc1, 0xc1]);
    let answer = raw_exchange(&receiver.address, &garbage);
    // The receiver answers this 1.0 peer with its own preamble (1.1).
    assert_eq!(&answer[..8], b"SGLS\x00\x01\x00\x01");
    let text = String::from_utf8_lossy(&answer[8..]);
    assert!(text.contains("Malformed"), "{text}");
    // A length prefix over the handshake limit: refused from the header.
    let mut huge = preamble.to_vec();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    let text = String::from_utf8_lossy(&raw_exchange(&receiver.address, &huge)).into_owned();
    assert!(text.contains("TooLarge"), "{text}");
    // Another protocol version: told so.
    let text = String::from_utf8_lossy(&raw_exchange(&receiver.address, b"SGLS\x00\x09\x00\x00"))
        .into_owned();
    assert!(text.contains("protocol version 9"), "{text}");
    // Not Sandglass at all: closed without a word.
    assert!(raw_exchange(&receiver.address, b"GET / HTTP/1.1\r\n\r\n").is_empty());
    // The real agent never noticed.
    let before = receiver.report_times("a", "uptime").len();
    assert!(wait_until(Duration::from_secs(10), || receiver
        .report_times("a", "uptime")
        .len()
        >= before + 2));
    assert_eq!(receiver.host_status("a"), "OK");
}

#[test]
fn missing_and_mispinned_plugins_report_unknown_and_the_cached_schedule_runs_without_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let model = format!(
        r#"
[services.uptime]
plugin = "uptime"
interval = "1s"
[services.cpu]
plugin = "cpu"
interval = "1s"
[services.ghost]
plugin = "ghost"
interval = "1s"
sha256 = "{zeros}"
[services.pinned]
plugin = "loadavg"
interval = "1s"
sha256 = "{zeros}"
[hosts.a]
token = "{TOKEN_A}"
services = ["uptime", "cpu", "ghost", "pinned"]
"#,
        zeros = "0".repeat(64)
    );
    // Started again on this address.
    let address = reserved_address();
    let mut receiver = Receiver::start(dir.path(), &address, &model);
    let mut agent = Agent::start(dir.path(), "a", TOKEN_A, &address);
    let service = |name: &str| {
        let status = receiver.status();
        status[0]["services"]
            .as_array()
            .and_then(|services| services.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_default()
    };
    assert!(wait_until(
        Duration::from_secs(20),
        || service("ghost")["level"] == "UNKNOWN" && service("pinned")["level"] == "UNKNOWN"
    ));
    let ghost = service("ghost")["text"].as_str().unwrap().to_owned();
    assert!(
        ghost.contains(&format!(
            "plugin ghost is not installed (expected sha256 {})",
            "0".repeat(64)
        )),
        "{ghost}"
    );
    let pinned = service("pinned")["text"].as_str().unwrap().to_owned();
    // Another build in plugin_dir: the pinned one is asked of the
    // receiver, which has none.
    assert!(
        pinned.contains("plugin_dir does not have that build"),
        "{pinned}"
    );

    // Stop both; the agent alone starts from its cached schedule.
    assert!(agent.stop().success(), "agent exits cleanly on SIGTERM");
    receiver.stop();
    // cpu keeps its counters in state: the state's return shows a run.
    let states = agent.state_dir.join("state");
    for slot in 0..2 {
        let _ = std::fs::remove_file(states.join(format!("cpu.state{slot}")));
    }
    let seen = receiver.report_times("a", "uptime").len();
    let _agent = Agent::start(dir.path(), "a", TOKEN_A, &address);
    assert!(
        wait_until(Duration::from_secs(10), || {
            sandglass_agent::state_store::peek(&states, "cpu").is_some()
        }),
        "cpu ran from the cached schedule"
    );
    // The receiver comes back on the same address: what was collected
    // meanwhile arrives.
    std::thread::sleep(Duration::from_secs(2));
    let receiver = Receiver::start(dir.path(), &address, &model);
    assert!(
        wait_until(Duration::from_secs(15), || receiver
            .report_times("a", "uptime")
            .len()
            >= seen + 3),
        "{}",
        receiver.log_text()
    );
}

#[test]
fn slow_plugins_do_not_hold_up_the_other_services_of_their_host() {
    // A host's services fire together and run back to back on shared
    // workers; two of them spin or sleep to their 1.5 s deadline every
    // second. The six good ones must still report every second, OK, none
    // waiting behind the slow ones (in whatever order the tick queues them).
    let dir = tempfile::tempdir().unwrap();
    let plugins = crate::common::plugin_dir(dir.path(), &["uptime", "memory", "loadavg"]);
    let good: Vec<String> = ["uptime", "memory", "loadavg"]
        .iter()
        .flat_map(|p| [format!("{p}-1"), format!("{p}-2")])
        .collect();
    let mut model: String = good
        .iter()
        .map(|name| {
            let plugin = name.split('-').next().unwrap();
            format!("[services.{name}]\nplugin = \"{plugin}\"\ninterval = \"1s\"\n")
        })
        .collect();
    let all = [good.clone(), vec!["spin".to_owned(), "sleep".to_owned()]].concat();
    model.push_str(&format!(
        r#"
[services.spin]
plugin = "misbehave"
interval = "1s"
params = {{ mode = "spin" }}
limits = {{ deadline = "1500ms", fuel = 100000000000 }}
[services.sleep]
plugin = "misbehave"
interval = "1s"
params = {{ mode = "sleep" }}
limits = {{ deadline = "1500ms" }}
[hosts.a]
token = "{TOKEN_A}"
services = {all:?}
liveness_service = "uptime-1"
"#
    ));
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model);
    let _agent = Agent::start_with(dir.path(), "a", TOKEN_A, &[&receiver.address], &plugins, "");
    // Every good service (each plugin compiled in its own time) with
    // enough reports to judge its cadence.
    assert!(
        wait_until(Duration::from_secs(60), || good
            .iter()
            .all(|name| receiver.report_times("a", name).len() >= 8)),
        "uptime reports: {:?}; receiver log: {}",
        receiver.report_times("a", "uptime-1"),
        receiver.log_text()
    );
    let status = receiver.status();
    let services = status[0]["services"].as_array().unwrap();
    let level = |name: &str| {
        let service = services.iter().find(|s| s["name"] == name).unwrap();
        (
            service["level"].as_str().unwrap().to_owned(),
            service["text"].clone(),
        )
    };
    for bad in ["spin", "sleep"] {
        assert_eq!(level(bad).0, "UNKNOWN", "{bad}: {:?}", level(bad));
    }
    for name in &good {
        assert_eq!(level(name).0, "OK", "{name}: {:?}", level(name));
        // A service queued behind the slow runs (1.5 s each, every
        // second) would be late on every cycle; a loaded machine may delay
        // one run. So: at most one gap over 1.4 s.
        let gaps = sorted_gaps(&receiver.report_times("a", name));
        assert!(
            gaps.len() >= 6 && gaps[gaps.len() - 2] <= 1_400,
            "{name} waited behind the slow ones: gaps {gaps:?}"
        );
    }
}
