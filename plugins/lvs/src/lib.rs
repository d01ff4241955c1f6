//! LVS / IPVS collector: virtual services and their real servers from
//! `/proc/net/ip_vs`, and totals from `/proc/net/ip_vs_stats` — what
//! `ipvsadm -ln` shows, without running it.
//!
//! Status: CRIT when a virtual service has no real server with weight > 0,
//! UNKNOWN when IPVS is not loaded.

use sandglass_plugin_sdk::{Collector, Context, Description, Error, Metric, Result, host, proc};
use std::net::{Ipv4Addr, Ipv6Addr};

pub struct Lvs;

impl Collector for Lvs {
    fn describe() -> Description {
        Description::new("lvs", env!("CARGO_PKG_VERSION"))
            .interval_seconds(30)
            .metric(Metric::gauge(
                "lvs_virtual_services",
                "",
                "configured virtual services",
            ))
            .metric(Metric::gauge("lvs_backend_weight", "", "per real server"))
            .metric(Metric::gauge(
                "lvs_backend_active_connections",
                "",
                "per real server",
            ))
            .metric(Metric::gauge(
                "lvs_backend_inactive_connections",
                "",
                "per real server",
            ))
            .metric(Metric::counter(
                "lvs_connections_total",
                "",
                "from /proc/net/ip_vs_stats",
            ))
            .metric(Metric::counter("lvs_incoming_packets_total", "packets", ""))
            .metric(Metric::counter("lvs_outgoing_packets_total", "packets", ""))
            .metric(Metric::counter("lvs_incoming_bytes_total", "bytes", ""))
            .metric(Metric::counter("lvs_outgoing_bytes_total", "bytes", ""))
    }

    fn collect(ctx: &mut Context) -> Result<()> {
        let Some(table) = host::read_if_exists("/proc/net/ip_vs")? else {
            ctx.status(
                sandglass_plugin_sdk::Level::Unknown,
                "IPVS is not loaded: /proc/net/ip_vs does not exist",
            );
            return Ok(());
        };
        let table =
            String::from_utf8(table).map_err(|_| Error::new("/proc/net/ip_vs: not UTF-8 text"))?;
        parse_stats(&proc::read("/proc/net/ip_vs_stats")?, ctx)?;
        parse_table(&table, ctx)
    }
}

sandglass_plugin_sdk::export_collector!(Lvs);

/// Parse `/proc/net/ip_vs`: one line per virtual service, `  -> ` lines for
/// its real servers. Sets the status.
pub fn parse_table(text: &str, ctx: &mut Context) -> Result<()> {
    let mut services = 0;
    let mut without_backend = Vec::new();
    let mut current: Option<(String, String, bool)> = None; // (proto, address, has live backend)
    for line in text.lines().skip(3).filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields[0] == "->" {
            let (protocol, virtual_addr, live) = current.as_mut().ok_or_else(|| {
                Error::new(format!(
                    "/proc/net/ip_vs: real server before any service: {line:?}"
                ))
            })?;
            if fields.len() < 6 {
                return Err(format!("/proc/net/ip_vs: short real server line {line:?}").into());
            }
            let backend = address(fields[1])?;
            let weight: f64 = proc::parse(fields[3], "weight")?;
            *live |= weight > 0.0;
            for (metric, value) in [
                ("lvs_backend_weight", weight),
                (
                    "lvs_backend_active_connections",
                    proc::parse(fields[4], "ActiveConn")?,
                ),
                (
                    "lvs_backend_inactive_connections",
                    proc::parse(fields[5], "InActConn")?,
                ),
            ] {
                ctx.gauge(metric, value)
                    .label("protocol", protocol)
                    .label("virtual", virtual_addr)
                    .label("backend", &backend)
                    .label("forward", fields[2]);
            }
        } else {
            if let Some((p, v, false)) = current.take() {
                without_backend.push(format!("{p} {v}"));
            }
            let protocol = fields[0].to_owned();
            let target = *fields
                .get(1)
                .ok_or_else(|| format!("/proc/net/ip_vs: short service line {line:?}"))?;
            let virtual_addr = if protocol == "FWM" {
                format!(
                    "fwmark {}",
                    u32::from_str_radix(target, 16)
                        .map_err(|_| Error::parse("/proc/net/ip_vs", "fwmark"))?
                )
            } else {
                address(target)?
            };
            services += 1;
            current = Some((protocol, virtual_addr, false));
        }
    }
    if let Some((p, v, false)) = current {
        without_backend.push(format!("{p} {v}"));
    }
    ctx.gauge("lvs_virtual_services", services as f64);
    if without_backend.is_empty() {
        ctx.ok(format!(
            "{services} virtual services, all with a live real server"
        ));
    } else {
        ctx.crit(format!(
            "no live real server for {}",
            without_backend.join(", ")
        ));
    }
    Ok(())
}

