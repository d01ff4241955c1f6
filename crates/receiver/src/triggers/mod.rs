//! Triggers: a condition over one metric of a service, judged as its
//! samples arrive.
//!
//! A trigger names a metric (and optionally labels a sample must carry), a
//! condition that fires it ([`expr`]), optionally one that recovers it, how
//! long the firing condition must hold before it fires (`for`), a severity
//! and a message. Every distinct label set of the metric on a host is its own
//! series with its own state, so `disk_used_percent > 90` fires per disk.
//!
//! Values that hover around a threshold do not flap: with a recovery
//! condition (`avg(5m) < 80` against a firing `avg(5m) > 90`) a firing
//! series stays firing until the value is clearly back; `for` keeps a short
//! spike from firing at all.
//!
//! [`Engine::observe`] judges a report's samples as they are stored, from
//! each series' window of recent values ([`window`]) — never from a read of
//! stored history; [`Engine::tick`] judges `nodata` conditions on the
//! receiver's clock.

pub mod expr;
mod window;

use expr::Condition;
use sandglass_core::report::{Level, Sample};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use window::Window;

/// Most values a series keeps for its trigger's window (16 bytes each).
pub const MAX_WINDOW: usize = 4096;

/// A trigger as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub name: String,
    pub metric: String,
    /// Labels a sample must carry (with these values) to belong.
    pub labels: Vec<(String, String)>,
    pub fire: Condition,
    /// None: recovered as soon as `fire` no longer holds.
    pub recover: Option<Condition>,
    /// How long `fire` must hold before the trigger fires.
    pub hold: Duration,
    /// WARN or CRIT.
    pub severity: Level,
    /// Template: `{host}`, `{service}`, `{trigger}`, `{metric}`, `{labels}`,
    /// `{value}`, `{severity}`.
    pub message: String,
}

impl Trigger {
    /// Check what the configuration cannot express by its types.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.severity, Level::Warn | Level::Crit) {
            return Err("severity must be WARN or CRIT".into());
        }
        match (&self.fire, &self.recover) {
            (Condition::NoData(_), Some(_)) => {
                Err("a nodata trigger recovers when data arrives: remove `recover`".into())
            }
            (_, Some(Condition::NoData(_))) => Err(
                "`recover` cannot be nodata(...): write the condition under which it recovers"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    fn matches(&self, sample: &Sample) -> bool {
        sample.name == self.metric
            && self
                .labels
                .iter()
                .all(|wanted| sample.labels.iter().any(|l| l == wanted))
    }

    fn window(&self) -> Window {
        let (fire_for, fire_count) = self.fire.needs();
        let (recover_for, recover_count) = self.recover.map_or((Duration::ZERO, 1), |c| c.needs());
        Window::new(fire_for.max(recover_for), fire_count.max(recover_count))
    }

    fn render(
        &self,
        host: &str,
        service: &str,
        labels: &[(String, String)],
        value: Option<f64>,
    ) -> String {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let value = value.map_or_else(
            || "no data".to_owned(),
            |v| format!("{}", (v * 1e4).round() / 1e4),
        );
        self.message
            .replace("{host}", host)
            .replace("{service}", service)
            .replace("{trigger}", &self.name)
            .replace("{metric}", &self.metric)
            .replace("{labels}", &labels)
            .replace("{value}", &value)
            .replace("{severity}", self.severity.as_str())
    }
}

/// Where a series stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Ok,
    /// The firing condition holds, not yet for `for`.
    Pending {
        since_ms: u64,
    },
    Firing {
        since_ms: u64,
    },
}

/// A trigger fired or recovered on one series.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub host: String,
    pub service: String,
    pub trigger: String,
    pub labels: Vec<(String, String)>,
    pub fired: bool,
    pub severity: Level,
    pub value: Option<f64>,
    pub message: String,
    pub time_ms: u64,
}

/// A series firing now, for host status.
#[derive(Clone, Debug, PartialEq)]
pub struct Firing {
    pub service: String,
    pub trigger: String,
    pub severity: Level,
    pub message: String,
    pub since_ms: u64,
}

/// The series of one trigger on one service of a host, by their labels.
#[derive(Debug)]
struct TriggerSeries {
    service: String,
    trigger: String,
    by_labels: HashMap<Vec<(String, String)>, Series>,
}

#[derive(Debug)]
struct Series {
    trigger: Arc<Trigger>,
    window: Window,
    phase: Phase,
    message: String,
}

impl Series {
    /// The phase after judging `fire` and `recover` at `time_ms`; whether it
    /// fired (true) or recovered (false).
    fn judge(&mut self, fire: bool, recover: bool, time_ms: u64) -> Option<bool> {
        let hold = self.trigger.hold.as_millis() as u64;
        let (phase, changed) = match self.phase {
            Phase::Ok | Phase::Pending { .. } if !fire => (Phase::Ok, None),
            Phase::Ok if hold == 0 => (Phase::Firing { since_ms: time_ms }, Some(true)),
            Phase::Ok => (Phase::Pending { since_ms: time_ms }, None),
            Phase::Pending { since_ms } if time_ms.saturating_sub(since_ms) >= hold => {
                (Phase::Firing { since_ms: time_ms }, Some(true))
            }
            Phase::Firing { .. } if recover => (Phase::Ok, Some(false)),
            unchanged => (unchanged, None),
        };
        self.phase = phase;
        changed
    }

    fn holds(&self, condition: &Condition) -> bool {
        match condition {
            Condition::Compare {
                function,
                comparison,
                threshold,
            } => self
                .window
                .value(*function)
                .is_some_and(|v| comparison.holds(v, *threshold)),
            // Judged on a new value: data is there.
            Condition::NoData(_) => false,
        }
    }

