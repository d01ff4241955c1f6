#!/usr/bin/env bash
# The receiver's store (tests/benches/store.rs): bytes per stored sample on
# disk, samples/s through the writer, and reading one metric vs a whole
# service over the range. Runs twice: quote the range of both.
set -euo pipefail
cd "$(dirname "$0")/.."
for run in 1 2; do
  echo "run $run:"
  cargo bench -q --profile release --workspace --bench store
done
