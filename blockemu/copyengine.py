"""Copy a byte range between two files inside the array, keeping holes holes.

Pair form, resync and restore copy a volume's data from one volume file to
another. Volume data sits at the same file offset in both files, so a copy is
"make ``dst[offset:offset+length]`` equal ``src[offset:offset+length]``".
Volume files are sparse, and a copy must keep them sparse: a hole in the
source becomes a hole in the destination (punched, since the destination may
hold old data there), and only data is moved.

Why it is done this way (measured on this machine, research/limits.md §1b: a
4 GiB file with 1 GiB of data, root filesystem ext4, fsync of dst included):

* ``os.copy_file_range`` over the whole 4 GiB range: 11.2 s, and the
  destination ends up with all 4 GiB allocated. On ext4 the kernel copies
  holes as zeros through the page cache, so it is 5.5x slower and densifies.
* walking the source with ``SEEK_DATA``/``SEEK_HOLE`` and calling
  ``copy_file_range`` per data extent: 2.0 s, 1 GiB allocated, the same time
  as ``cp --sparse=always`` (2.0 s). That is :class:`SparseCopy`.
* one ``copy_file_range`` call copies at most 2 GiB - 4 KiB (the kernel's
  per-call cap) and may copy less, so every copy loops until done.
* ext4 here cannot reflink (``cp --reflink=always``: "Operation not
  supported"). On an XFS image made with ``mkfs.xfs -m reflink=1``, cloning
  the same file took 8 ms. :class:`ReflinkCopy` clones block-aligned data
  extents with ``FICLONERANGE`` and falls back to :class:`SparseCopy` for the
  unaligned head and tail of a range, or wherever cloning is refused.

Neither engine reads data into Python or looks for zeros: holes are found by
the filesystem (``SEEK_HOLE``), data moves inside the kernel. The only
exception is a plain ``pread``/``pwrite`` loop in 1 MiB chunks when the kernel
refuses ``copy_file_range`` between the two files (e.g. different filesystems).

Neither engine syncs: call ``os.fdatasync(dst)`` when the copy must be durable.
Neither engine locks: the caller keeps writers off the range while it copies.
:func:`data_extents` moves the file position of *src* (``lseek``); blockemu uses
``pread``/``pwrite`` everywhere, so the position does not matter.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import tempfile
from collections.abc import Iterator
from typing import Protocol

from .fileio import punch_hole

log = logging.getLogger(__name__)

# ioctl FICLONERANGE = _IOW(0x94, 13, struct file_clone_range), from <linux/fs.h>:
# struct file_clone_range { __s64 src_fd; __u64 src_offset; __u64 src_length; __u64 dest_offset; }
FICLONERANGE = 0x4020940D
_CLONE_RANGE = struct.Struct("=qQQQ")

# Bytes asked of one copy_file_range call. The kernel caps a call at 2 GiB - 4 KiB
# anyway; asking for 1 GiB keeps each call short. Read at call time (tests shrink it).
COPY_CHUNK = 1 << 30
# Chunk of the pread/pwrite fallback.
_FALLBACK_CHUNK = 1 << 20

# copy_file_range errors that mean "not between these two files", not "I/O failed".
_CFR_UNSUPPORTED = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})
# FICLONERANGE errors after which cloning is pointless for the rest of a copy.
# (EINVAL, e.g. a range the filesystem will not clone, only skips that one extent.)
_CLONE_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.ENOSYS})


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of data (non-hole) extents within ``[start, end)``, in order.

    Uses ``os.lseek`` with ``SEEK_DATA``/``SEEK_HOLE`` (``ENXIO``: no more data).
    Extents are clipped to ``[start, end)``; anything past the end of the file is
    a hole. Filesystems without hole tracking report the whole file as data.
    """
    pos = max(start, 0)
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            raise
        if data >= end:
            return
        try:
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: the file shrank under us
                raise
            return
        hole = min(hole, end)
        if hole <= data:  # cannot happen unless the file changes under us
            return
        yield data, hole - data
        pos = hole


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"bad copy range: offset {offset} length {length}")


