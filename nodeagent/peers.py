"""Authenticated links between nodeagent processes (trio).

Each agent listens on its ``listen`` address and keeps one outgoing TCP
connection to every peer; a node *sends* only on its outgoing connections and
*receives* only on the ones it accepted, so each TCP connection carries one
direction. Frames are :mod:`formats.peer_frame` frames, signed with the
cluster key.

Incoming connections are accepted from anyone: authentication is per frame.
Every frame that arrives is screened, in this order, and dropped (logged as one
warning line naming the connection, the claimed sender and the reason, and
reported as ``on_event("frame_dropped", {...})``) when it is

* ``unauthenticated``: its HMAC does not verify with the cluster key;
* ``malformed``: bad layout, unknown type, or a payload that is not a JSON
  object;
* ``unknown_sender``: authenticated, but from a node that is not one of our
  peers (this node's own id included, so our frames cannot be reflected back);
* ``replayed``: from a session older than the newest seen from that sender, or
  from the same session with a ``seq`` not above the last one seen;
* ``stale_epoch``: ``frame.epoch < min_epoch()``, e.g. from an old active.

The link survives all of them: the reader keeps reading. Two cases close one
incoming connection (the sender's agent reconnects, other connections are
untouched): a header whose length cannot be trusted (the decoder is
``broken``), and :data:`MAX_REJECTS` rejected frames in a row (a garbage
flood). Stale-epoch frames do not count towards that limit: they are
authentic and fresh, just from a node that has not yet learnt it lost its role.

Outgoing: :meth:`PeerLinks.send` never blocks. It encodes the frame and queues
it on that peer's link; a sender task per link writes the queue out. The
queue holds :data:`QUEUE_SIZE` frames; when it is full, the oldest queued
HEARTBEAT is dropped to make room (a newer one supersedes it), and if there is
none the new message is refused (``send`` returns False). When a link goes
down, whatever is still queued on it is dropped: delivery is at most once, and
callers retry on their own schedule (the protocol is driven by acks and
heartbeats). A dead connection is found by a failing or stalled send
(``io_timeout``), by EOF from the peer, and by TCP keepalive and
``TCP_USER_TIMEOUT``; the link then reconnects with backoff
(:data:`BACKOFF_MIN`..:data:`BACKOFF_MAX`).

Known limits: the cluster key is shared, so any key holder can claim any
sender id; a frame carries no recipient, so a frame captured on the way to one
peer can be replayed to another peer that has not yet seen a later frame of
that sender; replay state lives in memory, so a restarted receiver relies on
the epoch check alone for frames of earlier epochs. A sender whose wall clock
went back past its previous boot time starts a session that looks older than
the last one: its peers drop its frames as replayed until they restart (the
drop's detail says so). Incoming connections are not capped, and a silent one
is kept until TCP keepalive finds it dead (a cap without authentication would
let garbage connections crowd out the peers).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from blockemu.address import Address, open_listeners
from blockemu.netguard import acheck_tcp_target
from formats.peer_frame import (
    FrameDecoder,
    MsgType,
    PeerFrame,
    Rejected,
    encode_frame,
    encode_sender,
)

log = logging.getLogger(__name__)

UNKNOWN_SENDER = "unknown_sender"
REPLAYED = "replayed"
STALE_EPOCH = "stale_epoch"

#: Frames queued per outgoing link.
QUEUE_SIZE = 256
#: Rejected frames in a row after which an incoming connection is closed.
MAX_REJECTS = 16
#: Accepted frames buffered for the reader of :attr:`PeerLinks.received`; when it
#: is full, incoming connections stop being read (TCP pushes back on the senders).
RECEIVE_BUFFER = 1024
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
#: TCP keepalive on every peer connection: first probe after this many idle
#: seconds, then one a second, dead after three unanswered.
KEEPALIVE_IDLE = 2
KEEPALIVE_INTERVAL = 1
KEEPALIVE_COUNT = 3
_CHUNK = 65536
_WRITE_BATCH = 256 << 10


class _Link:
    """The outgoing side towards one peer."""

    def __init__(self, peer: str, address: Address) -> None:
        self.peer = peer
        self.address = address
        self.queue: deque[tuple[MsgType, bytes]] = deque()
        self.connected = False
        self.wakeup = trio.Event()  # set when something is queued
        self.redial = trio.Event()  # set when the address changed
        self.scope: trio.CancelScope | None = None  # of the current connection


class PeerLinks:
    """The links of node *node_id* to its *peers* (id -> address); see the module docstring.

    Create it, start :meth:`run` (once) in a nursery, then :meth:`send` /
    :meth:`broadcast`, and read accepted frames from :attr:`received`.
    ``on_event(kind, fields)`` is called with ``frame_dropped`` (fields
    ``peer``, ``sender``, ``reason``, ``detail``, and for authenticated frames
    ``type``, ``session``, ``epoch``, ``seq``), ``peer_session`` (a sender
    seen with a new session, i.e. started or restarted: ``sender``,
    ``session``, ``previous``), ``link_up`` and ``link_down`` (``peer``,
    ``address``, and for ``link_down`` ``why`` and ``dropped``: the frames
    still queued, lost), and ``connection_closed`` (an incoming connection we
    closed: ``peer``, ``why``).
    """

    def __init__(
        self,
        node_id: str,
        listen: Address,
        peers: Mapping[str, Address],
        key: bytes,
        *,
        min_epoch: Callable[[], int],
        on_event: Callable[[str, dict[str, Any]], object] = lambda kind, fields: None,
        connect_timeout: float = 1.0,
        io_timeout: float = 5.0,
        queue_size: int = QUEUE_SIZE,
        max_rejects: int = MAX_REJECTS,
    ) -> None:
        encode_sender(node_id)  # FormatError (a ValueError) if the id cannot be a sender
        for peer in peers:
            encode_sender(peer)
        if node_id in peers:
            raise ValueError(f"node {node_id!r} lists itself as a peer")
        if not key:
            raise ValueError("the cluster key is empty")
        self.node_id = node_id
        self.listen = listen
        self.session = time.time_ns()
        self._key = bytes(key)
        self._seq = 0
        self._links = {peer: _Link(peer, address) for peer, address in peers.items()}
        self._min_epoch = min_epoch
        self._on_event = on_event
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._queue_size = queue_size
        self._max_rejects = max_rejects
        self._last: dict[str, tuple[int, int]] = {}  # sender -> (session, seq) last seen
        self._deliver, self.received = trio.open_memory_channel[PeerFrame](RECEIVE_BUFFER)

    # -- the caller's side ---------------------------------------------------------------

    def connected(self) -> set[str]:
        """Peers whose outgoing TCP connection is up (a :meth:`send` to them is queued).

        Only the transport: whether the peer accepts our frames (same cluster
        key, current epoch) shows in its heartbeats, not here.
        """
        return {peer for peer, link in self._links.items() if link.connected}

    def address(self, peer: str) -> Address:
        return self._link(peer).address

    def set_address(self, peer: str, address: Address) -> None:
        """Dial *peer* at *address* from now on (drops a connection to the old address)."""
        link = self._link(peer)
        if address != link.address:
            link.address = address
            link.redial.set()
            if link.scope is not None:
                link.scope.cancel()

    def send(self, peer: str, type: MsgType, body: dict[str, Any], *, epoch: int) -> bool:
        """Queue a message to *peer*; False (message dropped) if not connected or queue full.

        Never blocks. Raises FormatError if *body* cannot be encoded, KeyError
        for a peer that is not configured.
        """
        link = self._link(peer)
        if not link.connected:
            return False
        return self._enqueue(link, type, self._encode(type, body, epoch))

    def broadcast(self, type: MsgType, body: dict[str, Any], *, epoch: int) -> list[str]:
        """Queue one message to every connected peer; the peers it was queued for."""
        links = [link for link in self._links.values() if link.connected]
        if not links:
            return []
        data = self._encode(type, body, epoch)
        return [link.peer for link in links if self._enqueue(link, type, data)]

    def _link(self, peer: str) -> _Link:
        try:
            return self._links[peer]
        except KeyError:
            raise KeyError(f"{peer!r} is not a configured peer of {self.node_id!r}") from None

    def _encode(self, type: MsgType, body: dict[str, Any], epoch: int) -> bytes:
        self._seq += 1
        frame = PeerFrame(MsgType(type), self.node_id, self.session, epoch, self._seq, body)
        return encode_frame(frame, self._key)

    def _enqueue(self, link: _Link, type: MsgType, data: bytes) -> bool:
        if len(link.queue) >= self._queue_size:
            for i, (kind, _) in enumerate(link.queue):
                if kind == MsgType.HEARTBEAT:
                    del link.queue[i]
                    log.debug("link to %s: queue full, dropped its oldest heartbeat", link.peer)
                    break
            else:
                log.debug("link to %s: queue full, %s not sent", link.peer, MsgType(type).name)
                return False
        link.queue.append((MsgType(type), data))
        link.wakeup.set()
        return True

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, keep the outgoing links up, read incoming frames; until cancelled.

        Reports the bound listen address (``tcp:HOST:PORT``, the real port when
        ``listen`` asked for port 0) once listening. Closes :attr:`received`
        on the way out.
        """
        listeners = await open_listeners(self.listen)
        bound = _bound_name(self.listen, listeners[0])
        log.info("node %s: listening for peers on %s", self.node_id, bound)
        try:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(trio.serve_listeners, self._serve_incoming, [listener])
                for link in self._links.values():
                    nursery.start_soon(self._run_link, link)
                task_status.started(bound)
        finally:
            self._deliver.close()
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    # -- outgoing ------------------------------------------------------------------------

    async def _run_link(self, link: _Link) -> None:
        backoff = BACKOFF_MIN
        failures = 0
        while True:
            address = link.address
            link.redial = trio.Event()
            try:
                with trio.fail_after(self._connect_timeout):
                    stream = await _connect(address)
            except (OSError, trio.TooSlowError) as exc:
                failures += 1
                why = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
                level = logging.INFO if failures == 1 else logging.DEBUG
                log.log(level, "cannot reach peer %s at %s: %s; retrying", link.peer, address, why)
                with trio.move_on_after(backoff):
                    await link.redial.wait()
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            failures, backoff = 0, BACKOFF_MIN
            await self._carry(link, address, stream)
            with trio.move_on_after(BACKOFF_MIN):
                await link.redial.wait()

    async def _carry(self, link: _Link, address: Address, stream: trio.SocketStream) -> None:
        """Write *link*'s queue to *stream* until the connection dies."""
        _tune(stream, self._io_timeout)
        why = "stopped"
        with trio.CancelScope() as scope:
            try:
                link.scope = scope
                link.connected = True
                log.info("link to peer %s at %s up", link.peer, address)
                self._on_event("link_up", {"peer": link.peer, "address": str(address)})
                async with trio.open_nursery() as nursery:

                    async def until_done(loop: Callable[[], Awaitable[str]]) -> None:
                        nonlocal why
                        why = await loop()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(until_done, lambda: self._write_loop(link, stream))
                    nursery.start_soon(until_done, lambda: _watch_loop(stream))
            finally:
                link.scope = None
                link.connected = False
                dropped = len(link.queue)
                link.queue.clear()
                await trio.aclose_forcefully(stream)
        if scope.cancelled_caught:
            why = "address changed"
        log.info("link to peer %s at %s down: %s", link.peer, address, why)
        fields = {"peer": link.peer, "address": str(address), "why": why, "dropped": dropped}
        self._on_event("link_down", fields)

    async def _write_loop(self, link: _Link, stream: trio.SocketStream) -> str:
        while True:
            while not link.queue:
                link.wakeup = trio.Event()
                await link.wakeup.wait()
            batch: list[bytes] = []
            size = 0
            while link.queue and size < _WRITE_BATCH:
                data = link.queue.popleft()[1]
                batch.append(data)
                size += len(data)
            try:
                with trio.fail_after(self._io_timeout):
                    await stream.send_all(b"".join(batch))
            except trio.TooSlowError:
                return f"send stalled for {self._io_timeout} s (peer not reading)"
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return f"send failed: {_cause(exc)}"

    # -- incoming ------------------------------------------------------------------------

    async def _serve_incoming(self, stream: trio.SocketStream) -> None:
        where = _remote_name(stream)
        decoder = FrameDecoder(self._key)
        rejects = 0
        why = ""
        log.debug("peer connection from %s", where)
        try:
            _tune(stream, self._io_timeout)
            while not why:
                try:
                    data = await stream.receive_some(_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    log.debug("peer connection %s lost: %s", where, _cause(exc))
                    return
                if not data:
                    if not decoder.idle:
                        log.debug("peer connection %s closed in the middle of a frame", where)
                    return
                decoder.feed(data)
                for item in decoder.frames():
                    result = self._screen(item, where)
                    if isinstance(result, PeerFrame):
                        rejects = 0
                        with contextlib.suppress(trio.BrokenResourceError):
                            await self._deliver.send(result)
                    elif result != STALE_EPOCH:
                        rejects += 1
                        if rejects >= self._max_rejects:
                            why = f"{rejects} rejected frames in a row"
                            break
                if decoder.broken and not why:
                    why = "stream cannot be decoded"
            log.warning("peer connection %s closed: %s", where, why)
            self._on_event("connection_closed", {"peer": where, "why": why})
        finally:
            await trio.aclose_forcefully(stream)

    def _screen(self, item: PeerFrame | Rejected, where: str) -> PeerFrame | str:
        """The frame if it is accepted, else the reason it was dropped (logged and reported)."""
        if isinstance(item, Rejected):
            self._dropped(where, item.reason, item.sender, item.detail, None)
            return item.reason
        frame = item
        if frame.sender not in self._links:
            detail = (
                "frame claims to come from this node itself"
                if frame.sender == self.node_id
                else "not a peer in this node's config"
            )
            return self._dropped(where, UNKNOWN_SENDER, frame.sender, detail, frame)
        last = self._last.get(frame.sender)
        if last is not None:
            session, seq = last
            if frame.session < session:
                detail = (
                    f"session {frame.session} is older than session {session} already seen "
                    "(a replay, or the sender's clock went back)"
                )
                return self._dropped(where, REPLAYED, frame.sender, detail, frame)
            if frame.session == session and frame.seq <= seq:
                detail = f"seq {frame.seq} is not above {seq}, the last seen in this session"
                return self._dropped(where, REPLAYED, frame.sender, detail, frame)
        self._last[frame.sender] = (frame.session, frame.seq)
        if last is None or frame.session != last[0]:
            previous = None if last is None else last[0]
            log.info("peer %s: session %s (previous %s)", frame.sender, frame.session, previous)
            self._on_event(
                "peer_session",
                {"sender": frame.sender, "session": frame.session, "previous": previous},
            )
        floor = self._min_epoch()
        if frame.epoch < floor:
            detail = f"epoch {frame.epoch} is below {floor}"
            return self._dropped(where, STALE_EPOCH, frame.sender, detail, frame)
        return frame

    def _dropped(
        self, where: str, reason: str, sender: str | None, detail: str, frame: PeerFrame | None
    ) -> str:
        log.warning(
            "peer connection %s: dropped frame from %s: %s (%s)",
            where,
            "unknown" if sender is None else repr(sender),
            reason,
            detail,
        )
        fields: dict[str, Any] = {
            "peer": where,
            "sender": sender,
            "reason": reason,
            "detail": detail,
        }
        if frame is not None:
            fields.update(
                type=frame.type.name,
                session=frame.session,
                epoch=frame.epoch,
                frame_seq=frame.seq,
            )
        self._on_event("frame_dropped", fields)
        return reason


async def _watch_loop(stream: trio.SocketStream) -> str:
    """Read an outgoing connection (peers never write on it) to notice EOF and resets early."""
    while True:
        try:
            data = await stream.receive_some(4096)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return f"connection lost: {_cause(exc)}"
        if not data:
            return "closed by the peer"


async def _connect(address: Address) -> trio.SocketStream:
    if address.kind == "unix":
        return await trio.open_unix_socket(address.path)
    # A lab address from outside the lab's namespaces would leave the machine: refused
    # (a ConnectionError, retried with backoff like any failed connect).
    await acheck_tcp_target(address.host, address.port)
    return await trio.open_tcp_stream(address.host, address.port)


def _tune(stream: trio.SocketStream, io_timeout: float) -> None:
    """Keepalive and a user timeout, so a dead peer is noticed on an idle link too."""
    if stream.socket.family not in (socket.AF_INET, socket.AF_INET6):
        return
    options = [
        (socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
        (socket.IPPROTO_TCP, "TCP_KEEPIDLE", KEEPALIVE_IDLE),
        (socket.IPPROTO_TCP, "TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        (socket.IPPROTO_TCP, "TCP_KEEPCNT", KEEPALIVE_COUNT),
        (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", max(1, int(io_timeout * 1000))),
    ]
    for level, name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                stream.setsockopt(level, option, value)


def _remote_name(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "tcp:?"
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"
    return f"unix:{name or '?'}"


def _bound_name(listen: Address, listener: trio.SocketListener) -> str:
    if listen.kind == "unix":
        return str(listen)
    host, port = listener.socket.getsockname()[:2]
    return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"


def _cause(exc: BaseException) -> str:
    return str(exc.__cause__ or exc) or type(exc).__name__
