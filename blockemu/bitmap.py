"""The differential bitmap: which tracks of a volume changed since a point in time.

In-array replication (ShadowImage style) keeps one :class:`TrackBitmap` per
volume and pair side. Every host write marks the tracks it touches; resync and
restore copy only the marked tracks and clear each bit as its track is done.
The file layout is in :mod:`formats.bitmap_file`.

Why a shared memory mapping
---------------------------
The bits live in a ``MAP_SHARED`` mapping of the file. :meth:`TrackBitmap.mark`
is a store into that mapping: no system call, a few Python operations (about
0.2 µs for a small write), and the store is in the kernel's page cache the
moment it is made. If the array process is then killed (SIGKILL, a crash, the
OOM killer), nothing is lost: the pages belong to the file, not to the process,
and the kernel writes them back as it writes back any dirty file page. A
restarted array reopens the file and finds every bit the dead one set.

What the caller must do
-----------------------
* Mark **before** issuing the data write. Then any write that reached the
  volume file has its bit in the page cache too.
* When copying a track, clear its bit **before** reading the track, not after:
  a host write landing during the copy then sets the bit again and the track is
  copied once more. Clearing after the copy would lose that write. Because of
  this, a resync is a loop: iterate the set bits until :meth:`count` is 0 (with
  host writes stopped or mirrored for the final pass).
* Use a bitmap from one thread. ``bits[i] |= m`` is a read-modify-write of a
  byte, so two threads marking tracks that share a byte could lose a bit.
  (The array runs its I/O on one trio event loop, so this is the natural use.)

Power loss is weaker than a process crash
-----------------------------------------
Against power loss or a kernel crash, only what :meth:`TrackBitmap.flush`
(``msync``) made durable is guaranteed; bits set since may be lost while the
data writes they record reached the disk, since writeback orders neither. A
caller that needs exactness across power loss must either make a bit durable
before the first write to a clean track (flush after :meth:`mark` when
:meth:`is_set` was false, as Linux md's write-intent bitmap does: rare once a
track is dirty) or treat an unclean machine shutdown as "full copy needed".
:meth:`TrackBitmap.close` flushes, so a clean shutdown is durable.

The file is created with its blocks allocated (``posix_fallocate``), so a
store into the mapping never has to allocate disk space: on a full filesystem
a sparse mapped file would kill the process with SIGBUS instead of failing.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from formats.bitmap_file import (
    BITS_OFFSET,
    BitmapHeader,
    BitmapRole,
    decode_bitmap_header,
    encode_bitmap_header,
    validate_bitmap_header,
)
from formats.errors import FormatError
from formats.units import format_ldev

from .fileio import fsync_dir

#: Bytes of volume per bit: 256 KiB, the OPEN-V track size of Hitachi arrays.
#: The bitmap of a 1 TiB volume is then 4 Mi bits = 512 KiB, small enough to
#: map whole, count and scan in milliseconds, while a resync copies at most
#: 256 KiB more than the bytes that changed per touched track: large sequential
#: copies, few bits, and little waste for the 4-64 KiB writes hosts issue.
TRACK_SIZE = 256 * 1024

#: Bytes read at a time when scanning, counting or merging the bits.
_CHUNK = 64 * 1024
#: Within a non-zero chunk, pieces of this size are compared against zeros
#: before their bytes are looked at one by one.
_PIECE = 64
_ZEROS = bytes(_CHUNK)
_ONES = b"\xff" * _CHUNK

#: For every byte value, the positions of its set bits (LSB first).
_BIT_POSITIONS: tuple[tuple[int, ...], ...] = tuple(
    tuple(k for k in range(8) if value >> k & 1) for value in range(256)
)


def _allocate(fd: int, path: Path, length: int) -> None:
    """Give ``[0, length)`` of the file real blocks, so mapped stores cannot hit ENOSPC."""
    try:
        os.posix_fallocate(fd, 0, length)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # the filesystem cannot preallocate; live with a sparse file
        raise OSError(exc.errno, f"{path}: cannot allocate the bitmap: {exc.strerror}") from None


def _describe(header: BitmapHeader) -> str:
    side = "P-VOL" if header.role == BitmapRole.PVOL else "S-VOL"
    return (
        f"{header.tracks} tracks of {header.track_size} bytes, "
        f"LDEV {format_ldev(header.ldev)}, {side} side"
    )


class TrackBitmap:
    """One bit per track of a volume, kept in a shared mapping of its file.

    ``size`` is the volume size in bytes; the last track may be partial and
    :meth:`track_range` clips it. Use :meth:`open` or :meth:`for_size`, and
    :meth:`close` (or a ``with`` block) when done. After close every method
    raises ValueError.
    """

    def __init__(self, path: Path, mm: mmap.mmap, header: BitmapHeader, size: int) -> None:
        self.path = path
        self.tracks = header.tracks
        self.track_size = header.track_size
        self.ldev = header.ldev
        self.role = header.role
        self.size = size
        self._mm = mm
        self._nbytes = header.bits_size
        self._bits = memoryview(mm)[BITS_OFFSET:]
        self._closed = False
        # False only when every bit is known to be clear: set by whatever sets a bit
        # (mark, _set_tracks, merge_from), cleared by clear_all. It lets clear_all and
        # count skip the scan of a bitmap nothing has marked since it was last cleared.
        # Like the one-thread rule, this assumes one open TrackBitmap per file at a time
        # (a second one marking the same file would go unnoticed); the array has that.
        self._maybe_set = True

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        tracks: int,
        ldev: int,
        role: int,
        track_size: int = TRACK_SIZE,
        size: int | None = None,
        create: bool = True,
    ) -> TrackBitmap:
        """Open the bitmap at *path*, creating it (all bits clear) if missing and *create*.

        An existing file must describe exactly these *tracks*, *track_size*,
        *ldev* and *role*; otherwise, or if it is damaged, :class:`FormatError`
        names the file. A missing file with ``create=False`` raises
        FileNotFoundError.

        *size* is the volume size in bytes, needed to clip the last track in
        :meth:`track_range`; it must need exactly *tracks* tracks. Without it
        the volume is taken to be ``tracks * track_size`` bytes.
        """
        path = Path(path)
        if size is None:
            size = tracks * track_size
        elif size <= 0 or track_size <= 0 or -(-size // track_size) != tracks:
            raise ValueError(
                f"a volume of {size} bytes does not have {tracks} tracks of {track_size} bytes"
            )
        want = BitmapHeader(track_size=track_size, tracks=tracks, ldev=ldev, role=BitmapRole(role))
        validate_bitmap_header(want)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise
            cls._create(path, want)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            have = decode_bitmap_header(os.pread(fd, BITS_OFFSET, 0), name=str(path))
            if have != want:
                raise FormatError(
                    f"{path}: bitmap is for {_describe(have)}, expected {_describe(want)}. "
                    "Wrong file, or the volume changed: delete it and resynchronise the pair "
                    "with a full copy"
                )
            file_size = os.fstat(fd).st_size
            if file_size != want.file_size:
                raise FormatError(
                    f"{path}: file is {file_size} bytes, a bitmap of {want.tracks} tracks is "
                    f"{want.file_size}; it was truncated or extended: delete it and "
                    "resynchronise the pair with a full copy"
                )
            _allocate(fd, path, want.file_size)
            mm = mmap.mmap(
                fd, want.file_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        finally:
            os.close(fd)  # the mapping keeps the file open
        bitmap = cls(path, mm, want, size)
        bitmap._clear_spare_bits()
        return bitmap

    @classmethod
    def for_size(
        cls,
        path: str | os.PathLike[str],
        size: int,
        *,
        ldev: int,
        role: int,
        track_size: int = TRACK_SIZE,
        create: bool = True,
    ) -> TrackBitmap:
        """:meth:`open` the bitmap of a *size*-byte volume: ``ceil(size / track_size)`` tracks."""
        if size <= 0 or track_size <= 0:
            raise ValueError(f"volume size {size} and track size {track_size} must be positive")
        tracks = -(-size // track_size)
        return cls.open(
            path,
            tracks=tracks,
            ldev=ldev,
            role=role,
            track_size=track_size,
            size=size,
            create=create,
        )

    @staticmethod
    def _create(path: Path, header: BitmapHeader) -> None:
        """Write header and zero bits to a temporary file, fsync, rename into place."""
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            block = encode_bitmap_header(header)
            written = 0
            while written < len(block):
                written += os.pwrite(fd, block[written:], written)
            os.ftruncate(fd, header.file_size)
            _allocate(fd, path, header.file_size)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, path)
        fsync_dir(path.parent)

    def _clear_spare_bits(self) -> None:
        """Zero the bits past the last track, so count and iteration never see them."""
        spare = self._nbytes * 8 - self.tracks
        if spare:
            last = self._nbytes - 1
            keep = 0xFF >> spare
            if self._bits[last] & ~keep:
                self._bits[last] &= keep

    # -- the hot path ----------------------------------------------------------

    def mark(self, offset: int, length: int) -> None:
        """Set the bit of every track overlapping ``[offset, offset+length)``.

        Called on every write. A write within one track costs a division, an
        index and (only if the bit was clear) one byte store into the mapping.
        Length 0 marks nothing. ValueError if the range is outside the volume.
        """
        end = offset + length
        if offset < 0 or length <= 0 or end > self.size:
            if length == 0 and 0 <= offset <= self.size:
                return
            raise ValueError(
                f"{self.path}: range at offset {offset} length {length} is outside "
                f"the volume (size {self.size} bytes)"
            )
        ts = self.track_size
        first = offset // ts
        last = (end - 1) // ts
        if first == last:
            bits = self._bits
            i = first >> 3
            b = bits[i]
            m = 1 << (first & 7)
            if not b & m:  # leave already-dirty tracks alone: no page re-dirtied
                bits[i] = b | m
                self._maybe_set = True
        else:
            self._set_tracks(first, last + 1)

    def _set_tracks(self, first: int, stop: int) -> None:
        """Set the bits of tracks ``[first, stop)``; whole bytes by slice assignment."""
        bits = self._bits
        self._maybe_set = True
        last = stop - 1
        fb, lb = first >> 3, last >> 3
        low = (0xFF << (first & 7)) & 0xFF  # bits first%8..7 of the first byte
        high = 0xFF >> (7 - (last & 7))  # bits 0..last%8 of the last byte
        if fb == lb:
            low &= high
            if bits[fb] & low != low:
                bits[fb] |= low
            return
        if bits[fb] & low != low:
            bits[fb] |= low
        if bits[lb] & high != high:
            bits[lb] |= high
        self._fill(fb + 1, lb, _ONES)

    def _fill(self, start: int, stop: int, pattern: bytes) -> None:
        """Set bytes ``[start, stop)`` of the bits to *pattern*'s byte value, chunk-wise."""
        bits = self._bits
        while start < stop:
            n = min(stop - start, _CHUNK)
            bits[start : start + n] = pattern if n == _CHUNK else pattern[:n]
            start += n

    # -- everything else -----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: bitmap is closed")

    def _check_track(self, track: int) -> None:
        if not 0 <= track < self.tracks:
            raise ValueError(f"{self.path}: track {track} outside 0-{self.tracks - 1}")

    def mark_all(self) -> None:
        """Set every track's bit (a full copy is needed)."""
        self._set_tracks(0, self.tracks)

    def clear(self, track: int) -> None:
        """Clear *track*'s bit. Clear before copying the track, not after (see module doc)."""
        self._check_track(track)
        bits = self._bits
        i = track >> 3
        b = bits[i]
        m = 1 << (track & 7)
        if b & m:
            bits[i] = b & ~m

    def clear_range(self, first: int, count: int) -> None:
        """Clear the bits of tracks ``[first, first+count)``; whole bytes at a time.

        Like :meth:`clear` (clear before copying, see the module doc), for a
        run of tracks. Bytes already zero are not stored into, so clearing a
        clear range dirties no page. Count 0 clears nothing. ValueError if the
        range is outside the volume.
        """
        stop = first + count
        if first < 0 or count < 0 or stop > self.tracks:
            raise ValueError(f"{self.path}: tracks {first}..{stop - 1} outside 0-{self.tracks - 1}")
        if count == 0:
            return
        bits = self._bits
        last = stop - 1
        fb, lb = first >> 3, last >> 3
        low = (0xFF << (first & 7)) & 0xFF  # bits first%8..7 of the first byte
        high = 0xFF >> (7 - (last & 7))  # bits 0..last%8 of the last byte
        if fb == lb:
            low &= high
            if bits[fb] & low:
                bits[fb] &= ~low
            return
        if bits[fb] & low:
            bits[fb] &= ~low
        if bits[lb] & high:
            bits[lb] &= ~high
        self._zero(fb + 1, lb)

    def _zero(self, start: int, stop: int) -> None:
        """Zero bytes ``[start, stop)`` of the bits, storing only into chunks that are not zero."""
        bits = self._bits
        while start < stop:
            n = min(stop - start, _CHUNK)
            zeros = _ZEROS if n == _CHUNK else _ZEROS[:n]
            if bytes(bits[start : start + n]) != zeros:  # a copy and a memcmp: fast
                bits[start : start + n] = zeros
            start += n

    def clear_all(self) -> None:
        """Clear every bit (the volumes are known to be identical).

        Cheap when the bits are already clear: nothing to do if no bit was set
        since the last clear_all; otherwise the bitmap is compared with zeros
        chunk by chunk (tens of µs for the 512 KiB of a 1 TiB volume) and only
        chunks holding a set bit are written, so no page is dirtied for nothing.
        """
        self._check_open()
        if self._maybe_set:
            self._zero(0, self._nbytes)
            self._maybe_set = False

    def is_set(self, track: int) -> bool:
        self._check_track(track)
        return bool(self._bits[track >> 3] >> (track & 7) & 1)

    def count(self) -> int:
        """Number of tracks whose bit is set."""
        bits, nbytes = self._bits, self._nbytes
        if not self._maybe_set:
            self._check_open()
            return 0
        total = 0
        for a in range(0, nbytes, _CHUNK):
            chunk = bytes(bits[a : a + _CHUNK])
            if chunk != _ZEROS[: len(chunk)]:  # zero chunks cost a memcmp, not a conversion
                total += int.from_bytes(chunk, "little").bit_count()
        return total

    def run_from(self, start: int, limit: int, stop: int | None = None) -> tuple[int, int] | None:
        """The next run of consecutive set tracks at or after *start*: ``(first, n)``.

        Only tracks before *stop* (default: the end of the volume) are looked
        at, and *n* is at most *limit*. None when no track in ``[start, stop)``
        is set. Zeros are skipped by comparing whole byte ranges with zeros
        (growing windows, up to 64 KiB at a time), and the run is measured on
        an integer built from its bytes, so the cost does not grow with the
        number of tracks looked at, only (slowly) with the bytes skipped.
        """
        tracks = self.tracks
        stop = tracks if stop is None else stop
        if start < 0 or limit <= 0 or stop > tracks:
            raise ValueError(
                f"{self.path}: bad run search from track {start} before {stop} "
                f"(limit {limit}; tracks 0-{tracks - 1})"
            )
        first = self._first_set(start, stop)
        if first is None:
            return None
        return first, self._ones(first, min(stop, first + limit))

    def _first_set(self, start: int, stop: int) -> int | None:
        """The first set track in ``[start, stop)``, or None."""
        if start >= stop:
            return None
        bits = self._bits
        pos = start >> 3
        value = bits[pos] >> (start & 7)
        if value:
            track = start + ((value & -value).bit_length() - 1)
            return track if track < stop else None
        pos += 1
        end = (stop + 7) >> 3  # past the byte holding track stop-1
        width = 8
        while pos < end:
            n = min(width, end - pos)
            window = bytes(bits[pos : pos + n])
            if window != _ZEROS[:n]:
                lo, hi = 0, n  # window[:lo] is zero, the first non-zero byte is in [lo, hi)
                while hi - lo > 8:
                    mid = (lo + hi) // 2
                    if window[lo:mid] != _ZEROS[: mid - lo]:
                        hi = mid
                    else:
                        lo = mid
                value = int.from_bytes(window[lo:hi], "little")
                track = (pos + lo) * 8 + (value & -value).bit_length() - 1
                return track if track < stop else None
            pos += n
            width = min(width * 8, _CHUNK)
        return None

    def _ones(self, first: int, stop: int) -> int:
        """How many tracks from *first* on are set consecutively, up to (not past) *stop*."""
        bits = self._bits
        track = first
        while track < stop:
            pos = track >> 3
            end = min((stop + 7) >> 3, pos + _PIECE * 128)  # at most 64 Ki tracks a step
            value = int.from_bytes(bits[pos:end], "little") >> (track & 7)
            avail = (end - pos) * 8 - (track & 7)
            ones = (value ^ (value + 1)).bit_length() - 1  # trailing ones
            if ones < avail:
                track += ones
                break
            track += avail
        return min(track, stop) - first

    def iter_set(self, start: int = 0) -> Iterator[int]:
        """Set tracks from *start* on, in increasing order.

        Zero runs are skipped 64 KiB at a time (a byte comparison in C), so a
        sparse 4 Mi-track bitmap is scanned in about a millisecond. The bits
        are read a chunk at a time as the iteration proceeds: bits set ahead of
        the current chunk after the call are seen, changes within the current
        chunk may not be (so a resync loops until :meth:`count` is 0).
        """
        if start < 0:
            raise ValueError(f"{self.path}: start track {start} is negative")
        bits, nbytes, table = self._bits, self._nbytes, _BIT_POSITIONS
        pos = start >> 3
        if pos >= nbytes:
            return
        if start & 7:  # the partial first byte
            base = pos * 8
            for k in table[bits[pos] & (0xFF << (start & 7)) & 0xFF]:
                yield base + k
            pos += 1
        while pos < nbytes:
            end = min(nbytes, (pos // _CHUNK + 1) * _CHUNK)  # chunk-aligned reads
            chunk = bytes(bits[pos:end])
            if chunk != _ZEROS[: len(chunk)]:
                for p in range(0, len(chunk), _PIECE):
                    piece = chunk[p : p + _PIECE]
                    if piece == _ZEROS[: len(piece)]:
                        continue
                    base = (pos + p) * 8
                    for j, value in enumerate(piece):
                        if value:
                            for k in table[value]:
                                yield base + j * 8 + k
            pos = end

    def merge_from(self, other: TrackBitmap) -> None:
        """OR *other*'s bits into this bitmap; both must have the same tracks and track size."""
        if other.tracks != self.tracks or other.track_size != self.track_size:
            raise ValueError(
                f"cannot merge {other.path} ({other.tracks} tracks of {other.track_size} bytes) "
                f"into {self.path} ({self.tracks} tracks of {self.track_size} bytes)"
            )
        mine, theirs = self._bits, other._bits
        for a in range(0, self._nbytes, _CHUNK):
            b = min(a + _CHUNK, self._nbytes)
            chunk = bytes(theirs[a:b])
            if chunk == _ZEROS[: b - a]:  # a memcmp; most chunks of a diff bitmap are zero
                continue
            t = int.from_bytes(chunk, "little")
            m = int.from_bytes(mine[a:b], "little")
            if m | t != m:
                self._maybe_set = True
                mine[a:b] = (m | t).to_bytes(b - a, "little")

    def track_range(self, track: int) -> tuple[int, int]:
        """``(offset, length)`` of *track* in the volume; the last track is clipped to its size."""
        self._check_track(track)
        offset = track * self.track_size
        return offset, min(self.track_size, self.size - offset)

    def flush(self) -> None:
        """Make every bit set or cleared so far durable against power loss (msync)."""
        if self._closed:
            raise ValueError(f"{self.path}: bitmap is closed")
        self._mm.flush()

    def close(self) -> None:
        """Flush, then unmap. Closing twice is harmless."""
        if self._closed:
            return
        try:
            self._mm.flush()
        finally:
            self._closed = True
            self._bits.release()
            self._mm.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TrackBitmap:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.count()} set"
        return f"<TrackBitmap {self.path} {self.tracks}x{self.track_size} {state}>"
