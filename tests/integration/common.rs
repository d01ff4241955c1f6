//! Helpers: build the plugins once per test run, run the agent binary.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Build core plugins and fixtures (a no-op when they are up to date), once
/// per test process, so a test never runs against a stale or missing wasm.
pub fn build_plugins() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new("bash")
            .arg(root().join("scripts/build-plugins.sh"))
            .status()
            .expect("run scripts/build-plugins.sh");
        assert!(status.success(), "scripts/build-plugins.sh failed");
    });
}

/// A core plugin's wasm.
pub fn plugin(name: &str) -> PathBuf {
    build_plugins();
    root().join("target/plugins").join(format!("{name}.wasm"))
}

/// A fixture plugin's wasm.
pub fn fixture(name: &str) -> PathBuf {
    build_plugins();
    root().join("target/fixtures").join(format!("{name}.wasm"))
}

/// Run the agent binary with `args`; returns its output and wall time.
pub fn agent(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_agent"))
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
