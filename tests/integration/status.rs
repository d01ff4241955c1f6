//! Status an operator can trust: two agents fighting over one host id are
//! named, the connected flag follows the connection that is really there,
//! and `receiver status` says when the receiver behind it is not running or
//! its configuration is broken.

use crate::fleet_support::{Receiver, wait_until};
use crate::protocol::{RawAgent, model};
use sandglass_protocol::{FaultCode, Message};
use std::process::Command;
use std::time::Duration;

/// Host `name` in `receiver status --json` (null until the receiver has
/// recorded its hosts).
fn host(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["name"] == name))
        .cloned()
        .unwrap_or_default()
}

fn welcomed(agent: &mut RawAgent) {
    agent.until(0, |m| matches!(m, Message::Welcome(_)).then_some(()));
}

#[test]
fn two_agents_with_one_host_id_are_named_and_the_connected_flag_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model(""));
    // Two agents take turns replacing each other, as two hosts configured
    // with the same host_id do.
    let mut current = RawAgent::hello(&receiver.address, "a", 0);
    welcomed(&mut current);
    for _ in 0..3 {
        let mut next = RawAgent::hello(&receiver.address, "a", 0);
        welcomed(&mut next);
        let replaced = current.until(0, |m| match m {
            Message::Error(f) => Some(f.code),
            _ => None,
        });
        assert_eq!(replaced, FaultCode::Replaced);
        // The replaced one's connection ends: the host is still connected,
        // through the one that replaced it.
        assert!(current.next().is_none(), "closed after Replaced");
        current = next;
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            let status = receiver.status();
            let a = host(&status, "a");
            a["status"] == "PROBLEM"
                && a["reason"]
                    .as_str()
                    .unwrap()
                    .contains("two agents use host_id a")
        }),
        "{}",
        receiver.status()
    );
    assert_eq!(host(&receiver.status(), "a")["connected"], true);
    assert!(receiver.log_text().contains("two agents use host_id a"));
}

fn status_command(config: &std::path::Path) -> (String, String, bool) {
    let out = Command::new(sandglass_tests::binary("receiver"))
        .args(["status", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn status_says_when_the_receiver_is_down_and_survives_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model(""));
    let mut agent = RawAgent::hello(&receiver.address, "a", 0);
    welcomed(&mut agent);
    let (live, _, ok) = status_command(&receiver.config);
    assert!(ok && !live.contains("not running"), "{live}");
    drop(agent);
    receiver.stop();
    let (table, note, ok) = status_command(&receiver.config);
    assert!(ok, "{note}");
    assert!(table.starts_with("the receiver is not running"), "{table}");
    assert!(note.contains("not live"), "{note}");
    // A broken edit of receiver.toml: status still shows the database it
    // names, and says what is wrong with the file.
    let config = std::fs::read_to_string(&receiver.config).unwrap();
    std::fs::write(&receiver.config, format!("{config}\nno_such_key = 1\n")).unwrap();
    let (table, warning, ok) = status_command(&receiver.config);
    assert!(ok, "{warning}");
    assert!(warning.contains("no_such_key"), "{warning}");
    assert!(table.contains("\na "), "{table}");
    // A database SQLite cannot read: the error names the file.
    let database = receiver.config.with_file_name("receiver.db");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
    }
    std::fs::write(&database, b"this is not a database, not even a little").unwrap();
    let (_, error, ok) = status_command(&receiver.config);
    assert!(!ok);
    assert!(error.contains(&database.display().to_string()), "{error}");
}
