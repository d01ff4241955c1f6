//! `/metrics`: the Prometheus text exposition (format 0.0.4) of what the
//! receiver stores — the newest value of every series of every scheduled
//! service with `host`, `service` and the plugin's labels, each service's
//! level and each host's status as series — and the receiver's own health.

use crate::health::{COMMIT_BUCKETS, Health as Counters};
use crate::remote_write::Progress;
use crate::store;
use rusqlite::Connection;
use sandglass_core::report::{Level, MetricKind, Sample};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// The series of each service's level, here (newest) and through remote
/// write (every report).
pub const SERVICE_LEVEL: &str = "sandglass_service_level";

/// The receiver's health, from the running server.
pub struct Health {
    pub connected_agents: usize,
    pub remote_write: Vec<Arc<Progress>>,
    pub counters: Arc<Counters>,
}

/// One metric family: its type and help, and its series' lines.
#[derive(Default)]
struct Family {
    kind: Option<&'static str>,
    help: String,
    lines: Vec<String>,
}

/// Families by name, written out sorted.
#[derive(Default)]
struct Exposition(BTreeMap<String, Family>);

impl Exposition {
    fn add(
        &mut self,
        name: &str,
        kind: &'static str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        self.add_line(name, kind, help, name, labels, value);
    }

    /// A line of family `family`; `line` is its name (the family's, or a
    /// histogram's `_bucket`, `_sum`, `_count`).
    fn add_line(
        &mut self,
        family: &str,
        kind: &'static str,
        help: &str,
        line: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let entry = self.0.entry(family.to_owned()).or_default();
        if entry.kind.is_none() {
            entry.kind = Some(kind);
            entry.help = help.to_owned();
        } else if entry.kind != Some(kind) {
            // A plugin reporting one name as gauge and counter: the first
            // kind stands; a mixed family would not parse.
            return;
        }
        entry
            .lines
            .push(format!("{line}{} {}", label_set(labels), number(value)));
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.0 {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.unwrap_or("gauge"));
            for line in &family.lines {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// The whole exposition, read from the store.
pub fn exposition(conn: &Connection, health: &Health) -> anyhow::Result<String> {
    let mut out = Exposition::default();
    let services: Vec<(String, String, Option<String>)> = conn
        .prepare("SELECT host, name, level FROM services WHERE scheduled = 1 ORDER BY host, name")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (host, service, level) in &services {
        if let Some(level) = level {
            let level = Level::parse(level) as u8 as f64;
            out.add(
                SERVICE_LEVEL,
                "gauge",
                "Level of the service's newest report: 0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN.",
                &[("host", host), ("service", service)],
                level,
            );
        }
        if let Some(report) = store::latest(conn, host, service)? {
            for sample in &report.samples {
                add_sample(&mut out, host, service, sample);
            }
        }
    }
    let hosts: Vec<(String, String, bool)> = conn
        .prepare("SELECT name, status, connected FROM hosts ORDER BY name")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (host, status, connected) in &hosts {
        let up = *connected && status != "UNREACHABLE";
        out.add(
            "sandglass_host_up",
            "gauge",
            "1 when the host's agent is connected and its liveness service reports in time.",
            &[("host", host), ("status", status)],
            f64::from(u8::from(up)),
        );
    }
    add_health(&mut out, conn, health)?;
    Ok(out.text())
}

fn add_sample(out: &mut Exposition, host: &str, service: &str, sample: &Sample) {
    let (name, labels) = series(host, service, sample);
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (kind, help) = match sample.kind {
        MetricKind::Counter => (
            "counter",
            "Counter reported by a Sandglass collector plugin.",
        ),
        MetricKind::Gauge => ("gauge", "Gauge reported by a Sandglass collector plugin."),
    };
    out.add(&name, kind, help, &labels, sample.value);
}

/// A sample's metric name and labels as Sandglass exports them, here and
/// through remote write: a valid Prometheus name, `host` and `service`
/// first, then the plugin's labels made valid (its own `host` or `service`
/// renamed `plugin_host`, `plugin_service`; a repeated key kept once).
pub fn series(host: &str, service: &str, sample: &Sample) -> (String, Vec<(String, String)>) {
    let mut labels = vec![
        ("host".to_owned(), host.to_owned()),
        ("service".to_owned(), service.to_owned()),
    ];
    for (key, value) in &sample.labels {
        let key = label_name(key);
        let key = if key == "host" || key == "service" {
            format!("plugin_{key}")
        } else {
            key
        };
        if !labels.iter().any(|(k, _)| *k == key) {
            labels.push((key, value.clone()));
        }
    }
    (metric_name(&sample.name), labels)
}

fn add_health(out: &mut Exposition, conn: &Connection, health: &Health) -> anyhow::Result<()> {
    out.add(
        "sandglass_receiver_connected_agents",
        "gauge",
        "Agents connected to this receiver.",
        &[],
        health.connected_agents as f64,
    );
    let lost: f64 = conn.query_row("SELECT COALESCE(SUM(reports), 0) FROM gaps", [], |r| {
        r.get(0)
    })?;
    out.add(
        "sandglass_receiver_lost_reports",
        "gauge",
        "Reports agents said they lost (gap records still kept).",
        &[],
        lost,
    );
    let (size, free) = store::retention::size(conn)?;
    out.add(
        "sandglass_receiver_database_bytes",
        "gauge",
        "Size of the receiver's SQLite database file.",
        &[],
        size as f64,
    );
    out.add(
        "sandglass_receiver_database_free_bytes",
        "gauge",
        "Free pages in the database, filled before the file grows.",
        &[],
        free as f64,
    );
    add_counters(out, &health.counters);
    for progress in &health.remote_write {
        add_remote_write(out, progress);
    }
    Ok(())
}

/// What the receiver counted since it started.
fn add_counters(out: &mut Exposition, counters: &Counters) {
    // Read before the batches: every batch counted here was received.
    let latency = counters.commit_latency();
    for (name, help, value) in [
        (
            "sandglass_receiver_batches_total",
            "Report batches received from agents (rate() gives batches/s).",
            &counters.batches,
        ),
        (
            "sandglass_receiver_reports_total",
            "Reports received from agents.",
            &counters.reports,
        ),
        (
            "sandglass_receiver_samples_total",
            "Samples received from agents.",
            &counters.samples,
        ),
        (
            "sandglass_receiver_gaps_total",
            "Gap records received: each stands for reports an agent lost.",
            &counters.gaps,
        ),
    ] {
        out.add(name, "counter", help, &[], value.load(Relaxed) as f64);
    }
    for (reason, n) in counters.failures() {
        out.add(
            "sandglass_plugin_failures_total",
            "counter",
            "Plugin runs that failed (UNKNOWN reports the runtime wrote), by reason.",
            &[("reason", reason)],
            n as f64,
        );
    }
    let family = "sandglass_receiver_commit_seconds";
    let help = "Time from queueing a batch for the store to its commit.";
    let bounds = COMMIT_BUCKETS.iter().map(|b| number(*b));
    for (bound, count) in bounds.chain(["+Inf".to_owned()]).zip(&latency.cumulative) {
        let line = format!("{family}_bucket");
        let labels = [("le", bound.as_str())];
        out.add_line(family, "histogram", help, &line, &labels, *count as f64);
    }
    let count = latency.cumulative.last().copied().unwrap_or(0) as f64;
    let sum = latency.sum_seconds;
    out.add_line(
        family,
        "histogram",
        help,
        &format!("{family}_sum"),
        &[],
        sum,
    );
    out.add_line(
        family,
        "histogram",
        help,
        &format!("{family}_count"),
        &[],
        count,
    );
}

/// One remote-write endpoint's counters and queue.
fn add_remote_write(out: &mut Exposition, p: &Progress) {
    let labels = [("endpoint", p.name.as_str())];
    let get = |n: &std::sync::atomic::AtomicU64| n.load(Relaxed) as f64;
    for (name, kind, help, value) in [
        (
            "sandglass_remote_write_sent_samples_total",
            "counter",
            "Samples the remote-write endpoint acknowledged.",
            get(&p.sent_samples),
        ),
        (
            "sandglass_remote_write_dropped_samples_total",
            "counter",
            "Samples the remote-write endpoint refused for good (4xx), not sent again.",
            get(&p.dropped_samples),
        ),
        (
            "sandglass_remote_write_retried_samples_total",
            "counter",
            "Samples in remote-write requests that failed and were sent again.",
            get(&p.retried_samples),
        ),
        (
            "sandglass_remote_write_skipped_reports_total",
            "counter",
            "Stored reports never sent: past max_pending_reports, or deleted by retention first.",
            get(&p.skipped_reports),
        ),
        (
            "sandglass_remote_write_pending_reports",
            "gauge",
            "Stored reports the remote-write endpoint has not acknowledged yet.",
            get(&p.pending_reports),
        ),
        (
            "sandglass_remote_write_pending_samples",
            "gauge",
            "Samples in the remote-write request being sent (0 when caught up).",
            get(&p.pending_samples),
        ),
        (
            "sandglass_remote_write_lag_seconds",
            "gauge",
            "Age of the oldest stored report the endpoint has not acknowledged (0 when caught up).",
            get(&p.lag_ms) / 1000.0,
        ),
    ] {
        out.add(name, kind, help, &labels, value);
    }
}

/// A metric name Prometheus accepts: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn metric_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A label name Prometheus accepts: `[a-zA-Z_][a-zA-Z0-9_]*`, not `__…`.
fn label_name(name: &str) -> String {
    let mut out = metric_name(name).replace(':', "_");
    if out.starts_with("__") {
        out.insert_str(0, "plugin");
    }
    out
}

fn label_set(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_value(v)))
        .collect();
    format!("{{{}}}", pairs.join(","))
}

fn escape_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_made_valid_and_values_escaped() {
        assert_eq!(metric_name("cpu.usage-percent"), "cpu_usage_percent");
        assert_eq!(metric_name("1m_load"), "_1m_load");
        assert_eq!(label_name("__name__"), "plugin__name__");
        assert_eq!(label_name("a:b"), "a_b");
        assert_eq!(
            label_set(&[("path", "C:\\dir \"x\"\nnext")]),
            "{path=\"C:\\\\dir \\\"x\\\"\\nnext\"}"
        );
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(2.5), "2.5");
    }

    #[test]
    fn one_family_keeps_one_type() {
        let mut out = Exposition::default();
        out.add("m", "gauge", "h", &[("a", "1")], 1.0);
        out.add("m", "counter", "h", &[("a", "2")], 2.0);
        let text = out.text();
        assert_eq!(text, "# HELP m h\n# TYPE m gauge\nm{a=\"1\"} 1\n");
    }
}
