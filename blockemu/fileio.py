"""File operations the standard library lacks: punching holes and finding data.

``os.posix_fallocate`` can only allocate, so hole punching goes through libc's
``fallocate(2)`` with ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate ``[offset, offset+length)``; reads of it return zeros after.

    Falls back to writing zeros where the filesystem cannot punch holes, so the
    observable content is the same everywhere.
    """
    if length <= 0:
        return
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise OSError(err, os.strerror(err))
    zeros = bytes(min(length, 1 << 20))
    end = offset + length
    while offset < end:
        offset += os.pwrite(fd, zeros[: end - offset], offset)


def allocated_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes the file really occupies on disk (holes excluded)."""
    return os.stat(path).st_blocks * 512


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or create in directory *path* durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Replace *path* with *data* so that a crash leaves the old file or the new one.

    Temp file in the same directory, fsync, rename over *path*, fsync of the
    directory: the state files, buffers and tables that must never be torn.
    """
    path = os.fspath(path)
    # Unique per process and thread: two writers of one file never share a temp file.
    tmp = (f"{os.path.dirname(path) or '.'}/.{os.path.basename(path)}."
           f"{os.getpid()}.{threading.get_ident()}.tmp")  # fmt: skip
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")
