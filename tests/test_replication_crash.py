"""Pairs across crashes.

The first tests run real `blockemu serve` processes and SIGKILL them mid-copy.
Each writes through the client, keeps what the array acknowledged (and the one
write per writer still in flight when the array died, which may land or not,
4 KiB page by page), kills the array at a chosen moment, starts it again on the
same root and checks that the pair comes back in a state that makes sense,
finishes its copy, and that both volumes then hold exactly what hosts were told
they hold.

The last test is the same idea made exhaustive for the pair commands, in this
process: a command is cut short before each step that persists pair state (a
header write, a bitmap or journal change), the array is opened again on what is
on disk, and the pair must be either as before the command or as after it --
with no volume content that hosts could see changed by a command that did not
happen.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import trio

from blockemu.array import Array
from blockemu.bitmap import TrackBitmap
from blockemu.client import ArrayClient, ConnectionLost, open_client
from blockemu.journal import Journal
from blockemu.pairstate import Command
from blockemu.replication import Pair
from blockemu.store import Volume, volume_filename
from formats.units import format_ldev
from formats.volume_header import DATA_OFFSET, MirrorMode, PairStatus
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

    async def write(
        self, client: ArrayClient, ldev: int, pvid: bytes, off: int, data: bytes
    ) -> None:
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

    def check(self, content: bytes) -> None:
        """*content* (the whole volume) is what was acknowledged, in-flight pages aside."""
        for off in range(0, len(content), BLOCK):
            got = content[off : off + BLOCK]
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


# -- commands cut short at every step ----------------------------------------------


class Crash(BaseException):
    """The array dies here: nothing after this point of the command happens."""


#: The operations that persist pair state; a crash can fall between any two of them.
PERSISTING = [
    (Volume, "update_header"),
    *[
        (TrackBitmap, name)
        for name in ("mark", "mark_all", "clear", "clear_range", "clear_all", "merge_from")
    ],
    (Journal, "reset"),
    (Journal, "mark_applied"),
]


@contextlib.contextmanager
def crash_before(step: int | None) -> Iterator[list[int]]:
    """Count persisting operations; raise :class:`Crash` instead of doing number *step*."""
    done = [0]

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def persisting(*args: Any, **kwargs: Any) -> Any:
            if done[0] == step:
                raise Crash
            done[0] += 1
            return original(*args, **kwargs)

        return persisting

    with contextlib.ExitStack() as stack:
        for cls, name in PERSISTING:
            if hasattr(cls, name):
                stack.enter_context(mock.patch.object(cls, name, wrap(getattr(cls, name))))
        yield done


SMALL = 4 * MiB  # 16 tracks
CP, CS = 0x50, 0x51


def put(array: Array, ldev: int, track: int, fill: bytes, length: int = TRACK // 2) -> None:
    array.write("", ldev, array.store.get(ldev).header.pvid, track * TRACK + 4096, fill * length)


def wrote(array: Array, ldev: int, view: bytes) -> bytes:
    """A small host write in track 7 (where the S-VOL may differ); returns *view* with it."""
    offset, data = 7 * TRACK + 12345, os.urandom(1000)
    array.write("", ldev, array.store.get(ldev).header.pvid, offset, data)
    return view[:offset] + data + view[offset + len(data) :]


def host_view(array: Array, pair: Pair, ldev: int) -> bytes:
    """What a host reading *ldev* would get, without the reads' copy-on-read side effect."""
    vol = array.store.get(ldev)
    source, target = pair.source_target()
    data = bytearray(vol.pread(0, SMALL))
    if vol is target and pair.status in (
        PairStatus.COPY_SP, PairStatus.PSUS, PairStatus.COPY_RS_R
    ):  # fmt: skip
        for t in pair.pending.iter_set(0):
            data[t * TRACK : (t + 1) * TRACK] = source.pread(t * TRACK, TRACK)
    return bytes(data)


def formed(array: Array, mode: MirrorMode) -> Pair:
    array.store.create(CP, SMALL)
    array.store.create(CS, SMALL)
    for t in range(4):
        put(array, CP, t, b"a")
    pair = array.pair_create(CP, CS, mode=mode)
    pair.drain()
    return pair


def split_and_changed(array: Array, mode: MirrorMode = MirrorMode.SYNC) -> Pair:
    """PSUS at 100 %, then different writes on each side."""
    pair = formed(array, mode)
    array.pair_command(Command.SPLIT, [pair])
    pair.drain()
    put(array, CP, 1, b"p")
    put(array, CP, 5, b"p")
    put(array, CS, 9, b"s")
    put(array, CS, 1, b"s", 1000)
    return pair


def suspended_and_changed(array: Array) -> Pair:
    pair = formed(array, MirrorMode.SYNC)
    array.pair_command(Command.SUSPEND, [pair])
    put(array, CP, 2, b"p")
    put(array, CS, 7, b"s")
    return pair


