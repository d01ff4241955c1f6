//! `agent plugin check FILE.wasm`: everything an operator wants to know
//! before deploying a plugin — size, kind, ABI, imports, description, grants
//! — then a real run in the sandbox against the real `/proc`, what it
//! printed and what it cost, and one verdict.

use super::trial::Trial;
use sandglass_core::report::{Level, Report};
use sandglass_core::text::Escaped;
use sandglass_core::units::ByteSize;
use sandglass_runtime::{self as runtime, Runtime, command};

/// Above this a plugin works, but every host pays seconds of compilation.
const LARGE_PLUGIN: u64 = 16 << 20;

/// Share of a limit a healthy run stays under.
const HEADROOM: f64 = 0.5;

/// How one check (or the whole plugin) fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One line of the check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub verdict: Verdict,
    pub text: String,
}

/// The whole check: each finding, the run's report (if it ran), the verdict.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Checked {
    pub file: String,
    pub findings: Vec<Finding>,
    pub report: Option<Report>,
    pub verdict: Verdict,
    /// One line saying why.
    pub summary: String,
}

impl Checked {
    fn note(&mut self, check: &'static str, verdict: Verdict, text: impl Into<String>) {
        self.findings.push(Finding {
            check,
            verdict,
            text: text.into(),
        });
    }

    fn finish(mut self, name: &str) -> Checked {
        self.verdict = self
            .findings
            .iter()
            .map(|f| f.verdict)
            .max()
            .unwrap_or(Verdict::Pass);
        let first = |v: Verdict| self.findings.iter().find(|f| f.verdict == v);
        self.summary = match self.verdict {
            Verdict::Pass => format!("{name} is ready to deploy"),
            Verdict::Warn => {
                let warn = first(Verdict::Warn).expect("a warning");
                format!("{name} works; look at {}: {}", warn.check, warn.text)
            }
            Verdict::Fail => {
                let fail = first(Verdict::Fail).expect("a failure");
                format!("{name} cannot be deployed: {}: {}", fail.check, fail.text)
            }
        };
        self
    }
}

/// Check the plugin at `file` with the grants, parameters and limits of `trial`.
pub fn check(runtime: &Runtime, file: &std::path::Path, trial: &Trial) -> Checked {
    let mut checked = Checked {
        file: file.display().to_string(),
        findings: Vec::new(),
        report: None,
        verdict: Verdict::Pass,
        summary: String::new(),
    };
    let name = runtime::file_stem(file);
    let wasm = match std::fs::read(file) {
        Ok(wasm) => wasm,
        Err(e) => {
            checked.note("file", Verdict::Fail, format!("cannot read it: {e}"));
            return checked.finish(&name);
        }
    };
    let size = wasm.len() as u64;
    let limit = runtime::MAX_PLUGIN_BYTES as u64;
    let size_verdict = match size {
        s if s > limit => Verdict::Fail,
        s if s > LARGE_PLUGIN => Verdict::Warn,
        _ => Verdict::Pass,
    };
    checked.note(
        "size",
        size_verdict,
        format!(
            "{} (limit {}; above {} every host compiles it for seconds)",
            ByteSize(size),
            ByteSize(limit),
            ByteSize(LARGE_PLUGIN)
        ),
    );
    if !wasm.starts_with(b"\0asm") {
        checked.note(
            "format",
            Verdict::Fail,
            "not a WebAssembly file (no \\0asm header)",
        );
        return checked.finish(&name);
    }
    let kind = if command::is_core_module(&wasm) {
        "core module: run as a WASI command printing exposition text"
    } else {
        "component"
    };
    checked.note("format", Verdict::Pass, kind);
    let plugin = match runtime.load(file) {
        Ok(plugin) => plugin,
        Err(e) => {
            checked.note("load", Verdict::Fail, format!("{e:#}"));
            return checked.finish(&name);
        }
    };
    let d = &plugin.description;
    let name = format!("{} {}", d.name, d.version).trim_end().to_owned();
    checked.note("abi", Verdict::Pass, d.abi_version);
    let imports = runtime.imports(&plugin);
    let sockets = if imports.iter().any(|i| i.starts_with("wasi:sockets/")) {
        "; every wasi:sockets call is refused at run time"
    } else {
        ""
    };
    checked.note(
        "imports",
        Verdict::Pass,
        format!(
            "{} interfaces, all provided by the sandbox{sockets}: {}",
            imports.len(),
            imports.join(", ")
        ),
    );
    if sandglass_core::plugin_abi::COMPATIBLE.contains(&d.abi_version) {
        let described = format!(
            "{name}, every {}s, {} metrics documented",
            d.interval_seconds,
            d.metrics.len()
        );
        let verdict = if d.metrics.is_empty() || d.version.is_empty() {
            Verdict::Warn
        } else {
            Verdict::Pass
        };
        let hint = if verdict == Verdict::Warn {
            " (add a version and Metric entries so `agent plugin info` documents them)"
        } else {
            ""
        };
        checked.note("describe", verdict, format!("{described}{hint}"));
    }
    let grants: Vec<String> = d
        .grants
        .iter()
        .map(|g| format!("{g:?}").to_lowercase())
        .collect();
    match trial.missing_grant(&plugin) {
        Some(fix) => {
            checked.note(
                "grants",
                Verdict::Fail,
                format!("declares {}: pass {fix} to try it", grants.join(", ")),
            );
            return checked.finish(&name);
        }
        None if grants.is_empty() => {
            checked.note("grants", Verdict::Pass, "none (read-only /proc only)")
        }
        None => checked.note(
            "grants",
            Verdict::Pass,
            format!("{} (granted for this check)", grants.join(", ")),
        ),
    }
    run_twice(runtime, &plugin, trial, &mut checked);
    checked.finish(&name)
}

