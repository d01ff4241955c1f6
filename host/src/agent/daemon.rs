//! `agent run`: the long-running agent. Starts from the cached schedule (so
//! it collects even when the receiver is away at start), connects to the
//! receiver, applies every schedule it receives, reloads its own config on
//! SIGHUP, and on SIGTERM / Ctrl-C lets running plugins finish and flushes
//! what it can.

use super::link::{self, LinkConfig};
use super::schedule::{ScheduleCache, services};
use super::scheduler::Scheduler;
use super::services::ServiceRunner;
use crate::config::Agent;
use crate::protocol::Schedule;
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

/// How long a stopping agent waits for its connection to flush.
const STOP_WAIT: Duration = Duration::from_secs(10);

fn link_config(agent: &Agent, config: &Path) -> anyhow::Result<LinkConfig> {
    let missing = |key: &str| {
        anyhow::anyhow!(
            "{}: `agent run` needs `{key}`: set {key} = ... at the top of the file",
            config.display()
        )
    };
    Ok(LinkConfig {
        receiver: agent.receiver.clone().ok_or_else(|| missing("receiver"))?,
        host_id: agent.host_id.clone(),
        token: agent.token.clone().ok_or_else(|| missing("token"))?,
        plugin_dir: agent.plugin_dir.clone(),
        connection: agent.connection.clone(),
    })
}

/// Run until `shutdown` resolves.
pub async fn run(
    config: &Path,
    reload: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut agent = Agent::load(config)?;
    let mut link_settings = link_config(&agent, config)?;
    let runner = Arc::new(
        ServiceRunner::new(&agent.state_dir)
            .with_context(|| format!("cannot use state_dir {}", agent.state_dir.display()))?,
    );
    let cache = ScheduleCache::new(&agent.state_dir);
    let (report_tx, report_rx) = mpsc::channel(1024);
    let mut scheduler = Scheduler::new(runner, agent.host_id.clone(), report_tx);
    let cached = cache.load();
    let revision = cached.as_ref().map_or(0, |s| s.revision);
    let mut current: Option<Schedule> = None;
    if let Some(schedule) = cached {
        tracing::info!(
            revision = schedule.revision,
            "starting with the cached schedule until the receiver says otherwise"
        );
        scheduler.apply(services(&schedule, &agent));
        current = Some(schedule);
    }
    let (schedule_tx, mut schedule_rx) = watch::channel(None);
    let link = tokio::spawn(link::run(
        link_settings.clone(),
        report_rx,
        schedule_tx,
        revision,
    ));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            changed = schedule_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let Some(schedule) = schedule_rx.borrow_and_update().clone() else { continue };
                cache.save(&schedule);
                scheduler.apply(services(&schedule, &agent));
                tracing::info!(revision = schedule.revision, services = ?scheduler.running(), "schedule applied");
                current = Some(schedule);
            }
            () = reload.notified() => {
                match Agent::load(config).and_then(|a| Ok((link_config(&a, config)?, a))) {
                    Err(e) => tracing::error!("reload failed, keeping the running configuration: {e:#}"),
                    Ok((settings, reloaded)) => {
                        agent = reloaded;
                        if let Some(schedule) = &current {
                            scheduler.apply(services(schedule, &agent));
                        }
                        if settings.receiver != link_settings.receiver
                            || settings.host_id != link_settings.host_id
                            || settings.token != link_settings.token
                        {
                            tracing::warn!("receiver, host_id and token changes apply after a restart");
                        } else {
                            link_settings = settings;
                        }
                        tracing::info!("configuration reloaded");
                    }
                }
            }
        }
    }
    // Let running plugins finish; their reports still go out.
    scheduler.stop().await;
    if tokio::time::timeout(STOP_WAIT, link).await.is_err() {
        tracing::warn!("the connection did not flush in time");
    }
    Ok(())
}
