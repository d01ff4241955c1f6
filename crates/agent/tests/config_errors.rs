//! The `agent` binary on configuration it must refuse: the error names the
//! file, the line and the key, and the agent exits non-zero before running
//! anything.

use std::process::Command;

fn agent_once(config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["once", "--config", config.to_str().unwrap()])
        .output()
        .expect("run agent")
}

#[test]
fn bad_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let text = format!(
        "plugin_dir = {:?}\nstate_dir = {:?}\n[services.cpu]\nplugin = \"cpu\"\n[services.typo]\nplugin = \"cpu\"\nparms = {{ a = 1 }}\n",
        dir.path(),
        dir.path().join("state")
    );
    std::fs::write(&config, &text).unwrap();
    let output = agent_once(&config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("agent.toml") && stderr.contains("parms"),
        "{stderr}"
    );
    let line = text.lines().position(|l| l.starts_with("parms")).unwrap() + 1;
    assert!(stderr.contains(&format!("line {line}")), "{stderr}");
    assert!(!dir.path().join("state").exists(), "nothing ran");
}

#[test]
fn a_missing_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nowhere.toml");
    let output = agent_once(&config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
}

fn agent_check(config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .expect("run agent")
}

#[test]
fn check_lists_every_problem_run_would_trip_over_and_passes_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let config = dir.path().join("agent.toml");
    // No token, no plugin directory, a service whose plugin is missing.
    std::fs::write(
        &config,
        format!(
            "receiver = \"127.0.0.1:7531\"\nplugin_dir = {plugins:?}\nstate_dir = {:?}\n[services.cpu]\nplugin = \"cpu\"\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let output = agent_check(&config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in ["token", "plugin_dir", "cpu.wasm", "3 problem(s)"] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    assert!(!dir.path().join("state").exists(), "a check writes nothing");
    // Fixed: the same file passes.
    std::fs::create_dir(&plugins).unwrap();
    std::fs::write(plugins.join("cpu.wasm"), b"\0asm").unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("token = \"t\"\n{text}")).unwrap();
    let output = agent_check(&config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 plugins in plugin_dir") && stdout.ends_with(": OK\n"),
        "{stdout}"
    );
}
