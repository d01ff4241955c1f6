//! Hostile network input at the receiver: a connection that trickles its
//! handshake one byte a second is dropped at the handshake timeout, and
//! thousands of idle connections do not keep a real agent out.

use crate::fleet_support::{Agent, Receiver, rss_kib, wait_until};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const TOKEN: &str = "hostile-token-0123";

fn model() -> String {
    format!(
        r#"max_connections = 5000
max_handshakes = 100
handshake_timeout = "2s"
[services.uptime]
plugin = "uptime"
interval = "1s"
[hosts.real]
token = "{TOKEN}"
services = ["uptime"]
"#
    )
}

/// Send `bytes` one per second; true once the receiver has closed the
/// connection (a write fails or a read sees the end).
fn trickle_until_closed(address: &str, bytes: &[u8], limit: Duration) -> bool {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let start = Instant::now();
    let mut sent = 0;
    let mut buf = [0u8; 64];
    while start.elapsed() < limit {
        if sent < bytes.len() && stream.write_all(&bytes[sent..sent + 1]).is_err() {
            return true;
        }
        sent += 1;
        match stream.read(&mut buf) {
            // The receiver's preamble comes once ours is complete; 0 is the end.
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn slow_and_idle_connections_are_dropped_and_do_not_keep_agents_out() {
    sandglass_daemon::raise_open_files_limit();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model());
    // Slow loris: a valid preamble and Hello prefix, one byte a second.
    let slow = b"SGLS\x00\x01\x00\x00\x00\x00\x00\x40".repeat(4);
    let start = Instant::now();
    assert!(
        trickle_until_closed(&receiver.address, &slow, Duration::from_secs(12)),
        "a one-byte-a-second connection was kept for 12 s"
    );
    let kept = start.elapsed();
    assert!(
        kept >= Duration::from_millis(1500),
        "dropped after {kept:?}, before the handshake timeout: the trickle was not the reason"
    );
    // Thousands of connections that never say anything.
    let idle: Vec<TcpStream> = (0..2000)
        .filter_map(|_| TcpStream::connect(&receiver.address).ok())
        .collect();
    assert!(
        idle.len() >= 1900,
        "only {} idle connections opened",
        idle.len()
    );
    let agent = Agent::start(dir.path(), "real", TOKEN, &receiver.address);
    assert!(
        wait_until(Duration::from_secs(30), || receiver.host_status("real")
            == "OK"),
        "the real agent was kept out: {}\n{}",
        agent.log_text(),
        receiver.log_text()
    );
    // Every idle connection is dropped: evicted for newer connections, or
    // (no newcomer needed its room: young handshakes are admitted beyond
    // max_handshakes) at the handshake timeout.
    let dropped = || {
        let log = receiver.log_text();
        log.matches("(max_handshakes)").count()
            + log.matches("no Hello within handshake_timeout").count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || dropped() > idle.len()),
        "{} of {} idle connections dropped: {}",
        dropped(),
        idle.len(),
        receiver.log_text()
    );
    eprintln!(
        "receiver RSS with {} idle connections opened: {} KiB",
        idle.len(),
        rss_kib(receiver.pid())
    );
    drop(idle);
}
