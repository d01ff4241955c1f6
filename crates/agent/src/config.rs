//! The agent's configuration file (TOML). Unknown keys are errors that name
//! the file, line and key. `examples/agent.toml` documents every field and a
//! test loads it.

use anyhow::bail;
use sandglass_core::config::{ParamValue, load_toml};
use sandglass_core::names::check_name;
use sandglass_core::units::{ByteSize, HumanDuration};
use sandglass_protocol::GrantName;
use sandglass_runtime::{CompileLimits, LimitOverrides, Limits};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `agent.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's id. Default: the machine's hostname.
    pub host_id: Option<String>,
    /// The receiver's address, `host:port`, or a list of them: the agent
    /// uses the first that answers and returns to earlier ones by itself.
    /// Needed by `agent run`.
    pub receiver: Option<Receivers>,
    /// This host's credential at the receiver; needed by `agent run`.
    pub token: Option<String>,
    /// Directory holding the plugin `.wasm` files. Relative paths here and
    /// below are resolved against the directory of the config file.
    pub plugin_dir: PathBuf,
    /// Where the agent keeps plugin state (`state/`) and compiled plugins
    /// (`cache/`). Must be writable by the agent only.
    pub state_dir: PathBuf,
    /// Default limits for every service (each field optional).
    #[serde(default)]
    pub limits: LimitOverrides,
    /// What the receiver's schedule may grant to services on this host.
    #[serde(default)]
    pub allow: Allow,
    /// How `agent run` talks to the receiver.
    #[serde(default)]
    pub connection: ConnectionConfig,
    /// The on-disk spool of reports not yet acknowledged.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// TLS to the receiver (absent: plain TCP).
    pub tls: Option<ClientTls>,
    /// Compiled plugins and plugins fetched from the receiver.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Local services, run by `agent once` (in `agent run` the receiver's
    /// schedule decides what runs).
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
}

/// The grants this host lets the receiver hand out: the host's operator,
/// not the central one, decides which files plugins may read.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    /// Read-only `/sys`. Default true.
    #[serde(default = "yes")]
    pub sys: bool,
    /// Directories (and everything below them) that a `files` grant may name.
    /// Default none.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Fetch a plugin the schedule pins from the receiver when `plugin_dir`
    /// lacks that exact build. Default true.
    #[serde(default = "yes")]
    pub remote_plugins: bool,
}

fn yes() -> bool {
    true
}

impl Default for Allow {
    fn default() -> Self {
        Allow {
            sys: true,
            files: Vec::new(),
            remote_plugins: true,
        }
    }
}

/// `[connection]`: reconnecting, batching and schedule refresh.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// First wait before reconnecting; doubles per failure. Default "500ms".
    pub reconnect_min: HumanDuration,
    /// Longest wait between reconnect attempts. Default "30s".
    pub reconnect_max: HumanDuration,
    /// How long a report waits at most for others to share its batch. A batch
    /// goes at once when no run is left in progress (a cycle's last report is
    /// in), so this only bounds the wait behind a slow run. Default "100ms".
    pub batch_delay: HumanDuration,
    /// Most reports in one batch. Default 500. A batch also stays below the
    /// largest frame the receiver accepts (its `max_frame`, announced when
    /// it welcomes the agent).
    pub batch_max: usize,
    /// Time allowed to connect and be welcomed. Default "30s". Once
    /// connected, the receiver's preamble and Welcome are waited for at most
    /// 2 × `ping_interval`: a receiver whose backlog took the connection but
    /// that says nothing hangs.
    pub timeout: HumanDuration,
    /// How often the agent pings the receiver. A receiver that sends
    /// nothing for twice this long (it hangs: stopped, or its host is) is
    /// left at once for the next receiver of the list, so a hung receiver
    /// is noticed within 2 × `ping_interval` (20 s by default; a write
    /// blocked on it may add a tenth). A write to a slow receiver is waited
    /// for as long as its host acknowledges bytes. Keep it below half the
    /// receiver's `idle_timeout`. Default "10s".
    pub ping_interval: HumanDuration,
    /// Connected to a later receiver of the list, try the earlier ones again
    /// this often. Default "60s".
    pub failback: HumanDuration,
}

/// One receiver address or several, in order of preference.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Receivers {
    One(String),
    Many(Vec<String>),
}

/// `[spool]`: where reports wait for the receiver's acknowledgement.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Most bytes on disk; beyond it the oldest reports are dropped, and the
    /// receiver is told how many. Default "64MiB".
    pub max_size: ByteSize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_size: ByteSize(64 << 20),
        }
    }
}

/// `[cache]`: compiled plugins (`<state_dir>/cache`) and plugins fetched
/// from the receiver (`<state_dir>/plugins`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Files of a plugin build no scheduled service has used for this long
    /// are removed. Default "7d".
    pub keep_unused: HumanDuration,
    /// Longest compiling one plugin may take (in a child process); a plugin
    /// that takes longer is refused. Default "5m".
    pub compile_time: HumanDuration,
    /// Most memory compiling one plugin may take; a plugin that needs more
    /// is refused. Default "2GiB".
    pub compile_memory: ByteSize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            keep_unused: HumanDuration(Duration::from_secs(7 * 86_400)),
            compile_time: HumanDuration(Duration::from_secs(300)),
            compile_memory: ByteSize(2 << 30),
        }
    }
}

impl CacheConfig {
    /// What compiling a plugin may take.
    pub fn compile_limits(&self) -> CompileLimits {
        CompileLimits {
            time: self.compile_time.0,
            memory: self.compile_memory.0,
        }
    }
}

/// `[tls]` of the agent: how to check the receiver, and this host's
/// certificate if the receiver asks for one.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// CA certificate(s), PEM, that signed the receiver's certificate.
    pub ca: PathBuf,
    /// This host's certificate chain and key, PEM (for receivers that
    /// require client certificates).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the receiver's certificate must carry. Default: the host
    /// part of each receiver address.
    pub server_name: Option<String>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            reconnect_min: HumanDuration(Duration::from_millis(500)),
            reconnect_max: HumanDuration(Duration::from_secs(30)),
            batch_delay: HumanDuration(Duration::from_millis(100)),
            batch_max: 500,
            timeout: HumanDuration(Duration::from_secs(30)),
            ping_interval: HumanDuration(Duration::from_secs(10)),
            failback: HumanDuration(Duration::from_secs(60)),
        }
    }
}

/// One `[services.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Plugin name (the file `<plugin_dir>/<plugin>.wasm`) or a path to a `.wasm`.
    pub plugin: String,
    /// Parameters handed to the plugin; numbers and booleans are passed as text.
    #[serde(default)]
    pub params: BTreeMap<String, ParamValue>,
    /// Capabilities beyond read-only `/proc`: `"sys"` (read-only `/sys`),
    /// `"files"` (read-only access to the directories in `files`).
    #[serde(default)]
    pub grants: Vec<GrantName>,
    /// Directories granted read-only with `"files"`.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Limits for this service, overriding the global `[limits]`.
    #[serde(default)]
    pub limits: LimitOverrides,
}

