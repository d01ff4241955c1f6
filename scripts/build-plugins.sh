#!/usr/bin/env bash
# Build the plugins and the test fixtures and put them where the example
# config and the tests look:
#   target/plugins/<name>.wasm   core collectors (Rust, wasm32-wasip2), the
#                                examples in C (procstat) and Python (pressure)
#   target/fixtures/<name>.wasm  misbehaving test plugins (never shipped)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

core=(cpu cpuinfo diskio loadavg logwatch lvs memory network processes uptime)
fixtures=(misbehave abi-mismatch)

args=()
for p in "${core[@]}"; do args+=(-p "sandglass-plugin-$p"); done
for f in "${fixtures[@]}"; do args+=(-p "sandglass-fixture-$f"); done
cargo build --release --target wasm32-wasip2 "${args[@]}"

out=target/wasm32-wasip2/release
mkdir -p target/plugins target/fixtures
for p in "${core[@]}"; do cp "$out/sandglass_plugin_$p.wasm" "target/plugins/$p.wasm"; done
for f in "${fixtures[@]}"; do cp "$out/sandglass_fixture_${f//-/_}.wasm" "target/fixtures/$f.wasm"; done

# C, as a plain WASI command (clang + wasi-libc, installed by setup.sh): the
# example plugin and the command-module test fixture.
c_wasm() { clang --target=wasm32-wasi -Os -Wall -Wl,--strip-all -o "$2" "$1"; }
c_wasm plugins/c/procstat/procstat.c target/plugins/procstat.wasm
c_wasm plugins/c/fixtures/command.c target/fixtures/command.wasm
# The same program as a reactor (a library, no main): must be refused clearly.
clang --target=wasm32-wasi -mexec-model=reactor -Os -Wl,--strip-all -o target/fixtures/reactor.wasm plugins/c/fixtures/command.c

echo "built ${#core[@]} Rust plugins and procstat (C) into target/plugins, ${#fixtures[@]} fixtures and command (C) into target/fixtures"

# Python, as a component of the collector world (componentize-py from PyPI).
bash scripts/build-python-plugin.sh
