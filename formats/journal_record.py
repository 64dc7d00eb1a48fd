"""The journal file of async mirroring: a header block, then records.

A journal file is laid out as::

    0                        4 KiB
    | header (zero padded)   | record | record | record | ...

Header (:data:`JournalFileHeader`, :data:`HEADER_BLOCK` bytes)::

    magic | version | ldev | applied_seq | base_offset | crc
      8        2        2        8             8          4   = 32 bytes, then zeros

* ``ldev`` is the P-VOL the journal belongs to.
* every record with ``seq <= applied_seq`` has been applied to the S-VOL.
* ``base_offset`` is the file offset of the first record that may still be
  unapplied; the records before it are not read again (compaction moves it).
* ``crc`` is the CRC-32 of the fields before it.

Record (:data:`RecordHeader`, :data:`RECORD_HEADER_SIZE` bytes, then ``length``
data bytes)::

    magic | seq | offset | length | timestamp | crc
      2      8      8        4         8         4   = 34 bytes

* ``offset`` is the volume offset of the write, ``timestamp`` Unix time in ns
  of the append.
* ``crc`` is the CRC-32 of the header fields before it followed by the data,
  so a torn record (short, or half old and half new bytes) is recognised.

Both layouts are declared once with construct; the journal's hot path packs
and unpacks them with :class:`struct.Struct` objects *derived* from those
declarations (:func:`formats.wire.struct_format`).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import construct as c

from .errors import FormatError
from .wire import struct_format

MAGIC = b"BEMUJRNL"
VERSION = 1
#: Bytes reserved for the header at the front of the file; records start here.
HEADER_BLOCK = 4096
RECORD_MAGIC = b"JR"

#: The header fields covered by the header CRC.
_JournalHeaderFields = c.Struct(
    "magic" / c.Const(MAGIC),
    "version" / c.Int16ub,
    "ldev" / c.Int16ub,
    "applied_seq" / c.Int64ub,
    "base_offset" / c.Int64ub,
)
#: The journal file header, declared with construct; :data:`JOURNAL_HEADER` follows it.
JournalFileHeader = c.Struct(*_JournalHeaderFields.subcons, "crc" / c.Int32ub)
#: The whole header block as it is on disk: the header, then zeros.
JournalHeaderBlock = c.Padded(HEADER_BLOCK, JournalFileHeader)

#: The record header fields covered by the record CRC (together with the data).
_RecordFields = c.Struct(
    "magic" / c.Const(RECORD_MAGIC),
    "seq" / c.Int64ub,
    "offset" / c.Int64ub,
    "length" / c.Int32ub,
    "timestamp" / c.Int64ub,
)
#: The record header, declared with construct; :data:`RECORD_HEADER` follows it.
RecordHeader = c.Struct(*_RecordFields.subcons, "crc" / c.Int32ub)

JOURNAL_HEADER = struct.Struct(struct_format(JournalFileHeader))
_JOURNAL_FIELDS = struct.Struct(struct_format(_JournalHeaderFields))
#: Bytes of the header block that carry data (the rest is zero padding).
JOURNAL_HEADER_SIZE = JOURNAL_HEADER.size

RECORD_HEADER = struct.Struct(struct_format(RecordHeader))
_RECORD_FIELDS = struct.Struct(struct_format(_RecordFields))
_CRC = struct.Struct(">I")
RECORD_HEADER_SIZE = RECORD_HEADER.size

assert JournalFileHeader.sizeof() == JOURNAL_HEADER_SIZE
assert RecordHeader.sizeof() == RECORD_HEADER_SIZE
assert _RECORD_FIELDS.size + _CRC.size == RECORD_HEADER_SIZE
assert _JOURNAL_FIELDS.size + _CRC.size == JOURNAL_HEADER_SIZE


@dataclass(frozen=True, slots=True)
class JournalHeader:
    """The decoded journal file header."""

    ldev: int
    applied_seq: int = 0
    base_offset: int = HEADER_BLOCK


class RecordInfo(NamedTuple):
    """A decoded record header; ``length`` data bytes follow it in the file."""

    seq: int
    offset: int
    length: int
    timestamp: int
    crc: int


def encode_journal_header(header: JournalHeader) -> bytes:
    """The header block (:data:`HEADER_BLOCK` bytes, zero padded) for *header*."""
    if header.base_offset < HEADER_BLOCK:
        raise FormatError(
            f"journal base offset {header.base_offset} is inside the header block "
            f"(records start at {HEADER_BLOCK})"
        )
    try:
        fields = _JOURNAL_FIELDS.pack(
            MAGIC, VERSION, header.ldev, header.applied_seq, header.base_offset
        )
    except struct.error as exc:
        raise FormatError(f"cannot encode journal header {header}: {exc}") from None
    return (fields + _CRC.pack(zlib.crc32(fields))).ljust(HEADER_BLOCK, b"\0")


def decode_journal_header(data: bytes, *, name: str = "journal") -> JournalHeader:
    """Parse the header block of the journal file *name* (used in every error)."""
    if len(data) < JOURNAL_HEADER_SIZE:
        raise FormatError(
            f"{name}: journal header truncated: {len(data)} of {JOURNAL_HEADER_SIZE} bytes; "
            "the file is not a complete blockemu journal"
        )
    magic, version, ldev, applied_seq, base_offset, crc = JOURNAL_HEADER.unpack_from(data)
    if magic != MAGIC:
        if not any(data[:JOURNAL_HEADER_SIZE]):
            raise FormatError(f"{name}: journal header is empty (all zero)")
        raise FormatError(
            f"{name}: bad magic {bytes(magic)!r}, expected {MAGIC!r}: not a blockemu journal"
        )
    if zlib.crc32(data[: _JOURNAL_FIELDS.size]) != crc:
        raise FormatError(f"{name}: journal header CRC mismatch (corrupted header)")
    if version != VERSION:
        raise FormatError(
            f"{name}: journal version {version} is not supported (this blockemu reads "
            f"version {VERSION}); use a matching blockemu release"
        )
    if base_offset < HEADER_BLOCK:
        raise FormatError(
            f"{name}: journal base offset {base_offset} is inside the header block "
            f"(records start at {HEADER_BLOCK})"
        )
    return JournalHeader(ldev=ldev, applied_seq=applied_seq, base_offset=base_offset)


def encode_record_header(seq: int, offset: int, data: bytes | memoryview, timestamp: int) -> bytes:
    """The record header for *data*; write the data right after it."""
    try:
        fields = _RECORD_FIELDS.pack(RECORD_MAGIC, seq, offset, len(data), timestamp)
    except struct.error as exc:
        raise FormatError(
            f"cannot encode journal record seq {seq} offset {offset} length {len(data)}: {exc}"
        ) from None
    return fields + _CRC.pack(zlib.crc32(data, zlib.crc32(fields)))


def decode_record_header(data: bytes, *, name: str = "journal record") -> RecordInfo:
    """Unpack a record header (the CRC is checked by :func:`decode_record`).

    *name* says where the bytes come from (file and position) in the error.
    """
    if len(data) < RECORD_HEADER_SIZE:
        raise FormatError(
            f"{name}: record header truncated: {len(data)} of {RECORD_HEADER_SIZE} bytes"
        )
    magic, seq, offset, length, timestamp, crc = RECORD_HEADER.unpack_from(data)
    if magic != RECORD_MAGIC:
        raise FormatError(f"{name}: bad record magic {bytes(magic)!r}, expected {RECORD_MAGIC!r}")
    return RecordInfo(seq, offset, length, timestamp, crc)


def decode_record(
    data: bytes | bytearray | memoryview, *, name: str = "journal record"
) -> tuple[RecordInfo, bytes]:
    """Check and split one whole record (header and data); returns the header and data.

    Raises :class:`FormatError` for a short record or a CRC mismatch (a torn
    or corrupted record). Bytes after the record are ignored.
    """
    info = decode_record_header(bytes(data[:RECORD_HEADER_SIZE]), name=name)
    end = RECORD_HEADER_SIZE + info.length
    if len(data) < end:
        raise FormatError(
            f"{name}: record seq {info.seq} truncated: {len(data) - RECORD_HEADER_SIZE} of "
            f"{info.length} data bytes"
        )
    payload = bytes(data[RECORD_HEADER_SIZE:end])
    crc = zlib.crc32(payload, zlib.crc32(data[: _RECORD_FIELDS.size]))
    if crc != info.crc:
        raise FormatError(f"{name}: record seq {info.seq} CRC mismatch (torn or corrupted write)")
    return info, payload
