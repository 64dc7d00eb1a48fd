"""The header at the front of every volume file.

A volume file is laid out as::

    0        4 KiB    8 KiB                     1 MiB                1 MiB + size
    | slot 0 | slot 1 | (reserved, zero)        | data ...           |

Each slot holds a complete header followed by a CRC-32 of it. A header update
writes the *other* slot (the one with the older generation) and fsyncs, so a
crash or torn write damages at most the slot being written and the previous
header survives in the other one. On read, the valid slot with the highest
generation wins (:func:`choose_slot`).

Data starts at :data:`DATA_OFFSET` (1 MiB) so that it is aligned for any
block size and for O_DIRECT on the backing file.
"""

from __future__ import annotations

import dataclasses
import enum
import zlib
from dataclasses import dataclass

import construct as c

from .errors import FormatError
from .units import format_ldev

MAGIC = b"BLKEMUVH"
FORMAT_VERSION = 1
SLOT_SIZE = 4096
SLOT_OFFSETS = (0, SLOT_SIZE)
DATA_OFFSET = 1 << 20
NO_GROUP = 0xFFFF  # consistency_group value for "not in a group"
NO_PARTNER = 0xFFFF  # partner_ldev value for SMPL volumes


class PairRole(enum.IntEnum):
    """Which side of a pair this volume is; SIMPLEX when it is in none."""

    SIMPLEX = 0
    PVOL = 1
    SVOL = 2


class PairStatus(enum.IntEnum):
    """Pair states as CCI users know them (DESIGN.md section 3)."""

    SMPL = 0
    COPY = 1
    PAIR = 2
    COPY_SP = 3  # steady split flushing
    PSUS = 4
    COPY_RS = 5
    COPY_RS_R = 6
    PSUE = 7


class MirrorMode(enum.IntEnum):
    """How P-VOL writes reach the S-VOL while paired."""

    SYNC = 0
    ASYNC = 1
    DEFERRED = 2


class Attr(enum.IntFlag):
    """Volume attributes a host can see."""

    NONE = 0
    READ_ONLY = 1
    HIDDEN = 2  # a paired S-VOL: not shown to hosts, host I/O refused


@dataclass(frozen=True)
class VolumeInfo:
    """What a host needs besides the PVID to use the volume.

    ``size`` counts data bytes only (the header area is not part of it) and
    must be a multiple of ``block_size``. ``created`` is Unix time in ns.
    """

    size: int
    block_size: int = 512
    label: str = ""
    serial: str = ""
    created: int = 0
    vendor: str = "BLOCKEMU"
    product: str = "OPEN-V"
    attributes: Attr = Attr.NONE


@dataclass(frozen=True)
class PairInfo:
    """This volume's side of an in-array pair; all defaults mean SMPL.

    ``mirror_unit`` is CCI's MU# (0-2). ``split_time`` is Unix time in ns of
    the last split, 0 if never split.
    """

    role: PairRole = PairRole.SIMPLEX
    status: PairStatus = PairStatus.SMPL
    partner_ldev: int = NO_PARTNER
    mirror_mode: MirrorMode = MirrorMode.SYNC
    mirror_unit: int = 0
    consistency_group: int = NO_GROUP
    split_time: int = 0


@dataclass(frozen=True)
class VolumeHeader:
    """One complete header: identity, volume info and pair section.

    ``generation`` grows by one on every update; it decides which slot is
    newer. ``ldev`` is the array's permanent name for the volume, ``pvid``
    the 16-byte identity hosts recognise it by, which changes on split.
    """

    generation: int
    ldev: int
    pvid: bytes
    info: VolumeInfo
    pair: PairInfo = dataclasses.field(default_factory=PairInfo)

    def replace(self, **changes: object) -> VolumeHeader:
        """A copy with *changes* applied to the header, its info or its pair.

        Keys are looked up in that order, so ``replace(label="x")`` edits
        ``info.label`` and ``replace(status=PairStatus.PAIR)`` edits the pair.
        """
        top = {k: v for k, v in changes.items() if k in _HEADER_FIELDS}
        info = {k: v for k, v in changes.items() if k in _INFO_FIELDS}
        pair = {k: v for k, v in changes.items() if k in _PAIR_FIELDS}
        unknown = set(changes) - set(top) - set(info) - set(pair)
        if unknown:
            raise TypeError(f"VolumeHeader has no field(s) {sorted(unknown)}")
        return dataclasses.replace(
            self,
            **top,  # type: ignore[arg-type]
            info=dataclasses.replace(self.info, **info),  # type: ignore[arg-type]
            pair=dataclasses.replace(self.pair, **pair),  # type: ignore[arg-type]
        )


