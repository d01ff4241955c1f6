//! Acknowledgements and maintenance windows: written by `receiver ack` and
//! `receiver maintenance` into the database, read back by the running
//! receiver every second (so no signal or socket is needed to reach it).

use super::message::Item;
use rusqlite::{Connection, params};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    pub id: i64,
    pub host: String,
    /// None: the whole host.
    pub service: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub id: i64,
    pub host: Option<String>,
    pub group: Option<String>,
    pub from_ms: u64,
    pub until_ms: u64,
}

/// What silences notifications now.
#[derive(Clone, Debug, Default)]
pub struct Silences {
    pub acks: Vec<Ack>,
    pub windows: Vec<Window>,
}

impl Silences {
    /// The acks not yet cleared and the windows not yet over at `now_ms`.
    pub fn load(conn: &Connection, now_ms: u64) -> rusqlite::Result<Silences> {
        let acks = conn
            .prepare_cached("SELECT id, host, service FROM acks WHERE cleared_ms IS NULL")?
            .query_map([], |r| {
                Ok(Ack {
                    id: r.get(0)?,
                    host: r.get(1)?,
                    service: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let windows = conn
            .prepare_cached(
                "SELECT id, host, grp, from_ms, until_ms FROM maintenance
                 WHERE ended_ms IS NULL AND until_ms > ?1",
            )?
            .query_map([now_ms], |r| {
                Ok(Window {
                    id: r.get(0)?,
                    host: r.get(1)?,
                    group: r.get(2)?,
                    from_ms: r.get(3)?,
                    until_ms: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Silences { acks, windows })
    }

    /// Why a message about `host` with `items` must not go out at
    /// `now_ms`, if it must not. `groups` are the host groups by host.
    pub fn why(
        &self,
        host: &str,
        items: &[Item],
        groups: &BTreeMap<String, Vec<String>>,
        now_ms: u64,
    ) -> Option<String> {
        let in_group = |g: &str| groups.get(host).is_some_and(|gs| gs.iter().any(|x| x == g));
        if let Some(w) = self.windows.iter().find(|w| {
            (w.from_ms..w.until_ms).contains(&now_ms)
                && (w.host.as_deref() == Some(host) || w.group.as_deref().is_some_and(in_group))
        }) {
            return Some(format!("maintenance #{}", w.id));
        }
        let acks: Vec<&Ack> = self.acks.iter().filter(|a| a.host == host).collect();
        if let Some(a) = acks.iter().find(|a| a.service.is_none()) {
            return Some(format!("acknowledged #{}", a.id));
        }
        // A service's ack covers its items; the host's own status is
        // covered when every trigger item beside it is (the triggers are
        // why the host is a problem).
        let covered = |i: &Item| {
            acks.iter()
                .find(|a| a.service.is_some() && a.service == i.service)
        };
        let services: Vec<&Item> = items.iter().filter(|i| i.service.is_some()).collect();
        if services.is_empty() || !services.iter().all(|i| covered(i).is_some()) {
            return None;
        }
        covered(services[0]).map(|a| format!("acknowledged #{}", a.id))
    }
}

/// The problem of `host` (or of one of its services) is over: its acks end.
pub fn clear_acks(
    conn: &Connection,
    host: &str,
    service: Option<&str>,
    now_ms: u64,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE acks SET cleared_ms = ?3
         WHERE cleared_ms IS NULL AND host = ?1 AND (?2 IS NULL OR service = ?2)",
    )?
    .execute(params![host, service, now_ms])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::ItemKind;

    fn item(service: Option<&str>) -> Item {
        Item {
            kind: ItemKind::TriggerFired,
            host: "a".into(),
            service: service.map(Into::into),
            trigger: service.map(|_| "t".into()),
            old: "OK".into(),
            new: "CRIT".into(),
            severity: None,
            message: String::new(),
            time_ms: 0,
        }
    }

    #[test]
    fn windows_cover_hosts_and_groups_in_their_time_and_acks_their_services() {
        let groups = BTreeMap::from([("a".to_owned(), vec!["web".to_owned()])]);
        let s = Silences {
            acks: vec![Ack {
                id: 7,
                host: "a".into(),
                service: Some("cpu".into()),
            }],
            windows: vec![Window {
                id: 3,
                host: None,
                group: Some("web".into()),
                from_ms: 100,
                until_ms: 200,
            }],
        };
        let items = [item(Some("cpu")), item(None)];
        assert_eq!(
            s.why("a", &items, &groups, 150).as_deref(),
            Some("maintenance #3")
        );
        assert_eq!(
            s.why("a", &items, &groups, 250).as_deref(),
            Some("acknowledged #7")
        );
        assert_eq!(s.why("a", &[item(Some("disk"))], &groups, 250), None);
        assert_eq!(
            s.why("a", &[item(None)], &groups, 250),
            None,
            "the host alone"
        );
        assert_eq!(s.why("b", &items, &groups, 150), None);
    }
}