def copying(array: Array) -> Pair:
    array.store.create(CP, SMALL)
    array.store.create(CS, SMALL)
    for t in range(0, 16, 3):
        put(array, CP, t, b"a")
    return array.pair_create(CP, CS)  # COPY, nothing copied yet


def async_lagging(array: Array) -> Pair:
    pair = formed(array, MirrorMode.ASYNC)
    put(array, CP, 2, b"j")
    put(array, CP, 11, b"j")
    assert pair.journal.lag_records == 2
    return pair


def deferred_pending(array: Array) -> Pair:
    pair = formed(array, MirrorMode.DEFERRED)
    put(array, CP, 2, b"d")
    put(array, CP, 12, b"d")
    assert pair.pending.count() == 2
    return pair


def quick_split_copying(array: Array) -> Pair:
    pair = deferred_pending(array)
    array.pair_command(Command.SPLIT, [pair], quick=True)
    put(array, CP, 12, b"after")
    assert pair.status is PairStatus.PSUS and pair.pending.count() == 1
    return pair


SCENARIOS: dict[str, tuple[Callable[[Array], Pair], Command, bool]] = {
    "restore": (split_and_changed, Command.RESTORE, False),
    "resync from PSUS": (split_and_changed, Command.RESYNC, False),
    "resync from PSUE": (suspended_and_changed, Command.RESYNC, False),
    "suspend in COPY": (copying, Command.SUSPEND, False),
    "suspend with a journal lag": (async_lagging, Command.SUSPEND, False),
    "suspend of a quick split still copying": (quick_split_copying, Command.SUSPEND, False),
    "steady split with a journal lag": (async_lagging, Command.SPLIT, False),
    "quick split with pending tracks": (deferred_pending, Command.SPLIT, True),
    "delete in PSUS": (split_and_changed, Command.DELETE, False),
}


def run_cut_short(root: Path, scenario: str, step: int | None) -> int:
    """Build *scenario*, run its command crashing before *step*, reopen, check; steps run."""
    build, command, quick = SCENARIOS[scenario]
    array = Array.open(root)
    try:
        pair = build(array)
        before = pair.status
        p_view, s_view = host_view(array, pair, CP), host_view(array, pair, CS)
        s_visible = before in (PairStatus.PSUS, PairStatus.PSUE)
        with crash_before(step) as done, contextlib.suppress(Crash):
            array.pair_command(command, [pair], quick=quick)
    finally:
        array.close()  # what a SIGKILL leaves: files, mapped bitmaps and all
    array = Array.open(root)
    try:
        reopened = array.pairs.get(CP)
        after = PairStatus.SMPL if reopened is None else reopened.status
        where = f"{scenario}, crash before step {step}: {before.name} -> {after.name}"
        if reopened is None:  # deleted: both volumes keep what hosts saw
            assert command is Command.DELETE, where
            assert array.store.get(CP).pread(0, SMALL) == p_view, where
            assert array.store.get(CS).pread(0, SMALL) == s_view, where
            return done[0]
        pair = reopened
        if after is before:  # the command did not happen: nothing a host sees changed
            for _ in range(2):  # just reopened, then after host writes and the copier ran
                assert host_view(array, pair, CP) == p_view, where
                if s_visible:
                    assert host_view(array, pair, CS) == s_view, where
                p_view = wrote(array, CP, p_view)
                if s_visible:
                    s_view = wrote(array, CS, s_view)
                pair.drain()
            if pair.status is PairStatus.PAIR:
                assert array.store.get(CS).pread(0, SMALL) == p_view, where
            return done[0]
        # The command happened: hosts see its outcome at once, and it finishes as if
        # there had been no crash.
        assert command is not Command.DELETE, where
        p_wanted = s_view if command is Command.RESTORE else p_view
        assert host_view(array, pair, CP) == p_wanted, where
        if command is Command.SPLIT:
            assert host_view(array, pair, CS) == p_view, where
        pair.drain()
        if command is Command.SUSPEND:
            assert pair.status is PairStatus.PSUE, where
            array.pair_command(Command.RESYNC, [pair])
            pair.drain()
        raw_p, raw_s = (array.store.get(ldev).pread(0, SMALL) for ldev in (CP, CS))
        if command is Command.SPLIT:
            assert pair.status is PairStatus.PSUS and raw_s == p_view, where
        else:
            assert pair.status is PairStatus.PAIR and raw_p == raw_s == p_wanted, where
        return done[0]
    finally:
        array.close()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_command_cut_short_is_all_or_nothing(tmp_path: Path, scenario: str) -> None:
    steps = run_cut_short(tmp_path / "whole", scenario, None)
    assert steps > 0
    for step in range(steps):
        run_cut_short(tmp_path / f"cut-{step}", scenario, step)