_HEADER_FIELDS = {"generation", "ldev", "pvid"}
_INFO_FIELDS = {f.name for f in dataclasses.fields(VolumeInfo)}
_PAIR_FIELDS = {f.name for f in dataclasses.fields(PairInfo)}


def _text(n: int) -> c.Construct:
    return c.PaddedString(n, "utf8")


_Info = c.Struct(
    "size" / c.Int64ub,
    "block_size" / c.Int32ub,
    "label" / _text(32),
    "serial" / _text(16),
    "created" / c.Int64ub,
    "vendor" / _text(8),
    "product" / _text(16),
    "attributes" / c.Int32ub,
)

#: The volume info layout, shared with other files that store volume info (host buffers).
InfoLayout = _Info


def info_from_parsed(parsed: c.Container) -> VolumeInfo:
    """A VolumeInfo from a parsed :data:`InfoLayout` (ValueError on a bad attribute)."""
    return VolumeInfo(
        size=parsed.size,
        block_size=parsed.block_size,
        label=parsed.label,
        serial=parsed.serial,
        created=parsed.created,
        vendor=parsed.vendor,
        product=parsed.product,
        attributes=Attr(parsed.attributes),
    )


_Pair = c.Struct(
    "role" / c.Int8ub,
    "status" / c.Int8ub,
    "partner_ldev" / c.Int16ub,
    "mirror_mode" / c.Int8ub,
    "mirror_unit" / c.Int8ub,
    "consistency_group" / c.Int16ub,
    "split_time" / c.Int64ub,
)

_Body = c.Struct(
    "magic" / c.Bytes(8),
    "format_version" / c.Int16ub,
    "generation" / c.Int64ub,
    "ldev" / c.Int16ub,
    "pvid" / c.Bytes(16),
    "info" / _Info,
    "pair" / _Pair,
)

#: One header slot: the body, its CRC-32, zero padding to :data:`SLOT_SIZE`.
HeaderSlot = c.Padded(
    SLOT_SIZE,
    c.Struct(
        "body" / c.RawCopy(_Body),
        "crc" / c.Int32ub,
    ),
)

_MIN_BLOCK, _MAX_BLOCK = 512, 1 << 16
MAX_MIRROR_UNIT = 2


def validate_info(info: VolumeInfo) -> None:
    """Refuse volume info no array would accept; the message says what would work."""
    bs = info.block_size
    if bs < _MIN_BLOCK or bs > _MAX_BLOCK or bs & (bs - 1):
        raise FormatError(f"block size {bs} is not supported: use a power of two from 512 to 65536")
    if info.size <= 0 or info.size % bs:
        raise FormatError(
            f"volume size {info.size} is not a positive multiple of the block size {bs}: "
            f"round it to a multiple of {bs}"
        )
    for name, limit in (("label", 32), ("serial", 16), ("vendor", 8), ("product", 16)):
        value = getattr(info, name)
        if len(value.encode("utf8")) > limit or "\0" in value:
            raise FormatError(f"volume {name} {value!r} is too long: at most {limit} bytes")


def encode_slot(header: VolumeHeader) -> bytes:
    """Bytes of one slot (exactly :data:`SLOT_SIZE`) holding *header*."""
    if len(header.pvid) != 16:
        raise FormatError(f"PVID must be 16 bytes, got {len(header.pvid)}")
    validate_info(header.info)
    if not 0 <= header.pair.mirror_unit <= MAX_MIRROR_UNIT:
        raise FormatError(f"mirror unit {header.pair.mirror_unit} outside 0-{MAX_MIRROR_UNIT}")
    body = _Body.build(
        {
            "magic": MAGIC,
            "format_version": FORMAT_VERSION,
            "generation": header.generation,
            "ldev": header.ldev,
            "pvid": header.pvid,
            "info": dataclasses.asdict(header.info),
            "pair": dataclasses.asdict(header.pair),
        }
    )
    slot = body + zlib.crc32(body).to_bytes(4, "big")
    return slot.ljust(SLOT_SIZE, b"\0")


