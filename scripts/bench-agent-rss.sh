#!/usr/bin/env bash
# Agent RSS with the core plugins scheduled (issue 19's target: <= 12 MiB):
# a real receiver on 127.0.0.1 schedules the 11 core collectors (cpu
# cpuinfo diskio filesystem loadavg logwatch lvs memory network processes
# uptime; not the C or Python examples) every INTERVAL on a real `agent
# run`. A first agent run fills the compiled-plugin cache; each measured run
# is a warm start on it, measured SETTLE_SECS after every service has
# reported a result (lvs reports UNKNOWN without IPVS: EXPECT counts the
# others), at each of SNAPSHOTS seconds. Prints VmRSS and what the resident pages are
# (scripts/agent-rss.py: binary, compiled plugins, pool, malloc arenas,
# heap, stacks), and the agent's CPU time per cycle since the last one;
# then what two cycles touch (smaps' Referenced after clear_refs).
#   ROUNDS=2 SNAPSHOTS="30 120" INTERVAL=5s bash scripts/bench-agent-rss.sh
# AGENT_ENV="MALLOC_ARENA_MAX=4" runs the agent with that environment;
# KEEP=1 keeps the temporary directory;
# DETAIL=1 lists every resident mapping; NO_BUILD=1 skips the builds.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-2}
# Seconds after every service reported: before and after `agent run` pages
# out its start-up code (60 s after it starts).
snapshots=${SNAPSHOTS:-30 120}
interval=${INTERVAL:-5s}
expect=${EXPECT:-10}
if [ -z "${NO_BUILD:-}" ]; then
    bash scripts/build-plugins.sh >/dev/null
    bash scripts/build.sh >/dev/null 2>&1
fi
# shellcheck source=scripts/agent-bench.sh
source scripts/agent-bench.sh

mkdir -p "$dir/logs"
echo "boot" >"$dir/logs/app.log"
plugins=(cpu cpuinfo diskio filesystem loadavg logwatch lvs memory network processes uptime)
{
    echo "database = \"$dir/receiver.db\""
    for p in "${plugins[@]}"; do
        printf '[services.%s]\nplugin = "%s"\ninterval = "%s"\n' "$p" "$p" "$interval"
        if [ "$p" = logwatch ]; then
            printf 'grants = ["files"]\nfiles = ["%s"]\n' "$dir/logs"
            printf 'params = { files = "%s", "match.error" = "ERROR" }\n' "$dir/logs/app.log"
        fi
    done
    printf '[hosts.rss]\ntoken = "rss-bench-token"\nservices = [%s]\n' \
        "$(printf '"%s",' "${plugins[@]}" | sed 's/,$//')"
} >"$dir/receiver.toml"
start_receiver
write_agent_config rss rss-bench-token <<EOF
files = ["$dir/logs"]
EOF

# User + system CPU time of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run_agent() {
    start_agent
    if [ "$1" = measure ]; then
        echo "  every service reporting after ${waited}s"
        local hz elapsed=0 ticks
        hz=$(getconf CLK_TCK)
        for at in $snapshots; do
            ticks=$(cpu_ticks "$agent")
            sleep $((at - elapsed))
            ticks=$(($(cpu_ticks "$agent") - ticks))
            awk -v t="$ticks" -v hz="$hz" -v s="$((at - elapsed))" -v i="${interval%s}" -v at="$at" \
                'BEGIN {printf "  %ss later (agent CPU %.1f ms per %ss cycle over the last %ss):", at, t * 1000 / hz / (s / i), i, s}'
            awk '/^(VmRSS|RssAnon|RssFile):/ {printf " %s %s KiB", $1, $2} END {print ""}' "/proc/$agent/status"
            python3 scripts/agent-rss.py "$agent" "$bin/agent" "$dir/state/cache" ${DETAIL:+--detail}
            elapsed=$at
        done
        echo 1 >"/proc/$agent/clear_refs"
        sleep $((2 * ${interval%s}))
        echo "  pages touched in the next two cycles (Referenced):"
        python3 scripts/agent-rss.py "$agent" "$bin/agent" "$dir/state/cache" --referenced
    fi
    stop_agent
}
echo "agent RSS with ${#plugins[@]} core plugins every $interval${AGENT_ENV:+ ($AGENT_ENV)}"
run_agent fill-cache
for round in $(seq "$rounds"); do
    echo "round $round (warm start)"
    run_agent measure
done
