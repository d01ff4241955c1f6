//! Who hears what, and how often: the changes of one host become one
//! message; while a host's problem lasts it gets at most one message per
//! `repeat` (what changed in between comes with it); messages wait
//! `group_wait` and, when more than `storm_hosts` hosts have one, go out as
//! one summary. Pure: time comes in as arguments, silences as a function.

use super::message::{Item, ItemKind, Notification};
use crate::liveness::{Change, HostStatus, Subject};
use std::collections::BTreeMap;

/// The grouping and rate-limiting settings, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub repeat_ms: u64,
    pub group_wait_ms: u64,
    pub storm_hosts: usize,
}

/// What a tick decided.
#[derive(Debug, PartialEq)]
pub enum Out {
    /// To every channel.
    Send(Notification),
    /// Not sent, and why (a maintenance window, an acknowledgement).
    Suppressed(Notification, String),
    /// A host's problem (or one service's) is over: its acks end.
    Recovered {
        host: String,
        service: Option<String>,
    },
}

#[derive(Debug, Default)]
struct HostState {
    /// What is wrong now, by key, with how many series fire under it.
    active: BTreeMap<String, (Item, u32)>,
    /// Changes not yet told.
    unsent: Vec<Item>,
    last_sent_ms: Option<u64>,
    /// Someone was told of this problem (so they hear of its end).
    notified: bool,
}

#[derive(Debug)]
pub struct Policy {
    rules: Rules,
    hosts: BTreeMap<String, HostState>,
    /// Messages waiting for `group_wait`, and since when.
    buffer: Vec<Notification>,
    buffer_since: Option<u64>,
    recovered: Vec<(String, Option<String>)>,
}

impl Policy {
    pub fn new(rules: Rules) -> Policy {
        Policy {
            rules,
            hosts: BTreeMap::new(),
            buffer: Vec::new(),
            buffer_since: None,
            recovered: Vec::new(),
        }
    }

    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// A host that was in trouble when the receiver stopped: its problem
    /// was told before, so it gets reminders and its recovery, not a new
    /// first message.
    pub fn resume(&mut self, item: Item, now_ms: u64) {
        let h = self.hosts.entry(item.host.clone()).or_default();
        h.active.insert(item.key(), (item, 1));
        h.last_sent_ms = Some(now_ms);
        h.notified = true;
    }

    /// Take in one change (most changes, such as levels and lateness,
    /// tell no one by themselves: they show in the host's status).
    pub fn observe(&mut self, change: &Change) {
        if let Subject::Host {
            new: HostStatus::Moved | HostStatus::Pending,
            ..
        } = change.subject
        {
            // Not judged any more: forget the problem without a message.
            if let Some(h) = self.hosts.get_mut(&change.host) {
                h.active.remove("host");
            }
            return;
        }
        let Some(item) = Item::of(change) else {
            return;
        };
        let h = self.hosts.entry(item.host.clone()).or_default();
        let key = item.key();
        if item.kind.is_problem() {
            let count = h.active.get(&key).map_or(0, |(_, n)| *n);
            // A host's status is one problem however often it changes.
            let count = if key == "host" { 1 } else { count + 1 };
            h.active.insert(key, (item.clone(), count));
        } else if let Some((_, n)) = h.active.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                h.active.remove(&key);
            }
            let service = item.service.clone();
            if service.is_some() && !h.active.values().any(|(i, _)| i.service == service) {
                self.recovered.push((item.host.clone(), service));
            }
        }
        h.unsent.push(item);
    }

    /// Decide what to send at `now_ms`. `silence` says why a host's
    /// message must not go out (maintenance, acknowledged), if it must not.
    pub fn tick(
        &mut self,
        now_ms: u64,
        silence: &dyn Fn(&str, &[Item]) -> Option<String>,
    ) -> Vec<Out> {
        let mut out: Vec<Out> = self
            .recovered
            .drain(..)
            .map(|(host, service)| Out::Recovered { host, service })
            .collect();
        let mut fresh = Vec::new();
        let mut over = Vec::new();
        for (host, h) in &mut self.hosts {
            if h.active.is_empty() {
                if let Some(n) = recovery(h) {
                    fresh.push(n);
                }
                out.push(Out::Recovered {
                    host: host.clone(),
                    service: None,
                });
                over.push(host.clone());
            } else if let Some(n) = problem(h, now_ms, self.rules.repeat_ms) {
                fresh.push(n);
            }
        }
        for host in over {
            self.hosts.remove(&host);
        }
        for n in fresh {
            let host = n.host.clone().unwrap_or_default();
            match silence(&host, &n.changes) {
                Some(why) => out.push(Out::Suppressed(n, why)),
                None => {
                    if let Some(h) = self.hosts.get_mut(&host) {
                        h.notified = true;
                    }
                    self.buffer.push(n);
                    self.buffer_since.get_or_insert(now_ms);
                }
            }
        }
        out.extend(self.flush(now_ms).into_iter().map(Out::Send));
        out
    }

    /// The waiting messages once `group_wait` has passed: as they are, or
    /// one summary when more than `storm_hosts` hosts have one.
    fn flush(&mut self, now_ms: u64) -> Vec<Notification> {
        match self.buffer_since {
            Some(since) if now_ms >= since + self.rules.group_wait_ms => {}
            _ => return Vec::new(),
        }
        self.buffer_since = None;
        let waiting = std::mem::take(&mut self.buffer);
        let mut hosts: Vec<&str> = waiting.iter().filter_map(|n| n.host.as_deref()).collect();
        hosts.sort_unstable();
        hosts.dedup();
        if hosts.len() > self.rules.storm_hosts {
            vec![Notification::summary(&waiting, now_ms)]
        } else {
            waiting
        }
    }
}

