//! The receiver's schedule on the agent's side: turned into services this
//! agent will run (within what its own `[allow]` permits), and cached on
//! disk so that a start without the receiver keeps collecting.

use crate::config::{Agent, Service};
use sandglass_core::files::write_atomic;
use sandglass_core::hash::sha256_hex;
use sandglass_core::names::check_name;
use sandglass_core::units::{ByteSize, HumanDuration};
use sandglass_protocol::GrantName;
use sandglass_protocol::{Schedule, ScheduledService, ServiceLimits};
use sandglass_runtime::LimitOverrides;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Shortest interval the agent accepts; shorter ones are raised to it.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Most services an agent runs. A schedule naming more (a receiver's
/// mistake, or a hostile one) has the rest dropped, with a warning, rather
/// than a timer and a plugin run each.
pub const MAX_SERVICES: usize = 1000;

/// The services of `schedule` as this agent runs them, at most
/// [`MAX_SERVICES`]. A service the agent refuses (bad name, a grant not
/// allowed, impossible limits) is kept, with the reason, so it reports
/// UNKNOWN instead of going silent.
pub fn services(schedule: &Schedule, agent: &Agent) -> Vec<Service> {
    let named = schedule.services.len();
    if named > MAX_SERVICES {
        tracing::warn!(
            revision = schedule.revision,
            "the schedule names {named} services; this agent runs the first {MAX_SERVICES} and drops the rest"
        );
    }
    schedule
        .services
        .iter()
        .filter(|s| check_name(&s.name).is_ok())
        .take(MAX_SERVICES)
        .map(|s| service(s, agent))
        .collect()
}

fn service(s: &ScheduledService, agent: &Agent) -> Service {
    let mut refused = Vec::new();
    let plugin_path = match check_name(&s.plugin) {
        Ok(()) => plugin_path(s, agent, &mut refused),
        Err(e) => {
            refused.push(format!("plugin {e}"));
            PathBuf::new()
        }
    };
    let limits = agent
        .limits
        .with(&overrides(&s.limits))
        .unwrap_or_else(|e| {
            refused.push(format!("the schedule's limits are unusable: {e}"));
            agent.limits.clone()
        });
    let sys = s.grants.contains(&GrantName::Sys);
    if sys && !agent.allow.sys {
        refused.push(
            "the schedule grants \"sys\", which this host does not allow: set [allow] sys = true in the agent config"
                .into(),
        );
    }
    let files: Vec<PathBuf> = if s.grants.contains(&GrantName::Files) {
        s.files.iter().map(PathBuf::from).collect()
    } else {
        Vec::new()
    };
    for f in &files {
        if !allowed(f, &agent.allow.files) {
            refused.push(format!(
                "the schedule grants files in {}, which this host does not allow: add it to [allow] files in the agent config",
                f.display()
            ));
        }
    }
    Service {
        name: s.name.clone(),
        plugin: s.plugin.clone(),
        plugin_path,
        params: s.params.clone(),
        sys,
        files,
        limits,
        sha256: s.sha256.clone(),
        interval: Duration::from_millis(s.interval_ms).max(MIN_INTERVAL),
        refused: (!refused.is_empty()).then(|| refused.join("; ")),
    }
}

/// Where the plugins fetched from the receiver are kept, by sha256.
pub fn fetched_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("plugins")
}

/// The file of a fetched plugin: content-addressed, so a name can never
/// point at other bytes.
pub fn fetched_path(state_dir: &Path, sha256: &str) -> PathBuf {
    fetched_dir(state_dir).join(format!("{sha256}.wasm"))
}

