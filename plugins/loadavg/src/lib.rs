//! Load collector: `/proc/loadavg` — 1, 5 and 15 minute load averages and
//! runnable / total scheduling entities.
//!
//! Params: `warn` and `crit` — thresholds on the 1-minute load (no default:
//! load is only meaningful against the host's cpu count, which the operator knows).

use sandglass_plugin_sdk::{Collector, Context, Description, Metric, Result, proc};

pub struct Loadavg;

impl Collector for Loadavg {
    fn describe() -> Description {
        Description::new("loadavg", env!("CARGO_PKG_VERSION"))
            .interval_seconds(30)
            .metric(Metric::gauge("load1", "", "1-minute load average"))
            .metric(Metric::gauge("load5", "", "5-minute load average"))
            .metric(Metric::gauge("load15", "", "15-minute load average"))
            .metric(Metric::gauge(
                "load_runnable",
                "",
                "runnable scheduling entities",
            ))
            .metric(Metric::gauge(
                "load_entities",
                "",
                "existing scheduling entities",
            ))
    }

    fn collect(ctx: &mut Context) -> Result<()> {
        parse(&proc::read("/proc/loadavg")?, ctx)
    }
}

sandglass_plugin_sdk::export_collector!(Loadavg);

/// Parse `/proc/loadavg` (`0.42 0.30 0.10 2/345 6789`).
pub fn parse(loadavg: &str, ctx: &mut Context) -> Result<()> {
    let warn: f64 = ctx.param_or("warn", f64::INFINITY)?;
    let crit: f64 = ctx.param_or("crit", f64::INFINITY)?;
    let load1: f64 = proc::field(loadavg, 0, "/proc/loadavg load1")?;
    let load5: f64 = proc::field(loadavg, 1, "/proc/loadavg load5")?;
    let load15: f64 = proc::field(loadavg, 2, "/proc/loadavg load15")?;
    let entities: String = proc::field(loadavg, 3, "/proc/loadavg runnable/total")?;
    let (runnable, total) = entities
        .split_once('/')
        .ok_or_else(|| format!("/proc/loadavg: expected runnable/total, got {entities:?}"))?;
    ctx.gauge("load1", load1);
    ctx.gauge("load5", load5);
    ctx.gauge("load15", load15);
    ctx.gauge("load_runnable", proc::parse(runnable, "runnable entities")?);
    ctx.gauge("load_entities", proc::parse(total, "total entities")?);
    ctx.status_by_levels(
        load1,
        warn,
        crit,
        format!("load {load1:.2} {load5:.2} {load15:.2}"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_plugin_sdk::Level;

    #[test]
    fn recorded_loadavg() {
        let text = include_str!("../tests/fixtures/loadavg.txt");
        let mut ctx = Context::new(vec![], None);
        parse(text, &mut ctx).unwrap();
        let expected: f64 = text.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(ctx.value("load1", &[]), Some(expected));
        assert!(ctx.value("load_entities", &[]).unwrap() >= 1.0);
    }

    #[test]
    fn thresholds_and_garbage() {
        let mut ctx = Context::new(
            vec![("warn".into(), "2".into()), ("crit".into(), "4".into())],
            None,
        );
        parse("3.00 1.00 0.50 2/100 999\n", &mut ctx).unwrap();
        assert_eq!(ctx.current_status().unwrap().0, Level::Warn);
        let err = parse("1.0 2.0 3.0 nonsense 1\n", &mut Context::new(vec![], None)).unwrap_err();
        assert!(err.to_string().contains("runnable/total"), "{err}");
        assert!(parse("", &mut Context::new(vec![], None)).is_err());
    }
}
