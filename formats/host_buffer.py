"""A host's disk-info buffer as stored on the host (DESIGN.md section 2).

The buffer is the host's cache of devices: device name -> (LDEV, PVID,
volume info). Like AIX's ODM or LVM's device cache it is persisted and stays
as it is until somebody refreshes it, which is exactly how a host ends up with
a stale PVID after a pair split. The whole file is rewritten on every change
(temp file, fsync, rename) and carries a CRC, so a reader sees either the old
or the new buffer, never a mixture.

Layout (big-endian)::

    magic "BEMUHBUF" | version u16 | host (64 bytes) | generation u64 | count u32
    count x entry: device (16 bytes) | ldev u16 | pvid (16) | volume info (InfoLayout)
    CRC-32 of everything before it
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import construct as c

from .errors import FormatError
from .volume_header import InfoLayout, VolumeInfo, info_from_parsed, validate_info

MAGIC = b"BEMUHBUF"
FORMAT_VERSION = 1
MAX_DEVICE_NAME = 16
MAX_HOST_NAME = 64


@dataclass(frozen=True)
class BufferEntry:
    """One device as the host knows it: name, physical name, identity, info."""

    device: str
    ldev: int
    pvid: bytes
    info: VolumeInfo


@dataclass(frozen=True)
class HostBufferData:
    """The whole buffer. ``generation`` grows with every save."""

    host: str
    generation: int = 0
    entries: tuple[BufferEntry, ...] = ()


_Entry = c.Struct(
    "device" / c.PaddedString(MAX_DEVICE_NAME, "utf8"),
    "ldev" / c.Int16ub,
    "pvid" / c.Bytes(16),
    "info" / InfoLayout,
)

_Body = c.Struct(
    "magic" / c.Bytes(8),
    "format_version" / c.Int16ub,
    "host" / c.PaddedString(MAX_HOST_NAME, "utf8"),
    "generation" / c.Int64ub,
    "count" / c.Int32ub,
    "entries" / c.Array(c.this.count, _Entry),
)

#: The file: body, then the CRC-32 of the body.
HostBufferFile = c.Struct("body" / c.RawCopy(_Body), "crc" / c.Int32ub, c.Terminated)


def _check_name(kind: str, value: str, limit: int) -> None:
    if not value or len(value.encode("utf8")) > limit or "\0" in value:
        raise FormatError(f"{kind} name {value!r} must be 1-{limit} bytes without NUL")


def encode_buffer(data: HostBufferData) -> bytes:
    _check_name("host", data.host, MAX_HOST_NAME)
    seen: set[str] = set()
    for entry in data.entries:
        _check_name("device", entry.device, MAX_DEVICE_NAME)
        if entry.device in seen:
            raise FormatError(f"device {entry.device!r} appears twice in the buffer")
        seen.add(entry.device)
        if len(entry.pvid) != 16:
            raise FormatError(f"device {entry.device!r}: PVID must be 16 bytes")
        validate_info(entry.info)
    try:
        body = _Body.build(
            {
                "magic": MAGIC,
                "format_version": FORMAT_VERSION,
                "host": data.host,
                "generation": data.generation,
                "count": len(data.entries),
                "entries": [
                    {
                        "device": e.device,
                        "ldev": e.ldev,
                        "pvid": e.pvid,
                        "info": dataclasses.asdict(e.info),
                    }
                    for e in data.entries
                ],
            }
        )
    except c.ConstructError as exc:
        raise FormatError(f"cannot encode the host buffer: {exc}") from None
    return body + zlib.crc32(body).to_bytes(4, "big")


def decode_buffer(data: bytes, *, name: str = "host buffer") -> HostBufferData:
    """Parse a buffer file; *name* (its path) is used in every error message."""
    fix = "run `blockemu host scan` to rebuild it from the array"
    if data[:8] != MAGIC:
        raise FormatError(f"{name}: not a blockemu host buffer (bad magic); {fix}")
    try:
        parsed = HostBufferFile.parse(data)
    except (c.ConstructError, UnicodeDecodeError) as exc:
        raise FormatError(f"{name}: unreadable ({str(exc).splitlines()[0]}); {fix}") from None
    if zlib.crc32(parsed.body.data) != parsed.crc:
        raise FormatError(f"{name}: CRC mismatch (corrupted); {fix}")
    v = parsed.body.value
    if v.format_version != FORMAT_VERSION:
        raise FormatError(
            f"{name}: format version {v.format_version}, this blockemu reads {FORMAT_VERSION}"
        )
    try:
        entries = tuple(
            BufferEntry(e.device, e.ldev, bytes(e.pvid), info_from_parsed(e.info))
            for e in v.entries
        )
        result = HostBufferData(v.host, v.generation, entries)
        encode_buffer(result)  # the same checks as on the way out
    except (ValueError, FormatError) as exc:
        raise FormatError(f"{name}: bad entry ({exc}); {fix}") from None
    return result