/// Run once; when the run kept state, run again with it (the second run is
/// where rates appear and where state decoding bugs show).
fn run_twice(
    runtime: &Runtime,
    plugin: &std::sync::Arc<runtime::Plugin>,
    trial: &Trial,
    checked: &mut Checked,
) {
    // The state of the first run goes to a private file unless one was given.
    let state_dir = tempfile::tempdir();
    let mut trial = trial.clone();
    if trial.state_file.is_none()
        && let Ok(dir) = &state_dir
    {
        trial.state_file = Some(dir.path().join("state"));
    }
    let mut runs = 0;
    let (report, outcome) = loop {
        let ran = trial.run(runtime, plugin);
        runs += 1;
        let (report, outcome) = match ran {
            Ok(done) => done,
            Err(e) => {
                checked.note("run", Verdict::Fail, format!("{e:#}"));
                return;
            }
        };
        let kept = outcome
            .result
            .as_ref()
            .ok()
            .and_then(|o| o.state.as_ref())
            .map(Vec::len);
        if runs == 1
            && let Some(bytes) = kept
        {
            checked.note(
                "state",
                Verdict::Pass,
                format!("{bytes} bytes kept for the next run; ran a second time with them"),
            );
            continue;
        }
        break (report, outcome);
    };
    let status = format!("{} {}", report.status.level.as_str(), report.status.text);
    let which = if runs == 2 {
        " (second run, with the first run's state)"
    } else {
        ""
    };
    let (verdict, detail) = match (&outcome.result, report.status.level) {
        (Err(_), _) => (Verdict::Fail, String::new()),
        (Ok(_), Level::Unknown) => (
            Verdict::Warn,
            ": the plugin itself reported UNKNOWN".to_owned(),
        ),
        (Ok(o), _) if o.samples.is_empty() => (Verdict::Warn, ": no samples".to_owned()),
        (Ok(o), _) => (Verdict::Pass, format!(": {} samples", o.samples.len())),
    };
    checked.note("run", verdict, format!("{status}{which}{detail}"));
    if outcome.denied_count > 0 {
        checked.note(
            "sandbox",
            Verdict::Warn,
            format!(
                "{} opens denied by the sandbox, first {}",
                outcome.denied_count, outcome.denied[0]
            ),
        );
    }
    let limits = &trial.limits;
    let cost = &report.cost;
    let shares = [
        (
            "wall",
            cost.wall_micros as f64 / limits.deadline.0.as_micros() as f64,
            format!(
                "wall {:.2} ms of {}",
                cost.wall_micros as f64 / 1000.0,
                limits.deadline
            ),
        ),
        (
            "fuel",
            cost.fuel as f64 / limits.fuel as f64,
            format!("fuel {} of {}", cost.fuel, limits.fuel),
        ),
        (
            "memory",
            cost.peak_memory as f64 / limits.memory.0 as f64,
            format!(
                "peak memory {} of {}",
                ByteSize(cost.peak_memory),
                limits.memory
            ),
        ),
    ];
    let text: Vec<String> = shares
        .iter()
        .map(|(_, share, text)| format!("{text} ({:.1}%)", share * 100.0))
        .collect();
    let near: Vec<&str> = shares
        .iter()
        .filter(|(_, share, _)| *share > HEADROOM)
        .map(|(what, _, _)| *what)
        .collect();
    let verdict = if near.is_empty() || outcome.result.is_err() {
        Verdict::Pass
    } else {
        Verdict::Warn
    };
    let hint = if verdict == Verdict::Warn {
        format!("; {} above half the limit", near.join(", "))
    } else {
        String::new()
    };
    checked.note("cost", verdict, format!("{}{hint}", text.join(", ")));
    checked.report = Some(report);
}

/// The check as a table for people.
pub fn table(checked: &Checked) -> String {
    let mut out = format!("checking {}\n", checked.file);
    for f in &checked.findings {
        // A finding may quote the plugin (its status, its error): escaped.
        out.push_str(&format!(
            "  {:<4}  {:<8}  {}\n",
            f.verdict.as_str(),
            f.check,
            Escaped(&f.text)
        ));
    }
    if let Some(report) = &checked.report {
        out.push_str("output:\n");
        for line in sandglass_core::render::table(std::slice::from_ref(report)).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.push_str(&format!(
        "verdict: {} — {}\n",
        checked.verdict.as_str().to_uppercase(),
        Escaped(&checked.summary)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_quoting_the_plugin_cannot_forge_lines() {
        let forged = "CRIT \u{1b}[2J\rx\nverdict: PASS — fine";
        let checked = Checked {
            file: "demo.wasm".into(),
            findings: vec![Finding {
                check: "run",
                verdict: Verdict::Fail,
                text: forged.into(),
            }],
            report: None,
            verdict: Verdict::Fail,
            summary: format!("demo cannot be deployed: run: {forged}"),
        };
        let text = table(&checked);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("\\e[2J\\rx\\nverdict: PASS"), "{text}");
    }
}
