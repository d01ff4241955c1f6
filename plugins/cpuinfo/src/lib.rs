//! CPU inventory collector: `/proc/cpuinfo` — model, logical cpus, physical
//! cores, sockets and current clock per cpu.

use sandglass_plugin_sdk::{Collector, Context, Description, Metric, Result, proc};
use std::collections::BTreeSet;

pub struct CpuInfo;

impl Collector for CpuInfo {
    fn describe() -> Description {
        Description::new("cpuinfo", env!("CARGO_PKG_VERSION"))
            .interval_seconds(300)
            .metric(Metric::gauge(
                "cpuinfo_info",
                "",
                "always 1; the model is a label",
            ))
            .metric(Metric::gauge(
                "cpuinfo_logical_cpus",
                "",
                "processors the kernel lists",
            ))
            .metric(Metric::gauge(
                "cpuinfo_physical_cores",
                "",
                "distinct (socket, core) pairs",
            ))
            .metric(Metric::gauge(
                "cpuinfo_sockets",
                "",
                "distinct physical ids",
            ))
            .metric(Metric::gauge("cpuinfo_mhz", "MHz", "current clock per cpu"))
    }

    fn collect(ctx: &mut Context) -> Result<()> {
        parse(&proc::read("/proc/cpuinfo")?, ctx)
    }
}

sandglass_plugin_sdk::export_collector!(CpuInfo);

/// Parse `/proc/cpuinfo` (blocks of `key : value` lines, one per processor).
pub fn parse(cpuinfo: &str, ctx: &mut Context) -> Result<()> {
    let mut model = None;
    let mut logical = 0u32;
    let mut processor = String::new();
    let mut physical_id = String::new();
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut mhz_sum = 0.0;
    for (key, value) in proc::kv_pairs(cpuinfo) {
        match key {
            "processor" => {
                logical += 1;
                processor = value.to_owned();
            }
            "model name" | "Model" if model.is_none() => model = Some(value.to_owned()),
            "physical id" => {
                physical_id = value.to_owned();
                sockets.insert(physical_id.clone());
            }
            "core id" => {
                cores.insert((physical_id.clone(), value.to_owned()));
            }
            "cpu MHz" => {
                let mhz: f64 = proc::parse(value, "/proc/cpuinfo cpu MHz")?;
                mhz_sum += mhz;
                ctx.gauge("cpuinfo_mhz", mhz)
                    .unit("MHz")
                    .label("cpu", &processor);
            }
            _ => {}
        }
    }
    if logical == 0 {
        return Err("/proc/cpuinfo lists no processor".into());
    }
    let model = model.unwrap_or_else(|| "unknown model".into());
    // Without topology fields (some VMs, non-x86), every logical cpu counts as a core.
    let physical = if cores.is_empty() {
        logical as usize
    } else {
        cores.len()
    };
    let sockets_n = sockets.len().max(1);
    ctx.gauge("cpuinfo_info", 1.0).label("model", &model);
    ctx.gauge("cpuinfo_logical_cpus", logical as f64);
    ctx.gauge("cpuinfo_physical_cores", physical as f64);
    ctx.gauge("cpuinfo_sockets", sockets_n as f64);
    let mhz = if mhz_sum > 0.0 {
        format!(" @ {:.0} MHz", mhz_sum / logical as f64)
    } else {
        String::new()
    };
    ctx.ok(format!(
        "{model}, {logical} cpus, {physical} cores, {sockets_n} sockets{mhz}"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = include_str!("../tests/fixtures/cpuinfo.txt");

    #[test]
    fn recorded_cpuinfo() {
        let mut ctx = Context::new(vec![], None);
        parse(CPUINFO, &mut ctx).unwrap();
        let processors = CPUINFO
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        assert_eq!(
            ctx.value("cpuinfo_logical_cpus", &[]),
            Some(processors as f64)
        );
        let model = CPUINFO
            .lines()
            .find(|l| l.starts_with("model name"))
            .unwrap();
        let model = model.split_once(':').unwrap().1.trim();
        assert_eq!(ctx.value("cpuinfo_info", &[("model", model)]), Some(1.0));
        assert!(ctx.value("cpuinfo_mhz", &[("cpu", "0")]).unwrap() > 0.0);
    }

    #[test]
    fn topology_counts_distinct_cores_and_sockets() {
        let block = |p: u32, phys: u32, core: u32| {
            format!(
                "processor\t: {p}\nmodel name\t: Test CPU\nphysical id\t: {phys}\ncore id\t\t: {core}\ncpu MHz\t\t: 1000.0\n\n"
            )
        };
        // 2 sockets x 2 cores x 2 threads.
        let text: String = (0..8).map(|p| block(p, p / 4, p % 2)).collect();
        let mut ctx = Context::new(vec![], None);
        parse(&text, &mut ctx).unwrap();
        assert_eq!(ctx.value("cpuinfo_physical_cores", &[]), Some(4.0));
        assert_eq!(ctx.value("cpuinfo_sockets", &[]), Some(2.0));
        assert!(parse("", &mut Context::new(vec![], None)).is_err());
    }
}
