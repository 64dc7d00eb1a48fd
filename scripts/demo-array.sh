#!/usr/bin/env bash
# The array-only story (what `make demo` runs without root), with real processes.
#   1. an array on a temporary root; volumes created sparse; a pair formed;
#   2. (as root) a host view: the host caches the S-VOL's identity, the pair is
#      split, the host's I/O to the S-VOL fails (stale PVID), a refresh fixes it.
# Leaves nothing behind: processes stopped by PID, mounts and the temp dir removed.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/.venv/bin
work=$(mktemp -d /tmp/blockemu-demo.XXXXXX)
pids=()
cleanup() {
    if mountpoint -q "$work/view" 2>/dev/null; then fusermount3 -u -z "$work/view" || true; fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

export BLOCKEMU_ARRAY="unix:$work/array.sock"
say "starting an array on $work/root"
"$bin/blockemu" serve --root "$work/root" --listen "$BLOCKEMU_ARRAY" \
    --listen tcp:127.0.0.1:0 --log-level warning > "$work/serve.out" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
cat "$work/serve.out"

say "creating volumes (10 GiB each; the root holds only headers)"
"$bin/blockemu" vol create 00:10 10G --label data
"$bin/blockemu" vol create 00:11 10G --label data-copy
"$bin/blockemu" vol list
du -sh "$work/root"

fuse=no
if [ "$(id -u)" -eq 0 ] && [ -e /dev/fuse ]; then fuse=yes; fi
if [ $fuse = yes ]; then
    say "host node1 scans its disk-info buffer (both volumes are simplex: two devices)"
    "$bin/blockemu" host scan --host node1 --buffer "$work/node1.buf"
    mkdir "$work/view"
    "$bin/blockemu" attach "$work/view" --host node1 --buffer "$work/node1.buf" \
        --foreground 2> "$work/attach.log" > "$work/attach.out" &
    pids+=($!)
    for _ in $(seq 100); do grep -q "mounted at" "$work/attach.out" 2>/dev/null && break; sleep 0.1; done
    cat "$work/attach.out"
    ls -l "$work/view"
    echo "writing through the host view to hdisk0 (00:10)"
    printf 'hello from node1\n' | dd of="$work/view/hdisk0" conv=notrunc,fsync status=none
fi

say "forming a pair 00:10 -> 00:11 (the S-VOL takes the P-VOL's PVID and is hidden)"
"$bin/blockemu" pair create --pvol 00:10 --svol 00:11 --wait
"$bin/blockemu" vol list

say "splitting: the S-VOL becomes the P-VOL of this instant, with a NEW PVID"
"$bin/blockemu" pair split --pvol 00:10 --wait
"$bin/blockemu" vol list

if [ $fuse = yes ]; then
    say "node1 never refreshed its buffer: reading the S-VOL (hdisk1) fails"
    if dd if="$work/view/hdisk1" bs=4096 count=1 status=none of=/dev/null 2>/dev/null; then
        echo "unexpected: the read worked"; exit 1
    fi
    echo "read failed with EIO, and the host view says why:"
    grep -m1 "stale identity" "$work/attach.log" | sed 's/^.*ERROR /  /'
    say "after 'blockemu host refresh hdisk1' the same device works (no remount)"
    "$bin/blockemu" host refresh hdisk1 --host node1 --buffer "$work/node1.buf"
    dd if="$work/view/hdisk1" bs=17 count=1 status=none
    echo "(the split copy holds node1's write; this is the patent's problem, and nodeagent"
    echo " refreshes every standby's buffer during the split so a takeover never sees it)"
else
    say "skipping the host-view part: it needs root and /dev/fuse (run: sudo make demo)"
fi

say "pair state and stopping"
"$bin/blockemu" pair display
echo "demo done"
