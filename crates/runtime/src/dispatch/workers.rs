//! Persistent threads that plugin runs execute on, so that a run can be
//! abandoned when it blocks in a host call past its deadline.
//!
//! A thread per run would cost ~0.7 ms: besides the spawn, wasmtime sets up
//! per-thread state (signal stack, trap handling) on a thread's first call.
//! Jobs share one queue. Runs submitted together (a host's services fire on
//! the same tick) go back to back on the same worker, with its caches warm,
//! instead of waking a thread each: that alone took a five-service cycle's
//! run threads from 2,208 to 1,777 µs of CPU per second. A worker slow or stuck
//! in a host call delays the jobs behind it only until their waiters ask for a
//! [`Workers::spare`] — see `START_WAIT` in the dispatch module. Workers live for the
//! process.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a finished job's completion is held for the jobs queued behind
/// it: well inside the grace a waiter gives a run after its deadline.
const HOLD_MAX: Duration = Duration::from_millis(10);

/// A job does its work and returns its completion step, which the worker runs
/// only after marking itself idle (and, for jobs queued together, after the
/// last of them: see `worker`): whoever the completion wakes up then finds
/// the worker free for its next job instead of asking for a spare.
type Job = Box<dyn FnOnce() -> Box<dyn FnOnce() + Send> + Send>;

/// A growing set of worker threads sharing one job queue.
pub struct Workers {
    queue: Mutex<Sender<Job>>,
    shared: Arc<Shared>,
}

struct Shared {
    jobs: Mutex<Receiver<Job>>,
    counts: Mutex<Counts>,
}

struct Counts {
    threads: usize,
    /// Threads waiting for a job, or spawned and about to.
    idle: usize,
}

impl Workers {
    pub fn new() -> Workers {
        let (sender, receiver) = channel();
        Workers {
            queue: Mutex::new(sender),
            shared: Arc::new(Shared {
                jobs: Mutex::new(receiver),
                counts: Mutex::new(Counts {
                    threads: 0,
                    idle: 0,
                }),
            }),
        }
    }

    /// Queue `work` (the first call starts the first worker), then `finish`
    /// with its result once its worker is idle again.
    pub fn execute<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
        finish: impl FnOnce(T) + Send + 'static,
    ) -> std::io::Result<()> {
        {
            let mut counts = self.shared.counts.lock().expect("workers lock");
            if counts.threads == 0 {
                self.spawn(&mut counts)?;
            }
        }
        let job: Job = Box::new(move || {
            let result = work();
            Box::new(move || finish(result))
        });
        self.queue
            .lock()
            .expect("workers lock")
            .send(job)
            .expect("workers live as long as the queue");
        Ok(())
    }

    /// Start another worker unless one is idle: a queued job has waited too
    /// long behind busy or stuck ones.
    pub fn spare(&self) -> std::io::Result<()> {
        let mut counts = self.shared.counts.lock().expect("workers lock");
        if counts.idle == 0 {
            self.spawn(&mut counts)?;
        }
        Ok(())
    }

    fn spawn(&self, counts: &mut Counts) -> std::io::Result<()> {
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("sandglass-run".into())
            .spawn(move || worker(shared))?;
        counts.threads += 1;
        counts.idle += 1;
        Ok(())
    }
}

fn worker(shared: Arc<Shared>) {
    // Completions of jobs run back to back are held until the queue is
    // empty, then run together: the waiters (tasks of one event loop) wake
    // once per burst instead of once per job — that wake-up, a context
    // switch each, was the largest single cost of the agent's async side.
    // A job must therefore leave its result where its waiter can look
    // without the completion (as `run.rs` does): a slow job later in the
    // burst holds the completions of the earlier ones until it ends.
    let mut held: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    let mut held_since = Instant::now();
    loop {
        let next = if held.is_empty() {
            shared.jobs.lock().expect("workers lock").recv().ok()
        } else {
            // Another worker holding the queue is waiting in `recv`: the
            // queue is empty, so deliver now rather than wait for its lock.
            match shared.jobs.try_lock() {
                Ok(jobs) => jobs.try_recv().ok(),
                Err(_) => None,
            }
        };
        let Some(job) = next else {
            if held.is_empty() {
                return; // the queue is gone
            }
            held.drain(..).for_each(|finish| finish());
            continue;
        };
        shared.counts.lock().expect("workers lock").idle -= 1;
        let finish = job();
        shared.counts.lock().expect("workers lock").idle += 1;
        if held.is_empty() {
            held_since = Instant::now();
        }
        held.push(finish);
        if held_since.elapsed() >= HOLD_MAX {
            held.drain(..).for_each(|finish| finish());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::time::Duration;

    #[test]
    fn a_spare_takes_the_jobs_behind_a_stuck_worker() {
        let workers = Workers::new();
        let (release_tx, release_rx) = sync_channel::<()>(0);
        workers
            .execute(move || release_rx.recv().unwrap(), |()| ())
            .unwrap();
        let (done_tx, done_rx) = sync_channel(1);
        workers
            .execute(|| 42, move |n| done_tx.send(n).unwrap())
            .unwrap();
        // Queued behind the stuck job until a spare is asked for.
        assert!(done_rx.recv_timeout(Duration::from_millis(200)).is_err());
        workers.spare().unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(42));
        release_tx.send(()).unwrap();
    }

    #[test]
    fn completions_of_jobs_queued_together_come_after_the_last_of_them() {
        let workers = Workers::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (gate_tx, gate_rx) = sync_channel::<()>(0);
        let (done_tx, done_rx) = channel();
        let job = |i: usize, gate: Option<Receiver<()>>| {
            let (ran, done, done_tx) = (log.clone(), log.clone(), done_tx.clone());
            workers
                .execute(
                    move || {
                        if let Some(gate) = gate {
                            gate.recv().unwrap();
                        }
                        ran.lock().unwrap().push(format!("ran {i}"));
                    },
                    move |()| {
                        done.lock().unwrap().push(format!("done {i}"));
                        done_tx.send(()).unwrap();
                    },
                )
                .unwrap();
        };
        job(0, Some(gate_rx));
        job(1, None);
        job(2, None);
        gate_tx.send(()).unwrap();
        for _ in 0..3 {
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(
            *log.lock().unwrap(),
            ["ran 0", "ran 1", "ran 2", "done 0", "done 1", "done 2"]
        );
    }

    #[test]
    fn jobs_submitted_together_share_one_worker() {
        let workers = Workers::new();
        let (tx, rx) = channel();
        for _ in 0..20 {
            let tx = tx.clone();
            workers
                .execute(
                    || std::thread::current().id(),
                    move |id| tx.send(id).unwrap(),
                )
                .unwrap();
        }
        let threads: std::collections::HashSet<_> = (0..20).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(
            threads.len(),
            1,
            "20 queued jobs ran on {} threads",
            threads.len()
        );
        // With a worker idle, a spare is not started.
        workers.spare().unwrap();
        assert_eq!(workers.shared.counts.lock().unwrap().threads, 1);
    }
}
