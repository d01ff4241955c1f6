//! `agent run`: the long-running agent. Starts from the cached schedule (so
//! it collects even when the receiver is away at start), connects to the
//! receiver, applies every schedule it receives, reloads its own config on
//! SIGHUP, and on SIGTERM / Ctrl-C lets running plugins finish and flushes
//! what it can.

use super::hygiene::{Hygiene, SWEEP_EVERY};
use super::link::{self, LinkConfig};
use super::schedule::{ScheduleCache, fetched_dir, services, to_fetch};
use super::scheduler::Scheduler;
use super::services::ServiceRunner;
use super::spool::Spool;
use crate::config::Agent;
use anyhow::Context;
use sandglass_core::time::now_ms;
use sandglass_daemon::tls;
use sandglass_protocol::Schedule;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

/// How long a stopping agent waits for its connection to flush.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What the link needs from the configuration; an error names what is
/// missing or broken (also used by `agent check`).
pub(crate) fn link_config(agent: &Agent, config: &Path) -> anyhow::Result<LinkConfig> {
    let missing = |key: &str| {
        anyhow::anyhow!(
            "{}: `agent run` needs `{key}`: set {key} = ... at the top of the file",
            config.display()
        )
    };
    if agent.receivers.is_empty() {
        return Err(missing("receiver"));
    }
    let tls = agent
        .tls
        .as_ref()
        .map(|t| {
            let identity = t.cert.as_deref().zip(t.key.as_deref());
            tls::Client::new(&t.ca, identity, t.server_name.clone())
        })
        .transpose()
        .with_context(|| format!("{}: [tls]", config.display()))?;
    Ok(LinkConfig {
        receivers: agent.receivers.clone(),
        host_id: agent.host_id.clone(),
        token: agent.token.clone().ok_or_else(|| missing("token"))?,
        plugin_dir: agent.plugin_dir.clone(),
        hash_cache: agent.state_dir.join("installed"),
        fetched_dir: fetched_dir(&agent.state_dir),
        connection: agent.connection.clone(),
        tls,
    })
}

/// What the running link was started with; a reload that changes it needs
/// a restart. (Compared, never logged: it holds the token.)
fn link_settings(agent: &Agent) -> String {
    format!(
        "{:?}",
        (
            &agent.receivers,
            &agent.host_id,
            &agent.token,
            &agent.connection,
            &agent.spool,
            &agent.tls
        )
    )
}

/// Run until `shutdown` resolves.
pub async fn run(
    config: &Path,
    reload: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let agent = Agent::load(config)?;
    let link_setup = link_config(&agent, config)?;
    let started_with = link_settings(&agent);
    let spool = open_spool(&agent)?;
    let runner = Arc::new(
        ServiceRunner::new(&agent.state_dir, agent.cache.compile_limits())
            .with_context(|| format!("cannot use state_dir {}", agent.state_dir.display()))?,
    );
    let cache = ScheduleCache::new(&agent.state_dir);
    let hygiene = Hygiene::new(&agent.state_dir, agent.cache.keep_unused.0);
    let (report_tx, report_rx) = mpsc::channel(1024);
    let in_progress = Arc::new(AtomicUsize::new(0));
    let scheduler = Scheduler::new(
        runner.clone(),
        agent.host_id.clone(),
        report_tx,
        in_progress.clone(),
    );
    let mut daemon = Daemon {
        config,
        agent,
        started_with,
        scheduler,
        cache,
        current: None,
        wanted: watch::channel(Vec::new()).0,
        runner,
        hygiene,
    };
    let wanted = daemon.wanted.subscribe();
    let revision = daemon.start_from_cache();
    let (schedule_tx, schedule_rx) = watch::channel(None);
    let link = tokio::spawn(link::run(
        link_setup,
        spool,
        report_rx,
        in_progress,
        schedule_tx,
        revision,
        wanted,
    ));
    daemon.serve(reload, schedule_rx, shutdown).await;
    // Let running plugins finish; their reports still go out.
    daemon.scheduler.stop().await;
    if tokio::time::timeout(STOP_WAIT, link).await.is_err() {
        tracing::warn!("the connection did not flush in time");
    }
    Ok(())
}

