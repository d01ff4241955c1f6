#!/usr/bin/env bash
# The test command: set up the machine, build the plugins and fixtures, run
# every test (unit tests of all crates, integration tests with the real agent
# binary, real plugins and the real /proc). Release mode: wasmtime in debug
# mode is too slow to be worth it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-plugins.sh
cargo test --release --workspace
