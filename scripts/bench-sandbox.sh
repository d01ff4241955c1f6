#!/usr/bin/env bash
# Sandbox benchmark (see tests/benches/sandbox.rs): sandbox entry (lean and
# WASI builds of the same collector side by side), collectors
# vs native parsers, cold vs warm start, RSS. Prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-plugins.sh >/dev/null
# GNU time measures the agent's peak RSS.
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }
bash scripts/build.sh
cargo bench --profile release --workspace --bench sandbox
