#!/usr/bin/env bash
# Plugin-distribution benchmark (issue 18): AGENTS simulated agents (default
# 100) fetch the 18 MB Python plugin `pressure` from one real receiver on
# 127.0.0.1 at once, while each keeps sending a report batch every REPORT_MS;
# prints the time until every agent has it, MB/s served, ack latency
# p50/p99/max before and during the transfer, receiver CPU and peak RSS.
#   AGENTS=100 BASELINE_SECS=5 REPORT_MS=100 TIMEOUT_SECS=600 bash scripts/bench-plugin-transfer.sh
# FETCHING=50 has only the first 50 agents fetch: the acks of the others, on
# connections that carry no chunks, are printed apart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
# The plugin itself (target/plugins/pressure.wasm) comes from
# scripts/build-plugins.sh, which the benchmark runs (a no-op when built).
cargo bench --profile release --workspace --bench plugin_transfer
