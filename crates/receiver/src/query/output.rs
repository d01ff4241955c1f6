//! What `receiver query` prints: a table for people, JSON for scripts, and
//! writing either to a stdout that may close early.

use super::Point;
use super::buckets::Agg;
use super::when::TimeStyle;
use sandglass_core::render;
use sandglass_core::report::Sample;
use sandglass_core::text::escape;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::Write as _;

/// How the table is laid out.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub time: TimeStyle,
    /// A host column (the query spans hosts).
    pub host_column: bool,
    /// The points are buckets of this aggregation (`--step`).
    pub agg: Option<Agg>,
}

/// One line per value: time, host (when the query spans hosts), service,
/// and the sample as `status` shows it. Every string a peer chose is
/// escaped (see `sandglass_core::text`).
pub fn table(points: &[Point], layout: Layout) -> String {
    let width = |f: fn(&Point) -> &str| {
        points
            .iter()
            .map(|p| escape(f(p)).chars().count())
            .max()
            .unwrap_or(0)
    };
    let (host_width, service_width) = (width(|p| &p.host), width(|p| &p.service));
    let mut out = String::new();
    for p in points {
        out += &layout.time.format(p.time_ms);
        if layout.host_column {
            let _ = write!(out, "  {:<host_width$}", escape(&p.host));
        }
        let _ = write!(
            out,
            "  {:<service_width$}  {}",
            escape(&p.service),
            render::sample(&p.sample)
        );
        if let (Some(agg), Some(count)) = (layout.agg, p.count) {
            let _ = write!(out, " ({} of {count})", agg_name(agg));
        }
        out.push('\n');
    }
    out
}

fn agg_name(agg: Agg) -> &'static str {
    match agg {
        Agg::Avg => "avg",
        Agg::Min => "min",
        Agg::Max => "max",
    }
}

/// A point as JSON: the stored `time_ms` and the same time in ISO-8601.
#[derive(Serialize)]
struct JsonPoint<'a> {
    time_ms: u64,
    time: String,
    host: &'a str,
    service: &'a str,
    #[serde(flatten)]
    sample: &'a Sample,
    /// Samples in the bucket (`--step` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

/// The points as a JSON array; `time` is in UTC with `--utc`, else local.
pub fn json(points: &[Point], time: TimeStyle) -> anyhow::Result<String> {
    let iso = if time == TimeStyle::Utc {
        TimeStyle::Utc
    } else {
        TimeStyle::Local
    };
    let points: Vec<JsonPoint> = points
        .iter()
        .map(|p| JsonPoint {
            time_ms: p.time_ms,
            time: iso.format(p.time_ms),
            host: &p.host,
            service: &p.service,
            sample: &p.sample,
            count: p.count,
        })
        .collect();
    Ok(serde_json::to_string_pretty(&points)? + "\n")
}

/// A note for the person at the terminal, on stderr so that stdout stays
/// data; a closed stderr is not worth failing for.
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_core::report::MetricKind;

    fn point(host: &str, service: &str, count: Option<u64>) -> Point {
        Point {
            time_ms: 1_796_231_045_250,
            host: host.into(),
            service: service.into(),
            sample: Sample {
                name: "load1".into(),
                value: 0.5,
                kind: MetricKind::Gauge,
                unit: String::new(),
                labels: vec![],
            },
            count,
        }
    }

    #[test]
    fn the_table_aligns_columns_and_shows_the_host_when_asked() {
        let points = [point("a", "load", None), point("web-1", "cpu", None)];
        let layout = Layout {
            time: TimeStyle::Utc,
            host_column: true,
            agg: None,
        };
        assert_eq!(
            table(&points, layout),
            "2026-12-02T17:04:05Z  a      load  load1 0.5\n\
             2026-12-02T17:04:05Z  web-1  cpu   load1 0.5\n"
        );
        let layout = Layout {
            time: TimeStyle::Epoch,
            host_column: false,
            agg: Some(Agg::Max),
        };
        let points = [point("a", "load", Some(4))];
        assert_eq!(
            table(&points, layout),
            "1796231045250  load  load1 0.5 (max of 4)\n"
        );
    }

    #[test]
    fn peer_strings_are_escaped_in_the_table_and_exact_in_json() {
        let points = [point("a", "evil\n\u{1b}[2J", None)];
        let layout = Layout {
            time: TimeStyle::Utc,
            host_column: false,
            agg: None,
        };
        let text = table(&points, layout);
        assert_eq!(text.lines().count(), 1, "{text:?}");
        let json: serde_json::Value =
            serde_json::from_str(&json(&points, TimeStyle::Utc).unwrap()).unwrap();
        assert_eq!(json[0]["service"], "evil\n\u{1b}[2J");
        assert_eq!(json[0]["time"], "2026-12-02T17:04:05Z");
        assert_eq!(json[0]["time_ms"], 1_796_231_045_250u64);
        assert_eq!(json[0]["name"], "load1");
        assert!(json[0].get("count").is_none());
    }
}