/// The file a service runs: the agent's own `plugin_dir/<plugin>.wasm`
/// when nothing is pinned or it is the pinned build; otherwise the pinned
/// build fetched from the receiver, if `[allow] remote_plugins` permits.
fn plugin_path(s: &ScheduledService, agent: &Agent, refused: &mut Vec<String>) -> PathBuf {
    let local = agent.plugin_dir.join(format!("{}.wasm", s.plugin));
    let Some(pin) = &s.sha256 else {
        return local;
    };
    if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        refused.push(format!(
            "the schedule pins sha256 {pin:?}, which is not 64 hex digits"
        ));
        return local;
    }
    let pin = pin.to_ascii_lowercase();
    let local_sha = std::fs::read(&local).ok().map(|bytes| sha256_hex(&bytes));
    if local_sha.as_deref() == Some(pin.as_str()) {
        return local;
    }
    if !agent.allow.remote_plugins {
        refused.push(format!(
            "plugin {} with sha256 {pin} is not in plugin_dir {} and [allow] remote_plugins = false: install that build there, or set remote_plugins = true in the agent config",
            s.plugin,
            agent.plugin_dir.display()
        ));
        return local;
    }
    fetched_path(&agent.state_dir, &pin)
}

/// The pinned plugins `services` run from the receiver's copy and this
/// agent does not have yet: what the link fetches.
pub fn to_fetch(services: &[Service], state_dir: &Path) -> Vec<String> {
    let dir = fetched_dir(state_dir);
    let mut wanted: Vec<String> = services
        .iter()
        .filter(|s| s.refused.is_none() && s.plugin_path.parent() == Some(dir.as_path()))
        .filter(|s| !s.plugin_path.exists())
        .filter_map(|s| s.sha256.as_ref().map(|sha| sha.to_ascii_lowercase()))
        .collect();
    wanted.sort();
    wanted.dedup();
    wanted
}

/// Whether `dir` lies inside one of the allowed directories, judged on the
/// resolved paths so `..` and symlinks cannot leave them.
fn allowed(dir: &Path, allow: &[PathBuf]) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    allow
        .iter()
        .filter_map(|a| a.canonicalize().ok())
        .any(|a| dir.starts_with(a))
}

fn overrides(l: &ServiceLimits) -> LimitOverrides {
    LimitOverrides {
        fuel: l.fuel,
        deadline: l
            .deadline_ms
            .map(|ms| HumanDuration(Duration::from_millis(ms))),
        memory: l.memory.map(ByteSize),
        max_samples: l.max_samples.map(|n| n as usize),
        max_output_bytes: l.max_output_bytes.map(ByteSize),
        max_stdio_bytes: l.max_stdio_bytes.map(ByteSize),
        max_state_bytes: l.max_state_bytes.map(ByteSize),
        // The schedule's limits do not carry it (yet): the host's own apply.
        max_open_files: None,
    }
}

/// The last schedule received, kept in `<state_dir>/schedule.msgpack`.
pub struct ScheduleCache {
    path: PathBuf,
}

impl ScheduleCache {
    pub fn new(state_dir: &Path) -> ScheduleCache {
        ScheduleCache {
            path: state_dir.join("schedule.msgpack"),
        }
    }

    /// The cached schedule; a damaged file is logged and ignored.
    pub fn load(&self) -> Option<Schedule> {
        let bytes = std::fs::read(&self.path).ok()?;
        rmp_serde::from_slice(&bytes)
            .inspect_err(|e| {
                tracing::warn!(path = %self.path.display(), "ignoring a damaged schedule cache: {e}")
            })
            .ok()
    }

