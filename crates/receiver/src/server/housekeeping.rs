//! Deleting history past `retention`, a small step at a time (see
//! `store::retention`), once a minute.

use super::Shared;
use crate::store::Op;
use sandglass_core::time::now_ms;
use sandglass_core::units::HumanDuration;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often old history is looked for.
const EVERY: Duration = Duration::from_secs(60);
/// Rows one step deletes: a few milliseconds of the writer's time.
const STEP_ROWS: usize = 2_000;
/// Pause between steps, so batches queued meanwhile go first.
const BETWEEN_STEPS: Duration = Duration::from_millis(20);

pub(super) async fn housekeeping(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let retention = shared.model().settings.retention;
        let before_ms = now_ms().saturating_sub(retention.as_millis() as u64);
        let mut deleted = 0;
        loop {
            let (done, mut heard) = mpsc::channel(1);
            shared
                .store
                .send(Op::Prune {
                    before_ms,
                    retention_ms: retention.as_millis() as u64,
                    max_rows: STEP_ROWS,
                    done,
                })
                .await;
            // None: the step failed (the store logged why); next minute.
            let Some(step) = heard.recv().await else {
                break;
            };
            deleted += step;
            if step < STEP_ROWS || cancel.is_cancelled() {
                break;
            }
            tokio::time::sleep(BETWEEN_STEPS).await;
        }
        if deleted > 0 {
            tracing::info!(
                "retention: deleted {deleted} reports, gaps and events older than {}",
                HumanDuration(retention)
            );
        }
    }
}
