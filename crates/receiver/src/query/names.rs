//! An unknown host, service or metric is an error that names it and says
//! what there is: a typo must not look like "no data" (empty output, exit 0)
//! to a person or a script. Names are quoted with `{:?}` (which escapes
//! control characters) or [`Escaped`]: a peer chose some of them.

use crate::store;
use anyhow::bail;
use rusqlite::Connection;
use sandglass_core::text::Escaped;
use std::collections::{BTreeMap, BTreeSet};

/// Hosts and their services as `receiver.toml` configures them: known
/// before the running receiver has recorded them in the store (or when it
/// never ran), so a configured name is never "unknown".
pub type Configured = BTreeMap<String, Vec<String>>;

/// Lists up to this long are printed whole; longer ones by their closest
/// names and their size.
const LIST_WHOLE: usize = 12;

/// Fail unless `host` is configured or the store knows it.
pub fn check_host(conn: &Connection, configured: &Configured, host: &str) -> anyhow::Result<()> {
    // One indexed look-up; the list of every host (10,000 of them in a
    // fleet) only to say what there is instead.
    let stored: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM hosts WHERE name = ?1)
                 OR EXISTS (SELECT 1 FROM services WHERE host = ?1)",
        )?
        .query_row([host], |r| r.get(0))?;
    if stored || configured.contains_key(host) {
        return Ok(());
    }
    let hosts = union(store::host_names(conn)?, configured.keys());
    bail!(
        "no host {:?} is configured or has reported; {}",
        host,
        what_there_is("host", host, &hosts)
    )
}

/// Fail unless `service` exists on `host` (or on any host), in the
/// configuration or in the store.
pub fn check_service(
    conn: &Connection,
    configured: &Configured,
    host: Option<&str>,
    service: &str,
) -> anyhow::Result<()> {
    let of_host = configured
        .iter()
        .filter(|(h, _)| host.is_none_or(|wanted| *h == wanted))
        .flat_map(|(_, services)| services);
    let services = union(store::service_names(conn, host)?, of_host);
    if services.iter().any(|s| s == service) {
        return Ok(());
    }
    bail!(
        "no service {:?} {}; {}",
        service,
        on(host),
        what_there_is("service", service, &services)
    )
}

/// Fail unless `metric` is a name the scope's samples carry: in the range
/// (`seen`) or in the newest report of a service in scope. A metric that
/// stopped being reported long ago counts as unknown; the message says
/// where it looked. A scope with no reports at all cannot tell, and passes.
pub fn check_metric(
    conn: &Connection,
    host: Option<&str>,
    service: Option<&str>,
    metric: &str,
    seen: &BTreeSet<&str>,
) -> anyhow::Result<()> {
    if seen.contains(metric) {
        return Ok(());
    }
    let mut known: BTreeSet<String> = seen.iter().map(|s| s.to_string()).collect();
    for (h, s) in store::services_of(conn, host, service)? {
        if let Some(latest) = store::latest(conn, &h, &s)? {
            known.extend(latest.samples.into_iter().map(|s| s.name));
        }
    }
    // Nothing in scope has reported yet: metric names come from plugins,
    // not from the configuration, so there is nothing to judge a name by.
    if known.is_empty() || known.contains(metric) {
        return Ok(());
    }
    let scope = match service {
        Some(s) => format!("of service {:?} {}", s, on(host)),
        None => on(host),
    };
    let known: Vec<String> = known.into_iter().collect();
    bail!(
        "no metric {:?} {scope} (looked in the range and in each service's newest report); {}",
        metric,
        what_there_is("metric", metric, &known)
    )
}

/// `names` and `more`, sorted, each once.
fn union<'a>(names: Vec<String>, more: impl Iterator<Item = &'a String>) -> Vec<String> {
    let all: BTreeSet<String> = names.into_iter().chain(more.cloned()).collect();
    all.into_iter().collect()
}

fn on(host: Option<&str>) -> String {
    match host {
        Some(h) => format!("on host {:?}", h),
        None => "on any host".into(),
    }
}

/// "did you mean b? hosts: a, b, c", or the closest names of a long list.
fn what_there_is(kind: &str, name: &str, known: &[String]) -> String {
    if known.is_empty() {
        return format!("there are no {kind}s yet");
    }
    let mut close: Vec<(usize, &String)> = known
        .iter()
        .map(|k| (distance(name, k), k))
        .filter(|(d, _)| *d <= (name.chars().count() / 3).max(2))
        .collect();
    close.sort();
    let close: Vec<String> = close
        .iter()
        .take(3)
        .map(|(_, k)| Escaped(k).to_string())
        .collect();
    let mut text = String::new();
    if !close.is_empty() {
        text = format!("did you mean {}? ", close.join(" or "));
    }
    if known.len() <= LIST_WHOLE {
        let all: Vec<String> = known.iter().map(|k| Escaped(k).to_string()).collect();
        text += &format!("{kind}s: {}", all.join(", "));
    } else {
        let some: Vec<String> = known[..5].iter().map(|k| Escaped(k).to_string()).collect();
        text += &format!("{} {kind}s, among them {}", known.len(), some.join(", "));
    }
    text
}

/// Levenshtein distance, in characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn edit_distance() {
        assert_eq!(distance("web1", "web1"), 0);
        assert_eq!(distance("web1", "web2"), 1);
        assert_eq!(distance("cpu", "cpu_total"), 6);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn a_short_list_is_given_whole_with_the_closest_first() {
        let text = what_there_is("host", "web3", &names(&["db1", "web1", "web2"]));
        assert_eq!(text, "did you mean web1 or web2? hosts: db1, web1, web2");
        let text = what_there_is("host", "zzzzzzz", &names(&["db1"]));
        assert_eq!(text, "hosts: db1");
        assert_eq!(
            what_there_is("metric", "x", &[]),
            "there are no metrics yet"
        );
    }

    #[test]
    fn a_long_list_is_given_by_its_closest_names_and_size() {
        let many: Vec<String> = (0..40).map(|i| format!("host{i:02}")).collect();
        let text = what_there_is("host", "host7", &many);
        assert!(text.starts_with("did you mean host07 or "), "{text}");
        assert!(text.ends_with("40 hosts, among them host00, host01, host02, host03, host04"));
    }

    #[test]
    fn names_from_peers_are_escaped() {
        let text = what_there_is("service", "x", &names(&["evil\n\u{1b}[2J"]));
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text:?}");
    }
}
