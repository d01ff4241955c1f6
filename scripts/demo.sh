#!/usr/bin/env bash
# The run command: build the agent, the receiver and the core plugins, start
# a receiver (examples/receiver.toml) and an agent (examples/agent.toml) on
# this machine, print the status page's URL, and print `receiver status` as
# real data arrives.
# Runs until Ctrl-C (stopping both); `--once` prints the status once and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-plugins.sh
bash scripts/build.sh
mkdir -p target/demo
bin=target/release
"$bin/receiver" run --config examples/receiver.toml >target/demo/receiver.out 2>target/demo/receiver.log &
receiver=$!
agent=""
stop() {
    [ -n "$agent" ] && kill -TERM "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
    kill -TERM "$receiver" 2>/dev/null && wait "$receiver" 2>/dev/null
    return 0
}
trap stop EXIT
trap 'exit 0' INT TERM
for _ in $(seq 50); do
    grep -q "listening on" target/demo/receiver.out 2>/dev/null && break
    kill -0 "$receiver" 2>/dev/null || { cat target/demo/receiver.log; exit 1; }
    sleep 0.1
done
"$bin/agent" run --config examples/agent.toml 2>target/demo/agent.log &
agent=$!
echo "receiver (pid $receiver) and agent (pid $agent) running; logs in target/demo/"
# The status page, its API (docs/http-api.md) and /metrics share one listener.
url=$(sed -n 's#^http on ##p' target/demo/receiver.out)
[ -n "$url" ] && echo "status page: $url (API: ${url}api/hosts, metrics: ${url}metrics)"
# Every service has reported once within a second or two of the start.
for _ in $(seq 40); do
    "$bin/receiver" status --config examples/receiver.toml | grep -q "^demo OK" && break
    sleep 0.25
done
while true; do
    echo
    "$bin/receiver" status --config examples/receiver.toml
    [ "${1:-}" = "--once" ] && break
    echo "(Ctrl-C stops the agent and the receiver; try: $bin/receiver query --config examples/receiver.toml --host demo --service loadavg --since 1m)"
    sleep 10
done
