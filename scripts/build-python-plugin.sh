#!/usr/bin/env bash
# Build the Python example plugin (plugins/python/pressure) into
# target/plugins/pressure.wasm with componentize-py from PyPI, installed into
# a virtualenv under target/ (nothing outside the project is touched).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python-venv
version=0.25.1
if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -q "$version"; then
  # A venv holds absolute paths: one from a moved or copied tree is rebuilt.
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$version"
fi
mkdir -p target/plugins
out=target/plugins/pressure.wasm
if [ -f "$out" ] && [ -z "$(find plugins/python/pressure wit -newer "$out" -type f)" ]; then
  echo "target/plugins/pressure.wasm is up to date"
  exit 0
fi
# The plugin implements the same WIT world as the Rust plugins.
"$venv/bin/componentize-py" -d wit -w collector componentize \
  -p plugins/python/pressure app -o "$out" >/dev/null
echo "built target/plugins/pressure.wasm (Python, componentize-py $version)"
