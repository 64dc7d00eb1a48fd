#!/usr/bin/env bash
# The main job: the product's story on one machine, with real processes.
#
# As root (namespaces, FUSE, loop devices): `blockemu lab demo` -- a two-node
# namespace lab runs a database through its mounts, splits a backup through
# nodeagent, loses node1 to SIGKILL and lets node2 take over; once with the
# patent's protocol (eager: everything works) and once without it (off: EIO on
# the backup, the patent's Fig. 2). Summary table and SVG timelines at the end;
# exit status non-zero if a run did not end as its policy predicts.
#
# Without root, the array-only part of the story (scripts/demo-array.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "demo: not root: the namespace lab needs root; running the array-only story instead"
    exec bash scripts/demo-array.sh
fi
exec .venv/bin/blockemu lab demo "$@"
