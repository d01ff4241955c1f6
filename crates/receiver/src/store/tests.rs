//! The store's tests.

use super::ops::{Clock, corrected};
use super::*;
use sandglass_core::report::{Cost, Report, Status};
use sandglass_protocol::Gap;
use sandglass_protocol::{Entry, ReportBatch};
use std::path::Path;

fn batch(seq: u64, runs: std::ops::RangeInclusive<u64>) -> ReportBatch {
    ReportBatch {
        seq,
        entries: runs
            .map(|n| {
                Entry::Report(Report {
                    service: "svc".into(),
                    plugin: "p".into(),
                    time_ms: 1_000 + n,
                    status: Status::unknown(format!("run {n}")),
                    samples: Vec::new(),
                    cost: Cost::default(),
                })
            })
            .collect(),
        settled: 0,
    }
}

/// Store `batch` for host h in `stream`; the answer (acked number).
fn send(store: &Store, stream: u64, batch: ReportBatch) -> u64 {
    try_send(store, stream, batch).unwrap()
}

/// Store `batch`; the store's answer.
fn try_send(store: &Store, stream: u64, batch: ReportBatch) -> Result<u64, Refusal> {
    let (done, answer) = oneshot::channel();
    store
        .tx
        .blocking_send(Op::Batch {
            host: "h".into(),
            stream,
            batch: SeriesCache::default().prepare(batch),
            offset_ms: 0,
            received_ms: u64::MAX >> 2,
            done,
        })
        .ok()
        .unwrap();
    answer.blocking_recv().unwrap()
}

/// `batch` with a report text padded to `pad` bytes.
fn padded(seq: u64, runs: std::ops::RangeInclusive<u64>, pad: usize) -> ReportBatch {
    let mut b = batch(seq, runs);
    for e in &mut b.entries {
        if let Entry::Report(r) = e {
            r.cost.fuel = pad as u64;
            r.samples.push(sandglass_core::report::Sample {
                name: "pad".into(),
                value: 0.0,
                kind: sandglass_core::report::MetricKind::Gauge,
                unit: "x".repeat(pad),
                labels: Vec::new(),
            });
        }
    }
    b
}

/// A new database path (in a directory removed on drop) and a tracker.
fn fresh() -> (tempfile::TempDir, std::path::PathBuf, Arc<Mutex<Tracker>>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    (dir, path, Arc::new(Mutex::new(Tracker::default())))
}

/// A store on `path` where host h is scheduled to run service svc.
fn start(path: &Path, tracker: &Arc<Mutex<Tracker>>) -> (Store, std::thread::JoinHandle<()>) {
    start_on(open(path).unwrap(), tracker)
}

fn start_on(
    conn: Connection,
    tracker: &Arc<Mutex<Tracker>>,
) -> (Store, std::thread::JoinHandle<()>) {
    let (store, writer) = Store::start(conn, tracker.clone());
    schedule(&store, None);
    (store, writer)
}

