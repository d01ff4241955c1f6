#!/usr/bin/env bash
# Status page benchmark: HOSTS simulated hosts (default 10000) in a store
# written by the receiver's own store writer, served by a real receiver;
# prints the answer times of the hosts API, a host's page, a 7-day plot, and
# the time until headless Chromium draws the hosts table.
#   HOSTS=10000 RUNS=20 bash scripts/bench-web.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
cargo bench --profile release --workspace --bench web
