#!/usr/bin/env bash
# Criterion benchmarks of the hot paths (tests/benches/hot_paths.rs): sandbox
# entry, each core collector in the sandbox vs its native parser, batch
# encoding, spool append, receiver decode + store. Criterion keeps each
# run's figures in target/criterion/ and prints the change since the last.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-plugins.sh >/dev/null
cargo bench --profile release --workspace --bench hot_paths -- "$@"
