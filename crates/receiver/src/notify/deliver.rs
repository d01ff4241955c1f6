//! One attempt through one channel: an HTTP/1.1 POST (the receiver's own
//! plain-http client, [`crate::http_post`]) or a command with the message
//! on stdin. Each is bounded by the
//! channel's timeout; the outcome is a text either way, recorded as is.

use crate::config::{Channel, Target};
use crate::http_post;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Try once; `Ok` says what the other side answered, `Err` why it failed.
pub fn attempt(ch: &Channel, body: &str) -> Result<String, String> {
    match &ch.target {
        Target::Webhook { address, path, .. } => post(address, path, body, ch.timeout),
        Target::Command { argv } => run(argv, body, ch.timeout),
    }
}

/// POST `body` as JSON; a 2xx status is success.
fn post(address: &str, path: &str, body: &str, timeout: Duration) -> Result<String, String> {
    let headers = [("Content-Type", "application/json")];
    let answer = http_post::post(address, path, &headers, body.as_bytes(), timeout)?;
    if answer.success() {
        Ok(format!("HTTP {}", answer.status))
    } else {
        Err(answer.describe())
    }
}

/// Run `argv` with `body` on stdin; exit status 0 is success. Past the
/// timeout the command's whole process group is killed, so a script's
/// children do not outlive it.
fn run(argv: &[String], body: &str, timeout: Duration) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    // A writer thread: a command that does not read its stdin must not
    // block the notifier past the timeout.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let body = body.to_owned();
    std::thread::spawn(move || {
        let _ = stdin.write_all(body.as_bytes());
    });
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(format!("{status}")),
            Ok(Some(status)) => return Err(format!("{status}")),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                // SAFETY: kill(2) on the group the child leads; no memory involved.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "killed after the timeout of {}ms",
                    timeout.as_millis()
                ));
            }
            Err(e) => return Err(format!("cannot wait for {}: {e}", argv[0])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn command(script: &str, timeout_ms: u64) -> Channel {
        Channel {
            name: "c".into(),
            target: Target::Command {
                argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            },
            timeout: Duration::from_millis(timeout_ms),
            attempts: 1,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_command_gets_stdin_its_status_is_recorded_and_a_slow_one_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!("cat > {}", out.display());
        assert_eq!(
            attempt(&command(&script, 5_000), "{\"a\":1}"),
            Ok("exit status: 0".into())
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"a\":1}");
        assert_eq!(
            attempt(&command("exit 3", 5_000), ""),
            Err("exit status: 3".into())
        );
        let start = Instant::now();
        let e = attempt(&command("sleep 30", 300), "").unwrap_err();
        assert!(e.contains("killed after"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_webhook_succeeds_on_2xx_and_fails_on_refusal_and_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.1 500 Oops\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().unwrap();
                // The whole request (head and body) before answering.
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.ends_with(b"\r\n\r\n{}") {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "closed before the body");
                    request.extend_from_slice(&buf[..n]);
                }
                assert!(request.starts_with(b"POST /hook HTTP/1.1"));
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let hook = Channel {
            target: Target::Webhook {
                url: String::new(),
                address: address.clone(),
                path: "/hook".into(),
            },
            ..command("", 2_000)
        };
        assert_eq!(attempt(&hook, "{}"), Ok("HTTP 204".into()));
        assert!(attempt(&hook, "{}").unwrap_err().starts_with("HTTP 500"));
        server.join().unwrap();
        let e = attempt(&hook, "{}").unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
    }
}
