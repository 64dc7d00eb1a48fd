#!/usr/bin/env bash
# common.sh (every VM): the system packages blockemu needs and blockemu itself, installed
# from the synced source into the virtualenv /opt/blockemu/.venv (outside the synced tree),
# with `blockemu`, `nodeagent` and `blockemu-cci` linked into /usr/local/bin.
#
# The apt packages are scripts/setup.sh's list (one list for a machine and a VM), plus
# rsync (the synced folder) and sqlite3 (looking at the demo's database by hand).
# Offline: packages already in the box are not fetched again (the debootstrap box of
# vagrant/README.md has them all), and if vagrant/.lab/wheels/ exists pip installs from it
# only (`pip download -d vagrant/.lab/wheels .` on a machine with PyPI).
# Idempotent: blockemu is reinstalled only when its source changed.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

setup_sh=$BLOCKEMU_SRC/scripts/setup.sh
packages=$(sed -n 's/^APT_PACKAGES="\(.*\)"$/\1/p' "$setup_sh")
[ -n "$packages" ] || die "no APT_PACKAGES=\"...\" line in $setup_sh"
missing=()
for pkg in $packages rsync sqlite3 ca-certificates; do
    case $pkg in
    vagrant | vagrant-* | shellcheck | ruby) continue ;; # the host's CI tools, not a VM's
    esac
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# /dev/fuse and loop devices (the host views, losetup); built as modules in Debian kernels.
modprobe fuse 2>/dev/null || true
modprobe loop 2>/dev/null || true

[ -x "$BLOCKEMU_VENV/bin/python" ] || python3 -m venv "$BLOCKEMU_VENV"

# The source's fingerprint: what pip would install.
stamp=$BLOCKEMU_VENV/.blockemu-source
fingerprint=$(cd "$BLOCKEMU_SRC" &&
    find pyproject.toml formats blockemu nodeagent cci -type f \( -name '*.py' -o -name '*.toml' \) \
        -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$fingerprint" ]; then
    say "installing blockemu from $BLOCKEMU_SRC into $BLOCKEMU_VENV"
    # pip builds in the source tree (egg-info, build/): build from a private copy, never in
    # the synced folder.
    build=$(mktemp -d /var/tmp/blockemu-build.XXXXXX)
    trap 'rm -rf "$build"' EXIT
    tar -C "$BLOCKEMU_SRC" --exclude=.git --exclude=.venv --exclude=vagrant --exclude='*.egg-info' \
        --exclude=build --exclude=__pycache__ -cf - . | tar -C "$build" -xf -
    pip_args=(--quiet --disable-pip-version-check)
    wheels=$BLOCKEMU_SRC/vagrant/.lab/wheels
    if [ -d "$wheels" ]; then
        say "offline: installing from $wheels only"
        pip_args+=(--no-index --find-links "$wheels")
    fi
    "$BLOCKEMU_VENV/bin/pip" install "${pip_args[@]}" "$build"
    "$BLOCKEMU_VENV/bin/python" -c "import pyfuse3, trio, construct, rich, blockemu, nodeagent"
    echo "$fingerprint" >"$stamp"
else
    say "blockemu in $BLOCKEMU_VENV is up to date with $BLOCKEMU_SRC"
fi
link_dir=${BLOCKEMU_LINK_DIR:-/usr/local/bin}
for tool in blockemu nodeagent blockemu-cci; do
    ln -sfn "$BLOCKEMU_VENV/bin/$tool" "$link_dir/$tool"
done
say "$("$BLOCKEMU_BIN/blockemu" --version) in $BLOCKEMU_VENV"