/// Open the spool, saying when it holds entries from before a restart.
fn open_spool(agent: &Agent) -> anyhow::Result<Spool> {
    let spool_dir = agent.state_dir.join("spool");
    let (spool, recovery) = Spool::open(&spool_dir, agent.spool.max_size.0)?;
    if recovery.pending > 0 {
        tracing::info!(
            pending = recovery.pending,
            "the spool holds entries from before the restart; sending them first"
        );
    }
    Ok(spool)
}

/// The running agent, apart from its link: the configuration and the
/// schedule it runs.
struct Daemon<'a> {
    config: &'a Path,
    agent: Agent,
    /// [`link_settings`] at start.
    started_with: String,
    scheduler: Scheduler,
    cache: ScheduleCache,
    /// The schedule running, if any.
    current: Option<Schedule>,
    /// The pinned plugins to fetch from the receiver, for the link.
    wanted: watch::Sender<Vec<String>>,
    runner: Arc<ServiceRunner>,
    hygiene: Hygiene,
}

impl Daemon<'_> {
    /// Start with the cached schedule, if there is one; returns its
    /// revision (0: none), which the link asks the receiver about.
    fn start_from_cache(&mut self) -> u64 {
        let cached = self.cache.load();
        let revision = cached.as_ref().map_or(0, |s| s.revision);
        if let Some(schedule) = cached {
            tracing::info!(
                revision = schedule.revision,
                "starting with the cached schedule until the receiver says otherwise"
            );
            self.run_schedule(&schedule);
            self.current = Some(schedule);
        }
        revision
    }

    /// Apply the schedules the link receives and reload the configuration
    /// on `reload`, until `shutdown` resolves or the link ends.
    async fn serve(
        &mut self,
        reload: Arc<Notify>,
        mut schedules: watch::Receiver<Option<Schedule>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        // Not at start: the services are loading (compiling) their plugins.
        let first = tokio::time::Instant::now() + SWEEP_EVERY;
        let mut sweep = tokio::time::interval_at(first, SWEEP_EVERY);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = sweep.tick() => self.sweep(),
                changed = schedules.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let Some(schedule) = schedules.borrow_and_update().clone() else { continue };
                    self.apply(schedule);
                }
                () = reload.notified() => self.reload(),
            }
        }
    }

    /// Run `schedule`'s services, and have the link fetch the plugins
    /// they need from the receiver.
    fn run_schedule(&mut self, schedule: &Schedule) {
        let services = services(schedule, &self.agent);
        self.wanted
            .send_replace(to_fetch(&services, &self.agent.state_dir));
        self.scheduler.apply(services);
    }

    /// Remove the compiled and fetched plugins no service has used for
    /// `[cache] keep_unused`.
    fn sweep(&mut self) {
        let mut in_use: HashSet<String> = self.runner.loaded_sha256().collect();
        if let Some(schedule) = &self.current {
            in_use.extend(schedule.services.iter().filter_map(|s| s.sha256.clone()));
        }
        for path in self.hygiene.sweep(&in_use, now_ms()) {
            tracing::info!(path = %path.display(), "removed a plugin build no service has used for [cache] keep_unused");
        }
    }

    /// A new schedule from the receiver: keep it for the next start and run it.
    fn apply(&mut self, schedule: Schedule) {
        self.cache.save(&schedule);
        self.run_schedule(&schedule);
        tracing::info!(revision = schedule.revision, services = ?self.scheduler.running(), "schedule applied");
        self.current = Some(schedule);
    }

    /// SIGHUP: load the configuration again and apply it to the running
    /// schedule; keep the running one if the file is wrong.
    fn reload(&mut self) {
        match Agent::load(self.config) {
            Err(e) => tracing::error!("reload failed, keeping the running configuration: {e:#}"),
            Ok(reloaded) => {
                if link_settings(&reloaded) != self.started_with {
                    tracing::warn!(
                        "receiver, host_id, token, [connection], [spool] and [tls] changes apply after a restart"
                    );
                }
                self.agent = reloaded;
                if let Some(schedule) = self.current.take() {
                    self.run_schedule(&schedule);
                    self.current = Some(schedule);
                }
                tracing::info!("configuration reloaded");
            }
        }
    }
}
