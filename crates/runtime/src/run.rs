//! Running a plugin once: a fresh sandbox, the call, and an exact reason when
//! it goes wrong.

use super::abi::{self, wit};
use super::sandbox::{CommandIo, Sandbox, View, new_sandbox, truncate};
use super::{Description, Entry, Grant, Limits, MetricInfo, Plugin, Runtime, command, output};
use sandglass_core::report::{Cost, Sample, Status};
use sandglass_core::text::Escaped;
use sandglass_core::units::{ByteSize, HumanDuration};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::Trap;

/// Grace after the deadline before a run blocked in a host call is abandoned:
/// the epoch trap normally ends a run within a tick of its deadline.
const HARD_TIMEOUT_GRACE: Duration = Duration::from_millis(50);

/// How long a run may wait in the queue behind runs of the same tick before
/// its waiter asks for a spare worker: a run a few ms slow costs the runs
/// behind it no more than this, one stuck in a host call no more than this
/// either. Also how often a waiter looks for an outcome whose wake-up is
/// held behind a slow run of the same burst.
const START_WAIT: Duration = Duration::from_millis(20);

/// Stderr kept in a trap message, in bytes.
const STDERR_IN_MESSAGE: usize = 512;

/// Everything one run needs besides the plugin.
#[derive(Clone)]
pub struct RunRequest {
    pub service: String,
    pub params: Vec<(String, String)>,
    pub state: Option<Vec<u8>>,
    pub limits: Limits,
    pub view: Arc<View>,
}

/// What a successful run returned.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub samples: Vec<Sample>,
    pub status: Status,
    /// The state for the next run (none: keep none).
    pub state: Option<Vec<u8>>,
}

