"""Pairs against an in-memory model: random host I/O and pair commands (hypothesis.stateful).

The machine drives an :class:`Array` in this process (no server, no trio): the
copier never runs on its own, background work happens only when the
"background" rule drains a pair (:meth:`Pair.drain`), so every intermediate
state (a quick split still copying, a steady split draining, a restore half
done) stays observable for as many steps as hypothesis likes. That rule also
restarts the array now and then (close, :meth:`Array.open` on the same root).

The model keeps, per volume, the bytes a host must read (``None`` for a hidden
S-VOL, whose content only matters once the pair is PAIR again), and per pair
slot the status the array must show. What is checked, only where the model
says it must hold:

* host reads through :meth:`Array.read` equal the model (a quick split's
  copy-on-read, a restore's read redirection included); hidden S-VOLs refuse
  host I/O with :class:`VolumeHidden`;
* side-effect free, after every step: the P-VOL's and the point-in-time S-VOL's
  content as the pending bitmap says a host would see it (the source's raw
  track where a track is pending, the volume's own raw track elsewhere);
* after a drain: PAIR means raw P-VOL == raw S-VOL == the model; a split
  S-VOL holds exactly the P-VOL of the split instant, however the P-VOL was
  written since; a restore leaves the P-VOL as the S-VOL was;
* identities: a P-VOL's PVID never changes; a hidden S-VOL carries its
  P-VOL's PVID; an S-VOL coming out of hiding gets a PVID it never had, and
  keeps it while it stays visible (restarts included);
* :meth:`Array.pair_command` / :meth:`Array.pair_create` raise
  :class:`CommandRejected` exactly when :func:`blockemu.pairstate.decide`
  says REJECT (plus the array's own rule: no restore before a split copy is
  at 100 %), and a rejected command changes nothing;
* sparseness: 4 KiB blocks never written on either volume of a pair slot
  are holes in both volume files.

Where the array's behaviour is a choice the model follows it: form+split
takes its split instant at the command (a steady one shows COPY_SP, where
the state table's path says COPY>PSUS); suspend and delete stop a copy under
way, so an S-VOL that was not a finished split (and a P-VOL whose restore was
cut short) holds whatever the copy had reached, which the model then adopts.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import random
import shutil
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from blockemu import bitmap
from blockemu.array import SPLIT_NONE, SPLIT_QUICK, SPLIT_STEADY, Array
from blockemu.bitmap import TRACK_SIZE
from blockemu.copyengine import data_extents
from blockemu.errors import CommandRejected, VolumeHidden
from blockemu.pairstate import Command, Outcome, decide
from blockemu.replication import HIDDEN_STATES, Pair
from formats.volume_header import (
    DATA_OFFSET,
    Attr,
    MirrorMode,
    PairRole,
    PairStatus,
    VolumeHeader,
)

MiB = 1 << 20
SIZE = 4 * MiB  # 16 tracks of 256 KiB
TRACKS = SIZE // TRACK_SIZE
BLOCK = 4096
SLOTS = ((0x10, 0x11), (0x20, 0x21))  # (P-VOL, S-VOL) of each pair slot
LDEVS = [ldev for slot in SLOTS for ldev in slot]
PVOLS = {p for p, _ in SLOTS}
SLOT_OF = {ldev: i for i, slot in enumerate(SLOTS) for ldev in slot}

# Weighted: the commands that lead to the interesting states come up more often.
COMMANDS = [
    *[Command.FORM, Command.FORM_SPLIT],
    *[Command.SPLIT] * 3,
    *[Command.RESYNC] * 2,
    *[Command.RESTORE] * 2,
    *[Command.SUSPEND, Command.DELETE],
]


class _NoMsyncMap(mmap.mmap):
    def flush(self, *args: int) -> None:
        pass


#: The mmap module as blockemu.bitmap sees it in this test: mappings that never msync.
NO_MSYNC = types.SimpleNamespace(
    **{name: getattr(mmap, name) for name in dir(mmap) if not name.startswith("_")}
)
NO_MSYNC.mmap = _NoMsyncMap


@dataclass
class PairModel:
    """What the model knows of one formed pair."""

    mode: MirrorMode
    allowed: set[PairStatus]  # what the array may show now (no background work ran)
    target: PairStatus  # where the background work settles it
    history: list[str] = field(default_factory=list)


def lengths() -> st.SearchStrategy[int]:
    """Mostly small, some across tracks, now and then nothing at all."""
    return st.integers(0, 9).flatmap(
        lambda pick: (
            st.just(0)
            if pick == 0
            else st.integers(1, 3 * TRACK_SIZE)
            if pick < 4
            else st.integers(1, 16384)
        )
    )


def slots() -> st.SearchStrategy[int]:
    """Mostly the first pair: steps on one pair build up the states worth checking."""
    return st.sampled_from([0, 0, 0, 1])


def offsets() -> st.SearchStrategy[int]:
    """Anywhere, often on a track boundary (the end of the volume included)."""
    boundaries = [t * TRACK_SIZE + d for t in range(TRACKS + 1) for d in (0, -512)]
    return st.one_of(st.integers(0, SIZE), st.sampled_from([b for b in boundaries if b >= 0]))


def track_views(src: bytes, dst: bytes, pending: list[int]) -> bytes:
    """*dst* with every pending track taken from *src*: what a host sees of the target."""
    if not pending:
        return dst
    view = bytearray(dst)
    for t in pending:
        view[t * TRACK_SIZE : (t + 1) * TRACK_SIZE] = src[t * TRACK_SIZE : (t + 1) * TRACK_SIZE]
    return bytes(view)


class ReplicationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Durability against power loss is not what this models (restarts are clean,
        # and a killed process leaves the page cache behind): no fsync, no msync.
        self.no_fsync = contextlib.ExitStack()
        for name in ("fsync", "fdatasync"):
            self.no_fsync.enter_context(mock.patch.object(os, name, lambda fd: None))
        self.no_fsync.enter_context(mock.patch.object(bitmap, "mmap", NO_MSYNC))
        self.dir = Path(tempfile.mkdtemp(prefix="be-model-"))
        self.root = self.dir / "root"
        self.array = Array.open(self.root)
        for ldev in LDEVS:
            self.array.store.create(ldev, SIZE)
        self.content: dict[int, bytearray | None] = {ldev: bytearray(SIZE) for ldev in LDEVS}
        self.pairs: dict[int, PairModel | None] = {i: None for i in range(len(SLOTS))}
        self.touched: dict[int, set[int]] = {i: set() for i in range(len(SLOTS))}
        self.p_pvid = {p: self.header(p).pvid for p in PVOLS}
        self.s_pvid: dict[int, bytes | None] = {s: self.header(s).pvid for _, s in SLOTS}
        self.seen_pvids: dict[int, set[bytes]] = {s: {self.header(s).pvid} for _, s in SLOTS}
        self.dirty = set(range(len(SLOTS)))  # slots whose content the last step may have changed

    def teardown(self) -> None:
        try:
            self.array.close()
            shutil.rmtree(self.dir, ignore_errors=True)
        finally:
            self.no_fsync.close()

    # -- helpers -------------------------------------------------------------

    def header(self, ldev: int) -> VolumeHeader:
        return self.array.store.get(ldev).header

    def known(self, ldev: int) -> bytearray:
        """The model's content of a volume hosts can see (a copy of it)."""
        content = self.content[ldev]
        assert content is not None, f"LDEV {ldev:#x} has no known content"
        return bytearray(content)

    def raw(self, ldev: int) -> bytes:
        return self.array.store.get(ldev).pread(0, SIZE)

    def pair(self, slot: int) -> Pair:
        return self.array.pairs[SLOTS[slot][0]]

    def status(self, slot: int) -> PairStatus:
        return PairStatus.SMPL if self.pairs[slot] is None else self.pair(slot).status

    def hidden(self, ldev: int) -> bool:
        slot = SLOT_OF[ldev]
        return ldev not in PVOLS and self.status(slot) in HIDDEN_STATES

    def pending(self, slot: int) -> list[int]:
        return list(self.pair(slot).pending.iter_set(0))

    def settle_status(self, slot: int, now: PairStatus, allowed: set[PairStatus]) -> None:
        model = self.pairs[slot]
        assert model is not None
        assert now in allowed, f"{now.name} not in {sorted(s.name for s in allowed)}"
        model.allowed = {now}

    def mark_touched(self, ldev: int, offset: int, length: int) -> None:
        if length > 0:
            first, last = offset // BLOCK, (offset + length - 1) // BLOCK
            self.touched[SLOT_OF[ldev]].update(range(first, last + 1))

    @initialize(
        data=st.data(),
        modes=st.tuples(*[st.sampled_from(list(MirrorMode))] * len(SLOTS)),
        splits=st.tuples(*[st.sampled_from([SPLIT_NONE, SPLIT_STEADY, SPLIT_QUICK])] * len(SLOTS)),
        drains=st.tuples(*[st.booleans()] * len(SLOTS)),
    )
    def start_paired(
        self,
        data: st.DataObject,
        modes: tuple[MirrorMode, ...],
        splits: tuple[str | None, ...],
        drains: tuple[bool, ...],
    ) -> None:
        """Most steps are worth more on a pair that holds data: write some, form both pairs."""
        for slot in range(len(SLOTS)):
            for side in (0, 1):
                for _ in range(data.draw(st.integers(0, 3), label=f"writes on {slot}/{side}")):
                    offset, length = data.draw(offsets()), data.draw(lengths())
                    seed = data.draw(st.integers(0, 2**32))
                    self.write(slot, side, offset, length, zeros=False, seed=seed)
            self.form(slot, modes[slot], splits[slot])
            self.statuses_and_identities()
            if drains[slot]:
                self.drain(slot)
                self.statuses_and_identities()

    # -- host I/O ------------------------------------------------------------

    @rule(slot=slots(), data=st.data())
    def host_io(self, slot: int, data: st.DataObject) -> None:
        """A host writes (mostly), reads or discards, on the P-VOL or the S-VOL."""
        s_visible = not self.hidden(SLOTS[slot][1])
        # A hidden S-VOL only needs to refuse now and then; a visible one is worth writing.
        side = data.draw(st.sampled_from([0, 1] if s_visible else [0, 0, 0, 0, 0, 1]))
        op = data.draw(st.sampled_from(["write"] * 6 + ["read"] * 3 + ["discard"] * 2))
        if op == "write":
            self.random_write(slot, side, data)
            return
        offset, length = data.draw(offsets()), data.draw(lengths())
        if op == "read":
            self.read(slot, side, offset, length)
        else:
            self.discard(slot, side, offset, length)

    def random_write(self, slot: int, side: int, data: st.DataObject) -> None:
        offset, length = data.draw(offsets()), data.draw(lengths())
        zeros = data.draw(st.integers(0, 5)) == 0
        self.write(slot, side, offset, length, zeros, seed=data.draw(st.integers(0, 2**32)))

    def write(self, slot: int, side: int, offset: int, length: int, zeros: bool, seed: int) -> None:
        self.dirty.add(slot)
        ldev = SLOTS[slot][side]
        length = min(length, SIZE - offset)
        data = bytes(length) if zeros else random.Random(seed).randbytes(length)
        pvid = self.header(ldev).pvid
        if self.hidden(ldev):
            with pytest.raises(VolumeHidden):
                self.array.write("", ldev, pvid, offset, data)
            return
        self.array.write("", ldev, pvid, offset, data)
        content = self.content[ldev]
        assert content is not None
        content[offset : offset + length] = data
        self.mark_touched(ldev, offset, length)

    def discard(self, slot: int, side: int, offset: int, length: int) -> None:
        self.dirty.add(slot)
        ldev = SLOTS[slot][side]
        length = min(length, SIZE - offset)
        pvid = self.header(ldev).pvid
        if self.hidden(ldev):
            with pytest.raises(VolumeHidden):
                self.array.discard("", ldev, pvid, offset, length)
            return
        self.array.discard("", ldev, pvid, offset, length)
        content = self.content[ldev]
        assert content is not None
        content[offset : offset + length] = bytes(length)

    def read(self, slot: int, side: int, offset: int, length: int) -> None:
        """A host read: may settle pending tracks (copy-on-read), must match the model."""
        self.dirty.add(slot)
        ldev = SLOTS[slot][side]
        length = min(length, SIZE - offset)
        pvid = self.header(ldev).pvid
        if self.hidden(ldev):
            with pytest.raises(VolumeHidden):
                self.array.read("", ldev, pvid, offset, length)
            return
        content = self.content[ldev]
        assert content is not None
        assert self.array.read("", ldev, pvid, offset, length) == content[offset : offset + length]

    # -- pair commands -------------------------------------------------------

    def form(self, slot: int, mode: MirrorMode, split: str | None) -> None:
        """Form a pair on a SMPL slot (pair_create)."""
        p, s = SLOTS[slot]
        assert self.pairs[slot] is None
        self.array.pair_create(p, s, mode=mode, split=split)
        # Form+split takes the split instant at once: the S-VOL is the P-VOL as of the
        # command (COPY_SP while hidden, where the table's path names COPY>PSUS).
        first = {
            SPLIT_NONE: PairStatus.COPY,
            SPLIT_STEADY: PairStatus.COPY_SP,
            SPLIT_QUICK: PairStatus.PSUS,
        }[split]
        target = PairStatus.PAIR if split is None else PairStatus.PSUS
        self.pairs[slot] = PairModel(mode, {first}, target, [f"form {mode.name} {split}"])
        self.content[s] = None if split is None else self.known(p)
        self.s_pvid[s] = None  # hidden, or (quick) visible at once as a new volume

    @rule(
        slot=slots(),
        command=st.sampled_from(COMMANDS),
        mode=st.sampled_from(list(MirrorMode)),
        quick=st.booleans(),
        by_svol=st.booleans(),
        data=st.data(),
    )
    def pair_command(
        self,
        slot: int,
        command: Command,
        mode: MirrorMode,
        quick: bool,
        by_svol: bool,
        data: st.DataObject,
    ) -> None:
        """A pair command; often right after a P-VOL write (journal or tracks not yet
        copied) and right before host I/O (the new instant must hold at once)."""
        self.dirty.add(slot)
        p, s = SLOTS[slot]
        for _ in range(data.draw(st.sampled_from([0, 0, 1, 2]), label="writes before")):
            self.random_write(slot, 0, data)
        split = SPLIT_NONE if command is Command.FORM else SPLIT_QUICK if quick else SPLIT_STEADY
        if self.pairs[slot] is None:
            if command in (Command.FORM, Command.FORM_SPLIT):
                self.form(slot, mode, split)
            else:
                assert decide(PairStatus.SMPL, command).outcome is not Outcome.ACCEPT
                with pytest.raises(CommandRejected, match="SMPL"):
                    self.array.select(svol=s) if by_svol else self.array.select(pvol=p)
        elif command in (Command.FORM, Command.FORM_SPLIT):
            self.run_command(slot, command, quick=quick, via_create=(mode, split))
        else:
            self.run_command(slot, command, quick=quick, by_svol=by_svol)
        # Right after the command, before any drain: writes on the P-VOL (copy-on-write),
        # and reads of the S-VOL as a host sees it (copy-on-read).
        for after in data.draw(st.lists(st.sampled_from(["write", "read"]), max_size=2)):
            if after == "write":
                self.random_write(slot, 0, data)
            elif not self.hidden(s):
                offset = data.draw(st.integers(0, SIZE - 1))
                self.read(slot, 1, offset, data.draw(st.integers(1, SIZE - offset)))

    def run_command(
        self,
        slot: int,
        command: Command,
        *,
        quick: bool,
        by_svol: bool = False,
        via_create: tuple[MirrorMode, str | None] | None = None,
    ) -> None:
        p, s = SLOTS[slot]
        model = self.pairs[slot]
        assert model is not None
        pair = self.pair(slot)
        before = pair.status
        was_pending = pair.pending.count()
        decision = decide(before, command)
        # A quick split still copying cannot be restored from or deleted (its S-VOL is not whole).
        unfinished = decision.outcome is Outcome.ACCEPT and was_pending > 0
        rejected = decision.outcome is Outcome.REJECT or (
            unfinished
            and (
                command is Command.RESTORE
                or (command is Command.DELETE and before is PairStatus.PSUS)
            )
        )
        raw_before = {ldev: self.raw(ldev) for ldev in (p, s)}
        try:
            if via_create is not None:
                mode, split = via_create
                self.array.pair_create(p, s, mode=mode, split=split)
            else:
                pairs = self.array.select(svol=s) if by_svol else self.array.select(pvol=p)
                assert pairs == [pair]
                self.array.pair_command(command, pairs, quick=quick)
        except CommandRejected:
            assert rejected, f"{command.name} in {before.name} was rejected"
            assert pair.status is before and not pair.closed
            assert pair.pending.count() == was_pending
            assert {ldev: self.raw(ldev) for ldev in (p, s)} == raw_before
            return
        assert not rejected, f"{command.name} in {before.name} was not rejected"
        model.history.append(f"{command.name} quick={quick} from {before.name}")
        if decision.outcome is Outcome.NOTHING:
            assert pair.status is before
            return
        if command in (Command.SPLIT, Command.FORM_SPLIT):
            self.content[s] = self.known(p)
            allowed = {PairStatus.PSUS} if quick else {PairStatus.COPY_SP, PairStatus.PSUS}
            model.target = PairStatus.PSUS
        elif command is Command.RESYNC:
            self.content[s] = None
            allowed, model.target = {decision.path[0]}, PairStatus.PAIR
        elif command is Command.RESTORE:
            self.content[p] = self.known(s)
            self.content[s] = None
            allowed, model.target = {PairStatus.COPY_RS_R}, PairStatus.PAIR
        else:  # SUSPEND, DELETE: the volumes keep what they hold; a copy under way stops.
            # Only a finished split S-VOL (or a suspended one) keeps a defined content;
            # a restore cut short leaves the P-VOL a mix of both (it is "not guaranteed").
            s_defined = before is PairStatus.PSUE or (before is PairStatus.PSUS and not was_pending)
            if not s_defined:
                self.content[s] = bytearray(self.raw(s))
            if before is PairStatus.COPY_RS_R:
                self.content[p] = bytearray(self.raw(p))
            if command is Command.DELETE:
                assert pair.closed and p not in self.array.pairs
                self.pairs[slot] = None
                return
            allowed, model.target = {PairStatus.PSUE}, PairStatus.PSUE
        self.settle_status(slot, pair.status, allowed)

    # -- background work and restarts -----------------------------------------

    @rule(slot=slots(), restart=st.integers(0, 4).map(lambda pick: pick == 0))
    def background(self, slot: int, restart: bool) -> None:
        """Let one pair's copier and applier run until idle, or (now and then) restart."""
        if restart:
            self.restart()
        else:
            self.drain(slot)

    def drain(self, slot: int) -> None:
        """Let the copier and the journal applier of one pair run until they are idle."""
        self.dirty.add(slot)
        model = self.pairs[slot]
        if model is None:
            return
        p, s = SLOTS[slot]
        pair = self.pair(slot)
        pair.drain()
        assert pair.status is model.target
        model.allowed = {model.target}
        if model.target is PairStatus.PSUE:
            return
        assert pair.pending.count() == 0
        assert pair.journal.lag_records == 0
        assert pair.copy_percent() == 100
        if model.target is PairStatus.PAIR:
            assert self.raw(p) == self.content[p]
            assert self.raw(s) == self.content[p]
        else:  # PSUS: the split instant, plus what hosts wrote on the S-VOL since
            assert self.raw(s) == self.content[s]

    def restart(self) -> None:
        """Stop the array cleanly and open it again on the same root."""
        self.array.close()
        self.array = Array.open(self.root)
        self.dirty = set(range(len(SLOTS)))

    # -- invariants ------------------------------------------------------------

    @invariant()
    def statuses_and_identities(self) -> None:
        for slot, (p, s) in enumerate(SLOTS):
            model = self.pairs[slot]
            ph, sh = self.header(p), self.header(s)
            assert ph.pvid == self.p_pvid[p]  # never changes, not even by a restore
            if model is None:
                assert p not in self.array.pairs and s not in self.array.pairs
                assert ph.pair.role is PairRole.SIMPLEX and sh.pair.role is PairRole.SIMPLEX
                assert sh.pair.status is PairStatus.SMPL
            else:
                status = self.pair(slot).status
                assert status in model.allowed, (status.name, model.history)
                assert ph.pair.role is PairRole.PVOL and ph.pair.partner_ldev == s
                assert sh.pair.role is PairRole.SVOL and sh.pair.partner_ldev == p
                assert sh.pair.status is status
                assert ph.pair.mirror_mode is model.mode is sh.pair.mirror_mode
            if self.hidden(s):
                assert sh.pvid == ph.pvid
                assert sh.info.attributes & Attr.HIDDEN
                with pytest.raises(VolumeHidden):
                    self.array.read("", s, sh.pvid, 0, 512)
                self.s_pvid[s] = None
                continue
            assert not sh.info.attributes & Attr.HIDDEN
            if self.s_pvid[s] is None:  # it just came out of hiding: a new identity
                assert sh.pvid != ph.pvid
                assert sh.pvid not in self.seen_pvids[s]
                self.s_pvid[s] = sh.pvid
                self.seen_pvids[s].add(sh.pvid)
            assert sh.pvid == self.s_pvid[s]

    @invariant()
    def content_as_hosts_would_read_it(self) -> None:
        """Side-effect free: raw files plus pending tracks give the model's content."""
        for slot in sorted(self.dirty):
            p, s = SLOTS[slot]
            status = self.status(slot)
            pending = self.pending(slot) if self.pairs[slot] is not None else []
            if status is PairStatus.COPY_RS_R:
                assert track_views(self.raw(s), self.raw(p), pending) == self.content[p]
            else:
                assert self.raw(p) == self.content[p]
            if status in (PairStatus.COPY_SP, PairStatus.PSUS):
                assert track_views(self.raw(p), self.raw(s), pending) == self.content[s]
            elif self.content[s] is not None:
                assert self.raw(s) == self.content[s]
            self.check_holes(slot)
        self.dirty.clear()

    def check_holes(self, slot: int) -> None:
        """4 KiB blocks no host ever wrote on either volume of the slot are holes in both."""
        for ldev in SLOTS[slot]:
            fd = self.array.store.get(ldev).fd
            allocated: set[int] = set()
            for start, length in data_extents(fd, DATA_OFFSET, DATA_OFFSET + SIZE):
                first = (start - DATA_OFFSET) // BLOCK
                last = (start - DATA_OFFSET + length - 1) // BLOCK
                allocated.update(range(first, last + 1))
            stray = allocated - self.touched[slot]
            assert not stray, f"LDEV {ldev:#x}: data in never-written blocks {sorted(stray)}"


ReplicationMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestReplicationModel = ReplicationMachine.TestCase
