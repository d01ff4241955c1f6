#!/usr/bin/env bash
# Agent memory: the resident size of `agent run` with every plugin of
# target/plugins scheduled (the core collectors, procstat in C and the 18 MB
# Python plugin), after a cold start (an empty state directory: it compiles
# every plugin) and after a warm start (the same state directory: every
# plugin loads from the compiled cache), against a real receiver on
# 127.0.0.1. Measured SETTLE_SECS after every service has reported a result
# (lvs reports UNKNOWN without IPVS: EXPECT counts the others). Prints
# VmRSS and its anonymous and file-backed parts.
#   ROUNDS=2 SETTLE_SECS=10 EXPECT=10 bash scripts/bench-agent-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-2}
settle=${SETTLE_SECS:-10}
expect=${EXPECT:-10}
bash scripts/build-plugins.sh >/dev/null
bash scripts/build.sh >/dev/null 2>&1
# shellcheck source=scripts/agent-bench.sh
source scripts/agent-bench.sh

plugins=(uptime cpu cpuinfo diskio loadavg lvs memory network processes procstat pressure)
{
    echo "database = \"$dir/receiver.db\""
    for p in "${plugins[@]}"; do
        printf '[services.%s]\nplugin = "%s"\ninterval = "5s"\n' "$p" "$p"
    done
    printf '[hosts.mem]\ntoken = "memory-bench-token"\nservices = [%s]\n' \
        "$(printf '"%s",' "${plugins[@]}" | sed 's/,$//')"
} >"$dir/receiver.toml"
start_receiver
write_agent_config mem memory-bench-token </dev/null

# VmRSS, RssFile and RssAnon of the agent, in KiB.
rss() { awk '/^(VmRSS|RssFile|RssAnon):/ {printf "%s %s  ", $1, $2}' "/proc/$1/status"; }
kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
run_agent() {
    start_agent
    sleep "$settle"
    echo "  $1: $(rss "$agent") every service reporting after ${waited}s"
    eval "$2=$(kib "$agent")"
    stop_agent
}
echo "agent RSS with ${#plugins[@]} plugins scheduled, ${settle}s after every service reported (KiB)"
for round in $(seq "$rounds"); do
    echo "round $round"
    rm -rf "$dir/state"
    run_agent "cold (compiles every plugin)" cold
    run_agent "warm (compiled cache)       " warm
    echo "  cold - warm: $((cold - warm)) KiB"
done
