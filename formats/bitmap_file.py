"""The differential bitmap file: which tracks of a volume changed (one bit each).

In-array replication keeps one such file per volume and pair side. It is laid
out as::

    0                   4 KiB                          4 KiB + ceil(tracks / 8)
    | header, zero pad  | bits ...                     |

The header (:data:`HEADER_SIZE` bytes) holds, big-endian: the magic
``b"BEMUBMAP"``, the format version (u16), ``track_size`` in bytes (u32),
``tracks`` (u64), the volume's LDEV (u16), the role byte (0 = P-VOL side,
1 = S-VOL side), then a CRC-32 of those fields, then zeros up to 4 KiB. It is
written once, when the file is created, and never changes.

The bits start at :data:`BITS_OFFSET` (4 KiB, so that they begin on a page of
their own and can be memory-mapped apart from the header) and take
``ceil(tracks / 8)`` bytes. Track *i* of the volume is bit ``i % 8`` (LSB
first) of byte ``i // 8``. Bits past the last track, in the last byte, are
always zero.

There is no CRC over the bits, on purpose. They change on every host write
(through a shared memory mapping, without a system call), so a checksum would
have to be recomputed and rewritten on every write, and any crash between the
two would make the whole bitmap look corrupt. Nothing is gained either: the
writer sets a bit *before* it issues the data write the bit records, and the
copier clears a bit only once its track is copied, so a crashed process can
only leave bits set that should be set (or were about to be cleared). That
costs a track copied again, never a change missed. (Power loss is different:
bits set since the last flush may be lost; see :mod:`blockemu.bitmap`.) What a
checksum would catch, damage from outside, is rare enough to be handled by the
full copy that deleting the file forces.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass

import construct as c

from .errors import FormatError

MAGIC = b"BEMUBMAP"
FORMAT_VERSION = 1
HEADER_SIZE = 4096
BITS_OFFSET = HEADER_SIZE

#: Track sizes a bitmap may declare: a multiple of 512 bytes (a sector) from
#: 512 bytes to 1 GiB. 48 KiB (OPEN-3 tracks) is allowed, so is 256 KiB (OPEN-V).
MIN_TRACK_SIZE = 512
MAX_TRACK_SIZE = 1 << 30
MAX_LDEV = 0xFFFF


class BitmapRole(enum.IntEnum):
    """Which side of a pair the bitmap records writes of."""

    PVOL = 0
    SVOL = 1


@dataclass(frozen=True)
class BitmapHeader:
    """The fixed description of one bitmap file."""

    track_size: int
    tracks: int
    ldev: int
    role: BitmapRole

    @property
    def bits_size(self) -> int:
        """Bytes of bits after the header: ``ceil(tracks / 8)``."""
        return (self.tracks + 7) // 8

    @property
    def file_size(self) -> int:
        """Exact size of a bitmap file with this header."""
        return BITS_OFFSET + self.bits_size


_Body = c.Struct(
    "magic" / c.Bytes(8),
    "format_version" / c.Int16ub,
    "track_size" / c.Int32ub,
    "tracks" / c.Int64ub,
    "ldev" / c.Int16ub,
    "role" / c.Int8ub,
)

#: The header block: the body, its CRC-32, zero padding to :data:`HEADER_SIZE`.
HeaderBlock = c.Padded(
    HEADER_SIZE,
    c.Struct(
        "body" / c.RawCopy(_Body),
        "crc" / c.Int32ub,
    ),
)


def _check_fields(track_size: int, tracks: int, ldev: int, role: int) -> str | None:
    """Why these header fields are not acceptable, or None if they are."""
    if track_size % MIN_TRACK_SIZE or not MIN_TRACK_SIZE <= track_size <= MAX_TRACK_SIZE:
        return (
            f"track size {track_size} is not supported: use a multiple of {MIN_TRACK_SIZE} "
            f"from {MIN_TRACK_SIZE} to {MAX_TRACK_SIZE}"
        )
    if tracks < 1:
        return f"track count {tracks} is not positive"
    if (tracks - 1) * track_size >= 1 << 64:
        return f"{tracks} tracks of {track_size} bytes exceed the largest volume (2^64 bytes)"
    if not 0 <= ldev <= MAX_LDEV:
        return f"LDEV {ldev} outside 0-{MAX_LDEV}"
    if role not in tuple(BitmapRole):
        return f"role {role} is neither 0 (P-VOL) nor 1 (S-VOL)"
    return None


def validate_bitmap_header(header: BitmapHeader) -> None:
    """Refuse a header no bitmap file may carry; the message says what would work."""
    problem = _check_fields(header.track_size, header.tracks, header.ldev, header.role)
    if problem:
        raise FormatError(problem)


def encode_bitmap_header(header: BitmapHeader) -> bytes:
    """The header block (exactly :data:`HEADER_SIZE` bytes) for *header*."""
    validate_bitmap_header(header)
    body = _Body.build(
        {
            "magic": MAGIC,
            "format_version": FORMAT_VERSION,
            "track_size": header.track_size,
            "tracks": header.tracks,
            "ldev": header.ldev,
            "role": int(header.role),
        }
    )
    block = body + zlib.crc32(body).to_bytes(4, "big")
    return block.ljust(HEADER_SIZE, b"\0")


def decode_bitmap_header(data: bytes, *, name: str) -> BitmapHeader:
    """Parse the header block at the start of *data* (the bits may follow; they are ignored).

    *name* (usually the file's path) is used in error messages. Raises
    :class:`FormatError`, and only that, for anything that is not a valid header.
    """
    fix = (
        "the record of changed tracks is lost: delete the file and resynchronise the pair "
        "with a full copy"
    )
    if len(data) < HEADER_SIZE:
        raise FormatError(
            f"{name}: {len(data)} bytes, a bitmap file has at least a {HEADER_SIZE}-byte "
            f"header; {fix}"
        )
    if data[:8] != MAGIC:
        raise FormatError(f"{name}: bad magic {bytes(data[:8])!r}, not a blockemu bitmap; {fix}")
    try:
        parsed = HeaderBlock.parse(bytes(data[:HEADER_SIZE]))
    except c.ConstructError as exc:  # cannot happen with 4096 bytes, but never leak it
        raise FormatError(f"{name}: header unreadable ({exc}); {fix}") from None
    if zlib.crc32(parsed.body.data) != parsed.crc:
        raise FormatError(f"{name}: header CRC mismatch (corrupted); {fix}")
    v = parsed.body.value
    if v.format_version != FORMAT_VERSION:
        raise FormatError(
            f"{name}: bitmap format version {v.format_version} is not supported "
            f"(this blockemu reads version {FORMAT_VERSION}); use a matching blockemu release"
        )
    problem = _check_fields(v.track_size, v.tracks, v.ldev, v.role)
    if problem:
        raise FormatError(f"{name}: {problem}; {fix}")
    return BitmapHeader(
        track_size=v.track_size, tracks=v.tracks, ldev=v.ldev, role=BitmapRole(v.role)
    )
