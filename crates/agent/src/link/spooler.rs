//! The spool as the link's async task uses it. Appending, acknowledging and
//! reading write, fsync and read files; done on the executor, a slow disk
//! would stall every task sharing its thread (the connection's pings among
//! them). So those calls run on tokio's blocking pool.
//!
//! Why an `Arc<Mutex<Spool>>` and `spawn_blocking`, not a spool thread with
//! a channel: the link is the spool's only user and awaits each call before
//! it makes the next, so the calls run one at a time in the order the link
//! makes them (an append before the read that sends it, an ack before the
//! next read), exactly as when they were direct calls; a thread would need
//! a request and an answer type for every method to give the same order.
//! The mutex is therefore never contended: [`SharedSpool::peek`] reads the
//! in-memory counters (`last_seq`, `pending`, ...) without I/O and without
//! waiting.

use crate::spool::Spool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub(super) struct SharedSpool(Arc<Mutex<Spool>>);

impl SharedSpool {
    pub(super) fn new(spool: Spool) -> SharedSpool {
        SharedSpool(Arc::new(Mutex::new(spool)))
    }

    /// Run `work` (file I/O) on the blocking pool and wait for it.
    pub(super) async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Spool) -> T + Send + 'static,
    ) -> T {
        let spool = self.0.clone();
        match tokio::task::spawn_blocking(move || work(&mut lock(&spool))).await {
            Ok(out) => out,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Read what the spool keeps in memory (no I/O).
    pub(super) fn peek<T>(&self, look: impl FnOnce(&Spool) -> T) -> T {
        look(&lock(&self.0))
    }

    /// Change what the spool keeps in memory (no I/O).
    pub(super) fn peek_mut<T>(&self, change: impl FnOnce(&mut Spool) -> T) -> T {
        change(&mut lock(&self.0))
    }

    /// A clean stop (see [`Spool::close`]), on the blocking pool.
    pub(super) async fn close(self) -> anyhow::Result<()> {
        let join = tokio::task::spawn_blocking(move || match Arc::into_inner(self.0) {
            Some(spool) => spool
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .close(),
            // Only if a call was abandoned half-way, which the link never does.
            None => Err(anyhow::anyhow!("the spool is still in use")),
        });
        match join.await {
            Ok(closed) => closed,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// The spool, even if a call panicked while holding it: its state on disk
/// is what counts, and each call leaves it consistent or fails.
fn lock(spool: &Mutex<Spool>) -> MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(PoisonError::into_inner)
}
