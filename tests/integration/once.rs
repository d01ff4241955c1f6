//! `agent once`: core plugins against the real `/proc`, misbehaving plugins
//! side by side, state across agent restarts, the compiled-plugin cache.

use crate::common::{agent, build_plugins, once, root, status, value};
use serde_json::Value;
use std::path::Path;

const CORE: [&str; 8] = [
    "cpu",
    "memory",
    "loadavg",
    "uptime",
    "network",
    "diskio",
    "processes",
    "cpuinfo",
];

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    build_plugins();
    let fixtures = root().join("target/fixtures");
    let mut text = format!(
        "plugin_dir = {:?}\nstate_dir = {:?}\n",
        root().join("target/plugins"),
        dir.join("state")
    );
    for name in CORE {
        text.push_str(&format!("[services.{name}]\nplugin = \"{name}\"\n"));
    }
    text.push_str(&extra.replace("FIXTURES", fixtures.to_str().unwrap()));
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn report<'a>(reports: &'a [Value], service: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r["service"] == service)
        .unwrap_or_else(|| panic!("no report for {service}"))
}

const MISBEHAVING: &str = r#"
[services.spin]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "spin" }
limits = { fuel = 20000000 }
[services.bomb]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "membomb" }
[services.panic]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "panic" }
[services.sleep]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "sleep" }
limits = { deadline = "300ms" }
[services.snoop]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "read", path = "/proc/self/environ" }
[services.old]
plugin = "FIXTURES/abi-mismatch.wasm"
[services.missing]
plugin = "not-installed"
[services.lvs]
plugin = "lvs"
"#;

#[test]
fn good_plugins_report_real_data_beside_misbehaving_ones() {
    let dir = tempfile::tempdir().unwrap();
    let reports = once(&write_config(dir.path(), MISBEHAVING));
    for name in CORE {
        let (level, text) = status(report(&reports, name));
        assert_ne!(level, "UNKNOWN", "{name}: {text}");
    }
    let reason = |service: &str| status(report(&reports, service)).1;
    assert_eq!(reason("spin"), "fuel limit 20000000 exhausted");
    assert_eq!(reason("bomb"), "memory limit 32 MiB reached");
    assert!(reason("panic").contains("fixture panicked on purpose"));
    assert!(reason("sleep").starts_with("deadline 300ms exceeded"));
    assert!(reason("snoop").contains("blocked:"), "{}", reason("snoop"));
    assert!(reason("old").contains("ABI 0.9.0"), "{}", reason("old"));
    assert!(
        reason("missing").contains("not-installed.wasm"),
        "{}",
        reason("missing")
    );

    // A few values checked against /proc read natively.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kb: f64 = meminfo
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        value(report(&reports, "memory"), "memory_total_bytes", &[]),
        Some(total_kb * 1024.0)
    );
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(
        value(report(&reports, "cpuinfo"), "cpuinfo_logical_cpus", &[]),
        Some(cpus as f64)
    );
    let cpu = report(&reports, "cpu");
    assert!(
        value(
            cpu,
            "cpu_jiffies_total",
            &[("cpu", &format!("cpu{}", cpus - 1)), ("mode", "user")]
        )
        .is_some()
    );
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let reported = value(report(&reports, "uptime"), "uptime_seconds", &[]).unwrap();
    assert!((uptime - reported).abs() < 60.0, "{uptime} vs {reported}");
    assert!(
        value(
            report(&reports, "network"),
            "net_rx_bytes_total",
            &[("interface", "lo")]
        )
        .is_some()
    );
    // IPVS is absent on most test machines: then lvs must say so, not fail oddly.
    let (level, text) = status(report(&reports, "lvs"));
    if Path::new("/proc/net/ip_vs").exists() {
        assert_ne!(level, "UNKNOWN", "{text}");
    } else {
        assert_eq!(text, "IPVS is not loaded: /proc/net/ip_vs does not exist");
    }
    let processes = value(report(&reports, "processes"), "processes_total", &[]).unwrap();
    assert!(processes >= 2.0, "{processes}");
}

#[test]
fn state_survives_agent_restarts_and_enables_rates() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[services.counter]\nplugin = \"FIXTURES/misbehave.wasm\"\nparams = { mode = \"state-counter\" }\n",
    );
    for expected in 1..=3 {
        let reports = once(&config);
        assert_eq!(
            value(report(&reports, "counter"), "runs", &[]),
            Some(expected as f64)
        );
        if expected >= 2 {
            // The second run has the first run's jiffies: utilisation appears.
            assert!(
                value(
                    report(&reports, "cpu"),
                    "cpu_utilization_percent",
                    &[("cpu", "total")]
                )
                .is_some()
            );
            assert!(
                value(
                    report(&reports, "network"),
                    "net_rx_bytes_per_second",
                    &[("interface", "lo")]
                )
                .is_some()
            );
        }
    }
}

#[test]
fn compiled_plugins_are_cached_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    once(&config);
    let cache = dir.path().join("state/cache");
    let artifacts = |_: ()| -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path(), e.metadata().unwrap().modified().unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let first = artifacts(());
    assert_eq!(
        first.len(),
        CORE.len(),
        "one artifact per plugin: {first:?}"
    );
    once(&config);
    assert_eq!(
        artifacts(()),
        first,
        "a restart must reuse the artifacts, not recompile"
    );
    // A damaged artifact is recompiled, not fatal.
    std::fs::write(&first[0].0, b"garbage").unwrap();
    let reports = once(&config);
    assert!(reports.iter().all(|r| r["status"]["level"] != "UNKNOWN"));
}

#[test]
fn example_config_runs() {
    build_plugins();
    let dir = tempfile::tempdir().unwrap();
    // The example keeps state under target/; run a copy with its own state dir.
    let example = std::fs::read_to_string(root().join("examples/agent.toml")).unwrap();
    let text = example
        .replace(
            "\"../target/plugins\"",
            &format!("{:?}", root().join("target/plugins")),
        )
        .replace(
            "\"../target/agent-state\"",
            &format!("{:?}", dir.path().join("state")),
        );
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, text).unwrap();
    let (output, _) = agent(&["once", "--config", config.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    for name in CORE {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && !l.contains("UNKNOWN")),
            "{name}:\n{table}"
        );
    }
}
