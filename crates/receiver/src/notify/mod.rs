//! Notifications (docs/notifications.md): trigger fire and recovery, a host
//! becoming PROBLEM or UNREACHABLE and OK again, told to the log (always)
//! and to the channels of `[notify]`.
//!
//! The notifier is a thread of its own with its own connection to the
//! database: the liveness clock hands it every change right after queueing
//! the event; [`policy`] decides what is said and when; each message is
//! written to the `notifications` table (the persistent queue) before any
//! attempt, then delivered with retries and exponential backoff
//! ([`queue`], [`deliver`]). A slow webhook therefore holds up only other
//! notifications, never the store or the liveness clock.

pub mod admin;
mod deliver;
pub mod message;
pub mod policy;
pub mod queue;
pub mod silence;

pub use queue::SCHEMA;

use crate::config::{Channel, Model, NotifyConfig};
use crate::liveness::Change;
use message::{Item, ItemKind, Notification};
use policy::{Out, Policy, Rules};
use rusqlite::Connection;
use sandglass_core::text::Escaped;
use sandglass_core::time::now_ms;
use silence::Silences;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

/// How often the notifier decides and delivers when no change arrives.
const TICK: Duration = Duration::from_millis(250);
/// How often acks and maintenance windows are read again.
const SILENCES_EVERY_MS: u64 = 1_000;
/// Most queued messages tried per tick.
const DELIVER_PER_TICK: usize = 32;

/// What the notifier needs of the configuration.
#[derive(Clone, Debug)]
pub struct Setup {
    pub config: NotifyConfig,
    /// Host groups by host, for maintenance windows on groups.
    pub groups: BTreeMap<String, Vec<String>>,
}

impl Setup {
    pub fn of(model: &Model) -> Setup {
        Setup {
            config: model.notify.clone(),
            groups: model
                .hosts
                .iter()
                .map(|(name, h)| (name.clone(), h.groups.clone()))
                .collect(),
        }
    }

    fn rules(&self) -> Rules {
        Rules {
            repeat_ms: self.config.repeat.as_millis() as u64,
            group_wait_ms: self.config.group_wait.as_millis() as u64,
            storm_hosts: self.config.storm_hosts,
        }
    }
}

enum Msg {
    Changes(Vec<Change>),
    Setup(Box<Setup>),
}

