"""Async client of the array protocol, with pipelining.

Any number of tasks may call into one :class:`ArrayClient` at once: each
request gets a tag, requests go out as they come, and a single receiver task
routes each response to the task waiting for its tag. Use it as::

    async with open_client(parse_address("unix:/tmp/array.sock")) as array:
        headers, broken = await array.list_volumes()
        data = await array.read(ldev, pvid, 0, 4096)

Errors the array reports are raised as the same :mod:`blockemu.errors`
classes the server raised; a lost connection raises :class:`ConnectionLost`
in every task still waiting.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from formats.errors import FormatError
from formats.volume_header import VolumeHeader, header_from_dict
from formats.wire import (
    MAX_IO,
    SEPARATE_SEND,
    ZERO_PVID,
    Flag,
    Frame,
    FrameReader,
    Op,
    Status,
    encode_header,
    encode_json,
)

from .address import Address, open_stream
from .auth import ClientHandshake
from .errors import ArrayError, error_for_status


class ConnectionLost(ArrayError):
    """The connection to the array closed while a request was outstanding."""


class _Pending:
    __slots__ = ("done", "response")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response: Frame | None = None


class ArrayClient:
    def __init__(self, stream: trio.abc.Stream, name: str) -> None:
        self._stream = stream
        self._name = name
        self._tags = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._send_lock = trio.Lock()
        self._closed_reason: str | None = None

    async def _receive_loop(self) -> None:
        reader = FrameReader()
        try:
            while True:
                data = await self._stream.receive_some(1 << 20)
                if not data:
                    raise ConnectionLost(f"the array at {self._name} closed the connection")
                reader.feed(data)
                while (frame := reader.next_frame()) is not None:
                    waiter = self._pending.pop(frame.tag, None)
                    if waiter is None:
                        # Tag 0: the server's last word before it hangs up on us.
                        raise error_for_status(frame.status, frame.message())
                    waiter.response = frame
                    waiter.done.set()
        except (ArrayError, FormatError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail_all(f"connection to the array at {self._name} lost: {exc}")

    def _fail_all(self, reason: str) -> None:
        self._closed_reason = reason
        for waiter in self._pending.values():
            waiter.done.set()
        self._pending.clear()

    async def request(self, frame: Frame) -> Frame:
        """Send *frame* (its tag is assigned here) and wait for the answer."""
        if self._closed_reason:
            raise ConnectionLost(self._closed_reason)
        frame.tag = next(self._tags)
        waiter = _Pending()
        self._pending[frame.tag] = waiter
        header = encode_header(
            frame.op,
            frame.tag,
            ldev=frame.ldev,
            pvid=frame.pvid,
            offset=frame.offset,
            count=frame.count,
            flags=frame.flags,
            length=len(frame.payload),
        )
        try:
            async with self._send_lock:
                if len(frame.payload) >= SEPARATE_SEND:
                    await self._stream.send_all(header)
                    await self._stream.send_all(frame.payload)
                else:
                    await self._stream.send_all(header + frame.payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._pending.pop(frame.tag, None)
            raise ConnectionLost(f"cannot send to the array at {self._name}: {exc}") from None
        await waiter.done.wait()
        response = waiter.response
        if response is None:
            raise ConnectionLost(self._closed_reason or "connection closed")
        if response.status != Status.OK:
            raise error_for_status(response.status, response.message())
        return response

    # -- block I/O -----------------------------------------------------

    async def read(self, ldev: int, pvid: bytes, offset: int, count: int) -> bytes:
        if count > MAX_IO:
            parts = []
            for start in range(0, count, MAX_IO):
                n = min(MAX_IO, count - start)
                parts.append(await self.read(ldev, pvid, offset + start, n))
            return b"".join(parts)
        frame = Frame(Op.READ, 0, ldev=ldev, pvid=pvid, offset=offset, count=count)
        return (await self.request(frame)).payload

    async def write(
        self, ldev: int, pvid: bytes, offset: int, data: bytes, *, fua: bool = False
    ) -> None:
        for start in range(0, max(len(data), 1), MAX_IO):
            chunk = data[start : start + MAX_IO]
            frame = Frame(
                Op.WRITE,
                0,
                ldev=ldev,
                pvid=pvid,
                offset=offset + start,
                count=len(chunk),
                flags=Flag.FUA if fua else 0,
                payload=chunk,
            )
            await self.request(frame)

    async def flush(self, ldev: int, pvid: bytes) -> None:
        await self.request(Frame(Op.FLUSH, 0, ldev=ldev, pvid=pvid))

    async def discard(self, ldev: int, pvid: bytes, offset: int, count: int) -> None:
        await self.request(Frame(Op.DISCARD, 0, ldev=ldev, pvid=pvid, offset=offset, count=count))

    # -- management ----------------------------------------------------

    async def _manage(self, op: Op, ldev: int = 0, body: Any = None) -> Any:
        payload = b"" if body is None else encode_json(body)
        response = await self.request(Frame(op, 0, ldev=ldev, pvid=ZERO_PVID, payload=payload))
        try:
            return response.json()
        except FormatError as exc:
            raise ArrayError(f"array sent a malformed answer: {exc}") from None

    async def create(
        self, ldev: int, size: int, *, label: str = "", block_size: int = 512
    ) -> VolumeHeader:
        body = {"ldev": ldev, "size": size, "label": label, "block_size": block_size}
        return header_from_dict(await self._manage(Op.CREATE, body=body))

    async def list_volumes(self) -> tuple[list[VolumeHeader], dict[str, str]]:
        """Every volume's header, and the files the array could not read (name -> why)."""
        answer = await self._manage(Op.LIST)
        return [header_from_dict(h) for h in answer["volumes"]], dict(answer["broken"])

    async def show(self, ldev: int) -> VolumeHeader:
        """The header as it is on disk now (the array re-reads it; no cache)."""
        return header_from_dict(await self._manage(Op.SHOW, ldev))

    async def delete(self, ldev: int) -> None:
        await self._manage(Op.DELETE, ldev)

    async def hello(self, host: str) -> None:
        """Speak for *host* from now on (reservations), without proving it.

        An array with a hosts config accepts this on its unix socket only (the
        administrator naming a host); hosts authenticate with :meth:`authenticate`.
        """
        await self._manage(Op.HELLO, body={"host": host})

    async def authenticate(self, host: str, key: bytes) -> None:
        """Prove to the array that this connection is *host*, and make the array prove
        it knows *key* too (:mod:`blockemu.auth`). From then on the array masks every
        LDEV outside the host's group. AuthenticationFailed if either side fails.
        """
        handshake = ClientHandshake(host, key, self._name)
        challenge = await self._manage(Op.HELLO, body=handshake.hello())
        answer = await self._manage(Op.AUTH, body=handshake.auth(challenge))
        handshake.verify(answer)

    async def read_pvid(self, ldev: int) -> bytes:
        """The volume's current PVID, read by physical name straight from the disk."""
        return bytes.fromhex((await self._manage(Op.READ_PVID, ldev))["pvid"])

    async def reserve(self, ldev: int) -> None:
        await self._manage(Op.RESERVE, ldev)

    async def release(self, ldev: int) -> None:
        await self._manage(Op.RELEASE, ldev)

    async def reservation(self, ldev: int) -> tuple[str | None, float | None]:
        """(holder, seconds since the holder last renewed), or (None, None) if unreserved."""
        answer = await self._manage(Op.RESERVATION, ldev)
        age = answer["age"]
        return answer["holder"], None if age is None else float(age)

    async def preempt(self, ldev: int) -> str | None:
        """Take the reservation over; returns the host that held it."""
        previous = (await self._manage(Op.PREEMPT, ldev))["previous"]
        return None if previous is None else str(previous)

    async def pair_create(
        self,
        pvol: str,
        svol: str,
        *,
        mode: str = "sync",
        mu: int = 0,
        group: int | None = None,
        pace: int = 15,
        split: str | None = None,
    ) -> list[dict[str, Any]]:
        """Form a pair (``split``: None, "steady" or "quick"); returns its display row."""
        body = {
            "pvol": pvol,
            "svol": svol,
            "mode": mode,
            "mu": mu,
            "group": group,
            "pace": pace,
            "split": split,
        }
        return list((await self._manage(Op.PAIR_CREATE, body=body))["pairs"])

    async def pair_command(
        self, op: Op, selector: dict[str, Any], *, quick: bool = False
    ) -> list[dict[str, Any]]:
        """PAIR_SPLIT/RESYNC/RESTORE/SUSPEND/DELETE on the pairs *selector* names.

        *selector* has one of ``pvol``, ``svol`` (LDEV names) or ``group`` (an int).
        """
        return list((await self._manage(op, body={**selector, "quick": quick}))["pairs"])

    async def pair_display(self, selector: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list((await self._manage(Op.PAIR_DISPLAY, body=selector or {}))["pairs"])

    async def aclose(self) -> None:
        await self._stream.aclose()


@asynccontextmanager
async def open_client(
    addr: Address, *, host: str | None = None, key: bytes | None = None
) -> AsyncIterator[ArrayClient]:
    """Connect to the array at *addr*; closes when the block ends.

    With *host*, the connection speaks for that host; with its *key* too, host
    and array authenticate each other first (:meth:`ArrayClient.authenticate`).
    """
    if key is not None and host is None:
        raise ValueError("a key authenticates a host: pass host= with key=")
    stream = await open_stream(addr)
    client = ArrayClient(stream, str(addr))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._receive_loop)
            try:
                if key is not None and host is not None:
                    await client.authenticate(host, key)
                elif host is not None:
                    await client.hello(host)
                yield client
            finally:
                # No checkpoint after this cancel: it would replace the
                # caller's exception with Cancelled, which the nursery eats.
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The receive loop never raises, so a group holds the caller's own
        # exception: hand it back unwrapped, as if there were no nursery.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        await trio.aclose_forcefully(stream)
