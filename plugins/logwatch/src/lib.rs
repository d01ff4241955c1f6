//! Log-watch collector: counts lines matching regular expressions in log
//! files the operator grants, and reports the last matching lines.
//!
//! Params (see docs/plugin-guide.md for a worked example):
//! - `files`: comma-separated absolute paths of the log files; each must lie
//!   in a directory granted to the service (`grants = ["files"]`, `files = [...]`);
//! - `match.<name>` = regex, one or more: what to count (`<name>` labels it);
//! - `last_lines` (3): matching lines reported per file and pattern per run;
//! - `warn` (1), `crit` (none): new matches in one run that make the status
//!   WARN / CRIT;
//! - `from_start` (false): on the first run read the files from the top
//!   instead of starting at their end;
//! - `max_read` (8388608): bytes read per file per run; a larger backlog is
//!   worked off over the next runs.
//!
//! The offset in each file is kept in the plugin state, so a run reads only
//! what was appended since the last one, across agent restarts; rotation and
//! truncation are detected by the file's first bytes (see [`follow`]).

pub mod follow;
pub mod state;

use regex::bytes::Regex;
use sandglass_plugin_sdk::{Collector, Context, Description, Level, Metric, Result};
use std::collections::VecDeque;

pub struct Logwatch;

impl Collector for Logwatch {
    fn describe() -> Description {
        Description::new("logwatch", env!("CARGO_PKG_VERSION"))
            .needs_files()
            .interval_seconds(60)
            .metric(Metric::counter(
                "logwatch_matches_total",
                "",
                "lines matching the pattern since the file was first watched",
            ))
            .metric(Metric::gauge(
                "logwatch_new_matches",
                "",
                "lines matching the pattern in this run",
            ))
            .metric(Metric::gauge(
                "logwatch_last_match",
                "bytes",
                "a recent matching line (label `line`); the value is its offset in the file",
            ))
            .metric(Metric::gauge(
                "logwatch_file_bytes",
                "bytes",
                "size of the file",
            ))
            .metric(Metric::gauge(
                "logwatch_read_bytes",
                "bytes",
                "bytes read in this run",
            ))
            .metric(Metric::gauge(
                "logwatch_behind_bytes",
                "bytes",
                "bytes appended but not yet read (more than max_read)",
            ))
            .metric(Metric::counter(
                "logwatch_rotations_total",
                "",
                "times the file was rotated or truncated",
            ))
    }

    fn collect(ctx: &mut Context) -> Result<()> {
        let settings = Settings::from_context(ctx)?;
        let previous = ctx
            .previous_state()
            .and_then(state::decode)
            .unwrap_or_default();
        watch(&settings, previous, ctx)
    }
}

sandglass_plugin_sdk::export_collector!(Logwatch);

/// Longest matching line reported, in bytes.
const LINE_CAP: usize = 240;

/// The parameters, checked.
pub struct Settings {
    pub files: Vec<String>,
    pub patterns: Vec<(String, Regex)>,
    pub last_lines: usize,
    pub warn: u64,
    pub crit: u64,
    pub from_start: bool,
    pub max_read: u64,
}

impl Settings {
    pub fn from_context(ctx: &Context) -> Result<Settings> {
        let files: Vec<String> = ctx
            .param("files")
            .unwrap_or_default()
            .split(',')
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect();
        if files.is_empty() {
            return Err("parameter files is required: comma-separated paths of log files in a granted directory".into());
        }
        if let Some(relative) = files.iter().find(|f| !f.starts_with('/')) {
            return Err(format!("files: {relative:?} is not an absolute path").into());
        }
        let mut patterns = Vec::new();
        for (key, value) in ctx.params() {
            let Some(name) = key.strip_prefix("match.") else {
                continue;
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "{key}: a pattern name may hold only letters, digits, _ and -"
                )
                .into());
            }
            let regex =
                Regex::new(value).map_err(|e| format!("{key}: invalid regular expression: {e}"))?;
            patterns.push((name.to_owned(), regex));
        }
        if patterns.is_empty() {
            return Err("no pattern: add at least one parameter match.<name> = \"regex\"".into());
        }
        Ok(Settings {
            files,
            patterns,
            last_lines: ctx.param_or("last_lines", 3)?,
            warn: ctx.param_or("warn", 1)?,
            crit: ctx.param_or("crit", u64::MAX)?,
            from_start: ctx.param_or("from_start", false)?,
            max_read: ctx.param_or("max_read", 8 << 20)?,
        })
    }
}

