#!/usr/bin/env bash
# Remote-write throughput (samples/s from a filled store into a real
# VictoriaMetrics, RUNS runs) and the catch-up after a VictoriaMetrics
# outage of OUTAGE_SECS with AGENTS real agents reporting; see
# scripts/bench-remote-write.py.
#
#   REPORTS=200000 RUNS=2 AGENTS=4 OUTAGE_SECS=60 bash scripts/bench-remote-write.sh
#
# SKIP_BUILD=1 uses the binaries and plugins already in target/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${SKIP_BUILD:-}" ]; then
  bash scripts/build-plugins.sh >/dev/null
  bash scripts/build.sh
fi
python3 scripts/bench-remote-write.py
