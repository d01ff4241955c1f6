//! Telling people: a plugin's value crossing a trigger's threshold fires it
//! once and recovers it once (with hysteresis), the host's status says why
//! while it fires, a plugin's own CRIT is an event too, and both logs say
//! so once per change. Real agent, real receiver, a real plugin (the
//! misbehave fixture's `sequence` mode reports the values it is given, one
//! per run).

use crate::fleet_support::{Agent, Receiver, wait_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "token-trigger-test";

fn events(receiver: &Receiver, host: &str) -> Vec<Value> {
    let out = Command::new(sandglass_tests::binary("receiver"))
        .args([
            "events",
            "--config",
            receiver.config.to_str().unwrap(),
            "--host",
            host,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Events of `service` on the trigger or level (old -> new).
fn transitions(events: &[Value], service: &str, reason_has: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["service"] == service && e["reason"].as_str().unwrap().contains(reason_has))
        .map(|e| {
            (
                e["old"].as_str().unwrap().to_owned(),
                e["new"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A plugin directory with uptime and the misbehave fixture.
pub fn sequence_plugins(dir: &Path) -> PathBuf {
    crate::common::plugin_dir(dir, &["uptime"])
}

/// Services `uptime` and `seq` (the fixture reporting `values`, one a
/// second, `params` added to its parameters) and trigger `high` on `seq`:
/// WARN above 90, recovered below 50.
pub fn sequence_model(values: &[&str], params: &str) -> String {
    format!(
        r#"
[services.uptime]
plugin = "uptime"
interval = "1s"
[services.seq]
plugin = "misbehave"
interval = "1s"
params = {{ mode = "sequence", values = "{}"{params} }}
[triggers.high]
service = "seq"
metric = "value"
labels = {{ kind = "driven" }}
when = "last > 90"
recover = "last < 50"
severity = "WARN"
message = "{{host}} value {{value}}"
"#,
        values.join(",")
    )
}

#[test]
fn a_value_crossing_a_trigger_fires_once_recovers_once_and_marks_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = sequence_plugins(dir.path());
    // One value a second: up past 90 for three runs (hovering at 85 in
    // between, which the recovery condition keeps firing), then back down
    // for good (the cycle comes round again after 30 runs, past this test).
    let mut values = vec!["10", "95", "85", "97", "40"];
    values.extend(std::iter::repeat_n("10", 25));
    let model = format!(
        "{}[triggers.elsewhere]\nservice = \"uptime\"\nmetric = \"no_such_metric\"\nwhen = \"last > 0\"\n\
         [hosts.a]\ntoken = \"{TOKEN}\"\nservices = [\"uptime\", \"seq\"]\n",
        sequence_model(&values, ", crit = 96")
    );
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model);
    let mut agent = Agent::start_with(dir.path(), "a", TOKEN, &[&receiver.address], &plugins, "");
    let recovered = || {
        transitions(&events(&receiver, "a"), "seq", "a value")
            .contains(&("WARN".to_owned(), "OK".to_owned()))
    };
    assert!(
        wait_until(Duration::from_secs(30), recovered),
        "{:#?}\n{}",
        events(&receiver, "a"),
        receiver.log_text()
    );
    // Give a wrongly second firing the time to show.
    std::thread::sleep(Duration::from_secs(3));
    let all = events(&receiver, "a");
    assert_eq!(
        transitions(&all, "seq", "a value"),
        vec![("OK".into(), "WARN".into()), ("WARN".into(), "OK".into())],
        "{all:#?}"
    );
    // The plugin's own verdict: CRIT at 97 only.
    assert_eq!(
        transitions(&all, "seq", "value 97"),
        vec![("OK".into(), "CRIT".into())],
        "{all:#?}"
    );
    assert!(transitions(&all, "seq", "value 40").contains(&("CRIT".into(), "OK".into())));
    // The host was PROBLEM while the trigger fired, saying why, and is OK again.
    let host: Vec<&Value> = all.iter().filter(|e| e["service"].is_null()).collect();
    assert!(
        host.iter().any(|e| e["new"] == "PROBLEM"
            && e["reason"]
                .as_str()
                .unwrap()
                .contains("seq trigger high WARN")),
        "{host:#?}"
    );
    assert!(wait_until(Duration::from_secs(10), || receiver
        .host_status("a")
        == "OK"));
    // Both logs say it once per change, not once per run.
    let receiver_log = receiver.log_text();
    assert_eq!(
        receiver_log.matches("trigger high OK -> WARN").count(),
        1,
        "{receiver_log}"
    );
    assert_eq!(
        receiver_log.matches("OK -> CRIT: value 97").count(),
        1,
        "{receiver_log}"
    );
    agent.stop();
    let agent_log = agent.log_text();
    assert_eq!(
        agent_log.matches("OK -> CRIT: value 97").count(),
        1,
        "{agent_log}"
    );
    assert_eq!(agent_log.matches("CRIT -> OK").count(), 1, "{agent_log}");
}

#[test]
fn a_trigger_on_an_unknown_service_or_with_a_bad_condition_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("receiver.toml");
    for (trigger, says) in [
        (
            "service = \"nope\"\nmetric = \"m\"\nwhen = \"last > 1\"",
            "no service \"nope\"",
        ),
        (
            "service = \"uptime\"\nmetric = \"m\"\nwhen = \"avg > 1\"",
            "needs a span",
        ),
        (
            "service = \"uptime\"\nmetric = \"m\"\nwhen = \"last > 1\"\nseverity = \"BAD\"",
            "WARN",
        ),
        (
            "service = \"uptime\"\nmetric = \"m\"\nwhen = \"last > 1\"\ntemplates = [\"x\"]",
            "no template \"x\"",
        ),
    ] {
        std::fs::write(
            &config,
            format!(
                "database = \"r.db\"\n[services.uptime]\nplugin = \"uptime\"\ninterval = \"1s\"\n[triggers.t1]\n{trigger}\n"
            ),
        )
        .unwrap();
        let out = Command::new(sandglass_tests::binary("receiver"))
            .args(["check", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("[triggers.t1]") && stderr.contains(says),
            "{says}: {stderr}"
        );
    }
}

#[test]
fn the_example_receiver_config_with_its_triggers_and_http_checks() {
    crate::common::build_plugins();
    let example = crate::common::root().join("examples/receiver.toml");
    let out = Command::new(sandglass_tests::binary("receiver"))
        .args(["check", "--config", example.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK, 1 hosts"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&example).unwrap();
    for key in ["[triggers.cpu_busy]", "[http]", "retention = ", "[notify"] {
        assert!(text.contains(key), "examples/receiver.toml documents {key}");
    }
}
