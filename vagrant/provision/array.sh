#!/usr/bin/env bash
# array.sh (array VM): blockemu-array.service (blockemu serve with the lab's hosts.toml),
# enabled and started, then the lab's volumes and pairs (volumes.sh).
# Idempotent: a running array is left running (restart it yourself after a config change:
# systemctl restart blockemu-array); volumes and pairs that exist are kept.
set -euo pipefail
here=$(dirname "$0")
# shellcheck source=lib.sh
. "$here/lib.sh"
load_env

install_units blockemu-array.service
mkdir -p "$BLOCKEMU_ARRAY_ROOT"
systemctl enable --now blockemu-array.service
wait_for 120 "the array's admin socket $BLOCKEMU_ADMIN_SOCK" \
    "$BLOCKEMU_BIN/blockemu" vol list --array "unix:$BLOCKEMU_ADMIN_SOCK"
bash "$here/volumes.sh"
say "array up: $BLOCKEMU_ARRAY_LISTEN (hosts $BLOCKEMU_HOSTS), admin unix:$BLOCKEMU_ADMIN_SOCK"