/// One run over every file: samples, status, and the new state.
pub fn watch(settings: &Settings, mut previous: state::State, ctx: &mut Context) -> Result<()> {
    let mut next = state::State::new();
    let mut new_by_pattern = vec![0u64; settings.patterns.len()];
    let mut last_seen: Option<String> = None;
    let mut problems = Vec::new();
    for path in &settings.files {
        let old = previous.remove(path);
        let mut counts = vec![0u64; settings.patterns.len()];
        let mut recent: Vec<VecDeque<(u64, String)>> =
            vec![VecDeque::new(); settings.patterns.len()];
        let followed = follow::follow(
            path,
            old.clone(),
            settings.from_start,
            settings.max_read,
            &mut |offset, line| {
                for (i, (_, regex)) in settings.patterns.iter().enumerate() {
                    if regex.is_match(line) {
                        counts[i] += 1;
                        if settings.last_lines > 0 {
                            if recent[i].len() == settings.last_lines {
                                recent[i].pop_front();
                            }
                            recent[i].push_back((offset, shorten(line)));
                        }
                    }
                }
            },
        );
        let (mut file_state, followed) = match followed {
            Ok(done) => done,
            Err(unreadable) => {
                problems.push(match unreadable {
                    follow::Unreadable::Missing => {
                        format!("{path} does not exist or is outside the granted directories")
                    }
                    // The host names the rule that refused it.
                    follow::Unreadable::Failed(e) => format!("cannot read {e}"),
                });
                // Keep what was known, to resume when the file is back.
                if let Some(old) = old {
                    next.insert(path.clone(), old);
                }
                continue;
            }
        };
        ctx.gauge("logwatch_file_bytes", followed.size as f64)
            .unit("bytes")
            .label("file", path);
        ctx.gauge("logwatch_read_bytes", followed.read as f64)
            .unit("bytes")
            .label("file", path);
        let behind = followed.size.saturating_sub(file_state.offset);
        ctx.gauge("logwatch_behind_bytes", behind as f64)
            .unit("bytes")
            .label("file", path);
        ctx.counter("logwatch_rotations_total", file_state.rotations as f64)
            .label("file", path);
        for (i, (name, _)) in settings.patterns.iter().enumerate() {
            let total = file_state.totals.entry(name.clone()).or_insert(0);
            *total += counts[i];
            ctx.counter("logwatch_matches_total", *total as f64)
                .label("file", path)
                .label("pattern", name);
            ctx.gauge("logwatch_new_matches", counts[i] as f64)
                .label("file", path)
                .label("pattern", name);
            for (offset, line) in &recent[i] {
                ctx.gauge("logwatch_last_match", *offset as f64)
                    .unit("bytes")
                    .label("file", path)
                    .label("pattern", name)
                    .label("line", line);
            }
            if let Some((_, line)) = recent[i].back() {
                last_seen = Some(line.clone());
            }
            new_by_pattern[i] += counts[i];
        }
        next.insert(path.clone(), file_state);
    }
    ctx.set_state(state::encode(&next));
    let new: u64 = new_by_pattern.iter().sum();
    let mut text = if new == 0 {
        format!("no new matches in {} files", settings.files.len())
    } else {
        let parts: Vec<String> = settings
            .patterns
            .iter()
            .zip(&new_by_pattern)
            .filter(|(_, n)| **n > 0)
            .map(|((name, _), n)| format!("{name} {n}"))
            .collect();
        format!(
            "{new} new matches ({}); last: {}",
            parts.join(", "),
            last_seen.unwrap_or_default()
        )
    };
    let mut level = if new >= settings.crit {
        Level::Crit
    } else if new >= settings.warn {
        Level::Warn
    } else {
        Level::Ok
    };
    if !problems.is_empty() {
        text = format!("{}; {text}", problems.join("; "));
        if level != Level::Crit {
            level = Level::Unknown;
        }
    }
    ctx.status(level, text);
    Ok(())
}

