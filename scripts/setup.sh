#!/usr/bin/env bash
# Prepare a fresh machine: the wasm targets the plugins build for.
# Idempotent; run by scripts/test.sh and scripts/demo.sh.
set -euo pipefail
installed=$(rustup target list --installed)
for target in wasm32-wasip2 wasm32-wasip1; do
  grep -qx "$target" <<<"$installed" || rustup target add "$target"
done
