//! Running services: load each plugin once (again when its file changes),
//! check the schedule's pin and the grants, run it in the sandbox with the
//! service's state, keep the new state. Shared by concurrent service timers.

use super::installed::{Stamp, stamp};
use crate::config::Service;
use crate::state_store::StateStore;
use sandglass_core::report::{Report, Status};
use sandglass_core::text::Escaped;
use sandglass_core::time::now_ms;
use sandglass_runtime::{
    CompileLimits, Compiler, Grant, Plugin, RunOutcome, RunRequest, Runtime, View,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A loaded plugin (or why it could not be loaded) and the file it came from.
struct Loaded {
    stamp: Option<Stamp>,
    plugin: Result<Arc<Plugin>, String>,
}

/// The hidden `agent` subcommand that compiles a plugin for `agent run`.
pub const COMPILE_COMMAND: &str = "compile-plugin";

/// How long a service whose schedule pins a build still on its way from
/// the receiver keeps running the build it ran before (a plugin update
/// then costs no UNKNOWN run, on any host); past it, the missing build is
/// reported.
const FETCH_GRACE_MS: u64 = 60_000;

/// The build a service ran last (of the plugin it names), and since when
/// its pinned build has been awaited.
struct Previous {
    name: String,
    plugin: Arc<Plugin>,
    awaited: Option<(String, u64)>,
}

/// Runs services; safe to share between threads.
pub struct ServiceRunner {
    runtime: Runtime,
    states: Arc<StateStore>,
    plugins: Mutex<HashMap<PathBuf, Loaded>>,
    /// One load per plugin file at a time; `plugins` is not held while a
    /// plugin compiles (seconds, minutes for a hostile one), so the other
    /// services' runs, and the event loop that checks [`Self::is_loaded`],
    /// go on meanwhile.
    loading: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    /// By service name.
    previous: Mutex<HashMap<String, Previous>>,
    /// Filesystem views by grant, built once: a view opens its directories.
    views: Mutex<HashMap<ViewKey, Arc<View>>>,
}

/// What tells views apart: the `sys` grant and the granted directories.
type ViewKey = (bool, Vec<PathBuf>);

/// A run's report, and the plugin state it leaves for the next run. The
/// state is kept only by [`Collected::keep_state`], which `agent run` calls
/// once the report is in the spool: if the agent dies in between, the run is
/// made again from the old state rather than lost (at least once, never
/// skipped).
pub struct Collected {
    pub report: Report,
    /// `None`: the run failed, the old state stays.
    next_state: Option<PendingState>,
}

struct PendingState {
    store: Arc<StateStore>,
    state: Option<Vec<u8>>,
}

impl Collected {
    /// Keep the run's state for the next run; the report.
    pub fn keep_state(self) -> Report {
        if let Some(pending) = self.next_state
            && let Err(e) = pending
                .store
                .save(&self.report.service, pending.state.as_deref())
        {
            tracing::warn!(service = self.report.service, "{e:#}");
        }
        self.report
    }
}

impl ServiceRunner {
    /// A runner keeping state and compiled plugins under `state_dir`,
    /// compiling in a child process (the agent's own executable, run as
    /// `agent compile-plugin OUT`) held to `limits`: cranelift's memory,
    /// tens of MiB that the allocator would keep for good, leaves with it,
    /// and a plugin that takes too long or too much to compile is refused.
    pub fn new(state_dir: &Path, limits: CompileLimits) -> anyhow::Result<ServiceRunner> {
        let compiler = match std::env::current_exe() {
            Ok(program) => Compiler::Child {
                program,
                args: vec![COMPILE_COMMAND.into()],
                limits,
            },
            Err(_) => Compiler::InProcess,
        };
        ServiceRunner::with_compiler(state_dir, compiler)
    }

    /// [`ServiceRunner::new`] with the given compiler.
    pub fn with_compiler(state_dir: &Path, compiler: Compiler) -> anyhow::Result<ServiceRunner> {
        Ok(ServiceRunner {
            runtime: Runtime::with_compiler(Some(state_dir.join("cache")), compiler)?,
            states: Arc::new(StateStore::open(state_dir.join("state"))?),
            plugins: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            previous: Mutex::new(HashMap::new()),
            views: Mutex::new(HashMap::new()),
        })
    }

    /// The plugin a service names, loaded on first use and whenever its file
    /// changes (`current`: the file's stamp now). A failure is remembered (as
    /// text) so every run reports it.
    fn plugin(&self, service: &Service, current: Option<Stamp>) -> Result<Arc<Plugin>, String> {
        let path = &service.plugin_path;
        let Some(_) = current else {
            if let Some(sha) = awaited(service) {
                return Err(format!(
                    "plugin {} is not installed (expected sha256 {sha}): plugin_dir does not have that build, and it has not come from the receiver (yet; the agent's log says why)",
                    service.plugin
                ));
            }
            let pin = match &service.sha256 {
                Some(sha) => format!("expected sha256 {sha}"),
                None => "no sha256 pinned".into(),
            };
            return Err(format!(
                "plugin {} is not installed ({pin}): no file {}",
                service.plugin,
                path.display()
            ));
        };
        let loaded = |plugins: &HashMap<PathBuf, Loaded>| {
            let loaded = plugins.get(path)?;
            (loaded.stamp == current).then(|| loaded.plugin.clone())
        };
        if let Some(plugin) = loaded(&self.plugins.lock().expect("plugin cache lock")) {
            return plugin;
        }
        let gate = self
            .loading
            .lock()
            .expect("loading lock")
            .entry(path.clone())
            .or_default()
            .clone();
        let _one_load = gate.lock().expect("load gate");
        // Another run of this plugin may have loaded it while we waited.
        if let Some(plugin) = loaded(&self.plugins.lock().expect("plugin cache lock")) {
            return plugin;
        }
        let plugin = self.runtime.load(path).map_err(|e| format!("{e:#}"));
        // Loading read the file (18 MB for the Python example) and built
        // the component on a blocking thread, whose malloc arena would keep
        // the freed buffers for good: give them back (a cold start held
        // 15 MiB more than a warm one without this).
        sandglass_daemon::release_freed_memory();
        self.plugins.lock().expect("plugin cache lock").insert(
            path.clone(),
            Loaded {
                stamp: current,
                plugin: plugin.clone(),
            },
        );
        plugin
    }

    /// The build `service` ran before, while the build its schedule now
    /// pins is on its way from the receiver, for [`FETCH_GRACE_MS`].
    fn while_awaited(&self, service: &Service, time_ms: u64) -> Option<Arc<Plugin>> {
        let sha = awaited(service)?;
        let mut previous = self.previous.lock().expect("previous lock");
        let p = previous
            .get_mut(&service.name)
            .filter(|p| p.name == service.plugin)?;
        let since = match &p.awaited {
            Some((awaited, since)) if awaited == sha => *since,
            _ => {
                tracing::info!(
                    service = service.name,
                    sha256 = sha,
                    "running the previous build until the newly pinned one arrives"
                );
                p.awaited = Some((sha.clone(), time_ms));
                time_ms
            }
        };
        (time_ms.saturating_sub(since) <= FETCH_GRACE_MS).then(|| p.plugin.clone())
    }

    /// The sha256 of every plugin loaded (their compiled artifacts are in
    /// use).
    pub fn loaded_sha256(&self) -> impl Iterator<Item = String> + use<> {
        let plugins = self.plugins.lock().expect("plugin cache lock");
        let loaded: Vec<String> = plugins
            .values()
            .filter_map(|l| Some(l.plugin.as_ref().ok()?.sha256.clone()))
            .collect();
        loaded.into_iter()
    }

    fn view(&self, service: &Service) -> Result<Arc<View>, String> {
        let key = (service.sys, service.files.clone());
        let mut views = self.views.lock().expect("view cache lock");
        if let Some(view) = views.get(&key) {
            return Ok(view.clone());
        }
        let view = View::new(service.sys, &service.files)
            .map(Arc::new)
            .map_err(|e| format!("cannot prepare the plugin's view of the filesystem: {e}"))?;
        views.insert(key, view.clone());
        Ok(view)
    }

    /// Run `service` once and report. Never fails: whatever goes wrong
    /// becomes an UNKNOWN status that says why.
    pub fn run(&self, service: &Service) -> Collected {
        let time_ms = now_ms();
        match self.prepare(service, time_ms, stamp(&service.plugin_path)) {
            Prepared::Ready(plugin, request) => {
                let outcome = self.runtime.run(&plugin, request);
                self.report(service, &plugin, time_ms, outcome)
            }
            Prepared::Refused(collected) => collected,
        }
    }

    /// [`ServiceRunner::run`] for the scheduler's tasks: no thread is held
    /// while the plugin runs, and loading (compiling) a plugin happens on a
    /// blocking thread.
    pub async fn run_async(self: &Arc<Self>, service: &Arc<Service>) -> Collected {
        let time_ms = now_ms();
        // One stat per run: it tells both whether loading is needed and, to
        // `prepare`, whether the file changed.
        let current = stamp(&service.plugin_path);
        let prepared = if self.is_loaded(service, current) {
            self.prepare(service, time_ms, current)
        } else {
            let (runner, s) = (self.clone(), service.clone());
            match tokio::task::spawn_blocking(move || runner.prepare(&s, time_ms, current)).await {
                Ok(prepared) => prepared,
                Err(e) => {
                    Prepared::Refused(unknown(service, time_ms, format!("loading failed: {e}")))
                }
            }
        };
        match prepared {
            Prepared::Ready(plugin, request) => {
                let outcome = self.runtime.run_async(&plugin, request).await;
                self.report(service, &plugin, time_ms, outcome)
            }
            Prepared::Refused(collected) => collected,
        }
    }

    /// Whether the service's plugin is loaded from the file as it is now.
    fn is_loaded(&self, service: &Service, current: Option<Stamp>) -> bool {
        let plugins = self.plugins.lock().expect("plugin cache lock");
        plugins
            .get(&service.plugin_path)
            .is_some_and(|loaded| loaded.stamp.is_some() && loaded.stamp == current)
    }

    /// Everything before the run: the plugin (loaded if needed), the pin,
    /// the grants, the view and the state.
    fn prepare(&self, service: &Service, time_ms: u64, current: Option<Stamp>) -> Prepared {
        let refuse = |text: String| Prepared::Refused(unknown(service, time_ms, text));
        if let Some(refused) = &service.refused {
            return refuse(refused.clone());
        }
        let (plugin, pinned) = match self.plugin(service, current) {
            Ok(plugin) => (plugin, service.sha256.as_ref()),
            Err(e) => match self.while_awaited(service, time_ms) {
                Some(previous) => (previous, None),
                None => return refuse(e),
            },
        };
        if let Some(pinned) = pinned
            && !pinned.eq_ignore_ascii_case(&plugin.sha256)
        {
            return refuse(format!(
                "plugin {} at {} has sha256 {}, but the schedule pins {pinned}: install the pinned build or update the receiver's pin",
                service.plugin,
                service.plugin_path.display(),
                plugin.sha256
            ));
        }
        if let Some(grant) = missing_grant(&plugin, service) {
            return refuse(format!(
                "plugin {} needs grant \"{grant}\": add grants = [\"{grant}\"] to service {}",
                plugin.description.name, service.name
            ));
        }
        let view = match self.view(service) {
            Ok(view) => view,
            Err(e) => return refuse(e),
        };
        if pinned.is_some() || service.sha256.is_none() {
            let mut previous = self.previous.lock().expect("previous lock");
            previous.insert(
                service.name.clone(),
                Previous {
                    name: service.plugin.clone(),
                    plugin: plugin.clone(),
                    awaited: None,
                },
            );
        }
        let request = RunRequest {
            service: service.name.clone(),
            params: service.params.clone(),
            state: self.states.load(&service.name),
            limits: service.limits.clone(),
            view,
        };
        Prepared::Ready(plugin, request)
    }

    fn report(
        &self,
        service: &Service,
        plugin: &Plugin,
        time_ms: u64,
        outcome: RunOutcome,
    ) -> Collected {
        let status = outcome.status();
        let next_state = outcome.result.as_ref().ok().map(|output| PendingState {
            store: self.states.clone(),
            state: output.state.clone(),
        });
        if let Err(failure) = &outcome.result {
            // The failure may quote the plugin (its error text): escaped, so
            // it cannot forge a log line.
            tracing::warn!(
                service = service.name,
                plugin = plugin.description.name,
                "run failed: {}",
                Escaped(&failure.to_string())
            );
        }
        Collected {
            report: Report {
                service: service.name.clone(),
                plugin: plugin.description.name.clone(),
                time_ms,
                status,
                samples: outcome.result.map(|o| o.samples).unwrap_or_default(),
                cost: outcome.cost,
            },
            next_state,
        }
    }
}

/// A service ready to run, or the report of why it cannot.
enum Prepared {
    Ready(Arc<Plugin>, RunRequest),
    Refused(Collected),
}

/// An UNKNOWN report for a run that could not happen; the state stays.
fn unknown(service: &Service, time_ms: u64, text: String) -> Collected {
    Collected {
        report: Report {
            service: service.name.clone(),
            plugin: service.plugin.clone(),
            time_ms,
            status: Status::unknown(text),
            samples: Vec::new(),
            cost: Default::default(),
        },
        next_state: None,
    }
}

/// The pinned build of a service whose plugin comes from the receiver
/// (its path is named by the sha256), which may not have arrived yet.
fn awaited(service: &Service) -> Option<&String> {
    let sha = service.sha256.as_ref()?;
    let stem = service.plugin_path.file_stem()?;
    (*stem == **sha).then_some(sha)
}

/// The first grant the plugin declares that the service does not give.
pub fn missing_grant(plugin: &Plugin, service: &Service) -> Option<&'static str> {
    plugin
        .description
        .grants
        .iter()
        .find_map(|grant| match grant {
            Grant::Sys if !service.sys => Some("sys"),
            Grant::Files if service.files.is_empty() => Some("files"),
            _ => None,
        })
}
