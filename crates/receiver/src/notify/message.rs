//! The notification as channels get it: a JSON object (docs/notifications.md
//! is its specification). One message is about one host (or, for a
//! summary, many) and carries the changes it tells of.

use crate::liveness::{Change, HostStatus, Subject};
use sandglass_core::time::civil_from_days;
use serde::Serialize;

/// What kind of change an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    TriggerFired,
    TriggerRecovered,
    /// The host became PROBLEM or UNREACHABLE (or went from one to the other).
    HostProblem,
    /// The host is OK again.
    HostRecovered,
}

/// One change a message tells of.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Item {
    #[serde(rename = "event")]
    pub kind: ItemKind,
    pub host: String,
    pub service: Option<String>,
    pub trigger: Option<String>,
    pub old: String,
    pub new: String,
    pub severity: Option<String>,
    pub message: String,
    pub time_ms: u64,
}

impl Item {
    /// The item for a change that tells someone: triggers firing and
    /// recovering, a host becoming PROBLEM or UNREACHABLE and OK again.
    pub fn of(c: &Change) -> Option<Item> {
        let (old, new) = c.texts();
        let (kind, service, trigger, severity) = match &c.subject {
            Subject::Trigger {
                service,
                trigger,
                severity,
                fired,
            } => (
                if *fired {
                    ItemKind::TriggerFired
                } else {
                    ItemKind::TriggerRecovered
                },
                Some(service.clone()),
                Some(trigger.clone()),
                Some(severity.as_str().to_owned()),
            ),
            Subject::Host { old, new } => {
                let bad =
                    |s: &HostStatus| matches!(s, HostStatus::Problem | HostStatus::Unreachable);
                let kind = match (bad(old), bad(new), *new == HostStatus::Ok) {
                    (_, true, _) => ItemKind::HostProblem,
                    (true, false, true) => ItemKind::HostRecovered,
                    _ => return None,
                };
                (kind, None, None, None)
            }
            Subject::Service { .. } | Subject::Level { .. } => return None,
        };
        Some(Item {
            kind,
            host: c.host.clone(),
            service,
            trigger,
            old: old.to_owned(),
            new: new.to_owned(),
            severity,
            message: c.reason.clone(),
            time_ms: c.time_ms,
        })
    }

    /// What problem this item starts or ends, within its host.
    pub fn key(&self) -> String {
        match (&self.service, &self.trigger) {
            (Some(s), Some(t)) => format!("trigger {s} {t}"),
            _ => "host".to_owned(),
        }
    }
}

/// One message, as every channel gets it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notification {
    /// "problem", "reminder", "recovery" or "summary".
    pub kind: &'static str,
    /// The first change's fields (a trigger's rather than the host's, as
    /// the more precise); none for a summary.
    pub host: Option<String>,
    pub service: Option<String>,
    pub trigger: Option<String>,
    pub old: Option<String>,
    pub new: Option<String>,
    pub severity: Option<String>,
    pub event: Option<ItemKind>,
    pub message: String,
    pub time_ms: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// Every change this message tells of, oldest first.
    pub changes: Vec<Item>,
}

impl Notification {
    /// A message about one host's changes (not empty).
    pub fn of_host(kind: &'static str, changes: Vec<Item>) -> Notification {
        let lead = changes
            .iter()
            .find(|i| i.trigger.is_some() && (kind == "recovery" || i.new != "OK"))
            .unwrap_or(&changes[0])
            .clone();
        // Trigger messages usually name their host already.
        let text = if lead.message.contains(&lead.host) {
            lead.message.clone()
        } else {
            format!("{}: {}", lead.host, lead.message)
        };
        let message = match kind {
            "recovery" => format!("recovered: {text}"),
            "reminder" => format!("still: {text}"),
            _ => text,
        };
        Notification {
            kind,
            host: Some(lead.host),
            service: lead.service,
            trigger: lead.trigger,
            old: Some(lead.old),
            new: Some(lead.new),
            severity: lead.severity,
            event: Some(lead.kind),
            message,
            time_ms: lead.time_ms,
            time: rfc3339(lead.time_ms),
            changes,
        }
    }

    /// One message instead of one per host, in a storm.
    pub fn summary(messages: &[Notification], now_ms: u64) -> Notification {
        let mut hosts: Vec<&str> = messages.iter().filter_map(|n| n.host.as_deref()).collect();
        hosts.dedup();
        let lines: Vec<&str> = messages.iter().map(|n| n.message.as_str()).collect();
        Notification {
            kind: "summary",
            host: None,
            service: None,
            trigger: None,
            old: None,
            new: None,
            severity: None,
            event: None,
            message: format!("{} hosts changed: {}", hosts.len(), lines.join("; ")),
            time_ms: now_ms,
            time: rfc3339(now_ms),
            changes: messages.iter().flat_map(|n| n.changes.clone()).collect(),
        }
    }
}

/// `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    }
}
