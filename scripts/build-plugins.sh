#!/usr/bin/env bash
# Build the core plugins and the test fixtures for wasm32-wasip2 and put them
# where the example config and the tests look:
#   target/plugins/<name>.wasm   core collectors (cpu, memory, ...)
#   target/fixtures/<name>.wasm  misbehaving test plugins (never shipped)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

core=(cpu cpuinfo diskio loadavg lvs memory network processes uptime)
fixtures=(misbehave abi-mismatch)

args=()
for p in "${core[@]}"; do args+=(-p "sandglass-plugin-$p"); done
for f in "${fixtures[@]}"; do args+=(-p "sandglass-fixture-$f"); done
cargo build --release --target wasm32-wasip2 "${args[@]}"

out=target/wasm32-wasip2/release
mkdir -p target/plugins target/fixtures
for p in "${core[@]}"; do cp "$out/sandglass_plugin_$p.wasm" "target/plugins/$p.wasm"; done
for f in "${fixtures[@]}"; do cp "$out/sandglass_fixture_${f//-/_}.wasm" "target/fixtures/$f.wasm"; done
echo "built ${#core[@]} plugins into target/plugins and ${#fixtures[@]} fixtures into target/fixtures"