    pub fn save(&self, schedule: &Schedule) {
        let result = rmp_serde::to_vec(schedule)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomic(&self.path, &bytes));
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), "cannot cache the schedule: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(dir: &Path, allow: &str) -> Agent {
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            format!("plugin_dir = \"plugins\"\nstate_dir = \"state\"\n{allow}"),
        )
        .unwrap();
        Agent::load(&path).unwrap()
    }

    fn scheduled(grants: Vec<GrantName>, files: Vec<String>) -> ScheduledService {
        ScheduledService {
            name: "logs".into(),
            plugin: "logwatch".into(),
            sha256: None,
            interval_ms: 2000,
            params: vec![],
            grants,
            files,
            limits: ServiceLimits {
                memory: Some(8 << 20),
                ..Default::default()
            },
        }
    }

    #[test]
    fn grants_are_bounded_by_the_hosts_allow_list() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(logs.join("app")).unwrap();
        let a = agent(dir.path(), "[allow]\nsys = false\nfiles = [\"logs\"]\n");
        let inside = service(
            &scheduled(
                vec![GrantName::Files],
                vec![logs.join("app").display().to_string()],
            ),
            &a,
        );
        assert_eq!(inside.refused, None);
        assert_eq!(inside.limits.memory.0, 8 << 20);
        assert!(inside.plugin_path.ends_with("plugins/logwatch.wasm"));
        let escape = service(
            &scheduled(
                vec![GrantName::Files],
                vec![logs.join("app/../..").display().to_string()],
            ),
            &a,
        );
        assert!(escape.refused.unwrap().contains("[allow] files"));
        let sys = service(&scheduled(vec![GrantName::Sys], vec![]), &a);
        assert!(sys.refused.unwrap().contains("[allow] sys"));
    }

    #[test]
    fn a_pinned_plugin_comes_from_plugin_dir_or_the_receiver_if_allowed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        std::fs::write(dir.path().join("plugins/logwatch.wasm"), b"local build").unwrap();
        let pinned = |sha: String| ScheduledService {
            sha256: Some(sha),
            ..scheduled(vec![], vec![])
        };
        let a = agent(dir.path(), "");
        let local = service(&pinned(sha256_hex(b"local build")), &a);
        assert!(local.plugin_path.ends_with("plugins/logwatch.wasm"));
        let other = sha256_hex(b"the receiver's build");
        let remote = service(&pinned(other.clone()), &a);
        assert_eq!(remote.refused, None);
        assert_eq!(remote.plugin_path, fetched_path(&a.state_dir, &other));
        assert_eq!(
            to_fetch(&[local, remote.clone()], &a.state_dir),
            std::slice::from_ref(&other)
        );
        std::fs::create_dir_all(fetched_dir(&a.state_dir)).unwrap();
        std::fs::write(&remote.plugin_path, b"fetched").unwrap();
        assert!(
            to_fetch(&[remote], &a.state_dir).is_empty(),
            "fetched already"
        );

        let off = agent(dir.path(), "[allow]\nremote_plugins = false\n");
        let refused = service(&pinned(other), &off).refused.unwrap();
        assert!(refused.contains("remote_plugins = false"), "{refused}");
        let bad = service(&pinned("../../etc/passwd".into()), &a)
            .refused
            .unwrap();
        assert!(bad.contains("not 64 hex digits"), "{bad}");
    }

    #[test]
    fn a_schedule_of_too_many_services_is_cut_to_the_most_an_agent_runs() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent(dir.path(), "");
        let schedule = Schedule {
            revision: 1,
            services: (0..MAX_SERVICES + 5)
                .map(|i| ScheduledService {
                    name: format!("s{i}"),
                    ..scheduled(vec![], vec![])
                })
                .collect(),
        };
        let running = services(&schedule, &a);
        assert_eq!(running.len(), MAX_SERVICES);
        assert_eq!(
            running.last().unwrap().name,
            format!("s{}", MAX_SERVICES - 1)
        );
    }

    #[test]
    fn cache_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ScheduleCache::new(dir.path());
        assert_eq!(cache.load(), None);
        let schedule = Schedule {
            revision: 9,
            services: vec![scheduled(vec![], vec![])],
        };
        cache.save(&schedule);
        assert_eq!(cache.load(), Some(schedule));
        std::fs::write(dir.path().join("schedule.msgpack"), b"\xc1junk").unwrap();
        assert_eq!(cache.load(), None);
    }
}
