#!/usr/bin/env bash
# volumes.sh: the lab's volumes and pairs on the array, as `blockemu lab up` makes them --
# the replica group labvg of blockemu/labconfig.py (lab_pairs: P-VOL 00:10.. -> S-VOL
# 00:20.., labels labdevN / labdevN-copy) in the array's consistency group of the lab
# (blockemu/labstate.py ARRAY_GROUP) -- over the array's admin socket. Idempotent: a volume
# that exists is kept, a P-VOL already in a pair (in any state: PAIR, split, ...) is left
# as it is; only what is missing is made.
#
# Inputs (environment): BLOCKEMU_ARRAY (default unix:$BLOCKEMU_ADMIN_SOCK), BLOCKEMU_PAIRS,
# BLOCKEMU_VOLUME_SIZE, BLOCKEMU_PAIR_MODE; paths as in lib.sh.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

export BLOCKEMU_ARRAY=${BLOCKEMU_ARRAY:-unix:$BLOCKEMU_ADMIN_SOCK}
blockemu=$BLOCKEMU_BIN/blockemu
volumes=$("$blockemu" vol list --json)
pairs=$("$blockemu" pair display --json)

# One line per pair of the plan: GROUP PVOL SVOL NAME, then 1/0 for "create the P-VOL",
# "create the S-VOL", "form the pair"; the plan from the generator both labs use.
plan=$("$BLOCKEMU_BIN/python" - "$BLOCKEMU_PAIRS" "$volumes" "$pairs" <<'PY'
import json
import sys

from blockemu.labconfig import lab_pairs
from blockemu.labstate import ARRAY_GROUP
from formats.units import format_ldev

have = {v["ldev"] for v in json.loads(sys.argv[2])["volumes"]}
paired = {p["pvol"] for p in json.loads(sys.argv[3])["pairs"]}
for p in lab_pairs(int(sys.argv[1])):
    pvol, svol = format_ldev(p.pvol), format_ldev(p.svol)
    todo = (pvol not in have, svol not in have, pvol not in paired)
    print(ARRAY_GROUP, pvol, svol, p.name, *(int(x) for x in todo))
PY
)

lab_group=""
while read -r group pvol svol name new_pvol new_svol new_pair; do
    lab_group=$group
    if [ "$new_pvol" = 1 ]; then
        "$blockemu" vol create "$pvol" "$BLOCKEMU_VOLUME_SIZE" --label "$name"
    fi
    if [ "$new_svol" = 1 ]; then
        "$blockemu" vol create "$svol" "$BLOCKEMU_VOLUME_SIZE" --label "$name-copy"
    fi
    if [ "$new_pair" = 1 ]; then
        say "forming pair $pvol -> $svol (group $group, $BLOCKEMU_PAIR_MODE)"
        "$blockemu" pair create --pvol "$pvol" --svol "$svol" --mode "$BLOCKEMU_PAIR_MODE" \
            --group "$group" --wait >/dev/null
    else
        say "pair $pvol -> $svol exists: kept as it is"
    fi
done <<<"$plan"
"$blockemu" pair display --group "$lab_group"
