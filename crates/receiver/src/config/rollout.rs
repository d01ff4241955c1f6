//! `[rollout]` in `receiver.toml`: how a new build of a plugin that
//! services already run reaches the fleet (docs/plugin-guide.md, "Staged
//! rollout"). Without the section a new build goes to every host at once.
//!
//! ```toml
//! [rollout]
//! canary = 1                     # hosts that get a new build first (or:)
//! canary_group = "canaries"      # ... the hosts of this group instead
//! step = "10%"                   # of the plugin's hosts added per step after the canaries
//! step_wait = "10m"              # between steps
//! min_runs = 5                   # runs of the new build (per host reached) before a step
//! max_unknown_increase = "5%"    # halt when its UNKNOWN rate exceeds the old build's by more
//! ```

use anyhow::bail;
use sandglass_core::units::HumanDuration;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    canary: Option<usize>,
    canary_group: Option<String>,
    #[serde(default = "default_step")]
    step: String,
    #[serde(default = "default_step_wait")]
    step_wait: HumanDuration,
    #[serde(default = "default_min_runs")]
    min_runs: u64,
    #[serde(default = "default_max_unknown_increase")]
    max_unknown_increase: String,
}

fn default_step() -> String {
    "10%".into()
}
fn default_step_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_min_runs() -> u64 {
    5
}
fn default_max_unknown_increase() -> String {
    "5%".into()
}

/// Which hosts get a new build first.
#[derive(Clone, Debug, PartialEq)]
pub enum Canaries {
    /// The first `n` of the plugin's hosts, by name.
    Count(usize),
    /// The plugin's hosts in this group.
    Group(String),
}

/// The validated `[rollout]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutPolicy {
    pub canaries: Canaries,
    /// Share of the plugin's hosts added per step, in (0, 1].
    pub step: f64,
    pub step_wait: Duration,
    /// Runs of the new build per host reached before the next step.
    pub min_runs: u64,
    /// UNKNOWN rate of the new build above the old one's on the same hosts
    /// (a share, 0.05 = five points) that halts the rollout.
    pub max_unknown_increase: f64,
}

impl RawRollout {
    pub(super) fn resolve(&self, groups: &[&str]) -> anyhow::Result<RolloutPolicy> {
        let canaries = match (self.canary, self.canary_group.clone()) {
            (Some(_), Some(_)) => bail!("set canary (a count) or canary_group, not both"),
            (None, Some(group)) if !groups.contains(&group.as_str()) => {
                bail!(
                    "canary_group {group:?}: no such group; define [groups.{group}] or name another"
                )
            }
            (None, Some(group)) => Canaries::Group(group),
            (Some(0), None) => bail!("canary = 0: at least one host must try a new build first"),
            (Some(n), None) => Canaries::Count(n),
            (None, None) => Canaries::Count(1),
        };
        let step = share("step", &self.step)?;
        if step == 0.0 {
            bail!("step \"0%\" would never finish a rollout: use e.g. \"10%\"");
        }
        if self.min_runs == 0 {
            bail!("min_runs = 0 would step without any evidence: use at least 1");
        }
        Ok(RolloutPolicy {
            canaries,
            step,
            step_wait: self.step_wait.0,
            min_runs: self.min_runs,
            max_unknown_increase: share("max_unknown_increase", &self.max_unknown_increase)?,
        })
    }
}

/// `"10%"` as 0.1; a share of 0 to 100 %.
fn share(key: &str, text: &str) -> anyhow::Result<f64> {
    let value = text
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .filter(|p| (0.0..=100.0).contains(p));
    match value {
        Some(percent) => Ok(percent / 100.0),
        None => bail!("{key} {text:?} is not a percentage from 0% to 100%, e.g. \"10%\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> anyhow::Result<RolloutPolicy> {
        toml::from_str::<RawRollout>(text)?.resolve(&["canaries"])
    }

    #[test]
    fn defaults_and_errors_that_name_the_fix() {
        let policy = resolve("").unwrap();
        assert_eq!(policy.canaries, Canaries::Count(1));
        assert_eq!(policy.step, 0.1);
        assert_eq!(policy.step_wait, Duration::from_secs(600));
        assert_eq!(policy.max_unknown_increase, 0.05);
        assert_eq!(
            resolve("canary_group = \"canaries\"").unwrap().canaries,
            Canaries::Group("canaries".into())
        );
        for (text, says) in [
            ("canary = 2\ncanary_group = \"canaries\"", "not both"),
            ("canary_group = \"web\"", "define [groups.web]"),
            ("canary = 0", "at least one host"),
            ("step = \"0%\"", "never finish"),
            ("step = \"10\"", "e.g. \"10%\""),
            ("step = \"150%\"", "0% to 100%"),
            ("min_runs = 0", "at least 1"),
            ("max_unknown_increase = \"x%\"", "max_unknown_increase"),
        ] {
            let err = resolve(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
