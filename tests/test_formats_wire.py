"""formats.wire: frame headers (construct vs struct), the sans-IO reader, JSON payloads."""

from __future__ import annotations

import json
from typing import Any

import construct as c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from formats import FormatError
from formats.wire import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    VERSION,
    ZERO_PVID,
    Frame,
    FrameHeader,
    FrameReader,
    Op,
    OversizedFrame,
    decode_header,
    decode_json,
    encode_frame,
    encode_header,
    encode_json,
    struct_format,
)

U8 = st.integers(min_value=0, max_value=0xFF)
U16 = st.integers(min_value=0, max_value=0xFFFF)
U32 = st.integers(min_value=0, max_value=0xFFFF_FFFF)
U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)

header_fields = st.fixed_dictionaries(
    {
        "op": U8,
        "status": U8,
        "flags": U8,
        "tag": U64,
        "ldev": U16,
        "count": U32,
        "length": U32,
        "offset": U64,
        "pvid": st.binary(min_size=16, max_size=16),
    }
)

frames = st.builds(
    Frame,
    op=U8,
    tag=U64,
    ldev=U16,
    pvid=st.binary(min_size=16, max_size=16),
    offset=U64,
    count=U32,
    status=U8,
    flags=U8,
    payload=st.binary(max_size=300),
)


def frame_key(frame: Frame) -> tuple[Any, ...]:
    return (
        frame.op,
        frame.tag,
        frame.ldev,
        frame.pvid,
        frame.offset,
        frame.count,
        frame.status,
        frame.flags,
        frame.payload,
    )


# -- FrameHeader (construct) and HEADER (struct) agree -------------------------


def test_header_layout() -> None:
    assert HEADER_SIZE == 50
    assert FrameHeader.sizeof() == HEADER_SIZE
    assert struct_format(FrameHeader) == HEADER.format
    assert struct_format(FrameHeader) in (">4sBBBBQHIIQ16s", ">4sBBBBQHLLQ16s")


@settings(max_examples=200)
@given(header_fields)
def test_construct_and_struct_agree(fields: dict[str, Any]) -> None:
    packed = encode_header(
        fields["op"],
        fields["tag"],
        ldev=fields["ldev"],
        pvid=fields["pvid"],
        offset=fields["offset"],
        count=fields["count"],
        status=fields["status"],
        flags=fields["flags"],
        length=fields["length"],
    )
    assert len(packed) == HEADER_SIZE
    assert FrameHeader.build({"version": VERSION, **fields}) == packed
    parsed = FrameHeader.parse(packed)
    assert parsed.magic == MAGIC
    assert parsed.version == VERSION
    for name, value in fields.items():
        assert parsed[name] == value, name
    frame, length = decode_header(packed)
    assert length == fields["length"]
    assert (frame.op, frame.tag, frame.ldev, frame.pvid) == (
        fields["op"],
        fields["tag"],
        fields["ldev"],
        fields["pvid"],
    )
    assert (frame.offset, frame.count, frame.status, frame.flags) == (
        fields["offset"],
        fields["count"],
        fields["status"],
        fields["flags"],
    )
    assert frame.payload == b""


@pytest.mark.parametrize(
    ("declaration", "expected"),
    [
        (c.Struct("a" / c.Int8ub, "b" / c.Int16ub, "c" / c.Int64ub), ">BHQ"),
        (c.Struct("m" / c.Const(b"XY"), "b" / c.Bytes(3)), ">2s3s"),
        (c.Struct(), ">"),
    ],
)
def test_struct_format_supported(declaration: c.Struct, expected: str) -> None:
    assert struct_format(declaration) == expected


@pytest.mark.parametrize(
    "field",
    [
        c.PaddedString(8, "utf8"),
        c.Int32ul,
        c.Int16sl,
        c.Int24ub,  # a BytesInteger, not a FormatField
        c.Bytes(c.this.n),
        c.GreedyBytes,
        c.CString("utf8"),
    ],
    ids=["PaddedString", "Int32ul", "Int16sl", "Int24ub", "Bytes(this.n)", "Greedy", "CString"],
)
def test_struct_format_refuses_unsupported_fields(field: c.Construct) -> None:
    declaration = c.Struct("n" / c.Int8ub, "bad" / field)
    with pytest.raises(TypeError, match="bad"):
        struct_format(declaration)


