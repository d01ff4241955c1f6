//! Plugins distributed by the receiver (docs/plugin-guide.md, "Distribution"):
//! agents with empty plugin directories run what the receiver's
//! `plugin_dir` holds, follow a replaced file without a SIGHUP, keep the
//! old build when the new one is broken, refuse bytes damaged in transit,
//! and an agent that does not allow remote plugins says so.

use crate::common::{build_plugins, plugin};
use crate::fleet_support::{Agent, Receiver, wait_until};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "token-dddddddd";
/// Bounded waits: long enough for a loaded machine; the times measured
/// are printed.
const WAIT: Duration = Duration::from_secs(30);

fn model(services: &[&str]) -> String {
    let defined: String = services
        .iter()
        .map(|s| format!("[services.{s}]\nplugin = \"{s}\"\ninterval = \"1s\"\n"))
        .collect();
    let hosts: String = ["a", "b", "c", "d"]
        .iter()
        .map(|h| format!("[hosts.{h}]\ntoken = \"{TOKEN}\"\ntemplates = [\"base\"]\n"))
        .collect();
    format!("plugin_dir = \"served\"\n{defined}[templates.base]\nservices = {services:?}\n{hosts}")
}

/// The same plugin with another sha256: a custom section appended (ignored
/// by every runtime).
pub(crate) fn rebuilt(wasm: &[u8], tag: &str) -> Vec<u8> {
    let name = b"sandglass-test";
    let body_len = 1 + name.len() + tag.len();
    let mut out = wasm.to_vec();
    out.extend_from_slice(&[0x00, body_len as u8, name.len() as u8]);
    out.extend_from_slice(name);
    out.extend_from_slice(tag.as_bytes());
    out
}

/// A service of a host as `receiver status --json` shows it.
pub(crate) fn service(receiver: &Receiver, host: &str, name: &str) -> Value {
    let status = receiver.status();
    let host = status
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["name"] == host).cloned())
        .unwrap_or_default();
    host["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or_default()
}

/// Replace `path` the way `cp` over an existing file does not: a new file
/// renamed over it, as editors and deploy tools do.
pub(crate) fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub(crate) fn fetched(agent: &Agent, sha256: &str) -> bool {
    agent
        .state_dir
        .join(format!("plugins/{sha256}.wasm"))
        .exists()
}