/// A service ready to run: paths resolved, limits merged, grants checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    pub plugin: String,
    pub plugin_path: PathBuf,
    pub params: Vec<(String, String)>,
    pub sys: bool,
    pub files: Vec<PathBuf>,
    pub limits: Limits,
    /// The plugin's sha256 the receiver pins, if it does.
    pub sha256: Option<String>,
    /// Run every this often (`agent run`).
    pub interval: Duration,
    /// Why this agent will not run the service (a grant its `[allow]` does
    /// not permit); every run reports this as UNKNOWN instead.
    pub refused: Option<String>,
}

/// The agent configuration after validation.
#[derive(Debug)]
pub struct Agent {
    pub host_id: String,
    /// Receivers in order of preference; empty if none is configured.
    pub receivers: Vec<String>,
    pub token: Option<String>,
    pub plugin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// `[limits]` applied over the built-in defaults.
    pub limits: Limits,
    pub allow: Allow,
    pub connection: ConnectionConfig,
    pub spool: SpoolConfig,
    pub tls: Option<ClientTls>,
    pub cache: CacheConfig,
    pub services: Vec<Service>,
}

impl Agent {
    /// Read and validate `path`; warn when the file holds a token and others
    /// may read it.
    pub fn load(path: &Path) -> anyhow::Result<Agent> {
        let agent = load_toml(path, AgentConfig::resolve)?;
        if agent.token.is_some()
            && let Some(warning) = readable_by_others(path)
        {
            tracing::warn!("{warning}");
        }
        Ok(agent)
    }
}

