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
