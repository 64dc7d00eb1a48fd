"""A host's disk-info buffer: what the host believes each device is.

Hosts open volumes through this buffer, never by asking the array each
time, so after a split the buffer keeps the old PVID until somebody refreshes
it and the array then refuses the host's I/O as stale. That is the failure the
S-VOL consistency protocol (nodeagent) exists to prevent; it drives
:func:`refresh` and :meth:`HostBuffer.forget` during a split or resync.

The buffer changes only through :func:`scan`, :func:`refresh` and
:meth:`HostBuffer.forget`. Each change rewrites the file atomically (temp
file, fsync, rename, fsync of the directory); a reader such as a running
host-view mount picks changes up with :meth:`HostBuffer.reload_if_changed`,
one ``stat`` per call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from formats.errors import FormatError
from formats.host_buffer import BufferEntry, HostBufferData, decode_buffer, encode_buffer
from formats.units import format_ldev
from formats.volume_header import Attr, VolumeHeader, VolumeInfo

from .client import ArrayClient
from .fileio import atomic_write

log = logging.getLogger(__name__)

DEVICE_PREFIX = "hdisk"


class HiddenVolume(Exception):
    """A refresh of a volume hosts cannot see (a paired S-VOL)."""


class HostBuffer:
    """The buffer file of one host, loaded in memory."""

    def __init__(self, path: Path, host: str) -> None:
        self.path = Path(path)
        self.host = host
        self._data = HostBufferData(host)
        self._stamp: tuple[int, int, int] | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str], host: str) -> HostBuffer:
        """Load the buffer at *path*; a missing file is an empty buffer (never scanned)."""
        buf = cls(Path(path), host)
        buf.reload_if_changed()
        return buf

    # -- reading -----------------------------------------------------------

    @property
    def entries(self) -> tuple[BufferEntry, ...]:
        return self._data.entries

    @property
    def generation(self) -> int:
        return self._data.generation

    def get(self, device: str) -> BufferEntry | None:
        return next((e for e in self._data.entries if e.device == device), None)

    def by_ldev(self, ldev: int) -> BufferEntry | None:
        return next((e for e in self._data.entries if e.ldev == ldev), None)

    def lookup(self, target: str | int) -> BufferEntry:
        """An entry by device name or LDEV; KeyError with a helpful message if absent."""
        entry = self.by_ldev(target) if isinstance(target, int) else self.get(target)
        if entry is None:
            what = f"LDEV {format_ldev(target)}" if isinstance(target, int) else repr(target)
            raise KeyError(
                f"{what} is not in host {self.host}'s disk-info buffer {self.path}; "
                "`blockemu host scan` adds the volumes this host may see"
            )
        return entry

    def _stat_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def reload_if_changed(self) -> bool:
        """Re-read the file if another process replaced it; True if it did."""
        stamp = self._stat_stamp()
        if stamp == self._stamp:
            return False
        if stamp is None:
            self._data = HostBufferData(self.host)
        else:
            data = decode_buffer(self.path.read_bytes(), name=str(self.path))
            if data.host != self.host:
                raise FormatError(
                    f"{self.path} is the buffer of host {data.host!r}, not {self.host!r}: "
                    "give each host its own --buffer file"
                )
            self._data = data
        self._stamp = stamp
        return True

    # -- changing ------------------------------------------------------------

    def _save(self, entries: list[BufferEntry]) -> None:
        data = HostBufferData(
            self.host, self._data.generation + 1, tuple(sorted(entries, key=_device_order))
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, encode_buffer(data))
        self._data = data
        self._stamp = self._stat_stamp()

    def store(self, ldev: int, pvid: bytes, info: VolumeInfo) -> BufferEntry:
        """Record (PVID, info) for *ldev*, keeping its device name or giving it a new one."""
        return self.update([(ldev, pvid, info)], [])[0]

    def update(
        self, stores: Sequence[tuple[int, bytes, VolumeInfo]], forgets: Sequence[int]
    ) -> list[BufferEntry]:
        """Store (LDEV, PVID, info) records, keeping each device name or giving a new one,
        and forget LDEVs, in one write (one fsync): a reflection of a 64-pair group
        rewrites the buffer once, not 64 times. Nothing to change: nothing written."""
        gone = set(forgets)
        entries = {e.ldev: e for e in self._data.entries if e.ldev not in gone}
        stored = []
        for ldev, pvid, info in stores:
            old = entries.get(ldev)
            name = old.device if old else _free_name({e.device for e in entries.values()})
            entries[ldev] = BufferEntry(name, ldev, pvid, info)
            stored.append(entries[ldev])
        if stores or len(entries) != len(self._data.entries):
            self._save(list(entries.values()))
        return stored

    def forget(self, target: str | int) -> BufferEntry:
        """Drop one device (a paired S-VOL is hidden: the host must not use it)."""
        entry = self.lookup(target)
        self._save([e for e in self._data.entries if e is not entry])
        return entry

    def replace_all(self, headers: list[VolumeHeader]) -> None:
        """The scan's result: exactly these volumes, device names kept where known."""
        entries = []
        names = {e.ldev: e.device for e in self._data.entries}
        used = set(names.values())
        for h in headers:
            name = names.get(h.ldev)
            if name is None:
                name = _free_name(used)
                used.add(name)
            entries.append(BufferEntry(name, h.ldev, h.pvid, h.info))
        self._save(entries)


