//! Simulated agents against one real `receiver` process: what the fleet and
//! plugin-transfer benchmarks share. An agent here is a protocol-level
//! client (real TCP on 127.0.0.1, the real framing and messages); host `hN`
//! authenticates with token `token-hN`, which [`hosts`] configures.

use anyhow::Context;
use futures_util::SinkExt;
use sandglass_core::report::{Cost, Level, MetricKind, Report, Sample, Status};
use sandglass_protocol::{
    DEFAULT_MAX_FRAME, Entry, FrameCodec, Hello, Message, ReportBatch, read_preamble,
    write_preamble,
};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// A simulated agent's connection after its Hello.
pub type Link = Framed<TcpStream, FrameCodec>;

/// A numeric setting from the environment, or its default.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A process's CPU time and memory, from /proc/<pid>.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// User + system time, ms.
    pub cpu_ms: u64,
    pub rss_kib: u64,
    /// Peak RSS (VmHWM).
    pub peak_kib: u64,
}

pub fn proc_usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may itself hold spaces.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        // USER_HZ is 100 on Linux.
        cpu_ms: ticks * 10,
        rss_kib: kib("VmRSS:"),
        peak_kib: kib("VmHWM:"),
    }
}

/// The `p` quantile of sorted microseconds, in milliseconds (NaN if empty).
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

/// `[hosts.hN]` for hosts h0..h`agents`, each with the one template.
pub fn hosts(agents: u64, template: &str) -> String {
    (0..agents)
        .map(|i| format!("[hosts.h{i}]\ntoken = \"token-h{i}\"\ntemplates = [\"{template}\"]\n"))
        .collect()
}

/// A running `receiver`, listening on a free port of 127.0.0.1.
pub struct Receiver {
    child: Child,
    pub address: String,
    pub pid: u32,
}

impl Receiver {
    /// Start `receiver run` with this config on a free port; returns once
    /// it listens.
    pub fn start(config: &Path) -> anyhow::Result<Receiver> {
        Receiver::start_at(config, "127.0.0.1:0")
    }

    /// Start `receiver run` with this config, listening on `listen`;
    /// returns once it listens. Its log level is SANDGLASS_LOG's, or
    /// "error" by default.
    pub fn start_at(config: &Path, listen: &str) -> anyhow::Result<Receiver> {
        // The simulated report times are old, so hosts turn UNREACHABLE:
        // expected here, and not worth a log line each unless asked for.
        let log = std::env::var("SANDGLASS_LOG").unwrap_or_else(|_| "error".into());
        let mut child = Command::new(sandglass_tests::binary("receiver"))
            .args(["run", "--config"])
            .arg(config)
            .args(["--listen", listen])
            .env("SANDGLASS_LOG", log)
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the receiver")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line)?;
        let Some(address) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            anyhow::bail!("the receiver did not start listening (said {line:?})");
        };
        let pid = child.id();
        Ok(Receiver {
            address: address.to_owned(),
            pid,
            child,
        })
    }

    /// SIGTERM, and wait until it has shut down (its store flushed).
    pub fn stop(self) {
        self.signal("TERM");
    }

    /// Send `signal` (a name `kill` knows: TERM, KILL) and wait until the
    /// process has exited.
    pub fn signal(mut self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid.to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Connect as host `host` (token `token-<host>`): preambles and Hello,
/// with no cached schedule and no plugins of its own.
pub async fn connect(address: &str, host: &str) -> anyhow::Result<Link> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    write_preamble(&mut stream).await?;
    read_preamble(&mut stream).await?;
    let mut link = Framed::new(stream, FrameCodec::new(DEFAULT_MAX_FRAME));
    link.send(Message::Hello(Hello {
        host_id: host.to_owned(),
        token: format!("token-{host}"),
        agent_version: "bench".into(),
        abi_version: "1.0.0".into(),
        time_ms: sandglass_core::time::now_ms(),
        schedule_revision: 0,
        plugins: vec![],
        stream: 1,
    }))
    .await?;
    Ok(link)
}

/// A batch numbered from `seq`: one report per service, each with
/// `samples` gauge samples, all run at `time_ms`.
pub fn batch(services: &[&str], samples: usize, seq: u64, time_ms: u64) -> ReportBatch {
    let reports = services.iter().map(|service| Report {
        service: service.to_string(),
        plugin: service.to_string(),
        time_ms,
        status: Status {
            level: Level::Ok,
            text: "fine".into(),
        },
        samples: (0..samples)
            .map(|i| Sample {
                name: format!("{service}_metric"),
                value: (seq * 7 + i as u64) as f64,
                kind: MetricKind::Gauge,
                unit: String::new(),
                labels: vec![("n".into(), i.to_string())],
            })
            .collect(),
        cost: Cost::default(),
    });
    ReportBatch {
        seq,
        entries: reports.map(Entry::Report).collect(),
        settled: 0,
    }
}
