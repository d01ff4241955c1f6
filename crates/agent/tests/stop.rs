//! `agent run` stops promptly on SIGTERM while no receiver answers: it is
//! not connected, so there is nothing to flush, and what it spooled stays
//! for the next start.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigterm_with_the_receiver_unreachable_ends_the_agent_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A receiver that takes connections and never answers: the agent waits
    // in its handshake, then backs off.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::write(
        &config,
        format!(
            "receiver = \"{}\"\ntoken = \"t\"\nplugin_dir = {:?}\nstate_dir = {:?}\n",
            silent.local_addr().unwrap(),
            dir.path().join("plugins"),
            dir.path().join("state"),
        ),
    )
    .unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("SANDGLASS_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Running and waiting for a Welcome that never comes.
    silent.set_nonblocking(true).unwrap();
    let connecting = Instant::now();
    let _held = loop {
        if let Ok((stream, _)) = silent.accept() {
            break stream;
        }
        assert!(
            connecting.elapsed() < Duration::from_secs(20),
            "the agent never connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGTERM) };
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let log: Vec<String> = BufReader::new(agent.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(log.iter().any(|l| l.contains("stopping with")), "{log:#?}");
}