/// The message for a host whose problems are all over: only if someone
/// heard of the problem, or if the problem began before this receiver
/// started watching (after a restart: better an extra "recovered").
fn recovery(h: &mut HostState) -> Option<Notification> {
    let unsent = std::mem::take(&mut h.unsent);
    let seen_start = unsent.iter().any(|i| i.kind.is_problem());
    let told = h.notified || (h.last_sent_ms.is_none() && !seen_start);
    (told && !unsent.is_empty()).then(|| Notification::of_host("recovery", unsent))
}

/// The message for a host with a problem, when one is due: at once for a
/// new problem, then one per `repeat` (with what changed meanwhile, or as
/// a reminder of what is still wrong).
fn problem(h: &mut HostState, now_ms: u64, repeat_ms: u64) -> Option<Notification> {
    let due = match h.last_sent_ms {
        None => !h.unsent.is_empty(),
        Some(last) => now_ms >= last + repeat_ms,
    };
    if !due {
        return None;
    }
    h.last_sent_ms = Some(now_ms);
    let unsent = std::mem::take(&mut h.unsent);
    if unsent.iter().any(|i| i.kind.is_problem()) {
        Some(Notification::of_host("problem", unsent))
    } else {
        let mut items: Vec<Item> = h.active.values().map(|(i, _)| i.clone()).collect();
        items.extend(unsent);
        Some(Notification::of_host("reminder", items))
    }
}

