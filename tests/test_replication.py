"""Pair semantics, driven on an Array in this process; background work forced with drain()."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio

from blockemu.array import Array
from blockemu.bitmap import TRACK_SIZE
from blockemu.copyengine import data_extents
from blockemu.errors import (
    BadRequest,
    CommandRejected,
    ReservationConflict,
    StaleIdentity,
    VolumeHidden,
)
from blockemu.pairstate import Command
from formats.volume_header import DATA_OFFSET, Attr, MirrorMode, PairRole, PairStatus

MiB = 1 << 20
P, S = 0x10, 0x11


@pytest.fixture
def array(tmp_path: Path):
    a = Array.open(tmp_path / "root")
    try:
        yield a
    finally:
        a.close()


def pvid(array: Array, ldev: int) -> bytes:
    return array.store.get(ldev).header.pvid


def write(array: Array, ldev: int, offset: int, data: bytes) -> None:
    array.write("", ldev, pvid(array, ldev), offset, data)


def read(array: Array, ldev: int, offset: int, length: int) -> bytes:
    return array.read("", ldev, pvid(array, ldev), offset, length)


def raw(array: Array, ldev: int, offset: int = 0, length: int | None = None) -> bytes:
    """The backing file's data area, bypassing every pair rule."""
    vol = array.store.get(ldev)
    return vol.pread(offset, vol.size - offset if length is None else length)


def formed(array: Array, mode: MirrorMode = MirrorMode.SYNC, size: int = 8 * MiB):
    array.store.create(P, size, label="prod")
    array.store.create(S, size, label="backup")
    return array.pair_create(P, S, mode=mode)


def test_form_hides_the_svol_under_the_pvols_identity(array: Array) -> None:
    array.store.create(P, 8 * MiB)
    array.store.create(S, 8 * MiB)
    own = pvid(array, S)
    write(array, P, 0, b"before the pair")
    pair = array.pair_create(P, S)
    assert pair.status is PairStatus.COPY
    s = array.store.get(S).header
    assert s.pvid == pvid(array, P) != own
    assert s.info.attributes & Attr.HIDDEN
    assert s.pair.role is PairRole.SVOL and s.pair.partner_ldev == P
    with pytest.raises(VolumeHidden, match="S-VOL of a pair"):
        array.read("", S, s.pvid, 0, 512)
    pair.drain()
    assert pair.status is PairStatus.PAIR
    assert raw(array, S) == raw(array, P)


@pytest.mark.parametrize("mode", list(MirrorMode))
def test_mirroring_then_split_freezes_the_instant(array: Array, mode: MirrorMode) -> None:
    pair = formed(array, mode)
    pair.drain()
    write(array, P, 3 * MiB + 100, b"A" * 5000)
    if mode is MirrorMode.SYNC:
        assert raw(array, S, 3 * MiB + 100, 5000) == b"A" * 5000  # both before the ack
    elif mode is MirrorMode.ASYNC:
        assert pair.journal.lag_records == 1 and pair.journal.lag_bytes == 5000
    else:
        assert pair.pending.count() == 1
    instant = raw(array, P)
    paired_pvid = pvid(array, S)
    array.pair_command(Command.SPLIT, [pair])
    write(array, P, 3 * MiB, b"B" * 8192)  # after the instant: must not reach the S-VOL
    pair.drain()
    assert pair.status is PairStatus.PSUS
    s = array.store.get(S).header
    assert s.pvid not in (paired_pvid, pvid(array, P))
    assert not s.info.attributes & Attr.HIDDEN
    assert read(array, S, 0, 8 * MiB) == instant
    assert pair.pdiff.count() == 1


