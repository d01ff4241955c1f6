//! Staged rollout of a new build of a plugin (docs/plugin-guide.md,
//! "Staged rollout"): when `plugin_dir` offers a new build of a plugin that
//! services already run, it goes to canary hosts first, then to the rest
//! in steps, and halts — every host back on the previous build — when its
//! runs come back UNKNOWN more often than the previous build's did on the
//! same hosts.
//!
//! This file is the decision, a pure function of the rollout, the policy,
//! the plugin's hosts and the run counts; `fleet.rs` keeps the rollouts in
//! the database, counts runs and pins each host's schedule.

mod fleet;

pub use fleet::{Rollouts, SCHEMA, abandon, load, resume};

use crate::config::RolloutPolicy;
use serde::Serialize;
use std::collections::BTreeSet;

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Hosts in `reached` run the new build, the others the previous one.
    Stepping,
    /// The new build failed: every host is back on the previous build
    /// until an operator resumes or abandons the rollout.
    Halted,
    /// An operator gave the new build up: every host stays on the
    /// previous build until `plugin_dir` offers another.
    Abandoned,
    /// Every host runs `to`, the plugin's current build.
    Done,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Stepping => "stepping",
            Stage::Halted => "halted",
            Stage::Abandoned => "abandoned",
            Stage::Done => "done",
        }
    }

    pub fn parse(text: &str) -> Option<Stage> {
        [
            Stage::Stepping,
            Stage::Halted,
            Stage::Abandoned,
            Stage::Done,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Runs counted for one build, and how many were UNKNOWN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub runs: u64,
    pub unknown: u64,
}

impl Counts {
    fn rate(self) -> f64 {
        match self.runs {
            0 => 0.0,
            n => self.unknown as f64 / n as f64,
        }
    }

    fn minus(self, base: Counts) -> Counts {
        Counts {
            runs: self.runs.saturating_sub(base.runs),
            unknown: self.unknown.saturating_sub(base.unknown),
        }
    }
}

/// One plugin's rollout (a plugin with no rollout under way has one at
/// stage `Done`: it remembers the build every host runs).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rollout {
    pub plugin: String,
    /// The build hosts run until the rollout reaches them (none for a
    /// plugin first seen).
    pub from: Option<String>,
    pub to: String,
    pub stage: Stage,
    /// Why the rollout is where it is, in one line.
    pub reason: String,
    /// Hosts pinned to `to` while stepping.
    pub reached: BTreeSet<String>,
    /// When the rollout started or was last resumed, and last stepped.
    pub started_ms: u64,
    pub step_ms: u64,
    /// Runs of `to` on the reached hosts when it (re)started: those before
    /// a resume do not count again.
    #[serde(skip)]
    pub base: Counts,
    /// Bumped on every write; a write expecting another revision lost a
    /// race with an operator's command and is retried from the database.
    #[serde(skip)]
    pub revision: i64,
}

/// What the judgement says to do with a stepping rollout.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Hold,
    /// Add these hosts.
    Step(Vec<String>),
    /// Halt, with this reason.
    Halt(String),
    /// Every host is reached and the last step proved good.
    Done,
}

impl Rollout {
    /// A plugin seen for the first time, or a new build that goes to every
    /// host at once.
    pub fn done(plugin: &str, from: Option<String>, to: &str, reason: &str, now_ms: u64) -> Self {
        Rollout {
            plugin: plugin.to_owned(),
            from,
            to: to.to_owned(),
            stage: Stage::Done,
            reason: reason.to_owned(),
            reached: BTreeSet::new(),
            started_ms: now_ms,
            step_ms: now_ms,
            base: Counts::default(),
            revision: 0,
        }
    }

    /// Start rolling `to` out over the plugin's hosts (by name), the
    /// canaries first.
    pub fn start(plugin: &str, from: &str, to: &str, canaries: Vec<String>, now_ms: u64) -> Self {
        let reason = format!("canaries first: {}", canaries.join(", "));
        Rollout {
            from: Some(from.to_owned()),
            stage: Stage::Stepping,
            reached: canaries.into_iter().collect(),
            ..Rollout::done(plugin, None, to, &reason, now_ms)
        }
    }

    /// The build `host` runs: `None` where the plugin's current build
    /// (`to`) applies.
    pub fn pin(&self, host: &str) -> Option<&str> {
        match self.stage {
            Stage::Done => None,
            Stage::Stepping if self.reached.contains(host) => None,
            Stage::Stepping | Stage::Halted | Stage::Abandoned => self.from.as_deref(),
        }
    }

    /// Judge a stepping rollout. `hosts` are the plugin's hosts now, by
    /// name; `to` counts the new build's runs on the reached hosts (all of
    /// them, `base` is taken off here) and `from` the previous build's on
    /// the same hosts before the rollout.
    pub fn judge(
        &self,
        policy: &RolloutPolicy,
        hosts: &[String],
        to: Counts,
        from: Counts,
        now_ms: u64,
    ) -> Verdict {
        if self.stage != Stage::Stepping {
            return Verdict::Hold;
        }
        let to = to.minus(self.base);
        if to.runs >= policy.min_runs && to.rate() > from.rate() + policy.max_unknown_increase {
            return Verdict::Halt(format!(
                "UNKNOWN in {} of {} runs ({:.0}%) of build {} on {}, against {} of {} ({:.0}%) of build {} on the same hosts before; max_unknown_increase is {:.0}%",
                to.unknown,
                to.runs,
                to.rate() * 100.0,
                short(&self.to),
                self.reached.iter().cloned().collect::<Vec<_>>().join(", "),
                from.unknown,
                from.runs,
                from.rate() * 100.0,
                self.from.as_deref().map_or("-", short),
                policy.max_unknown_increase * 100.0,
            ));
        }
        let reached = self.reached.iter().filter(|h| hosts.contains(h)).count() as u64;
        let waited = now_ms.saturating_sub(self.step_ms) >= policy.step_wait.as_millis() as u64;
        if !waited || to.runs < policy.min_runs * reached.max(1) {
            return Verdict::Hold;
        }
        let step = ((hosts.len() as f64 * policy.step).ceil() as usize).max(1);
        let next: Vec<String> = hosts
            .iter()
            .filter(|h| !self.reached.contains(*h))
            .take(step)
            .cloned()
            .collect();
        match next.is_empty() {
            true => Verdict::Done,
            false => Verdict::Step(next),
        }
    }
}

