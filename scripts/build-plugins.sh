#!/usr/bin/env bash
# Build the plugins and the test fixtures and put them where the example
# config and the tests look:
#   target/plugins/<name>.wasm   core collectors (Rust, lean: built for
#                                wasm32-unknown-unknown and made components),
#                                the examples in C (procstat) and Python
#                                (pressure)
#   target/fixtures/<name>.wasm  misbehaving test plugins (never shipped), and
#                                the core collectors built for WASI too
#                                (<name>-wasi.wasm, for the benchmarks and the
#                                tests of the WASI sandbox)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Lean collectors (ABI 1.1): no WASI imports, one host call per file.
lean=(cpu cpuinfo diskio filesystem loadavg logwatch lvs memory network processes uptime)
# Also built for WASI (<name>-wasi): the benchmarks compare the two
# sandboxes on them, and the WASI sandbox's tests run them.
wasi=(cpu loadavg memory network diskio uptime)
fixtures=(misbehave abi-mismatch abi-1-0 bad-describe)

args=()
for p in "${wasi[@]}"; do args+=(-p "sandglass-plugin-$p"); done
for f in "${fixtures[@]}"; do args+=(-p "sandglass-fixture-$f"); done
cargo build --release --target wasm32-wasip2 "${args[@]}"

out=target/wasm32-wasip2/release
mkdir -p target/plugins target/fixtures
for p in "${wasi[@]}"; do cp "$out/sandglass_plugin_$p.wasm" "target/fixtures/$p-wasi.wasm"; done
# abi-1-0: built against the frozen ABI 1.0.0 WIT (plugins/fixtures/abi-1.0/wit).
for f in "${fixtures[@]}"; do cp "$out/sandglass_fixture_${f//-/_}.wasm" "target/fixtures/$f.wasm"; done

# Lean collectors: the same SDK built for wasm32-unknown-unknown (no WASI),
# then made components by sandglass-componentize (wit-component). misbehave
# is built lean too, as misbehave-lean: the hostile tests run on both.
# A 64 KiB stack (Rust's default is 1 MiB): stack, data and heap then lie in
# the first pages of memory, which the runtime wipes in place between runs
# instead of faulting them in again (crates/runtime/src/lib.rs, instance_pool).
lean_args=(-p sandglass-fixture-misbehave)
for p in "${lean[@]}"; do lean_args+=(-p "sandglass-plugin-$p"); done
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C link-arg=-zstack-size=65536" \
  cargo build --release --target wasm32-unknown-unknown "${lean_args[@]}"
cargo build --release -p sandglass-componentize
componentize=target/release/sandglass-componentize
lean_out=target/wasm32-unknown-unknown/release
for p in "${lean[@]}"; do "$componentize" "$lean_out/sandglass_plugin_$p.wasm" "target/plugins/$p.wasm"; done
"$componentize" "$lean_out/sandglass_fixture_misbehave.wasm" target/fixtures/misbehave-lean.wasm

# C, as a plain WASI command (clang + wasi-libc, installed by setup.sh): the
# example plugin and the command-module test fixture.
c_wasm() { clang --target=wasm32-wasi -Os -Wall -Wl,--strip-all -o "$2" "$1"; }
c_wasm plugins/c/procstat/procstat.c target/plugins/procstat.wasm
c_wasm plugins/c/fixtures/command.c target/fixtures/command.wasm
# The same program as a reactor (a library, no main): must be refused clearly.
clang --target=wasm32-wasi -mexec-model=reactor -Os -Wl,--strip-all -o target/fixtures/reactor.wasm plugins/c/fixtures/command.c

echo "built ${#lean[@]} lean Rust plugins and procstat (C) into target/plugins; fixtures, ${#wasi[@]} WASI builds of core plugins and command (C) into target/fixtures"

# Python, as a component of the collector world (componentize-py from PyPI).
bash scripts/build-python-plugin.sh
