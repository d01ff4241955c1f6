//! Status page benchmark: a store with HOSTS simulated hosts (default
//! 10,000), written through the receiver's own store writer (the ops a
//! running receiver commits: the configured hosts and services, then
//! report batches), served by a real `receiver` process. Printed: the
//! answer time of the hosts API (first page, a filtered page, the last
//! page), of a host's page, of a 7-day plot of a service reporting every
//! 60 s, and the time until the hosts table is drawn in headless Chromium.
//! Times are wall-clock round trips over 127.0.0.1 (the server's time plus
//! a loopback hop), the median and the slowest of RUNS requests.
//! Run: `bash scripts/bench-web.sh` (HOSTS=10000 RUNS=20).

// The integration tests' HTTP client and browser driver; the benchmark
// uses only part of them.
#[allow(dead_code)]
#[path = "../integration/http_client.rs"]
mod http_client;
#[allow(dead_code)]
#[path = "../integration/webdriver.rs"]
mod webdriver;

use sandglass_core::report::{Cost, Level, MetricKind, Report, Sample, Status};
use sandglass_core::time::now_ms;
use sandglass_protocol::{Entry, ReportBatch};
use sandglass_receiver::liveness::{HostStatus, Tracker};
use sandglass_receiver::store::{self, Op, ScheduledHost, ScheduledService, SeriesCache, Store};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVICES: [&str; 5] = ["uptime", "cpu", "memory", "loadavg", "network"];
const WEEK_MS: u64 = 7 * 86_400_000;
/// The plotted service reports every minute for a week.
const PLOT_INTERVAL_MS: u64 = 60_000;
const CPUS: usize = 4;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn host_name(i: u64) -> String {
    format!("host{i:05}")
}

/// Every service every day (no host turns late during the run); hosts in
/// groups of 100.
fn config(dir: &Path, hosts: u64) -> std::path::PathBuf {
    let mut text = String::from(
        "database = \"receiver.db\"\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
    );
    for s in SERVICES {
        let _ = write!(
            text,
            "[services.{s}]\nplugin = \"{s}\"\ninterval = \"1d\"\n"
        );
    }
    let _ = writeln!(
        text,
        "[templates.base]\nservices = {SERVICES:?}\n[groups.rack]\ntemplates = [\"base\"]"
    );
    for i in 0..hosts {
        let _ = write!(
            text,
            "[hosts.{}]\ntoken = \"token-{i:05}\"\ngroups = [\"rack\"]\n",
            host_name(i)
        );
    }
    let path = dir.join("receiver.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn report(service: &str, time_ms: u64, level: Level, samples: Vec<Sample>) -> Report {
    Report {
        service: service.into(),
        plugin: service.into(),
        time_ms,
        status: Status {
            level,
            text: match level {
                Level::Crit => "usage 99.2% > 95%".into(),
                _ => "fine".into(),
            },
        },
        samples,
        cost: Cost::default(),
    }
}

fn cpu_samples(t: u64) -> Vec<Sample> {
    (0..CPUS)
        .map(|c| Sample {
            name: "cpu_utilization_percent".into(),
            value: 40.0 + 30.0 * ((t / 600_000 + c as u64) as f64 / 7.0).sin(),
            kind: MetricKind::Gauge,
            unit: "%".into(),
            labels: vec![("cpu".into(), format!("cpu{c}"))],
        })
        .collect()
}

/// Write the store: every host configured; most report every service now
/// (one in 50 with cpu CRIT: PROBLEM), one in 100 never (PENDING);
/// host00000's cpu has a week of reports, one a minute.
fn fill(database: &Path, hosts: u64) {
    let conn = store::open(database).unwrap();
    let (writer, thread) = Store::start(conn, Arc::new(Mutex::new(Tracker::default())));
    let now = now_ms();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let services = (0..hosts)
            .flat_map(|i| {
                SERVICES.iter().map(move |s| ScheduledService {
                    host: host_name(i),
                    service: s.to_string(),
                    plugin: s.to_string(),
                    sha256: None,
                    interval_ms: 86_400_000,
                })
            })
            .collect();
        let scheduled = (0..hosts)
            .map(|i| ScheduledHost {
                host: host_name(i),
                status: HostStatus::Pending,
                since_ms: now,
                reason: "waiting for the first reports".into(),
            })
            .collect();
        writer
            .send(Op::Scheduled {
                services,
                hosts: scheduled,
                time_ms: now,
            })
            .await;
        let mut answers = Vec::new();
        let mut send = async |host: String, seq: u64, reports: Vec<Report>| {
            let (done, answer) = tokio::sync::oneshot::channel();
            writer
                .send(Op::Batch {
                    host,
                    stream: 1,
                    batch: SeriesCache::default().prepare(ReportBatch {
                        seq,
                        entries: reports.into_iter().map(Entry::Report).collect(),
                        settled: 0,
                    }),
                    offset_ms: 0,
                    received_ms: now,
                    done,
                })
                .await;
            answers.push(answer);
        };
        for i in 0..hosts {
            if i % 100 == 2 {
                continue;
            }
            let time = now - 1000;
            let cpu_level = if i % 50 == 3 { Level::Crit } else { Level::Ok };
            let reports = SERVICES
                .iter()
                .map(|s| {
                    let level = if *s == "cpu" { cpu_level } else { Level::Ok };
                    report(s, time, level, cpu_samples(time))
                })
                .collect();
            send(host_name(i), 1_000_000, reports).await;
        }
        let week: Vec<u64> = (0..WEEK_MS / PLOT_INTERVAL_MS)
            .map(|k| now - WEEK_MS + 60_000 + k * PLOT_INTERVAL_MS)
            .collect();
        for (n, chunk) in week.chunks(500).enumerate() {
            let reports = chunk
                .iter()
                .map(|t| report("cpu", *t, Level::Ok, cpu_samples(*t)))
                .collect();
            send(host_name(0), 1 + n as u64 * 500, reports).await;
        }
        for answer in answers {
            answer.await.unwrap().unwrap();
        }
    });
    drop(writer);
    thread.join().unwrap();
}