impl ItemKind {
    fn is_problem(self) -> bool {
        matches!(self, ItemKind::TriggerFired | ItemKind::HostProblem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::{HostStatus, Subject};
    use sandglass_core::report::Level;

    const RULES: Rules = Rules {
        repeat_ms: 60_000,
        group_wait_ms: 1_000,
        storm_hosts: 2,
    };

    fn trigger(host: &str, fired: bool, t: u64) -> Change {
        Change {
            host: host.into(),
            subject: Subject::Trigger {
                service: "cpu".into(),
                trigger: "high".into(),
                severity: Level::Crit,
                fired,
            },
            reason: format!("{host} cpu high"),
            time_ms: t,
        }
    }

    fn status(host: &str, old: HostStatus, new: HostStatus, t: u64) -> Change {
        Change {
            host: host.into(),
            subject: Subject::Host { old, new },
            reason: "why".into(),
            time_ms: t,
        }
    }

    fn sent(out: &[Out]) -> Vec<(&str, Option<&str>, usize)> {
        out.iter()
            .filter_map(|o| match o {
                Out::Send(n) => Some((n.kind, n.host.as_deref(), n.changes.len())),
                _ => None,
            })
            .collect()
    }

    const LOUD: &dyn Fn(&str, &[Item]) -> Option<String> = &|_, _| None;

    #[test]
    fn one_message_per_host_per_repeat_while_the_problem_lasts() {
        let mut p = Policy::new(RULES);
        p.observe(&trigger("a", true, 0));
        p.observe(&status("a", HostStatus::Ok, HostStatus::Problem, 0));
        assert!(sent(&p.tick(0, LOUD)).is_empty(), "waits group_wait");
        assert_eq!(sent(&p.tick(1_000, LOUD)), [("problem", Some("a"), 2)]);
        // More changes within `repeat`: held, not one message each.
        for t in 2..10 {
            p.observe(&status(
                "a",
                HostStatus::Problem,
                HostStatus::Unreachable,
                t * 1000,
            ));
            assert!(sent(&p.tick(t * 1000 + 500, LOUD)).is_empty());
        }
        // After `repeat`: one message with what changed meanwhile, then
        // reminders of what is still wrong.
        p.tick(60_000, LOUD);
        assert_eq!(sent(&p.tick(61_000, LOUD)), [("problem", Some("a"), 8)]);
        p.tick(120_000, LOUD);
        assert_eq!(sent(&p.tick(121_000, LOUD)), [("reminder", Some("a"), 2)]);
        p.observe(&trigger("a", false, 130_000));
        p.observe(&status(
            "a",
            HostStatus::Unreachable,
            HostStatus::Ok,
            130_000,
        ));
        let out = p.tick(130_000, LOUD);
        assert!(out.contains(&Out::Recovered {
            host: "a".into(),
            service: Some("cpu".into())
        }));
        assert_eq!(sent(&p.tick(131_000, LOUD)), [("recovery", Some("a"), 2)]);
        assert!(sent(&p.tick(300_000, LOUD)).is_empty(), "nothing more");
    }

    #[test]
    fn many_hosts_at_once_are_one_summary() {
        let mut p = Policy::new(RULES);
        for h in ["a", "b", "c"] {
            p.observe(&trigger(h, true, 0));
        }
        p.tick(0, LOUD);
        let out = p.tick(1_000, LOUD);
        assert_eq!(sent(&out), [("summary", None, 3)]);
        // Two hosts (not more than storm_hosts): each its own message.
        for h in ["a", "b"] {
            p.observe(&trigger(h, false, 2_000));
        }
        p.tick(2_000, LOUD);
        let out = p.tick(3_000, LOUD);
        assert_eq!(
            sent(&out),
            [("recovery", Some("a"), 1), ("recovery", Some("b"), 1)]
        );
    }

    #[test]
    fn a_silenced_problem_is_not_sent_nor_its_recovery() {
        let mut p = Policy::new(RULES);
        let quiet: &dyn Fn(&str, &[Item]) -> Option<String> =
            &|h, _| (h == "a").then(|| "maintenance #1".to_owned());
        p.observe(&trigger("a", true, 0));
        p.observe(&trigger("b", true, 0));
        let out = p.tick(0, quiet);
        assert!(
            matches!(&out[..], [Out::Suppressed(n, why)] if n.host.as_deref() == Some("a") && why == "maintenance #1")
        );
        assert_eq!(sent(&p.tick(1_000, quiet)), [("problem", Some("b"), 1)]);
        p.observe(&trigger("a", false, 5_000));
        p.tick(5_000, LOUD);
        assert!(sent(&p.tick(9_000, LOUD)).is_empty(), "no one heard of it");
    }

    #[test]
    fn a_recovery_after_a_restart_is_told() {
        let mut p = Policy::new(RULES);
        p.observe(&status("a", HostStatus::Problem, HostStatus::Ok, 0));
        p.tick(0, LOUD);
        assert_eq!(sent(&p.tick(1_000, LOUD)), [("recovery", Some("a"), 1)]);
        // A problem that came and went unheard within one tick: nothing.
        p.observe(&trigger("b", true, 2_000));
        p.observe(&trigger("b", false, 2_000));
        p.tick(2_000, LOUD);
        assert!(sent(&p.tick(4_000, LOUD)).is_empty());
    }
}
