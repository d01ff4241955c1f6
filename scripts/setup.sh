#!/usr/bin/env bash
# Prepare a fresh machine: the wasm targets the Rust plugins build for
# (wasm32-unknown-unknown: lean collectors, no WASI), and
# clang + wasi-libc (Debian) for the C example plugin.
# Idempotent; run by scripts/test.sh and scripts/demo.sh.
set -euo pipefail
installed=$(rustup target list --installed)
for target in wasm32-wasip2 wasm32-wasip1 wasm32-unknown-unknown; do
  grep -qx "$target" <<<"$installed" || rustup target add "$target"
done

# Debian packages: for C plugins, clang's wasm32 backend, lld, wasi-libc and
# compiler-rt for wasm32; systemd for `systemd-analyze verify` of the
# packaged units (tests/integration/packaging.rs); prometheus for `promtool
# check metrics` of /metrics (tests/integration/metrics.rs);
# victoria-metrics for the remote-write tests (tests/integration/remote_write.rs
# starts it itself on 127.0.0.1; the package's own service is not used);
# chromium and chromium-driver for the status page's browser test
# (tests/integration/web.rs).
packages=(clang lld wasi-libc libclang-rt-14-dev-wasm32 systemd prometheus victoria-metrics chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
