//! Liveness (seed 003's rule): a service is late when nothing arrived within
//! `interval + late_tolerance`; the host is UNREACHABLE when its liveness
//! service is late, PROBLEM when another service is late or never reported
//! ("no data at all"), when a service's newest report says WARN, CRIT or
//! UNKNOWN (a plugin that fails or is refused), or when two agents use its
//! host id; otherwise OK. A host whose services have not yet had the time to
//! report is PENDING; one whose agent left for another receiver is MOVED
//! until it comes back.
//!
//! A receiver that has just started has received nothing yet: no service
//! becomes late before one interval plus tolerance from the start (a
//! service that was late before the restart stays late).
//!
//! "Arrived" is judged on the report's own (skew-corrected) time, and only
//! the newest time counts: re-sent old reports cannot make a status flap.

mod state;

use super::config::Model;
use crate::triggers::{Engine, Firing, Trigger};
use sandglass_core::report::{Level, Sample};
pub use state::{Change, HostStatus, ServiceState, Subject, UnknownState};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug)]
struct ServiceTrack {
    interval_ms: u64,
    /// When the receiver started expecting this service.
    scheduled_since_ms: u64,
    /// Newest report time seen.
    last_ms: Option<u64>,
    /// Why the service is late, if it is.
    late: Option<String>,
    /// Level and text of the newest report.
    level: Level,
    text: String,
}

#[derive(Clone, Debug)]
struct HostTrack {
    status: HostStatus,
    since_ms: u64,
    reason: String,
    liveness_service: String,
    services: BTreeMap<String, ServiceTrack>,
    /// The agent left for another receiver (until it connects here again).
    moved: bool,
    /// A warning about the host itself (a duplicated host id) and until
    /// when it stands.
    warning: Option<(String, u64)>,
    /// The triggers on its services, by service.
    triggers: BTreeMap<String, Vec<Arc<Trigger>>>,
}

/// What the receiver knows, per host and service, to judge liveness.
#[derive(Debug, Default)]
pub struct Tracker {
    hosts: BTreeMap<String, HostTrack>,
    /// When this receiver started: the start of every service's grace.
    started_ms: u64,
    /// Every triggered series' state.
    triggers: Engine,
    /// Level and trigger changes seen as reports were stored, recorded
    /// with the next evaluation.
    pending: Vec<Change>,
}

/// How long a warning about a host stands after it was last given.
const WARNING_STANDS_MS: u64 = 600_000;

/// What the store remembers of a service across restarts.
pub struct Remembered {
    pub host: String,
    pub service: String,
    pub interval_ms: u64,
    pub scheduled_since_ms: Option<u64>,
    pub last_ms: Option<u64>,
    pub late: Option<String>,
    pub level: Option<Level>,
    pub text: Option<String>,
}

/// What the store remembers of a host across restarts.
pub struct RememberedHost {
    pub host: String,
    pub status: HostStatus,
    pub since_ms: u64,
    pub reason: String,
}

impl Tracker {
    /// Follow the configuration: hosts and services come and go, intervals
    /// change. Newly expected services get their grace period from `now_ms`.
    pub fn apply_model(&mut self, model: &Model, now_ms: u64) {
        self.hosts.retain(|name, _| model.hosts.contains_key(name));
        for (name, host) in &model.hosts {
            let track = self.hosts.entry(name.clone()).or_insert_with(|| HostTrack {
                status: HostStatus::Pending,
                since_ms: now_ms,
                reason: "waiting for the first reports".into(),
                liveness_service: host.liveness_service.clone(),
                services: BTreeMap::new(),
                moved: false,
                warning: None,
                triggers: BTreeMap::new(),
            });
            track.liveness_service = host.liveness_service.clone();
            track.triggers = host.triggers.clone();
            let old = std::mem::take(&mut track.services);
            for s in &host.schedule.services {
                let mut service = old.get(&s.name).cloned().unwrap_or(ServiceTrack {
                    interval_ms: s.interval_ms,
                    scheduled_since_ms: now_ms,
                    last_ms: None,
                    late: None,
                    level: Level::Ok,
                    text: String::new(),
                });
                if service.interval_ms != s.interval_ms {
                    // A new interval counts from now: an agent may need up
                    // to one old interval to pick the change up.
                    service.scheduled_since_ms = service.scheduled_since_ms.max(now_ms);
                    service.interval_ms = s.interval_ms;
                }
                track.services.insert(s.name.clone(), service);
            }
        }
        // A trigger that was removed, moved or changed starts afresh.
        let hosts = &self.hosts;
        self.triggers.retain(|host, service, trigger| {
            hosts
                .get(host)
                .and_then(|h| h.triggers.get(service))
                .is_some_and(|ts| ts.iter().any(|t| **t == *trigger))
        });
    }

