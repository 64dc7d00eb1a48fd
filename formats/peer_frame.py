"""Frames between nodeagent processes, authenticated with the cluster key; a sans-IO decoder.

Every message is one fixed header, a JSON payload, and a MAC::

    magic | version | type | sender | session | epoch | seq | length | payload | mac
      4       1        1      32       8         8       8     4       length    32

* ``sender`` is the node id of the sender, UTF-8, NUL-padded to 32 bytes.
* ``session`` is the sender process's boot time (ns since the epoch): a new
  session tells a receiver that the sender restarted (its ``seq`` starts
  again), where the same session with an old ``seq`` is a replay.
* ``epoch`` is the sender's cluster epoch. Epochs increase on every role change
  and are persisted, so a message from an old active carries a stale epoch.
* ``seq`` increases strictly over all messages of one session.
* ``payload`` is a UTF-8 JSON object of ``length`` bytes (at most
  :data:`MAX_PAYLOAD`).
* ``mac`` is HMAC-SHA256 with the cluster key over header and payload. It is
  checked (in constant time) before anything in the frame is believed, the
  JSON included.

Which frames a receiver *accepts* (known sender, not replayed, epoch not
stale) is decided by ``nodeagent.peers``; this module only frames, signs and
verifies.

The layout is declared once, with construct (:data:`PeerFrameHeader`); the
hot path packs and unpacks it with a :class:`struct.Struct` derived from the
declaration by :func:`formats.wire.struct_format` (:data:`HEADER`).

Broken streams: magic, version and length are checked before the MAC can be
(the length says where the MAC is). When one of them is bad, the decoder
cannot know where the next frame starts, and a resynchronising scan would let
a garbage sender make it buffer up to a megabyte per false magic. So it does
not resynchronise: it reports one ``malformed`` :class:`Rejected`, sets
:attr:`FrameDecoder.broken`, discards everything after, and the caller drops
the connection (the sending agent reconnects). Frames that are well framed but
fail the MAC, or whose authenticated content is bad (unknown type, bad sender
field, payload not a JSON object), are rejected one by one and the stream goes
on.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from typing import Any

import construct as c

from .errors import FormatError
from .wire import decode_json, encode_json, struct_format

MAGIC = b"BENA"
VERSION = 1
SENDER_SIZE = 32
MAC_SIZE = hashlib.sha256().digest_size
#: Largest JSON payload a frame may carry.
MAX_PAYLOAD = 1 << 20

#: :attr:`Rejected.reason` for a frame whose MAC does not verify (wrong key, or damaged).
UNAUTHENTICATED = "unauthenticated"
#: :attr:`Rejected.reason` for a frame that is not laid out as this module declares.
MALFORMED = "malformed"


class MsgType(enum.IntEnum):
    """What a frame says; its body is a JSON object whose keys depend on the type."""

    HEARTBEAT = 1  # I am alive: role, protocol flag, priority and epoch of the sender
    START = 2  # active -> standbys: a replica op is about to run (DESIGN.md §4, stage X)
    START_ACK = 3  # standby -> active: flag B1 is set
    DONE = 4  # active -> standbys: the replica op is done on the array; reflect it (stage Y)
    DONE_ACK = 5  # standby -> active: told (flag B2), reflecting now
    REFLECTED = 6  # standby -> active: reflection done, back to flag 0 (stage Z)
    REFLECTED_ACK = 7  # active -> standby: the active counted this standby's reflection
    STATE = 8  # active -> a joining standby: the replica state it must reflect
    SWITCHOVER = 9  # a node -> the active: please hand the active role over
    LEAVE = 10  # the sender stops (planned): do not wait for its heartbeats


#: The header, declared with construct. Edit here; :data:`HEADER` follows.
PeerFrameHeader = c.Struct(
    "magic" / c.Const(MAGIC),
    "version" / c.Int8ub,
    "type" / c.Int8ub,
    "sender" / c.Bytes(SENDER_SIZE),
    "session" / c.Int64ub,
    "epoch" / c.Int64ub,
    "seq" / c.Int64ub,
    "length" / c.Int32ub,
)

HEADER = struct.Struct(struct_format(PeerFrameHeader))
HEADER_SIZE = HEADER.size
assert PeerFrameHeader.sizeof() == HEADER_SIZE
#: Bytes a frame adds to its payload.
OVERHEAD = HEADER_SIZE + MAC_SIZE


@dataclass(frozen=True)
class PeerFrame:
    """One authenticated, well-formed message."""

    type: MsgType
    sender: str
    session: int
    epoch: int
    seq: int
    body: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class Rejected:
    """A frame the decoder dropped.

    ``reason`` is :data:`UNAUTHENTICATED` or :data:`MALFORMED`; ``sender`` is
    the sender the header *claims* (never verified; None when unreadable);
    ``detail`` says what exactly was wrong, for the log.
    """

    reason: str
    sender: str | None
    detail: str = ""


def encode_sender(sender: str) -> bytes:
    """*sender* as the NUL-padded header field; FormatError if it does not fit."""
    try:
        raw = sender.encode("utf8") if isinstance(sender, str) else b""
    except UnicodeEncodeError:
        raw = b""
    if not raw or b"\0" in raw or len(raw) > SENDER_SIZE:
        raise FormatError(
            f"sender {sender!r} cannot go in a peer frame: a node id must be 1-{SENDER_SIZE} "
            "bytes of UTF-8 without NUL"
        )
    return raw.ljust(SENDER_SIZE, b"\0")


def _decode_sender(raw: bytes) -> str | None:
    name = raw.rstrip(b"\0")
    if not name or b"\0" in name:
        return None
    try:
        return name.decode("utf8")
    except UnicodeDecodeError:
        return None


def frame_mac(key: bytes, signed: bytes | bytearray | memoryview) -> bytes:
    """HMAC-SHA256 of *signed* (header + payload) with the cluster *key*."""
    return hmac.new(key, signed, hashlib.sha256).digest()


def encode_frame(frame: PeerFrame, key: bytes) -> bytes:
    """The bytes of *frame*, signed with *key*; FormatError if it cannot be encoded."""
    if not isinstance(frame.body, dict):
        raise FormatError(f"peer frame body must be a JSON object, not {type(frame.body).__name__}")
    try:
        payload = encode_json(frame.body)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"peer frame body cannot be encoded as JSON: {exc}") from None
    if len(payload) > MAX_PAYLOAD:
        raise FormatError(
            f"peer frame body is {len(payload)} bytes of JSON, more than the {MAX_PAYLOAD} limit"
        )
    try:
        header = HEADER.pack(
            MAGIC,
            VERSION,
            MsgType(frame.type),
            encode_sender(frame.sender),
            frame.session,
            frame.epoch,
            frame.seq,
            len(payload),
        )
    except (struct.error, ValueError) as exc:
        raise FormatError(f"cannot encode peer frame header: {exc}") from None
    signed = header + payload
    return signed + frame_mac(key, signed)


class FrameDecoder:
    """Sans-IO decoder of a stream of peer frames: feed bytes, take frames out.

    :meth:`frames` returns every complete frame buffered so far, each a
    :class:`PeerFrame` or a :class:`Rejected`; it never raises for bad input.
    After a header whose length cannot be trusted (bad magic, version or
    length), :attr:`broken` is set: the decoder ignores all further bytes and
    the caller should close the connection (see the module docstring).
    """

    def __init__(self, key: bytes, *, max_payload: int = MAX_PAYLOAD) -> None:
        self._key = key
        self._max_payload = max_payload
        self._buf = bytearray()
        self.broken = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not self.broken:
            self._buf += data

    @property
    def idle(self) -> bool:
        """True when no partial frame is buffered (a clean place for EOF)."""
        return not self._buf

    def frames(self) -> list[PeerFrame | Rejected]:
        out: list[PeerFrame | Rejected] = []
        buf = self._buf
        pos = 0
        while not self.broken and len(buf) - pos >= HEADER_SIZE:
            magic, version, mtype, sender_raw, session, epoch, seq, length = HEADER.unpack_from(
                buf, pos
            )
            problem = None
            if magic != MAGIC:
                problem = (
                    f"bad magic {bytes(magic)!r}: the peer does not speak the nodeagent protocol"
                )
            elif version != VERSION:
                problem = (
                    f"frame version {version} is not supported (this side speaks {VERSION}): "
                    "run the same nodeagent release on every node"
                )
            elif length > self._max_payload:
                problem = (
                    f"frame announces a {length}-byte payload, "
                    f"over the {self._max_payload}-byte limit"
                )
            if problem is not None:
                claimed = _decode_sender(sender_raw) if magic == MAGIC else None
                out.append(Rejected(MALFORMED, claimed, problem + "; stream dropped"))
                self.broken = True
                break
            end = pos + HEADER_SIZE + length
            if len(buf) < end + MAC_SIZE:
                break
            claimed = _decode_sender(sender_raw)
            with memoryview(buf) as view:
                mac = frame_mac(self._key, view[pos:end])
                good = hmac.compare_digest(mac, bytes(view[end : end + MAC_SIZE]))
            payload = bytes(buf[pos + HEADER_SIZE : end])
            pos = end + MAC_SIZE
            if not good:
                out.append(Rejected(UNAUTHENTICATED, claimed, "bad HMAC: wrong cluster key?"))
                continue
            out.append(
                self._authenticated(mtype, sender_raw, claimed, session, epoch, seq, payload)
            )
        if self.broken:
            self._buf.clear()
        elif pos:
            del buf[:pos]
        return out

    @staticmethod
    def _authenticated(
        mtype: int,
        sender_raw: bytes,
        sender: str | None,
        session: int,
        epoch: int,
        seq: int,
        payload: bytes,
    ) -> PeerFrame | Rejected:
        """Check the content of a frame whose MAC verified."""
        if sender is None:
            return Rejected(MALFORMED, None, f"sender field {sender_raw!r} is not a node id")
        try:
            kind = MsgType(mtype)
        except ValueError:
            return Rejected(MALFORMED, sender, f"unknown message type {mtype}")
        try:
            body = decode_json(payload)
        except FormatError as exc:
            return Rejected(MALFORMED, sender, str(exc))
        if not isinstance(body, dict):
            return Rejected(MALFORMED, sender, "payload is not a JSON object")
        return PeerFrame(kind, sender, session, epoch, seq, body)
