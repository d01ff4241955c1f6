//! Command plugins in other languages: a C program (clang + wasi-libc) and a
//! C fixture run as wasip1 commands printing exposition text, and a Python
//! component (componentize-py). Same sandbox, same limits, same state.

use crate::common::{agent, build_plugins, fixture, once, plugin, plugin_run, status, value};
use std::time::Duration;

fn command_mode(mode: &str, extra: &[&str]) -> (String, String, serde_json::Value) {
    let param = format!("mode={mode}");
    let mut args = vec!["--param", param.as_str()];
    args.extend_from_slice(extra);
    let (report, _) = plugin_run(&fixture("command"), &args);
    let (level, text) = status(&report);
    (level, text, report)
}

#[test]
fn c_plugin_reads_proc_and_keeps_its_state_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let (first, _) = plugin_run(&plugin("procstat"), &["--state", state_arg]);
    let (level, text) = status(&first);
    assert_eq!(level, "OK", "{text}");
    let switches = value(&first, "procstat_context_switches_total", &[]).unwrap();
    assert!(switches > 0.0);
    assert_eq!(first["samples"][0]["kind"], "counter");
    assert!(value(&first, "procstat_procs", &[("state", "running")]).unwrap() >= 1.0);
    // No previous state on the first run, so no delta.
    assert_eq!(
        value(&first, "procstat_context_switches_since_last_run", &[]),
        None
    );
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        format!("{switches}")
    );

    let (second, _) = plugin_run(
        &plugin("procstat"),
        &["--state", state_arg, "--param", "blocked_warn=-1"],
    );
    let now = value(&second, "procstat_context_switches_total", &[]).unwrap();
    let delta = value(&second, "procstat_context_switches_since_last_run", &[]).unwrap();
    assert_eq!(delta, now - switches);
    let (level, text) = status(&second);
    assert_eq!(level, "WARN", "{text}");
    assert!(text.contains("blocked on I/O (more than -1)"), "{text}");
}

#[test]
fn command_reads_proc_but_not_the_agents_secrets() {
    let (level, text, report) = command_mode("read", &["--param", "path=/proc/stat"]);
    assert_eq!(level, "OK", "{text}");
    assert!(value(&report, "read_bytes", &[]).unwrap() > 0.0);
    // The policy hook of the component path applies to wasip1 modules too.
    let (level, text, _) = command_mode("read", &["--param", "path=/proc/self/environ"]);
    assert_eq!(level, "UNKNOWN");
    // The agent's own entries answer like absent ones (docs/security.md).
    assert!(
        text.contains("No such file")
            && text.contains("opens denied by the sandbox")
            && text.contains("the agent's own process is hidden"),
        "{text}"
    );
    let (level, text, _) = command_mode("read", &["--param", "path=/etc/hostname"]);
    assert_eq!(level, "UNKNOWN");
    assert!(text.contains("cannot open /etc/hostname"), "{text}");
}

#[test]
fn command_cannot_write() {
    let (level, text, _) = command_mode("write", &["--param", "path=/proc/sandglass-test"]);
    assert_eq!(level, "UNKNOWN");
    assert!(
        text.contains("cannot create /proc/sandglass-test"),
        "{text}"
    );
}

#[test]
fn garbage_output_names_the_line() {
    let (level, text, report) = command_mode("garbage", &[]);
    assert_eq!(level, "UNKNOWN");
    assert_eq!(
        text,
        "unreadable output: line 3: the value is not a number: \"this is not a sample\""
    );
    assert_eq!(report["samples"].as_array().unwrap().len(), 0);
}

#[test]
fn failure_exit_carries_stderr_and_no_samples() {
    let (level, text, report) = command_mode("exit", &[]);
    assert_eq!(level, "UNKNOWN");
    assert_eq!(
        text,
        "command exited with a failure status; stderr: something went wrong"
    );
    assert_eq!(report["samples"].as_array().unwrap().len(), 0);
}

