"""The protocol's array-side actions against a real array: idempotent replicas, reflection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from blockemu.client import open_client
from blockemu.connection import ArrayConnection
from blockemu.hostbuffer import HostBuffer
from formats.horcm import PairDef
from formats.state_file import ReplicaOp
from formats.wire import Op
from nodeagent.replica import ReplicaOps

from .conftest import ArrayProcess, split_and_wait

MiB = 1 << 20
PAIRS = [PairDef("db", "data", 0x10, 0x11, 0, 1), PairDef("db", "wal", 0x20, 0x21, 0, 1)]


async def test_split_resync_and_reflection_are_idempotent(
    array: ArrayProcess, tmp_path: Path
) -> None:
    async with open_client(array.unix) as admin:
        for ldev in (0x10, 0x11, 0x20, 0x21):
            await admin.create(ldev, 4 * MiB)
        await admin.pair_create("00:10", "00:11", group=3)
        await admin.pair_create("00:20", "00:21", group=3)
        pvid = await admin.read_pvid(0x10)
        await admin.write(0x10, pvid, 0, b"data before split")
    buffer = HostBuffer.load(tmp_path / "n1.buf", "n1")
    conn = ArrayConnection(array.unix, host="n1")
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        ops = ReplicaOps(conn, buffer, PAIRS)
        ok, what = await ops.run_replica(ReplicaOp.SPLIT, "db")
        assert ok and "ran on 2 pair(s)" in what
        ok, what = await ops.run_replica(ReplicaOp.SPLIT, "db")  # a recovering node repeats it
        assert ok and "already done" in what
        rows = await conn.call(lambda c: c.pair_display())
        assert [r["status"] for r in rows] == ["PSUS", "PSUS"]
        assert rows[0]["split_time"] == rows[1]["split_time"]  # one instant for the group

        await ops.control("db", take=False)  # the active gives the S-VOLs up for the standbys
        ok, what = await ops.reflect("db")
        assert ok, what
        entry = buffer.by_ldev(0x11)
        assert entry is not None and entry.pvid == bytes.fromhex(rows[0]["svol_pvid"])
        data = await conn.call(lambda c: c.read(0x11, entry.pvid, 0, 17))
        assert data == b"data before split"
        assert (await conn.call(lambda c: c.reservation(0x11)))[0] is None  # released again

        ok, what = await ops.run_replica(ReplicaOp.RESYNC, "db")
        assert ok and "ran on 2" in what
        ok, what = await ops.reflect("db")
        assert ok and "forgotten (paired)" in what
        assert buffer.by_ldev(0x11) is None and buffer.by_ldev(0x21) is None
        ok, what = await ops.run_replica(ReplicaOp.RESYNC, "db")
        assert ok and "already done" in what
        nursery.cancel_scope.cancel()
    assert os.path.exists(buffer.path)


async def test_unknown_groups_and_missing_pairs_are_reported(
    array: ArrayProcess, tmp_path: Path
) -> None:
    conn = ArrayConnection(array.unix, host="n1")
    buffer = HostBuffer.load(tmp_path / "b", "n1")
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        ops = ReplicaOps(conn, buffer, PAIRS)
        with pytest.raises(KeyError, match="known: db"):
            ops.of("nope")
        ok, what = await ops.run_replica(ReplicaOp.SPLIT, "db")
        assert not ok and "no pair on the array" in what
        nursery.cancel_scope.cancel()


async def test_drift_is_seen_and_reflect_runs_nothing(array: ArrayProcess, tmp_path: Path) -> None:
    """D16: a split made on the array directly shows as drift; REFLECT touches no pair."""
    async with open_client(array.unix) as admin:
        for ldev in (0x10, 0x11, 0x20, 0x21):
            await admin.create(ldev, 4 * MiB)
        await admin.pair_create("00:10", "00:11", group=3)
        await admin.pair_create("00:20", "00:21", group=3)
    buffer = HostBuffer.load(tmp_path / "n1.buf", "n1")
    conn = ArrayConnection(array.unix, host="n1")
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        ops = ReplicaOps(conn, buffer, PAIRS)
        assert await ops.drifted() == []  # paired, hidden, not in the buffer: consistent
        async with open_client(array.unix) as admin:
            await split_and_wait(admin, {"svol": "00:21"})
        assert await ops.drifted() == ["db"]
        before = await conn.call(lambda c: c.pair_display())
        ok, what = await ops.run_replica(ReplicaOp.REFLECT, "db")
        assert ok and "nothing to run" in what
        assert [r["status"] for r in await conn.call(lambda c: c.pair_display())] == [
            r["status"] for r in before
        ]  # 00:11 is still paired: REFLECT split nothing
        ok, what = await ops.reflect("db")
        assert ok, what
        assert await ops.drifted() == []
        entry = buffer.by_ldev(0x21)
        assert entry is not None and entry.pvid.hex() == before[1]["svol_pvid"]
        # The buffer holding an S-VOL the array hides again is drift too.
        async with open_client(array.unix) as admin:
            await admin.pair_command(Op.PAIR_RESYNC, {"svol": "00:21"})
        assert await ops.drifted() == ["db"]
        nursery.cancel_scope.cancel()
