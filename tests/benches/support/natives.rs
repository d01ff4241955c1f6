//! The core collectors' parsers called natively, with the `/proc` file each
//! reads: the baseline a sandboxed run is compared with.

use sandglass_plugin_sdk::Context;

pub type Native = fn(&str, &mut Context);

/// (plugin name, file it reads, its parser).
pub fn natives() -> [(&'static str, &'static str, Native); 6] {
    [
        ("cpu", "/proc/stat", |t, c| {
            sandglass_plugin_cpu::parse(t, 0.0, c).unwrap()
        }),
        ("memory", "/proc/meminfo", |t, c| {
            sandglass_plugin_memory::parse(t, c).unwrap()
        }),
        ("loadavg", "/proc/loadavg", |t, c| {
            sandglass_plugin_loadavg::parse(t, c).unwrap()
        }),
        ("uptime", "/proc/uptime", |t, c| {
            sandglass_plugin_uptime::parse(t, c).unwrap()
        }),
        ("network", "/proc/net/dev", |t, c| {
            sandglass_plugin_network::parse(t, 0.0, c).unwrap()
        }),
        ("diskio", "/proc/diskstats", |t, c| {
            sandglass_plugin_diskio::parse(t, 0.0, c).unwrap()
        }),
    ]
}
