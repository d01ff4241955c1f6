//! `receiver.toml`: where to listen and store, and the fleet model of seed
//! 002 — hosts, host groups, templates and services — resolved into one
//! schedule per host. Unknown keys and dangling names are errors that say
//! where and how to fix them.

mod http;
mod notify;
mod remote_write;
mod rollout;
mod triggers;

pub use notify::{Channel, NotifyConfig, Target};

pub use http::HttpSettings;
pub use remote_write::RemoteWrite;
pub use rollout::{Canaries, RolloutPolicy};

use crate::plugins::Library;
use crate::triggers::Trigger;
use anyhow::bail;
use sandglass_core::config::{ParamValue, load_toml};
use sandglass_core::hash::sha256;
use sandglass_core::limits::LimitOverrides;
use sandglass_core::names::check_name;
use sandglass_core::units::{ByteSize, HumanDuration};
use sandglass_protocol::GrantName;
use sandglass_protocol::{
    DEFAULT_MAX_FRAME, DEFAULT_PORT, Schedule, ScheduledService, ServiceLimits,
};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `receiver.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: String,
    database: PathBuf,
    #[serde(default = "default_tolerance")]
    late_tolerance: HumanDuration,
    #[serde(default = "default_retention")]
    retention: HumanDuration,
    #[serde(default = "default_liveness")]
    liveness_service: String,
    #[serde(default = "default_refresh")]
    schedule_refresh: HumanDuration,
    plugin_dir: Option<PathBuf>,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_handshake_timeout")]
    handshake_timeout: HumanDuration,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: HumanDuration,
    #[serde(default = "default_max_frame")]
    max_frame: ByteSize,
    #[serde(default = "default_max_handshakes")]
    max_handshakes: usize,
    tls: Option<ServerTls>,
    /// `[http]`, or `[web]` (the same listener: /metrics, the status page, /api).
    #[serde(alias = "web")]
    http: Option<http::RawHttp>,
    #[serde(default)]
    remote_write: Vec<remote_write::RawRemoteWrite>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
    #[serde(default)]
    templates: BTreeMap<String, RawTemplate>,
    #[serde(default)]
    groups: BTreeMap<String, RawGroup>,
    #[serde(default)]
    hosts: BTreeMap<String, RawHost>,
    #[serde(default)]
    triggers: BTreeMap<String, triggers::RawTrigger>,
    #[serde(default)]
    notify: notify::RawNotify,
    rollout: Option<rollout::RawRollout>,
}

fn default_listen() -> String {
    format!("127.0.0.1:{DEFAULT_PORT}")
}
fn default_tolerance() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 86_400))
}

fn default_liveness() -> String {
    "uptime".into()
}
fn default_refresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_max_connections() -> usize {
    10_000
}
fn default_handshake_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(90))
}
fn default_max_handshakes() -> usize {
    1_000
}
fn default_max_frame() -> ByteSize {
    ByteSize(DEFAULT_MAX_FRAME as u64)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    plugin: String,
    interval: HumanDuration,
    #[serde(default)]
    params: BTreeMap<String, ParamValue>,
    sha256: Option<String>,
    #[serde(default)]
    grants: Vec<GrantName>,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    limits: LimitOverrides,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    services: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    templates: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    token: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    templates: Vec<String>,
    #[serde(default)]
    services: Vec<String>,
    liveness_service: Option<String>,
}

/// Settings of the receiver process itself (not reloadable: listen and
/// database need a restart; the rest apply on reload).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub listen: String,
    pub database: PathBuf,
    pub late_tolerance: Duration,
    /// Reports, gaps and events older than this are deleted.
    pub retention: Duration,
    pub schedule_refresh: Duration,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_frame: usize,
    /// Connections still in their handshake at once; past it the oldest of
    /// them is dropped, so idle or slow connections cannot keep agents out.
    pub max_handshakes: usize,
    pub tls: Option<ServerTls>,
    /// The HTTP listener (`/metrics`, the status page, `/api`), if configured.
    pub http: Option<HttpSettings>,
    /// Where every stored sample is forwarded (`[[remote_write]]`).
    pub remote_write: Vec<RemoteWrite>,
}

/// `[tls]` of the receiver.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The receiver's certificate chain and key, PEM.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// If set, every agent must present a certificate signed by this CA
    /// (in addition to its token).
    pub client_ca: Option<PathBuf>,
}

/// One host as the receiver knows it.
#[derive(Clone, Debug)]
pub struct HostModel {
    /// sha256 of the token: compared in constant time, never kept in clear.
    pub token_hash: [u8; 32],
    pub schedule: Schedule,
    /// The service whose lateness makes the host UNREACHABLE.
    pub liveness_service: String,
    /// The triggers on this host's services, by service.
    pub triggers: BTreeMap<String, Vec<Arc<Trigger>>>,
    /// The groups the host is in (maintenance windows name them).
    pub groups: Vec<String>,
}

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Model {
    pub settings: Settings,
    pub hosts: BTreeMap<String, HostModel>,
    /// `[notify]`: who is told of problems.
    pub notify: NotifyConfig,
    /// `[rollout]`: how a new build of a running plugin reaches the hosts
    /// (none: to all at once).
    pub rollout: Option<RolloutPolicy>,
    /// The services whose build `plugin_dir` decides (no `sha256` of their
    /// own): the ones a rollout may pin per host.
    pub distributed: BTreeSet<String>,
}

impl Model {
    /// Read and validate `path` (reading and checking the plugins of its
    /// `plugin_dir`).
    pub fn load(path: &Path) -> anyhow::Result<Model> {
        Model::load_with(path, &mut None)
    }

    /// Read and validate `path`, pinning the plugins of `library` (the
    /// running receiver's, kept up to date by its watch). A library of
    /// another directory than the file's `plugin_dir` is replaced by a scan
    /// of that one.
    pub fn load_with(path: &Path, library: &mut Option<Library>) -> anyhow::Result<Model> {
        load_toml(path, |raw: RawConfig, base| raw.resolve(base, library))
    }
}

/// The database a configuration names, for the read-only commands: when the
/// file has errors elsewhere, its `database` key alone is enough to show
/// what the running receiver stored (the error comes back as a warning).
pub fn database_of(path: &Path) -> anyhow::Result<(PathBuf, Option<anyhow::Error>)> {
    let error = match Model::load(path) {
        Ok(model) => return Ok((model.settings.database, None)),
        Err(e) => e,
    };
    let database = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| table.get("database")?.as_str().map(PathBuf::from));
    match database {
        Some(database) => {
            let base = path.parent().unwrap_or(Path::new("."));
            Ok((base.join(database), Some(error)))
        }
        None => Err(error),
    }
}

/// Constant-time equality of two token digests: the time taken does not
/// tell an attacker how many leading bytes were right.
pub fn token_matches(expected: &[u8; 32], token: &str) -> bool {
    let given = sha256(token.as_bytes());
    let diff = expected
        .iter()
        .zip(given.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

impl RawConfig {
    fn resolve(self, base: &Path, library: &mut Option<Library>) -> anyhow::Result<Model> {
        if self.max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        if self.max_handshakes == 0 || self.max_handshakes >= self.max_connections {
            bail!(
                "max_handshakes ({}) must be at least 1 and below max_connections ({}), so agents that finished their handshake always find room",
                self.max_handshakes,
                self.max_connections
            );
        }
        if self.retention.0 < Duration::from_secs(3600) {
            bail!(
                "retention {} is below 1h: keep at least an hour of history (e.g. \"30d\")",
                self.retention
            );
        }
        if self.max_frame.0 < 64 << 10 || self.max_frame.0 > 1 << 30 {
            bail!(
                "max_frame {} must lie between 64KiB and 1GiB",
                self.max_frame
            );
        }
        let plugin_dir = self.plugin_dir.as_ref().map(|dir| base.join(dir));
        if library.as_ref().map(Library::dir) != plugin_dir.as_deref() {
            *library = plugin_dir.as_deref().map(Library::scan).transpose()?;
        }
        let pins = library.as_ref();
        let mut services = BTreeMap::new();
        for (name, s) in &self.services {
            let service = resolve_service(name, s, pins)
                .map_err(|e| anyhow::anyhow!("[services.{name}]: {e}"))?;
            services.insert(name.clone(), service);
        }
        for (name, t) in &self.templates {
            for s in &t.services {
                if !services.contains_key(s) {
                    bail!(
                        "[templates.{name}]: no service {s:?}: define [services.{s}] or remove it from the template"
                    );
                }
            }
        }
        for (name, g) in &self.groups {
            for t in &g.templates {
                if !self.templates.contains_key(t) {
                    bail!(
                        "[groups.{name}]: no template {t:?}: define [templates.{t}] or remove it from the group"
                    );
                }
            }
        }
        let placed = triggers::resolve(
            &self.triggers,
            &services.keys().map(String::as_str).collect(),
            &self.templates.keys().map(String::as_str).collect(),
        )?;
        let notify = self.notify.resolve(base)?;
        let group_names: Vec<&str> = self.groups.keys().map(String::as_str).collect();
        let rollout = self
            .rollout
            .as_ref()
            .map(|r| r.resolve(&group_names))
            .transpose()
            .map_err(|e| anyhow::anyhow!("[rollout]: {e}"))?;
        let distributed = match library {
            Some(_) => self
                .services
                .iter()
                .filter(|(_, s)| s.sha256.is_none())
                .map(|(name, _)| name.clone())
                .collect(),
            None => BTreeSet::new(),
        };
        let mut hosts = BTreeMap::new();
        for (name, h) in &self.hosts {
            check_name(name).map_err(|e| anyhow::anyhow!("[hosts.{name}]: host {e}"))?;
            let host = self
                .resolve_host(h, &services, &placed)
                .map_err(|e| anyhow::anyhow!("[hosts.{name}]: {e}"))?;
            hosts.insert(name.clone(), host);
        }
        Ok(Model {
            settings: Settings {
                listen: self.listen,
                database: base.join(self.database),
                late_tolerance: self.late_tolerance.0,
                retention: self.retention.0,
                schedule_refresh: self.schedule_refresh.0.max(Duration::from_secs(1)),
                max_connections: self.max_connections,
                handshake_timeout: self.handshake_timeout.0,
                idle_timeout: self.idle_timeout.0,
                max_frame: self.max_frame.0 as usize,
                max_handshakes: self.max_handshakes,
                http: self
                    .http
                    .map(http::RawHttp::resolve)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("[http]: {e}"))?,
                remote_write: remote_write::resolve(self.remote_write)?,
                tls: self.tls.map(|t| ServerTls {
                    cert: base.join(t.cert),
                    key: base.join(t.key),
                    client_ca: t.client_ca.map(|c| base.join(c)),
                }),
            },
            hosts,
            notify,
            rollout,
            distributed,
        })
    }

    /// host -> services, host -> templates -> services and
    /// host -> groups -> templates -> services, each service once.
    fn resolve_host(
        &self,
        h: &RawHost,
        services: &BTreeMap<String, ScheduledService>,
        placed: &[triggers::Placed],
    ) -> anyhow::Result<HostModel> {
        if h.token.len() < 8 {
            bail!(
                "token is shorter than 8 characters: use a long random one (e.g. `openssl rand -hex 16`)"
            );
        }
        let mut templates: BTreeSet<&str> = h.templates.iter().map(String::as_str).collect();
        for g in &h.groups {
            let group = self.groups.get(g).ok_or_else(|| {
                anyhow::anyhow!("no group {g:?}: define [groups.{g}] or remove it")
            })?;
            templates.extend(group.templates.iter().map(String::as_str));
        }
        let mut names: BTreeSet<&str> = h.services.iter().map(String::as_str).collect();
        for t in &templates {
            let template = self.templates.get(*t).ok_or_else(|| {
                anyhow::anyhow!("no template {t:?}: define [templates.{t}] or remove it")
            })?;
            names.extend(template.services.iter().map(String::as_str));
        }
        let triggers = triggers::for_host(placed, &names, &templates);
        let scheduled = names
            .into_iter()
            .map(|s| {
                services.get(s).cloned().ok_or_else(|| {
                    anyhow::anyhow!("no service {s:?}: define [services.{s}] or remove it")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let liveness_service = h
            .liveness_service
            .clone()
            .unwrap_or_else(|| self.liveness_service.clone());
        if !scheduled.iter().any(|s| s.name == liveness_service) {
            bail!(
                "the host does not run its liveness service {liveness_service:?}: add it (through a template) or set liveness_service for the host"
            );
        }
        Ok(HostModel {
            token_hash: sha256(h.token.as_bytes()),
            schedule: Schedule {
                revision: revision(&scheduled),
                services: scheduled,
            },
            liveness_service,
            triggers,
            groups: h.groups.clone(),
        })
    }
}

fn resolve_service(
    name: &str,
    s: &RawService,
    pins: Option<&Library>,
) -> anyhow::Result<ScheduledService> {
    check_name(name).map_err(|e| anyhow::anyhow!("service {e}"))?;
    check_name(&s.plugin).map_err(|e| anyhow::anyhow!("plugin {e}"))?;
    if s.interval.0 < Duration::from_millis(100) {
        bail!("interval {} is below 100ms", s.interval);
    }
    sandglass_core::limits::Limits::default()
        .with(&s.limits)
        .map_err(|e| anyhow::anyhow!("limits: {e}"))?;
    if s.grants.contains(&GrantName::Files) == s.files.is_empty() {
        bail!("grant \"files\" and a non-empty `files` list go together; set both or neither");
    }
    let sha256 = match (&s.sha256, pins) {
        (Some(sha), _) => {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("sha256 {sha:?} is not 64 hex digits (see `agent plugin info FILE`)");
            }
            Some(sha.to_ascii_lowercase())
        }
        (None, Some(library)) => Some(library.pin(&s.plugin)?),
        (None, None) => None,
    };
    let l = &s.limits;
    Ok(ScheduledService {
        name: name.to_owned(),
        plugin: s.plugin.clone(),
        sha256,
        interval_ms: s.interval.0.as_millis() as u64,
        params: s
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.to_text()))
            .collect(),
        grants: s.grants.clone(),
        files: s.files.clone(),
        limits: ServiceLimits {
            fuel: l.fuel,
            deadline_ms: l.deadline.map(|d| d.0.as_millis() as u64),
            memory: l.memory.map(|b| b.0),
            max_samples: l.max_samples.map(|n| n as u64),
            max_output_bytes: l.max_output_bytes.map(|b| b.0),
            max_stdio_bytes: l.max_stdio_bytes.map(|b| b.0),
            max_state_bytes: l.max_state_bytes.map(|b| b.0),
        },
    })
}

/// A schedule's revision: a hash of its content, so it changes exactly when
/// the content does, across receiver restarts too. Never 0 (0 = "none").
pub(crate) fn revision(services: &[ScheduledService]) -> u64 {
    let bytes = rmp_serde::to_vec(services).expect("a schedule always encodes");
    let digest = sha256(&bytes);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::check::fixtures;

    fn load(text: &str) -> anyhow::Result<Model> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receiver.toml");
        std::fs::write(&path, text).unwrap();
        Model::load(&path)
    }

    const FLEET: &str = r#"
database = "db.sqlite"
[services.uptime]
plugin = "uptime"
interval = "10s"
[services.cpu]
plugin = "cpu"
interval = "5s"
params = { warn = 90 }
[services.nginx]
plugin = "nginx"
interval = "30s"
[templates.linux]
services = ["uptime", "cpu"]
[templates.web]
services = ["nginx"]
[groups.web]
templates = ["linux", "web"]
[hosts.web-01]
token = "0123456789abcdef"
groups = ["web"]
[hosts.db-01]
token = "fedcba9876543210"
templates = ["linux"]
"#;

    #[test]
    fn hosts_get_services_through_groups_and_templates() {
        let model = load(FLEET).unwrap();
        let names = |h: &str| -> Vec<String> {
            model.hosts[h]
                .schedule
                .services
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        assert_eq!(names("web-01"), ["cpu", "nginx", "uptime"]);
        assert_eq!(names("db-01"), ["cpu", "uptime"]);
        let cpu = &model.hosts["db-01"].schedule.services[0];
        assert_eq!(cpu.interval_ms, 5000);
        assert_eq!(cpu.params, [("warn".to_string(), "90".to_string())]);
        assert_eq!(model.settings.late_tolerance, Duration::from_secs(5));
        assert!(model.settings.database.ends_with("db.sqlite"));
    }

    #[test]
    fn the_revision_follows_the_content() {
        let a = load(FLEET).unwrap();
        let again = load(FLEET).unwrap();
        assert_eq!(
            a.hosts["db-01"].schedule.revision,
            again.hosts["db-01"].schedule.revision
        );
        let changed = load(&FLEET.replace("interval = \"5s\"", "interval = \"2s\"")).unwrap();
        assert_ne!(
            a.hosts["db-01"].schedule.revision,
            changed.hosts["db-01"].schedule.revision
        );
        assert_ne!(a.hosts["web-01"].schedule.revision, 0);
    }

    #[test]
    fn dangling_names_and_bad_values_say_where() {
        let err = load(&FLEET.replace(
            "templates = [\"linux\", \"web\"]",
            "templates = [\"linux\", \"webb\"]",
        ))
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("[groups.web]: no template \"webb\""),
            "{err:#}"
        );
        let err =
            load(&FLEET.replace("services = [\"nginx\"]", "services = [\"nginx\", \"disk\"]"))
                .unwrap_err();
        assert!(format!("{err:#}").contains("[templates.web]"), "{err:#}");
        let err = load(&FLEET.replace("\"fedcba9876543210\"", "\"short\"")).unwrap_err();
        assert!(
            format!("{err:#}").contains("[hosts.db-01]: token"),
            "{err:#}"
        );
        let err = load(&FLEET.replace(
            "[hosts.db-01]\n",
            "[hosts.db-01]\nliveness_service = \"nginx\"\n",
        ))
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("liveness service \"nginx\""),
            "{err:#}"
        );
        let err = load(&FLEET.replace("interval = \"30s\"", "intervall = \"30s\"")).unwrap_err();
        assert!(format!("{err:#}").contains("intervall"), "{err:#}");
    }

    #[test]
    fn tokens_compare_by_digest() {
        let model = load(FLEET).unwrap();
        let hash = &model.hosts["web-01"].token_hash;
        assert!(token_matches(hash, "0123456789abcdef"));
        assert!(!token_matches(hash, "0123456789abcdeF"));
        assert!(!token_matches(hash, ""));
    }

    #[test]
    fn plugin_dir_pins_sha256() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        let uptime_wasm = fixtures::command("uptime");
        std::fs::write(dir.path().join("plugins/uptime.wasm"), &uptime_wasm).unwrap();
        std::fs::write(
            dir.path().join("plugins/cpu.wasm"),
            fixtures::command("cpu"),
        )
        .unwrap();
        let path = dir.path().join("receiver.toml");
        std::fs::write(&path, format!("plugin_dir = \"plugins\"\n{FLEET}")).unwrap();
        let err = Model::load(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("plugin \"nginx\" is not in plugin_dir"),
            "{err:#}"
        );
        std::fs::write(dir.path().join("plugins/nginx.wasm"), b"nginx").unwrap();
        let err = Model::load(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("plugin \"nginx\" in plugin_dir")
                && format!("{err:#}").contains("not valid WebAssembly"),
            "{err:#}"
        );
        std::fs::write(
            dir.path().join("plugins/nginx.wasm"),
            fixtures::command("nginx"),
        )
        .unwrap();
        let model = Model::load(&path).unwrap();
        let uptime = model.hosts["db-01"]
            .schedule
            .services
            .iter()
            .find(|s| s.name == "uptime")
            .unwrap();
        assert_eq!(
            uptime.sha256.as_deref(),
            Some(sandglass_core::hash::sha256_hex(&uptime_wasm).as_str())
        );
    }
}
