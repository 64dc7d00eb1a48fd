"""formats.state_file: a node's persisted replica state."""

from __future__ import annotations

import itertools
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from formats import FormatError
from formats.state_file import (
    MAGIC,
    SIZE,
    NodeRole,
    NodeState,
    ReplicaFlag,
    ReplicaOp,
    decode_state,
    encode_state,
)

#: magic (4), format_version, flag, role, op (1 each), epoch, updated (8 each), group (64).
VERSION_OFFSET = 4
FLAG_OFFSET = 5
GROUP_OFFSET = 24
BODY = SIZE - 4

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


def group_names() -> st.SearchStrategy[str]:
    """Text of at most 64 UTF-8 bytes, no NUL, often non-ASCII."""
    chars = st.characters(codec="utf-8", exclude_characters="\0")
    return st.text(chars, max_size=64).map(lambda s: s.encode("utf8")[:64].decode("utf8", "ignore"))


states = st.builds(
    NodeState,
    flag=st.sampled_from(ReplicaFlag),
    role=st.sampled_from(NodeRole),
    epoch=U64,
    op=st.sampled_from(ReplicaOp),
    group=group_names(),
    updated=U64,
)


def with_crc(data: bytes | bytearray) -> bytes:
    data = bytearray(data)
    data[BODY:] = zlib.crc32(data[:BODY]).to_bytes(4, "big")
    return bytes(data)


def error_of(data: bytes, name: str = "state file") -> str:
    with pytest.raises(FormatError) as info:
        decode_state(data, name=name)
    return str(info.value)


def only_format_error(data: bytes) -> NodeState | None:
    try:
        return decode_state(data)
    except FormatError:
        return None


def test_layout() -> None:
    assert SIZE == 92
    data = encode_state(NodeState(flag=ReplicaFlag.A2, group="g"))
    assert data[:4] == MAGIC
    assert data[VERSION_OFFSET] == 1
    assert data[FLAG_OFFSET] == 0xA2
    assert data[GROUP_OFFSET : GROUP_OFFSET + 2] == b"g\0"


@settings(max_examples=200)
@given(states)
def test_round_trips(state: NodeState) -> None:
    data = encode_state(state)
    assert len(data) == SIZE
    decoded = decode_state(data)
    assert decoded == state
    assert type(decoded.flag) is ReplicaFlag
    assert type(decoded.role) is NodeRole
    assert type(decoded.op) is ReplicaOp


def test_every_flag_role_and_op_round_trips() -> None:
    for flag, role, op in itertools.product(ReplicaFlag, NodeRole, ReplicaOp):
        state = NodeState(flag=flag, role=role, epoch=3, op=op, group="grp", updated=1)
        assert decode_state(encode_state(state)) == state


@pytest.mark.parametrize("group", ["", "g" * 64, "é" * 32, "日本", "🙂" * 16])
def test_group_name_boundaries_round_trip(group: str) -> None:
    state = NodeState(group=group)
    assert decode_state(encode_state(state)) == state


@pytest.mark.parametrize("group", ["g" * 65, "é" * 33, "a\0b"])
def test_encode_rejects_bad_group_name(group: str) -> None:
    with pytest.raises(FormatError, match="group"):
        encode_state(NodeState(group=group))


@settings(max_examples=200)
@given(
    states, st.integers(min_value=0, max_value=SIZE - 1), st.integers(min_value=1, max_value=255)
)
def test_any_flipped_byte_is_detected(state: NodeState, position: int, mask: int) -> None:
    data = bytearray(encode_state(state))
    data[position] ^= mask
    with pytest.raises(FormatError):
        decode_state(bytes(data))


def test_every_single_bit_flip_is_detected() -> None:
    data = encode_state(NodeState(ReplicaFlag.B2, NodeRole.STANDBY, 9, ReplicaOp.RESYNC, "g", 1))
    for position, bit in itertools.product(range(SIZE), range(8)):
        damaged = bytearray(data)
        damaged[position] ^= 1 << bit
        with pytest.raises(FormatError):
            decode_state(bytes(damaged))


@settings(max_examples=200)
@given(st.binary(max_size=2 * SIZE))
def test_random_bytes_raise_only_format_error(data: bytes) -> None:
    only_format_error(data)


@settings(max_examples=200)
@given(st.binary(min_size=SIZE - 4, max_size=SIZE - 4))
def test_random_bytes_with_magic_raise_format_error(rest: bytes) -> None:
    with pytest.raises(FormatError):
        decode_state(MAGIC + rest)


@settings(max_examples=200)
@given(st.binary(min_size=BODY - 5, max_size=BODY - 5))
def test_random_body_with_matching_crc_raises_only_format_error(body: bytes) -> None:
    """Past the CRC, a bad field is still a FormatError, and anything accepted is
    exactly what encode_state writes for it."""
    data = with_crc(MAGIC + b"\x01" + body + bytes(4))
    decoded = only_format_error(data)
    if decoded is not None:
        assert encode_state(decoded) == data


@settings(max_examples=200)
@given(
    states,
    st.lists(
        st.tuples(st.integers(min_value=FLAG_OFFSET, max_value=BODY - 1), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    ),
)
def test_field_damage_with_matching_crc_raises_only_format_error(
    state: NodeState, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(encode_state(state))
    for position, value in edits:
        data[position] = value
    patched = with_crc(data)
    decoded = only_format_error(patched)
    if decoded is not None:
        assert encode_state(decoded) == patched


@pytest.mark.parametrize("length", [0, 1, SIZE - 1, SIZE + 1, 2 * SIZE])
def test_wrong_length_names_the_file(length: int) -> None:
    data = (encode_state(NodeState()) * 2)[:length]
    message = error_of(data, name="/var/lib/nodeagent/state")
    assert message.startswith("/var/lib/nodeagent/state:")
    assert str(length) in message and str(SIZE) in message


def test_default_name_is_used() -> None:
    assert error_of(b"").startswith("state file:")


def test_bad_magic_names_the_file() -> None:
    data = b"XXXX" + encode_state(NodeState())[4:]
    message = error_of(data, name="node-a.state")
    assert message.startswith("node-a.state:")
    assert "magic" in message


def test_crc_mismatch_names_the_file() -> None:
    data = bytearray(encode_state(NodeState()))
    data[-1] ^= 1
    message = error_of(bytes(data), name="node-a.state")
    assert message.startswith("node-a.state:")
    assert "CRC" in message


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version(version: int) -> None:
    data = bytearray(encode_state(NodeState()))
    data[VERSION_OFFSET] = version
    message = error_of(with_crc(data), name="node-a.state")
    assert message.startswith("node-a.state:")
    assert "version" in message and str(version) in message


@pytest.mark.parametrize("offset", [FLAG_OFFSET, FLAG_OFFSET + 1, FLAG_OFFSET + 2])
def test_unknown_enum_value(offset: int) -> None:
    data = bytearray(encode_state(NodeState()))
    data[offset] = 0x7F
    message = error_of(with_crc(data), name="node-a.state")
    assert message.startswith("node-a.state:")
    assert "127" in message


def test_group_with_nul_inside_is_refused() -> None:
    data = bytearray(encode_state(NodeState(group="ab")))
    data[GROUP_OFFSET + 3] = ord("c")  # "ab\0c": encode_state could never write this back
    assert "NUL" in error_of(with_crc(data))


def test_group_with_bad_utf8() -> None:
    data = bytearray(encode_state(NodeState(group="ab")))
    data[GROUP_OFFSET] = 0xFF
    assert "unreadable" in error_of(with_crc(data))
