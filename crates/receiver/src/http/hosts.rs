//! The hosts table and one host's page, read from the store.
//!
//! The table is filtered, sorted worst first and cut to one page in SQL
//! (`LIMIT`/`OFFSET` over the `hosts` table), so a page of 50 out of 10,000
//! hosts reads 50 rows' details, not 10,000.

use super::Live;
use super::api::{ApiError, Params};
use crate::config::Model;
use crate::events::{self, EventView};
use crate::notify::admin::{self, WindowView};
use crate::view::{self, HostView};
use rusqlite::{Connection, params};
use serde::Serialize;
use std::collections::BTreeMap;

/// Host statuses, worst first: the table's order and its filter's values.
pub const STATUSES: [&str; 5] = ["UNREACHABLE", "PROBLEM", "PENDING", "MOVED", "OK"];

/// SQL ordering hosts worst first (by [`STATUSES`]), then by name.
const WORST_FIRST: &str = "CASE status WHEN 'UNREACHABLE' THEN 0 WHEN 'PROBLEM' THEN 1
     WHEN 'PENDING' THEN 2 WHEN 'MOVED' THEN 3 ELSE 4 END, name";

/// Rows per page unless asked.
const PER_PAGE: u64 = 50;
/// Latest values shown per service on a host's page.
const VALUES_SHOWN: usize = 64;
/// Recent events shown on a host's page.
const EVENTS_SHOWN: usize = 50;

/// Which hosts the table shows.
#[derive(Debug)]
pub struct Filter {
    pub status: Option<String>,
    /// The hosts of the asked-for group, as a JSON array for SQLite's
    /// `json_each` (one parameter however many hosts).
    pub group_members: Option<String>,
    /// Part of the name, any case.
    pub name: Option<String>,
    pub page: u64,
    pub per_page: u64,
    /// Each host's groups, from the configuration.
    pub groups: BTreeMap<String, Vec<String>>,
}

impl Filter {
    pub fn from_params(params: &mut Params, model: &Model) -> Result<Filter, ApiError> {
        let status = params.take("status").map(|s| s.to_uppercase());
        if let Some(s) = &status
            && !STATUSES.contains(&s.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "status={s:?}: give one of {}",
                STATUSES.join(", ")
            )));
        }
        let group_members = match params.take("group") {
            None => None,
            Some(group) => {
                let members: Vec<&String> = model
                    .hosts
                    .iter()
                    .filter(|(_, h)| h.groups.contains(&group))
                    .map(|(name, _)| name)
                    .collect();
                if members.is_empty() {
                    return Err(ApiError::not_found(format!(
                        "no host is in group {group:?}: see the hosts' groups in receiver.toml"
                    )));
                }
                Some(serde_json::to_string(&members).expect("names serialize"))
            }
        };
        Ok(Filter {
            status,
            group_members,
            name: params.take("name"),
            page: params.number("page", 1..=1_000_000, 1)?,
            per_page: params.number("per_page", 1..=1000, PER_PAGE)?,
            groups: model
                .hosts
                .iter()
                .filter(|(_, h)| !h.groups.is_empty())
                .map(|(name, h)| (name.clone(), h.groups.clone()))
                .collect(),
        })
    }
}

/// One page of the hosts table.
#[derive(Debug, Serialize)]
pub struct HostList {
    /// Hosts matching the filter, on all pages.
    pub total: u64,
    pub page: u64,
    pub per_page: u64,
    pub pages: u64,
    /// Hosts per status matching the group and name filters (the status
    /// tabs' counts).
    pub counts: BTreeMap<String, u64>,
    pub hosts: Vec<HostRow>,
}

#[derive(Debug, Serialize)]
pub struct HostRow {
    pub name: String,
    pub status: String,
    pub since_ms: u64,
    pub reason: String,
    pub connected: bool,
    pub groups: Vec<String>,
    /// Someone acknowledged its problem.
    pub acknowledged: bool,
}

/// The page of hosts `filter` asks for.
pub fn list(conn: &Connection, filter: &Filter) -> Result<HostList, ApiError> {
    // ?1 status, ?2 group members (JSON), ?3 name part.
    let matching = "(?2 IS NULL OR name IN (SELECT value FROM json_each(?2)))
         AND (?3 IS NULL OR instr(lower(name), lower(?3)) > 0)";
    let mut counts = BTreeMap::new();
    let mut by_status = conn.prepare_cached(&format!(
        "SELECT status, COUNT(*) FROM hosts WHERE {matching} AND ?1 IS NULL GROUP BY status"
    ))?;
    let rows = by_status.query_map(
        params![None::<String>, filter.group_members, filter.name],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)),
    )?;
    for row in rows {
        let (status, n) = row?;
        counts.insert(status, n);
    }
    let total = match &filter.status {
        Some(s) => counts.get(s).copied().unwrap_or(0),
        None => counts.values().sum(),
    };
    let mut page = conn.prepare_cached(&format!(
        "SELECT name, status, since_ms, reason, connected,
                EXISTS (SELECT 1 FROM acks WHERE acks.host = hosts.name AND cleared_ms IS NULL)
         FROM hosts WHERE {matching} AND (?1 IS NULL OR status = ?1)
         ORDER BY {WORST_FIRST} LIMIT ?4 OFFSET ?5"
    ))?;
    let hosts = page
        .query_map(
            params![
                filter.status,
                filter.group_members,
                filter.name,
                filter.per_page,
                (filter.page - 1) * filter.per_page
            ],
            |r| {
                let name: String = r.get(0)?;
                Ok(HostRow {
                    groups: filter.groups.get(&name).cloned().unwrap_or_default(),
                    name,
                    status: r.get(1)?,
                    since_ms: r.get(2)?,
                    reason: r.get(3)?,
                    connected: r.get(4)?,
                    acknowledged: r.get(5)?,
                })
            },
        )?
        .collect::<Result<_, _>>()?;
    Ok(HostList {
        total,
        page: filter.page,
        per_page: filter.per_page,
        pages: total.div_ceil(filter.per_page).max(1),
        counts,
        hosts,
    })
}