/// The first 8 hex digits of a sha256, as logs and events show builds.
pub fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(8)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Canaries;
    use std::time::Duration;

    const OLD: &str = "aaaaaaaa11111111";
    const NEW: &str = "bbbbbbbb22222222";

    fn policy() -> RolloutPolicy {
        RolloutPolicy {
            canaries: Canaries::Count(1),
            step: 0.4,
            step_wait: Duration::from_secs(60),
            min_runs: 3,
            max_unknown_increase: 0.05,
        }
    }

    fn hosts() -> Vec<String> {
        ["a", "b", "c", "d", "e"].map(String::from).to_vec()
    }

    fn runs(runs: u64, unknown: u64) -> Counts {
        Counts { runs, unknown }
    }

    #[test]
    fn a_good_build_steps_after_evidence_and_the_wait_then_is_done() {
        let mut r = Rollout::start("cpu", OLD, NEW, vec!["a".into()], 0);
        assert_eq!(r.pin("a"), None);
        assert_eq!(r.pin("b"), Some(OLD));
        let p = policy();
        // Not before step_wait, not before min_runs per reached host.
        assert_eq!(
            r.judge(&p, &hosts(), runs(10, 0), runs(0, 0), 59_999),
            Verdict::Hold
        );
        assert_eq!(
            r.judge(&p, &hosts(), runs(2, 0), runs(9, 0), 60_000),
            Verdict::Hold
        );
        // 40 % of five hosts is two per step.
        let verdict = r.judge(&p, &hosts(), runs(3, 0), runs(9, 0), 60_000);
        assert_eq!(verdict, Verdict::Step(vec!["b".into(), "c".into()]));
        r.reached.extend(["b".to_owned(), "c".to_owned()]);
        r.step_ms = 60_000;
        // Three hosts reached: three runs each before the next step.
        assert_eq!(
            r.judge(&p, &hosts(), runs(8, 0), runs(9, 0), 120_000),
            Verdict::Hold
        );
        assert_eq!(
            r.judge(&p, &hosts(), runs(9, 0), runs(9, 0), 120_000),
            Verdict::Step(vec!["d".into(), "e".into()])
        );
        r.reached.extend(["d".to_owned(), "e".to_owned()]);
        r.step_ms = 120_000;
        assert_eq!(
            r.judge(&p, &hosts(), runs(15, 0), runs(9, 0), 180_000),
            Verdict::Done
        );
    }

    #[test]
    fn a_failing_build_halts_against_the_old_builds_rate_and_a_resume_forgets_old_runs() {
        let mut r = Rollout::start("cpu", OLD, NEW, vec!["a".into()], 0);
        let p = policy();
        // The old build failed 10 % of its runs: 14 % is within 5 points...
        assert_eq!(
            r.judge(&p, &hosts(), runs(7, 1), runs(100, 10), 1),
            Verdict::Hold
        );
        // ... 29 % is not, and it halts before step_wait.
        let Verdict::Halt(reason) = r.judge(&p, &hosts(), runs(7, 2), runs(100, 10), 1) else {
            panic!("should halt");
        };
        assert!(
            reason.contains("UNKNOWN in 2 of 7 runs (29%) of build bbbbbbbb on a"),
            "{reason}"
        );
        assert!(
            reason.contains("10 of 100 (10%) of build aaaaaaaa"),
            "{reason}"
        );
        // Too few runs to judge: no halt on one failure.
        assert_eq!(
            r.judge(&p, &hosts(), runs(1, 1), runs(0, 0), 1),
            Verdict::Hold
        );

        r.stage = Stage::Halted;
        assert_eq!(
            r.pin("a"),
            Some(OLD),
            "a halted rollout rolls the canaries back"
        );
        assert_eq!(
            r.judge(&p, &hosts(), runs(7, 2), runs(100, 10), 1),
            Verdict::Hold
        );
        // Resumed with the failed runs as base: judged on new runs only.
        r.stage = Stage::Stepping;
        r.base = runs(7, 2);
        assert_eq!(r.pin("a"), None);
        assert_eq!(
            r.judge(&p, &hosts(), runs(10, 2), runs(100, 10), 1),
            Verdict::Hold
        );
    }

    #[test]
    fn stages_read_back_and_abandoned_keeps_the_old_build() {
        for stage in [
            Stage::Stepping,
            Stage::Halted,
            Stage::Abandoned,
            Stage::Done,
        ] {
            assert_eq!(Stage::parse(stage.as_str()), Some(stage));
        }
        let mut r = Rollout::start("cpu", OLD, NEW, vec!["a".into()], 0);
        r.stage = Stage::Abandoned;
        assert_eq!(r.pin("a"), Some(OLD));
        assert_eq!(Rollout::done("cpu", None, NEW, "", 0).pin("a"), None);
    }
}
