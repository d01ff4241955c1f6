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
///
/// The cap is on the store's memories and tables together: a component holds
/// several core instances, each with memories and tables of its own, and
/// checked one by one they would let a plugin hold the cap many times over.
pub struct MemoryLimiter {
    cap: usize,
    /// Bytes of every memory and table in the store.
    used: usize,
    pub peak: usize,
    pub hit: bool,
}

/// Host bytes a table slot costs: a pointer.
const TABLE_SLOT_BYTES: usize = 8;

/// Core instances, memories and tables one run may create. The instance
/// pool (`instance_pool` in lib.rs) is shared by every run of the process:
/// without a count per store, one component instantiating a module many
/// times would take every slot, and the other services' runs would fail to
/// instantiate while it lasts. The plugins built here need at most 14 core
/// instances (the Python one), 1 memory and 2 tables; these leave room.
const MAX_INSTANCES: usize = 32;
const MAX_MEMORIES: usize = 4;
const MAX_TABLES: usize = 8;

impl MemoryLimiter {
    /// A limiter at `limits.memory`.
    pub fn new(limits: &Limits) -> MemoryLimiter {
        MemoryLimiter {
            cap: usize::try_from(limits.memory.0).unwrap_or(usize::MAX),
            used: 0,
            peak: 0,
            hit: false,
        }
    }

    /// Whether one memory or table may grow from `current` to `desired`
    /// bytes, with all the others as they are.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let used = self.used.saturating_sub(current).saturating_add(desired);
        if used > self.cap {
            self.hit = true;
            return false;
        }
        self.used = used;
        self.peak = self.peak.max(used);
        true
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Table slots are host memory: counted against the same cap.
        Ok(self.grow(
            current.saturating_mul(TABLE_SLOT_BYTES),
            desired.saturating_mul(TABLE_SLOT_BYTES),
        ))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
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
