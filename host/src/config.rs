//! The agent's configuration file (TOML). Unknown keys are errors that name
//! the file, line and key. `examples/agent.toml` documents every field and a
//! test loads it.

use crate::runtime::{LimitOverrides, Limits};
use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `agent.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's id. Default: the machine's hostname.
    pub host_id: Option<String>,
    /// Directory holding the plugin `.wasm` files. Relative paths here and
    /// below are resolved against the directory of the config file.
    pub plugin_dir: PathBuf,
    /// Where the agent keeps plugin state (`state/`) and compiled plugins
    /// (`cache/`). Must be writable by the agent only.
    pub state_dir: PathBuf,
    /// Default limits for every service (each field optional).
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Services by name: which plugin, with which params, grants and limits.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
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

/// A grant as written in configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantName {
    Sys,
    Files,
}

/// A parameter value: text, or a number or boolean written without quotes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl ParamValue {
    fn into_text(self) -> String {
        match self {
            ParamValue::Text(t) => t,
            ParamValue::Integer(i) => i.to_string(),
            ParamValue::Float(f) => f.to_string(),
            ParamValue::Bool(b) => b.to_string(),
        }
    }
}

/// A service ready to run: paths resolved, limits merged, grants checked.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub plugin: String,
    pub plugin_path: PathBuf,
    pub params: Vec<(String, String)>,
    pub sys: bool,
    pub files: Vec<PathBuf>,
    pub limits: Limits,
}

/// The agent configuration after validation.
#[derive(Debug)]
pub struct Agent {
    pub host_id: String,
    pub state_dir: PathBuf,
    pub services: Vec<Service>,
}

impl Agent {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> anyhow::Result<Agent> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let raw: AgentConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        raw.resolve(base)
            .with_context(|| format!("invalid config {}", path.display()))
    }
}

impl AgentConfig {
    fn resolve(self, base: &Path) -> anyhow::Result<Agent> {
        let defaults = Limits::default()
            .with(&self.limits)
            .map_err(|e| anyhow::anyhow!("[limits]: {e}"))?;
        let plugin_dir = base.join(&self.plugin_dir);
        let mut services = Vec::new();
        for (name, s) in self.services {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                || name.starts_with('.')
            {
                bail!(
                    "[services.{name}]: a service name may only hold letters, digits, '_', '-' and '.'"
                );
            }
            let limits = defaults
                .with(&s.limits)
                .map_err(|e| anyhow::anyhow!("[services.{name}.limits]: {e}"))?;
            let plugin_path = if s.plugin.ends_with(".wasm") {
                base.join(&s.plugin)
            } else {
                plugin_dir.join(format!("{}.wasm", s.plugin))
            };
            let files_granted = s.grants.contains(&GrantName::Files);
            if files_granted != !s.files.is_empty() {
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
                    .map(|(k, v)| (k, v.into_text()))
                    .collect(),
                sys: s.grants.contains(&GrantName::Sys),
                files,
                limits,
            });
        }
        let host_id = match self.host_id {
            Some(id) => id,
            None => hostname(),
        };
        Ok(Agent {
            host_id,
            state_dir: base.join(self.state_dir),
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
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agent.toml");
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
        assert!(format!("{err:#}").contains("service name"), "{err:#}");
    }
}
