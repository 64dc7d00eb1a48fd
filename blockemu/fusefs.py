"""A FUSE filesystem of block devices: one flat directory, one file per device.

This layer knows nothing of the array or the network. A :class:`Backend`
says which devices exist and does their I/O; :class:`VolumeFS` turns that
into a mount that hosts ``losetup``, ``mkfs`` and ``mount``. The array's own
view (:mod:`blockemu.arrayview`) and a host's view (a separate process that
forwards each request over the network) are two backends of the same
filesystem.

How the files behave, and why:

* Every file is a fixed-size block device: mode 0600, owned by the daemon's
  user (root in every real use), ``st_size`` the device size. Devices are
  created, deleted and hidden on the array; here they only appear and
  disappear. Creating, deleting, renaming files is refused with EPERM, and so
  is any change of size, mode or owner (``setattr``); a setattr that changes
  nothing, or only the times (``touch``), succeeds and is ignored.
* Reads and writes are clipped like a block device's: a read past the end
  returns what is left (nothing at or after the end); a write that starts at
  or after the end fails with ENOSPC, one that crosses it writes the part
  that fits and reports the short count -- the answers Linux gives for
  ``/dev/sdX``. ENOSPC rather than EFBIG: the file cannot grow, but nothing
  is wrong with the offset as such. (Opening with ``O_TRUNC`` fails with
  EPERM: it would change the size.)
* Every open gets ``FOPEN_DIRECT_IO`` (``FileInfo(direct_io=True)``): the
  kernel keeps no page cache for these files, so every read reaches the
  backend. Two mounts of the same volume -- the array view and a host view, or
  the host views of an active and a standby node -- would otherwise each serve
  their own cached copy, and a standby that takes over would read the bytes
  as they were when it last looked. Hosts should use
  ``losetup --direct-io=on`` anyway (measured fastest: 1 MiB requests, no
  double caching). The price: no kernel readahead for buffered reads of the
  files, and no shared ``mmap`` of them (nothing here needs either).
* Clients may open with ``O_DIRECT`` (a loop device with ``--direct-io=on``
  does): that flag only concerns the kernel side. The daemon keeps its own
  I/O buffered and never opens anything ``O_DIRECT``: the buffers pyfuse3
  hands over are not aligned, and the backing I/O is the backend's business.
* ``fsync`` calls :meth:`Backend.flush`. It must be implemented: a FUSE
  daemon that answers ENOSYS once makes the kernel skip every later fsync
  silently, and ext4 journal commits on a loop device arrive here as fsyncs.
  ``flush`` (sent at every ``close``) does nothing, as closing a block device
  does not flush its cache either.

Per-request cost matters (a pyfuse3 round trip is ~55-85 µs of Python):
handlers do a dict lookup and call the backend; nothing is parsed with
construct and nothing is handed to a thread. Handlers never let an exception
other than :class:`pyfuse3.FUSEError` escape, because pyfuse3 would end the
whole session loop -- the mount, and the process serving it -- over it.

pyfuse3 is a process-wide singleton (one session, one mount): a process
runs at most one :func:`run_mount` at a time.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pyfuse3
import trio

log = logging.getLogger(__name__)

#: ``st_blksize``, the I/O size tools pick their buffers from (cp, Python's
#: io). Each FUSE request costs a round trip, so prefer large ones: 128 KiB is
#: coreutils' minimum anyway and the kernel's FUSE readahead window.
PREFERRED_IO = 128 * 1024

#: How long the kernel may cache names and attributes (seconds). Devices come
#: and go (a volume is created, a pair hides its S-VOL); a removed device can
#: still be found by a path lookup for this long, but opening it is checked
#: again, and a new one is visible at once (failed lookups are not cached).
CACHE_TIMEOUT = 1.0

PR_SET_IO_FLUSHER = 57
ENOTCONN = errno.ENOTCONN


@dataclass(frozen=True)
class Device:
    """One file in the mount: a block device of *size* bytes."""

    name: str
    size: int
    block_size: int = 512

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "\0" in self.name or self.name in (".", ".."):
            raise ValueError(f"{self.name!r} cannot be a file name in the mount")
        if self.size < 0 or self.block_size <= 0:
            raise ValueError(f"device {self.name}: bad size {self.size}/{self.block_size}")


class Backend(Protocol):
    """Where a :class:`VolumeFS` gets its devices and does their I/O.

    ``devices()`` is called for every lookup, readdir and getattr, so it must
    be cheap (no network round trip); the list may change at any time and the
    mount follows without a remount. The I/O methods are awaited inline in the
    FUSE handler: they should do their work without handing it to a thread,
    except ``flush``, which may wait for fdatasync in one. Every failure the
    host should see as an I/O error is a :class:`BackendIOError`.
    """

    def devices(self) -> list[Device]: ...

    async def read(self, name: str, offset: int, size: int) -> bytes: ...

    async def write(self, name: str, offset: int, data: bytes) -> None: ...

    async def flush(self, name: str) -> None: ...


class BackendIOError(Exception):
    """The backend could not do an I/O; ``str()`` says why (it is logged).

    The client sees *errno* (EIO unless the backend knows better, e.g.
    ENOENT for a device that is gone, EACCES for a reservation held by
    another host, EROFS for a read-only volume).
    """

    def __init__(self, message: str, errno: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = errno


class MountError(OSError):
    """The mount could not be set up; ``str()`` names the mountpoint and the fix."""


class _OpenFile:
    __slots__ = ("name", "size")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size


class _ErrorLog:
    """Logs I/O errors, at most one line per device and second.

    A host whose filesystem keeps retrying a failed device would otherwise
    fill the server's log with one line per request.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def report(self, name: str, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last.get(name, -1e9) < 1.0:
            self._quiet[name] = self._quiet.get(name, 0) + 1
            return
        self._last[name] = now
        quiet = self._quiet.pop(name, 0)
        more = f" ({quiet} more error(s) in the last second not shown)" if quiet else ""
        if isinstance(exc, BackendIOError):
            log.warning("%s %s failed: %s%s", what, name, exc, more)
        else:
            log.error("%s %s failed unexpectedly%s", what, name, more, exc_info=exc)


