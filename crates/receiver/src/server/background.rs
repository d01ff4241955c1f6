//! The receiver's own clocks: the liveness clock (judging hosts, writing
//! heartbeats) and the configuration watch (reload on SIGHUP or when the
//! file changes, pushing changed schedules to connected agents).

use super::{Shared, fault, pin_rollouts, scheduled_op, versions_op};
use crate::config::Model;
use crate::liveness::{Change, HostStatus, Subject};
use crate::store::Op;
use sandglass_core::report::Level;
use sandglass_core::text::Escaped;
use sandglass_core::time::now_ms;
use sandglass_protocol::{FaultCode, Message};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often liveness is judged.
const LIVENESS_TICK: Duration = Duration::from_millis(500);
/// Liveness ticks between heartbeats in the store (5 s).
const HEARTBEAT_TICKS: u64 = 10;
/// How often the configuration file is checked for changes.
const CONFIG_POLL: Duration = Duration::from_secs(1);

/// Judge liveness every tick and record the changes; write a heartbeat
/// every [`HEARTBEAT_TICKS`].
pub(super) async fn liveness_clock(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(LIVENESS_TICK);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if ticks.is_multiple_of(HEARTBEAT_TICKS) {
            shared.store.heartbeat(true).await;
            sandglass_daemon::release_freed_memory();
        }
        ticks += 1;
        let tolerance = shared.model().settings.late_tolerance.as_millis() as u64;
        let changes = shared
            .tracker
            .lock()
            .expect("tracker lock")
            .evaluate(now_ms(), tolerance);
        changes.iter().for_each(log_change);
        if !changes.is_empty() {
            shared.notifier.changes(&changes);
            shared.store.send(Op::Changes { changes }).await;
        }
    }
}

/// Log a change of a host's status, of the level a service reports, or of
/// a trigger: once per change, a warning when it gets worse. (Lateness is
/// logged through the host's status it changes.)
fn log_change(c: &Change) {
    let (old, new) = c.texts();
    let worse = match &c.subject {
        Subject::Host { new, .. } => *new != HostStatus::Ok,
        Subject::Level { new, .. } => *new >= Level::Crit,
        Subject::Trigger { fired, .. } => *fired,
        Subject::Service { .. } => return,
    };
    let what = match &c.subject {
        Subject::Trigger { trigger, .. } => format!("trigger {trigger} "),
        _ => String::new(),
    };
    let reason = Escaped(&c.reason);
    match c.service() {
        Some(service) if worse => {
            tracing::warn!(host = c.host, service, "{what}{old} -> {new}: {reason}")
        }
        Some(service) => tracing::info!(host = c.host, service, "{what}{old} -> {new}: {reason}"),
        None if worse => tracing::warn!(host = c.host, "{old} -> {new}: {reason}"),
        None => tracing::info!(host = c.host, "{old} -> {new}: {reason}"),
    }
}

/// Reload on SIGHUP, when the file changes, when a plugin of `plugin_dir`
/// changes or when a rollout moves (all checked every second).
pub(super) async fn config_watch(
    shared: Arc<Shared>,
    reload: Arc<Notify>,
    cancel: CancellationToken,
) {
    let stamp = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = stamp(&shared.config_path);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = reload.notified() => {}
            () = tokio::time::sleep(CONFIG_POLL) => {
                let now = stamp(&shared.config_path);
                if now == last && !plugins_changed(&shared) && !rollout_moved(&shared) {
                    continue;
                }
            }
        }
        last = stamp(&shared.config_path);
        apply_reload(&shared).await;
    }
}

/// Look at `plugin_dir` again: whether a plugin's current version changed.
fn plugins_changed(shared: &Shared) -> bool {
    let mut plugins = shared.plugins.lock().expect("plugins lock");
    plugins.as_mut().is_some_and(|library| library.poll())
}

/// Judge the rollouts under way: whether a host's pin changed.
fn rollout_moved(shared: &Shared) -> bool {
    let model = shared.model();
    shared
        .rollouts
        .lock()
        .expect("rollouts lock")
        .tick(&model, now_ms())
}

/// Read the configuration again and apply it: rollouts, liveness, the
/// store's schedule, and the connected agents' schedules.
async fn apply_reload(shared: &Shared) {
    let loaded = {
        let mut plugins = shared.plugins.lock().expect("plugins lock");
        Model::load_with(&shared.config_path, &mut plugins).map(|mut model| {
            let mut rollouts = shared.rollouts.lock().expect("rollouts lock");
            pin_rollouts(&mut rollouts, &mut model, &mut plugins);
            model
        })
    };
    let new = match loaded {
        Ok(model) => Arc::new(model),
        Err(e) => {
            tracing::error!("reload failed, keeping the running configuration: {e:#}");
            return;
        }
    };
    let old = shared.model();
    for (what, changed) in [
        ("listen", old.settings.listen != new.settings.listen),
        ("database", old.settings.database != new.settings.database),
        ("[tls]", old.settings.tls != new.settings.tls),
        (
            "[[remote_write]]",
            old.settings.remote_write != new.settings.remote_write,
        ),
    ] {
        if changed {
            tracing::warn!("{what} changed in the configuration; it applies after a restart");
        }
    }
    shared
        .rollouts
        .lock()
        .expect("rollouts lock")
        .record_pin_changes(&old, &new, now_ms());
    *shared.model.write().expect("model lock") = new.clone();
    shared
        .tracker
        .lock()
        .expect("tracker lock")
        .apply_model(&new, now_ms());
    let versions = versions_op(shared.plugins.lock().expect("plugins lock").as_ref());
    shared.store.send(versions).await;
    shared.store.send(scheduled_op(&new, &shared.tracker)).await;
    shared.notifier.configure(&new);
    let pushed = push_schedules(shared, &old, &new);
    tracing::info!(
        hosts = new.hosts.len(),
        pushed,
        "configuration reloaded; new schedules pushed to {pushed} connected agents"
    );
}

/// Push changed schedules to the connected agents, and send away those of
/// removed hosts. Returns how many schedules were pushed.
fn push_schedules(shared: &Shared, old: &Model, new: &Model) -> usize {
    let mut pushed = 0;
    for (host, peer) in shared.peers.lock().expect("peers lock").iter() {
        let before = old.hosts.get(host).map(|h| h.schedule.revision);
        match new.hosts.get(host) {
            None => {
                let _ = peer.outbound.try_send(fault(
                    FaultCode::Auth,
                    format!("host {host} was removed from the receiver's configuration"),
                ));
                peer.cancel.cancel();
            }
            Some(h) if Some(h.schedule.revision) != before => {
                let _ = peer
                    .outbound
                    .try_send(Message::Schedule(h.schedule.clone()));
                pushed += 1;
            }
            Some(_) => {}
        }
    }
    pushed
}
