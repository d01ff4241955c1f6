//! CPU collector: `/proc/stat` jiffies per cpu and in total (counters), and
//! utilisation in percent computed from the previous run's jiffies (state).
//!
//! Params: `warn` and `crit` — total utilisation thresholds in percent
//! (defaults 90 and 98).

use sandglass_plugin_sdk::state::{self, Counters};
use sandglass_plugin_sdk::{Collector, Context, Description, Metric, Result, proc};

/// Column names of a `cpu` line in `/proc/stat`, in order.
const MODES: [&str; 10] = [
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
];

pub struct Cpu;

impl Collector for Cpu {
    fn describe() -> Description {
        Description::new("cpu", env!("CARGO_PKG_VERSION"))
            .interval_seconds(10)
            .metric(Metric::counter(
                "cpu_jiffies_total",
                "jiffies",
                "time spent per cpu and mode",
            ))
            .metric(Metric::gauge(
                "cpu_utilization_percent",
                "percent",
                "busy share since the previous run",
            ))
            .metric(Metric::counter(
                "cpu_context_switches_total",
                "",
                "context switches since boot",
            ))
            .metric(Metric::counter(
                "cpu_forks_total",
                "",
                "processes created since boot",
            ))
    }

    fn collect(ctx: &mut Context) -> Result<()> {
        let stat = proc::read("/proc/stat")?;
        parse(&stat, state::now(), ctx)
    }
}

sandglass_plugin_sdk::export_collector!(Cpu);

/// Parse `/proc/stat` read at `now` into samples, status and state.
pub fn parse(stat: &str, now: f64, ctx: &mut Context) -> Result<()> {
    let warn: f64 = ctx.param_or("warn", 90.0)?;
    let crit: f64 = ctx.param_or("crit", 98.0)?;
    let previous = ctx.previous_state().and_then(Counters::decode);
    let mut counters = Counters::new(now);
    let mut total_utilisation = None;
    let mut cpus = 0;

    for line in stat.lines() {
        let mut columns = line.split_ascii_whitespace();
        let Some(name) = columns.next() else { continue };
        if let Some(rest) = name.strip_prefix("cpu") {
            let cpu = if rest.is_empty() { "total" } else { name };
            cpus += usize::from(!rest.is_empty());
            let mut busy = 0.0;
            let mut idle = 0.0;
            for (mode, text) in MODES.iter().zip(columns) {
                let jiffies: f64 = proc::parse(text, "/proc/stat cpu jiffies")?;
                ctx.counter("cpu_jiffies_total", jiffies)
                    .unit("jiffies")
                    .label("cpu", cpu)
                    .label("mode", mode);
                // guest time is already counted in user/nice.
                match *mode {
                    "idle" | "iowait" => idle += jiffies,
                    "guest" | "guest_nice" => {}
                    _ => busy += jiffies,
                }
            }
            counters.set(&format!("{cpu}.busy"), busy);
            counters.set(&format!("{cpu}.idle"), idle);
            let busy_delta = counters.delta(previous.as_ref(), &format!("{cpu}.busy"));
            let idle_delta = counters.delta(previous.as_ref(), &format!("{cpu}.idle"));
            if let (Some(b), Some(i)) = (busy_delta, idle_delta)
                && b + i > 0.0
            {
                let percent = 100.0 * b / (b + i);
                ctx.gauge("cpu_utilization_percent", percent)
                    .unit("percent")
                    .label("cpu", cpu);
                if cpu == "total" {
                    total_utilisation = Some(percent);
                }
            }
        } else if name == "ctxt" {
            ctx.counter("cpu_context_switches_total", proc::field(line, 1, "ctxt")?);
        } else if name == "processes" {
            ctx.counter("cpu_forks_total", proc::field(line, 1, "processes")?);
        }
    }
    if cpus == 0 {
        return Err("/proc/stat has no cpu lines".into());
    }
    ctx.set_state(counters.encode());
    match total_utilisation {
        None => ctx.ok(format!("{cpus} cpus, utilisation known from the next run")),
        Some(p) => ctx.status_by_levels(p, warn, crit, format!("cpu {p:.1}%, {cpus} cpus")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_plugin_sdk::Level;

    const STAT: &str = include_str!("../tests/fixtures/stat.txt");

    fn run(text: &str, now: f64, state: Option<Vec<u8>>, params: &[(&str, &str)]) -> Context {
        let params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut ctx = Context::new(params, state);
        parse(text, now, &mut ctx).unwrap();
        ctx
    }

    #[test]
    fn jiffies_per_cpu_and_total_from_recorded_stat() {
        let ctx = run(STAT, 100.0, None, &[]);
        assert_eq!(
            ctx.value("cpu_jiffies_total", &[("cpu", "total"), ("mode", "user")]),
            Some(22805.0)
        );
        assert_eq!(
            ctx.value("cpu_jiffies_total", &[("cpu", "cpu1"), ("mode", "idle")]),
            Some(10353.0)
        );
        assert!(
            ctx.value("cpu_utilization_percent", &[]).is_none(),
            "no rate on a first run"
        );
        assert!(ctx.value("cpu_context_switches_total", &[]).unwrap() > 0.0);
        assert_eq!(ctx.current_status().unwrap().0, Level::Ok);
    }

    #[test]
    fn utilisation_from_previous_state() {
        let first = run(
            "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 100 0 100 800 0 0 0 0 0 0\n",
            10.0,
            None,
            &[],
        );
        let state = first.next_state().unwrap().to_vec();
        // 150 busy and 50 idle jiffies since: 75 %.
        let second = run(
            "cpu  200 0 150 850 0 0 0 0 0 0\ncpu0 200 0 150 850 0 0 0 0 0 0\n",
            20.0,
            Some(state),
            &[("warn", "70")],
        );
        assert_eq!(
            second.value("cpu_utilization_percent", &[("cpu", "total")]),
            Some(75.0)
        );
        let (level, text) = second.current_status().unwrap();
        assert_eq!(level, Level::Warn);
        assert!(text.contains("75.0%"), "{text}");
    }

    #[test]
    fn corrupt_state_is_a_first_run_and_bad_jiffies_an_error() {
        let ctx = run(STAT, 1.0, Some(b"garbage".to_vec()), &[]);
        assert!(ctx.value("cpu_utilization_percent", &[]).is_none());
        let mut ctx = Context::new(vec![], None);
        let err = parse("cpu  x 1 2\n", 1.0, &mut ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("jiffies"), "{err}");
        assert!(parse("intr 1 2\n", 1.0, &mut Context::new(vec![], None)).is_err());
    }
}
