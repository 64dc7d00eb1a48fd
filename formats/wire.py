"""Frames of the array protocol, and a sans-IO reader for them.

Every message, request or response, is one fixed header followed by
``length`` payload bytes::

    magic | version | op | status | flags | tag | ldev | count | length | offset | pvid
      4       1       1     1        1      8     2      4       4        8       16  = 50 bytes

* ``tag`` is chosen by the client and echoed in the response, so many requests
  can be in flight on one connection (pipelining) and answered in any order.
* ``ldev`` and ``pvid`` name the volume and the identity the client believes
  it has; the array refuses I/O whose PVID is no longer current
  (:attr:`Status.STALE_PVID`), which is how a host's stale buffer shows.
* ``count`` is the I/O size (bytes to read, write or discard); ``length`` is
  the payload that follows this header (write data, read data, a JSON body
  for management ops, or an error message).

The layout is declared once, with construct (:data:`FrameHeader`); the hot
path packs and unpacks it with a :class:`struct.Struct` *derived* from that
declaration (:data:`HEADER`), because construct costs ~28 us per parse and
struct ~0.3 us.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

import construct as c

from .errors import FormatError

MAGIC = b"BEMU"
VERSION = 1
#: Largest payload a peer may announce. Bigger I/O is split by the client.
MAX_PAYLOAD = 16 << 20
#: Largest single read or write the array accepts (the FUSE max is 1 MiB).
MAX_IO = 8 << 20
ZERO_PVID = bytes(16)


class Op(enum.IntEnum):
    READ = 1
    WRITE = 2
    FLUSH = 3
    DISCARD = 4
    HELLO = 16  # names the host this connection acts for (JSON {"host": id[, "client_nonce"]})
    AUTH = 17  # proves the host knows its key (JSON {"mac": hex}); see blockemu.auth
    # management
    CREATE = 32
    LIST = 33
    SHOW = 34  # reads the header straight from the volume file
    DELETE = 35
    READ_PVID = 36  # the PVID alone, by physical name; allowed under a reservation
    # control right (reservations)
    RESERVE = 40
    RELEASE = 41
    PREEMPT = 42
    RESERVATION = 43  # who holds the control right, and how long since it was renewed
    # pairs (JSON bodies)
    PAIR_CREATE = 48
    PAIR_SPLIT = 49
    PAIR_RESYNC = 50
    PAIR_RESTORE = 51
    PAIR_SUSPEND = 52
    PAIR_DELETE = 53
    PAIR_DISPLAY = 54


class Status(enum.IntEnum):
    """Response status; requests carry OK. Every non-OK payload is a message."""

    OK = 0
    STALE_PVID = 1
    NO_SUCH_LDEV = 2
    OUT_OF_RANGE = 3
    BAD_REQUEST = 4
    TOO_LARGE = 5
    EXISTS = 6
    CORRUPT_VOLUME = 7
    IO_ERROR = 8
    UNSUPPORTED = 9
    INTERNAL = 10
    HIDDEN = 11  # the LDEV is a paired S-VOL: hosts cannot use it until a split
    RESERVED = 12  # reservation conflict: another host holds the control right
    REJECTED = 13  # the pair's state does not allow the command
    AUTH_FAILED = 14  # unknown host or wrong key; the array closes the connection after this
    AUTH_REQUIRED = 15  # this connection must authenticate (HELLO + AUTH) first
    MASKED = 16  # the LDEV is not in the host group of the authenticated host
    ADMIN_ONLY = 17  # management is for the array administrator, not for an authenticated host


class Flag(enum.IntFlag):
    NONE = 0
    FUA = 1  # write: make it durable (fdatasync) before acknowledging


#: The header, declared with construct. Edit here; :data:`HEADER` follows.
FrameHeader = c.Struct(
    "magic" / c.Const(MAGIC),
    "version" / c.Int8ub,
    "op" / c.Int8ub,
    "status" / c.Int8ub,
    "flags" / c.Int8ub,
    "tag" / c.Int64ub,
    "ldev" / c.Int16ub,
    "count" / c.Int32ub,
    "length" / c.Int32ub,
    "offset" / c.Int64ub,
    "pvid" / c.Bytes(16),
)


def struct_format(declaration: c.Struct) -> str:
    """The :mod:`struct` format of a construct Struct of fixed-size fields.

    Supports what headers are made of: integer FormatFields, Bytes(n) and
    Const(bytes). Anything else raises TypeError, so a field added to a
    header that the fast path cannot handle is caught at import time.
    """
    parts = [">"]
    for sub in declaration.subcons:
        field = sub.subcon if isinstance(sub, c.Renamed) else sub
        if isinstance(field, c.Const):
            field = field.subcon
        if isinstance(field, c.FormatField):
            if field.fmtstr[0] != ">":
                raise TypeError(f"field {sub.name}: only big-endian fields are supported")
            parts.append(field.fmtstr[1:])
        elif isinstance(field, c.Bytes) and isinstance(field.length, int):
            parts.append(f"{field.length}s")
        else:
            raise TypeError(f"field {sub.name}: {field!r} has no fixed struct equivalent")
    return "".join(parts)


HEADER = struct.Struct(struct_format(FrameHeader))
HEADER_SIZE = HEADER.size
assert FrameHeader.sizeof() == HEADER_SIZE


@dataclass(slots=True)
class Frame:
    """One decoded message. ``op``/``status`` are plain ints on the hot path."""

    op: int
    tag: int
    ldev: int = 0
    pvid: bytes = ZERO_PVID
    offset: int = 0
    count: int = 0
    status: int = 0
    flags: int = 0
    payload: bytes = b""

    def json(self) -> Any:
        """The payload as JSON (management ops); FormatError if it is not."""
        return decode_json(self.payload)

    def message(self) -> str:
        """The payload as text (error responses)."""
        return self.payload.decode("utf8", "replace")


def encode_header(
    op: int,
    tag: int,
    *,
    ldev: int = 0,
    pvid: bytes = ZERO_PVID,
    offset: int = 0,
    count: int = 0,
    status: int = 0,
    flags: int = 0,
    length: int = 0,
) -> bytes:
    """Pack a header; the caller sends ``length`` payload bytes after it."""
    try:
        return HEADER.pack(
            MAGIC, VERSION, op, status, flags, tag, ldev, count, length, offset, pvid
        )
    except struct.error as exc:
        raise FormatError(f"cannot encode frame header: {exc}") from None


#: Payloads at least this big are sent after their header, not concatenated to it:
#: two send calls cost less than copying a megabyte.
SEPARATE_SEND = 64 << 10


def encode_frame(frame: Frame) -> bytes:
    """Header and payload of *frame* as one bytes object."""
    return (
        encode_header(
            frame.op,
            frame.tag,
            ldev=frame.ldev,
            pvid=frame.pvid,
            offset=frame.offset,
            count=frame.count,
            status=frame.status,
            flags=frame.flags,
            length=len(frame.payload),
        )
        + frame.payload
    )


def decode_header(data: bytes | bytearray | memoryview) -> tuple[Frame, int]:
    """Unpack a header; returns the frame (without payload) and the payload length."""
    if len(data) < HEADER_SIZE:
        raise FormatError(f"frame header truncated: {len(data)} of {HEADER_SIZE} bytes")
    magic, version, op, status, flags, tag, ldev, count, length, offset, pvid = HEADER.unpack_from(
        data
    )
    if magic != MAGIC:
        raise FormatError(
            f"bad frame magic {bytes(magic)!r}: the peer does not speak the blockemu array protocol"
        )
    if version != VERSION:
        raise FormatError(
            f"frame version {version} is not supported (this side speaks {VERSION}); "
            "run the same blockemu release on both sides"
        )
    return Frame(op, tag, ldev, pvid, offset, count, status, flags), length


class OversizedFrame(FormatError):
    """A frame announced more payload than the reader accepts."""


class FrameReader:
    """Sans-IO frame decoder: feed it bytes as they arrive, take frames out.

    Raises :class:`FormatError` for a malformed header or a payload longer
    than ``max_payload``; after that the stream cannot be trusted and the
    connection should be closed.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max_payload = max_payload
        self._pending: tuple[Frame, int] | None = None

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    @property
    def idle(self) -> bool:
        """True when no partial frame is buffered (a clean place for EOF)."""
        return not self._buf and self._pending is None

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more bytes are needed."""
        if self._pending is None:
            if len(self._buf) < HEADER_SIZE:
                return None
            frame, length = decode_header(self._buf)
            if length > self._max_payload:
                raise OversizedFrame(
                    f"frame announces a {length}-byte payload, more than the "
                    f"{self._max_payload}-byte limit: split large I/O into smaller requests"
                )
            del self._buf[:HEADER_SIZE]
            self._pending = (frame, length)
        frame, length = self._pending
        if len(self._buf) < length:
            return None
        if len(self._buf) == length:  # the usual case for big I/O: take the buffer whole
            frame.payload = bytes(self._buf)
            self._buf = bytearray()
        else:
            with memoryview(self._buf) as view:  # one copy, not two (slice, then bytes)
                frame.payload = bytes(view[:length])
            del self._buf[:length]
        self._pending = None
        return frame


def encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf8")


def decode_json(payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf8")) if payload else None
    # ValueError: also bad UTF-8, and ints over sys.get_int_max_str_digits() digits;
    # RecursionError: arrays or objects nested too deeply for the parser.
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"payload is not valid JSON: {exc}") from None