#[test]
fn plugins_in_the_receivers_plugin_dir_reach_agents_with_empty_plugin_dirs() {
    build_plugins();
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    std::fs::copy(plugin("uptime"), served.join("uptime.wasm")).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    // The first transfer is damaged on its way (a receiver test hook).
    let receiver = Receiver::start_with_env(
        dir.path(),
        "127.0.0.1:0",
        &model(&["uptime"]),
        &[("SANDGLASS_TEST_CORRUPT_PLUGIN_TRANSFERS", "1")],
    );
    let agents: Vec<Agent> = ["a", "b", "c"]
        .iter()
        .map(|h| Agent::start_with(dir.path(), h, TOKEN, &[&receiver.address], &empty, ""))
        .collect();
    let refusing = Agent::start_with(
        dir.path(),
        "d",
        TOKEN,
        &[&receiver.address],
        &empty,
        "[allow]\nremote_plugins = false\n",
    );
    let runs_ok = |name: &str| {
        ["a", "b", "c"]
            .iter()
            .all(|h| service(&receiver, h, name)["level"] == "OK")
    };
    let logs = || {
        let agents: String = agents.iter().map(|a| a.log_text()).collect();
        format!("receiver: {}\nagents: {agents}", receiver.log_text())
    };
    assert!(
        wait_until(WAIT, || runs_ok("uptime")),
        "uptime everywhere: {}",
        logs()
    );

    // Damaged in transit: refused by the agent that got it, and fetched
    // again (it runs, above).
    assert!(
        agents
            .iter()
            .any(|a| a.log_text().contains("damaged in transit")),
        "one agent refused the damaged transfer: {}",
        logs()
    );
    let refused = service(&receiver, "d", "uptime");
    assert_eq!(refused["level"], "UNKNOWN", "{refused}");
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .contains("remote_plugins = false"),
        "{refused}"
    );
    assert!(
        !refusing.state_dir.join("plugins").exists(),
        "nothing fetched"
    );

    // A new plugin in plugin_dir, added to the template: runs everywhere.
    let loadavg = std::fs::read(plugin("loadavg")).unwrap();
    std::fs::copy(plugin("loadavg"), served.join("loadavg.wasm")).unwrap();
    let text = std::fs::read_to_string(&receiver.config).unwrap();
    let added = text.replace(&model(&["uptime"]), &model(&["uptime", "loadavg"]));
    std::fs::write(&receiver.config, added).unwrap();
    let start = Instant::now();
    assert!(
        wait_until(WAIT, || runs_ok("loadavg")),
        "loadavg everywhere: {}",
        logs()
    );
    eprintln!(
        "new plugin running on all three after {:?}",
        start.elapsed()
    );

    // A replaced file reaches all three, no SIGHUP.
    let second = rebuilt(&loadavg, "second build");
    let second_sha = sandglass_core::hash::sha256_hex(&second);
    let replaced_ms = sandglass_core::time::now_ms();
    replace(&served.join("loadavg.wasm"), &second);
    let start = Instant::now();
    assert!(
        wait_until(WAIT, || agents.iter().all(|a| fetched(a, &second_sha))),
        "the replacement reached every agent: {}",
        logs()
    );
    eprintln!("replaced plugin on all three after {:?}", start.elapsed());
    // Until the new build arrived each agent ran the one before: no host
    // went UNKNOWN for the update.
    let events = events(&receiver, "loadavg");
    let missing: Vec<&Value> = events
        .iter()
        .filter(|e| e["host"] != "d" && e["time_ms"].as_u64() > Some(replaced_ms))
        .filter(|e| e["reason"].as_str().unwrap_or("").contains("not installed"))
        .collect();
    assert!(missing.is_empty(), "{missing:?}");
    let since = receiver.report_times("a", "loadavg").len();
    assert!(wait_until(WAIT, || receiver
        .report_times("a", "loadavg")
        .len()
        >= since + 2));
    assert!(runs_ok("loadavg"), "the new build runs: {}", logs());

    // `receiver plugins` lists both builds, the hosts on the new one, and
    // the failures of d (which may not fetch) counted for the build it is
    // pinned to.
    let first_sha = sandglass_core::hash::sha256_hex(&loadavg);
    let on_new = || {
        let v = versions(&receiver, "loadavg");
        v.len() == 2
            && v[0]["sha256"] == first_sha.as_str()
            && v[1]["sha256"] == second_sha.as_str()
            && ["a", "b", "c"]
                .iter()
                .all(|h| hosts(&v[1]["running"]).contains(h))
            && ["a", "b", "c"]
                .iter()
                .all(|h| !hosts(&v[0]["running"]).contains(h))
            && v[1]["unknown"].as_u64() > Some(0)
    };
    assert!(
        wait_until(WAIT, on_new),
        "{:?}",
        versions(&receiver, "loadavg")
    );
    let v = versions(&receiver, "loadavg");
    assert_eq!(v[0]["size"].as_u64(), Some(loadavg.len() as u64), "{v:?}");
    assert_eq!(v[1]["size"].as_u64(), Some(second.len() as u64), "{v:?}");
    assert!(v[0]["runs"].as_u64() > Some(0), "{v:?}");
    assert!(v[0]["first_seen_ms"].as_u64() <= v[1]["first_seen_ms"].as_u64());
    assert_eq!(hosts(&v[1]["pinned"]), ["a", "b", "c", "d"], "{v:?}");

    // A broken replacement is refused by the receiver and never offered:
    // the previous build keeps running.
    replace(&served.join("loadavg.wasm"), &second[..second.len() / 2]);
    assert!(
        wait_until(WAIT, || receiver.log_text().contains("plugin refused")),
        "{}",
        receiver.log_text()
    );
    let since = receiver.report_times("b", "loadavg").len();
    assert!(wait_until(WAIT, || receiver
        .report_times("b", "loadavg")
        .len()
        >= since + 3));
    assert!(
        runs_ok("loadavg"),
        "the previous build still runs: {}",
        logs()
    );
    for agent in &agents {
        let fetched = std::fs::read_dir(agent.state_dir.join("plugins"))
            .unwrap()
            .count();
        assert_eq!(fetched, 3, "uptime and two loadavg builds, nothing else");
    }
    assert_eq!(
        versions(&receiver, "loadavg").len(),
        2,
        "the broken file is no build"
    );
}

/// `plugin` as `receiver plugins --json` lists it (null if it does not).
pub(crate) fn listed(receiver: &Receiver, plugin: &str) -> Value {
    let config = receiver.config.to_str().unwrap();
    let listed = receiver.json(&["plugins", "--config", config, "--json"]);
    listed
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == plugin).cloned())
        .unwrap_or_default()
}

/// The builds of `plugin` as `receiver plugins --json` lists them.
pub(crate) fn versions(receiver: &Receiver, plugin: &str) -> Vec<Value> {
    listed(receiver, plugin)["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The events of `service` on every host, as `receiver events --json`
/// lists them.
pub(crate) fn events(receiver: &Receiver, service: &str) -> Vec<Value> {
    let config = receiver.config.to_str().unwrap();
    let events = receiver.json(&["events", "--config", config, "--service", service, "--json"]);
    events.as_array().cloned().unwrap_or_default()
}

/// A JSON list of host names.
pub(crate) fn hosts(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}
