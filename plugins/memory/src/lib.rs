//! Memory collector: `/proc/meminfo` in bytes, and used memory in percent of
//! total (from `MemAvailable`).
//!
//! Params: `warn` and `crit` — used percent thresholds (defaults 90 and 95).

use sandglass_plugin_sdk::{Collector, Context, Description, Metric, Result, proc};

/// `/proc/meminfo` keys reported, and the metric name each becomes.
const FIELDS: [(&str, &str); 12] = [
    ("MemTotal", "memory_total_bytes"),
    ("MemFree", "memory_free_bytes"),
    ("MemAvailable", "memory_available_bytes"),
    ("Buffers", "memory_buffers_bytes"),
    ("Cached", "memory_cached_bytes"),
    ("Shmem", "memory_shared_bytes"),
    ("Slab", "memory_slab_bytes"),
    ("Dirty", "memory_dirty_bytes"),
    ("SwapTotal", "memory_swap_total_bytes"),
    ("SwapFree", "memory_swap_free_bytes"),
    ("Committed_AS", "memory_committed_bytes"),
    ("HugePages_Total", "memory_hugepages_total"),
];

pub struct Memory;

impl Collector for Memory {
    fn describe() -> Description {
        let mut d = Description::new("memory", env!("CARGO_PKG_VERSION")).interval_seconds(30);
        for (key, metric) in FIELDS {
            d = d.metric(Metric::gauge(metric, "bytes", key));
        }
        d.metric(Metric::gauge(
            "memory_used_percent",
            "percent",
            "100 * (1 - MemAvailable / MemTotal)",
        ))
    }

    fn collect(ctx: &mut Context) -> Result<()> {
        parse(&proc::read("/proc/meminfo")?, ctx)
    }
}

sandglass_plugin_sdk::export_collector!(Memory);

/// Parse `/proc/meminfo` into samples and status.
pub fn parse(meminfo: &str, ctx: &mut Context) -> Result<()> {
    let warn: f64 = ctx.param_or("warn", 90.0)?;
    let crit: f64 = ctx.param_or("crit", 95.0)?;
    let (mut total, mut available) = (None, None);
    for (key, value) in proc::kv_pairs(meminfo) {
        let Some((_, metric)) = FIELDS.iter().find(|(k, _)| *k == key) else {
            continue;
        };
        let bytes = proc::kv_u64(value)
            .ok_or_else(|| format!("/proc/meminfo: cannot parse {key}: {value:?}"))?;
        let unit = if value.ends_with("kB") { "bytes" } else { "" };
        ctx.gauge(metric, bytes as f64).unit(unit);
        match key {
            "MemTotal" => total = Some(bytes as f64),
            "MemAvailable" => available = Some(bytes as f64),
            _ => {}
        }
    }
    let total = total
        .filter(|t| *t > 0.0)
        .ok_or("/proc/meminfo has no MemTotal")?;
    let Some(available) = available else {
        ctx.ok(format!(
            "total {}, MemAvailable not reported by this kernel",
            human(total)
        ));
        return Ok(());
    };
    let used = 100.0 * (1.0 - available / total);
    ctx.gauge("memory_used_percent", used).unit("percent");
    let text = format!(
        "used {used:.1}% of {}, {} available",
        human(total),
        human(available)
    );
    ctx.status_by_levels(used, warn, crit, text);
    Ok(())
}

fn human(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_plugin_sdk::Level;

    const MEMINFO: &str = include_str!("../tests/fixtures/meminfo.txt");

    #[test]
    fn recorded_meminfo_in_bytes() {
        let mut ctx = Context::new(vec![], None);
        parse(MEMINFO, &mut ctx).unwrap();
        let total_kb: f64 = MEMINFO
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            ctx.value("memory_total_bytes", &[]),
            Some(total_kb * 1024.0)
        );
        let used = ctx.value("memory_used_percent", &[]).unwrap();
        assert!((0.0..100.0).contains(&used), "{used}");
        assert_eq!(ctx.current_status().unwrap().0, Level::Ok);
    }

    #[test]
    fn thresholds_and_missing_total() {
        let text = "MemTotal: 1000 kB\nMemAvailable: 40 kB\n";
        let mut ctx = Context::new(vec![], None);
        parse(text, &mut ctx).unwrap();
        assert_eq!(ctx.value("memory_used_percent", &[]), Some(96.0));
        assert_eq!(ctx.current_status().unwrap().0, Level::Crit);
        assert!(parse("MemFree: 1 kB\n", &mut Context::new(vec![], None)).is_err());
        let err = parse("MemTotal: lots kB\n", &mut Context::new(vec![], None)).unwrap_err();
        assert!(err.to_string().contains("MemTotal"), "{err}");
    }
}
