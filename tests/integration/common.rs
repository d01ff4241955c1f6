//! Helpers: build the plugins once per test run, run the agent binary.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub use sandglass_tests::{build_plugins, fixture, plugin, root};

/// A port on 127.0.0.1 that only this test process hands out, free when
/// handed out. A port from `bind("127.0.0.1:0")` that is let go can be given
/// to any other test's `bind(":0")` before it is used or used again: a
/// receiver restarted on its old port then found it taken, or found another
/// test's agent reporting to it. So these ports come from below the kernel's
/// ephemeral range (which `bind(":0")` never leaves), and a counter keeps
/// the tests of this process apart; the process id spreads two test runs on
/// one machine over the range.
pub fn reserved_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(12_000).max(1024);
    let span = ephemeral_low.saturating_sub(low);
    let base = std::process::id() * 101;
    for _ in 0..span {
        let port = (low + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{}", low + span)
}

/// `127.0.0.1:PORT` with a [`reserved_port`].
pub fn reserved_address() -> String {
    format!("127.0.0.1:{}", reserved_port())
}

/// A plugin directory under `dir` holding the core plugins `core` and the
/// misbehave fixture, for a receiver and an agent to share.
pub fn plugin_dir(dir: &Path, core: &[&str]) -> std::path::PathBuf {
    build_plugins();
    let plugins = dir.join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for name in core {
        std::fs::copy(plugin(name), plugins.join(format!("{name}.wasm"))).unwrap();
    }
    std::fs::copy(fixture("misbehave"), plugins.join("misbehave.wasm")).unwrap();
    plugins
}

/// Run the agent binary with `args`; returns its output and wall time.
pub fn agent(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let output = Command::new(sandglass_tests::binary("agent"))
        .args(args)
        .output()
        .expect("run agent");
    (output, start.elapsed())
}

/// `agent plugin run FILE ARGS... --format json`: the one report, and wall time.
pub fn plugin_run(file: &Path, args: &[&str]) -> (Value, Duration) {
    let mut all = vec!["plugin", "run", file.to_str().unwrap(), "--format", "json"];
    all.extend_from_slice(args);
    let (output, elapsed) = agent(&all);
    assert!(
        output.status.success(),
        "agent {all:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reports: Value = serde_json::from_slice(&output.stdout).expect("json output");
    (reports[0].clone(), elapsed)
}

/// A report's status level and text.
pub fn status(report: &Value) -> (String, String) {
    (
        report["status"]["level"].as_str().unwrap().to_owned(),
        report["status"]["text"].as_str().unwrap().to_owned(),
    )
}

/// The value of the first sample called `name` whose labels include `labels`.
pub fn value(report: &Value, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    report["samples"].as_array()?.iter().find_map(|s| {
        let matches = s["name"] == name
            && labels.iter().all(|(k, v)| {
                s["labels"]
                    .as_array()
                    .is_some_and(|ls| ls.iter().any(|l| l[0] == *k && l[1] == *v))
            });
        matches.then(|| s["value"].as_f64().unwrap())
    })
}

/// `agent once --config CONFIG --format json` (a new agent process): the reports.
pub fn once(config: &Path) -> Vec<Value> {
    let (output, _) = agent(&[
        "once",
        "--config",
        config.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}
