//! The plugin in the real sandbox: build it as a lean collector and let the
//! agent check it (ABI, imports, a run against the real /proc, its cost).
//!
//! The agent is `SANDGLASS_AGENT` (set by `agent plugin new` in
//! .cargo/config.toml) or `agent` on PATH.

use std::path::PathBuf;
use std::process::Command;

fn agent() -> PathBuf {
    std::env::var_os("SANDGLASS_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("agent"))
}

/// Build the component (`agent plugin build`: a lean collector); its path.
/// A target dir of its own: the outer `cargo test` may still hold the lock
/// on the default one.
fn build() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target"))
        .join("sandbox-test");
    let output = Command::new(agent())
        .args(["plugin", "build"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; set SANDGLASS_AGENT to the agent binary",
                agent().display()
            )
        });
    assert!(
        output.status.success(),
        "agent plugin build failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

#[test]
fn passes_agent_plugin_check() {
    let wasm = build();
    let output = Command::new(agent())
        .args(["plugin", "check", "--format", "json"])
        .arg(&wasm)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; set SANDGLASS_AGENT to the agent binary",
                agent().display()
            )
        });
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "agent plugin check failed:\n{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The JSON has "verdict" and the run's report with its samples.
    assert!(text.contains("\"verdict\": \"pass\""), "{text}");
    assert!(text.contains("\"file_handles_allocated\""), "{text}");
}
