"""Pairs across crashes: real `blockemu serve` processes killed with SIGKILL mid-copy.

Each test writes through the client, keeps what the array acknowledged (and the
one write per writer still in flight when the array died, which may land or
not, 4 KiB page by page), kills the array at a chosen moment, starts it again
on the same root and checks that the pair comes back in a state that makes
sense, finishes its copy, and that both volumes then hold exactly what hosts
were told they hold.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from blockemu.client import ArrayClient, ConnectionLost, open_client
from blockemu.store import volume_filename
from formats.units import format_ldev
from formats.volume_header import DATA_OFFSET
from formats.wire import Op

from .conftest import ArrayProcess

KiB, MiB = 1 << 10, 1 << 20
BLOCK = 64 * KiB  # every host write here is whole 64 KiB blocks
TRACK = 256 * KiB
PAGE = 4 * KiB
TIMEOUT = 60  # seconds any wait may take before the test fails instead of hanging
P, S = 0x40, 0x41
PN, SN = format_ldev(P), format_ldev(S)


class Shadow:
    """What hosts were told a volume holds, by 64 KiB block (absent: never written, zeros)."""

    def __init__(self) -> None:
        self.acked: dict[int, bytes] = {}
        self.inflight: dict[int, tuple[bytes, bytes]] = {}  # offset -> (old, new)

    def copy(self) -> Shadow:
        other = Shadow()
        other.acked = dict(self.acked)
        return other

    async def write(self, client: ArrayClient, ldev: int, pvid: bytes, off: int, data: bytes):  # type: ignore[no-untyped-def]
        """Write whole blocks at *off*; they count as acknowledged once the call returns."""
        blocks = range(off, off + len(data), BLOCK)
        for b in blocks:
            self.inflight[b] = (self.acked.get(b, bytes(BLOCK)), data[b - off : b - off + BLOCK])
        await client.write(ldev, pvid, off, data)
        for b in blocks:
            self.acked[b] = self.inflight.pop(b)[1]

    def settle(self, content: bytes) -> None:
        """Check *content* (the whole volume), then take in-flight blocks as they turned out."""
        self.check(content)
        for off in self.inflight:
            self.acked[off] = content[off : off + BLOCK]
        self.inflight.clear()

    def check(self, content: bytes, start: int = 0) -> None:
        """*content* (the volume from *start*) is what was acknowledged, in-flight pages aside."""
        for off in range(start, start + len(content), BLOCK):
            got = content[off - start : off - start + BLOCK]
            if off in self.inflight:
                old, new = self.inflight[off]
                for p in range(0, BLOCK, PAGE):
                    assert got[p : p + PAGE] in (old[p : p + PAGE], new[p : p + PAGE]), off
            else:
                assert got == self.acked.get(off, bytes(BLOCK)), f"block at {off} differs"


def volume_data(array: ArrayProcess, ldev: int, size: int) -> bytes:
    """The data area of a volume's backing file, read behind the array's back."""
    with open(array.root / "volumes" / volume_filename(ldev), "rb") as f:
        f.seek(DATA_OFFSET)
        data = f.read(size)
    assert len(data) == size
    return data


async def display(client: ArrayClient) -> dict[str, Any]:
    (row,) = await client.pair_display({"pvol": PN})
    return row


async def wait_for(
    client: ArrayClient, done: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Poll pair display until *done*; fail (not hang) after TIMEOUT seconds."""
    row: dict[str, Any] = {}
    with trio.move_on_after(TIMEOUT):
        while not done(row := await display(client)):
            await trio.sleep(0.02)
        return row
    raise AssertionError(f"pair never got to {what} in {TIMEOUT}s; last display: {row}")


