//! Helpers: build the plugins once per test run, run the agent binary.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub use sandglass_tests::{build_plugins, fixture, plugin, reserved_address, reserved_port, root};

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

/// Run the agent binary with `args`, which must succeed: its stdout and its
/// peak resident memory in bytes (its VmHWM, as `wait4` reports it at exit).
// Waited for with `wait4`, which std's `Child` does not offer.
#[allow(clippy::zombie_processes)]
pub fn agent_measured(args: &[&str]) -> (Vec<u8>, u64) {
    use std::io::Read;
    let stderr = tempfile::tempfile().unwrap();
    let mut child = Command::new(sandglass_tests::binary("agent"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .expect("run agent");
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let mut wait_status = 0;
    // SAFETY: an all-zero rusage is valid; the child is ours and unwaited.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let waited = unsafe { libc::wait4(pid, &mut wait_status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let mut log = String::new();
    let mut stderr = stderr;
    std::io::Seek::rewind(&mut stderr).unwrap();
    stderr.read_to_string(&mut log).unwrap();
    assert!(
        libc::WIFEXITED(wait_status) && libc::WEXITSTATUS(wait_status) == 0,
        "agent {args:?} failed: {log}"
    );
    (stdout, usage.ru_maxrss as u64 * 1024)
}
