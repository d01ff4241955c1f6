//! Running a plugin once on the calling thread: a fresh sandbox, the call,
//! and what it returned and cost. [`crate::dispatch`] puts runs on worker
//! threads; [`crate::failure`] names what went wrong.

use super::abi::{self, wit};
use super::account::Account;
use super::diagnose::{classify, classify_lean};
use super::failure::RunFailure;
use super::lean::{self, LeanState};
use super::output::Output;
use super::sandbox::{CommandIo, Sandbox, SandboxState, View, new_sandbox};
use super::{Description, Entry, Grant, Limits, MetricInfo, Plugin, Runtime, command, output};
use sandglass_core::report::{Cost, Status};
use sandglass_core::text::Escaped;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::Store;

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

/// How a freshly compiled plugin's `describe` is called: in which sandbox.
pub(super) enum DescribeIn<'a> {
    Wasi(&'a abi::CollectorPre<SandboxState>),
    Lean(&'a abi::CollectorPre<LeanState>),
}

/// Ask a freshly compiled plugin to describe itself, under default limits;
/// `abi_version` is the one it was built for.
pub(super) fn describe(
    runtime: &Runtime,
    pre: DescribeIn<'_>,
    path: &Path,
    abi_version: &'static str,
) -> anyhow::Result<Description> {
    let limits = Limits::default();
    let view = Arc::new(View::new(false, &[])?);
    let name = super::file_stem(path);
    let _active = runtime.inner.ticker.activate();
    let engine = runtime.engine();
    let described = match pre {
        DescribeIn::Wasi(pre) => {
            let mut sandbox = new_sandbox(engine, &view, &limits, &name, "describe", None)?;
            call_describe(pre, &mut sandbox.store).map_err(|e| classify(e, &sandbox, &limits))
        }
        DescribeIn::Lean(pre) => {
            let mut store = lean::new_store(engine, &view, &limits, &name, "describe")?;
            call_describe(pre, &mut store).map_err(|e| classify_lean(e, store.data(), &limits))
        }
    };
    let d = described.map_err(|failure| anyhow::anyhow!("describe failed: {failure}"))?;
    super::described::check(&d).map_err(|e| anyhow::anyhow!("describe returned {e}"))?;
    Ok(Description {
        name: d.name,
        version: d.version,
        abi_version,
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

fn call_describe<T: 'static>(
    pre: &abi::CollectorPre<T>,
    store: &mut Store<T>,
) -> wasmtime::Result<wit::Description> {
    let instance = pre.instantiate(&mut *store)?;
    instance.sandglass_collector_plugin().call_describe(store)
}

/// A fresh instance of a collector, and its `collect` called once.
fn call_collect<T: 'static>(
    pre: &abi::CollectorPre<T>,
    store: &mut Store<T>,
    request: &RunRequest,
) -> wasmtime::Result<Result<wit::Collection, String>> {
    let instance = pre.instantiate(&mut *store)?;
    instance.sandglass_collector_plugin().call_collect(
        store,
        &request.params,
        request.state.as_deref(),
    )
}

impl Runtime {
    /// Run `plugin` once on this thread. Fuel and the epoch deadline bound the
    /// guest, but a guest blocked inside a host call is not interrupted: use
    /// [`Runtime::run`] unless something else bounds the call.
    pub fn run_here(&self, plugin: &Plugin, request: &RunRequest) -> RunOutcome {
        let _active = self.inner.ticker.activate();
        let start = Instant::now();
        let limits = &request.limits;
        match &plugin.entry {
            Entry::Lean(pre) => self.run_lean(pre, plugin, request, start),
            Entry::Collector(pre) => self.run_wasi(plugin, request, start, None, |sandbox| {
                match call_collect(pre, &mut sandbox.store, request) {
                    Err(e) => Err(classify(e, sandbox, limits)),
                    Ok(Err(message)) => Err(output::plugin_error(message, limits)),
                    Ok(Ok(collection)) => Ok(collection),
                }
            }),
            Entry::Command(pre) => {
                let io = CommandIo {
                    args: command::args(&plugin.description.name, &request.params),
                    stdin: request.state.clone().unwrap_or_default(),
                };
                self.run_wasi(plugin, request, start, Some(io), |sandbox| {
                    command::call(pre, sandbox, limits)
                })
            }
        }
    }

    /// A run in the lean sandbox: no WASI, no stdout or stderr.
    fn run_lean(
        &self,
        pre: &abi::CollectorPre<LeanState>,
        plugin: &Plugin,
        request: &RunRequest,
        start: Instant,
    ) -> RunOutcome {
        let limits = &request.limits;
        let name = &plugin.description.name;
        let mut store =
            match lean::new_store(self.engine(), &request.view, limits, name, &request.service) {
                Ok(store) => store,
                Err(e) => return cannot_build(e),
            };
        let result = match call_collect(pre, &mut store, request) {
            Err(e) => Err(classify_lean(e, store.data(), limits)),
            Ok(returned) => std::mem::take(&mut store.data_mut().put).finish(returned, limits),
        };
        finish(result, start, limits, &store, &store.data().account)
    }

    /// A run in the WASI sandbox: a component of the `collector` world
    /// (`call` calls `collect`) or a command (`call` runs it with `command_io`).
    fn run_wasi(
        &self,
        plugin: &Plugin,
        request: &RunRequest,
        start: Instant,
        command_io: Option<CommandIo>,
        call: impl FnOnce(&mut Sandbox) -> Result<wit::Collection, RunFailure>,
    ) -> RunOutcome {
        let limits = &request.limits;
        let name = &plugin.description.name;
        let mut sandbox = match new_sandbox(
            self.engine(),
            &request.view,
            limits,
            name,
            &request.service,
            command_io,
        ) {
            Ok(sandbox) => sandbox,
            Err(e) => return cannot_build(e),
        };
        let collection = call(&mut sandbox);
        let result = if sandbox.store.data().open_files_hit {
            // The plugin saw opens fail and may have carried on: its output
            // would be incomplete without saying so.
            Err(RunFailure::OpenFiles(limits.max_open_files))
        } else {
            collection.and_then(|c| output::check(c, limits))
        };
        log_stderr(&sandbox, name, &request.service);
        finish(
            result,
            start,
            limits,
            &sandbox.store,
            &sandbox.store.data().account,
        )
    }
}

fn cannot_build(e: anyhow::Error) -> RunOutcome {
    RunOutcome::refused(RunFailure::Refused(format!(
        "cannot build the sandbox: {e:#}"
    )))
}

/// The outcome of a run that got as far as its sandbox, `store`.
fn finish<T>(
    result: Result<Output, RunFailure>,
    start: Instant,
    limits: &Limits,
    store: &Store<T>,
    account: &Account,
) -> RunOutcome {
    RunOutcome {
        result,
        cost: Cost {
            wall_micros: start.elapsed().as_micros() as u64,
            fuel: limits.fuel - store.get_fuel().unwrap_or(0),
            peak_memory: account.limiter.peak as u64,
        },
        denied: account.denied_paths(),
        denied_count: account.denied_count,
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
