"""What the S-VOL consistency protocol asks of the array and of this host's buffer.

The protocol core (:mod:`nodeagent.protocol`) only says *what* to do: run the
replica, release or take the control right on a group's S-VOLs, reflect the
group into this node's disk-info buffer. This module does it, against the
array (through the agent's :class:`~blockemu.connection.ArrayConnection`) and
the host's :class:`~blockemu.hostbuffer.HostBuffer`.

Running a replica is **idempotent**: it reads the pairs' states first and only
asks the array for what has not happened yet, because a node recovering from a
crash at A1/B1 does not know whether the old active got that far. A split is
done once its S-VOLs are split and visible (PSUS at 100 %); a resync or
restore once the array has accepted it (the S-VOL is hidden from then on).

Reflecting makes the buffer match the array for every S-VOL of the group,
whatever happened: a split S-VOL is refreshed (its PVID read by physical name,
the control right taken, its info read, stored, the control right released);
a paired one is hidden, so its entry is forgotten.
"""

from __future__ import annotations

import logging
import random
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from blockemu.client import ArrayClient
from blockemu.connection import ArrayConnection
from blockemu.errors import ArrayError, ReservationConflict
from blockemu.hostbuffer import HiddenVolume, HostBuffer, read_identity
from formats.horcm import PairDef
from formats.state_file import ReplicaOp
from formats.units import format_ldev
from formats.wire import Op

log = logging.getLogger(__name__)

#: How long a steady split may take to reach PSUS before it counts as failed.
SPLIT_TIMEOUT = 600.0
#: A visible S-VOL held by another host (a standby reflecting it too): tries, pause between.
REFLECT_TRIES = 40
REFLECT_RETRY_DELAY = 0.02
#: Array calls a reflection or a control-right change has in flight at once.
CONCURRENCY = 8
#: Pair states in which the S-VOL is hidden from hosts (blockemu.replication.HIDDEN_STATES).
HIDDEN_STATES = frozenset({"COPY", "PAIR", "COPY_SP", "COPY_RS", "COPY_RS_R"})
_SPLIT_DONE = {"PSUS"}
_PAIRED = {"PAIR", "COPY", "COPY_RS"}
_COMMAND = {
    ReplicaOp.SPLIT: Op.PAIR_SPLIT,
    ReplicaOp.QUICK_SPLIT: Op.PAIR_SPLIT,
    ReplicaOp.RESYNC: Op.PAIR_RESYNC,
    ReplicaOp.RESTORE: Op.PAIR_RESTORE,
}


