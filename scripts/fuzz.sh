#!/usr/bin/env bash
# Fuzz the receiver's frame decoder and message parser (tests/fuzz.rs) for
# SECS seconds (default 600), with a random seed it prints; findings are
# saved under target/fuzz-findings/. Repeat a run: SANDGLASS_FUZZ_SEED=N.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
SANDGLASS_FUZZ_SECS=$secs cargo test --release -p sandglass-protocol --test fuzz -- --nocapture 2>&1 |
  grep -E "fuzz:|panicked|finding|test result"