/// Why a run produced no usable output. The text is what the operator sees
/// in the UNKNOWN status.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RunFailure {
    #[error("fuel limit {0} exhausted")]
    Fuel(u64),
    #[error("deadline {0} exceeded")]
    Deadline(HumanDuration),
    #[error("deadline {0} exceeded while blocked in a host call; the run was abandoned")]
    Blocked(HumanDuration),
    #[error("memory limit {0} reached")]
    Memory(ByteSize),
    #[error("output limit: {count} samples exceed max_samples {limit}")]
    TooManySamples { count: usize, limit: usize },
    #[error("output limit: {size} bytes of strings and items exceed max_output_bytes {limit}")]
    OutputBytes { size: u64, limit: ByteSize },
    #[error(
        "output limit: the plugin handed the host more than {0} in one call \
         (the copy budget set by max_output_bytes, max_samples and max_state_bytes)"
    )]
    Lift(ByteSize),
    #[error("open files limit {0} reached (max_open_files): the plugin held that many at once")]
    OpenFiles(usize),
    #[error("stdout/stderr limit {0} exceeded")]
    Stdio(ByteSize),
    #[error("state limit {limit} exceeded: the plugin returned {size} bytes of state")]
    State { size: u64, limit: ByteSize },
    #[error("trap: {0}")]
    Trap(String),
    #[error("plugin error: {0}")]
    Plugin(String),
    /// The text is the command's last stderr line, if any.
    #[error("command exited with a failure status{0}")]
    Exit(String),
    #[error("unreadable output: {0}")]
    Output(String),
    #[error("not run: {0}")]
    Refused(String),
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
    fn refused(reason: RunFailure) -> Self {
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

    /// Run `plugin` once on a worker thread, waiting at most the deadline
    /// (plus a short grace). A run still blocked in a host call by then is
    /// abandoned and reported as such; a plugin with too many runs abandoned
    /// is refused until they return (see `stuck`).
    pub fn run(&self, plugin: &Arc<Plugin>, request: RunRequest) -> RunOutcome {
        let dispatched = match self.dispatch(plugin, request, None) {
            Ok(dispatched) => dispatched,
            Err(refused) => return *refused,
        };
        let (lock, done) = &dispatched.slot.cell;
        let mut guard = lock.lock().expect("run slot");
        while let Some(until) = dispatched.next_check() {
            let wait = until.saturating_duration_since(Instant::now());
            guard = done
                .wait_timeout_while(guard, wait, |s| matches!(s, Slot::Running))
                .expect("run slot")
                .0;
            if !matches!(*guard, Slot::Running) {
                break;
            }
        }
        drop(guard);
        dispatched.finish()
    }

    /// [`Runtime::run`] for async callers: the calling task waits without
    /// a thread of its own, so a run costs one thread hand-off, not two.
    pub async fn run_async(&self, plugin: &Arc<Plugin>, request: RunRequest) -> RunOutcome {
        let (wake, mut woken) = tokio::sync::oneshot::channel();
        let dispatched = match self.dispatch(plugin, request, Some(wake)) {
            Ok(dispatched) => dispatched,
            Err(refused) => return *refused,
        };
        while !dispatched.done()
            && let Some(until) = dispatched.next_check()
        {
            let until = tokio::time::Instant::from_std(until);
            if tokio::time::timeout_at(until, &mut woken).await.is_ok() {
                break;
            }
        }
        dispatched.finish()
    }

    /// Hand the run to a worker; its outcome lands in the returned slot as
    /// soon as it is there (unless the waiter abandoned it first), and the
    /// waiter is woken with the other runs of its burst (see `workers`).
    fn dispatch(
        &self,
        plugin: &Arc<Plugin>,
        request: RunRequest,
        wake: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<Dispatched, Box<RunOutcome>> {
        let refusal = self
            .inner
            .stuck
            .refusal(&plugin.path, &plugin.description.name);
        if let Some(reason) = refusal {
            return Err(Box::new(RunOutcome::refused(RunFailure::Refused(reason))));
        }
        let slot = Arc::new(SlotCell {
            cell: (Mutex::new(Slot::Running), Condvar::new()),
            started: OnceLock::new(),
        });
        let deadline = request.limits.deadline;
        let (runtime, worker_plugin, worker_slot) = (self.clone(), plugin.clone(), slot.clone());
        let waking_slot = slot.clone();
        let spawned = self.inner.workers.execute(
            move || {
                let _ = worker_slot.started.set(Instant::now());
                let outcome = runtime.run_here(&worker_plugin, &request);
                let mut slot = worker_slot.cell.0.lock().expect("run slot");
                if matches!(*slot, Slot::Abandoned) {
                    runtime.inner.stuck.returned(&worker_plugin.path);
                    return false;
                }
                *slot = Slot::Done(Box::new(outcome));
                true
            },
            move |stored| {
                if stored {
                    waking_slot.cell.1.notify_one();
                    if let Some(wake) = wake {
                        let _ = wake.send(());
                    }
                }
            },
        );
        if let Err(e) = spawned {
            return Err(Box::new(RunOutcome::refused(RunFailure::Refused(format!(
                "cannot start a worker thread: {e}"
            )))));
        }
        Ok(Dispatched {
            slot,
            runtime: self.clone(),
            plugin: plugin.clone(),
            deadline,
            queued: Instant::now(),
        })
    }
}

/// Where a worker leaves a run's outcome.
struct SlotCell {
    cell: (Mutex<Slot>, Condvar),
    /// When a worker took the run from the queue.
    started: OnceLock<Instant>,
}

enum Slot {
    Running,
    Done(Box<RunOutcome>),
    Abandoned,
}

/// A run on a worker, as its waiter sees it.
struct Dispatched {
    slot: Arc<SlotCell>,
    runtime: Runtime,
    plugin: Arc<Plugin>,
    deadline: HumanDuration,
    queued: Instant,
}

impl Dispatched {
    /// Whether the outcome is in the slot (its wake-up may still be held).
    fn done(&self) -> bool {
        matches!(*self.slot.cell.0.lock().expect("run slot"), Slot::Done(_))
    }

    /// Until when to wait for the outcome before looking again; `None`: stop
    /// waiting. A run gets its deadline (and the grace) from when it started,
    /// and is looked at every [`START_WAIT`] meanwhile: its wake-up is held
    /// while its worker runs the rest of the burst, which may be a slow run.
    /// One still queued after [`START_WAIT`] asks for a spare worker, and again
    /// every [`START_WAIT`] while it stays queued (the workers may be taken by
    /// one slow run after another; a spare starts only when none is idle); one
    /// that no worker took within its deadline is given up like a stuck one.
    fn next_check(&self) -> Option<Instant> {
        let now = Instant::now();
        let limit = self.deadline.0 + HARD_TIMEOUT_GRACE;
        match self.slot.started.get() {
            Some(started) => {
                let end = *started + limit;
                (end > now).then(|| end.min(now + START_WAIT))
            }
            None if now >= self.queued + limit => None,
            None if now >= self.queued + START_WAIT => {
                if let Err(e) = self.runtime.inner.workers.spare() {
                    tracing::warn!("cannot start a spare worker thread: {e}");
                }
                Some(now + START_WAIT)
            }
            None => Some(self.queued + START_WAIT),
        }
    }

    /// The outcome if the run is done; otherwise abandon it (it counts as
    /// stuck until it returns) and report it blocked.
    fn finish(self) -> RunOutcome {
        let mut slot = self.slot.cell.0.lock().expect("run slot");
        match std::mem::replace(&mut *slot, Slot::Abandoned) {
            Slot::Done(outcome) => *outcome,
            _ => {
                self.runtime.inner.stuck.abandoned(&self.plugin.path);
                let mut outcome = RunOutcome::refused(RunFailure::Blocked(self.deadline));
                outcome.cost.wall_micros =
                    (self.deadline.0 + HARD_TIMEOUT_GRACE).as_micros() as u64;
                outcome
            }
        }
    }
}

/// Name the limit behind a failed call, or the trap.
pub(super) fn classify(err: wasmtime::Error, sandbox: &Sandbox, limits: &Limits) -> RunFailure {
    if output::is_lift_refusal(&err) {
        return RunFailure::Lift(ByteSize(output::lift_budget(limits) as u64));
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => return RunFailure::Fuel(limits.fuel),
        Some(Trap::Interrupt) => return RunFailure::Deadline(limits.deadline),
        _ => {}
    }
    if sandbox.store.data().limiter.hit {
        return RunFailure::Memory(limits.memory);
    }
    if sandbox.stdout.contents().len() >= sandbox.stdout_cap {
        return RunFailure::Stdio(ByteSize(sandbox.stdout_cap as u64));
    }
    if sandbox.stderr.contents().len() >= limits.max_stdio_bytes.0 as usize {
        return RunFailure::Stdio(limits.max_stdio_bytes);
    }
    let mut message = match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{err:#}")
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    if let Some(last) = last_stderr_line(sandbox) {
        message.push_str(&format!("; plugin stderr: {last}"));
    }
    RunFailure::Trap(message)
}

/// The last useful line the plugin wrote to stderr, cut to a readable size.
pub(super) fn last_stderr_line(sandbox: &Sandbox) -> Option<String> {
    let stderr = sandbox.stderr.contents();
    let stderr = String::from_utf8_lossy(&stderr);
    // Rust panics end with a hint about RUST_BACKTRACE; the message is above it.
    let useful =
        |l: &&str| !l.trim().is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE");
    let last = stderr.lines().rev().find(useful)?;
    Some(truncate(last, STDERR_IN_MESSAGE).to_owned())
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
