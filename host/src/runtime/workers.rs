//! Persistent threads that plugin runs execute on, so that a run can be
//! abandoned when it blocks in a host call past its deadline.
//!
//! A thread per run would cost ~0.7 ms: besides the spawn, wasmtime sets up
//! per-thread state (signal stack, trap handling) on a thread's first call.
//! Workers are spawned on demand when none is idle — so a worker stuck in a
//! host call never delays other runs — and live for the process.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

/// A job does its work and returns its completion step, which the worker runs
/// only after marking itself idle: whoever the completion wakes up then finds
/// the worker free for its next job instead of spawning another.
type Job = Box<dyn FnOnce() -> Box<dyn FnOnce() + Send> + Send>;

/// A growing set of worker threads sharing one job queue.
pub struct Workers {
    queue: Mutex<Sender<Job>>,
    shared: Arc<Shared>,
}

struct Shared {
    jobs: Mutex<Receiver<Job>>,
    idle: Mutex<usize>,
}

impl Workers {
    pub fn new() -> Workers {
        let (sender, receiver) = channel();
        Workers {
            queue: Mutex::new(sender),
            shared: Arc::new(Shared {
                jobs: Mutex::new(receiver),
                idle: Mutex::new(0),
            }),
        }
    }

    /// Run `work` on an idle worker (or a new one if none is idle), then
    /// `finish` with its result once the worker is idle again.
    pub fn execute<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
        finish: impl FnOnce(T) + Send + 'static,
    ) -> std::io::Result<()> {
        {
            let mut idle = self.shared.idle.lock().expect("workers lock");
            if *idle > 0 {
                // Claimed here so that two runs submitted at once cannot both
                // count on the same idle worker.
                *idle -= 1;
            } else {
                let shared = self.shared.clone();
                std::thread::Builder::new()
                    .name("sandglass-run".into())
                    .spawn(move || worker(shared))?;
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
}

fn worker(shared: Arc<Shared>) {
    loop {
        let job = shared.jobs.lock().expect("workers lock").recv();
        let Ok(job) = job else { return };
        let finish = job();
        *shared.idle.lock().expect("workers lock") += 1;
        finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::time::Duration;

    #[test]
    fn a_stuck_worker_does_not_hold_up_the_next_job() {
        let workers = Workers::new();
        let (release_tx, release_rx) = sync_channel::<()>(0);
        workers
            .execute(move || release_rx.recv().unwrap(), |()| ())
            .unwrap();
        let (done_tx, done_rx) = sync_channel(1);
        workers
            .execute(|| 42, move |n| done_tx.send(n).unwrap())
            .unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(42));
        release_tx.send(()).unwrap();
    }

    #[test]
    fn idle_workers_are_reused() {
        let workers = Workers::new();
        let (tx, rx) = channel();
        let mut threads = std::collections::HashSet::new();
        for _ in 0..20 {
            let tx = tx.clone();
            workers
                .execute(
                    || std::thread::current().id(),
                    move |id| tx.send(id).unwrap(),
                )
                .unwrap();
            threads.insert(rx.recv().unwrap());
        }
        assert_eq!(threads.len(), 1, "sequential runs share one worker");
    }
}
