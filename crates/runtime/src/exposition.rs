//! What a command module prints: the Prometheus text exposition format
//! (version 0.0.4), plus three comment lines of ours that stay valid
//! Prometheus text (`# UNIT` as in OpenMetrics, `# STATUS`, `# STATE`).
//!
//! Why this format: it is what node_exporter's textfile collector scripts and
//! every Prometheus client library already print, in every language, and it
//! carries what a Sandglass sample has (name, labels, value, counter or gauge).
//! check_mk's local-check line carries a status but no labels or kinds.
//!
//! ```text
//! # TYPE app_requests_total counter
//! app_requests_total{path="/"} 1027
//! # UNIT app_queue_bytes bytes
//! app_queue_bytes 4096
//! # STATUS WARN queue above 4 KiB
//! # STATE 1027
//! ```
//!
//! Any line that is none of these is an error naming its number: a command
//! that prints garbage reports UNKNOWN instead of made-up samples.

use super::abi::wit;
use std::collections::HashMap;

/// Longest excerpt of an offending line quoted in an error.
const QUOTED: usize = 80;

/// Parse a command's stdout into a collection. Without a `# STATUS` line the
/// status is OK with the sample count; without `# STATE` no state is kept.
pub fn parse(text: &str) -> Result<wit::Collection, String> {
    let mut kinds: HashMap<&str, wit::MetricKind> = HashMap::new();
    let mut units: HashMap<&str, &str> = HashMap::new();
    let mut samples = Vec::new();
    let mut status = None;
    let mut state = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        let number = index + 1;
        let fail = |what: &str| {
            format!(
                "line {number}: {what}: {:?}",
                sandglass_core::text::truncate(line, QUOTED)
            )
        };
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            let (keyword, rest) = comment.split_once(' ').unwrap_or((comment, ""));
            match keyword {
                "TYPE" => {
                    let (name, kind) = two_words(rest)
                        .ok_or_else(|| fail("expected `# TYPE name counter|gauge`"))?;
                    let kind = match kind {
                        "counter" => wit::MetricKind::Counter,
                        "gauge" | "untyped" => wit::MetricKind::Gauge,
                        "summary" | "histogram" => {
                            return Err(fail(&format!(
                                "TYPE {kind} is not supported; print its parts as counters and gauges"
                            )));
                        }
                        _ => return Err(fail("unknown TYPE (use counter or gauge)")),
                    };
                    kinds.insert(name, kind);
                }
                "UNIT" => {
                    let (name, unit) =
                        two_words(rest).ok_or_else(|| fail("expected `# UNIT name unit`"))?;
                    units.insert(name, unit);
                }
                "STATUS" => {
                    if status.is_some() {
                        return Err(fail("a second # STATUS line; print one"));
                    }
                    let (level, text) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
                    let level = level_of(level).ok_or_else(|| {
                        fail(
                            "expected `# STATUS OK|WARN|CRIT|UNKNOWN text` (or 0-3 as in check_mk)",
                        )
                    })?;
                    status = Some(wit::Status {
                        level,
                        text: text.trim().to_owned(),
                    });
                }
                "STATE" => {
                    if state.is_some() {
                        return Err(fail("a second # STATE line; print one"));
                    }
                    state = Some(rest.as_bytes().to_vec());
                }
                // HELP and any other comment: documentation only.
                _ => {}
            }
            continue;
        }
        let (name, labels, value) = sample_line(line).map_err(fail)?;
        samples.push(wit::Sample {
            name: name.to_owned(),
            value,
            kind: wit::MetricKind::Gauge,
            unit: String::new(),
            labels,
        });
    }
    for sample in &mut samples {
        if let Some(kind) = kinds.get(sample.name.as_str()) {
            sample.kind = *kind;
        }
        if let Some(unit) = units.get(sample.name.as_str()) {
            sample.unit = (*unit).to_owned();
        }
    }
    let status = status.unwrap_or_else(|| wit::Status {
        level: wit::Level::Ok,
        text: format!("{} samples", samples.len()),
    });
    Ok(wit::Collection {
        samples,
        status,
        state,
    })
}

/// How many lines of `text` [`parse`] takes for samples (neither empty nor
/// comments), counted without building them.
pub fn sample_lines(text: &str) -> usize {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count()
}

fn two_words(text: &str) -> Option<(&str, &str)> {
    let mut words = text.split_whitespace();
    let pair = (words.next()?, words.next()?);
    words.next().is_none().then_some(pair)
}

fn level_of(word: &str) -> Option<wit::Level> {
    Some(match word.to_ascii_uppercase().as_str() {
        "OK" | "0" => wit::Level::Ok,
        "WARN" | "WARNING" | "1" => wit::Level::Warn,
        "CRIT" | "CRITICAL" | "2" => wit::Level::Crit,
        "UNKNOWN" | "3" => wit::Level::Unknown,
        _ => return None,
    })
}

type Labels = Vec<(String, String)>;

