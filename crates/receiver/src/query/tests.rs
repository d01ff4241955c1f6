//! `Query::run` against the real schema, rows written as the store writes
//! them (samples as a MessagePack blob per report).

use super::*;
use rusqlite::params;
use sandglass_core::report::MetricKind;

fn sample(name: &str, cpu: &str, value: f64) -> Sample {
    Sample {
        name: name.into(),
        value,
        kind: MetricKind::Gauge,
        unit: "%".into(),
        labels: vec![("cpu".into(), cpu.into())],
    }
}

/// Hosts a and b report service cpu at 10 s, 20 s and 70 s: busy for cpu0
/// and cpu1 (value = seconds, + 1000 on b, + 0.5 on cpu1); host c is
/// configured and never reported.
fn database() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = store::open(&dir.path().join("db")).unwrap();
    conn.execute(
        "INSERT INTO hosts (name, status, since_ms, reason) VALUES ('c', 'PENDING', 0, '')",
        [],
    )
    .unwrap();
    for (id, host, offset) in [(1, "a", 0.0), (2, "b", 1000.0)] {
        conn.execute(
            "INSERT INTO services (id, host, name) VALUES (?1, ?2, 'cpu')",
            params![id, host],
        )
        .unwrap();
        for secs in [10u64, 20, 70] {
            let v = secs as f64 + offset;
            let samples = vec![sample("busy", "cpu0", v), sample("busy", "cpu1", v + 0.5)];
            conn.execute(
                "INSERT INTO reports (service_id, time_ms, received_ms, seq, level, text, samples)
                 VALUES (?1, ?2, ?2, 0, 'OK', '', ?3)",
                params![id, secs * 1000, rmp_serde::to_vec(&samples).unwrap()],
            )
            .unwrap();
        }
    }
    (dir, conn)
}

fn query(host: Option<&str>, service: Option<&str>, metric: Option<&str>) -> Query {
    Query {
        host: host.map(Into::into),
        service: service.map(Into::into),
        metric: metric.map(Into::into),
        since_ms: 0,
        until_ms: 100_000,
        ..Query::default()
    }
}

fn summary(points: &[Point]) -> Vec<(u64, &str, &str, f64)> {
    points
        .iter()
        .map(|p| {
            let cpu = p.sample.labels[0].1.as_str();
            (p.time_ms, p.host.as_str(), cpu, p.sample.value)
        })
        .collect()
}

#[test]
fn without_a_host_a_service_is_read_across_hosts_and_labels_filter() {
    let (_dir, conn) = database();
    let mut q = query(None, Some("cpu"), None);
    q.labels = vec![("cpu".into(), "cpu1".into())];
    q.since_ms = 20_000;
    let points = q.run(&conn).unwrap();
    assert_eq!(
        summary(&points),
        [
            (20_000, "a", "cpu1", 20.5),
            (20_000, "b", "cpu1", 1020.5),
            (70_000, "a", "cpu1", 70.5),
            (70_000, "b", "cpu1", 1070.5),
        ]
    );
    q.labels.push(("cpu".into(), "cpu0".into()));
    assert!(q.run(&conn).unwrap().is_empty(), "a sample must carry all");
}

#[test]
fn until_is_excluded_and_step_aggregates_per_series() {
    let (_dir, conn) = database();
    let mut q = query(Some("a"), None, Some("busy"));
    q.until_ms = 70_000;
    q.step_ms = Some(60_000);
    q.agg = Agg::Max;
    let points = q.run(&conn).unwrap();
    assert_eq!(
        summary(&points),
        [(0, "a", "cpu0", 20.0), (0, "a", "cpu1", 20.5)]
    );
    assert_eq!(points[0].count, Some(2));
}

#[test]
fn unknown_names_are_errors_that_say_what_there_is() {
    let (_dir, conn) = database();
    let error = |q: Query| format!("{:#}", q.run(&conn).unwrap_err());
    let text = error(query(Some("d"), None, None));
    assert!(
        text.contains("no host \"d\"") && text.contains("hosts: a, b, c"),
        "{text}"
    );
    let text = error(query(Some("a"), Some("cpus"), None));
    assert!(
        text.contains("no service \"cpus\" on host \"a\"; did you mean cpu?"),
        "{text}"
    );
    let text = error(query(None, Some("cpu"), Some("bussy")));
    assert!(
        text.contains("no metric \"bussy\" of service \"cpu\" on any host"),
        "{text}"
    );
    assert!(text.contains("did you mean busy? metrics: busy"), "{text}");
    let text = error(query(Some("c"), Some("cpu"), None));
    assert!(
        text.contains("no service \"cpu\" on host \"c\"; there are no services yet"),
        "{text}"
    );
}

#[test]
fn a_known_series_without_data_in_the_range_is_empty_not_an_error() {
    let (_dir, conn) = database();
    let mut q = query(Some("b"), Some("cpu"), Some("busy"));
    q.since_ms = 80_000;
    assert!(q.run(&conn).unwrap().is_empty());
    // A host the store recorded but that never reported is known too, and
    // so is one only the configuration names (the receiver has not
    // recorded it yet, or never ran).
    assert!(query(Some("c"), None, None).run(&conn).unwrap().is_empty());
    let mut q = query(Some("d"), Some("disk"), None);
    q.configured = [("d".to_owned(), vec!["disk".to_owned()])].into();
    assert!(q.run(&conn).unwrap().is_empty());
    // Before its first report no metric name can be judged wrong.
    q.metric = Some("anything".into());
    assert!(q.run(&conn).unwrap().is_empty());
    q.service = Some("cpu".into());
    let text = format!("{:#}", q.run(&conn).unwrap_err());
    assert!(
        text.contains("no service \"cpu\" on host \"d\"; services: disk"),
        "{text}"
    );
}

#[test]
fn the_flags_make_a_range_and_refuse_nonsense() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: QueryArgs,
    }
    let parse = |line: &[&str]| Cli::try_parse_from([&["query"], line].concat()).map(|c| c.args);
    let now = 10 * 86_400_000;
    let args = parse(&["--metric", "busy", "--since", "7d", "--until", "1d"]).unwrap();
    let q = Query::from_args(&args, now).unwrap();
    assert_eq!((q.since_ms, q.until_ms), (3 * 86_400_000, 9 * 86_400_000));
    let args = parse(&[
        "--host",
        "a",
        "--since",
        "1970-01-02T00:00:00Z",
        "--step",
        "5m",
    ])
    .unwrap();
    let q = Query::from_args(&args, now).unwrap();
    assert_eq!(
        (q.since_ms, q.until_ms, q.step_ms),
        (86_400_000, now, Some(300_000))
    );
    assert_eq!(q.agg, Agg::Avg);
    let refused = |line: &[&str]| match parse(line) {
        Ok(args) => format!("{:#}", Query::from_args(&args, now).unwrap_err()),
        Err(e) => e.to_string(),
    };
    assert!(refused(&["--since", "1h"]).contains("name a --host"));
    assert!(refused(&["--host", "a", "--since", "1h", "--until", "2h"]).contains("is not before"));
    assert!(refused(&["--host", "a", "--agg", "max"]).contains("--step"));
    assert!(refused(&["--host", "a", "--label", "cpu"]).contains("key=value"));
    assert!(refused(&["--host", "a", "--utc", "--epoch"]).contains("cannot be used with"));
}
