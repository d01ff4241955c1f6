//! Rollouts on the fleet: kept in the `rollouts` table (so a restart and
//! `receiver plugins resume|abandon`, run as another process, see the same
//! state), judged from the run counts `store::plugin_runs` keeps, and
//! turned into per-host pins in the hosts' schedules. Every change of a
//! host's pinned build is recorded as an event on its service.
//!
//! The table is written on its own connection, as `receiver ack` does;
//! each write names the revision it read, so a step taken by the receiver
//! and an operator's command never overwrite each other.

use super::{Counts, Rollout, Stage, Verdict, short};
use crate::config::{Canaries, Model, revision};
use crate::plugins::Library;
use anyhow::{Context, bail};
use rusqlite::{Connection, params};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollouts (
    plugin TEXT PRIMARY KEY,
    from_sha256 TEXT,
    to_sha256 TEXT NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    -- JSON array of the host names pinned to the new build.
    reached TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    step_ms INTEGER NOT NULL,
    base_runs INTEGER NOT NULL,
    base_unknown INTEGER NOT NULL,
    revision INTEGER NOT NULL
);
";

/// How far back the previous build's runs are taken as its baseline.
const BASELINE_MS: u64 = 3_600_000;

/// The receiver's rollouts and the connection they are kept through.
pub struct Rollouts {
    conn: Connection,
    rows: BTreeMap<String, Rollout>,
}

impl Rollouts {
    pub fn open(database: &Path) -> anyhow::Result<Rollouts> {
        let conn = crate::store::open(database)?;
        let rows = load(&conn, None)?;
        Ok(Rollouts { conn, rows })
    }

    /// After the configuration or `plugin_dir` changed: start a rollout for
    /// each plugin whose current build is new, then pin `model`'s hosts.
    /// Returns the `from` builds still needed, which `plugin_dir` must keep
    /// serving.
    pub fn reconcile(
        &mut self,
        model: &mut Model,
        library: &Library,
        now_ms: u64,
    ) -> BTreeSet<String> {
        if let Err(e) = self.refresh() {
            tracing::error!("rollouts: cannot read them: {e:#}");
        }
        let current = library.pins();
        for plugin in distributed_plugins(model) {
            let Some(to) = current.get(&plugin) else {
                continue;
            };
            let next = match self.rows.get(&plugin) {
                None => Rollout::done(&plugin, None, to, "first build seen", now_ms),
                Some(r) if r.to == *to => continue,
                Some(r) => self.next_build(model, r, to, now_ms),
            };
            self.save(next);
        }
        self.apply(model);
        self.rows
            .values()
            .filter(|r| r.stage != Stage::Done)
            .filter_map(|r| r.from.clone())
            .collect()
    }

    /// What a new build `to` of a plugin whose rollout is `r` starts.
    fn next_build(&self, model: &Model, r: &Rollout, to: &str, now_ms: u64) -> Rollout {
        // The build every host ran before: a rollout under way is replaced
        // by one from there.
        let stable = match r.stage {
            Stage::Done => r.to.clone(),
            _ => r.from.clone().unwrap_or_else(|| r.to.clone()),
        };
        let hosts = hosts_of(model, &r.plugin);
        let revision = r.revision;
        let mut next = match &model.rollout {
            _ if stable == to => Rollout::done(
                &r.plugin,
                Some(r.to.clone()),
                to,
                "back to the build every host ran",
                now_ms,
            ),
            Some(policy) if !hosts.is_empty() => {
                let canaries = canaries(model, &policy.canaries, &hosts);
                let mut started = Rollout::start(&r.plugin, &stable, to, canaries, now_ms);
                started.base = self.counts(&r.plugin, to, &started.reached, 0);
                started
            }
            _ => Rollout::done(
                &r.plugin,
                Some(stable),
                to,
                "new build for every host at once (no [rollout])",
                now_ms,
            ),
        };
        next.revision = revision;
        tracing::info!(
            plugin = r.plugin,
            from = next.from.as_deref().map_or("-", short),
            to = short(to),
            "plugin_dir has a new build: {}",
            next.reason
        );
        next
    }

