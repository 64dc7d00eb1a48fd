#!/usr/bin/env bash
# node.sh (node VMs): nodeagent.service (which mounts the host view itself) and
# blockemu-attach.service (installed, not enabled: for a host without nodeagent; the two
# conflict). Before the first start, the node's disk-info buffer is scanned from the array,
# as `blockemu lab up` does, so the array must be up: this waits for it.
# Idempotent: an existing buffer is kept (never rescanned: it is the node's cache and the
# protocol's business), a running agent is left running.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
load_env

install_units nodeagent.service blockemu-attach.service
blockemu=$BLOCKEMU_BIN/blockemu
auth=(--array "$BLOCKEMU_ARRAY" --host "$BLOCKEMU_LAB_HOST" --key-file "$BLOCKEMU_LAB_KEY_FILE")
wait_for 900 "the array at $BLOCKEMU_ARRAY (is the array VM up?)" "$blockemu" vol list "${auth[@]}"
if [ -s "$BLOCKEMU_HOST_BUFFER" ]; then
    say "buffer $BLOCKEMU_HOST_BUFFER exists: kept"
else
    "$blockemu" host scan "${auth[@]}" --buffer "$BLOCKEMU_HOST_BUFFER"
fi
mkdir -p "$BLOCKEMU_VIEW"
systemctl enable --now nodeagent.service
nodeagent=$BLOCKEMU_BIN/nodeagent
wait_for 60 "nodeagent to answer" "$nodeagent" status --config "$BLOCKEMU_NODE_CONFIG"
"$nodeagent" status --config "$BLOCKEMU_NODE_CONFIG"
