#!/usr/bin/env bash
# The fault matrix: real receiver and agent processes on 127.0.0.1, one
# fault per case (kill -9, hung receiver, full receiver disk, full agent
# disk, damaged spool, failover/failback, clock step), each counted end to
# end: runs the plugin made (from its own log lines) against rows in the
# receivers' databases, duplicates, and the gaps `receiver status` reports.
# What is counted and how: the header of scripts/faults.py.
#
#   bash scripts/faults.sh [--cases kill,hung2,...] [--short] [--keep] [--no-build]
#
# Builds the binaries and plugins first (unless --no-build). Cases rdisk and
# adisk mount a tmpfs (root); case clock needs libfaketime (Debian package
# `faketime`, installed here if missing and root). Exit status 1 if a row
# has lost > 0 or duplicated > 0, 2 if a case could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
build=1
args=()
for a in "$@"; do
  if [[ $a == --no-build ]]; then build=0; else args+=("$a"); fi
done
if ((build)); then
  bash scripts/build.sh >&2
  bash scripts/build-plugins.sh >/dev/null
fi
if [[ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 && $(id -u) == 0 ]]; then
  apt-get install -y faketime >/dev/null 2>&1 ||
    echo "faketime could not be installed: case clock will fail" >&2
fi
exec python3 scripts/faults.py "${args[@]}"