def _pread_pwrite(src: int, dst: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        buf = os.pread(src, min(_FALLBACK_CHUNK, end - offset), offset)
        if not buf:
            raise OSError(errno.EIO, f"source ends at {offset}, inside a data extent")
        view = memoryview(buf)
        while view:
            n = os.pwrite(dst, view, offset)
            view = view[n:]
            offset += n


def copy_data(src: int, dst: int, offset: int, length: int) -> None:
    """Copy ``[offset, offset+length)`` of *src* to the same offsets in *dst*, as data.

    ``os.copy_file_range`` in a loop (a call copies at most ~2 GiB and may copy
    less). Only call it on data extents: on ext4 it writes zeros for holes.
    """
    end = offset + length
    while offset < end:
        try:
            n = os.copy_file_range(
                src, dst, min(COPY_CHUNK, end - offset), offset_src=offset, offset_dst=offset
            )
        except OSError as exc:
            if exc.errno not in _CFR_UNSUPPORTED:
                raise
            log.debug("copy_file_range refused (%s); copying with pread/pwrite", exc)
            _pread_pwrite(src, dst, offset, end - offset)
            return
        if n == 0:
            raise OSError(errno.EIO, f"source ends at {offset}, inside a data extent")
        offset += n


class CopyEngine(Protocol):
    """How :mod:`blockemu` copies a range of one volume file onto another."""

    name: str  # "reflink" or "sparse"

    def copy(self, src: int, dst: int, offset: int, length: int) -> int:
        """Make ``dst[offset:offset+length]`` equal ``src[offset:offset+length]``.

        Holes in *src* become holes in *dst*; data is copied (or shared). Returns
        the bytes of data in the range (holes not counted).
        """
        ...


class SparseCopy:
    """SEEK_DATA/SEEK_HOLE walk; ``copy_file_range`` per data extent; holes punched."""

    name = "sparse"

    def copy(self, src: int, dst: int, offset: int, length: int) -> int:
        _check_range(offset, length)
        end = offset + length
        pos = offset
        copied = 0
        for data, size in data_extents(src, offset, end):
            punch_hole(dst, pos, data - pos)
            copy_data(src, dst, data, size)
            copied += size
            pos = data + size
        punch_hole(dst, pos, end - pos)
        return copied

    def __repr__(self) -> str:
        return "SparseCopy()"


def clone_range(src: int, dst: int, offset: int, length: int) -> None:
    """``FICLONERANGE``: share *src*'s blocks at the same offsets in *dst*.

    *offset* and *length* must be multiples of the filesystem block size.
    Raises ``OSError`` (``EOPNOTSUPP``, ``EXDEV``, ``EINVAL``...) when the
    filesystem cannot do it.
    """
    fcntl.ioctl(dst, FICLONERANGE, _CLONE_RANGE.pack(src, offset, length, offset))


class ReflinkCopy:
    """Clone block-aligned data extents (FICLONERANGE), punch holes, copy the rest.

    Each data extent is widened to whole filesystem blocks (the bytes it gains
    are in the same blocks, so sharing them is still exact) and clipped to the
    block-aligned core of the range. The unaligned head and tail of the range,
    less than a block each, go through :class:`SparseCopy`, as does any extent
    the filesystem refuses to clone.
    """

    name = "reflink"

    def __init__(self) -> None:
        self._sparse = SparseCopy()

    def copy(self, src: int, dst: int, offset: int, length: int) -> int:
        _check_range(offset, length)
        end = offset + length
        bs = os.fstatvfs(dst).f_bsize
        core_start = -(-offset // bs) * bs
        core_end = end // bs * bs
        if core_start >= core_end:
            return self._sparse.copy(src, dst, offset, length)
        copied = self._sparse.copy(src, dst, offset, core_start - offset)
        copied += self._copy_core(src, dst, core_start, core_end, bs)
        copied += self._sparse.copy(src, dst, core_end, end - core_end)
        return copied

    def _copy_core(self, src: int, dst: int, start: int, end: int, bs: int) -> int:
        """Copy ``[start, end)``, both block-aligned; return the data bytes in it."""
        copied = 0
        can_clone = True
        pos = start  # everything before pos is done
        pending: tuple[int, int] | None = None  # widened extent not yet cloned
        for data, size in data_extents(src, start, end):
            copied += size
            lo = data // bs * bs
            hi = min(-(-(data + size) // bs) * bs, end)
            if pending is not None and lo <= pending[1]:
                pending = (pending[0], max(pending[1], hi))  # widening made them touch
                continue
            if pending is not None:
                can_clone = self._clone_or_copy(src, dst, *pending, can_clone)
                pos = pending[1]
            punch_hole(dst, pos, lo - pos)
            pending = (lo, hi)
        if pending is not None:
            can_clone = self._clone_or_copy(src, dst, *pending, can_clone)
            pos = pending[1]
        punch_hole(dst, pos, end - pos)
        return copied

    def _clone_or_copy(self, src: int, dst: int, lo: int, hi: int, can_clone: bool) -> bool:
        """Clone ``[lo, hi)``, or sparse-copy it if refused; return whether to keep cloning."""
        if can_clone:
            try:
                clone_range(src, dst, lo, hi - lo)
                return True
            except OSError as exc:
                if exc.errno not in _CLONE_UNSUPPORTED and exc.errno != errno.EINVAL:
                    raise
                log.debug("FICLONERANGE at %d+%d refused (%s); copying instead", lo, hi - lo, exc)
                can_clone = exc.errno not in _CLONE_UNSUPPORTED
        self._sparse.copy(src, dst, lo, hi - lo)
        return can_clone

    def __repr__(self) -> str:
        return "ReflinkCopy()"


def detect_engine(directory: str | os.PathLike[str]) -> CopyEngine:
    """The best engine for files in *directory*: ReflinkCopy if FICLONERANGE works there.

    Clones one block between two anonymous temporary files in *directory*
    (they vanish when closed, even after a crash); SparseCopy if that fails.
    """
    bs = os.statvfs(directory).f_bsize
    with (
        tempfile.TemporaryFile(dir=directory) as a,
        tempfile.TemporaryFile(dir=directory) as b,
    ):
        os.pwrite(a.fileno(), b"\xa5" * bs, 0)
        try:
            clone_range(a.fileno(), b.fileno(), 0, bs)
            works = os.pread(b.fileno(), bs, 0) == b"\xa5" * bs
        except OSError as exc:
            log.debug("%s: FICLONERANGE does not work (%s)", directory, exc)
            works = False
    engine: CopyEngine = ReflinkCopy() if works else SparseCopy()
    log.info("%s: copying volumes with %s", directory, engine.name)
    return engine