def decode_slot(data: bytes) -> VolumeHeader:
    """Parse one slot; :class:`FormatError` says why it is not a valid header."""
    if len(data) < SLOT_SIZE:
        raise FormatError(f"header slot truncated: {len(data)} of {SLOT_SIZE} bytes")
    if data[:8] != MAGIC:
        if not any(data[:SLOT_SIZE]):
            raise FormatError("header slot is empty (all zero)")
        raise FormatError(f"bad magic {data[:8]!r}, expected {MAGIC!r}: not a blockemu volume")
    try:
        parsed = HeaderSlot.parse(data[:SLOT_SIZE])
    except (c.ConstructError, UnicodeDecodeError) as exc:
        raise FormatError(f"header slot unreadable: {exc}") from None
    body = parsed.body
    if zlib.crc32(body.data) != parsed.crc:
        raise FormatError("header slot CRC mismatch (torn or corrupted write)")
    v = body.value
    if v.format_version != FORMAT_VERSION:
        raise FormatError(
            f"header format version {v.format_version} is not supported "
            f"(this blockemu reads version {FORMAT_VERSION}); use a matching blockemu release"
        )
    try:
        info = info_from_parsed(v.info)
        pair = PairInfo(
            role=PairRole(v.pair.role),
            status=PairStatus(v.pair.status),
            partner_ldev=v.pair.partner_ldev,
            mirror_mode=MirrorMode(v.pair.mirror_mode),
            mirror_unit=v.pair.mirror_unit,
            consistency_group=v.pair.consistency_group,
            split_time=v.pair.split_time,
        )
    except ValueError as exc:
        raise FormatError(f"header of LDEV {format_ldev(v.ldev)} has a bad field: {exc}") from None
    header = VolumeHeader(
        generation=v.generation, ldev=v.ldev, pvid=bytes(v.pvid), info=info, pair=pair
    )
    try:
        validate_info(info)
    except FormatError as exc:
        raise FormatError(f"header of LDEV {format_ldev(v.ldev)}: {exc}") from None
    if pair.mirror_unit > MAX_MIRROR_UNIT:  # encode_slot refuses it: could never be rewritten
        raise FormatError(
            f"header of LDEV {format_ldev(v.ldev)}: mirror unit {pair.mirror_unit} "
            f"outside 0-{MAX_MIRROR_UNIT}"
        )
    return header


def choose_slot(slots: list[bytes]) -> tuple[VolumeHeader, list[str]]:
    """The newest valid header among *slots*, and why any other slot was skipped.

    Raises :class:`FormatError` naming each slot's problem when none is valid.
    """
    best: VolumeHeader | None = None
    problems: list[str] = []
    for index, data in enumerate(slots):
        try:
            header = decode_slot(data)
        except FormatError as exc:
            problems.append(f"slot {index}: {exc}")
            continue
        if best is None or header.generation > best.generation:
            best = header
    if best is None:
        raise FormatError("no valid header slot (" + "; ".join(problems) + ")")
    return best, problems


def slot_for_generation(generation: int) -> int:
    """Slot index a header of *generation* is written to; alternates 0, 1, 0, ..."""
    return generation % 2


def header_to_dict(header: VolumeHeader) -> dict[str, object]:
    """A JSON-ready view of *header*: enums by name, PVID and LDEV as text."""
    info = dataclasses.asdict(header.info)
    info["attributes"] = [a.name for a in Attr if a and a in header.info.attributes]
    pair = dataclasses.asdict(header.pair)
    pair["role"] = header.pair.role.name
    pair["status"] = header.pair.status.name
    pair["mirror_mode"] = header.pair.mirror_mode.name
    pair["partner_ldev"] = (
        None if header.pair.partner_ldev == NO_PARTNER else format_ldev(header.pair.partner_ldev)
    )
    if header.pair.consistency_group == NO_GROUP:
        pair["consistency_group"] = None
    return {
        "ldev": format_ldev(header.ldev),
        "pvid": header.pvid.hex(),
        "generation": header.generation,
        "info": info,
        "pair": pair,
    }


def header_from_dict(data: object) -> VolumeHeader:
    """Inverse of :func:`header_to_dict`; FormatError for anything malformed."""
    from .units import parse_ldev

    try:
        assert isinstance(data, dict)
        info = dict(data["info"])
        info["attributes"] = Attr(0)
        for name in data["info"]["attributes"]:
            info["attributes"] |= Attr[name]
        pair = dict(data["pair"])
        pair["role"] = PairRole[pair["role"]]
        pair["status"] = PairStatus[pair["status"]]
        pair["mirror_mode"] = MirrorMode[pair["mirror_mode"]]
        partner = pair["partner_ldev"]
        pair["partner_ldev"] = NO_PARTNER if partner is None else parse_ldev(partner)
        if pair["consistency_group"] is None:
            pair["consistency_group"] = NO_GROUP
        return VolumeHeader(
            generation=int(data["generation"]),
            ldev=parse_ldev(data["ldev"]),
            pvid=bytes.fromhex(data["pvid"]),
            info=VolumeInfo(**info),
            pair=PairInfo(**pair),
        )
    except (AssertionError, AttributeError, KeyError, OverflowError, TypeError, ValueError) as exc:
        raise FormatError(f"malformed volume header description: {exc!r}") from None
