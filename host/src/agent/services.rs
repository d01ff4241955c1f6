//! Running configured services: load each plugin once, check its grants, run
//! it in the sandbox with the service's state, keep the new state.

use crate::config::Service;
use crate::report::{Report, Status};
use crate::runtime::{Grant, Plugin, RunOutcome, RunRequest, Runtime, View};
use crate::state_store::StateStore;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Runs services; loads each plugin file once and keeps it.
pub struct ServiceRunner {
    runtime: Runtime,
    states: StateStore,
    plugins: HashMap<PathBuf, Result<Arc<Plugin>, String>>,
    /// Each service's filesystem view, built on its first run.
    views: HashMap<String, Arc<View>>,
}

impl ServiceRunner {
    /// A runner keeping state and compiled plugins under `state_dir`.
    pub fn new(state_dir: &std::path::Path) -> anyhow::Result<ServiceRunner> {
        Ok(ServiceRunner {
            runtime: Runtime::new(Some(state_dir.join("cache")))?,
            states: StateStore::open(state_dir.join("state"))?,
            plugins: HashMap::new(),
            views: HashMap::new(),
        })
    }

    /// The plugin a service names, loaded on first use. A failure is
    /// remembered (as text) so every run of the service reports it.
    pub fn plugin(&mut self, service: &Service) -> Result<Arc<Plugin>, String> {
        let runtime = &self.runtime;
        self.plugins
            .entry(service.plugin_path.clone())
            .or_insert_with(|| {
                runtime
                    .load(&service.plugin_path)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
    }

    /// Run `service` once and report. Never fails: whatever goes wrong
    /// becomes an UNKNOWN status that says why.
    pub fn run(&mut self, service: &Service) -> Report {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let unknown = |text: String| Report {
            service: service.name.clone(),
            plugin: service.plugin.clone(),
            time_ms,
            status: Status::unknown(text),
            samples: Vec::new(),
            cost: Default::default(),
        };
        let plugin = match self.plugin(service) {
            Ok(plugin) => plugin,
            Err(e) => return unknown(e),
        };
        if let Some(missing) = missing_grant(&plugin, service) {
            return unknown(missing);
        }
        let view = match View::new(service.sys, &service.files) {
            Ok(view) => Arc::new(view),
            Err(e) => {
                return unknown(format!(
                    "cannot prepare the plugin's view of the filesystem: {e}"
                ));
            }
        };
        let request = RunRequest {
            service: service.name.clone(),
            params: service.params.clone(),
            state: self.states.load(&service.name),
            limits: service.limits.clone(),
            view,
        };
        let outcome = self.runtime.run(&plugin, request);
        self.report(service, &plugin, time_ms, outcome)
    }

    fn report(
        &self,
        service: &Service,
        plugin: &Plugin,
        time_ms: u64,
        outcome: RunOutcome,
    ) -> Report {
        let status = outcome.status();
        if let Ok(output) = &outcome.result
            && let Err(e) = self.states.save(&service.name, output.state.as_deref())
        {
            tracing::warn!(service = service.name, "{e:#}");
        }
        if let Err(failure) = &outcome.result {
            tracing::warn!(
                service = service.name,
                plugin = plugin.description.name,
                "run failed: {failure}"
            );
        }
        Report {
            service: service.name.clone(),
            plugin: plugin.description.name.clone(),
            time_ms,
            status,
            samples: outcome.result.map(|o| o.samples).unwrap_or_default(),
            cost: outcome.cost,
        }
    }
}

/// A grant the plugin declares but the service does not give, as the text
/// the operator needs to fix it.
fn missing_grant(plugin: &Plugin, service: &Service) -> Option<String> {
    plugin.description.grants.iter().find_map(|grant| {
        let (given, name) = match grant {
            Grant::Sys => (service.sys, "sys"),
            Grant::Files => (!service.files.is_empty(), "files"),
        };
        (!given).then(|| {
            format!(
                "plugin {} needs grant \"{name}\": add grants = [\"{name}\"] to [services.{}] in the agent config",
                plugin.description.name, service.name
            )
        })
    })
}
