//! One timer per service. The first run happens at once (data within
//! milliseconds of a start); later runs sit on the service's interval grid
//! shifted by a per-host splay, so a fleet does not fire in the same
//! millisecond. The splay is the host's, not the service's: a host's services
//! fire together (those whose intervals divide one another too), so one
//! wake-up of the agent runs them back to back on a warm worker and one frame
//! carries their reports — spread over the interval, each run paid for cold
//! caches, its own thread wake-up and its own frame and acknowledgement
//! (5,378 against 3,002 µs of agent CPU per cycle of five services in
//! `scripts/bench-peers.sh`). A service's runs never overlap, and stopping a
//! service lets its running plugin finish.

use super::services::{Collected, ServiceRunner};
use crate::config::Service;
use sandglass_core::report::{Level, Status};
use sandglass_core::text::Escaped;
use sandglass_core::time::now_ms;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Timer {
    service: Service,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The running set of service timers.
pub struct Scheduler {
    runner: Arc<ServiceRunner>,
    host_id: String,
    reports: mpsc::Sender<Collected>,
    /// Runs whose report the link has not taken yet (see `link::run`).
    in_progress: Arc<AtomicUsize>,
    timers: HashMap<String, Timer>,
}

impl Scheduler {
    pub fn new(
        runner: Arc<ServiceRunner>,
        host_id: String,
        reports: mpsc::Sender<Collected>,
        in_progress: Arc<AtomicUsize>,
    ) -> Self {
        Scheduler {
            runner,
            host_id,
            reports,
            in_progress,
            timers: HashMap::new(),
        }
    }

    /// Run exactly `services` from now on: unchanged ones keep their timer,
    /// changed ones restart, removed ones stop.
    pub fn apply(&mut self, services: Vec<Service>) {
        let wanted: HashMap<String, Service> =
            services.into_iter().map(|s| (s.name.clone(), s)).collect();
        self.timers.retain(|name, timer| {
            let keep = wanted.get(name) == Some(&timer.service);
            if !keep {
                timer.cancel.cancel();
            }
            keep
        });
        for (name, service) in wanted {
            if self.timers.contains_key(&name) {
                continue;
            }
            let cancel = CancellationToken::new();
            let splay = splay(&self.host_id, service.interval);
            let task = tokio::spawn(service_timer(
                self.runner.clone(),
                service.clone(),
                splay,
                self.reports.clone(),
                self.in_progress.clone(),
                cancel.clone(),
            ));
            self.timers.insert(
                name,
                Timer {
                    service,
                    cancel,
                    task,
                },
            );
        }
    }

    /// Names and intervals of the services running now.
    pub fn running(&self) -> Vec<(String, Duration)> {
        let mut names: Vec<_> = self
            .timers
            .values()
            .map(|t| (t.service.name.clone(), t.service.interval))
            .collect();
        names.sort();
        names
    }

    /// Stop every timer and wait for running plugins to finish.
    pub async fn stop(self) {
        for timer in self.timers.values() {
            timer.cancel.cancel();
        }
        for (_, timer) in self.timers {
            let _ = timer.task.await;
        }
    }
}

/// Where in an interval this host runs its services: stable per host, spread
/// evenly across hosts. One hash for every interval, so grids whose intervals
/// divide one another meet (`h % 10_000 % 1_000 == h % 1_000`): a 10 s
/// service fires with the 1 s ones.
fn splay(host_id: &str, interval: Duration) -> u64 {
    let mut h = DefaultHasher::new();
    host_id.hash(&mut h);
    h.finish() % (interval.as_millis() as u64).max(1)
}

/// Milliseconds from `now_ms` to the next point of the grid
/// `k * interval + splay` (Unix ms).
fn until_next(now_ms: u64, interval_ms: u64, splay_ms: u64) -> u64 {
    let phase = (now_ms + interval_ms - splay_ms % interval_ms) % interval_ms;
    interval_ms - phase
}

/// Say in the log when the level a service reports changes: once per
/// change, a warning when it becomes CRIT or UNKNOWN.
fn log_level_change(service: &str, level: &mut Level, status: &Status) {
    let old = std::mem::replace(level, status.level);
    if old == status.level {
        return;
    }
    let (old, new, text) = (old.as_str(), status.level.as_str(), Escaped(&status.text));
    if status.level >= Level::Crit {
        tracing::warn!(service, "{old} -> {new}: {text}");
    } else {
        tracing::info!(service, "{old} -> {new}: {text}");
    }
}

async fn service_timer(
    runner: Arc<ServiceRunner>,
    service: Service,
    splay_ms: u64,
    reports: mpsc::Sender<Collected>,
    in_progress: Arc<AtomicUsize>,
    cancel: CancellationToken,
) {
    let interval_ms = service.interval.as_millis() as u64;
    let service = Arc::new(service);
    let mut level = Level::Ok;
    loop {
        // Counted down by the link when it takes the report.
        in_progress.fetch_add(1, Ordering::SeqCst);
        let report = runner.run_async(&service).await;
        log_level_change(&service.name, &mut level, &report.report.status);
        if reports.send(report).await.is_err() {
            return;
        }
        let wait = until_next(now_ms(), interval_ms, splay_ms);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_is_shifted_by_the_splay() {
        assert_eq!(until_next(10_000, 1_000, 0), 1_000);
        assert_eq!(until_next(10_250, 1_000, 300), 50);
        assert_eq!(until_next(10_300, 1_000, 300), 1_000);
        assert_eq!(until_next(10_301, 1_000, 300), 999);
        let a = splay("web-01", Duration::from_secs(10));
        assert!(a < 10_000);
        assert_eq!(a, splay("web-01", Duration::from_secs(10)));
        let spread: std::collections::HashSet<u64> = (0..50)
            .map(|i| splay(&format!("host-{i}"), Duration::from_secs(10)) / 1000)
            .collect();
        assert!(
            spread.len() >= 6,
            "50 hosts fall in {} of 10 seconds",
            spread.len()
        );
    }

    #[test]
    fn a_host_fires_its_services_together() {
        for i in 0..50 {
            let host = format!("host-{i}");
            let now = 1_700_000_000_000 + i * 7_919;
            let one = until_next(now, 1_000, splay(&host, Duration::from_secs(1)));
            let ten = until_next(now, 10_000, splay(&host, Duration::from_secs(10)));
            // Every 10 s point of the host's grid is one of its 1 s points.
            assert_eq!(
                ten % 1_000,
                one % 1_000,
                "{host}: 1 s due in {one}, 10 s in {ten}"
            );
        }
    }
}
