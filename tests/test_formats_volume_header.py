"""formats.volume_header: slot encoding, corruption detection, slot choice, dict views."""

from __future__ import annotations

import dataclasses
import itertools
import json
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formats import FormatError
from formats.volume_header import (
    MAGIC,
    NO_GROUP,
    NO_PARTNER,
    SLOT_SIZE,
    Attr,
    HeaderSlot,
    MirrorMode,
    PairInfo,
    PairRole,
    PairStatus,
    VolumeHeader,
    VolumeInfo,
    choose_slot,
    decode_slot,
    encode_slot,
    header_from_dict,
    header_to_dict,
    slot_for_generation,
    validate_info,
)

#: Bytes of a slot that carry data: the body, then its CRC-32; the rest is padding.
USED = HeaderSlot.subcon.sizeof()
BODY = USED - 4
#: magic (8 bytes), then the format version (Int16ub).
VERSION_OFFSET = 8
#: magic, version, generation, ldev, pvid, info (96 bytes), then the pair section;
#: mirror_unit is its sixth byte.
MIRROR_UNIT_OFFSET = 8 + 2 + 8 + 2 + 16 + 96 + 5

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
U16 = st.integers(min_value=0, max_value=0xFFFF)


def with_crc(body_and_rest: bytes | bytearray) -> bytes:
    """*body_and_rest* with the CRC field recomputed, so only the content is checked."""
    data = bytearray(body_and_rest)
    data[BODY:USED] = zlib.crc32(data[:BODY]).to_bytes(4, "big")
    return bytes(data)


def text_within(limit: int) -> st.SearchStrategy[str]:
    """Text of at most *limit* UTF-8 bytes, no NUL, often non-ASCII."""
    chars = st.characters(codec="utf-8", exclude_characters="\0")
    return st.text(chars, max_size=limit).map(
        lambda s: s.encode("utf8")[:limit].decode("utf8", "ignore")
    )


