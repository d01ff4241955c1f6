//! Output for people (a table, like `telnet host 6556` showed for check_mk)
//! and for machines (JSON).
//!
//! Every string a plugin chose goes through [`escape`] in the table: an
//! escape sequence or a newline in a status text must not clear the
//! operator's terminal or forge a line (a fake `OK`). JSON keeps the exact
//! text.

use crate::report::{Cost, MetricKind, Report, Sample};
use crate::text::{Escaped, escape};
use std::fmt::Write;

/// Reports as a table: one status line per service, its samples indented.
pub fn table(reports: &[Report]) -> String {
    let width = reports
        .iter()
        .map(|r| escape(&r.service).len())
        .max()
        .unwrap_or(7)
        .max(7);
    let mut out = String::new();
    for r in reports {
        let _ = writeln!(
            out,
            "{:<width$}  {:<7}  {}  [{}]",
            escape(&r.service),
            r.status.level.as_str(),
            Escaped(&r.status.text),
            cost(&r.cost)
        );
        for s in &r.samples {
            let _ = writeln!(out, "    {}", sample(s));
        }
    }
    out
}

/// `wall 0.21 ms, fuel 120345, memory 1.1 MiB`.
pub fn cost(c: &Cost) -> String {
    format!(
        "wall {:.2} ms, fuel {}, memory {:.1} MiB",
        c.wall_micros as f64 / 1000.0,
        c.fuel,
        c.peak_memory as f64 / (1u64 << 20) as f64
    )
}

/// `name{k="v"} 42 unit (counter)`, escaped (values quoted as Rust does,
/// which escapes control characters too).
pub fn sample(s: &Sample) -> String {
    let mut line = escape(&s.name).into_owned();
    if !s.labels.is_empty() {
        let labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{}={v:?}", Escaped(k)))
            .collect();
        let _ = write!(line, "{{{}}}", labels.join(","));
    }
    let _ = write!(line, " {}", s.value);
    if !s.unit.is_empty() {
        let _ = write!(line, " {}", Escaped(&s.unit));
    }
    if s.kind == MetricKind::Counter {
        line.push_str(" (counter)");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Level, Status};

    #[test]
    fn table_shows_status_cost_and_samples() {
        let report = Report {
            service: "cpu".into(),
            plugin: "cpu".into(),
            time_ms: 0,
            status: Status {
                level: Level::Warn,
                text: "cpu 91%".into(),
            },
            samples: vec![Sample {
                name: "cpu_jiffies_total".into(),
                value: 12.0,
                kind: MetricKind::Counter,
                unit: "jiffies".into(),
                labels: vec![("cpu".into(), "cpu0".into())],
            }],
            cost: Cost {
                wall_micros: 1500,
                fuel: 42,
                peak_memory: 1 << 20,
            },
        };
        let text = table(&[report]);
        assert!(
            text.starts_with(
                "cpu      WARN     cpu 91%  [wall 1.50 ms, fuel 42, memory 1.0 MiB]\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("    cpu_jiffies_total{cpu=\"cpu0\"} 12 jiffies (counter)\n"),
            "{text}"
        );
    }

    #[test]
    fn plugin_strings_cannot_forge_lines_or_drive_the_terminal() {
        let forged = "\u{1b}[2J\rfine\ncpu      OK       all good";
        let report = Report {
            service: "demo".into(),
            plugin: "demo".into(),
            time_ms: 0,
            status: Status {
                level: Level::Crit,
                text: forged.into(),
            },
            samples: vec![Sample {
                name: "m\n".into(),
                value: 1.0,
                kind: MetricKind::Gauge,
                unit: "\u{1b}[31m".into(),
                labels: vec![("k\r".into(), "v\u{1b}".into())],
            }],
            cost: Cost::default(),
        };
        let text = table(&[report]);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("\\e[2J\\rfine\\ncpu"), "{text}");
    }
}