def test_quick_split_is_usable_at_once_with_copy_on_write(array: Array) -> None:
    pair = formed(array, MirrorMode.DEFERRED)
    pair.drain()
    data = os.urandom(4 * MiB)
    write(array, P, 0, data)  # 16 tracks marked, none copied yet
    array.pair_command(Command.SPLIT, [pair], quick=True)
    assert pair.status is PairStatus.PSUS  # no waiting
    assert pair.copy_percent() < 100
    write(array, P, 0, b"\xff" * MiB)  # copy-on-write keeps the old tracks for the S-VOL
    write(array, S, 2 * MiB, b"S-VOL write")  # the S-VOL is writable at once
    assert read(array, S, 0, MiB) == data[:MiB]
    assert read(array, S, 2 * MiB, 11) == b"S-VOL write"
    assert read(array, S, 3 * MiB, MiB) == data[3 * MiB :]  # settled on read
    # Deleting (or restoring from) the pair now would leave an S-VOL that only looks whole.
    for command in (Command.DELETE, Command.RESTORE):
        with pytest.raises(CommandRejected, match=r"split copy is at .* wait for 100 %"):
            array.pair_command(command, [pair])
    pair.drain()
    assert pair.copy_percent() == 100
    assert raw(array, S, 0, 2 * MiB) == data[: 2 * MiB]
    assert raw(array, S, 3 * MiB, MiB) == data[3 * MiB :]
    array.pair_command(Command.DELETE, [pair])  # complete now: accepted


def test_resync_copies_only_changed_tracks_and_rejoins(array: Array) -> None:
    pair = formed(array)
    pair.drain()
    array.pair_command(Command.SPLIT, [pair])
    write(array, P, 0, b"p" * 10)
    write(array, S, 5 * MiB, b"s" * 10)
    assert (pair.pdiff.count(), pair.sdiff.count()) == (1, 1)
    array.pair_command(Command.RESYNC, [pair])
    assert pair.status is PairStatus.COPY_RS
    assert pair.pending.count() == 2  # only the changed tracks
    assert array.store.get(S).header.pvid == pvid(array, P)
    pair.drain()
    assert pair.status is PairStatus.PAIR
    assert raw(array, S) == raw(array, P)


def test_restore_copies_the_svol_back(array: Array) -> None:
    pair = formed(array)
    write(array, P, 0, b"good" * 1000)
    pair.drain()
    array.pair_command(Command.SPLIT, [pair])
    p_before = pvid(array, P)
    write(array, P, 0, b"oops" * 1000)  # the mistake the backup undoes
    write(array, P, 6 * MiB, b"more damage")
    array.pair_command(Command.RESTORE, [pair])
    assert pair.status is PairStatus.COPY_RS_R
    assert read(array, P, 0, 4000) == b"good" * 1000  # redirected before the copy ran
    write(array, P, 7 * MiB, b"new")  # host writes during restore go to both sides
    pair.drain()
    assert pair.status is PairStatus.PAIR
    assert pvid(array, P) == p_before
    assert raw(array, P, 0, 4000) == b"good" * 1000
    assert raw(array, P, 6 * MiB, 11) == bytes(11)
    assert raw(array, S) == raw(array, P)


def test_suspend_makes_the_next_resync_a_full_copy(array: Array) -> None:
    pair = formed(array)
    pair.drain()
    array.pair_command(Command.SUSPEND, [pair])
    assert pair.status is PairStatus.PSUE
    assert not array.store.get(S).header.info.attributes & Attr.HIDDEN
    array.pair_command(Command.RESYNC, [pair])
    assert pair.status is PairStatus.COPY
    assert pair.pending.count() == pair.pending.tracks
    pair.drain()
    assert pair.status is PairStatus.PAIR


def test_delete_returns_both_volumes_to_simplex(array: Array, tmp_path: Path) -> None:
    pair = formed(array)
    pair.drain()
    files = pair.files
    assert files.pending.exists()
    array.pair_command(Command.DELETE, [pair])
    for ldev in (P, S):
        h = array.store.get(ldev).header
        assert h.pair.role is PairRole.SIMPLEX and h.pair.status is PairStatus.SMPL
    assert pvid(array, S) != pvid(array, P)
    assert not files.pending.exists() and not files.journal.exists()
    assert array.pairs == {}
    write(array, S, 0, b"its own volume again")


def test_commands_the_table_refuses(array: Array) -> None:
    pair = formed(array)
    with pytest.raises(CommandRejected, match="cannot restore"):
        array.pair_command(Command.RESTORE, [pair])
    with pytest.raises(CommandRejected, match="delete the pair first"):
        array.delete_volume(P)
    with pytest.raises(CommandRejected, match="already in pair"):
        array.store.create(0x20, 8 * MiB)
        array.pair_create(0x20, S)
    with pytest.raises(CommandRejected, match="SMPL"):
        array.select(pvol=0x20)
    array.store.create(0x21, 4 * MiB)
    with pytest.raises(BadRequest, match="must match"):
        array.pair_create(0x20, 0x21)
    with pytest.raises(BadRequest, match="itself"):
        array.pair_create(0x20, 0x20)