class VolumeFS(pyfuse3.Operations):
    """A flat directory with one block-device file per :class:`Device` of *backend*."""

    # Never: the kernel would acknowledge writes the backend has not seen yet,
    # which breaks synchronous mirroring and loses them if the daemon dies.
    enable_writeback_cache = False

    def __init__(self, backend: Backend, *, cache_timeout: float = CACHE_TIMEOUT) -> None:
        super().__init__()
        self.backend = backend
        self.cache_timeout = cache_timeout
        self._uid, self._gid = os.geteuid(), os.getegid()
        self._born = time.time_ns()
        # Inode numbers are handed out once per name and never reused, so a
        # device keeps its inode for the life of the mount (also across a
        # disappearance), and readdir can resume by inode number.
        self._inode_of: dict[str, int] = {}
        self._name_of: dict[int, str] = {}
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._open: dict[int, _OpenFile] = {}
        self._next_fh = 1
        self._errors = _ErrorLog()

    # -- devices and attributes ----------------------------------------

    def _devices(self) -> dict[str, Device]:
        try:
            return {d.name: d for d in self.backend.devices()}
        except Exception as exc:
            log.error("listing the devices failed", exc_info=exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _inode(self, name: str) -> int:
        inode = self._inode_of.get(name)
        if inode is None:
            inode = self._inode_of[name] = self._next_inode
            self._name_of[inode] = name
            self._next_inode += 1
        return inode

    def _device(self, inode: int) -> Device:
        name = self._name_of.get(inode)
        dev = None if name is None else self._devices().get(name)
        if dev is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return dev

    def _attrs(self, inode: int, dev: Device | None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = 0
        a.entry_timeout = self.cache_timeout
        a.attr_timeout = self.cache_timeout
        a.st_uid = self._uid
        a.st_gid = self._gid
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._born
        if dev is None:  # the root directory
            a.st_mode = stat.S_IFDIR | 0o755
            a.st_nlink = 2
            a.st_size = 0
            a.st_blksize = 4096
            a.st_blocks = 0
        else:
            a.st_mode = stat.S_IFREG | 0o600
            a.st_nlink = 1
            a.st_size = dev.size
            a.st_blksize = max(dev.block_size, PREFERRED_IO)
            a.st_blocks = -(-dev.size // 512)
        return a

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        text = os.fsdecode(name)
        dev = self._devices().get(text)
        if dev is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(self._inode(text), dev)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        pass  # inodes are kept for the life of the mount (one small entry per name)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode == pyfuse3.ROOT_INODE:
            return self._attrs(inode, None)
        return self._attrs(inode, self._device(inode))

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        """Accept what changes nothing (and times, which are not kept); refuse the rest."""
        if inode == pyfuse3.ROOT_INODE:
            current = self._attrs(inode, None)
        else:
            current = self._attrs(inode, self._device(inode))
        refused = (
            (fields.update_size and attr.st_size != current.st_size)
            or (fields.update_mode and stat.S_IMODE(attr.st_mode) != stat.S_IMODE(current.st_mode))
            or (fields.update_uid and attr.st_uid != current.st_uid)
            or (fields.update_gid and attr.st_gid != current.st_gid)
        )
        if refused:
            name = self._name_of.get(inode, "/")
            log.info("refused to change size, mode or owner of %s (devices are fixed)", name)
            raise pyfuse3.FUSEError(errno.EPERM)
        return current

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return 0

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Entries in inode order, resumed by inode number: a device that
        # appears or disappears between two readdir calls cannot make another
        # one be skipped or listed twice.
        entries = sorted((self._inode(name), dev) for name, dev in self._devices().items())
        for inode, dev in entries:
            if inode <= start_id:
                continue
            if not pyfuse3.readdir_reply(
                token, os.fsencode(dev.name), self._attrs(inode, dev), inode
            ):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        devices = self._devices()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = sum(-(-d.size // 4096) for d in devices.values())
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(devices)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- the namespace is the backend's: no creating, deleting, renaming --

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    # -- open files and I/O ------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        # O_DIRECT in *flags* needs nothing here: see the module docstring.
        dev = self._device(inode)
        if flags & os.O_TRUNC and dev.size:
            # libfuse negotiates atomic O_TRUNC, so it arrives here and not as
            # a setattr; the kernel would set the size to 0 if we said yes.
            log.info("refused to open %s with O_TRUNC (devices are fixed)", dev.name)
            raise pyfuse3.FUSEError(errno.EPERM)
        fh = self._next_fh
        self._next_fh += 1
        self._open[fh] = _OpenFile(dev.name, dev.size)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False, nonseekable=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        f = self._open[fh]
        size = min(size, f.size - off)
        if size <= 0:
            return b""
        try:
            return await self.backend.read(f.name, off, size)
        except Exception as exc:
            raise self._failed("read of", f.name, exc) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        f = self._open[fh]
        room = f.size - off
        if room <= 0:
            if not buf:
                return 0
            raise pyfuse3.FUSEError(errno.ENOSPC)
        if len(buf) > room:
            buf = buf[:room]
        try:
            await self.backend.write(f.name, off, buf)
        except Exception as exc:
            raise self._failed("write to", f.name, exc) from None
        return len(buf)

    async def fsync(self, fh: int, datasync: bool) -> None:
        f = self._open[fh]
        try:
            await self.backend.flush(f.name)
        except Exception as exc:
            raise self._failed("flush of", f.name, exc) from None

    async def flush(self, fh: int) -> None:
        pass  # close(2): nothing to do, like closing a block device

    async def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    def _failed(self, what: str, name: str, exc: Exception) -> pyfuse3.FUSEError:
        self._errors.report(name, what, exc)
        if isinstance(exc, BackendIOError):
            return pyfuse3.FUSEError(exc.errno)
        return pyfuse3.FUSEError(errno.EIO)


# -- mounting ----------------------------------------------------------------

_mounted = False  # pyfuse3 holds one session per process


def _canonical(mountpoint: str) -> str:
    """Absolute, symlink-free path, without touching the mountpoint itself (it may be stale)."""
    path = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_at(path: str) -> list[str]:
    """Filesystem types mounted at *path* (``/proc/self/mountinfo``), bottom to top."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and _unescape(fields[4]) == path and right:
                found.append(right.split()[0])
    return found


def _probe(path: str, timeout: float = 5.0) -> int | None:
    """``os.statvfs(path)``: None if it answers, its errno if it fails, ETIMEDOUT if it hangs.

    statfs, unlike stat, always reaches the daemon (the kernel may answer a
    stat from attributes it cached just before the daemon died). A FUSE mount
    whose daemon is alive but stuck makes it block; the probe runs in a
    daemon thread so that cannot hang the caller.
    """
    result: list[int | None] = []

    def probe() -> None:
        try:
            os.statvfs(path)
            result.append(None)
        except OSError as exc:
            result.append(exc.errno)

    thread = threading.Thread(target=probe, name=f"probe {path}", daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else errno.ETIMEDOUT


def _lazy_unmount(path: str) -> None:
    tried = []
    for cmd in (["fusermount3", "-u", "-z", path], ["umount", "-l", path]):
        if shutil.which(cmd[0]) is None:
            continue
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode == 0:
            return
        tried.append(f"`{' '.join(cmd)}`: {proc.stderr.strip() or proc.returncode}")
    why = "; ".join(tried) or "neither fusermount3 nor umount is installed"
    raise MountError(
        f"{path} is a dead FUSE mount and could not be unmounted ({why}); "
        f"unmount it by hand with `umount -l {path}`"
    )


def clean_stale_mount(mountpoint: str) -> bool:
    """Unmount what a killed FUSE daemon left at *mountpoint*; True if there was something.

    A daemon that dies (SIGKILL, crash) leaves its mount behind: every access
    that reaches it fails with ENOTCONN, "Transport endpoint is not connected"
    (a stat may still be answered from the kernel's cache for a second), and nothing
    can be mounted there usefully until it is gone. Such mounts are detached
    lazily (``fusermount3 -u -z``, else ``umount -l``), so a loop device still
    holding a file of the dead mount does not stop us; it keeps failing with
    I/O errors until the host detaches it. Several stale mounts stacked by
    repeated crashes are all removed.

    A *live* FUSE mount there (another process is serving it) is not touched:
    that raises :class:`MountError`, as does one that does not answer.
    """
    path = _canonical(mountpoint)
    cleaned = False
    for _ in range(32):
        fuse = [t for t in mounts_at(path) if t.startswith("fuse")]
        err = _probe(path)
        if err == ENOTCONN:
            log.warning("%s is a stale FUSE mount (its daemon died); unmounting it", path)
            _lazy_unmount(path)
            cleaned = True
            continue
        if fuse and err == errno.ETIMEDOUT:
            raise MountError(
                f"{path} is a FUSE mount whose daemon does not answer; stop that process or "
                f"run `umount -l {path}`"
            )
        if fuse and err is None:
            raise MountError(
                f"{path} is already a live FUSE mount ({fuse[-1]}): another process serves it; "
                "stop it or choose another mountpoint"
            )
        return cleaned
    raise MountError(f"{path}: stale mounts keep coming back; unmount it by hand")


def set_io_flusher() -> bool:
    """Mark this process as an I/O flusher (``PR_SET_IO_FLUSHER``), as FUSE daemons should.

    When a filesystem sits on a loop device on our mount, writing back its
    dirty pages goes through this process; memory reclaim inside our own
    allocations must then not wait for that writeback, or the two deadlock.
    Needs CAP_SYS_RESOURCE and Linux 5.6; without it the mount still works.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    zero = ctypes.c_ulong(0)
    if libc.prctl(PR_SET_IO_FLUSHER, ctypes.c_ulong(1), zero, zero, zero) == 0:
        return True
    err = ctypes.get_errno()
    log.warning(
        "prctl(PR_SET_IO_FLUSHER) failed: %s; a loop device on this mount may deadlock "
        "under memory pressure (it needs CAP_SYS_RESOURCE)",
        os.strerror(err),
    )
    return False


async def run_mount(
    fs: VolumeFS,
    mountpoint: str,
    *,
    fsname: str,
    subtype: str = "blockemu",
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mount *fs* at *mountpoint* and serve it until cancelled; unmount on the way out.

    Reports started once the mount exists. A stale mount a killed process
    left there is cleaned first (:func:`clean_stale_mount`). The mount shows
    as type ``fuse.<subtype>`` with source *fsname* in ``/proc/mounts``; when
    running as root it has ``allow_other``, with the kernel checking the
    files' 0600 mode (``default_permissions``), so only root uses the devices.
    If someone unmounts it from outside, this returns (after a warning).

    One mount per process: pyfuse3 keeps a single global session, so a
    second concurrent call raises RuntimeError. The process must never do
    I/O through its own mount (it would wait on itself).
    """
    global _mounted
    if _mounted:
        raise RuntimeError("this process already serves a FUSE mount (pyfuse3 allows one)")
    path = _canonical(mountpoint)
    await trio.to_thread.run_sync(clean_stale_mount, path)
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} is not a directory; create it first (mkdir -p)")
    set_io_flusher()
    options = {
        "fsname=" + re.sub(r"[,\s]", "_", fsname),
        "subtype=" + subtype,
        "default_permissions",
    }
    if os.geteuid() == 0:
        options.add("allow_other")
    try:
        pyfuse3.init(fs, path, options)
    except RuntimeError as exc:
        raise MountError(
            f"cannot mount FUSE at {path} ({exc}; libfuse printed why above): it needs "
            "/dev/fuse and root, or fusermount3"
        ) from None
    _mounted = True
    unmount = True
    try:
        log.info("mounted %s on %s", fsname, path)
        task_status.started()
        await pyfuse3.main()
        unmount = False  # main() returns when the kernel ended the session: unmounted already
        log.warning("%s was unmounted from outside; the volumes are no longer mounted", path)
    finally:
        pyfuse3.close(unmount=unmount)
        _mounted = False
        if unmount:
            log.info("unmounted %s", path)
