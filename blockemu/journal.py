"""The ordered journal of ``async`` mirroring, which is also a redo log.

With ``async`` mirroring a P-VOL write is acknowledged as soon as the P-VOL
and this journal hold it; a background task applies the journal's records to
the S-VOL in order and marks them applied (:meth:`Journal.mark_applied`).
The file format is :mod:`formats.journal_record`.

The redo-log rule
    The caller appends the record *before* it writes the P-VOL. After a crash
    every record not yet marked applied is replayed, in order, to *both*
    volumes. Replaying writes the same bytes at the same offsets, so it is
    idempotent: a record whose P-VOL write did or did not happen before the
    crash ends up the same, and the S-VOL catches up. A write that is in the
    P-VOL is therefore always in the journal too, until the S-VOL has it.

Why no fsync on append
    :meth:`Journal.append` is one ``pwrite`` into the page cache. A SIGKILL (or
    any crash of the array process) loses nothing that is in the page cache;
    the kernel writes it back later. Only a power loss or kernel crash can
    lose it, and against that the host sends FLUSH or FUA, which call
    :meth:`Journal.flush` (fdatasync) like they do for the volumes.
    :meth:`Journal.mark_applied` is a ``pwrite`` of the header for the same
    reason.

The torn-tail rule
    A crash can interrupt an append, leaving a short or half-written record at
    the end. On open the records are scanned from the header's ``base_offset``;
    the first record that is short, has a bad magic or CRC, or whose seq does
    not follow its predecessor ends the journal, and the file is truncated
    there (with a warning saying how many bytes went). Those bytes belong to a
    write that was never acknowledged: the append had not returned, so the
    P-VOL was not written and the host got no reply.

Replaying from memory
    The data of the most recent records stays in memory too (up to
    ``cache_bytes``, 64 MiB by default, oldest dropped first), so the applier
    gets them from :meth:`Journal.unapplied` without reading the file back
    and checking CRCs again. Records not in memory -- those loaded at open
    after a restart, or pushed out by newer ones -- are read from the file as
    before. Either way the records and their order are the same: the memory
    copy only saves the ``pread``; the file stays the redo log.

Everything runs on the array's one trio thread: no locking, and every call is
synchronous and cheap except :meth:`Journal.flush`.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from formats.errors import FormatError
from formats.journal_record import (
    HEADER_BLOCK,
    JOURNAL_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    JournalHeader,
    decode_journal_header,
    decode_record,
    decode_record_header,
    encode_journal_header,
    encode_record_header,
)
from formats.units import format_ldev

from .fileio import fsync_dir

log = logging.getLogger(__name__)

#: mark_applied() compacts the file when nothing is unapplied and the record
#: area has grown to this many bytes.
COMPACT_AT = 64 << 20
#: Data bytes of the newest records kept in memory for unapplied() (0: none).
CACHE_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Record:
    """One journaled write: *data* at volume offset *offset*; *timestamp* in Unix ns."""

    seq: int
    offset: int
    data: bytes
    timestamp: int


class Journal:
    """One open journal file (see the module docstring for the rules)."""

    def __init__(
        self, path: Path, fd: int, ldev: int, compact_at: int, cache_bytes: int = CACHE_BYTES
    ) -> None:
        self.path = path
        self.ldev = ldev
        self._fd = fd
        self._name = str(path)
        self._compact_at = compact_at
        self._applied_seq = 0
        self._last_seq = 0
        self._base = HEADER_BLOCK
        self._end = HEADER_BLOCK  # file offset of the next append
        # Unapplied records, oldest first: (seq, file offset, data length, volume offset, ts).
        self._index: collections.deque[tuple[int, int, int, int, int]] = collections.deque()
        self._lag_bytes = 0
        # The newest unapplied records with their data: a suffix of _index (same seqs,
        # consecutive, ending at _last_seq), at most _cache_limit data bytes.
        self._cache: collections.deque[Record] = collections.deque()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        ldev: int,
        create: bool = True,
        compact_at: int = COMPACT_AT,
        cache_bytes: int = CACHE_BYTES,
    ) -> Journal:
        """Open (or create) the journal of P-VOL *ldev* and load its unapplied records.

        The data of records appended from now on is kept in memory as well, up
        to *cache_bytes* (see the module docstring); records found in the file
        are read back from it when asked for.

        Raises :class:`FormatError` naming the file when the header is bad or
        belongs to another LDEV, FileNotFoundError when it is missing and
        *create* is false. A torn tail is cut off (see the module docstring).
        """
        path = Path(path)
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"{path}: no journal file (and create=False)")
            cls._create(path, ldev)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        journal = cls(path, fd, ldev, compact_at, cache_bytes)
        try:
            journal._load()
        except BaseException:
            os.close(fd)
            raise
        return journal

    @staticmethod
    def _create(path: Path, ldev: int) -> None:
        """Write an empty journal under a temporary name, then rename it into place."""
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, encode_journal_header(JournalHeader(ldev=ldev)), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(path.parent)

    def _load(self) -> None:
        name = self._name
        size = os.fstat(self._fd).st_size
        if size < HEADER_BLOCK:
            raise FormatError(
                f"{name}: journal file is {size} bytes, shorter than its {HEADER_BLOCK}-byte "
                "header: it is not a complete blockemu journal"
            )
        header = decode_journal_header(os.pread(self._fd, JOURNAL_HEADER_SIZE, 0), name=name)
        if header.ldev != self.ldev:
            raise FormatError(
                f"{name}: journal belongs to LDEV {format_ldev(header.ldev)}, "
                f"not {format_ldev(self.ldev)}: the file was renamed or copied"
            )
        self._applied_seq = self._last_seq = header.applied_seq
        base = header.base_offset
        if base > size:
            # Only a power loss before a FLUSH can do this (the header page was
            # written back, the records' pages were not): those records are lost.
            log.warning(
                "%s: journal header says records start at byte %d but the file ends at %d: "
                "records after the last FLUSH were lost (power loss?)",
                name,
                base,
                size,
            )
            base = size
        self._base = base
        end, problem = self._scan(base, size)
        if end < size:
            log.warning(
                "%s: dropped %d bytes at the end of the journal from byte %d (%s); they belong "
                "to a write that was never acknowledged (torn by a crash)",
                name,
                size - end,
                end,
                problem,
            )
            os.ftruncate(self._fd, end)
        self._end = end
        if base != header.base_offset:
            self._write_header()

    def _scan(self, pos: int, size: int) -> tuple[int, str]:
        """Index the records from *pos*; returns where the valid ones end, and why."""
        fd, name = self._fd, self._name
        expected: int | None = None
        while pos < size:
            where = f"{name}: byte {pos}"
            if size - pos < RECORD_HEADER_SIZE:
                return pos, f"short record header: {size - pos} bytes"
            try:
                info = decode_record_header(os.pread(fd, RECORD_HEADER_SIZE, pos), name=where)
                if pos + RECORD_HEADER_SIZE + info.length > size:
                    return pos, f"record seq {info.seq} short: the file ends inside its data"
                raw = os.pread(fd, RECORD_HEADER_SIZE + info.length, pos)
                decode_record(raw, name=where)
            except FormatError as exc:
                return pos, str(exc).removeprefix(where + ": ")
            seq = info.seq
            if expected is None:
                # The first record normally follows applied_seq. It can be older
                # (already applied) when a crash hit compact() or reset() between
                # writing the header and truncating the file.
                if seq > self._applied_seq + 1:
                    return pos, (
                        f"first record has seq {seq} but the header says "
                        f"{self._applied_seq} is the last applied: records are missing"
                    )
            elif seq != expected:
                return pos, f"record seq {seq} does not follow {expected - 1}"
            expected = seq + 1
            if seq > self._applied_seq:
                self._index.append((seq, pos, info.length, info.offset, info.timestamp))
                self._lag_bytes += info.length
                self._last_seq = seq
            pos += RECORD_HEADER_SIZE + info.length
        return pos, ""

    def _write_header(self) -> None:
        header = JournalHeader(
            ldev=self.ldev, applied_seq=self._applied_seq, base_offset=self._base
        )
        os.pwrite(self._fd, encode_journal_header(header)[:JOURNAL_HEADER_SIZE], 0)

    # -- the hot path ---------------------------------------------------------

    def append(self, offset: int, data: bytes) -> int:
        """Journal a write of *data* at volume offset *offset*; returns its seq.

        Call it before writing the P-VOL. One pwrite into the page cache, no
        fsync: the record survives a crash of the process (not a power loss
        until :meth:`flush`).
        """
        seq = self._last_seq + 1
        ts = time.time_ns()
        record = encode_record_header(seq, offset, data, ts) + data
        pos = self._end
        n = os.pwrite(self._fd, record, pos)
        if n != len(record):
            self._finish_short_write(record, pos, n)
        self._end = pos + len(record)
        self._last_seq = seq
        self._index.append((seq, pos, len(data), offset, ts))
        self._lag_bytes += len(data)
        if self._cache_limit > 0:
            cache = self._cache
            cache.append(Record(seq, offset, data if type(data) is bytes else bytes(data), ts))
            self._cache_bytes += len(data)
            while self._cache_bytes > self._cache_limit:
                self._cache_bytes -= len(cache.popleft().data)
        return seq

    def _finish_short_write(self, record: bytes, pos: int, done: int) -> None:
        view = memoryview(record)
        try:
            while done < len(record):
                done += os.pwrite(self._fd, view[done:], pos + done)
        except BaseException:
            # Leave no partial record behind: the next append reuses this place.
            os.ftruncate(self._fd, pos)
            raise

    def unapplied(self, limit: int | None = None) -> list[Record]:
        """Records not yet applied to the S-VOL, oldest first (at most *limit*).

        The newest come from memory; older ones (loaded at open, or pushed out
        of memory) are read back from the file and their CRC checked.
        """
        index, cache = self._index, self._cache
        want = len(index) if limit is None else limit
        if want < 0:
            raise ValueError(f"limit {limit} is negative")
        from_file = min(want, len(index) - len(cache))  # the cache is a suffix of the index
        records = []
        for seq, pos, length, offset, ts in itertools.islice(index, from_file):
            where = f"{self._name}: byte {pos}"
            raw = os.pread(self._fd, RECORD_HEADER_SIZE + length, pos)
            info, data = decode_record(raw, name=where)
            if info.seq != seq:
                raise FormatError(f"{where}: expected record seq {seq}, found {info.seq}")
            records.append(Record(seq, offset, data, ts))
        if want > from_file:
            records.extend(itertools.islice(cache, want - from_file))
        return records

    def mark_applied(self, seq: int) -> None:
        """Every record up to *seq* is on the S-VOL. Writes the header; no fsync.

        Marking an already-applied seq again does nothing. Compacts the file
        when nothing is left unapplied and it has reached ``compact_at`` bytes.
        """
        if seq <= self._applied_seq:
            return
        if seq > self._last_seq:
            raise ValueError(
                f"{self._name}: cannot mark seq {seq} applied: the last record is {self._last_seq}"
            )
        index, cache = self._index, self._cache
        while index and index[0][0] <= seq:
            self._lag_bytes -= index.popleft()[2]
        while cache and cache[0].seq <= seq:
            self._cache_bytes -= len(cache.popleft().data)
        self._applied_seq = seq
        self._base = index[0][1] if index else self._end
        if not index and self._end - HEADER_BLOCK >= self._compact_at:
            self.compact()
        else:
            self._write_header()

    def compact(self) -> None:
        """Empty the record area when every record is applied; otherwise do nothing.

        The header (``base_offset`` back at the start of the record area) is
        written before the file is truncated: a crash in between leaves only
        applied records, which the next open skips.
        """
        if self._index or self._end == HEADER_BLOCK:
            return
        self._base = HEADER_BLOCK
        self._write_header()
        os.ftruncate(self._fd, HEADER_BLOCK)
        self._end = HEADER_BLOCK

    def reset(self) -> None:
        """Drop every record, applied or not; seq numbering goes on from :attr:`last_seq`.

        Used when a split turns the journal into a track bitmap: persist the
        bitmap first, the unapplied records are gone after this.
        """
        self._index.clear()
        self._lag_bytes = 0
        self._cache.clear()
        self._cache_bytes = 0
        self._applied_seq = self._last_seq
        self._base = HEADER_BLOCK
        self._write_header()
        os.ftruncate(self._fd, HEADER_BLOCK)
        self._end = HEADER_BLOCK

    # -- state ----------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The seq of the newest record (the next append gets one more)."""
        return self._last_seq

    @property
    def applied_seq(self) -> int:
        """Every record with a seq up to this one is on the S-VOL."""
        return self._applied_seq

    @property
    def lag_records(self) -> int:
        """How many records are not yet applied."""
        return len(self._index)

    @property
    def cached_records(self) -> int:
        """How many of the unapplied records :meth:`unapplied` gets from memory."""
        return len(self._cache)

    @property
    def lag_bytes(self) -> int:
        """Data bytes (headers not counted) of the records not yet applied."""
        return self._lag_bytes

    def lag_seconds(self, now_ns: int | None = None) -> float:
        """Age of the oldest unapplied record (0.0 if there is none)."""
        if not self._index:
            return 0.0
        now = time.time_ns() if now_ns is None else now_ns
        return max(0.0, (now - self._index[0][4]) / 1e9)

    @property
    def file_size(self) -> int:
        """Bytes the journal file has (header block included)."""
        return self._end

    # -- durability and life cycle ---------------------------------------------

    def flush(self) -> None:
        """Make every append and header update durable (fdatasync); for FLUSH and FUA."""
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