def test_consistency_group_splits_at_one_instant(array: Array) -> None:
    for p, s in ((0x10, 0x11), (0x20, 0x21)):
        array.store.create(p, 4 * MiB)
        array.store.create(s, 4 * MiB)
        array.pair_create(p, s, group=7, mode=MirrorMode.ASYNC).drain()
    write(array, 0x10, 0, b"data page")
    write(array, 0x20, 0, b"wal record")  # both in the journal, not yet on the S-VOLs
    group = array.select(group=7)
    assert [p.pvol.ldev for p in group] == [0x10, 0x20]
    array.pair_command(Command.SPLIT, group)
    write(array, 0x10, 0, b"after split")
    for pair in group:
        pair.drain()
    assert read(array, 0x11, 0, 9) == b"data page"
    assert read(array, 0x21, 0, 10) == b"wal record"


def test_initial_copy_keeps_holes_holes(array: Array) -> None:
    array.store.create(P, 64 * MiB)
    array.store.create(S, 64 * MiB)
    write(array, P, 10 * MiB, os.urandom(MiB))
    write(array, P, 50 * MiB, os.urandom(TRACK_SIZE))
    pair = array.pair_create(P, S)
    pair.drain()
    fd = array.store.get(S).fd
    extents = list(data_extents(fd, DATA_OFFSET, DATA_OFFSET + 64 * MiB))
    assert sum(length for _, length in extents) <= 2 * MiB
    assert raw(array, S) == raw(array, P)


def test_pairs_and_bitmaps_survive_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "root"
    array = Array.open(root)
    array.store.create(P, 8 * MiB)
    array.store.create(S, 8 * MiB)
    array.pair_create(P, S).drain()
    array.pair_command(Command.SPLIT, array.select(pvol=P))
    write(array, P, MiB, b"changed")
    array.close()
    array = Array.open(root)
    try:
        pair = array.pairs[P]
        assert pair.status is PairStatus.PSUS
        assert pair.pdiff.count() == 1
        array.pair_command(Command.RESYNC, [pair])
        assert pair.pending.count() == 1
        pair.drain()
        assert raw(array, S) == raw(array, P)
    finally:
        array.close()


def test_a_half_written_transition_is_aligned_to_the_pvol(tmp_path: Path) -> None:
    """A crash between the S-VOL's and the P-VOL's header write: the P-VOL wins."""
    root = tmp_path / "root"
    array = Array.open(root)
    array.store.create(P, 8 * MiB)
    array.store.create(S, 8 * MiB)
    array.pair_create(P, S).drain()
    svol = array.store.get(S)
    svol.update_header(status=PairStatus.PSUS, attributes=Attr.NONE, pvid=os.urandom(16))
    array.close()  # the P-VOL still says PAIR
    array = Array.open(root)
    try:
        s = array.store.get(S).header
        assert s.pair.status is PairStatus.PAIR
        assert s.pvid == pvid(array, P) and s.info.attributes & Attr.HIDDEN
    finally:
        array.close()


def test_reservations_fence_other_hosts_and_persist(tmp_path: Path) -> None:
    root = tmp_path / "root"
    array = Array.open(root)
    array.store.create(P, MiB)
    pv = pvid(array, P)
    array.reservations.reserve(P, "node1")
    array.write("node1", P, pv, 0, b"mine")
    with pytest.raises(ReservationConflict, match="reserved by host 'node1'"):
        array.write("node2", P, pv, 0, b"theirs")
    with pytest.raises(ReservationConflict):
        array.show("node2", P)
    assert array.read_pvid(P) == pv  # the PVID alone is readable by anybody
    array.close()
    array = Array.open(root)
    try:
        with pytest.raises(ReservationConflict):
            array.read("node2", P, pv, 0, 4)
        assert array.reservations.preempt(P, "node2") == "node1"
        assert array.read("node2", P, pv, 0, 4) == b"mine"
        with pytest.raises(ReservationConflict):
            array.reservations.release(P, "node1")
        array.reservations.release(P, "node2")
        assert array.read("", P, pv, 0, 4) == b"mine"
        with pytest.raises(StaleIdentity):
            array.read("", P, os.urandom(16), 0, 4)
    finally:
        array.close()