@pytest.mark.parametrize(
    "changes",
    [{"ldev": 1 << 16}, {"tag": -1}, {"status": 256}, {"length": 1 << 32}, {"offset": 1 << 64}],
)
def test_encode_header_out_of_range(changes: dict[str, int]) -> None:
    args: dict[str, Any] = {"op": Op.READ, "tag": 1} | changes
    with pytest.raises(FormatError, match="encode"):
        encode_header(**args)


@pytest.mark.parametrize("length", [0, 1, HEADER_SIZE - 1])
def test_decode_header_truncated(length: int) -> None:
    with pytest.raises(FormatError, match="truncated"):
        decode_header(encode_header(Op.READ, 1)[:length])


# -- FrameReader ----------------------------------------------------------------


@st.composite
def chunked_stream(draw: st.DrawFn) -> tuple[list[Frame], bytes, list[int]]:
    """Frames, their encoding, and sorted cut points (repeats give empty chunks)."""
    items = draw(st.lists(frames, max_size=6))
    data = b"".join(encode_frame(frame) for frame in items)
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=20)))
    return items, data, cuts


@settings(max_examples=200, deadline=None)
@given(chunked_stream())
def test_reader_reassembles_any_chunking(stream: tuple[list[Frame], bytes, list[int]]) -> None:
    items, data, cuts = stream
    boundaries = {0}
    position = 0
    for frame in items:
        position += HEADER_SIZE + len(frame.payload)
        boundaries.add(position)

    reader = FrameReader()
    assert reader.idle
    out: list[Frame] = []
    fed = 0
    for end in [*cuts, len(data)]:
        reader.feed(data[fed:end])
        fed = end
        while (got := reader.next_frame()) is not None:
            out.append(got)
        assert reader.idle == (fed in boundaries), fed
    assert [frame_key(f) for f in out] == [frame_key(f) for f in items]
    assert reader.idle
    assert reader.next_frame() is None


def test_reader_idle_only_between_frames() -> None:
    data = encode_frame(Frame(Op.WRITE, 7, payload=b"abc")) + encode_frame(Frame(Op.FLUSH, 8))
    reader = FrameReader()
    seen = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        while (frame := reader.next_frame()) is not None:
            seen.append(frame.tag)
        assert reader.idle == (i + 1 in (HEADER_SIZE + 3, 2 * HEADER_SIZE + 3)), i
    assert seen == [7, 8]


def test_reader_idle_false_with_unread_complete_frame() -> None:
    reader = FrameReader()
    reader.feed(encode_frame(Frame(Op.FLUSH, 1)))
    assert not reader.idle  # fed but not yet taken out
    assert reader.next_frame() is not None
    assert reader.idle


def test_reader_accepts_bytearray() -> None:
    reader = FrameReader()
    reader.feed(bytearray(encode_frame(Frame(Op.WRITE, 1, payload=b"xyz"))))
    frame = reader.next_frame()
    assert frame is not None
    assert frame.payload == b"xyz"
    assert type(frame.payload) is bytes


@pytest.mark.parametrize("limit", [0, 100, 4096])
def test_oversized_frame(limit: int) -> None:
    reader = FrameReader(max_payload=limit)
    reader.feed(encode_header(Op.WRITE, 1, length=limit + 1))  # no payload needed to refuse
    with pytest.raises(OversizedFrame) as info:
        reader.next_frame()
    assert isinstance(info.value, FormatError)
    assert str(limit + 1) in str(info.value) and str(limit) in str(info.value)


def test_payload_at_the_limit_is_accepted() -> None:
    reader = FrameReader(max_payload=100)
    reader.feed(encode_frame(Frame(Op.WRITE, 1, payload=b"p" * 100)))
    frame = reader.next_frame()
    assert frame is not None and frame.payload == b"p" * 100


def test_default_limit_is_max_payload() -> None:
    reader = FrameReader()
    reader.feed(encode_header(Op.WRITE, 1, length=MAX_PAYLOAD + 1))
    with pytest.raises(OversizedFrame):
        reader.next_frame()
    reader = FrameReader()
    reader.feed(encode_header(Op.WRITE, 1, length=MAX_PAYLOAD))
    assert reader.next_frame() is None
    assert not reader.idle


