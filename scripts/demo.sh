#!/usr/bin/env bash
# The run command: build the agent and the core plugins, then run every
# service of examples/agent.toml once against this machine's /proc and print
# the table (what `telnet host 6556` showed for a check_mk agent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-plugins.sh
cargo build --release -p sandglass
./target/release/agent once --config examples/agent.toml "$@"
