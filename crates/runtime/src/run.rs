//! Running a plugin once on the calling thread: a fresh sandbox, the call,
//! and what it returned and cost. [`crate::dispatch`] puts runs on worker
//! threads; [`crate::failure`] names what went wrong.

use super::abi::{self, wit};
use super::diagnose::classify;
use super::failure::RunFailure;
use super::output::Output;
use super::sandbox::{CommandIo, Sandbox, View, new_sandbox};
use super::{Description, Entry, Grant, Limits, MetricInfo, Plugin, Runtime, command, output};
use sandglass_core::report::{Cost, Status};
use sandglass_core::text::Escaped;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Everything one run needs besides the plugin.
#[derive(Clone)]
pub struct RunRequest {
    pub service: String,
    pub params: Vec<(String, String)>,
    pub state: Option<Vec<u8>>,
    pub limits: Limits,
    pub view: Arc<View>,
}

/// The result of one run and what it cost.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub result: Result<Output, RunFailure>,
    pub cost: Cost,
    /// Paths the policy refused during the run (the first few) and the count.
    pub denied: Vec<String>,
    pub denied_count: usize,
}

impl RunOutcome {
    pub(crate) fn refused(reason: RunFailure) -> Self {
        RunOutcome {
            result: Err(reason),
            cost: Cost::default(),
            denied: Vec::new(),
            denied_count: 0,
        }
    }

    /// The status to report: the plugin's, or UNKNOWN naming the failure.
    pub fn status(&self) -> Status {
        match &self.result {
            Ok(output) => output.status.clone(),
            Err(failure) => {
                let mut text = failure.to_string();
                if self.denied_count > 0 {
                    text.push_str(&format!(
                        " ({} opens denied by the sandbox, first {})",
                        self.denied_count, self.denied[0]
                    ));
                }
                Status::unknown(text)
            }
        }
    }
}

/// Ask a freshly compiled plugin to describe itself, under default limits.
pub(super) fn describe(
    runtime: &Runtime,
    pre: &abi::CollectorPre<super::sandbox::SandboxState>,
    path: &Path,
) -> anyhow::Result<Description> {
    let limits = Limits::default();
    let view = Arc::new(View::new(false, &[])?);
    let name = super::file_stem(path);
    let _active = runtime.inner.ticker.activate();
    let mut sandbox = new_sandbox(runtime.engine(), &view, &limits, &name, "describe", None)?;
    let result = pre.instantiate(&mut sandbox.store).and_then(|instance| {
        instance
            .sandglass_collector_plugin()
            .call_describe(&mut sandbox.store)
    });
    let d = result
        .map_err(|e| anyhow::anyhow!("describe failed: {}", classify(e, &sandbox, &limits)))?;
    Ok(Description {
        name: d.name,
        version: d.version,
        abi_version: abi::ABI_VERSION,
        grants: d
            .grants
            .into_iter()
            .map(|g| match g {
                wit::Grant::Sys => Grant::Sys,
                wit::Grant::Files => Grant::Files,
            })
            .collect(),
        interval_seconds: d.interval_seconds,
        metrics: d
            .metrics
            .into_iter()
            .map(|m| MetricInfo {
                name: m.name,
                kind: output::kind(m.kind),
                unit: m.unit,
                help: m.help,
            })
            .collect(),
    })
}

impl Runtime {
    /// Run `plugin` once on this thread. Fuel and the epoch deadline bound the
    /// guest, but a guest blocked inside a host call is not interrupted: use
    /// [`Runtime::run`] unless something else bounds the call.
    pub fn run_here(&self, plugin: &Plugin, request: &RunRequest) -> RunOutcome {
        let _active = self.inner.ticker.activate();
        let start = Instant::now();
        let limits = &request.limits;
        let name = &plugin.description.name;
        let command_io = match &plugin.entry {
            Entry::Collector(_) => None,
            Entry::Command(_) => Some(CommandIo {
                args: command::args(name, &request.params),
                stdin: request.state.clone().unwrap_or_default(),
            }),
        };
        let mut sandbox = match new_sandbox(
            self.engine(),
            &request.view,
            limits,
            name,
            &request.service,
            command_io,
        ) {
            Ok(sandbox) => sandbox,
            Err(e) => {
                return RunOutcome::refused(RunFailure::Refused(format!(
                    "cannot build the sandbox: {e:#}"
                )));
            }
        };
        let collection = match &plugin.entry {
            Entry::Collector(pre) => {
                let called = pre.instantiate(&mut sandbox.store).and_then(|instance| {
                    instance.sandglass_collector_plugin().call_collect(
                        &mut sandbox.store,
                        &request.params,
                        request.state.as_deref(),
                    )
                });
                match called {
                    Err(e) => Err(classify(e, &sandbox, limits)),
                    Ok(Err(message)) => Err(output::plugin_error(message, limits)),
                    Ok(Ok(collection)) => Ok(collection),
                }
            }
            Entry::Command(pre) => command::call(pre, &mut sandbox, limits),
        };
        let result = if sandbox.store.data().open_files_hit {
            // The plugin saw opens fail and may have carried on: its output
            // would be incomplete without saying so.
            Err(RunFailure::OpenFiles(limits.max_open_files))
        } else {
            collection.and_then(|c| output::check(c, limits))
        };
        log_stderr(&sandbox, &plugin.description.name, &request.service);
        let state = sandbox.store.data();
        let cost = Cost {
            wall_micros: start.elapsed().as_micros() as u64,
            fuel: limits.fuel - sandbox.store.get_fuel().unwrap_or(0),
            peak_memory: state.limiter.peak as u64,
        };
        RunOutcome {
            result,
            cost,
            denied: state
                .denied
                .iter()
                .map(|d| format!("{} ({})", d.path.display(), d.rule))
                .collect(),
            denied_count: state.denied_count,
        }
    }
}

/// Route what the plugin wrote to stderr into the agent's log, tagged.
fn log_stderr(sandbox: &Sandbox, plugin: &str, service: &str) {
    let stderr = sandbox.stderr.contents();
    for line in String::from_utf8_lossy(&stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        tracing::info!(plugin, service, stream = "stderr", "{}", Escaped(line));
    }
}