def _free_name(used: set[str]) -> str:
    """The lowest hdiskN not in *used* (as AIX's cfgmgr numbers disks)."""
    n = 0
    while f"{DEVICE_PREFIX}{n}" in used:
        n += 1
    return f"{DEVICE_PREFIX}{n}"


def _device_order(entry: BufferEntry) -> tuple[int, str]:
    digits = entry.device.removeprefix(DEVICE_PREFIX)
    return (int(digits), "") if digits.isdigit() else (1 << 30, entry.device)


def visible(headers: list[VolumeHeader]) -> list[VolumeHeader]:
    """What a host scan shows: hidden S-VOLs left out, one volume per PVID (the P-VOL)."""
    shown: dict[bytes, VolumeHeader] = {}
    for h in sorted(headers, key=lambda h: h.ldev):
        if h.info.attributes & Attr.HIDDEN:
            continue
        first = shown.get(h.pvid)
        if first is None or (h.pair.role.name == "PVOL" and first.pair.role.name != "PVOL"):
            shown[h.pvid] = h
    return sorted(shown.values(), key=lambda h: h.ldev)


async def scan(array: ArrayClient, buffer: HostBuffer) -> list[BufferEntry]:
    """Rebuild the buffer from the headers of every volume this host may see."""
    headers, broken = await array.list_volumes()
    for name, why in broken.items():
        log.warning("scan: skipped unreadable volume %s: %s", name, why)
    buffer.replace_all(visible(headers))
    return list(buffer.entries)


async def refresh(
    array: ArrayClient, buffer: HostBuffer, target: str | int, *, take_control: bool = False
) -> BufferEntry:
    """Re-read one volume straight from the array and store it (the patent's Stage Y).

    The PVID is read by physical name (bypassing this buffer), then the volume
    info with that PVID; with *take_control* the host holds the control right
    on the volume while it reads the info, and releases it after.
    """
    ldev = target if isinstance(target, int) else buffer.lookup(target).ldev
    header = await read_identity(array, ldev, take_control=take_control)
    return buffer.store(ldev, header.pvid, header.info)


async def read_identity(array: ArrayClient, ldev: int, *, take_control: bool) -> VolumeHeader:
    """The volume's header as a host may cache it: PVID read by physical name, then the
    info (holding the control right meanwhile if *take_control*). HiddenVolume if paired."""
    pvid = await array.read_pvid(ldev)
    if take_control:
        await array.reserve(ldev)
    try:
        header = await array.show(ldev)
    finally:
        if take_control:
            await array.release(ldev)
    if header.info.attributes & Attr.HIDDEN:
        raise HiddenVolume(
            f"LDEV {format_ldev(ldev)} is a paired S-VOL, hidden from hosts; "
            "forget it instead (blockemu host forget), or split the pair first"
        )
    if header.pvid != pvid:
        log.warning(
            "LDEV %s changed identity while being refreshed; storing the newer one",
            format_ldev(ldev),
        )
    return header
