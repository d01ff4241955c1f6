//! Remote write to a real VictoriaMetrics: what the agents sent arrives
//! with the right names, labels, timestamps and values, exactly once —
//! across a 60 s outage of VictoriaMetrics, and with two receivers when one
//! of them stops and its agents fail over to the other.

use crate::common::{plugin_dir, reserved_port};
use crate::fleet_support::{Agent, Receiver, wait_until};
use crate::http_client::get;
use crate::metrics::promtool_accepts;
use crate::victoria::{Series, Victoria};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn token(host: &str) -> String {
    format!("token-{host}-remote-write")
}

/// receiver.toml's model: `[http]`, the endpoint `vm`, one that refuses
/// every request (a path VictoriaMetrics does not serve: a 4xx), one where
/// nothing listens with room for 10 pending reports, and `hosts` running
/// uptime, loadavg and a run counter every second.
fn model(vm: &Victoria, hosts: &[&str]) -> String {
    let mut model = format!(
        r#"
[http]
listen = "127.0.0.1:0"
[[remote_write]]
name = "vm"
url = "{}"
timeout = "2s"
backoff = "100ms"
max_backoff = "1s"
max_samples_per_send = 200
[[remote_write]]
name = "refused"
url = "{}"
backoff = "100ms"
max_backoff = "1s"
[[remote_write]]
name = "bounded"
url = "http://127.0.0.1:{}/api/v1/write"
backoff = "100ms"
max_backoff = "1s"
max_pending_reports = 10
[services.uptime]
plugin = "uptime"
interval = "1s"
[services.loadavg]
plugin = "loadavg"
interval = "1s"
[services.runs]
plugin = "misbehave"
interval = "1s"
params = {{ mode = "state-counter" }}
"#,
        vm.write_url(),
        vm.write_url()
            .replace("/api/v1/write", "/api/v1/no-such-path"),
        reserved_port(),
    );
    for host in hosts {
        model += &format!(
            "[hosts.{host}]\ntoken = \"{}\"\nservices = [\"uptime\", \"loadavg\", \"runs\"]\n",
            token(host)
        );
    }
    model
}

/// Every sample a receiver stored for `host`, as the series remote write
/// should have made of it (the plugins' names are valid Prometheus names
/// already, so they are kept as they are).
fn stored(receiver: &Receiver, host: &str) -> Series {
    let mut out = Series::new();
    for service in ["uptime", "loadavg", "runs"] {
        for p in receiver.points(host, service) {
            let name = p["name"].as_str().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            let mut labels = BTreeMap::from([
                ("__name__".to_owned(), name.to_owned()),
                ("host".to_owned(), host.to_owned()),
                ("service".to_owned(), service.to_owned()),
            ]);
            for pair in p["labels"].as_array().unwrap() {
                labels.insert(
                    pair[0].as_str().unwrap().to_owned(),
                    pair[1].as_str().unwrap().to_owned(),
                );
            }
            let point = (p["time_ms"].as_u64().unwrap(), p["value"].as_f64().unwrap());
            out.entry(labels).or_default().push(point);
        }
    }
    for points in out.values_mut() {
        points.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    out
}

/// `vm` holds the plugins' samples of `host` (not the level series),
/// point for point.
fn samples_in_vm(vm: &Victoria, host: &str) -> Series {
    vm.export(&format!(
        "{{host=\"{host}\",__name__!=\"sandglass_service_level\"}}"
    ))
}

/// Same series, same timestamps, values equal up to the decimal rounding
/// VictoriaMetrics stores them with.
fn same(a: &Series, b: &Series) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((la, pa), (lb, pb))| {
            la == lb
                && pa.len() == pb.len()
                && pa.iter().zip(pb).all(|((ta, va), (tb, vb))| {
                    ta == tb && (va - vb).abs() <= 1e-9 * va.abs().max(1.0)
                })
        })
}

/// The run counter of `host` in `vm`: (time, value) in time order.
fn runs(vm: &Victoria, host: &str) -> Vec<(u64, f64)> {
    vm.export(&format!("runs{{host=\"{host}\"}}"))
        .into_values()
        .next()
        .unwrap_or_default()
}

/// The counter went 1, 2, 3, ... N with one point per run: nothing lost,
/// nothing twice.
fn assert_consecutive(runs: &[(u64, f64)], host: &str) {
    let values: Vec<f64> = runs.iter().map(|(_, v)| *v).collect();
    let expected: Vec<f64> = (1..=values.len()).map(|n| n as f64).collect();
    assert_eq!(values, expected, "runs of {host}");
    assert!(runs.windows(2).all(|w| w[0].0 < w[1].0), "{host}: {runs:?}");
}

/// A counter or gauge of /metrics for `endpoint`.
fn remote_metric(receiver: &Receiver, endpoint: &str, name: &str) -> f64 {
    let body = get(receiver.http.as_ref().unwrap(), "/metrics", None).1;
    let prefix = format!("{name}{{endpoint=\"{endpoint}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{body}"))
}

fn wait_for_runs(vm: &Victoria, host: &str, at_least: usize) {
    assert!(
        wait_until(Duration::from_secs(60), || runs(vm, host).len() >= at_least),
        "{host}: {} runs in VictoriaMetrics, waited for {at_least}",
        runs(vm, host).len()
    );
}