def test_bad_magic() -> None:
    reader = FrameReader()
    reader.feed(b"HTTP" + encode_header(Op.READ, 1)[4:])
    with pytest.raises(FormatError) as info:
        reader.next_frame()
    assert "magic" in str(info.value)
    assert "HTTP" in str(info.value)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_bad_version(version: int) -> None:
    data = bytearray(encode_header(Op.READ, 1))
    data[4] = version
    reader = FrameReader()
    reader.feed(data)
    with pytest.raises(FormatError) as info:
        reader.next_frame()
    assert "version" in str(info.value)
    assert str(version) in str(info.value)


def test_partial_header_is_not_an_error() -> None:
    reader = FrameReader()
    reader.feed(b"HTTP/1.1 ")  # too short to judge yet
    assert reader.next_frame() is None
    assert not reader.idle


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.just(b""),
        st.just(MAGIC),
        st.just(MAGIC + bytes([VERSION])),
        st.binary(max_size=8),
    ),
    st.lists(st.binary(max_size=80), max_size=8),
    st.integers(min_value=0, max_value=200),
)
def test_random_bytes_raise_only_format_error(
    prefix: bytes, chunks: list[bytes], limit: int
) -> None:
    reader = FrameReader(max_payload=limit)
    try:
        reader.feed(prefix)
        for chunk in chunks:
            reader.feed(chunk)
            while (frame := reader.next_frame()) is not None:
                assert isinstance(frame, Frame)
                assert len(frame.payload) <= limit
    except FormatError:
        pass


# -- frames and JSON ----------------------------------------------------------


@settings(max_examples=100)
@given(frames)
def test_encode_frame_layout(frame: Frame) -> None:
    data = encode_frame(frame)
    assert len(data) == HEADER_SIZE + len(frame.payload)
    decoded, length = decode_header(data)
    assert length == len(frame.payload)
    assert data[HEADER_SIZE:] == frame.payload
    decoded.payload = frame.payload
    assert frame_key(decoded) == frame_key(frame)


def test_frame_defaults() -> None:
    frame = Frame(Op.FLUSH, 3)
    assert frame.pvid == ZERO_PVID == bytes(16)
    assert (frame.ldev, frame.offset, frame.count, frame.status, frame.flags) == (0, 0, 0, 0, 0)
    assert frame.payload == b""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200)
@given(json_values)
def test_json_round_trips(value: Any) -> None:
    payload = encode_json(value)
    assert decode_json(payload) == value
    assert Frame(Op.LIST, 1, payload=payload).json() == value


def test_empty_payload_is_none() -> None:
    assert decode_json(b"") is None
    assert Frame(Op.LIST, 1).json() is None


def test_encode_json_is_compact_and_sorted() -> None:
    assert encode_json({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe",
        b"{",
        b"{'a': 1}",
        b"[1, 2,]",
        b"null garbage",
        b"\xef\xbb\xbf{}",  # UTF-8 BOM
        b"1" * 5000,  # beyond Python's int-from-string digit limit: ValueError
        b"[" * 100_000 + b"]" * 100_000,  # nested beyond the parser's recursion limit
    ],
    ids=[
        "bad-utf8",
        "open-brace",
        "single-quotes",
        "trailing-comma",
        "garbage",
        "bom",
        "big-int",
        "deep",
    ],
)
def test_decode_json_errors_are_format_errors(payload: bytes) -> None:
    with pytest.raises(FormatError, match="JSON"):
        decode_json(payload)
    with pytest.raises(FormatError):
        Frame(Op.LIST, 1, payload=payload).json()


@settings(max_examples=200)
@given(st.binary(max_size=64) | st.text(max_size=64).map(lambda s: s.encode("utf8")))
def test_decode_json_raises_only_format_error(payload: bytes) -> None:
    try:
        value = decode_json(payload)
    except FormatError:
        return
    json.dumps(value)  # whatever came out is plain JSON data


def test_message_tolerates_bad_utf8() -> None:
    assert Frame(Op.READ, 1, payload=b"no \xff such").message() == "no \ufffd such"
