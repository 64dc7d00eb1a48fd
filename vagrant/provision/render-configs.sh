#!/usr/bin/env bash
# render-configs.sh MEMBER (array | node1 | node2 ...): this machine's part of the lab's
# configs, rendered by blockemu's own generator -- `blockemu lab render`, the code
# `blockemu lab up` writes the namespace lab's configs with (blockemu/labconfig.py) -- from
# the keys made once on the host, so every VM renders the same lab. Then the environment
# file the systemd units and people read (/etc/blockemu/lab.env).
#
# Inputs (environment; the Vagrantfile passes them): BLOCKEMU_ARRAY_IP,
# BLOCKEMU_NODE_PLAN ("node1=IP node2=IP ..." in priority order), BLOCKEMU_PAIRS,
# BLOCKEMU_REFLECTION, BLOCKEMU_HEARTBEAT_INTERVAL, BLOCKEMU_HEARTBEAT_MISSES; paths as in
# lib.sh. Idempotent: re-rendering rewrites the configs and keeps a node's buffer, state,
# event log and view. Running services are not restarted (do it yourself after a change).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

member=${1:?usage: render-configs.sh array|nodeN}
: "${BLOCKEMU_ARRAY_IP:?BLOCKEMU_ARRAY_IP is not set (the Vagrantfile sets it)}"
: "${BLOCKEMU_NODE_PLAN:?BLOCKEMU_NODE_PLAN is not set (the Vagrantfile sets it)}"

node_args=()
for item in $BLOCKEMU_NODE_PLAN; do
    node_args+=(--node "$item")
done

"$BLOCKEMU_BIN/blockemu" lab render --out "$BLOCKEMU_LAB_DIR" \
    --array-address "$BLOCKEMU_ARRAY_IP" "${node_args[@]}" \
    --pairs "$BLOCKEMU_PAIRS" --reflection "$BLOCKEMU_REFLECTION" \
    --heartbeat-interval "$BLOCKEMU_HEARTBEAT_INTERVAL" \
    --heartbeat-misses "$BLOCKEMU_HEARTBEAT_MISSES" \
    --keys-from "$BLOCKEMU_KEYS" --member "$member"

mkdir -p "$BLOCKEMU_ETC"
array_tcp="tcp:$BLOCKEMU_ARRAY_IP:$(lab_const ARRAY_PORT)"
{
    echo "# The blockemu lab on this machine ($member). Written by"
    echo "# vagrant/provision/render-configs.sh; read by the blockemu systemd units and by you:"
    echo "#   set -a; . $BLOCKEMU_ENV_FILE; set +a"
    echo "BLOCKEMU_MEMBER=$member"
    echo "BLOCKEMU_LAB_DIR=$BLOCKEMU_LAB_DIR"
    if [ "$member" = array ]; then
        echo "BLOCKEMU_ARRAY_ROOT=$BLOCKEMU_ARRAY_ROOT"
        echo "BLOCKEMU_ARRAY_LISTEN=$array_tcp"
        echo "BLOCKEMU_HOSTS=$BLOCKEMU_LAB_DIR/hosts.toml"
        echo "# blockemu vol|pair ... on this machine: the administrator's unix socket"
        echo "BLOCKEMU_ARRAY=unix:$BLOCKEMU_ADMIN_SOCK"
    else
        echo "BLOCKEMU_NODE_CONFIG=$BLOCKEMU_LAB_DIR/$member/node.toml"
        echo "BLOCKEMU_ARRAY=$array_tcp"
        echo "BLOCKEMU_LAB_HOST=$member"
        echo "BLOCKEMU_LAB_KEY_FILE=$BLOCKEMU_LAB_DIR/keys/$member.key"
        echo "BLOCKEMU_HOST_BUFFER=$BLOCKEMU_LAB_DIR/$member/buffer"
        echo "BLOCKEMU_VIEW=$BLOCKEMU_LAB_DIR/$member/view"
    fi
} >"$BLOCKEMU_ENV_FILE.new"
if cmp -s "$BLOCKEMU_ENV_FILE.new" "$BLOCKEMU_ENV_FILE"; then
    rm -f "$BLOCKEMU_ENV_FILE.new"
else
    chmod 0644 "$BLOCKEMU_ENV_FILE.new"
    mv -f "$BLOCKEMU_ENV_FILE.new" "$BLOCKEMU_ENV_FILE"
    say "wrote $BLOCKEMU_ENV_FILE"
fi
