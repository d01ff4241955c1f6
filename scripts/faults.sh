#!/usr/bin/env bash
# Fault script: KILLS (default 10) kill -9 of the receiver and KILLS of the
# agent, alternating, during traffic (a service reporting every 100 ms); then
# prints runs made / stored / lost / duplicated and the agent's RSS after
# start and at the end. It is the fault test of tests/integration/faults.rs
# with more rounds.
#   bash scripts/faults.sh [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-10}
bash scripts/build-plugins.sh >/dev/null
SANDGLASS_FAULT_KILLS=$kills cargo test --release -p sandglass --test integration \
  faults::kill_9_of_receiver_and_agent -- --nocapture 2>&1 |
  grep -E "^round|^faults:|panicked|test result"