    /// Judge the rollouts under way (once a second). Returns whether a
    /// host's pin changed, here or by an operator's command: then the
    /// schedules are made again.
    pub fn tick(&mut self, model: &Model, now_ms: u64) -> bool {
        let mut changed = match self.refresh() {
            Ok(changed) => changed,
            Err(e) => {
                tracing::error!("rollouts: cannot read them: {e:#}");
                return false;
            }
        };
        let stepping: Vec<Rollout> = self
            .rows
            .values()
            .filter(|r| r.stage == Stage::Stepping)
            .cloned()
            .collect();
        for r in stepping {
            let Some(policy) = &model.rollout else {
                let done = Rollout::done(
                    &r.plugin,
                    r.from.clone(),
                    &r.to,
                    "[rollout] was removed: every host at once",
                    now_ms,
                );
                changed |= self.save(Rollout {
                    revision: r.revision,
                    ..done
                });
                continue;
            };
            let hosts = hosts_of(model, &r.plugin);
            let to = self.counts(&r.plugin, &r.to, &r.reached, 0);
            let from = match &r.from {
                Some(from) => self.counts(
                    &r.plugin,
                    from,
                    &r.reached,
                    r.started_ms.saturating_sub(BASELINE_MS),
                ),
                None => Counts::default(),
            };
            let mut next = r.clone();
            match r.judge(policy, &hosts, to, from, now_ms) {
                Verdict::Hold => continue,
                Verdict::Step(more) => {
                    next.reason = format!("step: {} more hosts ({})", more.len(), more.join(", "));
                    next.reached.extend(more);
                    next.step_ms = now_ms;
                }
                Verdict::Done => {
                    next.stage = Stage::Done;
                    next.reason = format!("every host runs build {}", short(&r.to));
                    next.reached.clear();
                }
                Verdict::Halt(why) => {
                    next.stage = Stage::Halted;
                    next.reason = format!("halted, every host back on the previous build: {why}");
                }
            }
            tracing::warn!(
                plugin = r.plugin,
                "rollout of build {}: {}",
                short(&r.to),
                next.reason
            );
            changed |= self.save(next);
        }
        changed
    }

    /// Pin each host's services whose build `plugin_dir` decides to the
    /// build its plugin's rollout gives it.
    pub fn apply(&self, model: &mut Model) {
        for (name, host) in model.hosts.iter_mut() {
            let mut pinned = false;
            for s in host.schedule.services.iter_mut() {
                let Some(r) = self.rows.get(&s.plugin) else {
                    continue;
                };
                if !model.distributed.contains(&s.name) || s.sha256.as_deref() != Some(&r.to) {
                    continue;
                }
                if let Some(pin) = r.pin(name) {
                    s.sha256 = Some(pin.to_owned());
                    pinned = true;
                }
            }
            if pinned {
                host.schedule.revision = revision(&host.schedule.services);
            }
        }
    }

    /// Record, as events, each service whose pinned build differs between
    /// two models, with the reason its plugin's rollout gives.
    pub fn record_pin_changes(&self, old: &Model, new: &Model, now_ms: u64) {
        let mut events = Vec::new();
        for (host, h) in &new.hosts {
            let Some(before) = old.hosts.get(host) else {
                continue;
            };
            for s in &h.schedule.services {
                let was = before.schedule.services.iter().find(|o| o.name == s.name);
                let (Some(was), Some(now)) =
                    (was.and_then(|o| o.sha256.as_deref()), s.sha256.as_deref())
                else {
                    continue;
                };
                if was != now && was.len() == 64 {
                    let reason = self.rows.get(&s.plugin).map_or("", |r| r.reason.as_str());
                    events.push((
                        host,
                        &s.name,
                        format!("{} {}", s.plugin, short(was)),
                        format!("{} {}", s.plugin, short(now)),
                        reason,
                    ));
                }
            }
        }
        if events.is_empty() {
            return;
        }
        let written = (|| -> rusqlite::Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (time_ms, host, service, old, new, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (host, service, old, new, reason) in &events {
                insert.execute(params![
                    now_ms,
                    host,
                    service,
                    old,
                    new,
                    format!("build: {reason}")
                ])?;
            }
            drop(insert);
            tx.commit()
        })();
        if let Err(e) = written {
            tracing::error!(
                "rollouts: cannot record {} build changes as events: {e}",
                events.len()
            );
        }
    }