    /// This receiver starts at `now_ms`: services get their grace from it.
    pub fn start(&mut self, now_ms: u64) {
        self.started_ms = now_ms;
    }

    /// Restore what the store remembers (call before `apply_model`).
    pub fn remember(&mut self, hosts: Vec<RememberedHost>, services: Vec<Remembered>) {
        for h in hosts {
            self.hosts.insert(
                h.host,
                HostTrack {
                    status: h.status,
                    since_ms: h.since_ms,
                    reason: h.reason,
                    liveness_service: String::new(),
                    services: BTreeMap::new(),
                    moved: h.status == HostStatus::Moved,
                    warning: None,
                    triggers: BTreeMap::new(),
                },
            );
        }
        for s in services {
            if let Some(host) = self.hosts.get_mut(&s.host) {
                host.services.insert(
                    s.service,
                    ServiceTrack {
                        interval_ms: s.interval_ms,
                        scheduled_since_ms: s.scheduled_since_ms.unwrap_or(0),
                        last_ms: s.last_ms,
                        late: s.late,
                        level: s.level.unwrap_or(Level::Ok),
                        text: s.text.unwrap_or_default(),
                    },
                );
            }
        }
    }

    /// The newest report for `service` of `host` in a stored batch, taken
    /// at `time_ms`: a change of the level it reports is an event.
    pub fn seen(&mut self, host: &str, service: &str, time_ms: u64, level: Level, text: &str) {
        if let Some(s) = self
            .hosts
            .get_mut(host)
            .and_then(|h| h.services.get_mut(service))
            && s.last_ms.is_none_or(|last| time_ms >= last)
        {
            if level != s.level {
                self.pending.push(Change {
                    host: host.to_owned(),
                    subject: Subject::Level {
                        name: service.to_owned(),
                        old: s.level,
                        new: level,
                    },
                    reason: text.to_owned(),
                    time_ms,
                });
            }
            s.last_ms = Some(time_ms);
            s.level = level;
            text.clone_into(&mut s.text);
        }
    }

