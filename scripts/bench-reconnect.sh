#!/usr/bin/env bash
# Reconnect benchmark: AGENTS simulated agents (default 10000) connected to one
# real receiver on 127.0.0.1, which is killed (SIGKILL, then SIGTERM) and
# started again on the same address and database; every agent reconnects with
# the real agent's backoff. Prints the time until every agent is back (p50,
# p99, max per agent), attempts per agent, how failed attempts ended, the
# receiver's CPU and peak RSS during the herd; fails if an agent is not back
# within BOUND_SECS or a batch is never acknowledged.
#   AGENTS=10000 RESTARTS=kill,term BOUND_SECS=120 SETTLE_SECS=5 bash scripts/bench-reconnect.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# One descriptor per connection on each side, plus the store's.
ulimit -n "$(( $(ulimit -Hn) < 65536 ? $(ulimit -Hn) : 65536 ))" 2>/dev/null || true
bash scripts/build.sh
cargo bench --profile release --workspace --bench reconnect