def random_blocks(rng: random.Random, size: int, count: int) -> list[int]:
    return [b * BLOCK for b in rng.sample(range(size // BLOCK), count)]


async def write_blocks(
    client: ArrayClient, shadow: Shadow, ldev: int, pvid: bytes, offsets: list[int]
) -> None:
    """Write random data at each offset, 8 writes in flight at a time."""

    async def worker(mine: list[int]) -> None:
        for off in mine:
            await shadow.write(client, ldev, pvid, off, os.urandom(BLOCK))

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(worker, offsets[i::8])


async def kill_while_writing(
    array: ArrayProcess,
    shadow: Shadow,
    pvid: bytes,
    size: int,
    moment: Callable[[dict[str, Any], int], bool],
    what: str,
    writers: int = 1,
    pause: float = 0.005,
) -> dict[str, Any]:
    """Keep writing random blocks on the P-VOL; SIGKILL the array once *moment* says so.

    *moment* gets the pair display and how many writes were acknowledged so far.
    Returns the last display before the kill.
    """
    rng = random.Random()
    acked = 0

    async def writer(client: ArrayClient) -> None:
        nonlocal acked
        try:
            while True:
                off = rng.randrange(size // BLOCK) * BLOCK
                if off in shadow.inflight:
                    continue
                await shadow.write(client, P, pvid, off, os.urandom(BLOCK))
                acked += 1
                await trio.sleep(pause)
        except ConnectionLost:
            return  # the array died under this write: it stays in shadow.inflight

    async with open_client(array.unix) as client, trio.open_nursery() as nursery:
        for _ in range(writers):
            nursery.start_soon(writer, client)
        row: dict[str, Any] = {}
        with trio.move_on_after(TIMEOUT):
            while not moment(row := await display(client), acked):
                await trio.sleep(0.01)
            array.kill()
            return row
        raise AssertionError(f"never saw {what} in {TIMEOUT}s; last display: {row}")


async def restarted(array: ArrayProcess, check: Callable[[ArrayClient], Awaitable[None]]) -> None:
    array.start()
    async with open_client(array.unix) as client:
        await check(client)


# -- the tests -------------------------------------------------------------------


async def test_sigkill_during_the_initial_copy(array: ArrayProcess) -> None:
    size = 256 * MiB
    shadow = Shadow()
    async with open_client(array.unix) as client:
        pvid = (await client.create(P, size)).pvid
        await client.create(S, size)
        await write_blocks(client, shadow, P, pvid, random_blocks(random.Random(1), size, 1536))
        (row,) = await client.pair_create(PN, SN, mode="sync", pace=1)  # 32 MiB/s
        assert row["status"] == "COPY" and row["copy_percent"] < 100

    before = await kill_while_writing(
        array,
        shadow,
        pvid,
        size,
        lambda row, acked: row["status"] == "COPY" and 1 <= row["copy_percent"] <= 99
        and acked >= 20,
        "COPY between 1 and 99 %",
    )  # fmt: skip

    async def check(client: ArrayClient) -> None:
        row = await display(client)
        assert row["status"] in ("COPY", "PAIR"), row
        assert (row["pvol"], row["svol"], row["mode"]) == (PN, SN, "sync")
        assert 0 <= row["copy_percent"] <= 100
        if row["status"] == "COPY":
            assert row["copy_percent"] >= before["copy_percent"] - 100 * 64 // 1024
        assert row["svol_pvid"] == row["pvol_pvid"] == pvid.hex()
        await wait_for(client, lambda r: r["status"] == "PAIR", "PAIR")

    await restarted(array, check)
    pdata = volume_data(array, P, size)
    assert volume_data(array, S, size) == pdata
    shadow.check(pdata)


async def test_sigkill_with_the_async_journal_lagging(array: ArrayProcess) -> None:
    size = 64 * MiB
    shadow = Shadow()
    async with open_client(array.unix) as client:
        pvid = (await client.create(P, size)).pvid
        await client.create(S, size)
        await client.pair_create(PN, SN, mode="async")
        await wait_for(client, lambda r: r["status"] == "PAIR", "PAIR")

    # The applier may catch up between the display and the kill; try again until a
    # restart had journal records to replay (it says so in the log), a few times at most.
    for _ in range(5):
        before = await kill_while_writing(
            array,
            shadow,
            pvid,
            size,
            lambda row, acked: row["journal"]["records"] > 0 and acked >= 200,
            "journal records waiting",
            writers=16,
            pause=0,
        )
        assert before["status"] == "PAIR" and before["mode"] == "async"
        seen = len(array.log.read_bytes())
        array.start()
        async with open_client(array.unix) as client:
            row = await display(client)
            assert row["status"] == "PAIR", row
            shadow.settle(await client.read(P, pvid, 0, size))  # no acknowledged write lost
        if b"after a crash" in array.log.read_bytes()[seen:]:
            break
    else:
        raise AssertionError("the journal never had records to replay at the kill")

    async with open_client(array.unix) as client:
        await wait_for(client, lambda r: r["journal"]["records"] == 0, "an empty journal")
        await client.pair_command(Op.PAIR_SPLIT, {"pvol": PN})
        row = await wait_for(client, lambda r: r["status"] == "PSUS", "PSUS")
        spvid = await client.read_pvid(S)
        assert row["svol_pvid"] == spvid.hex() != row["pvol_pvid"]
        pdata = await client.read(P, pvid, 0, size)
        assert await client.read(S, spvid, 0, size) == pdata
        shadow.check(pdata)


async def test_sigkill_during_a_resync(array: ArrayProcess) -> None:
    size = 128 * MiB
    rng = random.Random(3)
    shadow = Shadow()
    async with open_client(array.unix) as client:
        pvid = (await client.create(P, size)).pvid
        await client.create(S, size)
        await client.pair_create(PN, SN, mode="sync", pace=1)  # empty: PAIR at once
        await wait_for(client, lambda r: r["status"] == "PAIR", "PAIR")
        await client.pair_command(Op.PAIR_SPLIT, {"pvol": PN})
        await wait_for(client, lambda r: r["status"] == "PSUS", "PSUS")
        tracks = rng.sample(range(size // TRACK), 320)  # 80 MiB to copy back at 32 MiB/s
        await write_blocks(
            client, shadow, P, pvid, [t * TRACK + b for t in tracks for b in range(0, TRACK, BLOCK)]
        )
        spvid = await client.read_pvid(S)
        await write_blocks(client, Shadow(), S, spvid, random_blocks(rng, size, 40))
        (row,) = await client.pair_command(Op.PAIR_RESYNC, {"pvol": PN})
        assert row["status"] == "COPY_RS"

    await kill_while_writing(
        array,
        shadow,
        pvid,
        size,
        lambda row, acked: row["status"] == "COPY_RS" and row["copy_percent"] <= 99
        and acked >= 20,
        "COPY_RS below 100 %",
    )  # fmt: skip

    async def check(client: ArrayClient) -> None:
        row = await display(client)
        assert row["status"] in ("COPY_RS", "PAIR"), row
        assert row["svol_pvid"] == row["pvol_pvid"] == pvid.hex()
        await wait_for(client, lambda r: r["status"] == "PAIR", "PAIR")

    await restarted(array, check)
    pdata = volume_data(array, P, size)
    assert volume_data(array, S, size) == pdata
    shadow.check(pdata)


async def test_sigkill_right_after_a_steady_split(array: ArrayProcess) -> None:
    size = 128 * MiB
    shadow = Shadow()
    async with open_client(array.unix) as client:
        pvid = (await client.create(P, size)).pvid
        await client.create(S, size)
        await client.pair_create(PN, SN, mode="deferred", pace=1)
        await wait_for(client, lambda r: r["status"] == "PAIR", "PAIR")
        # Deferred: these only mark tracks; the update copy moves them at 32 MiB/s.
        await write_blocks(client, shadow, P, pvid, random_blocks(random.Random(4), size, 1024))
        instant = shadow.copy()
        (row,) = await client.pair_command(Op.PAIR_SPLIT, {"pvol": PN})
        assert row["status"] == "COPY_SP" and row["copy_percent"] < 100, row
        # After the instant: copy-on-write must keep these off the S-VOL, crash or not.
        await write_blocks(client, shadow, P, pvid, random_blocks(random.Random(5), size, 64))
    array.kill()

    async def check(client: ArrayClient) -> None:
        row = await display(client)
        assert row["status"] in ("COPY_SP", "PSUS"), row
        row = await wait_for(client, lambda r: r["status"] == "PSUS", "PSUS")
        assert row["copy_percent"] == 100
        spvid = await client.read_pvid(S)
        assert row["svol_pvid"] == spvid.hex() != row["pvol_pvid"] == pvid.hex()
        instant.check(await client.read(S, spvid, 0, size))
        shadow.check(await client.read(P, pvid, 0, size))

    await restarted(array, check)
