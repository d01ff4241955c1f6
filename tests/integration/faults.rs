//! Fault injection, counted end to end. The only service is a plugin that
//! numbers its runs (fixture `misbehave`, mode `state-counter`): its kept
//! state says how many runs happened, the receiver's store says which run
//! numbers arrived, so every run lost or stored twice shows.
//!
//! `SANDGLASS_FAULT_KILLS` sets how many times the kill test kills each side
//! (default 2). `scripts/faults.sh` is the full fault matrix, with more
//! faults and longer runs than a test should take.

use crate::common::{build_plugins, fixture, reserved_address};
use crate::fleet_support::{Agent, Receiver, wait_until};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

const TOKEN: &str = "fault-token-0123";

/// One host `f` whose only service counts its runs every 100 ms; `pad`
/// makes each report that many bytes bigger. `settings` go on top.
fn model(settings: &str, pad: usize) -> String {
    format!(
        r#"{settings}
[services.counter]
plugin = "misbehave"
interval = "100ms"
params = {{ mode = "state-counter", pad = {pad} }}

[hosts.f]
token = "{TOKEN}"
services = ["counter"]
liveness_service = "counter"
"#
    )
}

/// A plugin directory holding the counting fixture.
fn plugin_dir(dir: &Path) -> PathBuf {
    build_plugins();
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(fixture("misbehave"), plugins.join("misbehave.wasm")).unwrap();
    plugins
}

/// Runs made, and what of them the receivers stored.
#[derive(Debug, PartialEq)]
struct Tally {
    runs: u64,
    stored: u64,
    lost: u64,
    duplicated: u64,
}

/// Compare the agent's run count with the run numbers stored.
fn tally(agent: &Agent, values: &[f64]) -> Tally {
    let runs: u64 = agent
        .state("counter")
        .expect("the counter ran")
        .trim()
        .parse()
        .unwrap();
    let mut numbers: Vec<u64> = values.iter().map(|v| *v as u64).collect();
    numbers.sort();
    let stored = numbers.len() as u64;
    numbers.dedup();
    assert!(
        numbers.last().is_none_or(|last| *last <= runs),
        "stored run {:?} beyond the {runs} runs made",
        numbers.last()
    );
    Tally {
        runs,
        stored,
        lost: runs - numbers.len() as u64,
        duplicated: stored - numbers.len() as u64,
    }
}

/// Wait until the counter has reported through `receiver` at least `n` runs.
fn wait_for_runs(receiver: &Receiver, n: usize) -> bool {
    wait_until(Duration::from_secs(30), || {
        receiver.values("f", "counter", "runs").len() >= n
    })
}

fn pause(min_ms: u64, max_ms: u64) {
    thread::sleep(Duration::from_millis(fastrand::u64(min_ms..=max_ms)));
}