async def test_background_copier_runs_in_the_array_task(array: Array) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(array.run)
        array.store.create(P, 32 * MiB)
        array.store.create(S, 32 * MiB)
        write(array, P, 0, os.urandom(8 * MiB))
        pair = array.pair_create(P, S, mode=MirrorMode.DEFERRED)
        with trio.fail_after(20):
            while pair.status is not PairStatus.PAIR:
                await trio.sleep(0.01)
            write(array, P, 20 * MiB, b"deferred")
            while pair.pending.count():
                await trio.sleep(0.01)
        assert raw(array, S) == raw(array, P)
        nursery.cancel_scope.cancel()


def test_zero_writes_over_whole_tracks_punch_holes(array: Array) -> None:
    pair = formed(array, size=16 * MiB)
    pair.drain()
    write(array, P, 0, os.urandom(8 * MiB))
    p_fd, s_fd = array.store.get(P).fd, array.store.get(S).fd

    def allocated(fd: int) -> int:
        return sum(n for _, n in data_extents(fd, DATA_OFFSET, DATA_OFFSET + 16 * MiB))

    assert allocated(p_fd) >= 8 * MiB and allocated(s_fd) >= 8 * MiB
    # 2 MiB of zeros starting mid-track: the whole tracks inside become holes on both sides,
    # the partial tracks at the ends are written.
    write(array, P, MiB + 4096, bytes(2 * MiB))
    assert raw(array, P, MiB, 3 * MiB) == raw(array, S, MiB, 3 * MiB)
    assert raw(array, P, MiB + 4096, 2 * MiB) == bytes(2 * MiB)
    assert raw(array, P, MiB, 4096) != bytes(4096)
    assert allocated(p_fd) <= 8 * MiB - 2 * MiB + 2 * TRACK_SIZE
    assert allocated(s_fd) <= 8 * MiB - 2 * MiB + 2 * TRACK_SIZE
    small = bytes(4096)  # shorter than a track: written as it is
    write(array, P, 6 * MiB, small)
    assert raw(array, P, 6 * MiB, 4096) == small


def async_writes(array: Array, seed: int, count: int) -> None:
    """Overlapping writes of random data (never whole zero tracks), so order matters."""
    rng = random.Random(seed)
    for _ in range(count):
        offset = rng.randrange(0, 8 * MiB - 70_000) // 512 * 512
        write(array, P, offset, rng.randbytes(rng.choice([512, 4096, 65536])))


def test_async_apply_from_memory_and_from_the_file_give_the_same_svol(tmp_path: Path) -> None:
    svols = []
    for restart in (False, True):
        root = tmp_path / f"root-{restart}"
        array = Array.open(root)
        try:
            formed(array, MirrorMode.ASYNC).drain()
            async_writes(array, 1, 200)
            pair = array.pairs[P]
            assert pair.journal.cached_records == pair.journal.lag_records == 200
            if restart:
                array.close()  # the records stay in the file only, unapplied
                array = Array.open(root)
                pair = array.pairs[P]
                assert pair.journal.cached_records == 0 and pair.journal.lag_records == 200
            async_writes(array, 2, 50)  # more, in memory, behind the file's
            assert pair.journal.lag_records == 250
            pair.drain()
            assert pair.journal.lag_records == 0
            assert raw(array, S) == raw(array, P)
            svols.append(raw(array, S))
        finally:
            array.close()
    assert svols[0] == svols[1]


async def test_background_applier_batches_and_catches_up(array: Array) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(array.run)
        pair = formed(array, MirrorMode.ASYNC)
        with trio.fail_after(20):
            while pair.status is not PairStatus.PAIR:
                await trio.sleep(0.01)
        applied: list[int] = []
        mark_applied = pair.journal.mark_applied

        def counting(seq: int) -> None:
            applied.append(seq)
            mark_applied(seq)

        pair.journal.mark_applied = counting  # type: ignore[method-assign]
        for n in range(100):
            write(array, P, n * 4096, os.urandom(4096))
            await trio.lowlevel.checkpoint()  # the applier may run between writes
        with trio.fail_after(20):
            while pair.journal.lag_records:
                await trio.sleep(0.001)
        assert applied[-1] == pair.journal.last_seq
        assert len(applied) < 100  # batches, not one apply per write
        assert raw(array, S) == raw(array, P)
        nursery.cancel_scope.cancel()