/// A warning if `path` (which holds a secret) is readable by group or others.
pub fn readable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} holds the token and is readable by other users (mode {:o}): run chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

impl AgentConfig {
    fn resolve(self, base: &Path) -> anyhow::Result<Agent> {
        let defaults = Limits::default()
            .with(&self.limits)
            .map_err(|e| anyhow::anyhow!("[limits]: {e}"))?;
        let plugin_dir = base.join(&self.plugin_dir);
        let mut services = Vec::new();
        for (name, s) in self.services {
            check_name(&name).map_err(|e| anyhow::anyhow!("[services.{name}]: {e}"))?;
            let limits = defaults
                .with(&s.limits)
                .map_err(|e| anyhow::anyhow!("[services.{name}.limits]: {e}"))?;
            let plugin_path = if s.plugin.ends_with(".wasm") {
                base.join(&s.plugin)
            } else {
                plugin_dir.join(format!("{}.wasm", s.plugin))
            };
            let files_granted = s.grants.contains(&GrantName::Files);
            if files_granted == s.files.is_empty() {
                bail!(
                    "[services.{name}]: grant \"files\" and a non-empty `files` list go together; set both or neither"
                );
            }
            let files = s.files.iter().map(|f| base.join(f)).collect::<Vec<_>>();
            for f in &files {
                if !f.is_dir() {
                    bail!(
                        "[services.{name}]: granted path {} is not a directory; grant the directory that holds the files",
                        f.display()
                    );
                }
            }
            services.push(Service {
                name,
                plugin: s.plugin,
                plugin_path,
                params: s
                    .params
                    .into_iter()
                    .map(|(k, v)| (k, v.to_text()))
                    .collect(),
                sys: s.grants.contains(&GrantName::Sys),
                files,
                limits,
                sha256: None,
                interval: Duration::from_secs(60),
                refused: None,
            });
        }
        let host_id = match self.host_id {
            Some(id) => id,
            None => hostname(),
        };
        if host_id.is_empty() {
            bail!("host_id is empty: set host_id = \"NAME\" as the receiver knows this host");
        }
        if self.connection.batch_max == 0 {
            bail!("[connection]: batch_max must be at least 1");
        }
        if self.connection.ping_interval.0 < Duration::from_millis(100) {
            bail!("[connection]: ping_interval must be at least 100ms");
        }
        if self.spool.max_size.0 < 64 << 10 {
            bail!("[spool]: max_size must be at least 64KiB");
        }
        if self.cache.compile_time.0 < Duration::from_secs(1) {
            bail!(
                "[cache]: compile_time must be at least 1s (compiling a small plugin takes ~100ms)"
            );
        }
        if self.cache.compile_memory.0 < 64 << 20 {
            bail!(
                "[cache]: compile_memory must be at least 64MiB (the compiler alone needs ~30MiB)"
            );
        }
        let receivers = match self.receiver {
            None => Vec::new(),
            Some(Receivers::One(r)) => vec![r],
            Some(Receivers::Many(list)) => list,
        };
        if receivers.iter().any(|r| !r.contains(':')) {
            bail!("receiver: every address is host:port, e.g. \"receiver.example:7531\"");
        }
        let tls = self.tls.map(|t| ClientTls {
            ca: base.join(t.ca),
            cert: t.cert.map(|c| base.join(c)),
            key: t.key.map(|k| base.join(k)),
            server_name: t.server_name,
        });
        if tls
            .as_ref()
            .is_some_and(|t| t.cert.is_some() != t.key.is_some())
        {
            bail!("[tls]: cert and key go together; set both or neither");
        }
        let allow = Allow {
            sys: self.allow.sys,
            files: self.allow.files.iter().map(|f| base.join(f)).collect(),
            remote_plugins: self.allow.remote_plugins,
        };
        Ok(Agent {
            host_id,
            receivers,
            token: self.token,
            plugin_dir,
            state_dir: base.join(self.state_dir),
            limits: defaults,
            allow,
            connection: self.connection,
            spool: self.spool,
            tls,
            cache: self.cache,
            services,
        })
    }
}