/// The handle the server holds; dropping it ends the thread (after the
/// message it is busy with).
pub struct Notifier {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Notifier {
    /// Start on `conn` (a connection of its own to the receiver's
    /// database). Hosts the store says are in trouble resume their problem.
    pub fn start(conn: Connection, setup: Setup) -> anyhow::Result<Notifier> {
        let mut policy = Policy::new(setup.rules());
        for item in troubled_hosts(&conn)? {
            policy.resume(item, now_ms());
        }
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("notifier".into())
            .spawn(move || run(conn, setup, policy, rx))?;
        Ok(Notifier {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Changes just handed to the store.
    pub fn changes(&self, changes: &[Change]) {
        self.send(Msg::Changes(changes.to_vec()));
    }

    /// The configuration was reloaded.
    pub fn configure(&self, model: &Model) {
        self.send(Msg::Setup(Box::new(Setup::of(model))));
    }

    fn send(&self, msg: Msg) {
        if let Some(tx) = &*self.tx.lock().expect("notifier lock") {
            let _ = tx.send(msg);
        }
    }

    /// End the thread once it has queued what it was given, and wait.
    pub fn stop(&self) {
        self.tx.lock().expect("notifier lock").take();
        if let Some(thread) = self.thread.lock().expect("notifier lock").take() {
            let _ = thread.join();
        }
    }
}

/// Hosts whose stored status is PROBLEM or UNREACHABLE, as problem items.
fn troubled_hosts(conn: &Connection) -> rusqlite::Result<Vec<Item>> {
    conn.prepare("SELECT name, status, since_ms, reason FROM hosts WHERE status IN ('PROBLEM', 'UNREACHABLE')")?
        .query_map([], |r| {
            Ok(Item {
                kind: ItemKind::HostProblem,
                host: r.get(0)?,
                service: None,
                trigger: None,
                old: "OK".into(),
                new: r.get(1)?,
                severity: None,
                message: r.get(3)?,
                time_ms: r.get(2)?,
            })
        })?
        .collect()
}

fn run(conn: Connection, mut setup: Setup, mut policy: Policy, rx: mpsc::Receiver<Msg>) {
    let mut silences = Silences::default();
    let mut silences_ms = 0;
    loop {
        // Stopping: what still waits for `group_wait` goes to the queue
        // now, to be delivered after the restart.
        let mut last = false;
        match rx.recv_timeout(TICK) {
            Ok(Msg::Changes(changes)) => changes.iter().for_each(|c| policy.observe(c)),
            Ok(Msg::Setup(new)) => {
                policy.set_rules(new.rules());
                setup = *new;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => last = true,
        }
        let now = now_ms();
        if now >= silences_ms + SILENCES_EVERY_MS {
            match Silences::load(&conn, now) {
                Ok(s) => silences = s,
                Err(e) => tracing::warn!("cannot read acks and maintenance windows: {e}"),
            }
            silences_ms = now;
        }
        let why = |host: &str, items: &[Item]| silences.why(host, items, &setup.groups, now);
        let until = if last {
            now + setup.config.group_wait.as_millis() as u64
        } else {
            now
        };
        for out in policy.tick(until, &why) {
            if let Err(e) = settle(&conn, &setup.config.channels, &out, now) {
                tracing::error!("cannot queue a notification: {e}");
            }
        }
        if last {
            return;
        }
        if let Err(e) = deliver_due(&conn, &setup.config.channels) {
            tracing::error!("cannot read the notification queue: {e}");
        }
    }
}

/// Log a decision, and queue the message (or record its suppression).
fn settle(conn: &Connection, channels: &[Channel], out: &Out, now: u64) -> rusqlite::Result<()> {
    match out {
        Out::Send(n) => {
            log(n, None);
            queue::enqueue(conn, channels, n, None, now)
        }
        Out::Suppressed(n, why) => {
            log(n, Some(why));
            queue::enqueue(conn, channels, n, Some(why), now)
        }
        Out::Recovered { host, service } => {
            silence::clear_acks(conn, host, service.as_deref(), now).map(drop)
        }
    }
}

/// The log channel: every message, sent or not.
fn log(n: &Notification, suppressed: Option<&str>) {
    let host = n.host.as_deref().unwrap_or("-");
    let message = Escaped(&n.message);
    match suppressed {
        Some(why) => tracing::info!(
            host,
            "notification {} suppressed ({why}): {message}",
            n.kind
        ),
        None if n.kind == "recovery" => tracing::info!(host, "notification {}: {message}", n.kind),
        None => tracing::warn!(host, "notification {}: {message}", n.kind),
    }
}

/// Try the queued messages whose time has come, oldest first. A channel
/// that fails is not tried again in this round, so a dead webhook costs
/// one timeout per round, not one per message.
fn deliver_due(conn: &Connection, channels: &[Channel]) -> rusqlite::Result<()> {
    let mut failing: HashSet<String> = HashSet::new();
    for due in queue::due(conn, now_ms(), DELIVER_PER_TICK)? {
        if failing.contains(&due.channel) {
            continue;
        }
        let ch = channels.iter().find(|c| c.name == due.channel);
        let outcome = match ch {
            Some(ch) => deliver::attempt(ch, &due.body),
            None => Err(format!("channel {} is no longer configured", due.channel)),
        };
        let settled = queue::record(conn, &due, ch, &outcome, now_ms())?;
        let what = Escaped(outcome.as_ref().unwrap_or_else(|e| e));
        match settled {
            queue::Settled::Sent => {
                tracing::info!(
                    channel = due.channel,
                    id = due.id,
                    "notification delivered: {what}"
                )
            }
            queue::Settled::Retry(next) => {
                failing.insert(due.channel.clone());
                let wait = next.saturating_sub(now_ms());
                tracing::warn!(
                    channel = due.channel,
                    id = due.id,
                    "notification attempt {} failed, again in {wait}ms: {what}",
                    due.attempts + 1
                );
            }
            queue::Settled::GivenUp => {
                failing.insert(due.channel.clone());
                tracing::error!(
                    channel = due.channel,
                    id = due.id,
                    "notification given up after {} attempts: {what}",
                    due.attempts + 1
                );
            }
        }
    }
    Ok(())
}