    /// Read the rows again; returns whether any changed since last read.
    fn refresh(&mut self) -> anyhow::Result<bool> {
        let rows = load(&self.conn, None)?;
        let changed = rows.len() != self.rows.len()
            || rows
                .iter()
                .any(|(p, r)| self.rows.get(p).is_none_or(|o| o.revision != r.revision));
        self.rows = rows;
        Ok(changed)
    }

    /// Write `r` if its row is still at the revision it was read at;
    /// returns whether it was written.
    fn save(&mut self, mut r: Rollout) -> bool {
        match save(&self.conn, &r) {
            Ok(true) => {
                r.revision += 1;
                self.rows.insert(r.plugin.clone(), r);
                true
            }
            Ok(false) => {
                tracing::info!(
                    plugin = r.plugin,
                    "rollout changed meanwhile (an operator's command?); judged again next time"
                );
                false
            }
            Err(e) => {
                tracing::error!(plugin = r.plugin, "rollout: cannot store it: {e:#}");
                false
            }
        }
    }

    fn counts(
        &self,
        plugin: &str,
        sha256: &str,
        hosts: &BTreeSet<String>,
        since_ms: u64,
    ) -> Counts {
        counts(&self.conn, plugin, sha256, hosts, since_ms).unwrap_or_else(|e| {
            tracing::error!(plugin, "rollout: cannot count runs: {e}");
            Counts::default()
        })
    }
}

/// `receiver plugins resume NAME`: a halted rollout goes on from its
/// canaries, judged on runs from now on.
pub fn resume(conn: &Connection, plugin: &str, now_ms: u64) -> anyhow::Result<Rollout> {
    let mut r = one(conn, plugin)?;
    if r.stage != Stage::Halted {
        bail!(
            "the rollout of {plugin} is {}: only a halted one can be resumed",
            r.stage.as_str()
        );
    }
    r.stage = Stage::Stepping;
    r.reason = "resumed by an operator".into();
    r.started_ms = now_ms;
    r.step_ms = now_ms;
    r.base = counts(conn, plugin, &r.to, &r.reached, 0)?;
    write_or_explain(conn, r)
}

/// `receiver plugins abandon NAME`: every host stays on the previous build
/// until `plugin_dir` offers another.
pub fn abandon(conn: &Connection, plugin: &str) -> anyhow::Result<Rollout> {
    let mut r = one(conn, plugin)?;
    if !matches!(r.stage, Stage::Halted | Stage::Stepping) {
        bail!(
            "the rollout of {plugin} is {}: there is nothing to abandon (to go back to an older build, put its file back in plugin_dir)",
            r.stage.as_str()
        );
    }
    r.stage = Stage::Abandoned;
    r.reason = "abandoned by an operator".into();
    write_or_explain(conn, r)
}

fn one(conn: &Connection, plugin: &str) -> anyhow::Result<Rollout> {
    conn.execute_batch(SCHEMA)?;
    load(conn, Some(plugin))?
        .remove(plugin)
        .with_context(|| format!("no rollout of plugin {plugin:?}: see `receiver plugins`"))
}

fn write_or_explain(conn: &Connection, mut r: Rollout) -> anyhow::Result<Rollout> {
    if !save(conn, &r)? {
        bail!(
            "the rollout of {} changed while this command ran: look at `receiver plugins` and try again",
            r.plugin
        );
    }
    r.revision += 1;
    Ok(r)
}

