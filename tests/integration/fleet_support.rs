//! Running a real receiver and real agents on 127.0.0.1 for the fleet tests.

use crate::common::{build_plugins, root};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Poll `check` every 100 ms until it holds or `limit` passes; returns
/// whether it held. Bounded, so a broken build fails instead of hanging.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// A `receiver run` child process with its own config and database.
pub struct Receiver {
    child: Child,
    pub config: PathBuf,
    pub address: String,
    /// `http://ADDRESS/` when the model configures `[http]` (or `[web]`).
    pub http: Option<String>,
    pub log: PathBuf,
}

impl Receiver {
    /// Start on `listen` (e.g. "127.0.0.1:0") with `model` (the services,
    /// templates, groups and hosts part of receiver.toml).
    pub fn start(dir: &Path, listen: &str, model: &str) -> Receiver {
        Receiver::start_with_env(dir, listen, model, &[])
    }

    /// [`Receiver::start`] with environment variables set (test hooks).
    pub fn start_with_env(dir: &Path, listen: &str, model: &str, env: &[(&str, &str)]) -> Receiver {
        let config = dir.join("receiver.toml");
        std::fs::write(
            &config,
            format!("database = \"receiver.db\"\nlate_tolerance = \"2s\"\nschedule_refresh = \"60s\"\n{model}"),
        )
        .unwrap();
        let log = dir.join("receiver.log");
        let mut child = Command::new(sandglass_tests::binary("receiver"))
            .args([
                "run",
                "--config",
                config.to_str().unwrap(),
                "--listen",
                listen,
            ])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start receiver");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let http = (model.contains("[http]") || model.contains("[web]")).then(|| {
            let mut http = String::new();
            stdout.read_line(&mut http).unwrap();
            http.trim()
                .strip_prefix("http on ")
                .unwrap_or_else(|| panic!("receiver said {http:?}"))
                .to_owned()
        });
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "receiver said {line:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        Receiver {
            child,
            config,
            address,
            http,
            log,
        }
    }

    /// `receiver status --json`.
    pub fn status(&self) -> Value {
        self.json(&[
            "status",
            "--config",
            self.config.to_str().unwrap(),
            "--json",
        ])
    }

    /// A host's status string.
    pub fn host_status(&self, host: &str) -> String {
        let status = self.status();
        status
            .as_array()
            .and_then(|hosts| hosts.iter().find(|h| h["name"] == host))
            .map(|h| h["status"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// Every stored sample of one service of one host in the last hour, as
    /// `receiver query --json` prints them.
    pub fn points(&self, host: &str, service: &str) -> Vec<Value> {
        let points = self.json(&[
            "query",
            "--config",
            self.config.to_str().unwrap(),
            "--host",
            host,
            "--service",
            service,
            "--since",
            "1h",
            "--json",
        ]);
        points.as_array().unwrap().clone()
    }

    /// Report times (ms) of one service of one host, oldest first.
    pub fn report_times(&self, host: &str, service: &str) -> Vec<u64> {
        let mut times: Vec<u64> = self
            .points(host, service)
            .iter()
            .map(|p| p["time_ms"].as_u64().unwrap())
            .collect();
        times.dedup();
        times
    }

    /// The message of a `receiver query` that must fail with exit 1.
    pub fn query_refused(&self, args: &[&str]) -> String {
        let config = self.config.to_str().unwrap();
        self.refused(&[&["query", "--config", config], args].concat())
    }

    /// The message of `receiver ARGS`, which must fail with exit 1.
    pub fn refused(&self, args: &[&str]) -> String {
        let out = Command::new(sandglass_tests::binary("receiver"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "receiver {args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `receiver ARGS` (which must succeed), its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.text(args)).unwrap()
    }

    /// `receiver ARGS` (which must succeed), its stdout.
    pub fn text(&self, args: &[&str]) -> String {
        let out = Command::new(sandglass_tests::binary("receiver"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "receiver {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: whatever was not committed is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every stored value of one metric of one service, oldest first.
    pub fn values(&self, host: &str, service: &str, metric: &str) -> Vec<f64> {
        self.json(&[
            "query",
            "--config",
            self.config.to_str().unwrap(),
            "--host",
            host,
            "--service",
            service,
            "--metric",
            metric,
            "--since",
            "24h",
            "--json",
        ])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect()
    }

    /// Reports the host's agent said it lost (its gap records).
    pub fn lost(&self, host: &str) -> u64 {
        self.status()
            .as_array()
            .and_then(|hosts| hosts.iter().find(|h| h["name"] == host))
            .and_then(|h| h["lost"]["reports"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `agent run` child process.
pub struct Agent {
    child: Child,
    pub log: PathBuf,
    pub state_dir: PathBuf,
}

impl Agent {
    pub fn start(dir: &Path, host: &str, token: &str, receiver: &str) -> Agent {
        build_plugins();
        Agent::start_with(
            dir,
            host,
            token,
            &[receiver],
            &root().join("target/plugins"),
            "",
        )
    }

    /// An agent of `host` for `receivers` (in order), running plugins from
    /// `plugin_dir`. `extra` is appended to the config right after its
    /// `[connection]` keys: plain keys land in `[connection]`, and it may
    /// open tables of its own (`[spool]`, `[tls]`).
    pub fn start_with(
        dir: &Path,
        host: &str,
        token: &str,
        receivers: &[&str],
        plugin_dir: &Path,
        extra: &str,
    ) -> Agent {
        let config = dir.join(format!("{host}.toml"));
        let state_dir = dir.join(format!("{host}-state"));
        std::fs::write(
            &config,
            format!(
                "host_id = \"{host}\"\nreceiver = {receivers:?}\ntoken = \"{token}\"\n\
                 plugin_dir = \"{}\"\nstate_dir = \"{}\"\n\
                 [connection]\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\nbatch_delay = \"50ms\"\n{extra}",
                plugin_dir.display(),
                state_dir.display()
            ),
        )
        .unwrap();
        let log = dir.join(format!("{host}.log"));
        let child = Command::new(sandglass_tests::binary("agent"))
            .args(["run", "--config", config.to_str().unwrap()])
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .expect("start agent");
        Agent {
            child,
            log,
            state_dir,
        }
    }

    /// The plugin state kept for `service`, as text.
    pub fn state(&self, service: &str) -> Option<String> {
        let state = sandglass_agent::state_store::peek(&self.state_dir.join("state"), service)?;
        String::from_utf8(state).ok()
    }

    /// Resident memory of the agent process, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and wait for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        stop(&mut self.child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within 15 s.
fn stop(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().unwrap()
}

/// Gaps between consecutive report times, sorted, leaving out the first
/// gap: a service's first run happens at once (off its grid, and maybe after
/// compiling the plugin), the later ones on the interval grid.
pub fn sorted_gaps(times: &[u64]) -> Vec<u64> {
    let mut gaps: Vec<u64> = times.windows(2).skip(1).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    gaps
}

/// Resident memory of process `pid`, KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
