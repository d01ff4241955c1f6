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
bin=$PWD/target/release
dir=$(mktemp -d)
receiver=""
agent=""
cleanup() {
    [ -n "$agent" ] && kill -TERM "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
    [ -n "$receiver" ] && kill -TERM "$receiver" 2>/dev/null && wait "$receiver" 2>/dev/null
    [ -n "${KEEP:-}" ] && echo "kept $dir" || rm -rf "$dir"
}
trap cleanup EXIT

plugins=(uptime cpu cpuinfo diskio loadavg lvs memory network processes procstat pressure)
{
    echo "database = \"$dir/receiver.db\""
    for p in "${plugins[@]}"; do
        printf '[services.%s]\nplugin = "%s"\ninterval = "5s"\n' "$p" "$p"
    done
    printf '[hosts.mem]\ntoken = "memory-bench-token"\nservices = [%s]\n' \
        "$(printf '"%s",' "${plugins[@]}" | sed 's/,$//')"
} >"$dir/receiver.toml"
"$bin/receiver" run --config "$dir/receiver.toml" --listen 127.0.0.1:0 >"$dir/receiver.out" 2>"$dir/receiver.log" &
receiver=$!
for _ in $(seq 100); do
    grep -q "listening on" "$dir/receiver.out" 2>/dev/null && break
    sleep 0.1
done
address=$(sed -n 's/^listening on //p' "$dir/receiver.out")
cat >"$dir/agent.toml" <<EOF
host_id = "mem"
receiver = "$address"
token = "memory-bench-token"
plugin_dir = "$PWD/target/plugins"
state_dir = "$dir/state"
[allow]
sys = true
EOF
chmod 600 "$dir/agent.toml"

# VmRSS, RssFile and RssAnon of the agent, in KiB.
rss() { awk '/^(VmRSS|RssFile|RssAnon):/ {printf "%s %s  ", $1, $2}' "/proc/$1/status"; }
kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# Services with a result (OK, WARN or CRIT) since `since_ms`.
reporting() {
    "$bin/receiver" status --config "$dir/receiver.toml" --json |
        python3 -c 'import json,sys; h=json.load(sys.stdin)[0]; print(sum(s["level"] in ("OK","WARN","CRIT") and (s["last_ms"] or 0) >= int(sys.argv[1]) for s in h["services"]))' "$1"
}
run_agent() {
    local start=$(($(date +%s%N) / 1000000))
    "$bin/agent" run --config "$dir/agent.toml" 2>>"$dir/agent.log" &
    agent=$!
    local waited=0
    until [ "$(reporting "$start")" -ge "$expect" ] || [ "$waited" -ge 600 ]; do
        sleep 1
        waited=$((waited + 1))
    done
    sleep "$settle"
    echo "  $1: $(rss "$agent") every service reporting after ${waited}s"
    eval "$2=$(kib "$agent")"
    kill -TERM "$agent"
    wait "$agent" || true
    agent=""
}
echo "agent RSS with ${#plugins[@]} plugins scheduled, ${settle}s after every service reported (KiB)"
for round in $(seq "$rounds"); do
    echo "round $round"
    rm -rf "$dir/state"
    run_agent "cold (compiles every plugin)" cold
    run_agent "warm (compiled cache)       " warm
    echo "  cold - warm: $((cold - warm)) KiB"
done
