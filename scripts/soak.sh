#!/usr/bin/env bash
# Soak: one real agent runs 20 services every second for MINUTES (default
# 10) against a real receiver on 127.0.0.1; 15 are core collectors, 5 run the
# `misbehave` fixture rotating through spin, sleep, memory bomb, panic,
# stdout flood, sample flood, huge strings and log flood (a new way every
# 20 s each, staggered). Prints the agent's RSS every 30 s, and per good
# service the reports stored against the runs expected.
#   bash scripts/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
bash scripts/build-plugins.sh >/dev/null
bash scripts/build.sh
bin=target/release
work=$(mktemp -d /tmp/sandglass-soak.XXXXXX)
mkdir -p "$work/plugins"
cp target/plugins/*.wasm "$work/plugins/"
cp target/fixtures/misbehave.wasm "$work/plugins/"

good=(cpu memory loadavg uptime network diskio processes cpuinfo)
services=()
{
  echo 'database = "soak.db"'
  for i in 1 2; do
    for p in "${good[@]}"; do
      [ ${#services[@]} -ge 15 ] && break
      name="$p-$i"; services+=("$name")
      printf '[services.%s]\nplugin = "%s"\ninterval = "1s"\n' "$name" "$p"
    done
  done
  for i in 0 1 2 3 4; do
    printf '[services.bad-%s]\nplugin = "misbehave"\ninterval = "1s"\nparams = { mode = "rotate", offset = %s, period = 20 }\n' "$i" "$i"
  done
  printf '[hosts.soak]\ntoken = "soak-token-0123"\nliveness_service = "uptime-1"\nservices = ['
  for s in "${services[@]}" bad-0 bad-1 bad-2 bad-3 bad-4; do printf '"%s", ' "$s"; done
  printf ']\n'
} >"$work/receiver.toml"
cat >"$work/agent.toml" <<TOML
host_id = "soak"
receiver = "127.0.0.1:0"
token = "soak-token-0123"
plugin_dir = "plugins"
state_dir = "state"
TOML
chmod 600 "$work/agent.toml"

"$bin/receiver" run --config "$work/receiver.toml" --listen 127.0.0.1:0 >"$work/receiver.out" 2>"$work/receiver.log" &
receiver=$!
agent=""
cleanup() {
  [ -n "$agent" ] && kill -TERM "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
  kill -TERM "$receiver" 2>/dev/null && wait "$receiver" 2>/dev/null
  true
}
trap cleanup EXIT
for _ in $(seq 100); do grep -q "listening on" "$work/receiver.out" && break; sleep 0.1; done
address=$(sed -n 's/^listening on //p' "$work/receiver.out")
sed -i "s/^receiver = .*/receiver = \"$address\"/" "$work/agent.toml"
"$bin/agent" run --config "$work/agent.toml" 2>"$work/agent.log" &
agent=$!

rss() { awk '/VmRSS/ {print $2}' "/proc/$agent/status"; }
start=$(date +%s)
end=$((start + minutes * 60))
echo "soak: 15 good + 5 misbehaving services every 1 s for $minutes min; work dir $work"
printf '%8s %12s\n' "elapsed" "agent RSS KiB"
first_rss=""
while [ "$(date +%s)" -lt "$end" ]; do
  sleep 30
  now=$(rss)
  [ -z "$first_rss" ] && first_rss=$now
  printf '%7ss %12s\n' "$(( $(date +%s) - start ))" "$now"
done
last_rss=$(rss)
elapsed=$(( $(date +%s) - start ))
kill -TERM "$agent"; wait "$agent" || true; agent=""

# Runs of a 1 s service in the window: one per second, the first at start.
expected=$elapsed
printf '\n%-14s %8s %8s %9s\n' service stored expected complete
worst=100
for s in "${services[@]}"; do
  stored=$("$bin/receiver" query --config "$work/receiver.toml" --host soak --service "$s" --since 2h --json |
    grep -o '"time_ms": [0-9]*' | sort -u | wc -l)
  pct=$(( stored * 100 / expected ))
  [ "$pct" -lt "$worst" ] && worst=$pct
  printf '%-14s %8s %8s %8s%%\n' "$s" "$stored" "$expected" "$pct"
done
bad_runs=$(grep -c "bad-" "$work/agent.log" || true)
echo
echo "agent RSS: ${first_rss} KiB at 30 s, ${last_rss} KiB at the end ($elapsed s)"
echo "least complete good service: ${worst}%; agent log lines about misbehaving services: $bad_runs"
echo "misbehaving services' last levels:"
"$bin/receiver" status --config "$work/receiver.toml" | grep -E "^  bad-" || true
