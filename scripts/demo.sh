#!/usr/bin/env bash
# The main job for now: start an array on a temporary root, create volumes,
# write and read through the array protocol, show the volumes and their
# PVIDs, stop the array. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/.venv/bin
work=$(mktemp -d /tmp/blockemu-demo.XXXXXX)
array_pid=""
cleanup() {
    [ -n "$array_pid" ] && kill "$array_pid" 2>/dev/null && wait "$array_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

export BLOCKEMU_ARRAY="unix:$work/array.sock"
echo "== starting an array on $work/root"
"$bin/blockemu" serve --root "$work/root" --listen "$BLOCKEMU_ARRAY" --log-level warning &
array_pid=$!
for _ in $(seq 50); do [ -S "$work/array.sock" ] && break; sleep 0.1; done

echo "== creating volumes"
"$bin/blockemu" vol create 00:10 10G --label data
"$bin/blockemu" vol create 00:11 10G --label data-copy
"$bin/blockemu" vol create 00:20 2G --label wal
echo "== volumes (10 GiB each, yet the root holds only headers: $(du -sh "$work/root" | cut -f1))"
"$bin/blockemu" vol list
echo "== header of 00:10, read straight from the volume file"
"$bin/blockemu" vol show 00:10
echo "== a write and read-back through the array protocol, then a stale PVID refused"
"$bin/python" - <<'PY'
import os, trio
from blockemu.address import default_address
from blockemu.client import open_client
from blockemu.errors import StaleIdentity

async def main():
    async with open_client(default_address()) as array:
        vol = await array.show(0x10)
        await array.write(vol.ldev, vol.pvid, 1 << 20, b"hello, array\n")
        await array.flush(vol.ldev, vol.pvid)
        print("read back:", (await array.read(vol.ldev, vol.pvid, 1 << 20, 13)).decode().strip())
        try:
            await array.read(vol.ldev, os.urandom(16), 0, 512)
        except StaleIdentity as exc:
            print("stale PVID refused:", exc)

trio.run(main)
PY
echo "== stopping the array"
kill "$array_pid"; wait "$array_pid" || true; array_pid=""
echo "demo done"
