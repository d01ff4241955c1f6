#!/usr/bin/env bash
# Sandglass against node_exporter and collectd, side by side on this machine:
# CPU per collection cycle, samples, µs per sample, RSS at start and after a
# minute, start-up to first data, and the ratios — one table, one run.
#
#   bash scripts/bench-peers.sh [SECONDS]    # measurement window, default 60
#
# Installs prometheus-node-exporter and collectd-core from Debian if missing,
# builds the agent, receiver and plugins, then runs scripts/bench-peers.py,
# which stops every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
missing=()
command -v prometheus-node-exporter >/dev/null || missing+=(prometheus-node-exporter)
command -v collectd >/dev/null || missing+=(collectd-core)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  # No init system starts them here: the script runs its own instances.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
bash scripts/build-plugins.sh >/dev/null
bash scripts/build.sh
python3 scripts/bench-peers.py "$@"
