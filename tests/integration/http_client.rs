//! A plain HTTP/1.1 client over a TcpStream for the tests: the receiver's
//! listener and chromedriver both answer with a Content-Length and close
//! the connection when asked, which is all this needs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer: status code, headers (names in lower case), body.
pub struct Answer {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.code, self.body))
    }
}

/// `method path` on `base` (`http://host:port/` or `host:port`) with
/// `headers` and `body`; a failure panics, naming the request.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    try_request(base, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"))
}

/// As [`request`], with a failure to connect or a broken answer as an
/// error (for polling a server that is starting).
pub fn try_request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Answer> {
    let address = base.trim_start_matches("http://").trim_end_matches('/');
    let mut tcp = TcpStream::connect(address)?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    write!(tcp, "{head}\r\n{body}")?;
    let (head, body) = read_answer(&mut tcp)?;
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {head}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        code,
        headers,
        body,
    })
}

/// The head and the body of an answer: the body is Content-Length bytes
/// (chromedriver keeps the connection open after it), or all until close.
fn read_answer(tcp: &mut TcpStream) -> std::io::Result<(String, String)> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut wanted: Option<(usize, usize)> = None;
    loop {
        if let Some((start, length)) = wanted
            && data.len() >= start.saturating_add(length)
        {
            break;
        }
        let n = tcp.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&chunk[..n]);
        if wanted.is_none()
            && let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok());
            wanted = length
                .map(|length| (end + 4, length))
                .or(Some((end + 4, usize::MAX)));
        }
    }
    let text = String::from_utf8_lossy(&data).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let chunked = head
        .to_lowercase()
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((head.to_owned(), body))
}

/// A chunked body (VictoriaMetrics' export streams its answer so), whole.
fn dechunk(mut rest: &str) -> std::io::Result<String> {
    let broken = || std::io::Error::other("a broken chunked body");
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or_else(broken)?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| broken())?;
        if size == 0 {
            return Ok(body);
        }
        body.push_str(after.get(..size).ok_or_else(broken)?);
        rest = after.get(size + 2..).ok_or_else(broken)?;
    }
}

/// GET with a bearer token (if any): status code and body.
pub fn get(base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    try_get(base, path, token).unwrap_or_else(|e| panic!("GET {base}{path}: {e}"))
}

/// As [`get`], with a failure as an error.
pub fn try_get(base: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let answer = try_request(base, "GET", path, &headers, "")?;
    Ok((answer.code, answer.body))
}
