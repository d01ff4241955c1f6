//! One HTTP/1.1 POST over plain TCP, written by hand: a plain-http client
//! is a few dozen lines, and the receiver keeps its tree small. Webhook
//! notifications (`notify::deliver`) and remote write (`remote_write`) both
//! send through it. No TLS: an `https://` endpoint needs a local relay.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Most of an answer's body kept: enough for an error message.
const MAX_BODY: usize = 64 << 10;

/// What the other side answered.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// The body (or its first 64 KiB), lossily as text, for messages.
    pub body: String,
}

impl Answer {
    pub fn success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `HTTP 500: <first line of the body>`, for logs and records.
    pub fn describe(&self) -> String {
        let first = self.body.lines().next().unwrap_or("").trim();
        if first.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {}", self.status, first)
        }
    }
}

/// POST `body` to `http://address/path` with `headers` (each `Name: value`
/// pair besides Host, Content-Length and Connection), all within `timeout`.
/// `Err` says why no answer came (resolution, connection, timeout, not HTTP).
pub fn post(
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, String> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(address, deadline)?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: sandglass-receiver\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    // Head and body in one write: a server that answers after reading the
    // head alone and closes must not find the body unread (its kernel would
    // reset the connection, and the answer would be lost).
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    let io = |e: std::io::Error| format!("{address}: {e}");
    stream
        .set_write_timeout(Some(left(deadline)?))
        .map_err(io)?;
    stream.write_all(&request).map_err(io)?;
    read_answer(&mut stream, address, deadline)
}

fn connect(address: &str, deadline: Instant) -> Result<TcpStream, String> {
    let addrs: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address}: {e}"))?
        .collect();
    let mut last = format!("{address} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left(deadline)?) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// Read the status line, the headers and as much of the body as
/// Content-Length says (or until the server closes). A server that keeps
/// the connection open past a complete head still gives its status.
fn read_answer(stream: &mut TcpStream, address: &str, deadline: Instant) -> Result<Answer, String> {
    let io = |e: std::io::Error| format!("{address}: {e}");
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let mut head_end = None;
    loop {
        let wanted = head_end.map(|end| end + content_length(&data[..end]).unwrap_or(MAX_BODY));
        if wanted.is_some_and(|w| data.len() >= w) || data.len() >= MAX_BODY {
            break;
        }
        let Ok(wait) = left(deadline) else {
            if head_end.is_some() {
                break;
            }
            return Err(format!("{address}: timed out"));
        };
        stream.set_read_timeout(Some(wait)).map_err(io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(_) if head_end.is_some() => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("{address}: timed out"));
            }
            Err(e) => return Err(io(e)),
        }
        if head_end.is_none() {
            head_end = data
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p + 4);
        }
    }
    let text = String::from_utf8_lossy(&data);
    let line = text.lines().next().unwrap_or("");
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("{address}: not an HTTP answer: {:?}", line.trim()))?;
    let body = head_end.map_or(String::new(), |end| {
        String::from_utf8_lossy(&data[end.min(data.len())..]).into_owned()
    });
    Ok(Answer { status, body })
}

/// The Content-Length header of a response head, if any.
fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head).lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

/// Time left before `deadline`, or the timeout as an error.
fn left(deadline: Instant) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "timed out".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server answering each connection with the next of `answers`,
    /// handing back what it was sent.
    fn serve(answers: Vec<&'static str>) -> (String, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let mut got = Vec::new();
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                s.write_all(answer.as_bytes()).unwrap();
                got.push(request);
                // Keep the connection open a little: the client must stop
                // at Content-Length, not wait for the close.
                std::thread::sleep(Duration::from_millis(200));
            }
            got
        });
        (address, server)
    }

    #[test]
    fn a_binary_body_and_headers_go_out_and_status_and_body_come_back() {
        let (address, server) = serve(vec![
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\n\r\nbad label\nx",
        ]);
        let body = [0u8, 159, 146, 150];
        let headers = [("Content-Encoding", "snappy"), ("X-Test", "1")];
        let timeout = Duration::from_secs(5);
        let answer = post(&address, "/write", &headers, &body, timeout).unwrap();
        assert!(answer.success() && answer.status == 204, "{answer:?}");
        let answer = post(&address, "/write", &headers, &body, timeout).unwrap();
        assert_eq!(answer.status, 400);
        assert_eq!(answer.describe(), "HTTP 400: bad label");
        let got = server.join().unwrap();
        let first = &got[0];
        let head = String::from_utf8_lossy(first);
        assert!(head.starts_with("POST /write HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Encoding: snappy\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Length: 4\r\n"), "{head}");
        assert!(first.ends_with(&body), "{first:?}");
        let e = post(&address, "/write", &[], b"", timeout).unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
    }

    #[test]
    fn a_server_that_never_answers_times_out_and_garbage_is_named() {
        let (address, server) = serve(vec!["SSH-2.0-OpenSSH\r\n\r\n"]);
        let e = post(&address, "/", &[], b"x", Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("not an HTTP answer"), "{e}");
        server.join().unwrap();
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = silent.local_addr().unwrap().to_string();
        let start = Instant::now();
        let e = post(&address, "/", &[], b"x", Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
