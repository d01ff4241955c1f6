//! Per-run limits: safe defaults, overridable globally and per service.

use crate::units::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The fewest open files a run can work with: its preopened directories
/// (`/proc`, `/sys` and a few granted ones) plus a file or two.
const MIN_OPEN_FILES: usize = 8;

/// The bounds every plugin run gets. Each breach ends the run with an UNKNOWN
/// status naming the limit and its value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Limits {
    /// Fuel units (about one per wasm instruction; ~13 G/s on a 2 GHz core).
    pub fuel: u64,
    /// Wall-clock time for one run, including time blocked in host calls.
    pub deadline: HumanDuration,
    /// Linear memory (and table space) of the plugin instance.
    pub memory: ByteSize,
    /// Samples one run may return.
    pub max_samples: usize,
    /// Bytes of output one run may return: names, units, label keys and
    /// values, status or error text, plus a fixed cost per sample and per
    /// label pair (see `runtime::output`).
    pub max_output_bytes: ByteSize,
    /// Bytes a run may write to stdout and to stderr, each.
    pub max_stdio_bytes: ByteSize,
    /// Bytes of state a run may hand to the next one.
    pub max_state_bytes: ByteSize,
    /// Files and directories a run may hold open at once, its preopened
    /// directories included.
    pub max_open_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 1_000_000_000,
            deadline: HumanDuration(Duration::from_secs(2)),
            memory: ByteSize(32 << 20),
            max_samples: 10_000,
            max_output_bytes: ByteSize(1 << 20),
            max_stdio_bytes: ByteSize(64 << 10),
            max_state_bytes: ByteSize(64 << 10),
            max_open_files: 64,
        }
    }
}

/// Limits as written in configuration: every field optional, unset ones keep
/// the value they override.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// Fuel units per run. Default 1000000000 (~75 ms of pure computation).
    pub fuel: Option<u64>,
    /// Wall-clock deadline per run. Default "2s".
    pub deadline: Option<HumanDuration>,
    /// Memory cap per run. Default "32MiB".
    pub memory: Option<ByteSize>,
    /// Samples per run. Default 10000.
    pub max_samples: Option<usize>,
    /// Bytes of output per run (strings, plus 16 bytes per sample and 8 per
    /// label pair). Default "1MiB".
    pub max_output_bytes: Option<ByteSize>,
    /// Bytes of stdout and of stderr per run. Default "64KiB".
    pub max_stdio_bytes: Option<ByteSize>,
    /// Bytes of state kept between runs. Default "64KiB".
    pub max_state_bytes: Option<ByteSize>,
    /// Files and directories held open at once per run, the preopened
    /// directories (`/proc`, `/sys`, granted ones) included. Default 64.
    pub max_open_files: Option<usize>,
}

impl Limits {
    /// These limits with `overrides` applied; refuses values that would make
    /// every run fail.
    pub fn with(&self, overrides: &LimitOverrides) -> Result<Limits, String> {
        let limits = Limits {
            fuel: overrides.fuel.unwrap_or(self.fuel),
            deadline: overrides.deadline.unwrap_or(self.deadline),
            memory: overrides.memory.unwrap_or(self.memory),
            max_samples: overrides.max_samples.unwrap_or(self.max_samples),
            max_output_bytes: overrides.max_output_bytes.unwrap_or(self.max_output_bytes),
            max_stdio_bytes: overrides.max_stdio_bytes.unwrap_or(self.max_stdio_bytes),
            max_state_bytes: overrides.max_state_bytes.unwrap_or(self.max_state_bytes),
            max_open_files: overrides.max_open_files.unwrap_or(self.max_open_files),
        };
        if limits.fuel == 0 {
            return Err("fuel must be greater than 0".into());
        }
        if limits.deadline.0 < Duration::from_millis(10) {
            return Err(format!(
                "deadline {} is below the 10ms epoch tick; use at least \"10ms\"",
                limits.deadline
            ));
        }
        if limits.memory.0 < 1 << 20 {
            return Err(format!(
                "memory {} is too small for any plugin; use at least \"1MiB\"",
                limits.memory
            ));
        }
        if limits.max_open_files < MIN_OPEN_FILES {
            return Err(format!(
                "max_open_files {} leaves no room beside the preopened directories; use at least {MIN_OPEN_FILES}",
                limits.max_open_files
            ));
        }
        Ok(limits)
    }

    /// The deadline as a `Duration`.
    pub fn deadline(&self) -> Duration {
        self.deadline.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_field_by_field_and_bad_values_are_named() {
        let o = LimitOverrides {
            fuel: Some(5),
            memory: Some(ByteSize(8 << 20)),
            ..Default::default()
        };
        let l = Limits::default().with(&o).unwrap();
        assert_eq!(l.fuel, 5);
        assert_eq!(l.memory.0, 8 << 20);
        assert_eq!(l.deadline, Limits::default().deadline);
        let tiny = LimitOverrides {
            memory: Some(ByteSize(1000)),
            ..Default::default()
        };
        assert!(Limits::default().with(&tiny).unwrap_err().contains("1MiB"));
        let zero = LimitOverrides {
            fuel: Some(0),
            ..Default::default()
        };
        assert!(Limits::default().with(&zero).unwrap_err().contains("fuel"));
    }
}
