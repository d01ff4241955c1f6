//! Trying one plugin file from the command line, outside any configuration:
//! what `agent plugin run` and `agent plugin check` share.

use crate::config::Service;
use crate::services::missing_grant;
use anyhow::Context;
use sandglass_core::report::Report;
use sandglass_runtime::{Limits, Plugin, RunOutcome, RunRequest, Runtime, View};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The grants, parameters, state file and limits of one trial run.
#[derive(Clone, Debug, Default)]
pub struct Trial {
    pub params: Vec<(String, String)>,
    /// Grant read-only `/sys`.
    pub sys: bool,
    /// Directories granted read-only (the `files` grant).
    pub files: Vec<PathBuf>,
    /// Read the state from this file before the run, write it back after.
    pub state_file: Option<PathBuf>,
    pub limits: Limits,
}

impl Trial {
    /// Grants as given on the command line: `sys`, or `files` with `files`
    /// directories.
    pub fn grant(&mut self, grants: &[String]) -> anyhow::Result<()> {
        for g in grants {
            match g.as_str() {
                "sys" => self.sys = true,
                "files" if !self.files.is_empty() => {}
                "files" => anyhow::bail!("--grant files needs at least one --files DIR"),
                other => anyhow::bail!("unknown grant {other:?}: use sys or files"),
            }
        }
        Ok(())
    }

    /// The first grant `plugin` declares that this trial does not give, as
    /// the fix to type.
    pub fn missing_grant(&self, plugin: &Plugin) -> Option<String> {
        let grant = missing_grant(plugin, &self.service(plugin))?;
        Some(match grant {
            "files" => "--grant files --files DIR".to_owned(),
            other => format!("--grant {other}"),
        })
    }

    fn service(&self, plugin: &Plugin) -> Service {
        Service {
            name: plugin.description.name.clone(),
            plugin: plugin.description.name.clone(),
            plugin_path: plugin.path.clone(),
            params: self.params.clone(),
            sys: self.sys,
            files: self.files.clone(),
            limits: self.limits.clone(),
            sha256: None,
            interval: Duration::from_secs(60),
            refused: None,
        }
    }

    /// Run `plugin` once in the sandbox; the report and the run's outcome.
    pub fn run(
        &self,
        runtime: &Runtime,
        plugin: &Arc<Plugin>,
    ) -> anyhow::Result<(Report, RunOutcome)> {
        if let Some(fix) = self.missing_grant(plugin) {
            anyhow::bail!(
                "plugin {} needs a grant: pass {fix}",
                plugin.description.name
            );
        }
        let state = match &self.state_file {
            Some(path) if path.exists() => Some(
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            ),
            _ => None,
        };
        let request = RunRequest {
            service: plugin.description.name.clone(),
            params: self.params.clone(),
            state,
            limits: self.limits.clone(),
            view: Arc::new(View::new(self.sys, &self.files)?),
        };
        let outcome = runtime.run(plugin, request);
        if let (Some(path), Ok(output)) = (&self.state_file, &outcome.result)
            && let Some(state) = &output.state
        {
            std::fs::write(path, state)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let report = Report {
            service: plugin.description.name.clone(),
            plugin: plugin.description.name.clone(),
            time_ms: sandglass_core::time::now_ms(),
            status: outcome.status(),
            samples: outcome
                .result
                .as_ref()
                .map(|o| o.samples.clone())
                .unwrap_or_default(),
            cost: outcome.cost.clone(),
        };
        Ok((report, outcome))
    }
}