#[test]
fn command_limits_fuel_deadline_and_output() {
    let (level, text, _) = command_mode("spin", &["--fuel", "50000000"]);
    assert_eq!(
        (level.as_str(), text.as_str()),
        ("UNKNOWN", "fuel limit 50000000 exhausted")
    );
    let (level, text, _) = command_mode(
        "spin",
        &["--fuel", "100000000000000", "--deadline", "300ms"],
    );
    assert_eq!(
        (level.as_str(), text.as_str()),
        ("UNKNOWN", "deadline 300ms exceeded")
    );
    // Printing past the cap: the output limit, even though the program
    // ignores its failed writes.
    let (level, text, _) = command_mode("flood", &[]);
    assert_eq!(
        (level.as_str(), text.as_str()),
        ("UNKNOWN", "stdout/stderr limit 1 MiB exceeded")
    );
}

/// 262,000 samples of 4 bytes each, within the output cap: counted before
/// they are parsed. Parsed first, they held 39 MiB of the agent's memory
/// (62 MiB peak against 23 MiB for a plain run) only to be refused.
#[test]
fn a_command_printing_too_many_samples_is_refused_before_they_are_built() {
    build_plugins();
    let plugin = fixture("command");
    let run = |mode: &str| {
        let param = format!("mode={mode}");
        let args = ["plugin", "run", plugin.to_str().unwrap(), "--param", &param];
        let (stdout, peak) =
            crate::common::agent_measured(&[&args[..], &["--format", "json"]].concat());
        let reports: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
        (status(&reports[0]), peak)
    };
    let ((level, text), peak) = run("tiny");
    assert_eq!(
        (level.as_str(), text.as_str()),
        (
            "UNKNOWN",
            "output limit: 262000 samples exceed max_samples 10000"
        )
    );
    let (_, plain) = run("count");
    assert!(
        peak < plain + (12 << 20),
        "peak {} MiB, a plain run {} MiB",
        peak >> 20,
        plain >> 20
    );
}

#[test]
fn command_state_survives_agent_restarts() {
    // `agent once` twice: each is a new agent process; the state store
    // carries the command's `# STATE` line to the next run's stdin.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "plugin_dir = {:?}\nstate_dir = {:?}\n[services.counted]\nplugin = \"command\"\nparams = {{ mode = \"count\" }}\n",
            fixture("command").parent().unwrap(),
            dir.path().join("state")
        ),
    )
    .unwrap();
    for expected in 1..=3 {
        let reports = once(&config);
        assert_eq!(value(&reports[0], "runs_total", &[]), Some(expected as f64));
    }
}

#[test]
fn a_core_module_that_is_not_a_command_is_refused_clearly() {
    let (output, _) = agent(&["plugin", "run", fixture("reactor").to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("reactor.wasm") && stderr.contains("is not a WASI command"),
        "{stderr}"
    );
}

#[test]
fn python_component_reports_pressure() {
    let (report, elapsed) = plugin_run(&plugin("pressure"), &["--param", "warn=1000"]);
    let (level, text) = status(&report);
    assert_eq!(level, "OK", "{text}");
    assert!(
        text.contains("pressure") && text.contains("% over 10s"),
        "{text}"
    );
    for resource in ["cpu", "memory", "io"] {
        let some = [("resource", resource), ("scope", "some")];
        assert!(value(&report, "pressure_stall_seconds_total", &some).unwrap() >= 0.0);
        let avg = value(&report, "pressure_avg10_percent", &some).unwrap();
        assert!((0.0..=100.0).contains(&avg), "{resource}: {avg}");
    }
    let (report, _) = plugin_run(&plugin("pressure"), &["--param", "warn=-1"]);
    assert_eq!(status(&report).0, "WARN");
    let (report, _) = plugin_run(&plugin("pressure"), &["--param", "warn=lots"]);
    let (level, text) = status(&report);
    assert_eq!(level, "UNKNOWN");
    assert!(text.contains("parameter warn must be a number"), "{text}");
    // Compiling the 18 MB component is most of this (no cache in `plugin run`).
    assert!(elapsed < Duration::from_secs(120), "{elapsed:?}");
}