/// `name{label="value",...} value [timestamp]`.
fn sample_line(line: &str) -> Result<(&str, Labels, f64), &'static str> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("expected a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) or a # comment");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = labels_of(inner, &mut labels)?;
    }
    let mut words = rest.split_whitespace();
    let value = words
        .next()
        .ok_or("a sample needs a value after the name")?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| "the value is not a number")?,
    };
    if let Some(timestamp) = words.next() {
        // Accepted for compatibility; the report carries the run's time.
        timestamp
            .parse::<i64>()
            .map_err(|_| "the timestamp is not an integer (milliseconds)")?;
    }
    if words.next().is_some() {
        return Err("unexpected text after the value and timestamp");
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("expected a space between the name or labels and the value");
    }
    Ok((name, labels, value))
}

/// Parse `a="x",b="y"}` into `labels`; the text after the `}`.
fn labels_of<'a>(mut text: &'a str, labels: &mut Labels) -> Result<&'a str, &'static str> {
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Ok(after);
        }
        let (key, after) = text.split_once('=').ok_or("a label needs name=\"value\"")?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err("a label name may hold only letters, digits and _");
        }
        let mut chars = after
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value must be in double quotes")?
            .char_indices();
        let mut value = String::new();
        let end = loop {
            match chars
                .next()
                .ok_or("a label value's closing quote is missing")?
            {
                (i, '"') => break i,
                (_, '\\') => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("unknown escape in a label value (use \\\\, \\\" or \\n)"),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        text = after.trim_start()[1 + end + 1..].trim_start();
        text = match (text.strip_prefix(','), text.starts_with('}')) {
            (Some(after), _) => after,
            (None, true) => text,
            (None, false) => return Err("expected `,` or `}` after a label value"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_types_units_status_and_state() {
        let text = "# HELP app_requests_total Requests served.\n\
                    # TYPE app_requests_total counter\n\
                    app_requests_total{path=\"/a b\",code=\"200\"} 1027 1700000000000\n\
                    \n\
                    # UNIT app_queue_bytes bytes\n\
                    app_queue_bytes 4.5e3\n\
                    temp{} -Inf\n\
                    # STATUS 1 queue above 4 KiB\n\
                    # STATE {\"seen\": 1027}\n";
        let c = parse(text).unwrap();
        assert_eq!(c.samples.len(), 3);
        let s = &c.samples[0];
        assert_eq!(s.name, "app_requests_total");
        assert_eq!(s.value, 1027.0);
        assert!(matches!(s.kind, wit::MetricKind::Counter));
        assert_eq!(
            s.labels,
            vec![
                ("path".into(), "/a b".into()),
                ("code".into(), "200".into())
            ]
        );
        assert_eq!(c.samples[1].unit, "bytes");
        assert_eq!(c.samples[1].value, 4500.0);
        assert!(matches!(c.samples[1].kind, wit::MetricKind::Gauge));
        assert_eq!(c.samples[2].value, f64::NEG_INFINITY);
        assert!(matches!(c.status.level, wit::Level::Warn));
        assert_eq!(c.status.text, "queue above 4 KiB");
        assert_eq!(c.state.as_deref(), Some(&b"{\"seen\": 1027}"[..]));
    }

    #[test]
    fn sample_lines_counts_the_lines_parse_takes_for_samples() {
        let text = "# TYPE a counter\na 1\n\n  # HELP b x\nb{x=\"#\"} 2\n# STATE s\n  c 3\n";
        assert_eq!(sample_lines(text), 3);
        assert_eq!(parse(text).unwrap().samples.len(), 3);
    }

    #[test]
    fn defaults_without_status_or_state() {
        let c = parse("a 1\nb 2\n").unwrap();
        assert!(matches!(c.status.level, wit::Level::Ok));
        assert_eq!(c.status.text, "2 samples");
        assert_eq!(c.state, None);
        let empty = parse("").unwrap();
        assert!(empty.samples.is_empty());
    }

    #[test]
    fn label_escapes() {
        let c = parse(r#"m{v="a\"b\\c\nd"} 1"#).unwrap();
        assert_eq!(c.samples[0].labels[0].1, "a\"b\\c\nd");
    }

    #[test]
    fn garbage_names_the_line() {
        for (text, line, what) in [
            ("ok 1\nhello world\n", 2, "not a number"),
            ("ok 1\n\n3 apples\n", 3, "metric name"),
            ("m{a=\"x\" 1\n", 1, "`,` or `}`"),
            ("m{a=\"x 1\n", 1, "closing quote"),
            ("m{a=x} 1\n", 1, "double quotes"),
            ("m 1 2 3\n", 1, "unexpected text"),
            ("m\n", 1, "needs a value"),
            ("# TYPE m histogram\nm 1\n", 1, "not supported"),
            ("# STATUS BAD x\n", 1, "OK|WARN"),
            ("# STATUS OK\n# STATUS OK\n", 2, "second"),
            ("m{a=\"x\"}1\n", 1, "space"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                err.starts_with(&format!("line {line}: ")) && err.contains(what),
                "{text:?}: {err}"
            );
        }
    }
}
