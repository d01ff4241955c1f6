//! A store with a run's limits, for either sandbox: fuel, the epoch
//! deadline, the memory cap and the budget for copying results out of the
//! guest. The one place they are set, so the lean and the WASI sandbox
//! cannot drift apart.

use super::account::Account;
use sandglass_core::limits::Limits;
use wasmtime::{Engine, ResourceLimiter, Store};

/// Tracks memory growth against the cap, remembering the peak and whether the
/// cap was hit (an infallible allocation then traps, and the trap alone would
/// not say why).
pub struct MemoryLimiter {
    cap: usize,
    pub peak: usize,
    pub hit: bool,
}

impl MemoryLimiter {
    /// A limiter at `limits.memory`.
    pub fn new(limits: &Limits) -> MemoryLimiter {
        MemoryLimiter {
            cap: usize::try_from(limits.memory.0).unwrap_or(usize::MAX),
            peak: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Table slots are pointer-sized host memory: cap them by the same budget.
        Ok(desired.saturating_mul(8) <= self.cap)
    }
}

/// A fresh store holding `state`, under `limits`; `account` finds the
/// state's [`Account`], whose limiter caps memory.
pub fn limited_store<T: 'static>(
    engine: &Engine,
    state: T,
    limits: &Limits,
    account: fn(&mut T) -> &mut Account,
) -> anyhow::Result<Store<T>> {
    let mut store = Store::new(engine, state);
    store.limiter(move |s| &mut account(s).limiter as &mut dyn ResourceLimiter);
    store.set_hostcall_fuel(super::output::lift_budget(limits));
    store.set_fuel(limits.fuel)?;
    store.epoch_deadline_trap();
    store.set_epoch_deadline(super::epoch::ticks_for(limits.deadline()));
    Ok(store)
}
