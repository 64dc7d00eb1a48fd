"""formats.peer_frame: header layout, signing, and the sans-IO decoder under damage."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formats import FormatError
from formats.peer_frame import (
    HEADER,
    HEADER_SIZE,
    MAC_SIZE,
    MAGIC,
    MALFORMED,
    MAX_PAYLOAD,
    OVERHEAD,
    SENDER_SIZE,
    UNAUTHENTICATED,
    VERSION,
    FrameDecoder,
    MsgType,
    PeerFrame,
    PeerFrameHeader,
    Rejected,
    encode_frame,
    encode_sender,
)
from formats.wire import struct_format

KEY = b"k" * 32
OTHER_KEY = b"K" * 32
U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
senders = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1, max_size=8
)

frames = st.builds(
    PeerFrame,
    type=st.sampled_from(MsgType),
    sender=senders,
    session=U64,
    epoch=U64,
    seq=U64,
    body=bodies,
)


def decode_all(data: bytes, key: bytes = KEY) -> tuple[list[PeerFrame | Rejected], bool]:
    decoder = FrameDecoder(key)
    decoder.feed(data)
    return decoder.frames(), decoder.broken


def rejected(items: list[PeerFrame | Rejected]) -> list[Rejected]:
    """*items*, all of which must be Rejected."""
    out = [item for item in items if isinstance(item, Rejected)]
    assert out == items
    return out


def raw_frame(
    payload: bytes,
    *,
    mtype: int = MsgType.HEARTBEAT,
    sender: bytes = b"node1".ljust(SENDER_SIZE, b"\0"),
    magic: bytes = MAGIC,
    version: int = VERSION,
    length: int | None = None,
    key: bytes = KEY,
) -> bytes:
    """A frame built by hand, correctly signed whatever is inside."""
    header = HEADER.pack(
        magic, version, mtype, sender, 1, 2, 3, len(payload) if length is None else length
    )
    return header + payload + hmac.new(key, header + payload, hashlib.sha256).digest()


# -- layout ---------------------------------------------------------------------------------


def test_header_layout() -> None:
    assert HEADER_SIZE == 4 + 1 + 1 + 32 + 8 + 8 + 8 + 4 == 66
    assert PeerFrameHeader.sizeof() == HEADER_SIZE
    assert struct_format(PeerFrameHeader) == HEADER.format
    assert OVERHEAD == HEADER_SIZE + MAC_SIZE == 98
    assert MAX_PAYLOAD == 1 << 20


def test_msg_type_numbers() -> None:
    assert {t.name: t.value for t in MsgType} == {
        "HEARTBEAT": 1,
        "START": 2,
        "START_ACK": 3,
        "DONE": 4,
        "DONE_ACK": 5,
        "REFLECTED": 6,
        "REFLECTED_ACK": 7,
        "STATE": 8,
        "SWITCHOVER": 9,
        "LEAVE": 10,
    }


@settings(max_examples=100)
@given(frames)
def test_construct_parses_what_struct_packs(frame: PeerFrame) -> None:
    data = encode_frame(frame, KEY)
    parsed = PeerFrameHeader.parse(data[:HEADER_SIZE])
    assert parsed.magic == MAGIC
    assert parsed.version == VERSION
    assert parsed.type == frame.type
    assert parsed.sender == encode_sender(frame.sender)
    assert (parsed.session, parsed.epoch, parsed.seq) == (frame.session, frame.epoch, frame.seq)
    assert parsed.length == len(data) - OVERHEAD
    assert json.loads(data[HEADER_SIZE:-MAC_SIZE]) == frame.body
    mac = hmac.new(KEY, data[:-MAC_SIZE], hashlib.sha256).digest()
    assert data[-MAC_SIZE:] == mac


# -- round trip -----------------------------------------------------------------------------


@settings(max_examples=300)
@given(frames)
def test_round_trip(frame: PeerFrame) -> None:
    out, broken = decode_all(encode_frame(frame, KEY))
    assert out == [frame]
    assert not broken


def test_frames_are_hashable_by_header_and_compare_by_body() -> None:
    a = PeerFrame(MsgType.START, "n1", 1, 2, 3, {"x": 1})
    assert a == PeerFrame(MsgType.START, "n1", 1, 2, 3, {"x": 1})
    assert a != PeerFrame(MsgType.START, "n1", 1, 2, 3, {"x": 2})
    assert hash(a) == hash(PeerFrame(MsgType.START, "n1", 1, 2, 3, {"x": 2}))


@pytest.mark.parametrize(
    ("sender", "ok"),
    [
        ("a", True),
        ("x" * 32, True),
        ("é" * 16, True),
        ("x" * 33, False),
        ("é" * 17, False),
        ("", False),
        ("a\0b", False),
        ("\ud800", False),
    ],
)
def test_sender_field(sender: str, ok: bool) -> None:
    frame = PeerFrame(MsgType.HEARTBEAT, sender, 1, 1, 1, {})
    if ok:
        assert decode_all(encode_frame(frame, KEY))[0] == [frame]
    else:
        with pytest.raises(FormatError, match="sender"):
            encode_frame(frame, KEY)


@pytest.mark.parametrize(
    "frame",
    [
        PeerFrame(MsgType.HEARTBEAT, "a", -1, 0, 0, {}),
        PeerFrame(MsgType.HEARTBEAT, "a", 0, 1 << 64, 0, {}),
        PeerFrame(MsgType.HEARTBEAT, "a", 0, 0, 1 << 64, {}),
        PeerFrame(42, "a", 0, 0, 0, {}),  # type: ignore[arg-type]
        PeerFrame(MsgType.HEARTBEAT, "a", 0, 0, 0, ["not", "an", "object"]),  # type: ignore[arg-type]
        PeerFrame(MsgType.HEARTBEAT, "a", 0, 0, 0, {"x": object()}),
        PeerFrame(MsgType.HEARTBEAT, "a", 0, 0, 0, {"x": "y" * MAX_PAYLOAD}),
    ],
    ids=["session<0", "epoch>u64", "seq>u64", "type", "list body", "object", "too big"],
)
def test_encode_refuses(frame: PeerFrame) -> None:
    with pytest.raises(FormatError):
        encode_frame(frame, KEY)


def test_largest_payload_round_trips() -> None:
    body = {"x": "y" * (MAX_PAYLOAD - len('{"x":""}'))}
    frame = PeerFrame(MsgType.STATE, "n1", 1, 1, 1, body)
    data = encode_frame(frame, KEY)
    assert len(data) == OVERHEAD + MAX_PAYLOAD
    assert decode_all(data)[0] == [frame]


# -- authentication -------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(frames, st.data())
def test_any_flipped_bit_is_rejected(frame: PeerFrame, data: st.DataObject) -> None:
    good = encode_frame(frame, KEY)
    bit = data.draw(st.integers(min_value=0, max_value=len(good) * 8 - 1), label="bit")
    damaged = bytearray(good)
    damaged[bit // 8] ^= 1 << (bit % 8)
    items, broken = decode_all(bytes(damaged))
    out = rejected(items)  # never a frame
    byte = bit // 8
    length_field = range(HEADER_SIZE - 4, HEADER_SIZE)
    if byte < 5:  # magic, version: the length cannot be trusted
        assert [r.reason for r in out] == [MALFORMED]
        assert broken
    elif byte in length_field:
        # a longer length waits for bytes that never come; anything else is refused
        assert not out or out[0].reason in (MALFORMED, UNAUTHENTICATED)
    else:  # type, sender, session, epoch, seq, payload, MAC
        assert [r.reason for r in out] == [UNAUTHENTICATED]
        assert not broken


@settings(max_examples=100)
@given(frames)
def test_wrong_key_is_unauthenticated(frame: PeerFrame) -> None:
    items, broken = decode_all(encode_frame(frame, OTHER_KEY))
    out = rejected(items)
    assert [(r.reason, r.sender) for r in out] == [(UNAUTHENTICATED, frame.sender)]
    assert "HMAC" in out[0].detail
    assert not broken


def test_stream_goes_on_after_unauthenticated_frames() -> None:
    a = PeerFrame(MsgType.START, "n1", 1, 1, 1, {"n": 1})
    b = PeerFrame(MsgType.DONE, "n1", 1, 1, 2, {"n": 2})
    out, broken = decode_all(encode_frame(a, OTHER_KEY) + encode_frame(b, KEY))
    assert [type(x) for x in out] == [Rejected, PeerFrame]
    assert out[1] == b
    assert not broken


def test_mac_is_checked_before_json() -> None:
    """Bad JSON with a bad MAC is unauthenticated: the JSON parser never saw it."""
    payload = b'{"unterminated'
    items, _ = decode_all(raw_frame(payload)[:-1] + b"\0")
    assert [x.reason for x in rejected(items)] == [UNAUTHENTICATED]
    items, broken = decode_all(raw_frame(payload))
    out = rejected(items)
    assert [x.reason for x in out] == [MALFORMED]
    assert "JSON" in out[0].detail
    assert not broken


@pytest.mark.parametrize(
    ("payload", "fields", "detail"),
    [
        (b"[1, 2]", {}, "not a JSON object"),
        (b"", {}, "not a JSON object"),
        (b"\xff\xfe", {}, "JSON"),
        (b"[" * 100_000, {}, "JSON"),
        (b"{}", {"mtype": 0}, "unknown message type 0"),
        (b"{}", {"mtype": 200}, "unknown message type 200"),
        (b"{}", {"sender": bytes(SENDER_SIZE)}, "not a node id"),
        (b"{}", {"sender": b"a\0b".ljust(SENDER_SIZE, b"\0")}, "not a node id"),
        (b"{}", {"sender": b"\xff".ljust(SENDER_SIZE, b"\0")}, "not a node id"),
    ],
    ids=["list", "empty", "utf8", "deep", "type0", "type200", "nul", "inner-nul", "bad-utf8"],
)
def test_authenticated_but_malformed(payload: bytes, fields: dict[str, Any], detail: str) -> None:
    follow = PeerFrame(MsgType.HEARTBEAT, "n1", 1, 1, 9, {})
    out, broken = decode_all(raw_frame(payload, **fields) + encode_frame(follow, KEY))
    assert len(out) == 2
    assert isinstance(out[0], Rejected)
    assert out[0].reason == MALFORMED
    assert detail in out[0].detail
    assert out[1] == follow  # the stream is still in step
    assert not broken


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"magic": b"GET "}, "bad magic"),
        ({"version": 2}, "version 2"),
        ({"length": MAX_PAYLOAD + 1}, "limit"),
    ],
)
def test_untrustworthy_header_breaks_the_stream(fields: dict[str, Any], detail: str) -> None:
    follow = encode_frame(PeerFrame(MsgType.HEARTBEAT, "n1", 1, 1, 9, {}), KEY)
    decoder = FrameDecoder(KEY)
    decoder.feed(raw_frame(b"{}", **fields) + follow)
    out = decoder.frames()
    assert len(out) == 1
    assert isinstance(out[0], Rejected)
    assert out[0].reason == MALFORMED
    assert detail in out[0].detail
    assert decoder.broken
    decoder.feed(follow)  # ignored from now on
    assert decoder.frames() == []
    assert decoder.idle


# -- garbage and chunking -------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=1, max_value=300), max_size=20))
def test_random_bytes_never_crash(data: bytes, chunks: list[int]) -> None:
    decoder = FrameDecoder(KEY)
    out: list[PeerFrame | Rejected] = []
    pos = 0
    for size in [*chunks, len(data)]:
        decoder.feed(data[pos : pos + size])
        pos += size
        out += decoder.frames()
    rejected(out)


@settings(max_examples=300)
@given(
    st.binary(min_size=SENDER_SIZE, max_size=SENDER_SIZE),
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=0, max_value=400),
    st.binary(max_size=500),
)
def test_random_frames_behind_a_valid_magic(
    sender: bytes, mtype: int, length: int, rest: bytes
) -> None:
    """Past the magic and version, random content is rejected frame by frame."""
    header = HEADER.pack(MAGIC, VERSION, mtype, sender, 1, 1, 1, length)
    items, _ = decode_all(header + rest)
    out = rejected(items)
    if len(rest) >= length + MAC_SIZE:
        assert out[0].reason == UNAUTHENTICATED


@st.composite
def chunked(draw: st.DrawFn) -> tuple[list[PeerFrame], bytes, list[int]]:
    items = draw(st.lists(frames, max_size=6))
    data = b"".join(encode_frame(frame, KEY) for frame in items)
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=20)))
    return items, data, cuts


@settings(max_examples=100, deadline=None)
@given(chunked())
def test_any_chunking_decodes_the_same(stream: tuple[list[PeerFrame], bytes, list[int]]) -> None:
    items, data, cuts = stream
    decoder = FrameDecoder(KEY)
    out: list[PeerFrame | Rejected] = []
    previous = 0
    for cut in [*cuts, len(data)]:
        decoder.feed(data[previous:cut])
        previous = cut
        out += decoder.frames()
    assert out == items
    assert decoder.idle
    assert not decoder.broken


@settings(max_examples=50)
@given(st.lists(frames, min_size=1, max_size=4))
def test_byte_at_a_time(items: list[PeerFrame]) -> None:
    data = b"".join(encode_frame(frame, KEY) for frame in items)
    decoder = FrameDecoder(KEY)
    ends = set(itertools.accumulate(len(encode_frame(f, KEY)) for f in items))
    out: list[PeerFrame | Rejected] = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        out += decoder.frames()
        assert decoder.idle == (i + 1 in ends)
    assert out == items


def test_body_floats_and_unicode() -> None:
    body = {"π": math.pi, "big": 10**30, "neg": -0.0, "inf": math.inf, "s": "\u2603\n\0"}
    frame = PeerFrame(MsgType.STATE, "n1", 5, 6, 7, body)
    assert decode_all(encode_frame(frame, KEY))[0] == [frame]
