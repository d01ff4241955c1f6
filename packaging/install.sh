#!/usr/bin/env bash
# Install Sandglass from this source tree, after `bash scripts/build.sh` and
# `bash scripts/build-plugins.sh`:
#
#   sudo bash packaging/install.sh [agent|receiver|all]      (default: all)
#
# puts the binaries in $PREFIX/bin (on PATH), the core plugins in
# $PREFIX/lib/sandglass/plugins, the configs in /etc/sandglass (mode 600:
# they hold tokens; an existing config is never overwritten, so this is also
# the upgrade), the systemd units in /etc/systemd/system, and creates the
# `sandglass` system user. Then:
#
#   systemctl daemon-reload && systemctl enable --now sandglass-agent
#
# PREFIX (default /usr/local) and DESTDIR (a staging root: files go under
# it, no user is created and nothing is chowned) work as in `make install`.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
case "$what" in agent | receiver | all) ;; *)
    echo "usage: install.sh [agent|receiver|all]" >&2
    exit 2
    ;;
esac
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
parts=(agent receiver)
[ "$what" = all ] || parts=("$what")

for part in "${parts[@]}"; do
    [ -x "target/release/$part" ] || {
        echo "target/release/$part is not built: run bash scripts/build.sh first" >&2
        exit 1
    }
done
ls target/plugins/*.wasm >/dev/null 2>&1 || {
    echo "target/plugins has no plugins: run bash scripts/build-plugins.sh first" >&2
    exit 1
}

if [ -z "$DESTDIR" ] && ! id sandglass >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /var/lib/sandglass --shell /usr/sbin/nologin sandglass
fi

plugins=$PREFIX/lib/sandglass/plugins
install -d -m 755 "$DESTDIR$PREFIX/bin" "$DESTDIR$plugins" "$DESTDIR$PREFIX/share/doc/sandglass" \
    "$DESTDIR/etc/systemd/system"
install -d -m 750 "$DESTDIR/etc/sandglass"
install -m 644 target/plugins/*.wasm "$DESTDIR$plugins/"
install -m 644 docs/operations.md "$DESTDIR$PREFIX/share/doc/sandglass/"

# The example configs with the installed layout's paths. Written only when
# absent: an upgrade keeps the operator's configuration.
config() {
    local part=$1 target=$DESTDIR/etc/sandglass/$1.toml
    if [ -e "$target" ]; then
        echo "kept $target"
        return
    fi
    sed -e "s#^plugin_dir = .*#plugin_dir = \"$plugins\"#" \
        -e "s#^state_dir = .*#state_dir = \"/var/lib/sandglass/agent\"#" \
        -e "s#^database = \"[^\"]*\"#database = \"/var/lib/sandglass/receiver/sandglass.db\"#" \
        -e '/^host_id = /d' \
        "examples/$part.toml" >"$target"
    chmod 600 "$target"
    [ -n "$DESTDIR" ] || chown sandglass:sandglass "$target"
    echo "wrote $target (edit the receiver address and token)"
}

for part in "${parts[@]}"; do
    install -m 755 "target/release/$part" "$DESTDIR$PREFIX/bin/$part"
    sed "s#@PREFIX@#$PREFIX#g" "packaging/systemd/sandglass-$part.service" \
        >"$DESTDIR/etc/systemd/system/sandglass-$part.service"
    chmod 644 "$DESTDIR/etc/systemd/system/sandglass-$part.service"
    config "$part"
done
[ -n "$DESTDIR" ] || chown root:sandglass /etc/sandglass
echo "installed ${parts[*]} under ${DESTDIR:-/}$PREFIX; next: systemctl daemon-reload && systemctl enable --now ${parts[*]/#/sandglass-}"