/// 404 naming `host` unless the store knows it.
pub fn check_host(conn: &Connection, host: &str) -> Result<(), ApiError> {
    let known: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM hosts WHERE name = ?1)")?
        .query_row([host], |r| r.get(0))?;
    if known {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no host {host:?}: it is not configured or has not been recorded yet (see GET /api/hosts)"
        )))
    }
}

/// 404 naming `service` unless `host` has it.
pub fn check_service(conn: &Connection, host: &str, service: &str) -> Result<(), ApiError> {
    let known: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM services WHERE host = ?1 AND name = ?2)")?
        .query_row(params![host, service], |r| r.get(0))?;
    if known {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "host {host} has no service {service:?} (see GET /api/hosts/{host})"
        )))
    }
}

/// A host's page: its status and services, what fires, what happened,
/// and who silenced it.
#[derive(Debug, Serialize)]
pub struct HostPage {
    #[serde(flatten)]
    pub host: HostView,
    pub groups: Vec<String>,
    pub triggers: Vec<FiringView>,
    pub events: Vec<EventView>,
    pub acks: Vec<AckView>,
    /// Maintenance windows not yet over covering the host or its groups.
    pub maintenance: Vec<WindowView>,
    /// The receiver's clock, for ages.
    pub now_ms: u64,
}

/// A trigger firing now.
#[derive(Debug, Serialize)]
pub struct FiringView {
    pub service: String,
    pub trigger: String,
    pub severity: &'static str,
    pub message: String,
    pub since_ms: u64,
}

/// An acknowledgement in force.
#[derive(Debug, Serialize)]
pub struct AckView {
    pub id: i64,
    pub service: Option<String>,
    pub comment: String,
    pub time_ms: u64,
}

pub fn page(
    conn: &Connection,
    live: &dyn Live,
    name: &str,
    now_ms: u64,
) -> Result<HostPage, ApiError> {
    check_host(conn, name)?;
    let host = view::host(conn, name, VALUES_SHOWN)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no host {name:?}")))?;
    let groups = live
        .model()
        .hosts
        .get(name)
        .map(|h| h.groups.clone())
        .unwrap_or_default();
    let triggers = live
        .firing(name)
        .into_iter()
        .map(|f| FiringView {
            service: f.service,
            trigger: f.trigger,
            severity: f.severity.as_str(),
            message: f.message,
            since_ms: f.since_ms,
        })
        .collect();
    let mut events = events::events(
        conn,
        &events::Filter {
            host: Some(name),
            service: None,
            since_ms: 0,
            limit: EVENTS_SHOWN,
        },
    )
    .map_err(ApiError::internal)?;
    events.reverse();
    let acks = conn
        .prepare_cached(
            "SELECT id, service, comment, time_ms FROM acks
             WHERE host = ?1 AND cleared_ms IS NULL ORDER BY id",
        )?
        .query_map([name], |r| {
            Ok(AckView {
                id: r.get(0)?,
                service: r.get(1)?,
                comment: r.get(2)?,
                time_ms: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let maintenance = admin::windows(conn, now_ms)
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|w| {
            w.host.as_deref() == Some(name) || w.group.as_ref().is_some_and(|g| groups.contains(g))
        })
        .collect();
    Ok(HostPage {
        host,
        groups,
        triggers,
        events,
        acks,
        maintenance,
        now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(status: Option<&str>, name: Option<&str>, page: u64, per_page: u64) -> Filter {
        Filter {
            status: status.map(Into::into),
            group_members: None,
            name: name.map(Into::into),
            page,
            per_page,
            groups: BTreeMap::new(),
        }
    }

    #[test]
    fn the_table_is_worst_first_filtered_and_paged_in_sql() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open(&dir.path().join("r.db")).unwrap();
        conn.execute_batch(
            "INSERT INTO hosts (name, status, since_ms, reason) VALUES
             ('a', 'OK', 0, ''), ('b', 'PROBLEM', 0, 'cpu CRIT'), ('c', 'UNREACHABLE', 0, ''),
             ('d', 'OK', 0, ''), ('web-e', 'PROBLEM', 0, ''), ('f', 'PENDING', 0, '');
             INSERT INTO acks (host, comment, time_ms) VALUES ('b', '', 1);",
        )
        .unwrap();
        let names = |list: &HostList| -> Vec<String> {
            list.hosts.iter().map(|h| h.name.clone()).collect()
        };
        let all = list(&conn, &filter(None, None, 1, 50)).unwrap();
        assert_eq!(names(&all), ["c", "b", "web-e", "f", "a", "d"]);
        assert!(all.hosts[1].acknowledged && !all.hosts[2].acknowledged);
        assert_eq!((all.total, all.counts["PROBLEM"]), (6, 2));
        let second = list(&conn, &filter(None, None, 2, 4)).unwrap();
        assert_eq!(
            (names(&second), second.pages),
            (vec!["a".into(), "d".into()], 2)
        );
        let problems = list(&conn, &filter(Some("PROBLEM"), Some("WEB"), 1, 50)).unwrap();
        assert_eq!(names(&problems), ["web-e"]);
        assert_eq!(problems.total, 1);
        let none = list(&conn, &filter(Some("MOVED"), None, 1, 50)).unwrap();
        assert_eq!((none.total, none.pages, none.hosts.len()), (0, 1, 0));
    }
}
