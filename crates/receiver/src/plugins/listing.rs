//! `receiver plugins`: each plugin's builds, the hosts that run and pin
//! each, and how its runs went over a recent window (read from the tables
//! `store::plugin_runs` writes; see there how runs are attributed).

use crate::notify::message::rfc3339;
use crate::rollout::{self, Rollout, Stage, short};
use rusqlite::{Connection, params};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One plugin and its builds, oldest first.
#[derive(Debug, Serialize)]
pub struct Plugin {
    pub name: String,
    pub versions: Vec<Version>,
    /// Its rollout: the build every host runs (`done`), or one under way,
    /// halted or abandoned.
    pub rollout: Option<Rollout>,
}

/// One build of a plugin.
#[derive(Debug, Default, Serialize)]
pub struct Version {
    pub sha256: String,
    /// Size and first sighting: known for builds of the receiver's
    /// `plugin_dir`, not for a sha256 written in receiver.toml.
    pub size: Option<u64>,
    pub first_seen_ms: Option<u64>,
    /// Hosts whose newest report (of a service with this plugin) came
    /// from this build.
    pub running: BTreeSet<String>,
    /// Hosts whose schedule pins this build now.
    pub pinned: BTreeSet<String>,
    /// Reports counted for this build since the window's start, and how
    /// many of them were UNKNOWN (the plugin failed to give a result).
    pub runs: u64,
    pub unknown: u64,
}

/// Every plugin the receiver has offered, pinned or seen run, with runs
/// counted from `since_ms`.
pub fn plugins(conn: &Connection, since_ms: u64) -> anyhow::Result<Vec<Plugin>> {
    // A database an older receiver wrote has no rollouts yet.
    conn.execute_batch(rollout::SCHEMA)?;
    let mut rollouts = rollout::load(conn, None)?;
    let mut by_name: BTreeMap<String, BTreeMap<String, Version>> = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    let mut known = conn.prepare(
        "SELECT plugin, sha256, size, first_seen_ms FROM plugin_versions ORDER BY first_seen_ms",
    )?;
    let rows = known.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    for row in rows {
        let (plugin, sha256, size, first): (String, String, u64, u64) = row?;
        order.push((plugin.clone(), sha256.clone()));
        let v = version(&mut by_name, plugin, sha256);
        v.size = Some(size);
        v.first_seen_ms = Some(first);
    }
    let mut pinned = conn.prepare(
        "SELECT s.plugin, p.sha256, s.host FROM service_pins p JOIN services s ON s.id = p.service_id
         WHERE s.scheduled = 1",
    )?;
    let rows = pinned.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    for row in rows {
        let (plugin, sha256, host): (String, String, String) = row?;
        version(&mut by_name, plugin, sha256).pinned.insert(host);
    }
    // Each scheduled service's newest counted run names the build it runs.
    let mut running = conn.prepare(
        "SELECT s.plugin, r.sha256, s.host FROM plugin_runs r JOIN services s ON s.id = r.service_id
         WHERE s.scheduled = 1
           AND r.last_ms = (SELECT max(last_ms) FROM plugin_runs WHERE service_id = r.service_id)",
    )?;
    let rows = running.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    for row in rows {
        let (plugin, sha256, host): (String, String, String) = row?;
        version(&mut by_name, plugin, sha256).running.insert(host);
    }
    let mut counted = conn.prepare(
        "SELECT s.plugin, r.sha256, sum(r.runs), sum(r.unknown)
         FROM plugin_runs r JOIN services s ON s.id = r.service_id
         WHERE r.bucket_ms >= ?1 GROUP BY s.plugin, r.sha256",
    )?;
    let rows = counted.query_map(params![since_ms], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    for row in rows {
        let (plugin, sha256, runs, unknown): (String, String, u64, u64) = row?;
        let v = version(&mut by_name, plugin, sha256);
        v.runs = runs;
        v.unknown = unknown;
    }
    // Builds first seen earlier come first; others (pinned in receiver.toml)
    // after them, by hash.
    Ok(by_name
        .into_iter()
        .map(|(name, mut builds)| {
            let mut versions: Vec<Version> = order
                .iter()
                .filter(|(plugin, _)| *plugin == name)
                .filter_map(|(_, sha256)| builds.remove(sha256))
                .collect();
            versions.extend(builds.into_values());
            let rollout = rollouts.remove(&name);
            Plugin {
                name,
                versions,
                rollout,
            }
        })
        .collect())
}

/// The entry of one build, made on first mention.
fn version(
    by_name: &mut BTreeMap<String, BTreeMap<String, Version>>,
    plugin: String,
    sha256: String,
) -> &mut Version {
    by_name
        .entry(plugin)
        .or_default()
        .entry(sha256.clone())
        .or_insert_with(|| Version {
            sha256,
            ..Version::default()
        })
}

/// The listing as text for a terminal.
pub fn table(plugins: &[Plugin], window: &str) -> String {
    if plugins.is_empty() {
        return "no plugins offered, pinned or run yet\n".into();
    }
    let hosts = |set: &BTreeSet<String>| match set.len() {
        0 => "-".to_owned(),
        _ => set.iter().cloned().collect::<Vec<_>>().join(", "),
    };
    let mut out = String::new();
    for p in plugins {
        out += &format!("{}\n", p.name);
        if let Some(r) = p.rollout.as_ref().filter(|r| r.stage != Stage::Done) {
            let from = r.from.as_deref().map_or("-", short);
            out += &format!(
                "  rollout {from} -> {}: {} since {}, {} hosts reached: {}\n",
                short(&r.to),
                r.stage.as_str(),
                rfc3339(r.started_ms),
                r.reached.len(),
                r.reason
            );
        }
        for v in &p.versions {
            let size = v.size.map_or("-".into(), |s| format!("{s} B"));
            let seen = v.first_seen_ms.map_or("-".into(), rfc3339);
            out += &format!(
                "  {}  {size}  first seen {seen}  runs {} ({} UNKNOWN) in the last {window}\n",
                v.sha256, v.runs, v.unknown
            );
            out += &format!(
                "      running on: {}  pinned on: {}\n",
                hosts(&v.running),
                hosts(&v.pinned)
            );
        }
    }
    out
}