    /// Whether triggers judge the reports of this service (only then does
    /// [`Tracker::observe`] need its samples).
    pub fn judges(&self, host: &str, service: &str) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|h| h.triggers.contains_key(service))
    }

    /// Judge a stored report's samples against the triggers on its service.
    pub fn observe(&mut self, host: &str, service: &str, samples: &[Sample], time_ms: u64) {
        let Some(triggers) = self.hosts.get(host).and_then(|h| h.triggers.get(service)) else {
            return;
        };
        let transitions = self
            .triggers
            .observe(host, service, triggers, samples, time_ms);
        self.pending
            .extend(transitions.into_iter().map(Change::from));
    }

    /// The host's agent connected to this receiver.
    pub fn connected(&mut self, host: &str) {
        if let Some(h) = self.hosts.get_mut(host) {
            h.moved = false;
        }
    }

    /// The host's agent left for another receiver: the host is MOVED (not
    /// judged) until it connects here again. Returns the change to record.
    pub fn moved(&mut self, host: &str, reason: String, now_ms: u64) -> Option<Change> {
        let h = self.hosts.get_mut(host)?;
        h.moved = true;
        let old = std::mem::replace(&mut h.status, HostStatus::Moved);
        h.since_ms = now_ms;
        h.reason = reason.clone();
        Some(Change {
            host: host.to_owned(),
            subject: Subject::Host {
                old,
                new: HostStatus::Moved,
            },
            reason,
            time_ms: now_ms,
        })
    }

    /// Something is wrong with the host itself (two agents use its id).
    pub fn warn(&mut self, host: &str, warning: String, now_ms: u64) {
        if let Some(h) = self.hosts.get_mut(host) {
            h.warning = Some((warning, now_ms + WARNING_STANDS_MS));
        }
    }

    /// Judge every host at `now_ms`; returns the changes (services first,
    /// then their host).
    pub fn evaluate(&mut self, now_ms: u64, tolerance_ms: u64) -> Vec<Change> {
        let silent = self.triggers.tick(now_ms);
        self.pending.extend(silent.into_iter().map(Change::from));
        let mut changes = std::mem::take(&mut self.pending);
        let started_ms = self.started_ms;
        for (host_name, host) in &mut self.hosts {
            if host.moved {
                continue;
            }
            let mut late = Vec::new();
            for (name, s) in &mut host.services {
                let now_late = lateness(s, now_ms, tolerance_ms, started_ms);
                if now_late.is_some() != s.late.is_some() {
                    changes.push(Change {
                        host: host_name.clone(),
                        subject: Subject::Service {
                            name: name.clone(),
                            old: ServiceState::of(s.late.is_some()),
                            new: ServiceState::of(now_late.is_some()),
                        },
                        reason: now_late
                            .clone()
                            .unwrap_or_else(|| "reports arrive again".into()),
                        time_ms: now_ms,
                    });
                }
                s.late = now_late.clone();
                if let Some(why) = now_late {
                    late.push((name.clone(), why));
                }
            }
            let firing = self.triggers.firing(host_name);
            let (status, reason) = judge_host(host, &late, &firing, now_ms);
            if status != host.status || (status != HostStatus::Ok && reason != host.reason) {
                if status != host.status {
                    changes.push(Change {
                        host: host_name.clone(),
                        subject: Subject::Host {
                            old: host.status,
                            new: status,
                        },
                        reason: reason.clone(),
                        time_ms: now_ms,
                    });
                    host.since_ms = now_ms;
                }
                host.status = status;
                host.reason = reason;
            }
        }
        changes
    }

    /// A host's status, since when, and why.
    pub fn host(&self, host: &str) -> Option<(HostStatus, u64, &str)> {
        self.hosts
            .get(host)
            .map(|h| (h.status, h.since_ms, h.reason.as_str()))
    }

    /// The triggers firing on `host` now, worst first.
    pub fn firing(&self, host: &str) -> Vec<Firing> {
        self.triggers.firing(host)
    }
}

/// Why service `s` is late at `now_ms`, if it is. Within a started
/// receiver's grace a service is late only if it already was.
fn lateness(s: &ServiceTrack, now_ms: u64, tolerance_ms: u64, started_ms: u64) -> Option<String> {
    let allowed = s.interval_ms + tolerance_ms;
    let reference = s.last_ms.unwrap_or(0).max(s.scheduled_since_ms);
    let overdue = now_ms.saturating_sub(reference) > allowed;
    let in_grace = now_ms.saturating_sub(started_ms) <= allowed;
    if !overdue || (in_grace && s.late.is_none()) {
        return None;
    }
    Some(match s.last_ms {
        None => "no data at all".to_owned(),
        Some(last) => format!(
            "last report {} ago (interval {} + tolerance {})",
            seconds(now_ms.saturating_sub(last)),
            seconds(s.interval_ms),
            seconds(tolerance_ms)
        ),
    })
}

