//! Staged rollout (docs/plugin-guide.md, "Staged rollout"): a new build of
//! a plugin that fails every run reaches only the canary, halts and rolls
//! back; `resume` tries it again and `abandon` gives it up; a good build
//! reaches every host in steps. Four agents with empty plugin directories,
//! one receiver, everything on 127.0.0.1.

use crate::common::{build_plugins, fixture, plugin};
use crate::distribution::{events, fetched, listed, rebuilt, replace, service, versions};
use crate::fleet_support::{Agent, Receiver, wait_until};
use sandglass_core::hash::sha256_hex;
use std::time::Duration;

const TOKEN: &str = "token-rrrrrrrr";
const HOSTS: [&str; 4] = ["a", "b", "c", "d"];
/// Bounded waits: long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(60);

/// `probe` runs whatever `probe.wasm` is, with `mode = "panic"`: loadavg
/// ignores the parameter, the misbehaving fixture fails every run with it.
fn model() -> String {
    let hosts: String = HOSTS
        .iter()
        .map(|h| format!("[hosts.{h}]\ntoken = \"{TOKEN}\"\ntemplates = [\"base\"]\n"))
        .collect();
    format!(
        "plugin_dir = \"served\"\n\
         [rollout]\ncanary = 1\nstep = \"34%\"\nstep_wait = \"2s\"\nmin_runs = 3\nmax_unknown_increase = \"5%\"\n\
         [services.uptime]\nplugin = \"uptime\"\ninterval = \"1s\"\n\
         [services.probe]\nplugin = \"probe\"\ninterval = \"300ms\"\nparams = {{ mode = \"panic\" }}\n\
         [templates.base]\nservices = [\"uptime\", \"probe\"]\n{hosts}"
    )
}

/// When each host's probe was pinned to `build` (by its first 8 digits),
/// from the build events.
fn pinned_at(receiver: &Receiver, build: &str) -> Vec<(String, u64)> {
    let events = events(receiver, "probe");
    let mut times: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e["new"] == format!("probe {}", &build[..8]))
        .map(|e| {
            (
                e["host"].as_str().unwrap().to_owned(),
                e["time_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    times.sort_by_key(|(host, time)| (*time, host.clone()));
    times
}

#[test]
fn a_failing_build_halts_at_the_canary_and_a_good_one_reaches_every_host_in_steps() {
    build_plugins();
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    std::fs::copy(plugin("uptime"), served.join("uptime.wasm")).unwrap();
    let good = std::fs::read(plugin("loadavg")).unwrap();
    let good_sha = sha256_hex(&good);
    std::fs::write(served.join("probe.wasm"), &good).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model());
    let agents: Vec<Agent> = HOSTS
        .iter()
        .map(|h| Agent::start_with(dir.path(), h, TOKEN, &[&receiver.address], &empty, ""))
        .collect();
    let logs = || {
        let agents: String = agents.iter().map(|a| a.log_text()).collect();
        format!("receiver: {}\nagents: {agents}", receiver.log_text())
    };
    let level = |host: &str| service(&receiver, host, "probe")["level"].clone();
    assert!(
        wait_until(WAIT, || HOSTS.iter().all(|h| level(h) == "OK")),
        "probe runs everywhere: {}",
        logs()
    );
    assert_eq!(
        listed(&receiver, "probe")["rollout"]["stage"],
        "done",
        "a first build is no rollout"
    );

    // A build that fails every run: the canary (the first host by name)
    // gets it, the rollout halts and the canary goes back.
    let bad = rebuilt(&std::fs::read(fixture("misbehave")).unwrap(), "bad");
    let bad_sha = sha256_hex(&bad);
    replace(&served.join("probe.wasm"), &bad);
    let halted = || listed(&receiver, "probe")["rollout"]["stage"] == "halted";
    assert!(
        wait_until(WAIT, halted),
        "{}\n{}",
        listed(&receiver, "probe")["rollout"],
        logs()
    );
    let r = listed(&receiver, "probe")["rollout"].clone();
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("UNKNOWN in") && reason.contains("on a,"),
        "{r}"
    );
    assert_eq!(r["to"], bad_sha.as_str(), "{r}");
    assert_eq!(r["from"], good_sha.as_str(), "{r}");
    assert!(
        fetched(&agents[0], &bad_sha),
        "the canary got the new build"
    );
    for agent in &agents[1..] {
        assert!(
            !fetched(agent, &bad_sha),
            "only the canary got it: {}",
            logs()
        );
    }
    assert!(
        wait_until(WAIT, || level("a") == "OK"),
        "the canary runs the previous build again: {}",
        logs()
    );
    let v = versions(&receiver, "probe");
    let pinned = |sha: &str| {
        v.iter()
            .find(|b| b["sha256"] == sha)
            .map(|b| b["pinned"].clone())
            .unwrap_or_default()
    };
    assert_eq!(pinned(&good_sha), serde_json::json!(HOSTS), "{v:?}");
    assert_eq!(pinned(&bad_sha), serde_json::json!([]), "{v:?}");
    let canary = pinned_at(&receiver, &bad_sha);
    assert_eq!(canary.len(), 1, "one canary event: {canary:?}");
    let back = pinned_at(&receiver, &good_sha);
    assert_eq!(
        back.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
        ["a"],
        "{back:?}"
    );

    // Resumed: the canary gets it again, judged on new runs, and it halts
    // again; abandoned: it stays on the previous build.
    let config = receiver.config.to_str().unwrap();
    let said = receiver.text(&["plugins", "resume", "probe", "--config", config]);
    assert!(said.contains("stepping"), "{said}");
    assert!(
        wait_until(WAIT, || pinned_at(&receiver, &bad_sha).len() == 2
            && halted()),
        "resumed and halted again: {}\n{}",
        listed(&receiver, "probe")["rollout"],
        logs()
    );
    let said = receiver.text(&["plugins", "abandon", "probe", "--config", config]);
    assert!(said.contains("abandoned"), "{said}");
    assert_eq!(listed(&receiver, "probe")["rollout"]["stage"], "abandoned");
    let again = receiver.refused(&["plugins", "abandon", "probe", "--config", config]);
    assert!(again.contains("nothing to abandon"), "{again}");

    // A good build: canary first, then two hosts (34 % of four, rounded
    // up), then the last, each step after step_wait and three runs per
    // host reached.
    let second = rebuilt(&good, "second");
    let second_sha = sha256_hex(&second);
    replace(&served.join("probe.wasm"), &second);
    assert!(
        wait_until(WAIT, || {
            let r = listed(&receiver, "probe")["rollout"].clone();
            r["stage"] == "done" && r["to"] == second_sha.as_str()
        }),
        "{}\n{}",
        listed(&receiver, "probe")["rollout"],
        logs()
    );
    let steps = pinned_at(&receiver, &second_sha);
    let order: Vec<&str> = steps.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(order, ["a", "b", "c", "d"], "{steps:?}");
    assert!(steps[0].1 < steps[1].1, "canary first: {steps:?}");
    assert_eq!(steps[1].1, steps[2].1, "b and c in one step: {steps:?}");
    assert!(steps[2].1 < steps[3].1, "d in the last step: {steps:?}");
    assert!(
        steps[3].1 - steps[0].1 >= 4_000,
        "two waits of step_wait between canary and last: {steps:?}"
    );
    assert!(
        wait_until(WAIT, || agents.iter().all(|a| fetched(a, &second_sha))
            && HOSTS.iter().all(|h| level(h) == "OK")),
        "{}",
        logs()
    );
}