#[test]
fn samples_reach_victoria_metrics_exactly_once_across_a_60s_outage() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path(), &["uptime", "loadavg"]);
    // No deduplication: a sample sent twice would show twice.
    let mut vm = Victoria::start(dir.path(), false);
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model(&vm, &["a"]));
    let mut agent = Agent::start_with(
        dir.path(),
        "a",
        &token("a"),
        &[&receiver.address],
        &plugins,
        "",
    );
    wait_for_runs(&vm, "a", 3);

    vm.stop();
    // The agent keeps reporting for a minute; the receiver stores it all
    // and keeps trying the endpoint.
    std::thread::sleep(Duration::from_secs(60));
    assert!(
        remote_metric(
            &receiver,
            "vm",
            "sandglass_remote_write_retried_samples_total"
        ) > 0.0
    );
    assert!(remote_metric(&receiver, "vm", "sandglass_remote_write_pending_reports") > 0.0);
    vm.restart();
    agent.stop();

    let expected = stored(&receiver, "a");
    let runs_stored = expected.keys().filter(|l| l["__name__"] == "runs").count();
    assert_eq!(runs_stored, 1, "{expected:?}");
    let mut got = Series::new();
    assert!(
        wait_until(Duration::from_secs(120), || {
            got = samples_in_vm(&vm, "a");
            same(&got, &expected)
        }),
        "VictoriaMetrics:\n{got:?}\nstored:\n{expected:?}\n{}",
        receiver.log_text()
    );
    let runs = runs(&vm, "a");
    assert!(
        runs.len() > 60,
        "{} runs: the outage lasted 60 s",
        runs.len()
    );
    assert_consecutive(&runs, "a");
    // Each report's level, once per report.
    for service in ["uptime", "runs"] {
        let levels = vm.export(&format!(
            "sandglass_service_level{{host=\"a\",service=\"{service}\"}}"
        ));
        let times: Vec<u64> = levels.values().flatten().map(|(t, _)| *t).collect();
        assert_eq!(times, receiver.report_times("a", service), "{service}");
    }
    assert!(wait_until(Duration::from_secs(30), || {
        remote_metric(&receiver, "vm", "sandglass_remote_write_pending_reports") == 0.0
    }));
    assert_eq!(
        remote_metric(
            &receiver,
            "vm",
            "sandglass_remote_write_dropped_samples_total"
        ),
        0.0
    );
    assert_eq!(
        remote_metric(
            &receiver,
            "vm",
            "sandglass_remote_write_skipped_reports_total"
        ),
        0.0
    );
    assert!(remote_metric(&receiver, "vm", "sandglass_remote_write_sent_samples_total") > 0.0);
    // The endpoint that answers 4xx: everything counted as dropped, none
    // sent, and the queue does not wait for it.
    let refused = |name| remote_metric(&receiver, "refused", name);
    assert!(refused("sandglass_remote_write_dropped_samples_total") > 0.0);
    assert_eq!(refused("sandglass_remote_write_sent_samples_total"), 0.0);
    assert!(wait_until(Duration::from_secs(30), || {
        refused("sandglass_remote_write_pending_reports") == 0.0
    }));
    promtool_accepts(&get(receiver.http.as_ref().unwrap(), "/metrics", None).1);
}

#[test]
fn two_receivers_one_victoria_metrics_a_failover_keeps_every_host_continuous() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path(), &["uptime", "loadavg"]);
    // A report both receivers stored (its Ack lost in the failover) comes
    // twice with the same timestamp and value: kept once.
    let vm = Victoria::start(dir.path(), true);
    let hosts = ["a", "b", "c", "d"];
    let model = model(&vm, &hosts);
    let start = |name: &str| {
        let home = dir.path().join(name);
        std::fs::create_dir(&home).unwrap();
        Receiver::start(&home, "127.0.0.1:0", &model)
    };
    let (mut first, second) = (start("r1"), start("r2"));
    let lists = [
        [first.address.as_str(), second.address.as_str()],
        [second.address.as_str(), first.address.as_str()],
    ];
    let mut agents: Vec<Agent> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            Agent::start_with(dir.path(), host, &token(host), &lists[i / 2], &plugins, "")
        })
        .collect();
    for host in hosts {
        wait_for_runs(&vm, host, 3);
    }
    first.stop();
    // a and b move to the second receiver and go on there.
    let moved: BTreeMap<&str, usize> = ["a", "b"]
        .into_iter()
        .map(|h| (h, runs(&vm, h).len()))
        .collect();
    for (host, before) in &moved {
        wait_for_runs(&vm, host, before + 5);
    }
    for agent in &mut agents {
        agent.stop();
    }

    for host in hosts {
        let mut expected = stored(&first, host);
        for (labels, points) in stored(&second, host) {
            let all = expected.entry(labels).or_default();
            all.extend(points);
            all.sort_by(|a, b| a.partial_cmp(b).unwrap());
            all.dedup();
        }
        let mut got = Series::new();
        assert!(
            wait_until(Duration::from_secs(120), || {
                got = samples_in_vm(&vm, host);
                same(&got, &expected)
            }),
            "{host}: VictoriaMetrics:\n{got:?}\nstored:\n{expected:?}"
        );
        assert_consecutive(&runs(&vm, host), host);
    }
    // The moved hosts' series span both receivers: one series, older
    // points stored by the first, newer by the second.
    for host in ["a", "b"] {
        let at =
            |r: &Receiver| -> BTreeSet<u64> { r.report_times(host, "runs").into_iter().collect() };
        let (old, new) = (at(&first), at(&second));
        assert!(
            !old.is_empty() && !new.is_empty(),
            "{host}: {old:?} {new:?}"
        );
        assert!(old.first() < new.first(), "{host}: {old:?} {new:?}");
        assert_eq!(runs(&vm, host).len(), old.union(&new).count(), "{host}");
    }
}
