"""The one exception every decoder in :mod:`formats` raises.

Decoders are fed bytes from disk and from the network, so anything can arrive.
Callers catch :class:`FormatError` alone; a construct error, a ``struct.error``
or a ``UnicodeDecodeError`` leaking out of a decoder is a bug.
"""

from __future__ import annotations


class FormatError(ValueError):
    """Bytes or text that do not match the declared layout.

    The message names the thing that is wrong (which field, which file, which
    line) and, where there is one, what to do about it.
    """
