"""A host's view: the devices of its disk-info buffer, as files in a FUSE mount.

`blockemu attach` runs this on a cluster node. Each file is one device of the
host's buffer; every read, write and flush goes to the array over TCP or a
unix socket with the LDEV **and the PVID the buffer holds**. The array refuses
a PVID that is no longer the volume's, so after a split of a volume this host
has not refreshed, I/O fails with EIO and the mount logs one line naming the
device, the LDEV, the PVID held and the PVID on the array. That is the
patent's failure, on demand; `blockemu host refresh` (or nodeagent's
protocol) is the cure, and the mount picks the refreshed buffer up at once.

The connection to the array is kept open and re-established if it drops
(the array restarted): I/O waits for it a few seconds, then fails with EIO.
A write retried after a lost connection is idempotent (same bytes, same place).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from formats.host_buffer import BufferEntry
from formats.units import format_ldev

from .address import Address
from .client import ArrayClient
from .connection import ArrayConnection, ArrayUnavailable
from .errors import ArrayError, OutOfRange, StaleIdentity
from .fusefs import BackendIOError, Device, VolumeFS, run_mount
from .hostbuffer import HostBuffer

log = logging.getLogger(__name__)

T = TypeVar("T")


class HostBackend:
    """:class:`~blockemu.fusefs.Backend` forwarding to the array as one host."""

    def __init__(self, addr: Address, host: str, key: bytes | None, buffer: HostBuffer) -> None:
        self.addr = addr
        self.connection = ArrayConnection(addr, host=host, key=key)
        self.buffer = buffer
        self._reported: set[tuple[str, bytes]] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.connection.run(task_status=task_status)

    async def _call(self, fn: Callable[[ArrayClient], Awaitable[T]]) -> T:
        try:
            return await self.connection.call(fn)
        except ArrayUnavailable as exc:
            raise BackendIOError(str(exc), errno.EIO) from None

    # -- the Backend protocol --------------------------------------------

    def devices(self) -> list[Device]:
        try:
            self.buffer.reload_if_changed()
        except Exception as exc:  # a damaged buffer file: keep serving the last good one
            log.error("cannot reload %s: %s", self.buffer.path, exc)
        return [Device(e.device, e.info.size, e.info.block_size) for e in self.buffer.entries]

    def _entry(self, name: str) -> BufferEntry:
        entry = self.buffer.get(name)
        if entry is None:
            raise BackendIOError(f"{name} is no longer in the buffer", errno.ENOENT)
        return entry

    async def _refused(self, entry: BufferEntry, exc: ArrayError) -> BackendIOError:
        if isinstance(exc, OutOfRange):
            return BackendIOError(str(exc), errno.ENOSPC)
        if isinstance(exc, StaleIdentity):
            try:
                current = (await self._call(lambda c: c.read_pvid(entry.ldev))).hex()
            except (ArrayError, BackendIOError):
                current = "unknown"
            key = (entry.device, entry.pvid)
            message = (
                f"{entry.device}: stale identity: LDEV {format_ldev(entry.ldev)} has PVID "
                f"{current} on the array, this host holds {entry.pvid.hex()}; refresh the "
                f"buffer (blockemu host refresh {entry.device})"
            )
            if key not in self._reported:
                self._reported.add(key)
                log.error("%s", message)
            return BackendIOError(message, errno.EIO)
        return BackendIOError(f"{entry.device} (LDEV {format_ldev(entry.ldev)}): {exc}", errno.EIO)

    async def read(self, name: str, offset: int, size: int) -> bytes:
        entry = self._entry(name)
        try:
            return await self._call(lambda c: c.read(entry.ldev, entry.pvid, offset, size))
        except ArrayError as exc:
            raise await self._refused(entry, exc) from None

    async def write(self, name: str, offset: int, data: bytes) -> None:
        entry = self._entry(name)
        try:
            await self._call(lambda c: c.write(entry.ldev, entry.pvid, offset, data))
        except ArrayError as exc:
            raise await self._refused(entry, exc) from None

    async def flush(self, name: str) -> None:
        entry = self._entry(name)
        try:
            await self._call(lambda c: c.flush(entry.ldev, entry.pvid))
        except ArrayError as exc:
            raise await self._refused(entry, exc) from None


async def _end_with(pid: int, scope: trio.CancelScope) -> None:
    """Cancel *scope* when process *pid* exits (a pidfd becomes readable then)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        log.info("process %d is gone already: unmounting", pid)
        scope.cancel()
        return
    try:
        await trio.lowlevel.wait_readable(fd)
        log.info("process %d ended: unmounting", pid)
        scope.cancel()
    finally:
        os.close(fd)


async def run_attach(
    addr: Address,
    host: str,
    key: bytes | None,
    buffer: HostBuffer,
    mountpoint: str,
    announce: Callable[[], None],
    exit_with: int | None = None,
) -> None:
    """What `blockemu attach` runs: connect, mount, serve until SIGTERM/SIGINT, unmount.

    With *exit_with* (a PID, e.g. the cluster agent that started us) it also
    unmounts and returns when that process ends, however it ends: a node's
    host view goes away with its agent, as on a crashed machine.
    """
    backend = HostBackend(addr, host, key, buffer)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            if exit_with is not None:
                nursery.start_soon(_end_with, exit_with, nursery.cancel_scope)
            await nursery.start(backend.run)
            await nursery.start(
                lambda task_status: run_mount(
                    VolumeFS(backend), mountpoint, fsname=f"blockemu-host:{host}",
                    task_status=task_status,
                )
            )  # fmt: skip
            announce()
            async for signum in signals:
                log.info("received %s, unmounting", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
