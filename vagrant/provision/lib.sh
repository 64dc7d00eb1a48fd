# shellcheck shell=bash
# Shared by the provisioning scripts (sourced, never run): where things are, and helpers.
# Every path can be overridden from the environment, which is how tests/test_vagrant.py
# runs render-configs.sh and volumes.sh outside a VM, with the repository's .venv.

# The repository, synced into the VM by the Vagrantfile (rsync, host -> VM).
BLOCKEMU_SRC=${BLOCKEMU_SRC:-/opt/blockemu/src}
# blockemu's virtualenv: outside the synced tree, so the host's .venv is never touched.
BLOCKEMU_VENV=${BLOCKEMU_VENV:-/opt/blockemu/.venv}
BLOCKEMU_BIN=${BLOCKEMU_BIN:-$BLOCKEMU_VENV/bin}
# The lab's keys, made once on the host (Vagrantfile trigger) and synced to every VM.
BLOCKEMU_KEYS=${BLOCKEMU_KEYS:-$BLOCKEMU_SRC/vagrant/.lab/keys}
# Rendered configs and a node's runtime files (buffer, state, event log, view) live here;
# node.toml names them relative to its own directory, as in the namespace lab.
BLOCKEMU_LAB_DIR=${BLOCKEMU_LAB_DIR:-/var/lib/blockemu/lab}
BLOCKEMU_ARRAY_ROOT=${BLOCKEMU_ARRAY_ROOT:-/var/lib/blockemu/array}
BLOCKEMU_ETC=${BLOCKEMU_ETC:-/etc/blockemu}
BLOCKEMU_ENV_FILE=$BLOCKEMU_ETC/lab.env
BLOCKEMU_UNIT_DIR=${BLOCKEMU_UNIT_DIR:-/etc/systemd/system}
# The array's admin socket (RuntimeDirectory=blockemu of blockemu-array.service).
BLOCKEMU_ADMIN_SOCK=${BLOCKEMU_ADMIN_SOCK:-/run/blockemu/array.sock}
# The lab's parameters (the Vagrantfile passes them; these are blockemu lab up's defaults).
BLOCKEMU_PAIRS=${BLOCKEMU_PAIRS:-1}
BLOCKEMU_REFLECTION=${BLOCKEMU_REFLECTION:-eager}
BLOCKEMU_HEARTBEAT_INTERVAL=${BLOCKEMU_HEARTBEAT_INTERVAL:-0.5}
BLOCKEMU_HEARTBEAT_MISSES=${BLOCKEMU_HEARTBEAT_MISSES:-3}
BLOCKEMU_VOLUME_SIZE=${BLOCKEMU_VOLUME_SIZE:-1G}
BLOCKEMU_PAIR_MODE=${BLOCKEMU_PAIR_MODE:-sync}

say() { printf 'blockemu-provision: %s\n' "$*"; }
die() {
    printf 'blockemu-provision: ERROR: %s\n' "$*" >&2
    exit 1
}

# blockemu's own constants (ports, the array's consistency group), so that nothing here
# restates what blockemu/labstate.py defines.
lab_const() {
    "$BLOCKEMU_BIN/python" -c "import blockemu.labstate as s; print(s.$1)"
}

# wait_for SECONDS WHAT COMMAND...: run COMMAND every 2 s until it succeeds.
wait_for() {
    local seconds=$1 what=$2 waited=0
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$waited" -ge "$seconds" ]; then
            die "gave up after ${seconds}s waiting for $what (last try: $*)"
        fi
        [ "$waited" -eq 0 ] && say "waiting for $what (up to ${seconds}s)"
        sleep 2
        waited=$((waited + 2))
    done
}

# load_env: the lab environment file written by render-configs.sh.
load_env() {
    [ -r "$BLOCKEMU_ENV_FILE" ] || die "$BLOCKEMU_ENV_FILE is missing: run render-configs.sh first"
    set -a
    # shellcheck source=/dev/null
    . "$BLOCKEMU_ENV_FILE"
    set +a
}

# install_file SRC DEST MODE: copy when different (re-provisioning changes nothing else);
# prints DEST when it changed.
install_file() {
    if ! cmp -s "$1" "$2"; then
        install -D -m "$3" "$1" "$2"
        echo "$2"
    fi
}

# install_units UNIT...: vagrant/systemd/UNIT into the unit directory, with the venv's
# path if it is not the default; reloads systemd when one changed.
install_units() {
    local unit tmp changed=""
    for unit in "$@"; do
        tmp=$(mktemp)
        sed "s#/opt/blockemu/.venv#$BLOCKEMU_VENV#g" "$BLOCKEMU_SRC/vagrant/systemd/$unit" >"$tmp"
        if [ -n "$(install_file "$tmp" "$BLOCKEMU_UNIT_DIR/$unit" 0644)" ]; then
            changed="$changed $unit"
        fi
        rm -f "$tmp"
    done
    if [ -n "$changed" ]; then
        say "installed unit(s):$changed"
        systemctl daemon-reload
    fi
}