/// A line for a label: lossy UTF-8, cut to [`LINE_CAP`] bytes.
fn shorten(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(LINE_CAP + 4)]);
    let mut end = text.len().min(LINE_CAP);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = end < text.len();
    format!("{}{}", &text[..end], if cut { "…" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_are_checked_with_clear_errors() {
        let err = |pairs: &[(&str, &str)]| {
            Settings::from_context(&Context::new(params(pairs), None))
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err(&[("match.e", "x")]).contains("parameter files is required"));
        assert!(err(&[("files", "rel.log"), ("match.e", "x")]).contains("not an absolute path"));
        assert!(err(&[("files", "/x.log")]).contains("match.<name>"));
        assert!(
            err(&[("files", "/x.log"), ("match.e", "(")])
                .contains("match.e: invalid regular expression")
        );
        assert!(err(&[("files", "/x.log"), ("match.a b", "x")]).contains("pattern name"));
    }

    #[test]
    fn counts_matches_keeps_totals_and_reports_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let path = log.to_str().unwrap();
        std::fs::write(&log, "INFO boot\n").unwrap();
        let p = params(&[
            ("files", path),
            ("match.error", "ERROR"),
            ("match.oom", "(?i)out of memory"),
            ("last_lines", "2"),
            ("crit", "3"),
        ]);
        let run = |state: Option<Vec<u8>>| {
            let mut ctx = Context::new(p.clone(), state);
            let settings = Settings::from_context(&ctx).unwrap();
            let previous = ctx
                .previous_state()
                .and_then(state::decode)
                .unwrap_or_default();
            watch(&settings, previous, &mut ctx).unwrap();
            ctx
        };
        let first = run(None);
        assert_eq!(
            first.value(
                "logwatch_new_matches",
                &[("file", path), ("pattern", "error")]
            ),
            Some(0.0)
        );
        assert_eq!(first.current_status().unwrap().0, Level::Ok);

        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(
            &mut f,
            b"ERROR one\nINFO fine\nERROR two\nERROR three\nkernel: Out of memory\n",
        )
        .unwrap();
        let second = run(first.next_state().map(<[u8]>::to_vec));
        let error = [("file", path), ("pattern", "error")];
        assert_eq!(second.value("logwatch_new_matches", &error), Some(3.0));
        assert_eq!(second.value("logwatch_matches_total", &error), Some(3.0));
        assert_eq!(
            second.value(
                "logwatch_new_matches",
                &[("file", path), ("pattern", "oom")]
            ),
            Some(1.0)
        );
        let lines: Vec<&str> = second
            .samples()
            .filter(|(name, _, labels)| {
                *name == "logwatch_last_match" && labels.iter().any(|l| l.1 == "error")
            })
            .map(|(_, _, labels)| labels.iter().find(|l| l.0 == "line").unwrap().1.as_str())
            .collect();
        assert_eq!(lines, ["ERROR two", "ERROR three"]);
        let (level, text) = second.current_status().unwrap();
        assert_eq!(level, Level::Crit);
        assert_eq!(
            text,
            "4 new matches (error 3, oom 1); last: kernel: Out of memory"
        );

        std::io::Write::write_all(&mut f, b"ERROR four\n").unwrap();
        let third = run(second.next_state().map(<[u8]>::to_vec));
        assert_eq!(third.value("logwatch_new_matches", &error), Some(1.0));
        assert_eq!(third.value("logwatch_matches_total", &error), Some(4.0));
        assert_eq!(third.current_status().unwrap().0, Level::Warn);
    }

    #[test]
    fn a_missing_file_is_unknown_and_keeps_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let path = log.to_str().unwrap().to_owned();
        std::fs::write(&log, "x\n").unwrap();
        let p = params(&[("files", &path), ("match.e", "E")]);
        let mut ctx = Context::new(p.clone(), None);
        let settings = Settings::from_context(&ctx).unwrap();
        watch(&settings, state::State::new(), &mut ctx).unwrap();
        let saved = state::decode(ctx.next_state().unwrap()).unwrap();
        std::fs::rename(&log, dir.path().join("elsewhere")).unwrap();
        let mut ctx = Context::new(p, None);
        watch(&settings, saved.clone(), &mut ctx).unwrap();
        let (level, text) = ctx.current_status().unwrap();
        assert_eq!(level, Level::Unknown);
        assert!(
            text.starts_with(&format!("{path} does not exist")),
            "{text}"
        );
        assert_eq!(state::decode(ctx.next_state().unwrap()).unwrap(), saved);
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let line = "é".repeat(200);
        let short = shorten(line.as_bytes());
        assert!(short.ends_with('…') && short.len() <= LINE_CAP + '…'.len_utf8());
        assert_eq!(shorten(b"short"), "short");
    }
}
