"""The array server: the wire protocol around an :class:`~blockemu.array.Array`.

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

import functools
import logging
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

import trio

from formats.errors import FormatError
from formats.units import format_ldev, parse_ldev
from formats.volume_header import MirrorMode, header_to_dict
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
from .array import Array
from .errors import ArrayError, BadRequest, TooLarge, Unsupported, VolumeIOError
from .pairstate import Command
from .replication import MAX_PACE, Pair

_PAIR_COMMANDS = {
    Op.PAIR_SPLIT: Command.SPLIT,
    Op.PAIR_RESYNC: Command.RESYNC,
    Op.PAIR_RESTORE: Command.RESTORE,
    Op.PAIR_SUSPEND: Command.SUSPEND,
    Op.PAIR_DELETE: Command.DELETE,
}

log = logging.getLogger(__name__)

RECEIVE_SIZE = 1 << 20


class Connection:
    """What the server remembers about one client: the host it speaks for."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.host = ""


class ArrayServer:
    """Answers frames against one :class:`Array`."""

    def __init__(self, array: Array) -> None:
        self.array = array
        self._sync_ops: dict[int, Callable[[Connection, Frame], bytes]] = {
            Op.READ: self._read,
            Op.WRITE: self._write,
            Op.DISCARD: self._discard,
            Op.HELLO: self._hello,
            Op.CREATE: self._create,
            Op.LIST: self._list,
            Op.SHOW: self._show,
            Op.DELETE: self._delete,
            Op.READ_PVID: self._read_pvid,
            Op.RESERVE: self._reserve,
            Op.RELEASE: self._release,
            Op.PREEMPT: self._preempt,
            Op.PAIR_CREATE: self._pair_create,
            Op.PAIR_DISPLAY: self._pair_display,
        }
        for op, command in _PAIR_COMMANDS.items():
            self._sync_ops[op] = functools.partial(self._pair_command, command)

    # -- helpers -------------------------------------------------------

    @staticmethod
    def _check_size(frame: Frame) -> None:
        if frame.count > MAX_IO:
            raise TooLarge(f"I/O of {frame.count} bytes exceeds the {MAX_IO}-byte limit")

    @staticmethod
    def _args(frame: Frame) -> dict[str, Any]:
        try:
            value = decode_json(frame.payload)
        except FormatError as exc:
            raise BadRequest(str(exc)) from None
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise BadRequest("management request body must be a JSON object")
        return value

    def _select(self, args: dict[str, Any]) -> list[Pair]:
        try:
            pvol = None if args.get("pvol") is None else parse_ldev(str(args["pvol"]))
            svol = None if args.get("svol") is None else parse_ldev(str(args["svol"]))
            group = None if args.get("group") is None else int(args["group"])
        except (FormatError, TypeError, ValueError) as exc:
            raise BadRequest(f"bad pair selector: {exc}") from None
        return self.array.select(pvol=pvol, svol=svol, group=group)

    def _pairs_answer(self, pairs: list[Pair]) -> bytes:
        return encode_json({"pairs": [self.array.describe(p) for p in pairs]})

    # -- block I/O -----------------------------------------------------

    def _read(self, conn: Connection, frame: Frame) -> bytes:
        self._check_size(frame)
        return self.array.read(conn.host, frame.ldev, frame.pvid, frame.offset, frame.count)

    def _write(self, conn: Connection, frame: Frame) -> bytes:
        self._check_size(frame)
        if frame.count != len(frame.payload):
            raise BadRequest(f"write says {frame.count} bytes but carries {len(frame.payload)}")
        self.array.write(conn.host, frame.ldev, frame.pvid, frame.offset, frame.payload)
        return b""

    def _discard(self, conn: Connection, frame: Frame) -> bytes:
        self.array.discard(conn.host, frame.ldev, frame.pvid, frame.offset, frame.count)
        return b""

    # -- hosts, volumes, reservations ----------------------------------

    def _hello(self, conn: Connection, frame: Frame) -> bytes:
        host = self._args(frame).get("host")
        if not isinstance(host, str) or not host or len(host) > 64:
            raise BadRequest("HELLO needs a host id: a non-empty string of at most 64 characters")
        conn.host = host
        log.info("%s speaks for host %r", conn.peer, host)
        return b""

    def _create(self, conn: Connection, frame: Frame) -> bytes:
        args = self._args(frame)
        try:
            ldev, size = int(args["ldev"]), int(args["size"])
            block_size = int(args.get("block_size", 512))
            label = str(args.get("label", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f"create needs integer 'ldev' and 'size': {exc!r}") from None
        vol = self.array.store.create(ldev, size, block_size=block_size, label=label)
        return encode_json(header_to_dict(vol.header))

    def _list(self, conn: Connection, frame: Frame) -> bytes:
        return encode_json(
            {
                "volumes": [header_to_dict(v.header) for v in self.array.store.list()],
                "broken": self.array.store.broken,
                "reservations": self.array.reservations.as_dict(),
            }
        )

    def _show(self, conn: Connection, frame: Frame) -> bytes:
        return encode_json(header_to_dict(self.array.show(conn.host, frame.ldev)))

    def _delete(self, conn: Connection, frame: Frame) -> bytes:
        self.array.delete_volume(frame.ldev)
        return b""

    def _read_pvid(self, conn: Connection, frame: Frame) -> bytes:
        return encode_json({"pvid": self.array.read_pvid(frame.ldev).hex()})

    def _reserve(self, conn: Connection, frame: Frame) -> bytes:
        self.array.store.get(frame.ldev)
        self.array.reservations.reserve(frame.ldev, conn.host)
        return b""

    def _release(self, conn: Connection, frame: Frame) -> bytes:
        self.array.store.get(frame.ldev)
        self.array.reservations.release(frame.ldev, conn.host)
        return b""

    def _preempt(self, conn: Connection, frame: Frame) -> bytes:
        self.array.store.get(frame.ldev)
        previous = self.array.reservations.preempt(frame.ldev, conn.host)
        if previous and previous != conn.host:
            log.warning(
                "host %r preempted host %r on LDEV %s", conn.host, previous, format_ldev(frame.ldev)
            )
        return encode_json({"previous": previous})

    # -- pairs -----------------------------------------------------------

    def _pair_create(self, conn: Connection, frame: Frame) -> bytes:
        args = self._args(frame)
        try:
            pvol, svol = parse_ldev(str(args["pvol"])), parse_ldev(str(args["svol"]))
            mode = MirrorMode[str(args.get("mode", "sync")).upper()]
            split = args.get("split")
            if split not in (None, "steady", "quick"):
                raise ValueError(f"split must be steady or quick, not {split!r}")
            group = args.get("group")
            pair = self.array.pair_create(
                pvol,
                svol,
                mode=mode,
                mirror_unit=int(args.get("mu", 0)),
                group=None if group is None else int(group),
                pace=int(args.get("pace", MAX_PACE)),
                split=split,
            )
        except (KeyError, TypeError, ValueError, FormatError) as exc:
            raise BadRequest(
                f"pair create needs pvol, svol and optionally mode (sync, async, deferred), "
                f"mu, group, pace, split: {exc}"
            ) from None
        return self._pairs_answer([pair])

    def _pair_command(self, command: Command, conn: Connection, frame: Frame) -> bytes:
        args = self._args(frame)
        pairs = self._select(args)
        self.array.pair_command(command, pairs, quick=bool(args.get("quick", False)))
        return self._pairs_answer([p for p in pairs if not p.closed])

    def _pair_display(self, conn: Connection, frame: Frame) -> bytes:
        return self._pairs_answer(self._select(self._args(frame)))

    # -- dispatch ------------------------------------------------------

    def handle(self, conn: Connection, frame: Frame) -> tuple[int, bytes]:
        """Answer one synchronous request: (status, payload)."""
        op = self._sync_ops.get(frame.op)
        try:
            if op is None:
                raise Unsupported(f"unknown operation {frame.op}; upgrade the array")
            return Status.OK, op(conn, frame)
        except ArrayError as exc:
            return exc.status, str(exc).encode()
        except OSError as exc:
            log.error("I/O error on LDEV %s: %s", format_ldev(frame.ldev), exc)
            err = VolumeIOError(f"LDEV {format_ldev(frame.ldev)}: {exc}")
            return err.status, str(err).encode()

    async def flush(self, conn: Connection, frame: Frame) -> tuple[int, bytes]:
        """FLUSH, and WRITE with FUA: the pwrite part already ran inline."""
        try:
            flush = self.array.flusher(conn.host, frame.ldev, frame.pvid)
            await trio.to_thread.run_sync(flush)
        except ArrayError as exc:
            return exc.status, str(exc).encode()
        except OSError as exc:
            return Status.IO_ERROR, f"LDEV {format_ldev(frame.ldev)}: flush failed: {exc}".encode()
        return Status.OK, b""

    async def serve_connection(self, stream: trio.abc.Stream, peer: str) -> None:
        """Answer frames from one client until it hangs up or sends garbage."""
        conn = Connection(peer)
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
            status, payload = await self.flush(conn, frame)
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
                    status, payload = self.handle(conn, frame)
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
    array: Array,
    addresses: Sequence[Address],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *array* on *addresses* until cancelled; reports the bound addresses."""
    server = ArrayServer(array)
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
            await nursery.start(array.run)
            for listener in listeners:
                nursery.start_soon(trio.serve_listeners, handler, [listener])
            task_status.started(bound)
    finally:
        for addr in addresses:
            if addr.kind == "unix" and os.path.exists(addr.path):
                os.unlink(addr.path)


async def run_until_signalled(
    array: Array, addresses: Sequence[Address], announce: Callable[[list[str]], None]
) -> None:
    """What `blockemu serve` runs: serve until SIGTERM or SIGINT, then stop cleanly."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve, array, addresses)
            announce(bound)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
