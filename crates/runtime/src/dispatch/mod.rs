//! The run dispatch: how a run gets to a worker thread and its outcome back
//! to the caller, bounded by the run's deadline whatever the worker does.
//!
//! The contract in one place:
//! - a caller hands the run to [`workers`] and waits on its slot;
//! - the worker leaves the outcome in the slot, unless the caller already
//!   abandoned it (then the run counts as stuck until it returns, see
//!   `stuck`);
//! - runs queued together share one worker, and their wake-ups are held
//!   until the last of them is done (at most `workers::HOLD_MAX`, well inside
//!   [`HARD_TIMEOUT_GRACE`]), so a woken caller finds the worker free;
//! - a run still queued after [`START_WAIT`] asks for a spare worker; one
//!   that did not finish within its deadline plus [`HARD_TIMEOUT_GRACE`] from
//!   when it started (or from when it was queued, if no worker took it) is
//!   abandoned and reported blocked.

mod workers;

pub use workers::Workers;

use super::failure::RunFailure;
use super::run::{RunOutcome, RunRequest};
use super::{Plugin, Runtime};
use sandglass_core::units::HumanDuration;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Grace after the deadline before a run blocked in a host call is abandoned:
/// the epoch trap normally ends a run within a tick of its deadline.
const HARD_TIMEOUT_GRACE: Duration = Duration::from_millis(50);

/// How long a run may wait in the queue behind runs of the same tick before
/// its waiter asks for a spare worker: a run a few ms slow costs the runs
/// behind it no more than this, one stuck in a host call no more than this
/// either. Also how often a waiter looks for an outcome whose wake-up is
/// held behind a slow run of the same burst.
const START_WAIT: Duration = Duration::from_millis(20);

impl Runtime {
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
            // An async waiter waits on `wake`, a blocking one on the slot's
            // condition variable: each is woken its own way (a notify
            // nobody waits for is still a system call).
            move |stored| match wake {
                _ if !stored => {}
                Some(wake) => {
                    let _ = wake.send(());
                }
                None => waking_slot.cell.1.notify_one(),
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
