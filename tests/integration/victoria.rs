//! A real VictoriaMetrics (Debian package `victoria-metrics`, installed by
//! scripts/setup.sh) on 127.0.0.1 for the remote-write tests: started,
//! stopped and started again on the same data directory and port, and read
//! through its HTTP API.

use crate::fleet_support::wait_until;
use crate::http_client::try_get;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One series as `/api/v1/export` gives it: labels (with `__name__`) and
/// its (timestamp ms, value) points in time order.
pub type Series = BTreeMap<BTreeMap<String, String>, Vec<(u64, f64)>>;

pub struct Victoria {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub address: String,
    data: PathBuf,
    log: PathBuf,
    /// `-dedup.minScrapeInterval=1ms`: samples of one series with the same
    /// timestamp are kept once.
    dedup: bool,
}

impl Victoria {
    /// Start on a free port with its data under `dir`.
    pub fn start(dir: &Path, dedup: bool) -> Victoria {
        let port = sandglass_tests::reserved_port();
        let mut vm = Victoria {
            child: None,
            address: format!("127.0.0.1:{port}"),
            data: dir.join("victoria-data"),
            log: dir.join("victoria.log"),
            dedup,
        };
        vm.run();
        vm
    }

    /// The remote-write URL.
    pub fn write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.address)
    }

    fn run(&mut self) {
        let mut args = vec![
            format!("-httpListenAddr={}", self.address),
            format!("-storageDataPath={}", self.data.display()),
            "-retentionPeriod=100y".into(),
            // Fresh samples are visible to queries at once.
            "-search.latencyOffset=0s".into(),
            "-search.disableCache".into(),
        ];
        if self.dedup {
            args.push("-dedup.minScrapeInterval=1ms".into());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("victoria-metrics")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect(
                "victoria-metrics (Debian package victoria-metrics; scripts/setup.sh installs it)",
            );
        self.child = Some(child);
        let base = format!("http://{}", self.address);
        assert!(
            wait_until(Duration::from_secs(60), || {
                try_get(&base, "/health", None).is_ok_and(|(code, _)| code == 200)
            }),
            "VictoriaMetrics did not come up: {}",
            self.log_text()
        );
    }

    /// SIGTERM, and wait for it to exit (it flushes its data first).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let stopped = wait_until(Duration::from_secs(60), || {
                child.try_wait().unwrap().is_some()
            });
            if !stopped {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Start again on the same port and data.
    pub fn restart(&mut self) {
        self.run();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<String> {
        match try_get(&format!("http://{}", self.address), path, None) {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    /// Every sample of the series `selector` matches (e.g. `{host="a"}`),
    /// after making what VictoriaMetrics buffers searchable.
    pub fn export(&self, selector: &str) -> Series {
        self.get("/internal/force_flush");
        let body = self
            .get(&format!(
                "/api/v1/export?match[]={}&start=0",
                percent_encode(selector)
            ))
            .unwrap_or_default();
        let mut out = Series::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let row: Value = serde_json::from_str(line).unwrap();
            let labels = row["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let times = row["timestamps"].as_array().unwrap().iter();
            let values = row["values"].as_array().unwrap().iter();
            let points: &mut Vec<(u64, f64)> = out.entry(labels).or_default();
            points.extend(
                times
                    .zip(values)
                    .map(|(t, v)| (t.as_u64().unwrap(), number(v))),
            );
            points.sort_by_key(|(t, _)| *t);
        }
        out
    }

    /// `/api/v1/query?query=EXPR`: the result array (empty if none or on
    /// an error, which is in the returned text).
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        self.get("/internal/force_flush");
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let body = try_get(&format!("http://{}", self.address), &path, None)
            .map_err(|e| e.to_string())?
            .1;
        let answer: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(body);
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A value as export writes it: a number, or a string for NaN and infinities.
fn number(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Percent-encode everything but unreserved characters (RFC 3986).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
