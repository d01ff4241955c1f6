#!/usr/bin/env bash
# Build the `agent` and `receiver` binaries into target/release, with the
# very cargo invocation the test command compiles with.
#
# Why not `cargo build -p sandglass-agent -p sandglass-receiver`: cargo
# resolves dependency features per invocation. `cargo test --workspace` also
# builds the plugins natively and the tests' dev-dependencies, which turn on
# more features of crates wasmtime depends on (indexmap, regex); a plain
# `cargo build` would then compile wasmtime and 28 other crates a second
# time. One invocation, one set of compiled dependencies: the demo after the
# tests, or the tests after the demo, compile nothing again.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace --no-run --quiet
