# Shared by scripts/bench-agent-*.sh (sourced, from the repository root):
# a temporary directory removed at exit with the receiver and agent started
# in it, a real receiver on 127.0.0.1 and `agent run` against it.
# shellcheck shell=bash
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

# Start the receiver on $dir/receiver.toml; sets $address.
start_receiver() {
    "$bin/receiver" run --config "$dir/receiver.toml" --listen 127.0.0.1:0 >"$dir/receiver.out" 2>"$dir/receiver.log" &
    receiver=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$dir/receiver.out" 2>/dev/null && break
        sleep 0.1
    done
    address=$(sed -n 's/^listening on //p' "$dir/receiver.out")
}

# Write $dir/agent.toml for host $1 with token $2, reading /sys; further
# lines of [allow] on stdin.
write_agent_config() {
    {
        printf 'host_id = "%s"\nreceiver = "%s"\ntoken = "%s"\n' "$1" "$address" "$2"
        printf 'plugin_dir = "%s"\nstate_dir = "%s"\n[allow]\nsys = true\n' "$PWD/target/plugins" "$dir/state"
        cat
    } >"$dir/agent.toml"
    chmod 600 "$dir/agent.toml"
}

# Services with a result (OK, WARN or CRIT) since `since_ms`.
reporting() {
    "$bin/receiver" status --config "$dir/receiver.toml" --json |
        python3 -c 'import json,sys; h=json.load(sys.stdin)[0]; print(sum(s["level"] in ("OK","WARN","CRIT") and (s["last_ms"] or 0) >= int(sys.argv[1]) for s in h["services"]))' "$1"
}

# Start `agent run` (with AGENT_ENV's NAME=value words in its environment)
# and wait until $expect services have reported since; sets $agent and
# $waited (seconds).
start_agent() {
    local start=$(($(date +%s%N) / 1000000))
    # shellcheck disable=SC2086 # AGENT_ENV is a list of NAME=value words
    env ${AGENT_ENV:-} "$bin/agent" run --config "$dir/agent.toml" 2>>"$dir/agent.log" &
    agent=$!
    waited=0
    until [ "$(reporting "$start")" -ge "$expect" ] || [ "$waited" -ge 600 ]; do
        sleep 1
        waited=$((waited + 1))
    done
}

stop_agent() {
    kill -TERM "$agent"
    wait "$agent" || true
    agent=""
}