fn texts(path: &Path) -> Vec<String> {
    let conn = open_existing(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT text FROM reports ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn an_entry_sent_twice_is_acknowledged_twice_and_stored_once_across_restarts() {
    let (_dir, path, tracker) = fresh();
    let stream = u64::MAX - 7; // beyond i64: stored bit for bit
    let (store, writer) = start(&path, &tracker);
    assert_eq!(send(&store, stream, batch(1, 1..=3)), 3);
    assert_eq!(send(&store, stream, batch(1, 1..=3)), 3, "acked again");
    assert_eq!(send(&store, stream, batch(2, 2..=5)), 5, "overlap");
    drop(store);
    writer.join().unwrap();
    // A restarted receiver remembers what it stored.
    let (store, writer) = start(&path, &tracker);
    assert_eq!(send(&store, stream, batch(4, 4..=6)), 6);
    // Another stream of the same host (its spool was wiped) counts anew.
    assert_eq!(send(&store, 9, batch(1, 101..=101)), 1);
    let gap = ReportBatch {
        seq: 2,
        entries: vec![Entry::Gap(Gap {
            reports: 42,
            first_ms: 5,
            last_ms: 6,
            reason: "spool full".into(),
        })],
        settled: 0,
    };
    assert_eq!(send(&store, 9, gap.clone()), 2);
    assert_eq!(send(&store, 9, gap), 2, "a gap is recorded once too");
    drop(store);
    writer.join().unwrap();
    let runs: Vec<String> = (1..=6).chain([101]).map(|n| format!("run {n}")).collect();
    let mut stored = texts(&path);
    stored.sort_by_key(|t| t[4..].parse::<u64>().unwrap());
    assert_eq!(stored, runs);
    let conn = open_existing(&path).unwrap();
    let lost: u64 = conn
        .query_row("SELECT SUM(reports) FROM gaps WHERE host = 'h'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(lost, 42);
}

/// Rows in `table`.
fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn stored_runs(path: &Path) -> Vec<u64> {
    let mut runs: Vec<u64> = texts(path)
        .iter()
        .map(|t| t[4..].parse().unwrap())
        .collect();
    runs.sort();
    runs
}

/// The disk-full case: a batch whose commit failed sits below a later
/// batch that committed; its resend must be stored, not taken for a
/// duplicate (a "highest stored" mark acknowledged it without storing).
#[test]
fn a_batch_that_failed_for_lack_of_space_is_stored_when_sent_again() {
    let (_dir, path, tracker) = fresh();
    let (store, writer) = start(&path, &tracker);
    send(&store, 1, batch(1, 1..=1));
    drop(store);
    writer.join().unwrap();
    // The database may not grow: a real SQLITE_FULL from SQLite itself.
    let conn = open(&path).unwrap();
    let pages: u64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    conn.pragma_update(None, "max_page_count", pages + 2)
        .unwrap();
    let (store, writer) = start_on(conn, &tracker);
    let big = padded(2, 2..=4, 64 << 10);
    match try_send(&store, 1, big.clone()) {
        Err(Refusal::Transient(text)) => assert!(text.contains("full"), "{text}"),
        other => panic!("a full database is a transient failure, got {other:?}"),
    }
    // A small later batch still fits and commits.
    assert_eq!(send(&store, 1, batch(5, 5..=5)), 5);
    drop(store);
    writer.join().unwrap();
    // Space is back; the agent sends the failed batch again.
    let (store, writer) = start(&path, &tracker);
    assert_eq!(send(&store, 1, big), 4);
    drop(store);
    writer.join().unwrap();
    assert_eq!(stored_runs(&path), vec![1, 2, 3, 4, 5]);
}

/// Numbers that jump ahead leave a hole that earlier numbers fill later.
#[test]
fn numbers_below_a_jump_ahead_are_stored_when_they_come() {
    let (_dir, path, tracker) = fresh();
    let (store, writer) = start(&path, &tracker);
    assert_eq!(send(&store, 3, batch(10, 10..=11)), 11);
    assert_eq!(send(&store, 3, batch(1, 1..=3)), 3);
    assert_eq!(send(&store, 3, batch(2, 2..=3)), 3, "a duplicate");
    // The agent settles everything below 10: the hole 4..=9 is closed,
    // so an entry from it would be taken as a duplicate from now on.
    let mut settled = batch(12, 12..=12);
    settled.settled = 11;
    assert_eq!(send(&store, 3, settled), 12);
    assert_eq!(send(&store, 3, batch(5, 5..=5)), 5);
    drop(store);
    writer.join().unwrap();
    assert_eq!(stored_runs(&path), vec![1, 2, 3, 10, 11, 12]);
    let conn = open_existing(&path).unwrap();
    assert_eq!(count(&conn, "stored_ranges"), 1, "one range once settled");
}

#[test]
fn report_times_past_2_63_are_capped_not_wrapped() {
    let clock = Clock {
        offset_ms: 0,
        received_ms: 5_000,
    };
    assert_eq!(corrected(u64::MAX, clock), 5_000);
    assert_eq!(corrected(1 << 63, clock), 5_000);
    assert_eq!(corrected(4_000, clock), 4_000);
    let behind = Clock {
        offset_ms: -10_000,
        received_ms: 5_000,
    };
    assert_eq!(corrected(4_000, behind), 0);
}

#[test]
fn reports_of_services_never_scheduled_are_counted_not_stored() {
    let (_dir, path, tracker) = fresh();
    let (store, writer) = start(&path, &tracker);
    let mut b = batch(1, 1..=3);
    if let Entry::Report(r) = &mut b.entries[1] {
        r.service = "ghost".into();
    }
    assert_eq!(send(&store, 1, b), 3);
    drop(store);
    writer.join().unwrap();
    assert_eq!(stored_runs(&path), vec![1, 3]);
    let conn = open_existing(&path).unwrap();
    let (lost, reason): (u64, String) = conn
        .query_row("SELECT reports, reason FROM gaps", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(lost, 1);
    assert!(reason.contains("service ghost"), "{reason}");
    assert_eq!(count(&conn, "services"), 1, "no row for the ghost");
}

#[test]
fn an_unknown_host_status_in_the_database_is_an_error_that_names_it() {
    let (_dir, path, tracker) = fresh();
    let (store, writer) = start(&path, &tracker);
    drop(store);
    writer.join().unwrap();
    let conn = open(&path).unwrap();
    conn.execute(
        "INSERT INTO hosts (name, status, since_ms, reason) VALUES ('h', 'SIDEWAYS', 0, '')",
        [],
    )
    .unwrap();
    let e = remembered(&conn)
        .err()
        .expect("an unknown status is an error");
    let text = format!("{e:#}");
    assert!(text.contains(r#"unknown host status "SIDEWAYS""#), "{text}");
}

/// Send a prune step; how many rows it deleted.
fn prune(store: &Store, before_ms: u64, max_rows: usize) -> usize {
    let (done, mut heard) = mpsc::channel(1);
    store
        .tx
        .blocking_send(Op::Prune {
            before_ms,
            retention_ms: 3_600_000,
            max_rows,
            done,
        })
        .ok()
        .unwrap();
    heard.blocking_recv().unwrap()
}

#[test]
fn retention_deletes_only_older_rows_a_bounded_step_at_a_time() {
    let (_dir, path, tracker) = fresh();
    let (store, writer) = start(&path, &tracker);
    // Reports taken at 1_001..=1_010 and 2_001..=2_010 (see `batch`).
    send(&store, 1, batch(1, 1..=10));
    send(&store, 1, batch(11, 1_001..=1_010));
    let change = Change {
        host: "h".into(),
        subject: crate::liveness::Subject::Host {
            old: HostStatus::Pending,
            new: HostStatus::Ok,
        },
        reason: "r".into(),
        time_ms: 1_500,
    };
    store
        .tx
        .blocking_send(Op::Changes {
            changes: vec![change],
        })
        .ok()
        .unwrap();
    // Older than 1_800: 10 reports and the event, 4 per step.
    assert_eq!(prune(&store, 1_800, 4), 4);
    assert_eq!(prune(&store, 1_800, 4), 4);
    assert_eq!(prune(&store, 1_800, 4), 3);
    assert_eq!(prune(&store, 1_800, 4), 0);
    drop(store);
    writer.join().unwrap();
    let conn = open(&path).unwrap();
    let times: Vec<u64> = conn
        .prepare("SELECT time_ms FROM reports ORDER BY time_ms")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(times, (2_001..=2_010).collect::<Vec<u64>>());
    assert_eq!(count(&conn, "events"), 0);
    let retention: u64 = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'retention_ms'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(retention, 3_600_000);
    let (size, free) = retention::size(&conn).unwrap();
    assert!(size > 0 && free <= size);
}

fn sample(name: &str, value: f64, labels: &[(&str, &str)]) -> sandglass_core::report::Sample {
    sandglass_core::report::Sample {
        name: name.into(),
        value,
        kind: sandglass_core::report::MetricKind::Counter,
        unit: "jiffies".into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

/// Runs 1..=3 of svc, each with two labelled series, a NaN, and (run 2)
/// one series named twice.
fn batch_with_samples() -> ReportBatch {
    let mut b = batch(1, 1..=3);
    for (i, e) in b.entries.iter_mut().enumerate() {
        if let Entry::Report(r) = e {
            let n = i as f64;
            r.samples = vec![
                sample("jiffies", 10.0 + n, &[("cpu", "cpu0")]),
                sample("jiffies", 20.5 + n, &[("cpu", "cpu1")]),
                sample("odd", f64::NAN, &[]),
            ];
            if i == 1 {
                r.samples.push(sample("jiffies", 99.0, &[("cpu", "cpu0")]));
            }
        }
    }
    b
}

#[test]
fn reports_come_back_exactly_as_sent_and_one_series_reads_alone() {
    let (_dir, path, tracker) = fresh();
    let (store, writer) = start(&path, &tracker);
    let sent = batch_with_samples();
    send(&store, 1, sent.clone());
    drop(store);
    writer.join().unwrap();
    let conn = open_existing(&path).unwrap();
    let stored = reports(&conn, Some("h"), None, 0, END).unwrap();
    assert_eq!(stored.len(), 3);
    for (got, entry) in stored.iter().zip(&sent.entries) {
        let Entry::Report(want) = entry else {
            panic!("the batch holds reports only")
        };
        assert_eq!(got.samples.len(), want.samples.len());
        for (g, w) in got.samples.iter().zip(&want.samples) {
            assert_eq!(
                (&g.name, &g.labels, g.kind, &g.unit),
                (&w.name, &w.labels, w.kind, &w.unit)
            );
            assert!(g.value == w.value || (g.value.is_nan() && w.value.is_nan()));
        }
    }
    // Runs 1 and 3 share a layout; run 2 (one more series) has its own.
    assert_eq!(count(&conn, "layouts"), 2);
    let cpu1 = [("cpu".to_string(), "cpu1".to_string())];
    let found =
        samples::metric(&conn, (Some("h"), None), "jiffies", &cpu1, (1_002, 1_004)).unwrap();
    let points: Vec<(u64, f64)> = found.iter().map(|f| (f.time_ms, f.sample.value)).collect();
    assert_eq!(points, vec![(1_002, 21.5), (1_003, 22.5)]);
    assert!(
        found
            .iter()
            .all(|f| f.sample.labels == cpu1 && f.service == "svc")
    );
    // Run 2 named cpu0 twice: both values are there, in report order.
    let cpu0 = [("cpu".to_string(), "cpu0".to_string())];
    let found =
        samples::metric(&conn, (None, Some("svc")), "jiffies", &cpu0, (1_002, 1_003)).unwrap();
    let values: Vec<f64> = found.iter().map(|f| f.sample.value).collect();
    assert_eq!(values, vec![11.0, 99.0]);
    assert_eq!(
        latest(&conn, "h", "svc").unwrap().unwrap().samples[0].value,
        12.0
    );
}

/// A database holding [`batch_with_samples`], and a connection to it.
fn stored_with_samples() -> (tempfile::TempDir, Connection) {
    let (dir, path, tracker) = fresh();
    let (store, writer) = start(&path, &tracker);
    send(&store, 1, batch_with_samples());
    drop(store);
    writer.join().unwrap();
    (dir, open(&path).unwrap())
}

#[test]
fn reports_stored_before_layouts_are_still_read() {
    let (_dir, conn) = stored_with_samples();
    let old = vec![
        sample("jiffies", 7.0, &[("cpu", "cpu0")]),
        sample("jiffies", 8.0, &[("cpu", "cpu1")]),
    ];
    conn.execute(
        "INSERT INTO reports (service_id, time_ms, received_ms, seq, level, text, samples)
         SELECT id, 500, 500, 0, 'OK', 'old', ?1 FROM services",
        [rmp_serde::to_vec(&old).unwrap()],
    )
    .unwrap();
    let all = reports(&conn, None, Some("svc"), 0, END).unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].samples, old);
    let cpu1 = [("cpu".to_string(), "cpu1".to_string())];
    let found = samples::metric(&conn, (None, None), "jiffies", &cpu1, (0, 1_003)).unwrap();
    let points: Vec<(u64, f64)> = found.iter().map(|f| (f.time_ms, f.sample.value)).collect();
    assert_eq!(points, vec![(500, 8.0), (1_001, 20.5), (1_002, 21.5)]);
}

#[test]
fn a_report_whose_values_do_not_fit_its_layout_is_an_error_that_says_so() {
    let (_dir, conn) = stored_with_samples();
    conn.execute(
        "UPDATE reports SET samples = X'0102' WHERE time_ms = 1001",
        [],
    )
    .unwrap();
    let e = reports(&conn, None, None, 0, END).err().unwrap();
    assert!(format!("{e:#}").contains("damaged"), "{e:#}");
    let e = samples::metric(&conn, (None, None), "jiffies", &[], (0, END))
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("h/svc at 1001"), "{e:#}");
}

/// The end of every range (SQLite integers are signed).
const END: u64 = i64::MAX as u64;
/// Schedule service svc (plugin p) on host h, pinned at `sha256` if given.
fn schedule(store: &Store, sha256: Option<&str>) {
    store
        .tx
        .blocking_send(Op::Scheduled {
            services: vec![ScheduledService {
                host: "h".into(),
                service: "svc".into(),
                plugin: "p".into(),
                sha256: sha256.map(str::to_owned),
                interval_ms: 1_000,
            }],
            hosts: vec![],
            time_ms: 0,
        })
        .ok()
        .unwrap();
}

#[test]
fn runs_are_counted_for_the_build_pinned_when_they_arrive() {
    let (_dir, path, tracker) = fresh();
    let (store, writer) = start(&path, &tracker);
    let (old, new) = ("a".repeat(64), "b".repeat(64));
    let version = |sha256: &str, size| PluginVersion {
        plugin: "p".into(),
        sha256: sha256.into(),
        size,
    };
    store
        .tx
        .blocking_send(Op::PluginVersions {
            versions: vec![version(&old, 100)],
            time_ms: 5,
        })
        .ok()
        .unwrap();
    // Reports before any pin are not counted for a build.
    send(&store, 1, batch(1, 1..=1));
    schedule(&store, Some(&old));
    send(&store, 1, batch(2, 2..=4));
    store
        .tx
        .blocking_send(Op::PluginVersions {
            // The old build again keeps its first sighting.
            versions: vec![version(&old, 100), version(&new, 120)],
            time_ms: 9,
        })
        .ok()
        .unwrap();
    schedule(&store, Some(&new));
    let mut good = batch(5, 5..=6);
    for e in &mut good.entries {
        if let Entry::Report(r) = e {
            r.status.level = Level::Ok;
        }
    }
    send(&store, 1, good);
    drop(store);
    writer.join().unwrap();

    let conn = open_existing(&path).unwrap();
    let listed = crate::plugins::listing::plugins(&conn, 0).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "p");
    let v = &listed[0].versions;
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(
        (v[0].sha256.as_str(), v[0].size, v[0].first_seen_ms),
        (old.as_str(), Some(100), Some(5))
    );
    assert_eq!((v[0].runs, v[0].unknown), (3, 3));
    assert!(v[0].running.is_empty() && v[0].pinned.is_empty(), "{v:?}");
    assert_eq!(
        (v[1].sha256.as_str(), v[1].size, v[1].first_seen_ms),
        (new.as_str(), Some(120), Some(9))
    );
    assert_eq!((v[1].runs, v[1].unknown), (2, 0));
    let h = std::collections::BTreeSet::from(["h".to_owned()]);
    assert_eq!((&v[1].running, &v[1].pinned), (&h, &h));
    // Runs before the window are not counted.
    let later = crate::plugins::listing::plugins(&conn, 60_000).unwrap();
    assert_eq!(later[0].versions[1].runs, 0);
}

#[test]
fn a_new_connection_with_the_same_series_finds_their_stored_layout() {
    let (_dir, path, tracker) = fresh();
    let (store, writer) = start(&path, &tracker);
    // Each `send` prepares with a cache of its own, as a new connection
    // does: the series are equal but not shared with the writer's.
    let sent = batch_with_samples();
    send(&store, 1, sent.clone());
    let mut again = sent.clone();
    again.seq = 4;
    send(&store, 1, again);
    drop(store);
    writer.join().unwrap();
    let conn = open_existing(&path).unwrap();
    assert_eq!(count(&conn, "layouts"), 2);
    let stored = reports(&conn, Some("h"), None, 0, END).unwrap();
    assert_eq!(stored.len(), 6);
    // Oldest first: each run of the first batch, then its copy.
    for pair in stored.chunks(2) {
        let (first, second) = (&pair[0], &pair[1]);
        assert_eq!(first.time_ms, second.time_ms);
        assert_eq!(first.samples.len(), second.samples.len());
        for (a, b) in first.samples.iter().zip(&second.samples) {
            assert_eq!((&a.name, &a.labels), (&b.name, &b.labels));
        }
    }
}

#[test]
fn the_store_keeps_savepoint_journals_in_memory_and_commits_durably() {
    let (_dir, path, _tracker) = fresh();
    let conn = open(&path).unwrap();
    let temp_store: i64 = conn
        .query_row("PRAGMA temp_store", [], |r| r.get(0))
        .unwrap();
    let synchronous: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    // 2 = MEMORY; 2 = FULL.
    assert_eq!((temp_store, synchronous), (2, 2));
}
