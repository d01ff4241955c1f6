//! {{project-name}}: a Sandglass collector plugin.
//!
//! Reports the kernel's file handles from `/proc/sys/fs/file-nr`
//! (`allocated  unused  max`). Params: `warn` and `crit`, the share of the
//! maximum in use (percent) that makes the status WARN / CRIT (80 / 90).
//!
//! The shape every plugin has: `describe` says what it is and what it emits;
//! `collect` reads, then hands the text to `parse`, a plain function that the
//! tests call on recorded input.

use sandglass_plugin_sdk::{Collector, Context, Description, Metric, Result, proc};

pub struct Plugin;

impl Collector for Plugin {
    fn describe() -> Description {
        Description::new("{{project-name}}", env!("CARGO_PKG_VERSION"))
            .interval_seconds(60)
            .metric(Metric::gauge(
                "file_handles_allocated",
                "",
                "file handles allocated",
            ))
            .metric(Metric::gauge(
                "file_handles_max",
                "",
                "the kernel's limit (fs.file-max)",
            ))
            .metric(Metric::gauge(
                "file_handles_used",
                "percent",
                "allocated handles as a share of the limit",
            ))
    }

    fn collect(ctx: &mut Context) -> Result<()> {
        parse(&proc::read("/proc/sys/fs/file-nr")?, ctx)
    }
}

sandglass_plugin_sdk::export_collector!(Plugin);

/// Parse `/proc/sys/fs/file-nr` into samples and a status.
pub fn parse(text: &str, ctx: &mut Context) -> Result<()> {
    let warn: f64 = ctx.param_or("warn", 80.0)?;
    let crit: f64 = ctx.param_or("crit", 90.0)?;
    let allocated: f64 = proc::field(text, 0, "file-nr allocated")?;
    let max: f64 = proc::field(text, 2, "file-nr max")?;
    let used = if max > 0.0 {
        100.0 * allocated / max
    } else {
        0.0
    };
    ctx.gauge("file_handles_allocated", allocated);
    ctx.gauge("file_handles_max", max);
    ctx.gauge("file_handles_used", used).unit("percent");
    ctx.status_by_levels(
        used,
        warn,
        crit,
        format!("{allocated} file handles, {used:.2}% of the limit"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_plugin_sdk::Level;

    /// The parser on text recorded from a real host.
    #[test]
    fn recorded_file_nr() {
        let mut ctx = Context::new(vec![], None);
        parse(include_str!("../tests/fixtures/file-nr.txt"), &mut ctx).unwrap();
        assert_eq!(ctx.value("file_handles_allocated", &[]), Some(10432.0));
        assert_eq!(
            ctx.value("file_handles_max", &[]),
            Some(9223372036854775807.0)
        );
        assert_eq!(ctx.current_status().unwrap().0, Level::Ok);
    }

    /// Thresholds come from the service's params.
    #[test]
    fn thresholds() {
        let params = vec![
            ("warn".to_owned(), "40".to_owned()),
            ("crit".to_owned(), "60".to_owned()),
        ];
        let mut ctx = Context::new(params, None);
        parse("500 0 1000\n", &mut ctx).unwrap();
        assert_eq!(ctx.value("file_handles_used", &[]), Some(50.0));
        assert_eq!(ctx.current_status().unwrap().0, Level::Warn);
    }

    /// Garbage is an error naming what was expected, not a made-up value.
    #[test]
    fn garbage() {
        let err = parse("nonsense\n", &mut Context::new(vec![], None)).unwrap_err();
        assert!(err.to_string().contains("file-nr"), "{err}");
    }
}
