"""The array server: the wire protocol around a :class:`VolumeStore`.

One trio task per connection reads frames in order and answers each one.
Reads, writes and discards run inline (synchronous pread/pwrite: the fastest
option measured here); flushes and FUA writes wait for fdatasync in a worker
thread in their own task, so one slow flush does not stall the reads queued
behind it. Responses carry the request's tag and may overtake each other.

A write is acknowledged only after ``pwrite`` returned, i.e. the data is in
the kernel's page cache: killing the server (even with SIGKILL) cannot lose
it. Surviving power loss is what FLUSH and FUA are for.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

import trio

from formats.errors import FormatError
from formats.units import format_ldev
from formats.volume_header import header_to_dict
from formats.wire import (
    MAX_IO,
    Flag,
    Frame,
    FrameReader,
    Op,
    OversizedFrame,
    Status,
    decode_json,
    encode_header,
    encode_json,
)

from .address import Address, open_listeners
from .errors import ArrayError, BadRequest, StaleIdentity, TooLarge, Unsupported, VolumeIOError
from .store import Volume, VolumeStore

log = logging.getLogger(__name__)

RECEIVE_SIZE = 1 << 20


class ArrayServer:
    """Answers frames against one store. Holds no per-connection state."""

    def __init__(self, store: VolumeStore) -> None:
        self.store = store
        self._sync_ops: dict[int, Callable[[Frame], bytes]] = {
            Op.READ: self._read,
            Op.WRITE: self._write,
            Op.DISCARD: self._discard,
            Op.CREATE: self._create,
            Op.LIST: self._list,
            Op.SHOW: self._show,
            Op.DELETE: self._delete,
        }

    # -- helpers -------------------------------------------------------

    def _volume_for_io(self, frame: Frame) -> Volume:
        vol = self.store.get(frame.ldev)
        if frame.pvid != vol.header.pvid:
            raise StaleIdentity(
                f"LDEV {format_ldev(frame.ldev)}: PVID {frame.pvid.hex()} is not the volume's "
                "current identity (it was split or re-created); refresh the host's disk-info "
                "buffer from the array"
            )
        if frame.count > MAX_IO:
            raise TooLarge(f"I/O of {frame.count} bytes exceeds the {MAX_IO}-byte limit")
        return vol

    @staticmethod
    def _args(frame: Frame) -> dict[str, Any]:
        try:
            value = decode_json(frame.payload)
        except FormatError as exc:
            raise BadRequest(str(exc)) from None
        if not isinstance(value, dict):
            raise BadRequest("management request body must be a JSON object")
        return value

    # -- operations ----------------------------------------------------

    def _read(self, frame: Frame) -> bytes:
        return self._volume_for_io(frame).pread(frame.offset, frame.count)

    def _write(self, frame: Frame) -> bytes:
        if frame.count != len(frame.payload):
            raise BadRequest(f"write says {frame.count} bytes but carries {len(frame.payload)}")
        self._volume_for_io(frame).pwrite(frame.offset, frame.payload)
        return b""

    def _discard(self, frame: Frame) -> bytes:
        self._volume_for_io(frame).discard(frame.offset, frame.count)
        return b""

    def _create(self, frame: Frame) -> bytes:
        args = self._args(frame)
        try:
            ldev, size = int(args["ldev"]), int(args["size"])
            block_size = int(args.get("block_size", 512))
            label = str(args.get("label", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f"create needs integer 'ldev' and 'size': {exc!r}") from None
        vol = self.store.create(ldev, size, block_size=block_size, label=label)
        return encode_json(header_to_dict(vol.header))

    def _list(self, frame: Frame) -> bytes:
        return encode_json(
            {
                "volumes": [header_to_dict(v.header) for v in self.store.list()],
                "broken": self.store.broken,
            }
        )

    def _show(self, frame: Frame) -> bytes:
        return encode_json(header_to_dict(self.store.get(frame.ldev).reread_header()))

    def _delete(self, frame: Frame) -> bytes:
        self.store.delete(frame.ldev)
        return b""

    # -- dispatch ------------------------------------------------------

    def handle(self, frame: Frame) -> tuple[int, bytes]:
        """Answer one synchronous request: (status, payload)."""
        op = self._sync_ops.get(frame.op)
        try:
            if op is None:
                raise Unsupported(f"unknown operation {frame.op}; upgrade the array")
            return Status.OK, op(frame)
        except ArrayError as exc:
            return exc.status, str(exc).encode()
        except OSError as exc:
            log.error("I/O error on LDEV %s: %s", format_ldev(frame.ldev), exc)
            err = VolumeIOError(f"LDEV {format_ldev(frame.ldev)}: {exc}")
            return err.status, str(err).encode()

    async def flush(self, frame: Frame) -> tuple[int, bytes]:
        """FLUSH, and WRITE with FUA: the pwrite part already ran inline."""
        try:
            vol = self._volume_for_io(frame)
            await trio.to_thread.run_sync(vol.flush)
        except ArrayError as exc:
            return exc.status, str(exc).encode()
        except OSError as exc:
            return Status.IO_ERROR, f"LDEV {format_ldev(frame.ldev)}: flush failed: {exc}".encode()
        return Status.OK, b""

    async def serve_connection(self, stream: trio.abc.Stream, peer: str) -> None:
        """Answer frames from one client until it hangs up or sends garbage."""
        send_lock = trio.Lock()

        async def respond(frame: Frame, status: int, payload: bytes) -> None:
            header = encode_header(
                frame.op,
                frame.tag,
                ldev=frame.ldev,
                pvid=frame.pvid,
                offset=frame.offset,
                count=frame.count,
                status=status,
                length=len(payload),
            )
            async with send_lock:
                await stream.send_all(header + payload)

        async def flush_and_respond(frame: Frame) -> None:
            status, payload = await self.flush(frame)
            await respond(frame, status, payload)

        async def receive_loop(nursery: trio.Nursery) -> None:
            reader = FrameReader()
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    if not reader.idle:
                        log.warning(
                            "%s: connection dropped in the middle of a request; "
                            "that request was not applied",
                            peer,
                        )
                    return
                reader.feed(data)
                while (frame := reader.next_frame()) is not None:
                    if frame.op == Op.FLUSH:
                        nursery.start_soon(flush_and_respond, frame)
                        continue
                    status, payload = self.handle(frame)
                    if status == Status.OK and frame.op == Op.WRITE and frame.flags & Flag.FUA:
                        nursery.start_soon(flush_and_respond, frame)
                    else:
                        await respond(frame, status, payload)

        try:
            async with trio.open_nursery() as nursery:
                try:
                    await receive_loop(nursery)
                except FormatError as exc:
                    log.warning("%s: malformed frame, closing the connection: %s", peer, exc)
                    oversized = isinstance(exc, OversizedFrame)
                    status = Status.TOO_LARGE if oversized else Status.BAD_REQUEST
                    with trio.move_on_after(1):
                        await respond(Frame(op=0, tag=0), status, str(exc).encode())
                    nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("%s: connection lost", peer)
        finally:
            await trio.aclose_forcefully(stream)


async def serve(
    store: VolumeStore,
    addresses: Sequence[Address],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *store* on *addresses* until cancelled; reports the bound addresses."""
    server = ArrayServer(store)
    listeners: list[trio.SocketListener] = []
    bound: list[str] = []
    for addr in addresses:
        new = await open_listeners(addr)
        listeners.extend(new)
        for listener in new:
            name = listener.socket.getsockname()
            bound.append(f"unix:{addr.path}" if addr.kind == "unix" else f"tcp:{name[0]}:{name[1]}")
    counter = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal counter
        counter += 1
        try:
            peer = str(stream.socket.getpeername() or f"unix-client-{counter}")
        except OSError:
            peer = f"client-{counter}"
        await server.serve_connection(stream, peer)

    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(trio.serve_listeners, handler, [listener])
            task_status.started(bound)
    finally:
        for addr in addresses:
            if addr.kind == "unix" and os.path.exists(addr.path):
                os.unlink(addr.path)


async def run_until_signalled(
    store: VolumeStore, addresses: Sequence[Address], announce: Callable[[list[str]], None]
) -> None:
    """What `blockemu serve` runs: serve until SIGTERM or SIGINT, then stop cleanly."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve, store, addresses)
            announce(bound)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
