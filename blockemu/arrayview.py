"""The array's own view: every volume a host could see, as a file in a FUSE mount.

`blockemu serve --mount DIR` runs this inside the array process, in the same
trio loop as the server: a read or write on ``DIR/00-1A`` is a direct call of
:meth:`Array.read`/:meth:`Array.write`, with no socket in between. It goes
through the same checks as a host's I/O and is mirrored like any other write
(a P-VOL's pair applies it to the S-VOL).

The view is the array's, not a host's: it always uses the volume's current
PVID (so a split never makes it stale) and speaks as host ``""``, which
means a reservation another host holds on a volume refuses this view's I/O
too (the client sees EACCES). Paired S-VOLs are hidden (``Attr.HIDDEN``),
exactly as from hosts, and reappear when the pair is split.
"""

from __future__ import annotations

import errno

import trio

from formats.errors import FormatError
from formats.units import format_ldev, parse_ldev
from formats.volume_header import Attr

from .array import Array
from .errors import (
    ArrayError,
    NoSuchVolume,
    OutOfRange,
    ReservationConflict,
    VolumeHidden,
)
from .fusefs import BackendIOError, Device

_ERRNO: dict[type[ArrayError], int] = {
    NoSuchVolume: errno.ENOENT,
    VolumeHidden: errno.EACCES,
    ReservationConflict: errno.EACCES,
    OutOfRange: errno.ENOSPC,
}


def device_name(ldev: int) -> str:
    """``00:1A`` -> ``00-1A``: a file name (and the volume file's stem in the store)."""
    return format_ldev(ldev).replace(":", "-")


def _io_error(exc: ArrayError | OSError) -> BackendIOError:
    if isinstance(exc, OSError):
        return BackendIOError(str(exc), exc.errno or errno.EIO)
    return BackendIOError(str(exc), _ERRNO.get(type(exc), errno.EIO))


class ArrayBackend:
    """:class:`~blockemu.fusefs.Backend` over an in-process :class:`Array`."""

    def __init__(self, array: Array, *, host: str = "") -> None:
        self.array = array
        self.host = host
        self._ldevs: dict[str, int] = {}

    def devices(self) -> list[Device]:
        found = []
        for vol in self.array.store.list():
            info = vol.header.info
            if not info.attributes & Attr.HIDDEN:
                found.append(Device(device_name(vol.ldev), info.size, info.block_size))
        return found

    def _ldev(self, name: str) -> int:
        ldev = self._ldevs.get(name)
        if ldev is None:
            try:
                ldev = parse_ldev(name.replace("-", ":"))
            except FormatError:
                raise BackendIOError(f"{name} names no LDEV", errno.ENOENT) from None
            self._ldevs[name] = ldev
        return ldev

    def _target(self, name: str) -> tuple[int, bytes]:
        """LDEV and current PVID of *name*."""
        ldev = self._ldev(name)
        try:
            return ldev, self.array.store.get(ldev).header.pvid
        except ArrayError as exc:
            raise _io_error(exc) from None

    async def read(self, name: str, offset: int, size: int) -> bytes:
        ldev, pvid = self._target(name)
        try:
            return self.array.read(self.host, ldev, pvid, offset, size)
        except (ArrayError, OSError) as exc:
            raise _io_error(exc) from None

    async def write(self, name: str, offset: int, data: bytes) -> None:
        ldev, pvid = self._target(name)
        try:
            self.array.write(self.host, ldev, pvid, offset, data)
        except (ArrayError, OSError) as exc:
            raise _io_error(exc) from None

    async def flush(self, name: str) -> None:
        ldev, pvid = self._target(name)
        try:
            await trio.to_thread.run_sync(self.array.flusher(self.host, ldev, pvid))
        except (ArrayError, OSError) as exc:
            raise _io_error(exc) from None
