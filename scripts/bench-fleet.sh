#!/usr/bin/env bash
# Fleet benchmark: AGENTS simulated agents (default 1000) against one real
# receiver on 127.0.0.1; prints samples/s durably stored, ack latency p50/p99,
# receiver CPU and RSS, for a steady phase and a flood phase.
#   AGENTS=1000 STEADY_SECS=5 FLOOD_SECS=10 [TRIGGERS=1] [LOCKSTEP=1] bash scripts/bench-fleet.sh
# (TRIGGERS=1 adds a trigger per service judging every sample: compare the CPU per
# million samples with and without it. In the steady phase each agent sends at its
# own point of the second, as agents splay their hosts; LOCKSTEP=1 makes all send
# at the same instant.)
set -euo pipefail
cd "$(dirname "$0")/.."
# One descriptor per connection on each side, plus the store's.
ulimit -n "$(( $(ulimit -Hn) < 65536 ? $(ulimit -Hn) : 65536 ))" 2>/dev/null || true
bash scripts/build.sh
cargo bench --profile release --workspace --bench fleet