class ReplicaOps:
    def __init__(
        self, array: ArrayConnection, buffer: HostBuffer, pairs: Sequence[PairDef]
    ) -> None:
        self.array = array
        self.buffer = buffer
        self.pairs = list(pairs)

    def groups(self) -> list[str]:
        return sorted({p.group for p in self.pairs})

    def of(self, group: str) -> list[PairDef]:
        """The pairs of *group* ("" = every group), or KeyError naming the known groups."""
        found = [p for p in self.pairs if not group or p.group == group]
        if not found:
            raise KeyError(
                f"no replica group {group!r} in the definition files; known: "
                f"{', '.join(self.groups()) or 'none'}"
            )
        return found

    async def _rows(self, pairs: list[PairDef]) -> dict[int, dict[str, Any]]:
        async def display(c: ArrayClient) -> list[dict[str, Any]]:
            return await c.pair_display()

        rows = await self.array.call(display)
        wanted = {p.pvol_ldev for p in pairs}
        return {_ldev(r["pvol"]): r for r in rows if _ldev(r["pvol"]) in wanted}

    async def run_replica(self, op: ReplicaOp, group: str) -> tuple[bool, str]:
        """Bring the group's pairs to where *op* takes them; (ok, what happened)."""
        pairs = self.of(group)
        if op is ReplicaOp.REFLECT:
            return True, f"nothing to run for {group or 'all groups'}: the array changed already"
        try:
            rows = await self._rows(pairs)
            missing = [p for p in pairs if _key(p) not in rows]
            if missing:
                names = ", ".join(format_ldev(p.pvol_ldev) for p in missing)
                return False, f"no pair on the array for P-VOL(s) {names}"
            todo = [p for p in pairs if not _reached(op, rows[_key(p)]["status"])]
            if todo:
                await self._command(op, todo, rows)
            if op in (ReplicaOp.SPLIT, ReplicaOp.QUICK_SPLIT):
                await self._wait_visible(pairs)
        except (ArrayError, OSError, trio.TooSlowError) as exc:
            return False, f"{op.name.lower()} of {group or 'all groups'} failed: {exc}"
        done = "already done" if not todo else f"ran on {len(todo)} pair(s)"
        return True, f"{op.name.lower()} of {group or 'all groups'}: {done}"

    async def drifted(self) -> list[str]:
        """The groups whose S-VOLs this node's buffer does not describe as the array shows
        them now: a pair split or re-formed on the array without the agent (a backup
        script running `pairsplit`). Pairs the array does not list are left out."""
        self.buffer.reload_if_changed()
        rows = await self._rows(self.pairs)
        found = set()
        for p in self.pairs:
            row = rows.get(_key(p))
            if row is None:
                continue
            entry = self.buffer.by_ldev(p.svol_ldev)
            if row["status"] in HIDDEN_STATES:
                stale = entry is not None
            else:
                stale = entry is None or entry.pvid.hex() != row.get("svol_pvid")
            if stale:
                found.add(p.group)
        return sorted(found)

    async def _command(
        self, op: ReplicaOp, todo: list[PairDef], rows: dict[int, dict[str, Any]]
    ) -> None:
        quick = op is ReplicaOp.QUICK_SPLIT
        groups = {rows[_key(p)]["group"] for p in todo}
        if len(todo) > 1 and len(groups) == 1 and None not in groups:
            # One consistency group on the array: one command, one instant.
            selectors: list[dict[str, Any]] = [{"group": groups.pop()}]
        else:
            selectors = [{"pvol": format_ldev(p.pvol_ldev)} for p in todo]
        for selector in selectors:

            async def command(c: ArrayClient, s: dict[str, Any] = selector) -> object:
                return await c.pair_command(_COMMAND[op], s, quick=quick)

            await self.array.call(command)

    async def _wait_visible(self, pairs: list[PairDef]) -> None:
        with trio.fail_after(SPLIT_TIMEOUT):
            while True:
                rows = await self._rows(pairs)
                if all(rows[_key(p)]["status"] in _SPLIT_DONE for p in pairs):
                    return
                await trio.sleep(0.05)

    async def control(self, group: str, *, take: bool) -> None:
        """Take (reserve) or release this host's control right on the group's S-VOLs."""

        async def one(ldev: int) -> None:
            async def call(c: ArrayClient) -> None:
                await (c.reserve(ldev) if take else c.release(ldev))

            await self.array.call(call)

        await each_concurrently([p.svol_ldev for p in self.of(group)], one)

    async def reflect(self, group: str) -> tuple[bool, str]:
        """Make this host's buffer match the array for every S-VOL of *group*.

        Whether an S-VOL is hidden is read from its pair's state (the pair
        display answers while another host holds the S-VOL's control right,
        e.g. the active after a resync); an S-VOL without a pair row is asked
        directly, and one that turns out hidden while being read (resynced
        meanwhile) is forgotten. The S-VOLs are read concurrently (the client
        pipelines), each host starting at a different one so that standbys
        reflecting at the same moment rarely reach for the same control
        right; one held by another host is tried again after a short random
        pause. The buffer is written once, at the end.
        """
        try:
            pairs = self.of(group)
            rows = await self._rows(pairs)
            hidden: list[int] = []
            visible: list[int] = []
            for p in pairs:
                row = rows.get(_key(p))
                if row is not None and row["status"] in HIDDEN_STATES:
                    hidden.append(p.svol_ldev)
                else:
                    visible.append(p.svol_ldev)
            headers: dict[int, Any] = {}

            async def read(ldev: int) -> None:
                try:
                    headers[ldev] = await self._read(ldev)
                except HiddenVolume:
                    hidden.append(ldev)

            start = zlib.crc32(self.buffer.host.encode()) % max(len(visible), 1)
            await each_concurrently(visible[start:] + visible[:start], read)
            stored = self.buffer.update(
                [(x, h.pvid, h.info) for x, h in sorted(headers.items())], hidden
            )
        except (ArrayError, OSError, KeyError) as exc:
            return False, f"reflection of {group or 'all groups'} failed: {exc}"
        done = [f"{format_ldev(e.ldev)} -> {e.device} PVID {e.pvid.hex()}" for e in stored]
        done += [f"{format_ldev(x)} forgotten (paired)" for x in sorted(hidden)]
        return True, "; ".join(done)

    async def _read(self, ldev: int) -> Any:
        async def do_read(c: ArrayClient) -> Any:
            return await read_identity(c, ldev, take_control=True)

        for attempt in range(REFLECT_TRIES):
            try:
                return await self.array.call(do_read)
            except ReservationConflict:
                if attempt + 1 == REFLECT_TRIES:
                    raise
                await trio.sleep(random.uniform(0.2, 1.0) * REFLECT_RETRY_DELAY)
        raise AssertionError("unreachable")


async def each_concurrently(items: Sequence[int], fn: Callable[[int], Awaitable[None]]) -> None:
    """fn(item) for every item, at most :data:`CONCURRENCY` at a time; the first error
    cancels the rest and is raised as itself (not wrapped in a group)."""
    limit = trio.CapacityLimiter(CONCURRENCY)

    async def run(item: int) -> None:
        async with limit:
            await fn(item)

    try:
        async with trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(run, item)
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def _ldev(name: str) -> int:
    cu, _, ld = name.partition(":")
    return int(cu, 16) << 8 | int(ld, 16)


def _key(p: PairDef) -> int:
    return p.pvol_ldev


def _reached(op: ReplicaOp, status: str) -> bool:
    if op in (ReplicaOp.SPLIT, ReplicaOp.QUICK_SPLIT):
        return status in ("PSUS", "COPY_SP", "PSUE")
    if op is ReplicaOp.RESYNC:
        return status in _PAIRED
    return status in ("COPY_RS_R", "PAIR")
