"""Human sizes (``10G``, ``512M``, ``4096``) and LDEV names (``00:1A``).

Both appear on command lines and in config files, so they live with the other
formats and raise :class:`~formats.errors.FormatError` with a message that
shows an example of what is accepted.
"""

from __future__ import annotations

import re

from .errors import FormatError

_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:([KMGTP])(?:iB?|B)?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str) -> int:
    """Parse a byte count; suffixes K, M, G, T, P are powers of 1024.

    ``10G``, ``10GiB`` and ``10g`` all mean 10 * 2**30, as ``truncate`` and
    ``losetup`` users expect of block-device sizes.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise FormatError(
            f"bad size {text!r}: expected a number with an optional K/M/G/T/P suffix, e.g. 10G"
        )
    return int(m.group(1)) * _UNITS[(m.group(2) or "").upper()]


def format_size(n: int) -> str:
    """The shortest exact spelling of *n* (``1073741824`` -> ``1G``)."""
    for suffix in ("P", "T", "G", "M", "K"):
        unit = _UNITS[suffix]
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


_LDEV_RE = re.compile(r"^([0-9A-Fa-f]{1,2}):([0-9A-Fa-f]{1,2})$")


def parse_ldev(text: str) -> int:
    """Parse an LDEV physical name ``CU:LDEV`` (hex, e.g. ``00:1A``) to 0..65535.

    Plain decimal (``26``) and ``0x001A`` are accepted too, as CCI does in
    HORCM_LDEV lines.
    """
    s = text.strip()
    m = _LDEV_RE.match(s)
    if m:
        return int(m.group(1), 16) << 8 | int(m.group(2), 16)
    try:
        value = int(s, 16) if s.lower().startswith("0x") else int(s, 10)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFFFF:
        raise FormatError(
            f"bad LDEV {text!r}: expected CU:LDEV in hex (e.g. 00:1A), "
            "a decimal number 0-65535, or 0x001A"
        )
    return value


def format_ldev(ldev: int) -> str:
    """``26`` -> ``00:1A``: the name arrays print and users type."""
    return f"{ldev >> 8:02X}:{ldev & 0xFF:02X}"
