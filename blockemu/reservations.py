"""The control right: per-volume reservations held by a host id.

While a host holds the reservation on a volume, I/O and volume-info reads
from any other host are refused (:class:`ReservationConflict`). A reservation
is taken over with *preempt*, which is how a surviving node fences a failed
one. The table is persisted (temp file, fsync, rename) before a change is
acknowledged, so reservations survive an array restart, like SCSI persistent
reservations. The server commits in groups (:meth:`Reservations.durable`):
changes made while a write is under way go to disk together in the next one,
off the event loop, so 64 standbys' reserve/release pairs cost a few fsyncs,
not 128, and block I/O never waits for them.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import trio

from formats.units import format_ldev, parse_ldev

from .errors import ArrayError, ReservationConflict
from .fileio import atomic_write


class Reservations:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._holders: dict[int, str] = {}
        self._renewed: dict[int, float] = {}
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                self._holders = {parse_ldev(k): str(v) for k, v in raw.items()}
            except (ValueError, AttributeError) as exc:
                raise ArrayError(
                    f"{path}: reservation table unreadable ({exc}); fix or delete the file "
                    "(deleting it releases every reservation)"
                ) from None
        now = time.monotonic()
        self._renewed = {ldev: now for ldev in self._holders}
        self._version = self._saved = 0  # changes made / changes on disk
        self._sync_saves = 0
        self._writing = trio.Lock()

    def holder(self, ldev: int) -> str | None:
        return self._holders.get(ldev)

    def check(self, ldev: int, host: str) -> None:
        """Refuse *host* access to *ldev* if somebody else holds it."""
        holder = self._holders.get(ldev)
        if holder is not None and holder != host:
            raise ReservationConflict(
                f"LDEV {format_ldev(ldev)} is reserved by host {holder!r}"
                f"{'' if host else ' (this connection named no host)'}; "
                "wait for its release, or preempt it to fence that host"
            )

    def status(self, ldev: int) -> tuple[str | None, float | None]:
        """(holder, seconds since it last reserved or preempted), or (None, None)."""
        holder = self._holders.get(ldev)
        if holder is None:
            return None, None
        return holder, time.monotonic() - self._renewed[ldev]

    def reserve(self, ldev: int, host: str, *, save: bool = True) -> None:
        """Take the reservation, or renew it if *host* holds it already. With
        ``save=False`` the caller makes it durable (:meth:`durable`) before acking."""
        self._require_host(host)
        self.check(ldev, host)
        self._renewed[ldev] = time.monotonic()
        if self._holders.get(ldev) != host:
            self._holders[ldev] = host
            self._changed(save)

    def release(self, ldev: int, host: str, *, save: bool = True) -> None:
        """Release *host*'s reservation; releasing one you do not hold is refused."""
        self._require_host(host)
        holder = self._holders.get(ldev)
        if holder is None:
            return
        self.check(ldev, host)
        del self._holders[ldev]
        self._renewed.pop(ldev, None)
        self._changed(save)

    def preempt(self, ldev: int, host: str, *, save: bool = True) -> str | None:
        """Take the reservation from whoever holds it; returns the previous holder."""
        self._require_host(host)
        previous = self._holders.get(ldev)
        self._holders[ldev] = host
        self._renewed[ldev] = time.monotonic()
        self._changed(save)
        return previous

    def drop(self, ldev: int) -> None:
        """Forget a deleted volume's reservation."""
        self._renewed.pop(ldev, None)
        if self._holders.pop(ldev, None) is not None:
            self._changed(True)

    def as_dict(self) -> dict[str, str]:
        return {format_ldev(k): v for k, v in sorted(self._holders.items())}

    @staticmethod
    def _require_host(host: str) -> None:
        if not host:
            raise ReservationConflict(
                "reservations need a host id: connect with a host name (--host)"
            )

    def _changed(self, save: bool) -> None:
        self._version += 1
        if save:
            self.save()

    def save(self) -> None:
        """Write the table now if it has unsaved changes (also at shutdown)."""
        if self._saved < self._version:
            version = self._version
            self._sync_saves += 1
            atomic_write(self.path, self._encode(), mode=0o644)
            self._saved = max(self._saved, version)

    def _encode(self) -> bytes:
        return json.dumps(self.as_dict(), indent=1).encode()

    async def durable(self) -> None:
        """Return once every change made before the call is on disk (group commit: one
        write, in a worker thread, covers every change made while the previous ran)."""
        wanted = self._version
        async with self._writing:
            if self._saved >= wanted:
                return
            version, data, syncs = self._version, self._encode(), self._sync_saves
            await trio.to_thread.run_sync(functools.partial(atomic_write, self.path, data,
                                                            mode=0o644))  # fmt: skip
            if self._sync_saves != syncs:  # a newer synchronous save may be under ours now
                atomic_write(self.path, self._encode(), mode=0o644)
            self._saved = max(self._saved, version)
