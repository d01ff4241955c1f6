//! The epoch ticker behind wall-clock deadlines. It ticks every
//! [`TICK`] while at least one run is active and sleeps otherwise, so an
//! idle agent costs no wake-ups.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use wasmtime::Engine;

/// One epoch. 10 ms: a 1 ms ticker drifts by 10-15 % on this machine kind.
pub const TICK: Duration = Duration::from_millis(10);

/// Epoch ticks for a deadline: rounded up, plus one because the current tick
/// may be nearly over when the deadline is set.
pub fn ticks_for(deadline: Duration) -> u64 {
    deadline.as_nanos().div_ceil(TICK.as_nanos()) as u64 + 1
}

/// Increments the engine's epoch while runs are active.
pub struct EpochTicker {
    active: Mutex<Active>,
    wake: Condvar,
}

#[derive(Default)]
struct Active {
    runs: usize,
    /// The ticker waits for a run: the next to start wakes it. Runs back to
    /// back (a burst) would otherwise notify once each, a system call
    /// nobody waits for.
    ticker_waits: bool,
}

impl EpochTicker {
    /// Start the ticker thread for `engine`.
    pub fn start(engine: Engine) -> Arc<Self> {
        let ticker = Arc::new(EpochTicker {
            active: Mutex::new(Active::default()),
            wake: Condvar::new(),
        });
        let weak = Arc::downgrade(&ticker);
        std::thread::Builder::new()
            .name("sandglass-epoch".into())
            .spawn(move || {
                let mut due = None;
                while let Some(ticker) = weak.upgrade() {
                    let mut active = ticker.active.lock().expect("epoch lock");
                    if active.runs == 0 {
                        due = None;
                        active.ticker_waits = true;
                        // Wake up now and then to notice the runtime was dropped.
                        let (mut active, _) = ticker
                            .wake
                            .wait_timeout(active, Duration::from_secs(1))
                            .expect("epoch lock");
                        active.ticker_waits = false;
                        continue;
                    }
                    drop(active);
                    drop(ticker);
                    let tick = *due.get_or_insert_with(|| Instant::now() + TICK);
                    std::thread::sleep(tick.saturating_duration_since(Instant::now()));
                    due = Some(catch_up(&engine, tick, Instant::now()));
                }
            })
            .expect("spawn epoch ticker thread");
        ticker
    }

    /// Mark a run active until the guard is dropped.
    pub fn activate(self: &Arc<Self>) -> ActiveRun {
        let mut active = self.active.lock().expect("epoch lock");
        active.runs += 1;
        if std::mem::take(&mut active.ticker_waits) {
            self.wake.notify_one();
        }
        ActiveRun(self.clone())
    }
}

/// Increment the epoch once for every tick due by `now`, starting with the
/// one due at `tick`; the next tick's due time. On a loaded machine a sleep
/// overshoots by milliseconds: one increment per wake-up would stretch every
/// deadline (counted in ticks) by that much a tick, past the grace after
/// which a run is abandoned as blocked.
fn catch_up(engine: &Engine, mut tick: Instant, now: Instant) -> Instant {
    while tick <= now {
        engine.increment_epoch();
        tick += TICK;
    }
    tick
}

/// Keeps the ticker running while a run is active.
pub struct ActiveRun(Arc<EpochTicker>);

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.0.active.lock().expect("epoch lock").runs -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_wake_up_catches_up_on_the_ticks_it_missed() {
        let engine = Engine::new(wasmtime::Config::new().epoch_interruption(true)).unwrap();
        let start = Instant::now();
        // Woken 35 ms after the tick due at `start`: that tick and three more.
        let next = catch_up(&engine, start, start + Duration::from_millis(35));
        assert_eq!(next, start + 4 * TICK);
        // Woken early: nothing is due yet.
        assert_eq!(
            catch_up(&engine, next, next - Duration::from_millis(1)),
            next
        );
    }

    #[test]
    fn ticks_round_up_and_add_one() {
        assert_eq!(ticks_for(Duration::from_millis(100)), 11);
        assert_eq!(ticks_for(Duration::from_millis(101)), 12);
        assert_eq!(ticks_for(Duration::from_secs(2)), 201);
    }
}
