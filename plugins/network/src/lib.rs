//! Network collector: `/proc/net/dev` — per interface byte, packet, error and
//! drop counters, and byte/packet rates from the previous run (state).
//!
//! Params: `exclude` — comma-separated interface names to skip (default none).

use sandglass_plugin_sdk::state::{self, Counters};
use sandglass_plugin_sdk::{Collector, Context, Description, Metric, Result, proc};

/// Columns of `/proc/net/dev` after the interface name that are reported:
/// (column index, metric name, unit).
const COLUMNS: [(usize, &str, &str); 8] = [
    (0, "net_rx_bytes_total", "bytes"),
    (1, "net_rx_packets_total", "packets"),
    (2, "net_rx_errors_total", "packets"),
    (3, "net_rx_dropped_total", "packets"),
    (8, "net_tx_bytes_total", "bytes"),
    (9, "net_tx_packets_total", "packets"),
    (10, "net_tx_errors_total", "packets"),
    (11, "net_tx_dropped_total", "packets"),
];

/// Rates derived from counters: (counter, rate metric, unit).
const RATES: [(&str, &str, &str); 4] = [
    ("net_rx_bytes_total", "net_rx_bytes_per_second", "bytes/s"),
    ("net_tx_bytes_total", "net_tx_bytes_per_second", "bytes/s"),
    (
        "net_rx_packets_total",
        "net_rx_packets_per_second",
        "packets/s",
    ),
    (
        "net_tx_packets_total",
        "net_tx_packets_per_second",
        "packets/s",
    ),
];

pub struct Network;

impl Collector for Network {
    fn describe() -> Description {
        let mut d = Description::new("network", env!("CARGO_PKG_VERSION")).interval_seconds(10);
        for (_, name, unit) in COLUMNS {
            d = d.metric(Metric::counter(
                name,
                unit,
                "per interface, from /proc/net/dev",
            ));
        }
        for (_, name, unit) in RATES {
            d = d.metric(Metric::gauge(
                name,
                unit,
                "per interface, since the previous run",
            ));
        }
        d
    }

    fn collect(ctx: &mut Context) -> Result<()> {
        parse(&proc::read("/proc/net/dev")?, state::now(), ctx)
    }
}

sandglass_plugin_sdk::export_collector!(Network);

/// Parse `/proc/net/dev` read at `now`.
pub fn parse(net_dev: &str, now: f64, ctx: &mut Context) -> Result<()> {
    let exclude: Vec<String> = ctx
        .param("exclude")
        .map(|list| list.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default();
    let previous = ctx.previous_state().and_then(Counters::decode);
    let mut counters = Counters::new(now);
    let mut interfaces = 0;
    let mut errors = Vec::new();
    // The first two lines are headers; data lines are `  eth0: 1 2 3 ...`.
    for line in net_dev.lines().skip(2) {
        let (name, values) = line
            .split_once(':')
            .ok_or_else(|| format!("/proc/net/dev: no interface name in {line:?}"))?;
        let name = name.trim();
        if exclude.iter().any(|e| e == name) {
            continue;
        }
        interfaces += 1;
        let values: Vec<&str> = values.split_ascii_whitespace().collect();
        for (column, metric, unit) in COLUMNS {
            let text = values
                .get(column)
                .ok_or_else(|| format!("/proc/net/dev: {name} has no column {column}"))?;
            let value: f64 = proc::parse(text, metric)?;
            ctx.counter(metric, value)
                .unit(unit)
                .label("interface", name);
            counters.set(&format!("{name}.{metric}"), value);
            if metric.contains("errors") && value > 0.0 {
                errors.push(name);
            }
        }
        for (counter, metric, unit) in RATES {
            if let Some(rate) = counters.rate(previous.as_ref(), &format!("{name}.{counter}")) {
                ctx.gauge(metric, rate).unit(unit).label("interface", name);
            }
        }
    }
    ctx.set_state(counters.encode());
    errors.dedup();
    if errors.is_empty() {
        ctx.ok(format!("{interfaces} interfaces"));
    } else {
        ctx.warn(format!(
            "{interfaces} interfaces, errors on {}",
            errors.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_plugin_sdk::Level;

    const NET_DEV: &str = include_str!("../tests/fixtures/net_dev.txt");

    #[test]
    fn recorded_counters_per_interface() {
        let mut ctx = Context::new(vec![("exclude".into(), "ifb0, ifb1".into())], None);
        parse(NET_DEV, 1.0, &mut ctx).unwrap();
        assert_eq!(
            ctx.value("net_rx_bytes_total", &[("interface", "lo")]),
            Some(3193.0)
        );
        assert_eq!(
            ctx.value("net_tx_packets_total", &[("interface", "eth0")]),
            Some(2662.0)
        );
        assert_eq!(
            ctx.value("net_rx_bytes_total", &[("interface", "ifb0")]),
            None
        );
        assert_eq!(ctx.current_status().unwrap(), (Level::Ok, "2 interfaces"));
    }

    #[test]
    fn rates_from_previous_state() {
        let header = "h1\nh2\n";
        let first = format!("{header}  eth0: 1000 10 0 0 0 0 0 0 500 5 0 0 0 0 0 0\n");
        let second = format!("{header}  eth0: 3000 30 0 0 0 0 0 0 900 9 1 0 0 0 0 0\n");
        let mut ctx = Context::new(vec![], None);
        parse(&first, 100.0, &mut ctx).unwrap();
        let state = ctx.next_state().unwrap().to_vec();
        let mut ctx = Context::new(vec![], Some(state));
        parse(&second, 102.0, &mut ctx).unwrap();
        assert_eq!(
            ctx.value("net_rx_bytes_per_second", &[("interface", "eth0")]),
            Some(1000.0)
        );
        assert_eq!(
            ctx.value("net_tx_packets_per_second", &[("interface", "eth0")]),
            Some(2.0)
        );
        assert_eq!(ctx.current_status().unwrap().0, Level::Warn);
    }

    #[test]
    fn short_line_is_an_error() {
        let err = parse("h\nh\n eth0: 1 2 3\n", 1.0, &mut Context::new(vec![], None)).unwrap_err();
        assert!(err.to_string().contains("eth0"), "{err}");
    }
}
