//! Uptime collector, the host's liveness service: `/proc/uptime`.
//!
//! A host whose uptime service stops reporting is UNREACHABLE on the receiver;
//! a reboot shows as uptime going down.

use sandglass_plugin_sdk::{Collector, Context, Description, Metric, Result, proc};

pub struct Uptime;

impl Collector for Uptime {
    fn describe() -> Description {
        Description::new("uptime", env!("CARGO_PKG_VERSION"))
            .interval_seconds(30)
            .metric(Metric::gauge(
                "uptime_seconds",
                "seconds",
                "time since boot",
            ))
            .metric(Metric::counter(
                "uptime_idle_seconds_total",
                "seconds",
                "idle time summed over cpus",
            ))
    }

    fn collect(ctx: &mut Context) -> Result<()> {
        parse(&proc::read("/proc/uptime")?, ctx)
    }
}

sandglass_plugin_sdk::export_collector!(Uptime);

/// Parse `/proc/uptime` (`12345.67 23456.78`).
pub fn parse(uptime: &str, ctx: &mut Context) -> Result<()> {
    let up: f64 = proc::field(uptime, 0, "/proc/uptime uptime")?;
    let idle: f64 = proc::field(uptime, 1, "/proc/uptime idle")?;
    ctx.gauge("uptime_seconds", up).unit("seconds");
    ctx.counter("uptime_idle_seconds_total", idle)
        .unit("seconds");
    ctx.ok(format!("up {}", human(up)));
    Ok(())
}

/// `3 days 04:05` style.
fn human(seconds: f64) -> String {
    let s = seconds as u64;
    let (days, hours, minutes) = (s / 86400, s % 86400 / 3600, s % 3600 / 60);
    match days {
        0 => format!("{hours:02}:{minutes:02}"),
        1 => format!("1 day {hours:02}:{minutes:02}"),
        _ => format!("{days} days {hours:02}:{minutes:02}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_uptime() {
        let text = include_str!("../tests/fixtures/uptime.txt");
        let mut ctx = Context::new(vec![], None);
        parse(text, &mut ctx).unwrap();
        let expected: f64 = text.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(ctx.value("uptime_seconds", &[]), Some(expected));
    }

    #[test]
    fn human_text_and_garbage() {
        let mut ctx = Context::new(vec![], None);
        parse("273900.5 10.0\n", &mut ctx).unwrap();
        assert_eq!(ctx.current_status().unwrap().1, "up 3 days 04:05");
        assert!(parse("x y\n", &mut Context::new(vec![], None)).is_err());
    }
}
