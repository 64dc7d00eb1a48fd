"""The control right: per-volume reservations held by a host id.

While a host holds the reservation on a volume, I/O and volume-info reads
from any other host are refused (:class:`ReservationConflict`). A reservation
is taken over with *preempt*, which is how a surviving node fences a failed
one. The table is persisted (temp file, fsync, rename) on every change, so
reservations survive an array restart, like SCSI persistent reservations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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

    def reserve(self, ldev: int, host: str) -> None:
        """Take the reservation, or renew it if *host* holds it already."""
        self._require_host(host)
        self.check(ldev, host)
        self._renewed[ldev] = time.monotonic()
        if self._holders.get(ldev) != host:
            self._holders[ldev] = host
            self._save()

    def release(self, ldev: int, host: str) -> None:
        """Release *host*'s reservation; releasing one you do not hold is refused."""
        self._require_host(host)
        holder = self._holders.get(ldev)
        if holder is None:
            return
        self.check(ldev, host)
        del self._holders[ldev]
        self._renewed.pop(ldev, None)
        self._save()

    def preempt(self, ldev: int, host: str) -> str | None:
        """Take the reservation from whoever holds it; returns the previous holder."""
        self._require_host(host)
        previous = self._holders.get(ldev)
        self._holders[ldev] = host
        self._renewed[ldev] = time.monotonic()
        self._save()
        return previous

    def drop(self, ldev: int) -> None:
        """Forget a deleted volume's reservation."""
        self._renewed.pop(ldev, None)
        if self._holders.pop(ldev, None) is not None:
            self._save()

    def as_dict(self) -> dict[str, str]:
        return {format_ldev(k): v for k, v in sorted(self._holders.items())}

    @staticmethod
    def _require_host(host: str) -> None:
        if not host:
            raise ReservationConflict(
                "reservations need a host id: connect with a host name (--host)"
            )

    def _save(self) -> None:
        atomic_write(self.path, json.dumps(self.as_dict(), indent=1).encode(), mode=0o644)
