"""The array server: the wire protocol around an :class:`~blockemu.array.Array`.

One trio task per connection reads frames in order and answers each one.
Reads, writes and discards run inline (synchronous pread/pwrite: the fastest
option measured here); flushes and FUA writes wait for fdatasync in a worker
thread in their own task, so one slow flush does not stall the reads queued
behind it. Responses carry the request's tag and may overtake each other.

A write is acknowledged only after ``pwrite`` returned, i.e. the data is in
the kernel's page cache: killing the server (even with SIGKILL) cannot lose
it. Surviving power loss is what FLUSH and FUA are for.

With a hosts config (``serve --hosts``), TCP connections must authenticate
(HELLO + AUTH, :mod:`blockemu.auth`) before anything else, and an
authenticated host reaches only the LDEVs of its group and no management
op (:meth:`ArrayServer.authorize`). Unix-socket connections that do not
authenticate are the administrator's. Without a config nothing is checked.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from formats.errors import FormatError
from formats.hosts_config import HostEntry, HostsConfig
from formats.units import format_ldev, parse_ldev
from formats.volume_header import MirrorMode, header_to_dict
from formats.wire import (
    MAX_IO,
    SEPARATE_SEND,
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

from . import auth
from .address import Address, open_listeners
from .array import Array
from .errors import (
    AdminOnly,
    ArrayError,
    AuthenticationFailed,
    AuthenticationRequired,
    BadRequest,
    TooLarge,
    Unsupported,
    VolumeIOError,
    VolumeMasked,
)
from .pairstate import Command
from .replication import MAX_PACE, Pair

_PAIR_COMMANDS = {
    Op.PAIR_SPLIT: Command.SPLIT,
    Op.PAIR_RESYNC: Command.RESYNC,
    Op.PAIR_RESTORE: Command.RESTORE,
    Op.PAIR_SUSPEND: Command.SUSPEND,
    Op.PAIR_DELETE: Command.DELETE,
}

#: What an authenticated host may do on LDEVs of its group (any other LDEV: MASKED).
_HOST_LDEV_OPS = frozenset(
    {Op.READ, Op.WRITE, Op.FLUSH, Op.DISCARD, Op.SHOW, Op.READ_PVID}
    | {Op.RESERVE, Op.RELEASE, Op.PREEMPT, Op.RESERVATION}
)
#: Pair commands a host with ``replication = true`` may run on pairs inside its group.
_REPLICATION_OPS = frozenset(
    {Op.PAIR_SPLIT, Op.PAIR_RESYNC, Op.PAIR_RESTORE, Op.PAIR_SUSPEND, Op.PAIR_DISPLAY}
)
#: What else it may do; every other operation is the administrator's (ADMIN_ONLY).
_HOST_OPS = frozenset({Op.HELLO, Op.AUTH, Op.LIST})

log = logging.getLogger(__name__)

RECEIVE_SIZE = 1 << 20


class Connection:
    """What the server remembers about one client: the host it speaks for, and its rights.

    ``restricted`` connections are checked op by op (:meth:`ArrayServer.authorize`):
    TCP connections to an array with a hosts config from the start, any connection
    once it authenticated. The others (unix sockets, or an array without a hosts
    config) are the administrator's and may do everything.
    """

    def __init__(self, peer: str, *, restricted: bool = False) -> None:
        self.peer = peer
        self.host = ""
        self.restricted = restricted
        self.entry: HostEntry | None = None  # the authenticated host
        self.challenge: auth.Challenge | None = None  # between HELLO and AUTH
        self.hang_up = False  # close the connection after this answer
        self.masked_logged: set[int] = set()
        self.unauthenticated_logged = False


class ArrayServer:
    """Answers frames against one :class:`Array`."""

    def __init__(self, array: Array, hosts: HostsConfig | None = None) -> None:
        self.array = array
        self.hosts = hosts
        self._sync_ops: dict[int, Callable[[Connection, Frame], bytes]] = {
            Op.READ: self._read,
            Op.WRITE: self._write,
            Op.DISCARD: self._discard,
            Op.HELLO: self._hello,
            Op.AUTH: self._auth,
            Op.CREATE: self._create,
            Op.LIST: self._list,
            Op.SHOW: self._show,
            Op.DELETE: self._delete,
            Op.READ_PVID: self._read_pvid,
            Op.RESERVE: self._reserve,
            Op.RELEASE: self._release,
            Op.PREEMPT: self._preempt,
            Op.RESERVATION: self._reservation,
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

    def _select(
        self, conn: Connection, args: dict[str, Any], command: Command | None = None
    ) -> list[Pair]:
        """The pairs a request names; an authenticated host only gets its own."""
        try:
            pvol = None if args.get("pvol") is None else parse_ldev(str(args["pvol"]))
            svol = None if args.get("svol") is None else parse_ldev(str(args["svol"]))
            group = None if args.get("group") is None else int(args["group"])
        except (FormatError, TypeError, ValueError) as exc:
            raise BadRequest(f"bad pair selector: {exc}") from None
        entry = conn.entry
        if entry is None:
            return self.array.select(pvol=pvol, svol=svol, group=group, command=command)
        own = [p for p in self.array.pairs.values() if {p.pvol.ldev, p.svol.ldev} <= entry.ldevs]
        if pvol is None and svol is None and group is None:
            return sorted(own, key=lambda p: p.pvol.ldev)
        for ldev in (pvol, svol):
            if ldev is not None and ldev not in entry.ldevs:
                raise VolumeMasked(
                    f"LDEV {format_ldev(ldev)} is masked from host {entry.name!r}: it is not in "
                    "the host's group"
                )
        pairs = self.array.select(pvol=pvol, svol=svol, group=group, command=command)
        if any(p not in own for p in pairs):
            raise VolumeMasked(
                f"a pair of that selection has a volume outside host {entry.name!r}'s group"
            )
        return pairs

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
        hello = auth.parse_hello(self._args(frame))
        if conn.entry is not None:
            raise self._already(conn.entry)
        if hello.client_nonce is None or self.hosts is None:
            # Naming a host, as before; with a client nonce the client sees no challenge
            # in the (empty) answer and refuses an array that cannot authenticate.
            if conn.restricted:
                raise self._auth_required()
            conn.host = hello.host
            log.info("%s speaks for host %r", conn.peer, hello.host)
            return b""
        conn.challenge = auth.Challenge.new(hello)
        return encode_json(conn.challenge.answer())

    def _auth(self, conn: Connection, frame: Frame) -> bytes:
        if self.hosts is None:
            raise Unsupported(
                "this array was started without --hosts: it authenticates no host; "
                "connect without a key"
            )
        if conn.entry is not None:
            raise self._already(conn.entry)
        challenge, conn.challenge = conn.challenge, None  # a server nonce is used once
        claimed = challenge.host if challenge else ""
        entry = self.hosts.host(claimed) if challenge else None
        try:
            if challenge is None:
                raise auth.Refused("AUTH without a HELLO with a client nonce before it")
            answer = challenge.verify(entry.key if entry else None, self._args(frame))
        except (auth.Refused, BadRequest) as exc:
            conn.hang_up = True
            log.warning(
                "%s: authentication as host %r refused: %s; closing the connection",
                conn.peer,
                claimed,
                exc,
            )
            raise AuthenticationFailed(auth.refusal_message(claimed)) from None
        assert entry is not None
        conn.entry, conn.host, conn.restricted = entry, entry.name, True
        log.info(
            "%s authenticated as host %r (LDEVs %s)", conn.peer, entry.name, entry.describe_ldevs()
        )
        return encode_json(answer)

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
        volumes = self.array.store.list()
        broken = self.array.store.broken
        reservations = self.array.reservations.as_dict()
        if conn.entry is not None:  # a host sees its group only
            mine = conn.entry.ldevs

            def visible(name: str) -> bool:
                try:
                    return parse_ldev(name.removesuffix(".vol").replace("-", ":")) in mine
                except FormatError:
                    return False

            volumes = [v for v in volumes if v.header.ldev in mine]
            broken = {k: v for k, v in broken.items() if visible(k)}
            reservations = {k: v for k, v in reservations.items() if parse_ldev(k) in mine}
        return encode_json(
            {
                "volumes": [header_to_dict(v.header) for v in volumes],
                "broken": broken,
                "reservations": reservations,
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
        self.array.reservations.reserve(frame.ldev, conn.host, save=False)
        return b""

    def _release(self, conn: Connection, frame: Frame) -> bytes:
        self.array.store.get(frame.ldev)
        self.array.reservations.release(frame.ldev, conn.host, save=False)
        return b""

    def _reservation(self, conn: Connection, frame: Frame) -> bytes:
        self.array.store.get(frame.ldev)
        holder, age = self.array.reservations.status(frame.ldev)
        return encode_json({"holder": holder, "age": age})

    def _preempt(self, conn: Connection, frame: Frame) -> bytes:
        self.array.store.get(frame.ldev)
        previous = self.array.reservations.preempt(frame.ldev, conn.host, save=False)
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
        pairs = self._select(conn, args, command)
        self.array.pair_command(command, pairs, quick=bool(args.get("quick", False)))
        return self._pairs_answer([p for p in pairs if not p.closed])

    def _pair_display(self, conn: Connection, frame: Frame) -> bytes:
        return self._pairs_answer(self._select(conn, self._args(frame)))

    # -- access control ----------------------------------------------------

    @staticmethod
    def _already(entry: HostEntry) -> BadRequest:
        return BadRequest(
            f"this connection is already authenticated as host {entry.name!r}; "
            "open another connection to act as another host"
        )

    @staticmethod
    def _auth_required() -> AuthenticationRequired:
        return AuthenticationRequired(
            "this array authenticates hosts on TCP: connect with --host ID --key-file FILE "
            "(the host's key from the array's hosts config)"
        )

    def authorize(self, conn: Connection, frame: Frame) -> None:
        """Refuse what a restricted connection may not do (raises)."""
        entry = conn.entry
        if entry is None:
            if frame.op not in (Op.HELLO, Op.AUTH):
                if not conn.unauthenticated_logged:
                    conn.unauthenticated_logged = True
                    log.warning("%s: refused %s: not authenticated", conn.peer, _op_name(frame))
                raise self._auth_required()
        elif frame.op in _HOST_LDEV_OPS:
            if frame.ldev not in entry.ldevs:
                ldev = format_ldev(frame.ldev)
                if frame.ldev not in conn.masked_logged:
                    conn.masked_logged.add(frame.ldev)
                    log.warning(
                        "%s: host %r refused %s on LDEV %s: not in its host group",
                        conn.peer,
                        entry.name,
                        _op_name(frame),
                        ldev,
                    )
                raise VolumeMasked(
                    f"LDEV {ldev} is masked from host {entry.name!r}: it is not in the host's "
                    "group; the array administrator can add it to the host's ldevs in the "
                    "hosts config"
                )
        elif frame.op in _REPLICATION_OPS and entry.replication:
            pass  # _select keeps it to the host's own pairs
        elif frame.op not in _HOST_OPS and frame.op in self._sync_ops:
            raise AdminOnly(
                f"{_op_name(frame)} is refused to host {entry.name!r}: managing volumes and "
                "pairs is for the array administrator (on the array's unix socket)"
            )

    # -- dispatch ------------------------------------------------------

    def handle(self, conn: Connection, frame: Frame) -> tuple[int, bytes]:
        """Answer one synchronous request: (status, payload)."""
        op = self._sync_ops.get(frame.op)
        try:
            if conn.restricted:
                self.authorize(conn, frame)
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
            if conn.restricted:
                self.authorize(conn, frame)
            flush = self.array.flusher(conn.host, frame.ldev, frame.pvid)
            await trio.to_thread.run_sync(flush)
        except ArrayError as exc:
            return exc.status, str(exc).encode()
        except OSError as exc:
            return Status.IO_ERROR, f"LDEV {format_ldev(frame.ldev)}: flush failed: {exc}".encode()
        return Status.OK, b""

    async def serve_connection(
        self, stream: trio.abc.Stream, peer: str, *, restricted: bool = False
    ) -> None:
        """Answer frames from one client until it hangs up or sends garbage.

        *restricted*: the client must authenticate before anything else (TCP
        to an array with a hosts config).
        """
        conn = Connection(peer, restricted=restricted and self.hosts is not None)
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
                if len(payload) >= SEPARATE_SEND:
                    await stream.send_all(header)
                    await stream.send_all(payload)
                else:
                    await stream.send_all(header + payload)

        async def flush_and_respond(frame: Frame) -> None:
            status, payload = await self.flush(conn, frame)
            await respond(frame, status, payload)

        async def persist_and_respond(frame: Frame, payload: bytes) -> None:
            """A reservation change is acknowledged once it is on disk (group commit)."""
            try:
                await self.array.reservations.durable()
            except OSError as exc:
                log.error("cannot persist the reservation table: %s", exc)
                err = VolumeIOError(f"reservation table not saved: {exc}")
                await respond(frame, err.status, str(err).encode())
                return
            await respond(frame, Status.OK, payload)

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
                    elif status == Status.OK and frame.op in _RESERVATION_CHANGES:
                        nursery.start_soon(persist_and_respond, frame, payload)
                    else:
                        await respond(frame, status, payload)
                    if conn.hang_up:
                        return  # refused authentication: the answer went out, nothing more

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


#: Requests that change the reservation table: answered once it is durable.
_RESERVATION_CHANGES = frozenset({Op.RESERVE, Op.RELEASE, Op.PREEMPT})


def _op_name(frame: Frame) -> str:
    try:
        return Op(frame.op).name
    except ValueError:
        return f"operation {frame.op}"


async def serve(
    array: Array,
    addresses: Sequence[Address],
    *,
    hosts: HostsConfig | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *array* on *addresses* until cancelled; reports the bound addresses.

    With *hosts*, TCP clients must authenticate as
    one of its hosts and see only that host's LDEVs; unix-socket clients are the
    administrator unless they authenticate.
    """
    server = ArrayServer(array, hosts)
    if server.hosts is not None:
        log.info(
            "hosts config %s: %s; TCP clients must authenticate",
            server.hosts.path,
            ", ".join(f"{h.name} (LDEVs {h.describe_ldevs()})" for h in server.hosts.hosts),
        )
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
        tcp = stream.socket.family != socket.AF_UNIX
        peer = f"unix-client-{counter}"
        if tcp:
            try:
                ip, port = stream.socket.getpeername()[:2]
                peer = f"tcp:[{ip}]:{port}" if ":" in ip else f"tcp:{ip}:{port}"
            except OSError:
                peer = f"client-{counter}"
        await server.serve_connection(stream, peer, restricted=tcp)

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
    array: Array,
    addresses: Sequence[Address],
    announce: Callable[[list[str]], None],
    extra: Callable[[trio.Nursery], Awaitable[None]] | None = None,
    hosts: HostsConfig | None = None,
) -> None:
    """What `blockemu serve` runs: serve until SIGTERM or SIGINT, then stop cleanly.

    *extra*, if given, starts more services in the same nursery (the FUSE
    mount) once the server is up and before the announcement; they are
    cancelled with it. *hosts* is the hosts config (see :func:`serve`).
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(functools.partial(serve, array, addresses, hosts=hosts))
            if extra is not None:
                await extra(nursery)
            announce(bound)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
