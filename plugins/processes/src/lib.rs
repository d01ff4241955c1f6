//! Processes collector: counts of processes by scheduler state and of threads,
//! from `/proc/<pid>/stat`.
//!
//! Params: `zombies_warn` — WARN at this many zombies (default 10).
//!
//! The agent's own `/proc/<pid>` is hidden by the sandbox policy, so the agent
//! is counted in `processes_total` but not by state.

use sandglass_plugin_sdk::{Collector, Context, Description, Metric, Result, host, proc};

pub struct Processes;

impl Collector for Processes {
    fn describe() -> Description {
        Description::new("processes", env!("CARGO_PKG_VERSION"))
            .interval_seconds(30)
            .metric(Metric::gauge(
                "processes_total",
                "",
                "processes (pid directories in /proc)",
            ))
            .metric(Metric::gauge(
                "processes",
                "",
                "processes per scheduler state",
            ))
            .metric(Metric::gauge(
                "processes_threads",
                "",
                "threads summed over readable processes",
            ))
    }

    fn collect(ctx: &mut Context) -> Result<()> {
        let mut counts = Counts::default();
        for pid in host::list_dir("/proc")? {
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            counts.total += 1;
            // A process may exit between readdir and read; the agent's own is denied.
            if let Ok(stat) = proc::read(&format!("/proc/{pid}/stat")) {
                counts.add(&stat)?;
            }
        }
        counts.report(ctx)
    }
}

sandglass_plugin_sdk::export_collector!(Processes);

/// Scheduler states of `/proc/<pid>/stat`, and the label each gets.
const STATES: [(char, &str); 8] = [
    ('R', "running"),
    ('S', "sleeping"),
    ('D', "disk_sleep"),
    ('Z', "zombie"),
    ('T', "stopped"),
    ('t', "tracing_stop"),
    ('I', "idle"),
    ('X', "dead"),
];

/// Process counts accumulated over `/proc/<pid>/stat` files.
#[derive(Default)]
pub struct Counts {
    pub total: u64,
    by_state: [u64; STATES.len()],
    other: u64,
    threads: u64,
}

impl Counts {
    /// Count one `/proc/<pid>/stat` line.
    pub fn add(&mut self, stat: &str) -> Result<()> {
        // The command name (field 2) is in parentheses and may itself contain
        // spaces and ')': the state follows the *last* ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| format!("/proc/<pid>/stat: no ')' in {stat:?}"))?;
        let state = rest.trim_start().chars().next().unwrap_or('?');
        match STATES.iter().position(|(c, _)| *c == state) {
            Some(i) => self.by_state[i] += 1,
            None => self.other += 1,
        }
        // num_threads is field 20 overall, the 18th after the state.
        self.threads += proc::field::<u64>(rest, 17, "num_threads")?;
        Ok(())
    }

    /// Emit the samples and the status.
    pub fn report(&self, ctx: &mut Context) -> Result<()> {
        let zombies_warn: f64 = ctx.param_or("zombies_warn", 10.0)?;
        ctx.gauge("processes_total", self.total as f64);
        for ((_, label), count) in STATES.iter().zip(self.by_state) {
            ctx.gauge("processes", count as f64).label("state", label);
        }
        ctx.gauge("processes", self.other as f64)
            .label("state", "other");
        ctx.gauge("processes_threads", self.threads as f64);
        let zombies = self.by_state[3];
        let text = format!(
            "{} processes, {} threads, {zombies} zombies",
            self.total, self.threads
        );
        ctx.status_by_levels(zombies as f64, zombies_warn, f64::INFINITY, text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_plugin_sdk::Level;

    #[test]
    fn recorded_stat_and_hostile_names() {
        let mut counts = Counts::default();
        counts
            .add(include_str!("../tests/fixtures/pid_stat.txt"))
            .unwrap();
        // A command name with spaces and a ')' must not shift the fields.
        counts
            .add("42 (evil) Z 1 (x) R 1 1 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 7 0 1 1 1 1 1 1")
            .unwrap();
        counts.total = 2;
        let mut ctx = Context::new(vec![("zombies_warn".into(), "1".into())], None);
        counts.report(&mut ctx).unwrap();
        assert_eq!(ctx.value("processes", &[("state", "sleeping")]), Some(1.0));
        assert_eq!(ctx.value("processes", &[("state", "running")]), Some(1.0));
        // pid 1 of the fixture has 13 threads, the crafted line 7.
        assert_eq!(ctx.value("processes_threads", &[]), Some(20.0));
        assert_eq!(ctx.current_status().unwrap().0, Level::Ok);
    }

    #[test]
    fn zombies_warn_and_garbage() {
        let mut counts = Counts::default();
        for _ in 0..3 {
            counts
                .add("7 (z) Z 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 1 1")
                .unwrap();
        }
        let mut ctx = Context::new(vec![("zombies_warn".into(), "3".into())], None);
        counts.report(&mut ctx).unwrap();
        assert_eq!(ctx.current_status().unwrap().0, Level::Warn);
        assert!(counts.add("no parens here").is_err());
    }
}