/// A host's status and its reason, from its late services, the levels its
/// services report, its firing triggers, and warnings about the host itself.
fn judge_host(
    host: &HostTrack,
    late: &[(String, String)],
    firing: &[Firing],
    now_ms: u64,
) -> (HostStatus, String) {
    if let Some((name, why)) = late.iter().find(|(name, _)| *name == host.liveness_service) {
        return (
            HostStatus::Unreachable,
            format!("liveness service {name}: {why}"),
        );
    }
    let mut problems: Vec<String> = late.iter().map(|(n, w)| format!("{n}: {w}")).collect();
    for (name, s) in &host.services {
        if s.late.is_none() && s.last_ms.is_some() && s.level != Level::Ok {
            problems.push(format!("{name} {} {:?}", s.level.as_str(), s.text));
        }
    }
    for f in firing {
        problems.push(format!(
            "{} trigger {} {} {:?}",
            f.service,
            f.trigger,
            f.severity.as_str(),
            f.message
        ));
    }
    if let Some((warning, until)) = &host.warning
        && now_ms < *until
    {
        problems.push(warning.clone());
    }
    if !problems.is_empty() {
        (HostStatus::Problem, problems.join("; "))
    } else if host
        .services
        .get(&host.liveness_service)
        .is_some_and(|s| s.last_ms.is_none())
    {
        (HostStatus::Pending, "waiting for the first reports".into())
    } else {
        (HostStatus::Ok, "all services report in time".into())
    }
}

fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(uptime_interval: &str) -> Model {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receiver.toml");
        std::fs::write(
            &path,
            format!(
                "database = \"db\"\n\
                 [services.uptime]\nplugin = \"uptime\"\ninterval = \"{uptime_interval}\"\n\
                 [services.cpu]\nplugin = \"cpu\"\ninterval = \"10s\"\n\
                 [hosts.h1]\ntoken = \"0123456789\"\nservices = [\"uptime\", \"cpu\"]\n"
            ),
        )
        .unwrap();
        Model::load(&path).unwrap()
    }

    const TOL: u64 = 5_000;

    impl Tracker {
        fn seen_ok(&mut self, host: &str, service: &str, time_ms: u64) {
            self.seen(host, service, time_ms, Level::Ok, "fine");
        }
    }

    fn status(t: &Tracker) -> HostStatus {
        t.host("h1").unwrap().0
    }

    #[test]
    fn pending_ok_problem_unreachable_and_back() {
        let mut t = Tracker::default();
        t.apply_model(&model("10s"), 0);
        assert!(t.evaluate(1_000, TOL).is_empty());
        assert_eq!(status(&t), HostStatus::Pending);
        t.seen_ok("h1", "uptime", 1_000);
        t.evaluate(1_500, TOL);
        assert_eq!(status(&t), HostStatus::Ok, "cpu still within its grace");
        // cpu never reports: after 10s + 5s it is "no data at all".
        t.seen_ok("h1", "uptime", 12_000);
        let changes = t.evaluate(15_001, TOL);
        assert_eq!(status(&t), HostStatus::Problem);
        assert!(t.host("h1").unwrap().2.contains("cpu: no data at all"));
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(changes[0].service(), Some("cpu"));
        assert_eq!(
            changes[1].host_statuses(),
            Some((HostStatus::Ok, HostStatus::Problem))
        );
        // uptime late: UNREACHABLE, and the reason names it.
        let changes = t.evaluate(27_001, TOL);
        assert_eq!(status(&t), HostStatus::Unreachable);
        assert!(changes.iter().any(|c| c.host_statuses().map(|(_, new)| new)
            == Some(HostStatus::Unreachable)
            && c.reason.contains("liveness service uptime: last report 15")));
        t.seen_ok("h1", "uptime", 28_000);
        t.seen_ok("h1", "cpu", 28_000);
        t.evaluate(28_100, TOL);
        assert_eq!(status(&t), HostStatus::Ok);
        assert_eq!(t.host("h1").unwrap().1, 28_100, "since the change");
    }

    #[test]
    fn resent_old_reports_do_not_make_the_status_flap() {
        let mut t = Tracker::default();
        t.apply_model(&model("10s"), 0);
        t.seen_ok("h1", "uptime", 1_000);
        t.seen_ok("h1", "cpu", 1_000);
        t.evaluate(20_000, TOL);
        assert_eq!(status(&t), HostStatus::Unreachable);
        // The agent comes back and first replays what it spooled long ago.
        t.seen_ok("h1", "uptime", 2_000);
        t.seen_ok("h1", "cpu", 2_000);
        assert!(
            t.evaluate(20_100, TOL).is_empty(),
            "old data changes nothing"
        );
        assert_eq!(status(&t), HostStatus::Unreachable);
        // And a fresh report, followed by old ones, keeps the fresh time.
        t.seen_ok("h1", "uptime", 20_200);
        t.seen_ok("h1", "cpu", 20_200);
        t.seen_ok("h1", "uptime", 3_000);
        t.evaluate(20_300, TOL);
        assert_eq!(status(&t), HostStatus::Ok);
        assert!(t.evaluate(30_000, TOL).is_empty());
    }

    #[test]
    fn a_changed_interval_gets_a_fresh_grace_and_a_restart_keeps_status() {
        let mut t = Tracker::default();
        t.apply_model(&model("10s"), 0);
        t.seen_ok("h1", "uptime", 1_000);
        t.seen_ok("h1", "cpu", 1_000);
        t.evaluate(2_000, TOL);
        t.apply_model(&model("1s"), 14_000);
        t.evaluate(14_500, TOL);
        assert_eq!(status(&t), HostStatus::Ok, "grace from the change");
        t.evaluate(20_001, TOL);
        assert_eq!(status(&t), HostStatus::Unreachable);
        // A receiver restart restores the same verdict without a new event.
        let mut restarted = Tracker::default();
        restarted.remember(
            vec![RememberedHost {
                host: "h1".into(),
                status: HostStatus::Unreachable,
                since_ms: 20_001,
                reason: t.host("h1").unwrap().2.to_owned(),
            }],
            ["uptime", "cpu"]
                .iter()
                .map(|s| Remembered {
                    host: "h1".into(),
                    service: s.to_string(),
                    interval_ms: if *s == "uptime" { 1_000 } else { 10_000 },
                    scheduled_since_ms: Some(14_000),
                    last_ms: Some(1_000),
                    late: Some("late".into()),
                    level: None,
                    text: None,
                })
                .collect(),
        );
        restarted.apply_model(&model("1s"), 60_000);
        let changes = restarted.evaluate(60_000, TOL);
        assert!(
            changes.iter().all(|c| c.service().is_none()
                || matches!(
                    c.subject,
                    Subject::Service {
                        new: ServiceState::Late,
                        ..
                    }
                )),
            "{changes:?}"
        );
        assert!(
            !changes.iter().any(|c| c.service().is_none()),
            "{changes:?}"
        );
        assert_eq!(status(&restarted), HostStatus::Unreachable);
    }

    #[test]
    fn a_receiver_that_just_started_judges_no_one_before_an_interval_has_passed() {
        let mut t = Tracker::default();
        t.apply_model(&model("10s"), 0);
        t.seen_ok("h1", "uptime", 1_000);
        t.seen_ok("h1", "cpu", 1_000);
        t.evaluate(2_000, TOL);
        assert_eq!(status(&t), HostStatus::Ok);
        // Restarted at 30 s (down for 28 s): the newest reports are 29 s old,
        // but the agents had no receiver to report to.
        let mut restarted = Tracker::default();
        restarted.start(30_000);
        restarted.remember(
            vec![RememberedHost {
                host: "h1".into(),
                status: HostStatus::Ok,
                since_ms: 2_000,
                reason: String::new(),
            }],
            ["uptime", "cpu"]
                .iter()
                .map(|s| Remembered {
                    host: "h1".into(),
                    service: s.to_string(),
                    interval_ms: 10_000,
                    scheduled_since_ms: Some(0),
                    last_ms: Some(1_000),
                    late: None,
                    level: Some(Level::Ok),
                    text: None,
                })
                .collect(),
        );
        restarted.apply_model(&model("10s"), 30_000);
        assert!(restarted.evaluate(30_500, TOL).is_empty(), "grace");
        assert!(restarted.evaluate(44_000, TOL).is_empty(), "still in grace");
        restarted.evaluate(45_001, TOL);
        assert_eq!(status(&restarted), HostStatus::Unreachable, "grace over");
    }

    #[test]
    fn what_the_plugins_say_makes_the_host_a_problem_with_the_reason() {
        let mut t = Tracker::default();
        t.apply_model(&model("10s"), 0);
        t.seen_ok("h1", "uptime", 1_000);
        t.seen("h1", "cpu", 1_000, Level::Crit, "cpu 99.2%");
        t.evaluate(1_500, TOL);
        assert_eq!(status(&t), HostStatus::Problem);
        assert_eq!(t.host("h1").unwrap().2, "cpu CRIT \"cpu 99.2%\"");
        t.seen(
            "h1",
            "cpu",
            2_000,
            Level::Unknown,
            "not run: 8 earlier runs are still blocked",
        );
        t.evaluate(2_500, TOL);
        assert!(t.host("h1").unwrap().2.contains("cpu UNKNOWN"));
        t.seen_ok("h1", "cpu", 3_000);
        t.evaluate(3_500, TOL);
        assert_eq!(status(&t), HostStatus::Ok);
    }

    #[test]
    fn a_change_of_level_is_one_event_and_the_same_level_again_none() {
        let mut t = Tracker::default();
        t.apply_model(&model("10s"), 0);
        t.seen_ok("h1", "uptime", 1_000);
        t.seen("h1", "cpu", 1_000, Level::Crit, "cpu 99.2%");
        t.seen("h1", "cpu", 2_000, Level::Crit, "cpu 99.5%");
        // An older report (resent) changes nothing.
        t.seen_ok("h1", "cpu", 500);
        let levels = |changes: Vec<Change>| -> Vec<(Level, Level, String)> {
            changes
                .into_iter()
                .filter_map(|c| match c.subject {
                    Subject::Level { old, new, .. } => Some((old, new, c.reason)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            levels(t.evaluate(2_500, TOL)),
            vec![(Level::Ok, Level::Crit, "cpu 99.2%".to_owned())]
        );
        t.seen_ok("h1", "cpu", 3_000);
        assert_eq!(
            levels(t.evaluate(3_500, TOL)),
            vec![(Level::Crit, Level::Ok, "fine".to_owned())]
        );
        assert!(levels(t.evaluate(4_000, TOL)).is_empty());
    }

    #[test]
    fn a_host_whose_agent_moved_is_not_judged_until_it_comes_back() {
        let mut t = Tracker::default();
        t.apply_model(&model("10s"), 0);
        t.seen_ok("h1", "uptime", 1_000);
        t.seen_ok("h1", "cpu", 1_000);
        t.evaluate(1_500, TOL);
        let change = t.moved("h1", "moved to r1".into(), 2_000).unwrap();
        assert_eq!(
            change.host_statuses(),
            Some((HostStatus::Ok, HostStatus::Moved))
        );
        assert!(t.evaluate(60_000, TOL).is_empty(), "not judged while away");
        assert_eq!(status(&t), HostStatus::Moved);
        t.connected("h1");
        t.seen_ok("h1", "uptime", 61_000);
        t.seen_ok("h1", "cpu", 61_000);
        t.evaluate(61_500, TOL);
        assert_eq!(status(&t), HostStatus::Ok);
    }

    #[test]
    fn states_read_back_as_written_and_unknown_text_is_an_error() {
        for s in [
            HostStatus::Pending,
            HostStatus::Ok,
            HostStatus::Problem,
            HostStatus::Unreachable,
            HostStatus::Moved,
        ] {
            assert_eq!(s.as_str().parse::<HostStatus>(), Ok(s));
        }
        for s in [ServiceState::Fresh, ServiceState::Late] {
            assert_eq!(s.as_str().parse::<ServiceState>(), Ok(s));
        }
        let e = "ok".parse::<HostStatus>().unwrap_err();
        assert_eq!(e.to_string(), r#"unknown host status "ok""#);
        assert!("STALE".parse::<ServiceState>().is_err());
    }
}
