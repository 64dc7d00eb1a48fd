"""Every on-disk and on-wire layout of blockemu and nodeagent.

Bytes in, objects out; this package imports nothing else of ours. Each
decoder raises :class:`FormatError` (and only that) for bad input.
"""

from .errors import FormatError as FormatError
from .units import format_ldev as format_ldev
from .units import format_size as format_size
from .units import parse_ldev as parse_ldev
from .units import parse_size as parse_size
