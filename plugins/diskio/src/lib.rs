//! Disk I/O collector: `/proc/diskstats` — per device operations, bytes and
//! busy time (counters), and throughput and utilisation from the previous run.
//!
//! Params: `exclude_prefix` — comma-separated device name prefixes to skip
//! (default `loop,ram`: pseudo devices that only add noise).

use sandglass_plugin_sdk::state::{self, Counters};
use sandglass_plugin_sdk::{Collector, Context, Description, Metric, Result, proc};

/// The kernel counts disk sectors in 512-byte units regardless of the device.
const SECTOR_BYTES: f64 = 512.0;

/// Counters reported: (field index in the line, metric, unit, scale).
const COUNTERS: [(usize, &str, &str, f64); 6] = [
    (3, "disk_reads_total", "", 1.0),
    (5, "disk_read_bytes_total", "bytes", SECTOR_BYTES),
    (7, "disk_writes_total", "", 1.0),
    (9, "disk_written_bytes_total", "bytes", SECTOR_BYTES),
    (12, "disk_io_seconds_total", "seconds", 0.001),
    (13, "disk_io_weighted_seconds_total", "seconds", 0.001),
];

pub struct DiskIo;

impl Collector for DiskIo {
    fn describe() -> Description {
        let mut d = Description::new("diskio", env!("CARGO_PKG_VERSION")).interval_seconds(10);
        for (_, name, unit, _) in COUNTERS {
            d = d.metric(Metric::counter(
                name,
                unit,
                "per device, from /proc/diskstats",
            ));
        }
        d.metric(Metric::gauge(
            "disk_io_in_progress",
            "",
            "requests in flight",
        ))
        .metric(Metric::gauge(
            "disk_read_bytes_per_second",
            "bytes/s",
            "since the previous run",
        ))
        .metric(Metric::gauge(
            "disk_written_bytes_per_second",
            "bytes/s",
            "since the previous run",
        ))
        .metric(Metric::gauge(
            "disk_utilization_percent",
            "percent",
            "busy time share since the previous run",
        ))
    }

    fn collect(ctx: &mut Context) -> Result<()> {
        parse(&proc::read("/proc/diskstats")?, state::now(), ctx)
    }
}

sandglass_plugin_sdk::export_collector!(DiskIo);

/// Parse `/proc/diskstats` read at `now`.
pub fn parse(diskstats: &str, now: f64, ctx: &mut Context) -> Result<()> {
    let prefixes: Vec<String> = ctx
        .param("exclude_prefix")
        .unwrap_or("loop,ram")
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let previous = ctx.previous_state().and_then(Counters::decode);
    let mut counters = Counters::new(now);
    let mut devices = 0;
    let mut busiest: Option<(String, f64)> = None;
    for line in diskstats.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let name = *fields
            .get(2)
            .ok_or_else(|| format!("/proc/diskstats: short line {line:?}"))?;
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            continue;
        }
        if fields.len() < 14 {
            return Err(format!(
                "/proc/diskstats: {name} has {} fields, expected at least 14",
                fields.len()
            )
            .into());
        }
        devices += 1;
        for (index, metric, unit, scale) in COUNTERS {
            let value = proc::parse::<f64>(fields[index], metric)? * scale;
            ctx.counter(metric, value).unit(unit).label("device", name);
            counters.set(&format!("{name}.{metric}"), value);
        }
        ctx.gauge(
            "disk_io_in_progress",
            proc::parse(fields[11], "ios in progress")?,
        )
        .label("device", name);
        let key = |metric: &str| format!("{name}.{metric}");
        if let Some(rate) = counters.rate(previous.as_ref(), &key("disk_read_bytes_total")) {
            ctx.gauge("disk_read_bytes_per_second", rate)
                .unit("bytes/s")
                .label("device", name);
        }
        if let Some(rate) = counters.rate(previous.as_ref(), &key("disk_written_bytes_total")) {
            ctx.gauge("disk_written_bytes_per_second", rate)
                .unit("bytes/s")
                .label("device", name);
        }
        if let Some(busy) = counters.rate(previous.as_ref(), &key("disk_io_seconds_total")) {
            let percent = (100.0 * busy).min(100.0);
            ctx.gauge("disk_utilization_percent", percent)
                .unit("percent")
                .label("device", name);
            if busiest.as_ref().is_none_or(|(_, p)| percent > *p) {
                busiest = Some((name.to_owned(), percent));
            }
        }
    }
    ctx.set_state(counters.encode());
    match busiest {
        Some((device, percent)) => {
            ctx.ok(format!("{devices} devices, busiest {device} {percent:.1}%"))
        }
        None => ctx.ok(format!("{devices} devices")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISKSTATS: &str = include_str!("../tests/fixtures/diskstats.txt");

    #[test]
    fn recorded_diskstats_skip_loop_devices() {
        let mut ctx = Context::new(vec![], None);
        parse(DISKSTATS, 1.0, &mut ctx).unwrap();
        assert!(
            ctx.samples()
                .all(|(_, _, labels)| !labels[0].1.starts_with("loop"))
        );
        let vda = DISKSTATS
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("vda"))
            .unwrap();
        let sectors: f64 = vda.split_whitespace().nth(5).unwrap().parse().unwrap();
        assert_eq!(
            ctx.value("disk_read_bytes_total", &[("device", "vda")]),
            Some(sectors * 512.0)
        );
    }

    #[test]
    fn throughput_and_utilisation_from_state() {
        let line = |sectors_read: u64, io_ms: u64| {
            format!(" 254 0 vda 10 0 {sectors_read} 5 20 0 40 9 0 {io_ms} 30 0 0 0 0\n")
        };
        let mut ctx = Context::new(vec![], None);
        parse(&line(1000, 100), 10.0, &mut ctx).unwrap();
        let state = ctx.next_state().unwrap().to_vec();
        let mut ctx = Context::new(vec![], Some(state));
        parse(&line(3000, 600), 12.0, &mut ctx).unwrap();
        assert_eq!(
            ctx.value("disk_read_bytes_per_second", &[("device", "vda")]),
            Some(512000.0)
        );
        assert_eq!(
            ctx.value("disk_utilization_percent", &[("device", "vda")]),
            Some(25.0)
        );
    }

    #[test]
    fn short_line_names_the_device() {
        let err = parse(" 8 0 sda 1 2 3\n", 1.0, &mut Context::new(vec![], None)).unwrap_err();
        assert!(err.to_string().contains("sda"), "{err}");
    }
}