/// The machine's hostname, from the kernel.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> anyhow::Result<Agent> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        Agent::load(&path)
    }

    #[test]
    fn example_config_loads_with_documented_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agent.toml");
        let agent = Agent::load(&path).unwrap();
        let names: Vec<_> = agent.services.iter().map(|s| s.name.as_str()).collect();
        for core in [
            "cpu",
            "memory",
            "loadavg",
            "uptime",
            "network",
            "diskio",
            "processes",
            "cpuinfo",
        ] {
            assert!(names.contains(&core), "{core} missing from {names:?}");
        }
        let cpu = agent.services.iter().find(|s| s.name == "cpu").unwrap();
        assert!(
            cpu.plugin_path.ends_with("target/plugins/cpu.wasm"),
            "{}",
            cpu.plugin_path.display()
        );
        assert_eq!(
            cpu.limits,
            Limits::default(),
            "the example documents the defaults"
        );
        assert_eq!(
            format!("{:?}", agent.connection),
            format!("{:?}", ConnectionConfig::default()),
            "the example documents the [connection] defaults"
        );
    }

    #[test]
    fn a_token_file_readable_by_others_is_named_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "token = \"x\"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = readable_by_others(&path).unwrap();
        assert!(warning.contains("mode 644"), "{warning}");
        assert!(warning.contains("chmod 600"), "{warning}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(readable_by_others(&path), None);
    }

    #[test]
    fn receivers_one_or_many_and_spool_bounds() {
        let base = "plugin_dir = \"p\"\nstate_dir = \"s\"\n";
        let one = load_text(&format!("receiver = \"r:1\"\n{base}")).unwrap();
        assert_eq!(one.receivers, ["r:1"]);
        let many = load_text(&format!("receiver = [\"a:1\", \"b:2\"]\n{base}")).unwrap();
        assert_eq!(many.receivers, ["a:1", "b:2"]);
        let err = load_text(&format!("receiver = \"nohostport\"\n{base}")).unwrap_err();
        assert!(format!("{err:#}").contains("host:port"), "{err:#}");
        let err = load_text(&format!("{base}[spool]\nmax_size = \"1KiB\"\n")).unwrap_err();
        assert!(format!("{err:#}").contains("[spool]"), "{err:#}");
        let err = load_text(&format!("{base}[connection]\nping_interval = \"0s\"\n")).unwrap_err();
        assert!(format!("{err:#}").contains("ping_interval"), "{err:#}");
        let err =
            load_text(&format!("{base}[tls]\nca = \"ca.pem\"\ncert = \"a.pem\"\n")).unwrap_err();
        assert!(format!("{err:#}").contains("cert and key"), "{err:#}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = load_text("plugin_dir = \"p\"\nstate_dir = \"s\"\n\n[services.cpu]\nplugin = \"cpu\"\nintreval = 5\n")
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("agent.toml"), "{text}");
        assert!(text.contains("line 6"), "{text}");
        assert!(text.contains("intreval"), "{text}");
    }

    #[test]
    fn params_limits_and_grants() {
        let agent = load_text(
            "plugin_dir = \"plugins\"\nstate_dir = \"state\"\n[limits]\ndeadline = \"1s\"\n\
             [services.cpu]\nplugin = \"cpu\"\nparams = { warn = 80, note = \"x\" }\ngrants = [\"sys\"]\n\
             [services.cpu.limits]\nmemory = \"8MiB\"\n",
        )
        .unwrap();
        let cpu = &agent.services[0];
        assert_eq!(
            cpu.params,
            [
                ("note".to_string(), "x".to_string()),
                ("warn".into(), "80".into())
            ]
        );
        assert!(cpu.sys);
        assert_eq!(cpu.limits.memory.0, 8 << 20);
        assert_eq!(cpu.limits.deadline.0, std::time::Duration::from_secs(1));
    }

    #[test]
    fn bad_values_name_the_service() {
        let err = load_text("plugin_dir = \"p\"\nstate_dir = \"s\"\n[services.x]\nplugin = \"cpu\"\nlimits = { deadline = \"2\" }\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("\"2s\""), "{err:#}");
        let err = load_text("plugin_dir = \"p\"\nstate_dir = \"s\"\n[services.x]\nplugin = \"cpu\"\ngrants = [\"files\"]\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("[services.x]"), "{err:#}");
        let err = load_text(
            "plugin_dir = \"p\"\nstate_dir = \"s\"\n[services.\"a/b\"]\nplugin = \"cpu\"\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("may only hold"), "{err:#}");
    }
}
