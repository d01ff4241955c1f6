//! `agent plugin new`: a plugin crate from the template builds unedited as a
//! lean collector (`agent plugin build`), passes its own tests (one of which
//! builds it and runs it in the real sandbox through this agent), and passes
//! `agent plugin check`.

use crate::common::{agent, root, status, value};
use std::path::Path;
use std::process::Command;

fn cargo(dir: &Path, args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(dir)
        // One build folder across test runs: the crate's dependencies
        // (the SDK, wit-bindgen) are built once, not per temp dir.
        .env("CARGO_TARGET_DIR", root().join("target/template-test"))
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "cargo {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn a_new_plugin_builds_passes_its_tests_and_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let (output, _) = agent(&[
        "plugin",
        "new",
        "file-handles",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let made = dir.path().join("file-handles");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("agent plugin build"), "{stdout}");

    let target = root().join("target/template-test");
    let (built, _) = agent(&[
        "plugin",
        "build",
        made.to_str().unwrap(),
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = target.join("sandglass/file_handles.wasm");
    assert_eq!(
        String::from_utf8_lossy(&built.stdout).trim(),
        wasm.to_str().unwrap()
    );
    let tests = cargo(&made, &["test", "--release"]);
    let log = String::from_utf8_lossy(&tests.stdout);
    for test in [
        "recorded_file_nr",
        "thresholds",
        "garbage",
        "passes_agent_plugin_check",
    ] {
        assert!(
            log.contains(&format!("{test} ... ok")),
            "{test} did not pass:\n{log}"
        );
    }

    let (output, _) = agent(&[
        "plugin",
        "check",
        "--format",
        "json",
        wasm.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let checked: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(checked["verdict"], "pass", "{checked}");
    let report = &checked["report"];
    assert_eq!(report["plugin"], "file-handles");
    assert_eq!(status(report).0, "OK");
    let real: f64 = std::fs::read_to_string("/proc/sys/fs/file-nr")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (info, _) = agent(&["plugin", "info", "--format", "json", wasm.to_str().unwrap()]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["sandbox"], "lean (no WASI)", "{info}");
    let reported = value(report, "file_handles_allocated", &[]).unwrap();
    // Handles come and go between the two reads: same order of magnitude.
    assert!(
        reported > 0.0 && (reported / real - 1.0).abs() < 0.5,
        "{reported} vs {real}"
    );

    // Creating it again refuses to overwrite.
    let (output, _) = agent(&[
        "plugin",
        "new",
        "file-handles",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
}

#[test]
fn check_fails_a_plugin_that_cannot_run_and_names_why() {
    let (output, _) = agent(&[
        "plugin",
        "check",
        crate::common::plugin("logwatch").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("fail  grants    declares files: pass --grant files --files DIR")
            && text.contains("verdict: FAIL"),
        "{text}"
    );
    let (output, _) = agent(&[
        "plugin",
        "check",
        "--format",
        "json",
        "--param",
        "mode=spin",
        "--fuel",
        "20000000",
        crate::common::fixture("misbehave").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let checked: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(checked["verdict"], "fail");
    assert_eq!(
        checked["summary"],
        "misbehave 0.0.0 cannot be deployed: run: UNKNOWN fuel limit 20000000 exhausted"
    );
}