    fn shown_value(&self) -> Option<f64> {
        match self.trigger.fire {
            Condition::Compare { function, .. } => self.window.value(function),
            Condition::NoData(_) => None,
        }
    }
}

/// Every series' trigger state on this receiver, by host (so that judging
/// one host looks at that host's series only).
#[derive(Debug, Default)]
pub struct Engine {
    /// A host's few (service, trigger) pairs are searched in a list, and
    /// a series is found by its labels as a slice: judging a sample
    /// allocates nothing once its series exists.
    hosts: HashMap<String, Vec<TriggerSeries>>,
}

impl Engine {
    /// Judge the samples of one report of `service` on `host`, taken at
    /// `time_ms`, against the triggers that apply to that service.
    pub fn observe(
        &mut self,
        host: &str,
        service: &str,
        triggers: &[Arc<Trigger>],
        samples: &[Sample],
        time_ms: u64,
    ) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for trigger in triggers {
            let mut matching = samples.iter().filter(|s| trigger.matches(s)).peekable();
            if matching.peek().is_none() {
                continue;
            }
            if !self.hosts.contains_key(host) {
                self.hosts.insert(host.to_owned(), Vec::new());
            }
            let groups = self.hosts.get_mut(host).expect("inserted above");
            let at = match groups
                .iter()
                .position(|g| g.service == service && g.trigger == trigger.name)
            {
                Some(at) => at,
                None => {
                    groups.push(TriggerSeries {
                        service: service.to_owned(),
                        trigger: trigger.name.clone(),
                        by_labels: HashMap::new(),
                    });
                    groups.len() - 1
                }
            };
            let by_labels = &mut groups[at].by_labels;
            for sample in matching {
                if !by_labels.contains_key(sample.labels.as_slice()) {
                    by_labels.insert(
                        sample.labels.clone(),
                        Series {
                            trigger: trigger.clone(),
                            window: trigger.window(),
                            phase: Phase::Ok,
                            message: String::new(),
                        },
                    );
                }
                let series = by_labels
                    .get_mut(sample.labels.as_slice())
                    .expect("inserted above");
                if !series.window.push(time_ms, sample.value) {
                    continue;
                }
                let fire = series.holds(&trigger.fire);
                let recover = match &trigger.recover {
                    Some(condition) => series.holds(condition),
                    None => !fire,
                };
                if let Some(fired) = series.judge(fire, recover, time_ms) {
                    let value = series.shown_value();
                    series.message = trigger.render(host, service, &sample.labels, value);
                    transitions.push(transition(
                        host,
                        service,
                        &sample.labels,
                        series,
                        fired,
                        value,
                        time_ms,
                    ));
                }
            }
        }
        transitions
    }

    /// Judge `nodata` conditions at `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let all = self.hosts.iter_mut().flat_map(|(host, groups)| {
            groups.iter_mut().flat_map(move |g| {
                let service = g.service.as_str();
                g.by_labels
                    .iter_mut()
                    .map(move |(labels, s)| (host.as_str(), service, labels, s))
            })
        });
        for (host, service, labels, series) in all {
            let Condition::NoData(silence) = series.trigger.fire else {
                continue;
            };
            let Some((last_ms, _)) = series.window.newest() else {
                continue;
            };
            let silent = now_ms.saturating_sub(last_ms) >= silence.as_millis() as u64;
            if let Some(fired) = series.judge(silent, !silent, now_ms) {
                series.message = series.trigger.render(host, service, labels, None);
                transitions.push(transition(
                    host, service, labels, series, fired, None, now_ms,
                ));
            }
        }
        transitions
    }

    /// The series firing on `host`, worst first.
    pub fn firing(&self, host: &str) -> Vec<Firing> {
        let Some(groups) = self.hosts.get(host) else {
            return Vec::new();
        };
        let mut firing: Vec<Firing> = groups
            .iter()
            .flat_map(|g| g.by_labels.values().map(move |s| (g, s)))
            .filter_map(|(g, series)| match series.phase {
                Phase::Firing { since_ms } => Some(Firing {
                    service: g.service.clone(),
                    trigger: g.trigger.clone(),
                    severity: series.trigger.severity,
                    message: series.message.clone(),
                    since_ms,
                }),
                _ => None,
            })
            .collect();
        firing.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(a.since_ms.cmp(&b.since_ms))
        });
        firing
    }

    /// Drop the series whose trigger no longer applies (after a reload):
    /// `applies(host, service, trigger)` says which still do, with the same
    /// definition.
    pub fn retain(&mut self, mut applies: impl FnMut(&str, &str, &Trigger) -> bool) {
        for (host, groups) in &mut self.hosts {
            groups.retain_mut(|g| {
                g.by_labels
                    .retain(|_, s| applies(host, &g.service, &s.trigger));
                !g.by_labels.is_empty()
            });
        }
        self.hosts.retain(|_, groups| !groups.is_empty());
    }
}

fn transition(
    host: &str,
    service: &str,
    labels: &[(String, String)],
    series: &Series,
    fired: bool,
    value: Option<f64>,
    time_ms: u64,
) -> Transition {
    Transition {
        host: host.to_owned(),
        service: service.to_owned(),
        trigger: series.trigger.name.clone(),
        labels: labels.to_vec(),
        fired,
        severity: series.trigger.severity,
        value,
        message: series.message.clone(),
        time_ms,
    }
}

#[cfg(test)]
mod tests;