#[test]
fn kill_9_of_receiver_and_agent_during_traffic_loses_and_duplicates_nothing() {
    let kills: usize = std::env::var("SANDGLASS_FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    let model = model("", 0);
    // Killed and started again on this address.
    let address = reserved_address();
    let mut receiver = Receiver::start(dir.path(), &address, &model);
    let start = |dir: &Path| Agent::start_with(dir, "f", TOKEN, &[&address], &plugins, "");
    let mut agent = start(dir.path());
    assert!(wait_for_runs(&receiver, 5), "{}", agent.log_text());
    let rss_before = agent.rss_kib();
    for round in 0..kills {
        pause(500, 1500);
        receiver.kill();
        pause(200, 1000);
        receiver = Receiver::start(dir.path(), &address, &model);
        pause(500, 1500);
        agent.kill();
        agent = start(dir.path());
        eprintln!(
            "round {}: receiver and agent killed and restarted",
            round + 1
        );
    }
    // Settle, then measure and stop (SIGTERM flushes).
    thread::sleep(Duration::from_secs(2));
    let rss_after = agent.rss_kib();
    assert!(agent.stop().success(), "{}", agent.log_text());
    let counted = tally(&agent, &receiver.values("f", "counter", "runs"));
    eprintln!(
        "faults: {kills} receiver kills, {kills} agent kills: runs {} stored {} lost {} duplicated {}; agent RSS {rss_before} KiB after start, {rss_after} KiB at the end",
        counted.runs, counted.stored, counted.lost, counted.duplicated
    );
    assert_eq!(counted.lost, 0, "{counted:?}\n{}", agent.log_text());
    // A report stored twice would come back with its own time: none may.
    let mut reports: Vec<(u64, u64)> = receiver
        .points("f", "counter")
        .iter()
        .filter(|p| p["name"] == "runs")
        .map(|p| {
            (
                p["time_ms"].as_u64().unwrap(),
                p["value"].as_f64().unwrap() as u64,
            )
        })
        .collect();
    let stored = reports.len();
    reports.sort();
    reports.dedup();
    assert_eq!(stored, reports.len(), "a report was stored twice");
    // A run number stored twice, at two times, is a run made again: the
    // agent keeps a run's state only once its report is in the spool
    // (services.rs, `Collected`), so an agent killed in between runs it
    // again from the old state, at least once and never skipped. At most
    // one per agent kill.
    assert!(
        counted.duplicated <= kills as u64,
        "{counted:?}\n{}",
        agent.log_text()
    );
    assert!(counted.runs >= 10, "{counted:?}");
    assert_eq!(receiver.lost("f"), 0);
}

/// A TCP proxy that cuts each of the first `cuts` connections after a
/// random number of bytes from the agent (so mostly in the middle of a
/// frame), then lets connections through.
struct CuttingProxy {
    address: String,
    cut: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl CuttingProxy {
    fn start(upstream: String, cuts: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (cut2, stop2) = (cut.clone(), stop.clone());
        thread::spawn(move || {
            let mut accepted = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let Ok((agent, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                agent.set_nonblocking(false).unwrap();
                let Ok(receiver) = TcpStream::connect(&upstream) else {
                    continue;
                };
                accepted += 1;
                let budget = (accepted <= cuts).then(|| fastrand::u64(100..4000));
                let (a2, r2) = (agent.try_clone().unwrap(), receiver.try_clone().unwrap());
                let cut = cut2.clone();
                thread::spawn(move || {
                    if pipe(agent, receiver, budget) {
                        cut.fetch_add(1, Ordering::Relaxed);
                    }
                });
                thread::spawn(move || pipe(r2, a2, None));
            }
        });
        CuttingProxy { address, cut, stop }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copy `from` to `to`; with a budget, stop after that many bytes and shut
/// both down (returns true then).
fn pipe(mut from: TcpStream, mut to: TcpStream, budget: Option<u64>) -> bool {
    let mut left = budget.unwrap_or(u64::MAX);
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let take = (n as u64).min(left) as usize;
        if to.write_all(&buf[..take]).is_err() {
            break;
        }
        left -= take as u64;
        if left == 0 {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return true;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    false
}

#[test]
fn connections_cut_in_the_middle_of_frames_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    // Bigger reports: frames of a few KiB, so a cut lands inside one.
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model("", 700));
    let cuts = 8;
    let proxy = CuttingProxy::start(receiver.address.clone(), cuts);
    let mut agent = Agent::start_with(dir.path(), "f", TOKEN, &[&proxy.address], &plugins, "");
    assert!(
        wait_until(Duration::from_secs(60), || proxy
            .cut
            .load(Ordering::Relaxed)
            >= cuts),
        "only {} cuts; {}",
        proxy.cut.load(Ordering::Relaxed),
        agent.log_text()
    );
    thread::sleep(Duration::from_secs(2));
    assert!(agent.stop().success());
    let counted = tally(&agent, &receiver.values("f", "counter", "runs"));
    assert_eq!(
        (counted.lost, counted.duplicated),
        (0, 0),
        "{counted:?}\n{}",
        agent.log_text()
    );
    assert!(
        receiver
            .log_text()
            .contains("connection closed in the middle of a frame"),
        "no cut fell inside a frame: {}",
        receiver.log_text()
    );
}

#[test]
fn a_full_spool_drops_the_oldest_and_the_receiver_shows_exactly_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    // ~1 KiB per report: a 64 KiB spool holds about 60 of them, 6 s of runs.
    let model = model("", 1000);
    // Stopped and started again on this address.
    let address = reserved_address();
    let mut receiver = Receiver::start(dir.path(), &address, &model);
    let mut agent = Agent::start_with(
        dir.path(),
        "f",
        TOKEN,
        &[&address],
        &plugins,
        "[spool]\nmax_size = \"64KiB\"\n",
    );
    assert!(wait_for_runs(&receiver, 3), "{}", agent.log_text());
    receiver.stop();
    // About 150 runs while the receiver is away: more than twice the spool.
    thread::sleep(Duration::from_secs(15));
    let receiver = Receiver::start(dir.path(), &address, &model);
    assert!(
        wait_until(Duration::from_secs(30), || receiver.lost("f") > 0),
        "no gap reported: {}",
        agent.log_text()
    );
    thread::sleep(Duration::from_secs(1));
    assert!(agent.stop().success());
    let values = receiver.values("f", "counter", "runs");
    let counted = tally(&agent, &values);
    assert_eq!(counted.duplicated, 0, "{counted:?}");
    assert!(
        counted.lost > 50,
        "the spool should have overflowed: {counted:?}"
    );
    // A run that failed (a deadline on a loaded machine) is a report with
    // no counter value: when the spool drops it, the gap counts one report
    // more than the counter values missing.
    let failed = agent.log_text().matches("run failed").count() as u64;
    let gap = receiver.lost("f");
    assert!(
        counted.lost <= gap && gap <= counted.lost + failed,
        "every missing run is accounted for by the gap records ({gap}, with {failed} failed runs): {counted:?}"
    );
    // What was dropped is one stretch of the oldest undelivered runs.
    let mut numbers: Vec<u64> = values.iter().map(|v| *v as u64).collect();
    numbers.sort();
    let holes = numbers.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert_eq!(holes, 1, "one contiguous gap: {numbers:?}");
    assert!(
        agent.log_text().contains("spool was full"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn the_agent_fails_over_to_the_second_receiver_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    let (first_dir, second_dir) = (dir.path().join("r1"), dir.path().join("r2"));
    std::fs::create_dir_all(&first_dir).unwrap();
    std::fs::create_dir_all(&second_dir).unwrap();
    let model = model("", 0);
    let second = Receiver::start(&second_dir, "127.0.0.1:0", &model);
    // The first receiver's address, not yet served.
    let first_address = reserved_address();
    let mut agent = Agent::start_with(
        dir.path(),
        "f",
        TOKEN,
        &[&first_address, &second.address],
        &plugins,
        "failback = \"1s\"\n",
    );
    assert!(wait_for_runs(&second, 5), "{}", agent.log_text());
    let first = Receiver::start(&first_dir, &first_address, &model);
    assert!(
        wait_for_runs(&first, 5),
        "no failback: {}",
        agent.log_text()
    );
    thread::sleep(Duration::from_secs(1));
    assert!(agent.stop().success());
    let on_first = first.values("f", "counter", "runs");
    let on_second = second.values("f", "counter", "runs");
    let counted = tally(&agent, &[on_first.clone(), on_second.clone()].concat());
    assert_eq!(
        (counted.lost, counted.duplicated),
        (0, 0),
        "{counted:?}; first {on_first:?}; second {on_second:?}"
    );
    // Every run went to one receiver: the earlier ones to the second, the
    // later ones to the first.
    let last_on_second = on_second.iter().cloned().fold(0.0, f64::max);
    assert!(
        on_first.iter().all(|v| *v > last_on_second),
        "{on_first:?} {on_second:?}"
    );
    assert!(
        agent.log_text().contains("moving back"),
        "{}",
        agent.log_text()
    );
}