/// Median and slowest of `runs` GETs of `path`, in ms; the answer must be 200.
fn time_get(http: &str, path: &str, runs: u64) -> (f64, f64) {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let answer = http_client::request(http, "GET", path, &[], "");
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(answer.code, 200, "{path}: {}", answer.body);
            ms
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[times.len() - 1])
}

fn main() {
    let hosts = env("HOSTS", 10_000);
    let runs = env("RUNS", 20);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), hosts);
    let start = Instant::now();
    fill(&dir.path().join("receiver.db"), hosts);
    println!(
        "store: {hosts} hosts written in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let mut child = Command::new(sandglass_tests::binary("receiver"))
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("receiver.log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    lines.next();
    let http = lines
        .next()
        .unwrap()
        .unwrap()
        .trim_start_matches("http on ")
        .to_owned();
    // The liveness clock judges every host within a few seconds.
    std::thread::sleep(Duration::from_secs(3));
    let counts = http_client::request(&http, "GET", "/api/hosts?per_page=1", &[], "").json();
    println!("hosts by status: {}", counts["counts"]);

    let last_page = hosts.div_ceil(50);
    for (what, path) in [
        ("hosts API, first page (50 rows)", "/api/hosts".to_owned()),
        ("hosts API, status=PROBLEM", "/api/hosts?status=PROBLEM".into()),
        ("hosts API, name filter", "/api/hosts?name=host0999".into()),
        ("hosts API, last page", format!("/api/hosts?page={last_page}")),
        ("host page API", "/api/hosts/host00000".into()),
        (
            "7-day plot, 1000 px, 4 series",
            "/api/series?host=host00000&service=cpu&metric=cpu_utilization_percent&since=7d&width=1000".into(),
        ),
        ("the page's HTML", "/".into()),
    ] {
        let (median, max) = time_get(&http, &path, runs);
        println!("{what:<36} median {median:6.1} ms   slowest {max:6.1} ms");
    }

    let profile = tempfile::tempdir().unwrap();
    let browser = webdriver::Browser::start(profile.path(), &dir.path().join("chromedriver.log"));
    let mut loads = Vec::new();
    for _ in 0..runs.min(10) {
        browser.goto("about:blank");
        browser.goto(&http);
        let drawn = "const m = performance.getEntriesByName('hosts-drawn'); return m.length ? m[0].startTime : null";
        let mut ms = serde_json::Value::Null;
        for _ in 0..300 {
            ms = browser.eval(drawn);
            if !ms.is_null() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        loads.push(ms.as_f64().expect("the hosts table was drawn"));
    }
    loads.sort_by(f64::total_cmp);
    println!(
        "{:<36} median {:6.1} ms   slowest {:6.1} ms",
        "Chromium: navigation to table drawn",
        loads[loads.len() / 2],
        loads[loads.len() - 1]
    );
    let _ = child.kill();
    let _ = child.wait();
}
