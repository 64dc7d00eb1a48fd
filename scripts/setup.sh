#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: the system packages the
# project needs (installed only if missing), a virtualenv in .venv, and the
# package with its test tools. Re-running it does nothing once all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# fuse3: fusermount3 and /dev/fuse handling; libfuse3-dev + pkg-config + gcc:
# building pyfuse3 where no wheel fits; util-linux/e2fsprogs: losetup, mkfs.ext4;
# xfsprogs: reflink copies on an XFS image; iproute2: network-namespace labs;
# postgresql: the database the labs and tests run through the mounts (pgbench, pg_amcheck).
APT_PACKAGES="fuse3 libfuse3-dev pkg-config gcc python3-venv util-linux e2fsprogs xfsprogs iproute2 postgresql"
# vagrant + vagrant-libvirt + shellcheck: the Vagrant lab's offline checks (vagrant validate,
# shellcheck of its provisioning scripts). Kept apart: vagrant/provision/common.sh installs
# APT_PACKAGES inside the VMs, which need none of these.
LAB_TOOLS="vagrant vagrant-libvirt shellcheck"
missing=()
for pkg in $APT_PACKAGES $LAB_TOOLS; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "setup: installing blockemu and its test tools into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -c "import pyfuse3, trio, construct, rich, pytest" # fail here, not later
    rm -f .venv/.installed-*
    touch "$stamp"
fi