/// Parse `/proc/net/ip_vs_stats`: the third line holds the hex totals.
pub fn parse_stats(text: &str, ctx: &mut Context) -> Result<()> {
    let totals = text
        .lines()
        .nth(2)
        .ok_or_else(|| Error::parse("/proc/net/ip_vs_stats", "totals line"))?;
    let names = [
        ("lvs_connections_total", ""),
        ("lvs_incoming_packets_total", "packets"),
        ("lvs_outgoing_packets_total", "packets"),
        ("lvs_incoming_bytes_total", "bytes"),
        ("lvs_outgoing_bytes_total", "bytes"),
    ];
    let values: Vec<&str> = totals.split_ascii_whitespace().collect();
    if values.len() != names.len() {
        return Err(Error::parse("/proc/net/ip_vs_stats", "5 totals"));
    }
    for ((metric, unit), hex) in names.iter().zip(values) {
        let value = u64::from_str_radix(hex, 16)
            .map_err(|_| Error::parse("/proc/net/ip_vs_stats", metric))?;
        ctx.counter(metric, value as f64).unit(unit);
    }
    Ok(())
}

/// `C0A80001:0050` -> `192.168.0.1:80`; `[2001:0db8:...]:01BB` -> `[2001:db8::1]:443`.
fn address(text: &str) -> Result<String> {
    let bad = || Error::new(format!("/proc/net/ip_vs: cannot parse address {text:?}"));
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port = u16::from_str_radix(port, 16).map_err(|_| bad())?;
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: Ipv6Addr = v6.parse().map_err(|_| bad())?;
        Ok(format!("[{ip}]:{port}"))
    } else {
        let ip = Ipv4Addr::from(u32::from_str_radix(host, 16).map_err(|_| bad())?);
        Ok(format!("{ip}:{port}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_plugin_sdk::Level;

    const TABLE: &str = include_str!("../tests/fixtures/ip_vs.txt");
    const STATS: &str = include_str!("../tests/fixtures/ip_vs_stats.txt");

    #[test]
    fn services_and_real_servers() {
        let mut ctx = Context::new(vec![], None);
        parse_table(TABLE, &mut ctx).unwrap();
        assert_eq!(ctx.value("lvs_virtual_services", &[]), Some(4.0));
        let b = [
            ("virtual", "192.168.0.1:80"),
            ("backend", "192.168.0.11:80"),
            ("forward", "Route"),
        ];
        assert_eq!(ctx.value("lvs_backend_weight", &b), Some(3.0));
        assert_eq!(ctx.value("lvs_backend_inactive_connections", &b), Some(7.0));
        let v6 = [
            ("virtual", "[2001:db8::1]:443"),
            ("backend", "[2001:db8::aa]:443"),
        ];
        assert_eq!(ctx.value("lvs_backend_active_connections", &v6), Some(2.0));
        let (level, text) = ctx.current_status().unwrap();
        assert_eq!(level, Level::Crit);
        // UDP service has only a weight-0 server, the fwmark service none at all.
        assert_eq!(
            text,
            "no live real server for UDP 10.0.0.1:53, FWM fwmark 1"
        );
    }

    #[test]
    fn stats_are_hex() {
        let mut ctx = Context::new(vec![], None);
        parse_stats(STATS, &mut ctx).unwrap();
        assert_eq!(ctx.value("lvs_connections_total", &[]), Some(31.0));
        assert_eq!(ctx.value("lvs_incoming_packets_total", &[]), Some(940.0));
        assert_eq!(ctx.value("lvs_incoming_bytes_total", &[]), Some(120000.0));
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let bad = "h\nh\nh\nTCP  ZZZZ:0050 rr\n";
        let err = parse_table(bad, &mut Context::new(vec![], None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/proc/net/ip_vs") && err.contains("ZZZZ"),
            "{err}"
        );
        let err = parse_table(
            "h\nh\nh\n  -> C0A8000A:0050 Masq 1 0 0\n",
            &mut Context::new(vec![], None),
        )
        .unwrap_err();
        assert!(err.to_string().contains("before any service"));
        assert!(parse_stats("x\ny\n1 2\n", &mut Context::new(vec![], None)).is_err());
    }
}
