"""Pairs: in-array copies of a P-VOL onto an S-VOL (DESIGN.md section 3).

A pair's state lives on disk in three places:

* the pair sections of both volume headers (status, partner, mode, group,
  MU). The P-VOL's header is the commit record: every transition writes the
  S-VOL's header first and the P-VOL's last, and at start-up the S-VOL is
  brought in line with its P-VOL (:func:`reconcile`);
* three track bitmaps: ``pending`` (tracks where the copy target may still
  differ from its source: the copy work), ``pdiff`` and ``sdiff`` (tracks
  changed on each side since the split: the resync work);
* for ``async`` pairs, the journal: a redo log of P-VOL writes not yet
  applied to the S-VOL.

Everything runs on the array's one trio thread. Host I/O is served inline and
the copier copies one run of tracks inline between checkpoints, so a track is
never being copied while a host writes it, and no locks are needed. The
journal applier, inline too, replays records in batches: it lets them gather
for up to ``APPLY_DELAY`` (3 ms) after the oldest one's append, then applies
them from memory (:meth:`Journal.unapplied`) with one journal header write,
so a stream of small writes is not slowed by one apply after every write.

**The point-in-time rule.** While a copy must preserve an instant -- a split
draining (COPY_SP), a quick split still copying (PSUS below 100 %), a restore
(COPY_RS_R) -- host I/O that touches a pending track first copies that track
("settles" it), then proceeds. That single rule is the copy-on-write of the
quick split, the read redirection of the restore and the consistency of a
steady split, which is therefore just a quick split whose S-VOL stays hidden
until the copy is done.

Where the writes of each state go (P = P-VOL, S = S-VOL):

=============  ===========================================================
COPY, COPY_RS  P; the track is marked pending and the copier moves it
PAIR sync      P and S before the acknowledgement
PAIR async     journal, then P; the applier replays the journal onto S
PAIR deferred  P; the track is marked pending and the update copy moves it
COPY_SP, PSUS  settle, then P (marked in pdiff) or S (marked in sdiff)
PSUE           P (pdiff) or S (sdiff); the next resync copies everything
COPY_RS_R      settle (S to P), then P and S
=============  ===========================================================
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio
import trio.lowlevel

from formats.units import format_ldev
from formats.volume_header import (
    DATA_OFFSET,
    NO_GROUP,
    NO_PARTNER,
    Attr,
    MirrorMode,
    PairRole,
    PairStatus,
)

from .bitmap import TrackBitmap
from .copyengine import CopyEngine
from .journal import Journal
from .store import Volume

log = logging.getLogger(__name__)

#: States in which the S-VOL is hidden from hosts and carries the P-VOL's PVID.
HIDDEN_STATES = frozenset(
    {PairStatus.COPY, PairStatus.PAIR, PairStatus.COPY_SP, PairStatus.COPY_RS, PairStatus.COPY_RS_R}
)
#: States whose copy preserves an instant: host I/O settles pending tracks first.
POINT_IN_TIME = frozenset({PairStatus.COPY_SP, PairStatus.PSUS, PairStatus.COPY_RS_R})
#: Most tracks the copier moves in one inline step (16 MiB with 256 KiB tracks).
RUN_TRACKS = 64
#: Journal records the applier replays in one inline step.
APPLY_BATCH = 256
#: The applier lets records gather for up to this many seconds (counted from the
#: oldest one's append) before replaying them, unless APPLY_BATCH records or
#: APPLY_BYTES data bytes are waiting: a stream of small writes is then applied in
#: batches (one journal header write each) instead of one apply after every write.
APPLY_DELAY = 0.003
APPLY_BYTES = 4 << 20
#: Copy pace: 15 is unthrottled; pace p < 15 limits copying to p * PACE_UNIT bytes/s.
MAX_PACE = 15
PACE_UNIT = 32 << 20

PvidFactory = Callable[[], bytes]


@dataclass
class PairFiles:
    """Where a pair's bitmaps and journal live, named after the P-VOL."""

    pending: Path
    pdiff: Path
    sdiff: Path
    journal: Path

    @classmethod
    def for_pvol(cls, directory: Path, pvol: int) -> PairFiles:
        stem = format_ldev(pvol).replace(":", "-")
        return cls(
            directory / f"{stem}.pending.bmp",
            directory / f"{stem}.pdiff.bmp",
            directory / f"{stem}.sdiff.bmp",
            directory / f"{stem}.jnl",
        )

    def remove(self) -> None:
        for path in (self.pending, self.pdiff, self.sdiff, self.journal):
            path.unlink(missing_ok=True)