/// Every rollout (or one plugin's), by plugin.
pub fn load(conn: &Connection, plugin: Option<&str>) -> anyhow::Result<BTreeMap<String, Rollout>> {
    let mut select = conn.prepare_cached(
        "SELECT plugin, from_sha256, to_sha256, stage, reason, reached, started_ms, step_ms,
                base_runs, base_unknown, revision
         FROM rollouts WHERE ?1 IS NULL OR plugin = ?1",
    )?;
    let rows = select.query_map([plugin], |row| {
        Ok((
            Rollout {
                plugin: row.get(0)?,
                from: row.get(1)?,
                to: row.get(2)?,
                stage: Stage::Done,
                reason: row.get(4)?,
                reached: BTreeSet::new(),
                started_ms: row.get(6)?,
                step_ms: row.get(7)?,
                base: Counts {
                    runs: row.get(8)?,
                    unknown: row.get(9)?,
                },
                revision: row.get(10)?,
            },
            row.get::<_, String>(3)?,
            row.get::<_, String>(5)?,
        ))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (mut r, stage, reached) = row?;
        r.stage = Stage::parse(&stage)
            .with_context(|| format!("rollout of {}: unknown stage {stage:?}", r.plugin))?;
        r.reached = serde_json::from_str(&reached)
            .with_context(|| format!("rollout of {}: reached hosts", r.plugin))?;
        out.insert(r.plugin.clone(), r);
    }
    Ok(out)
}

/// Insert `r` (revision 0, a plugin without a row) or update its row if it
/// is still at `r.revision`; returns whether it wrote.
fn save(conn: &Connection, r: &Rollout) -> anyhow::Result<bool> {
    let reached = serde_json::to_string(&r.reached)?;
    let written = conn.prepare_cached(
        "INSERT INTO rollouts (plugin, from_sha256, to_sha256, stage, reason, reached, started_ms, step_ms,
                               base_runs, base_unknown, revision)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11 + 1)
         ON CONFLICT (plugin) DO UPDATE SET
            from_sha256 = excluded.from_sha256, to_sha256 = excluded.to_sha256, stage = excluded.stage,
            reason = excluded.reason, reached = excluded.reached, started_ms = excluded.started_ms,
            step_ms = excluded.step_ms, base_runs = excluded.base_runs, base_unknown = excluded.base_unknown,
            revision = excluded.revision
         WHERE rollouts.revision = ?11",
    )?
    .execute(params![
        r.plugin,
        r.from,
        r.to,
        r.stage.as_str(),
        r.reason,
        reached,
        r.started_ms,
        r.step_ms,
        r.base.runs,
        r.base.unknown,
        r.revision
    ])?;
    Ok(written == 1)
}

/// Runs of build `sha256` of `plugin` on `hosts`, counted from `since_ms`.
fn counts(
    conn: &Connection,
    plugin: &str,
    sha256: &str,
    hosts: &BTreeSet<String>,
    since_ms: u64,
) -> rusqlite::Result<Counts> {
    let mut select = conn.prepare_cached(
        "SELECT s.host, sum(r.runs), sum(r.unknown) FROM plugin_runs r JOIN services s ON s.id = r.service_id
         WHERE s.plugin = ?1 AND r.sha256 = ?2 AND r.bucket_ms >= ?3 GROUP BY s.host",
    )?;
    let rows = select.query_map(
        params![plugin, sha256, since_ms - since_ms % 600_000],
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, u64>(1)?,
                row.get::<_, u64>(2)?,
            ))
        },
    )?;
    let mut total = Counts::default();
    for row in rows {
        let (host, runs, unknown) = row?;
        if hosts.contains(&host) {
            total.runs += runs;
            total.unknown += unknown;
        }
    }
    Ok(total)
}

/// The plugins of services whose build `plugin_dir` decides.
fn distributed_plugins(model: &Model) -> BTreeSet<String> {
    model
        .hosts
        .values()
        .flat_map(|h| &h.schedule.services)
        .filter(|s| model.distributed.contains(&s.name))
        .map(|s| s.plugin.clone())
        .collect()
}

/// The hosts running `plugin` through such a service, by name.
fn hosts_of(model: &Model, plugin: &str) -> Vec<String> {
    model
        .hosts
        .iter()
        .filter(|(_, h)| {
            h.schedule
                .services
                .iter()
                .any(|s| s.plugin == plugin && model.distributed.contains(&s.name))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The canaries among `hosts`: the first ones by name, or the group's (the
/// first host when none of the group runs the plugin).
fn canaries(model: &Model, canaries: &Canaries, hosts: &[String]) -> Vec<String> {
    let chosen: Vec<String> = match canaries {
        Canaries::Count(n) => hosts.iter().take(*n).cloned().collect(),
        Canaries::Group(group) => hosts
            .iter()
            .filter(|h| {
                model
                    .hosts
                    .get(*h)
                    .is_some_and(|m| m.groups.contains(group))
            })
            .cloned()
            .collect(),
    };
    match chosen.is_empty() {
        true => hosts.iter().take(1).cloned().collect(),
        false => chosen,
    }
}
