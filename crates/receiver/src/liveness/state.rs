//! The states liveness judges, as enums: a host's status and whether a
//! service's reports arrive in time, and the changes between them. They
//! become text only at the edges (SQL rows, logs, `receiver status`), and
//! are parsed back from the database with an error for a value this
//! receiver does not know.

use sandglass_core::report::Level;
use std::fmt;

/// A host's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostStatus {
    Pending,
    Ok,
    Problem,
    Unreachable,
    Moved,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Pending => "PENDING",
            HostStatus::Ok => "OK",
            HostStatus::Problem => "PROBLEM",
            HostStatus::Unreachable => "UNREACHABLE",
            HostStatus::Moved => "MOVED",
        }
    }
}

impl std::str::FromStr for HostStatus {
    type Err = UnknownState;

    /// The status as stored in the database.
    fn from_str(text: &str) -> Result<HostStatus, UnknownState> {
        Ok(match text {
            "PENDING" => HostStatus::Pending,
            "OK" => HostStatus::Ok,
            "PROBLEM" => HostStatus::Problem,
            "UNREACHABLE" => HostStatus::Unreachable,
            "MOVED" => HostStatus::Moved,
            _ => return Err(UnknownState::new("host status", text)),
        })
    }
}

/// In JSON (`receiver status --json`) as its text.
impl serde::Serialize for HostStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for HostStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a service's reports arrive in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    Fresh,
    Late,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Fresh => "FRESH",
            ServiceState::Late => "LATE",
        }
    }

    pub(super) fn of(late: bool) -> ServiceState {
        if late {
            ServiceState::Late
        } else {
            ServiceState::Fresh
        }
    }
}

impl std::str::FromStr for ServiceState {
    type Err = UnknownState;

    fn from_str(text: &str) -> Result<ServiceState, UnknownState> {
        match text {
            "FRESH" => Ok(ServiceState::Fresh),
            "LATE" => Ok(ServiceState::Late),
            _ => Err(UnknownState::new("service state", text)),
        }
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state read back as text that this receiver does not know (a damaged
/// database, or one a newer receiver wrote).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownState {
    what: &'static str,
    text: String,
}

impl UnknownState {
    pub(super) fn new(what: &'static str, text: &str) -> UnknownState {
        UnknownState {
            what,
            text: text.to_owned(),
        }
    }
}

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} {:?}", self.what, self.text)
    }
}

impl std::error::Error for UnknownState {}

/// What changed state: the host itself, whether one of its services
/// reports in time, the level a service reports, or a trigger on a service.
#[derive(Clone, Debug, PartialEq)]
pub enum Subject {
    Host {
        old: HostStatus,
        new: HostStatus,
    },
    Service {
        name: String,
        old: ServiceState,
        new: ServiceState,
    },
    Level {
        name: String,
        old: Level,
        new: Level,
    },
    Trigger {
        service: String,
        trigger: String,
        severity: Level,
        fired: bool,
    },
}

impl From<crate::triggers::Transition> for Change {
    fn from(t: crate::triggers::Transition) -> Change {
        Change {
            host: t.host,
            subject: Subject::Trigger {
                service: t.service,
                trigger: t.trigger,
                severity: t.severity,
                fired: t.fired,
            },
            reason: t.message,
            time_ms: t.time_ms,
        }
    }
}

/// One status change, as stored in the event log.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub host: String,
    pub subject: Subject,
    pub reason: String,
    pub time_ms: u64,
}

impl Change {
    /// The service that changed; none for the host's own status.
    pub fn service(&self) -> Option<&str> {
        match &self.subject {
            Subject::Host { .. } => None,
            Subject::Service { name, .. } | Subject::Level { name, .. } => Some(name),
            Subject::Trigger { service, .. } => Some(service),
        }
    }

    /// The host's old and new status, if the host changed.
    pub fn host_statuses(&self) -> Option<(HostStatus, HostStatus)> {
        match self.subject {
            Subject::Host { old, new } => Some((old, new)),
            _ => None,
        }
    }

    /// The old and new state as text (the event log's columns). A trigger
    /// goes from OK to its severity when it fires, and back.
    pub fn texts(&self) -> (&'static str, &'static str) {
        match self.subject {
            Subject::Host { old, new } => (old.as_str(), new.as_str()),
            Subject::Service { old, new, .. } => (old.as_str(), new.as_str()),
            Subject::Level { old, new, .. } => (old.as_str(), new.as_str()),
            Subject::Trigger {
                severity, fired, ..
            } => {
                if fired {
                    ("OK", severity.as_str())
                } else {
                    (severity.as_str(), "OK")
                }
            }
        }
    }
}