class Pair:
    """One P-VOL/S-VOL pair at run time: its write rules and its copier."""

    def __init__(
        self,
        pvol: Volume,
        svol: Volume,
        files: PairFiles,
        engine: CopyEngine,
        new_pvid: PvidFactory,
    ) -> None:
        self.pvol = pvol
        self.svol = svol
        self.files = files
        self.engine = engine
        self._new_pvid = new_pvid
        size = pvol.size
        self.pending = TrackBitmap.for_size(files.pending, size, ldev=pvol.ldev, role=0)
        self.pdiff = TrackBitmap.for_size(files.pdiff, size, ldev=pvol.ldev, role=0)
        self.sdiff = TrackBitmap.for_size(files.sdiff, size, ldev=svol.ldev, role=1)
        self.journal = Journal.open(files.journal, ldev=pvol.ldev)
        self.pace = MAX_PACE
        self._wakeup = trio.Event()
        self._batch_full = trio.Event()  # set when the journal holds a whole batch
        self._cursor = 0
        self.closed = False

    # -- what the headers say ------------------------------------------

    @property
    def status(self) -> PairStatus:
        return self.pvol.header.pair.status

    @property
    def mode(self) -> MirrorMode:
        return self.pvol.header.pair.mirror_mode

    @property
    def group(self) -> int | None:
        ctg = self.pvol.header.pair.consistency_group
        return None if ctg == NO_GROUP else ctg

    @property
    def name(self) -> str:
        return f"{format_ldev(self.pvol.ldev)}->{format_ldev(self.svol.ldev)}"

    def copy_percent(self) -> int:
        tracks = self.pending.tracks
        done = tracks - self.pending.count()
        percent = 100 * done // tracks if tracks else 100
        if self.status is PairStatus.PAIR and self.mode is MirrorMode.ASYNC:
            return 100 if self.journal.lag_records == 0 else min(percent, 99)
        return percent

    # -- headers ---------------------------------------------------------

    def set_status(self, status: PairStatus, **pair_fields: object) -> None:
        """Move both headers to *status*: the S-VOL first, the P-VOL (the commit record) last.

        The S-VOL's identity follows the status: hidden with the P-VOL's PVID
        in the paired states, visible with a PVID of its own otherwise (a new
        one when it comes out of hiding: that is the patent's split).
        """
        s_changes: dict[str, object] = {"status": status, **pair_fields}
        s_changes.update(svol_identity(self.svol, self.pvol, status, self._new_pvid))
        self.svol.update_header(**s_changes)
        self.pvol.update_header(status=status, **pair_fields)

    # -- host I/O ----------------------------------------------------------

    def source_target(self) -> tuple[Volume, Volume]:
        if self.status is PairStatus.COPY_RS_R:
            return self.svol, self.pvol
        return self.pvol, self.svol

    def settle(self, offset: int, length: int) -> None:
        """Copy the pending tracks in the range now, so I/O there sees the instant's data."""
        if length <= 0:
            return
        ts = self.pending.track_size
        first, stop = offset // ts, (offset + length - 1) // ts + 1
        while (run := self.pending.run_from(first, RUN_TRACKS, stop)) is not None:
            self._copy_tracks(*run)
            first = run[0] + run[1]

    def read(self, vol: Volume, offset: int, length: int) -> bytes:
        if self.status in POINT_IN_TIME and vol is self.source_target()[1]:
            self.settle(offset, length)
        return vol.pread(offset, length)

    def write(self, vol: Volume, offset: int, data: bytes) -> None:
        self._modify(vol, offset, len(data), lambda v: v.pwrite(offset, data), data)

    def discard(self, vol: Volume, offset: int, length: int) -> None:
        self._modify(vol, offset, length, lambda v: v.discard(offset, length), None)

    def _modify(
        self,
        vol: Volume,
        offset: int,
        length: int,
        apply: Callable[[Volume], None],
        data: bytes | None,
    ) -> None:
        if length <= 0:  # nothing to do; offset may be the volume's end, past the last track
            return
        status, mode = self.status, self.mode
        if vol is self.svol:  # visible only in PSUS/PSUE (the caller refuses hidden volumes)
            self.settle(offset, length)
            apply(vol)
            self.sdiff.mark(offset, length)
            return
        if status in (PairStatus.COPY, PairStatus.COPY_RS) or (
            status is PairStatus.PAIR and mode is MirrorMode.DEFERRED
        ):
            self.pending.mark(offset, length)
            apply(vol)
            self.wake()
        elif status is PairStatus.PAIR and mode is MirrorMode.SYNC:
            already = self._any_pending(offset, length)
            self.pending.mark(offset, length)  # intent: survives a crash between the two writes
            apply(vol)
            apply(self.svol)
            if not already:
                self._clear_range(offset, length)
        elif status is PairStatus.PAIR and mode is MirrorMode.ASYNC:
            if data is None:  # a discard cannot be journaled: catch up, then do both
                self.apply_journal(None)
                apply(vol)
                apply(self.svol)
                return
            self.journal.append(offset, data)  # redo log first, then the P-VOL
            apply(vol)
            self.wake()
            if self._batch_ready():
                self._batch_full.set()
        elif status is PairStatus.COPY_RS_R:
            self.settle(offset, length)
            apply(vol)
            apply(self.svol)
        else:  # COPY_SP, PSUS, PSUE
            self.settle(offset, length)
            apply(vol)
            self.pdiff.mark(offset, length)

    def flush(self) -> None:
        """Durability for everything acknowledged so far (runs in a worker thread)."""
        self.pvol.flush()
        self.svol.flush()
        self.journal.flush()
        for bitmap in (self.pending, self.pdiff, self.sdiff):
            bitmap.flush()

    # -- commands (the caller checked them against blockemu.pairstate) ----

    def split(self, *, quick: bool, at: int | None = None) -> None:
        """Split at this instant; a steady split keeps the S-VOL hidden until the copy is done.

        *at* is the split time to record (a consistency group passes one for all its pairs).
        """
        self._journal_to_pending()
        self.pdiff.clear_all()
        self.sdiff.clear_all()
        done = self.pending.count() == 0
        status = PairStatus.PSUS if quick or done else PairStatus.COPY_SP
        self.set_status(status, split_time=time.time_ns() if at is None else at)
        self.wake()

    def resync(self) -> None:
        # Commit first, then turn the differences into copy work (recover, which start-up
        # repeats). Bits first would let a crash leave a PSUS/PSUE pair with pending
        # tracks, which the copier and copy-on-write copy over the S-VOL hosts still use.
        full = self.status is PairStatus.PSUE
        self.set_status(PairStatus.COPY if full else PairStatus.COPY_RS)
        if full:
            self.pending.mark_all()
        self._cursor = 0
        self.recover()
        self.wake()

    def restore(self) -> None:
        if self.pending.count():
            raise ValueError(
                f"pair {self.name}: the split copy is still at {self.copy_percent()} %; "
                "wait until it reaches 100 % (blockemu pair wait), then restore"
            )
        self.set_status(PairStatus.COPY_RS_R)  # commit first, as resync does
        self._cursor = 0
        self.recover()
        self.wake()

    def suspend(self) -> None:
        self.pdiff.mark_all()  # nothing can be trusted: the next resync copies everything
        self.set_status(PairStatus.PSUE)  # then commit, then drop the copy work (recover)
        self.recover()

    def recover(self) -> None:
        """Bring the bitmaps and the journal in line with the committed status (idempotent).

        Resync, restore and suspend commit the P-VOL header before they touch
        the bits, and the array calls this at start-up, so what a crash cut
        short in between is finished here: in COPY, COPY_RS and COPY_RS_R the
        differences are copy work (PSUE's pdiff is all set: a full copy); in
        PSUE nothing is copied and the journal is void.
        """
        status = self.status
        if status in (PairStatus.COPY, PairStatus.COPY_RS, PairStatus.COPY_RS_R):
            self.pending.merge_from(self.pdiff)
            self.pending.merge_from(self.sdiff)
            self.pdiff.clear_all()
            self.sdiff.clear_all()
        elif status is PairStatus.PSUE:
            self.pending.clear_all()
            if self.journal.lag_records:
                self.journal.reset()

    def dissolve(self) -> None:
        """Delete the pair: both volumes SMPL, the S-VOL visible with its own PVID."""
        self.set_status(
            PairStatus.SMPL,
            role=PairRole.SIMPLEX,
            partner_ldev=NO_PARTNER,
            consistency_group=NO_GROUP,
        )
        self.close()
        self.files.remove()

    # -- background work ---------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        """Copier and journal applier of this pair, until the pair is deleted."""
        gathered = False  # at most one wait per batch, whatever the wall clock does
        while not self.closed:
            if self.status is PairStatus.PAIR and self.journal.lag_records:
                wait = APPLY_DELAY - self.journal.lag_seconds()
                if not gathered and wait > 0 and not self._batch_ready():
                    gathered = True
                    await self._gather(min(wait, APPLY_DELAY))
                    continue  # look again: the pair may have split or closed meanwhile
                gathered = False
                self.apply_journal(APPLY_BATCH)
                await trio.lowlevel.checkpoint()
                continue
            if self._copy_step_wanted():
                copied = self._copy_next_run()
                if copied is not None:
                    await self._pace(copied)
                    continue
                self._copy_finished()
            self._wakeup = trio.Event()
            if self._work_waiting():
                continue
            await self._wakeup.wait()

    def _batch_ready(self) -> bool:
        journal = self.journal
        return journal.lag_records >= APPLY_BATCH or journal.lag_bytes >= APPLY_BYTES

    async def _gather(self, seconds: float) -> None:
        """Let journal records gather for *seconds*, or until a whole batch is waiting."""
        self._batch_full = trio.Event()
        with trio.move_on_after(seconds):
            await self._batch_full.wait()

    def drain(self) -> None:
        """Do all pending background work now, inline: the journal, the copy, the transition."""
        if self.status is PairStatus.PAIR:
            self.apply_journal(None)
        while self._copy_step_wanted() and self._copy_next_run() is not None:
            pass
        if self._copy_step_wanted():
            self._copy_finished()

    def _copy_step_wanted(self) -> bool:
        return self.status not in (PairStatus.SMPL, PairStatus.PSUE)

    def _work_waiting(self) -> bool:
        if self.status is PairStatus.PAIR and self.journal.lag_records:
            return True
        return self._copy_step_wanted() and self._next_run() is not None

    def _next_run(self) -> tuple[int, int] | None:
        """The next run of consecutive pending tracks, from the cursor (wrapping once)."""
        for start in (self._cursor, 0):
            run = self.pending.run_from(start, RUN_TRACKS)
            if run is not None:
                return run
        return None

    def _copy_next_run(self) -> int | None:
        run = self._next_run()
        if run is None:
            return None
        first, n = run
        copied = self._copy_tracks(first, n)
        self._cursor = first + n
        return copied

    def _copy_tracks(self, first: int, n: int) -> int:
        source, target = self.source_target()
        offset, _ = self.pending.track_range(first)
        last_offset, last_length = self.pending.track_range(first + n - 1)
        length = last_offset + last_length - offset
        copied = self.engine.copy(source.fd, target.fd, DATA_OFFSET + offset, length)
        self.pending.clear_range(first, n)
        return copied

    async def _pace(self, copied: int) -> None:
        if self.pace >= MAX_PACE or copied == 0:
            await trio.lowlevel.checkpoint()
        else:
            await trio.sleep(copied / (self.pace * PACE_UNIT))

    def _copy_finished(self) -> None:
        """No pending tracks left: finish the transition the copy was for."""
        status = self.status
        next_status = {
            PairStatus.COPY: PairStatus.PAIR,
            PairStatus.COPY_RS: PairStatus.PAIR,
            PairStatus.COPY_RS_R: PairStatus.PAIR,
            PairStatus.COPY_SP: PairStatus.PSUS,
        }.get(status)
        if next_status is not None:
            self.set_status(next_status)
            log.info("pair %s: %s done, now %s", self.name, status.name, next_status.name)

    def apply_journal(self, limit: int | None) -> None:
        """Replay up to *limit* journal records onto the S-VOL, oldest first."""
        records = self.journal.unapplied(limit)
        for record in records:
            self.svol.pwrite(record.offset, record.data)
        if records:
            self.journal.mark_applied(records[-1].seq)

    def redo_journal_on_pvol(self) -> int:
        """After a crash: replay unapplied records onto the P-VOL too (idempotent)."""
        records = self.journal.unapplied()
        for record in records:
            self.pvol.pwrite(record.offset, record.data)
        return len(records)

    def _journal_to_pending(self) -> None:
        """At a split instant: unapplied journal records become pending tracks.

        The P-VOL already holds every journaled write, so copying those tracks
        from the P-VOL (settling them before any later write) gives the S-VOL
        exactly the split instant's data; each track is copied once.
        """
        for record in self.journal.unapplied():
            self.pending.mark(record.offset, len(record.data))
        self.journal.reset()

    def _any_pending(self, offset: int, length: int) -> bool:
        ts = self.pending.track_size
        first, last = offset // ts, (offset + max(length, 1) - 1) // ts
        if first == last:
            return self.pending.is_set(first)
        return self.pending.run_from(first, 1, last + 1) is not None

    def _clear_range(self, offset: int, length: int) -> None:
        ts = self.pending.track_size
        first, last = offset // ts, (offset + max(length, 1) - 1) // ts
        self.pending.clear_range(first, last - first + 1)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.wake()
        self._batch_full.set()
        for bitmap in (self.pending, self.pdiff, self.sdiff):
            bitmap.close()
        self.journal.close()


def svol_identity(
    svol: Volume, pvol: Volume, status: PairStatus, new_pvid: PvidFactory
) -> dict[str, object]:
    """Header changes that give the S-VOL the identity *status* calls for."""
    attrs = svol.header.info.attributes
    hidden = bool(attrs & Attr.HIDDEN)
    if status in HIDDEN_STATES:
        return {"pvid": pvol.header.pvid, "attributes": attrs | Attr.HIDDEN}
    if hidden:
        return {"pvid": new_pvid(), "attributes": attrs & ~Attr.HIDDEN}
    return {}


def unlink_stale_files(directory: Path, keep: set[Path]) -> None:
    """Remove bitmaps and journals of pairs that no longer exist (a crash mid-delete)."""
    for path in directory.iterdir():
        if path not in keep and path.suffix in (".bmp", ".jnl", ".tmp"):
            log.info("removing %s: it belongs to no pair", path)
            os.unlink(path)