@st.composite
def volume_infos(draw: st.DrawFn) -> VolumeInfo:
    block_size = draw(st.sampled_from([1 << k for k in range(9, 17)]))
    blocks = draw(st.integers(min_value=1, max_value=((1 << 64) - 1) // block_size))
    return VolumeInfo(
        size=blocks * block_size,
        block_size=block_size,
        label=draw(text_within(32)),
        serial=draw(text_within(16)),
        created=draw(U64),
        vendor=draw(text_within(8)),
        product=draw(text_within(16)),
        attributes=Attr(draw(st.integers(min_value=0, max_value=3))),
    )


pair_infos = st.builds(
    PairInfo,
    role=st.sampled_from(PairRole),
    status=st.sampled_from(PairStatus),
    partner_ldev=U16,
    mirror_mode=st.sampled_from(MirrorMode),
    mirror_unit=st.integers(min_value=0, max_value=2),
    consistency_group=U16,
    split_time=U64,
)

headers = st.builds(
    VolumeHeader,
    generation=U64,
    ldev=U16,
    pvid=st.binary(min_size=16, max_size=16),
    info=volume_infos(),
    pair=pair_infos,
)


def simple_header(generation: int = 1, **changes: Any) -> VolumeHeader:
    header = VolumeHeader(
        generation=generation,
        ldev=0x1A,
        pvid=bytes(range(16)),
        info=VolumeInfo(size=1 << 20, label="data"),
    )
    return header.replace(**changes) if changes else header


def format_error(data: bytes) -> str:
    with pytest.raises(FormatError) as info:
        decode_slot(data)
    return str(info.value)


# -- round trip ---------------------------------------------------------------


def test_layout_constants() -> None:
    assert USED == 152
    assert USED < SLOT_SIZE
    slot = encode_slot(simple_header())
    assert slot[:VERSION_OFFSET] == MAGIC
    assert int.from_bytes(slot[VERSION_OFFSET : VERSION_OFFSET + 2], "big") == 1
    assert slot[MIRROR_UNIT_OFFSET] == 0
    assert not any(slot[USED:])


@settings(max_examples=200)
@given(headers)
def test_slot_round_trips(header: VolumeHeader) -> None:
    slot = encode_slot(header)
    assert len(slot) == SLOT_SIZE
    assert not any(slot[USED:])
    assert decode_slot(slot) == header
    # Trailing bytes beyond one slot (e.g. a read of both slots) are ignored.
    assert decode_slot(slot + b"\xff" * 10) == header


def test_every_enum_value_round_trips() -> None:
    base = simple_header()
    for role, status, mode in itertools.product(PairRole, PairStatus, MirrorMode):
        header = base.replace(role=role, status=status, mirror_mode=mode)
        decoded = decode_slot(encode_slot(header))
        assert decoded.pair == header.pair
        assert type(decoded.pair.status) is PairStatus
    for attributes in (Attr.NONE, Attr.READ_ONLY, Attr.HIDDEN, Attr.READ_ONLY | Attr.HIDDEN):
        assert decode_slot(encode_slot(base.replace(attributes=attributes))).info.attributes == (
            attributes
        )


@pytest.mark.parametrize(
    "changes",
    [
        {"label": "é" * 16},  # exactly 32 bytes, 16 characters
        {"label": "x" * 32, "serial": "s" * 16, "vendor": "v" * 8, "product": "p" * 16},
        {"label": "日本語ラベル"},
        {"vendor": "€€", "product": "🙂" * 4},
        {"block_size": 65536, "size": 65536},
        {"block_size": 512, "size": 512},
        {"size": (1 << 64) - 512},
        {"generation": (1 << 64) - 1, "ldev": 0xFFFF, "mirror_unit": 2},
    ],
)
def test_boundary_headers_round_trip(changes: dict[str, Any]) -> None:
    header = simple_header(**changes)
    assert decode_slot(encode_slot(header)) == header


# -- corruption ---------------------------------------------------------------


@settings(max_examples=200)
@given(
    headers,
    st.integers(min_value=0, max_value=USED - 1),
    st.integers(min_value=1, max_value=255),
)
def test_any_flipped_byte_in_used_part_is_detected(
    header: VolumeHeader, position: int, mask: int
) -> None:
    slot = bytearray(encode_slot(header))
    slot[position] ^= mask
    with pytest.raises(FormatError):
        decode_slot(bytes(slot))


def test_every_single_bit_flip_is_detected() -> None:
    slot = encode_slot(simple_header())
    for position in range(USED):
        for bit in range(8):
            damaged = bytearray(slot)
            damaged[position] ^= 1 << bit
            with pytest.raises(FormatError):
                decode_slot(bytes(damaged))


def check_only_format_error(data: bytes) -> VolumeHeader | None:
    try:
        return decode_slot(data)
    except FormatError:
        return None


@settings(max_examples=200, suppress_health_check=[HealthCheck.large_base_example])
@given(st.binary(min_size=SLOT_SIZE, max_size=SLOT_SIZE))
def test_random_slot_raises_only_format_error(data: bytes) -> None:
    check_only_format_error(data)


@settings(max_examples=200)
@given(st.binary(max_size=2 * SLOT_SIZE))
def test_random_length_raises_only_format_error(data: bytes) -> None:
    check_only_format_error(data)


@settings(max_examples=200, suppress_health_check=[HealthCheck.large_base_example])
@given(st.binary(min_size=SLOT_SIZE - len(MAGIC), max_size=SLOT_SIZE - len(MAGIC)))
def test_random_slot_with_magic_raises_only_format_error(rest: bytes) -> None:
    with pytest.raises(FormatError):  # unreadable text or CRC mismatch
        decode_slot(MAGIC + rest)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers,
    st.lists(
        st.tuples(
            st.integers(min_value=VERSION_OFFSET + 2, max_value=BODY - 1), st.integers(0, 255)
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_damage_with_matching_crc_raises_only_format_error(
    header: VolumeHeader, edits: list[tuple[int, int]]
) -> None:
    """Past the CRC check, bad fields still give FormatError, and anything that
    decodes is something encode_slot writes back byte for byte."""
    slot = bytearray(encode_slot(header))
    for position, value in edits:
        slot[position] = value
    data = with_crc(slot)
    decoded = check_only_format_error(data)
    if decoded is not None:
        assert encode_slot(decoded) == data


@settings(max_examples=200)
@given(st.binary(min_size=BODY - VERSION_OFFSET - 2, max_size=BODY - VERSION_OFFSET - 2))
def test_random_body_with_matching_crc_raises_only_format_error(body: bytes) -> None:
    data = with_crc(MAGIC + b"\x00\x01" + body + bytes(SLOT_SIZE - BODY))
    decoded = check_only_format_error(data)
    if decoded is not None:
        assert encode_slot(decoded) == data


def test_wrong_magic() -> None:
    slot = b"NOTAVOLM" + encode_slot(simple_header())[8:]
    message = format_error(slot)
    assert "magic" in message
    assert "NOTAVOLM" in message


@pytest.mark.parametrize("version", [0, 2, 0xFFFF])
def test_wrong_version(version: int) -> None:
    slot = bytearray(encode_slot(simple_header()))
    slot[VERSION_OFFSET : VERSION_OFFSET + 2] = version.to_bytes(2, "big")
    message = format_error(with_crc(slot))
    assert "version" in message
    assert str(version) in message


def test_crc_mismatch() -> None:
    slot = bytearray(encode_slot(simple_header()))
    slot[BODY] ^= 0xFF
    assert "CRC" in format_error(bytes(slot))


@pytest.mark.parametrize("length", [0, 1, 8, USED, SLOT_SIZE - 1])
def test_truncated_slot(length: int) -> None:
    message = format_error(encode_slot(simple_header())[:length])
    assert "truncated" in message
    assert str(length) in message


def test_all_zero_slot() -> None:
    assert "empty" in format_error(bytes(SLOT_SIZE))


def test_unknown_enum_value_with_matching_crc() -> None:
    slot = bytearray(encode_slot(simple_header()))
    slot[MIRROR_UNIT_OFFSET - 4] = 99  # pair status
    message = format_error(with_crc(slot))
    assert "00:1A" in message
    assert "99" in message


def test_mirror_unit_out_of_range_with_matching_crc() -> None:
    slot = bytearray(encode_slot(simple_header()))
    slot[MIRROR_UNIT_OFFSET] = 3
    assert "mirror unit" in format_error(with_crc(slot))


def test_invalid_info_with_matching_crc() -> None:
    slot = bytearray(encode_slot(simple_header()))
    size_offset = 8 + 2 + 8 + 2 + 16
    slot[size_offset : size_offset + 8] = (1000).to_bytes(8, "big")
    message = format_error(with_crc(slot))
    assert "00:1A" in message
    assert "block size" in message


def test_invalid_utf8_label_with_matching_crc() -> None:
    slot = bytearray(encode_slot(simple_header()))
    label_offset = 8 + 2 + 8 + 2 + 16 + 8 + 4
    slot[label_offset : label_offset + 2] = b"\xff\xfe"
    format_error(with_crc(slot))


# -- choose_slot --------------------------------------------------------------


@settings(max_examples=100)
@given(U64, U64)
def test_choose_slot_picks_higher_generation(gen_a: int, gen_b: int) -> None:
    a = simple_header(generation=gen_a, label="a")
    b = simple_header(generation=gen_b, label="b")
    best, problems = choose_slot([encode_slot(a), encode_slot(b)])
    assert problems == []
    assert best.generation == max(gen_a, gen_b)
    if gen_a != gen_b:
        assert best == (a if gen_a > gen_b else b)


@pytest.mark.parametrize("bad_index", [0, 1])
@pytest.mark.parametrize(
    "bad_slot",
    [bytes(SLOT_SIZE), b"\xff" * SLOT_SIZE, b"", "torn"],
    ids=["zero", "ff", "empty", "torn"],
)
def test_choose_slot_skips_a_bad_slot(bad_index: int, bad_slot: bytes | str) -> None:
    good = simple_header(generation=5)
    if bad_slot == "torn":
        # A newer header whose write was torn: it must lose to the older intact one.
        torn = bytearray(encode_slot(simple_header(generation=6)))
        torn[100:] = bytes(SLOT_SIZE - 100)
        bad_slot = bytes(torn)
    assert isinstance(bad_slot, bytes)
    slots = [encode_slot(good)] * 2
    slots[bad_index] = bad_slot
    best, problems = choose_slot(slots)
    assert best == good
    assert len(problems) == 1
    assert problems[0].startswith(f"slot {bad_index}:")


def test_choose_slot_both_bad() -> None:
    with pytest.raises(FormatError) as info:
        choose_slot([bytes(SLOT_SIZE), b"junk" * 1024])
    message = str(info.value)
    assert "slot 0" in message and "slot 1" in message
    assert "empty" in message and "magic" in message


def test_slot_for_generation_alternates() -> None:
    assert [slot_for_generation(g) for g in range(5)] == [0, 1, 0, 1, 0]


# -- validate_info / encode_slot refusals -------------------------------------


@pytest.mark.parametrize(
    ("info", "keyword"),
    [
        (VolumeInfo(size=1000, block_size=512), "multiple"),
        (VolumeInfo(size=4096 + 512, block_size=4096), "multiple"),
        (VolumeInfo(size=0), "positive"),
        (VolumeInfo(size=-512), "positive"),
        (VolumeInfo(size=3000, block_size=1000), "power of two"),
        (VolumeInfo(size=1536 * 4, block_size=1536), "power of two"),
        (VolumeInfo(size=1024, block_size=256), "power of two"),
        (VolumeInfo(size=1 << 17, block_size=1 << 17), "power of two"),
        (VolumeInfo(size=512, label="x" * 33), "label"),
        (VolumeInfo(size=512, label="é" * 17), "label"),  # 17 characters, 34 bytes
        (VolumeInfo(size=512, label="a\0b"), "label"),
        (VolumeInfo(size=512, serial="s" * 17), "serial"),
        (VolumeInfo(size=512, vendor="v" * 9), "vendor"),
        (VolumeInfo(size=512, product="p" * 17), "product"),
    ],
)
def test_validate_info_rejects(info: VolumeInfo, keyword: str) -> None:
    with pytest.raises(FormatError) as exc:
        validate_info(info)
    assert keyword in str(exc.value)
    header = VolumeHeader(generation=1, ldev=0, pvid=bytes(16), info=info)
    with pytest.raises(FormatError):
        encode_slot(header)


@settings(max_examples=200)
@given(volume_infos())
def test_validate_info_accepts_generated(info: VolumeInfo) -> None:
    validate_info(info)


def test_encode_slot_rejects_bad_pvid_and_mirror_unit() -> None:
    with pytest.raises(FormatError, match="PVID"):
        encode_slot(simple_header(pvid=bytes(15)))
    with pytest.raises(FormatError, match="mirror unit"):
        encode_slot(simple_header(mirror_unit=3))


# -- replace ------------------------------------------------------------------


def test_replace_edits_each_section() -> None:
    header = simple_header()
    changed = header.replace(
        generation=7, pvid=b"\x01" * 16, label="new", size=1 << 30, status=PairStatus.PAIR
    )
    assert changed.generation == 7
    assert changed.pvid == b"\x01" * 16
    assert changed.info == dataclasses.replace(header.info, label="new", size=1 << 30)
    assert changed.pair == dataclasses.replace(header.pair, status=PairStatus.PAIR)
    assert changed.ldev == header.ldev
    # The original is untouched.
    assert header == simple_header()
    assert header.replace() == header


def test_replace_rejects_unknown_fields() -> None:
    header = simple_header()
    with pytest.raises(TypeError) as info:
        header.replace(label="ok", colour="blue", size_gb=3)
    assert "colour" in str(info.value) and "size_gb" in str(info.value)
    assert header == simple_header()


# -- header_to_dict / header_from_dict ----------------------------------------


@settings(max_examples=200)
@given(headers)
def test_dict_round_trips_through_json(header: VolumeHeader) -> None:
    view = header_to_dict(header)
    assert header_from_dict(view) == header
    assert header_from_dict(json.loads(json.dumps(view))) == header


def test_dict_view_is_readable() -> None:
    header = simple_header(
        attributes=Attr.READ_ONLY | Attr.HIDDEN,
        role=PairRole.PVOL,
        status=PairStatus.COPY_RS,
        partner_ldev=0x0102,
        consistency_group=3,
    )
    view: Any = header_to_dict(header)
    assert view["ldev"] == "00:1A"
    assert view["pvid"] == bytes(range(16)).hex()
    assert view["info"]["attributes"] == ["READ_ONLY", "HIDDEN"]
    assert view["pair"]["role"] == "PVOL"
    assert view["pair"]["status"] == "COPY_RS"
    assert view["pair"]["partner_ldev"] == "01:02"
    assert view["pair"]["consistency_group"] == 3
    smpl: Any = header_to_dict(simple_header())
    assert smpl["pair"]["partner_ldev"] is None
    assert smpl["pair"]["consistency_group"] is None
    assert simple_header().pair.partner_ldev == NO_PARTNER
    assert simple_header().pair.consistency_group == NO_GROUP


def good_dict() -> dict[str, Any]:
    return json.loads(json.dumps(header_to_dict(simple_header())))


def _set(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = good_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def _drop(path: tuple[str, ...]) -> dict[str, Any]:
    data = good_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return data


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "header",
        {},
        _drop(("info",)),
        _drop(("pair",)),
        _drop(("ldev",)),
        _drop(("generation",)),
        _drop(("pvid",)),
        _drop(("info", "attributes")),
        _drop(("pair", "role")),
        _drop(("pair", "partner_ldev")),
        _drop(("info", "size")),
        _set(("info",), 5),
        _set(("info",), None),
        _set(("pair",), "SMPL"),
        _set(("ldev",), "zz"),
        _set(("ldev",), 26),
        _set(("ldev",), None),
        _set(("pvid",), "not hex"),
        _set(("pvid",), 12),
        _set(("generation",), "many"),
        _set(("generation",), None),
        _set(("generation",), float("inf")),
        _set(("generation",), float("nan")),
        _set(("info", "attributes"), ["READ_ONLY", "SHINY"]),
        _set(("info", "attributes"), 3),
        _set(("info", "attributes"), [["READ_ONLY"]]),
        _set(("info", "colour"), "blue"),
        _set(("pair", "role"), "MASTER"),
        _set(("pair", "role"), 1),
        _set(("pair", "status"), None),
        _set(("pair", "mirror_mode"), "sync"),
        _set(("pair", "partner_ldev"), "100:00"),
        _set(("pair", "partner_ldev"), 258),
        _set(("pair", "partner_ldev"), []),
        _set(("pair", "extra"), 1),
    ],
)
def test_header_from_dict_rejects_malformed(data: object) -> None:
    with pytest.raises(FormatError, match="malformed"):
        header_from_dict(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.sampled_from([float("inf"), float("-inf")])
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, sub in value.items():
            paths += _paths(sub, (*prefix, key))
    return paths


@settings(max_examples=200)
@given(st.data(), json_values)
def test_header_from_dict_with_any_field_replaced_raises_only_format_error(
    data: st.DataObject, replacement: Any
) -> None:
    view = good_dict()
    path = data.draw(st.sampled_from(_paths(view)))
    target = view
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = replacement
    try:
        header = header_from_dict(view)
    except FormatError:
        return
    assert isinstance(header, VolumeHeader)
