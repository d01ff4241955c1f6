//! What the whole-system tests and benchmarks share: where the workspace
//! is, the plugins built from it, and the `agent` and `receiver` binaries.
//!
//! The binaries live in other packages, so `CARGO_BIN_EXE_*` does not reach
//! them here. `cargo test --workspace` (and `cargo bench --workspace`) build
//! both beside this package's test executables, because the agent and the
//! receiver packages have integration tests of their own; [`binary`] finds
//! them there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// Build core plugins and fixtures (a no-op when they are up to date), once
/// per process, so a test never runs against a stale or missing wasm.
pub fn build_plugins() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new("bash")
            .arg(root().join("scripts/build-plugins.sh"))
            .status()
            .expect("run scripts/build-plugins.sh");
        assert!(status.success(), "scripts/build-plugins.sh failed");
    });
}

/// The core collectors `scripts/build-plugins.sh` builds, all lean (ABI 1.1).
pub const CORE_PLUGINS: [&str; 11] = [
    "cpu",
    "cpuinfo",
    "diskio",
    "filesystem",
    "loadavg",
    "logwatch",
    "lvs",
    "memory",
    "network",
    "processes",
    "uptime",
];

/// A core plugin's wasm.
pub fn plugin(name: &str) -> PathBuf {
    build_plugins();
    root().join("target/plugins").join(format!("{name}.wasm"))
}

/// A fixture plugin's wasm.
pub fn fixture(name: &str) -> PathBuf {
    build_plugins();
    root().join("target/fixtures").join(format!("{name}.wasm"))
}

/// The `agent` or `receiver` binary of this build (profile and target):
/// `target/<profile>/<name>`, beside the `deps/` directory that holds the
/// running test or benchmark.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run the tests with `cargo test --release --workspace` \
         (or `cargo build --release -p sandglass-agent -p sandglass-receiver` first)",
        path.display()
    );
    path
}

/// A port on 127.0.0.1 that only this test process hands out, free when
/// handed out. A port from `bind("127.0.0.1:0")` that is let go can be given
/// to any other test's `bind(":0")` before it is used or used again: a
/// receiver restarted on its old port then found it taken, or found another
/// test's agent reporting to it. So these ports come from below the kernel's
/// ephemeral range (which `bind(":0")` never leaves), and a counter keeps
/// the tests of this process apart; the process id spreads two test runs on
/// one machine over the range.
pub fn reserved_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(12_000).max(1024);
    let span = ephemeral_low.saturating_sub(low);
    let base = std::process::id() * 101;
    for _ in 0..span {
        let port = (low + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{}", low + span)
}

/// `127.0.0.1:PORT` with a [`reserved_port`].
pub fn reserved_address() -> String {
    format!("127.0.0.1:{}", reserved_port())
}
