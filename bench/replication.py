"""What in-array replication costs, measured on a real blockemu array.

A ``blockemu serve`` process is started on a fresh root in a scratch directory
on a disk filesystem (``--dir``, default ``/var/tmp``; tmpfs is refused, since
page-cache drops and fdatasync mean nothing there), and one
:class:`~blockemu.client.ArrayClient` in this process drives five experiments
through the unix socket, each next to the reference it is judged against:

1. **Initial copy.** A sparse volume (8 GiB) holding 1 GiB of data, written as
   256 extents of 4 MiB at random places, is paired with an empty S-VOL. Timed
   from ``pair_create`` until ``pair_display`` shows PAIR at 100 %, plus an
   fdatasync of the S-VOL file, next to ``cp --sparse=always`` of the same
   volume file plus ``sync --data`` of the copy. Both start with source and
   target out of the page cache (fsync, then ``POSIX_FADV_DONTNEED``). The
   default run times each side twice, in the order array, cp, cp, array, so
   that whatever warms up over the run (the host's cache under a VM's disk)
   favours neither side, and reports the means. Goal: cp/array >= 1.
2. **Split latency.** The round trip of a steady split of a sync pair in PAIR,
   on sparse volumes of 1 GiB, 64 GiB and 1 TiB (4 MiB of data each, formed
   and copied first). Median of 5, with a resync between splits. Goal: flat.
   For context: the time to form each pair, a resync with nothing changed, and
   one split taken right after unflushed writes.
3. **Resync after a small change.** Split, change 1 MiB of the P-VOL (256
   writes of 4 KiB at random places, or one 1 MiB write), resync, time until
   PAIR at 100 %. The 64 GiB volume next to the 1 GiB one (1 TiB shown too).
   Median of 3. Goal: independent of the volume size.
4. **Sync mirroring, throughput.** 512 MiB of 1 MiB sequential writes (QD1),
   then a flush, on a simplex volume and on the P-VOL of a sync pair in PAIR;
   once on fresh volumes (the writes allocate blocks) and once more over the
   same, now allocated, blocks. Goal: mirrored/simplex >= 0.5.
5. **Async mirroring, latency.** 4 KiB writes at random places, QD1, on a
   simplex volume, the P-VOL of an async pair and (for reference) the P-VOL of
   a sync pair, all in PAIR and fully allocated. Median and p99 latency and
   throughput. Goal: async/simplex throughput >= 0.9. The journal lag left at
   the end and the time the array takes to drain it are shown too.

Fairness on a small shared VM: the sizes of experiments 2, 3 and 5 take turns
(1 GiB, 64 GiB, 1 TiB, 1 GiB, ...; 0.5 s per volume for the QD1 writes), so
that a burst of noise from the machine lands on all of them alike. Before
each side of experiments 1 and 4 a scratch file is written and deleted
(:func:`warm_up_memory`): a VM may back its RAM lazily, and the first write
into a page the guest never used costs several times more than a write into
a recycled page, so whichever side ran first would otherwise win. For the
same reason the source of experiment 1 is read once, untimed, before the
first timed copy (:func:`read_data_once`).

``--quick`` shrinks everything (1 GiB volume with 128 MiB of data; 1 GiB,
16 GiB and 256 GiB splits; 128 MiB writes; 2 s of QD1) to run in well under a
minute. Progress goes to stderr, the table to stdout. Nothing here asserts on
timings: the script prints figures and goals, people judge them. The server
(SIGTERM by PID, SIGKILL if it lingers) and the scratch directory are removed
at the end, on failure, Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio
from rich.table import Table

from blockemu.address import parse_address
from blockemu.client import ArrayClient, open_client
from blockemu.store import volume_filename
from formats.units import format_ldev
from formats.wire import Op

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/common.py: see there
from common import (
    DISK_PARENT,
    GIB,
    KIB,
    MIB,
    TIB,
    Server,
    add_columns,
    array_server,
    check_dir,
    filesystem_text,
    load_average,
    load_text,
    machine_text,
    print_notes,
    progress,
    refuse_memory_filesystem,
    report_console,
    require_free_space,
    run_main,
    scratch_dir,
    watch_sigterm,
)

EXTENT = 4 * MIB  # initial copy: the data is written in extents of this size
SEQ_BLOCK = 1 * MIB
SMALL_WRITE = 4 * KIB
CHANGE = 1 * MIB  # resync: bytes changed between split and resync
SPARSE_DATA = 4 * MIB  # data written to the split/resync volumes, 1 MiB at a time
#: Experiment 4 writes each volume twice: allocating its blocks, then over them.
PASSES = ("fresh", "allocated")
KIND_NAMES = {"smpl": "SMPL volume", "sync": "sync P-VOL", "async": "async P-VOL"}
QD1_SLICE = 0.5  # experiment 5: seconds per turn of one volume
SPLITS = 5
RESYNCS = 3
SEED = 20240612
FIRST_LDEV = 0x0100
PAIR_TIMEOUT = 1800.0

T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    copy_size: int  # 1: volume size
    copy_data: int  # 1: bytes of data in it
    copy_rounds: int  # 1: array/cp measurements per side (ABBA order)
    split_sizes: tuple[int, int, int]  # 2 and 3
    write_size: int  # 4: bytes written sequentially; 5: volume size
    qd1_seconds: float  # 5: per volume

    def space_needed(self) -> int:
        """Bytes of disk the run allocates at most at once, with some slack."""
        return max(5 * self.copy_data, 5 * self.write_size) + 3 * SPARSE_DATA * 4 + GIB


FULL = Config(8 * GIB, 1 * GIB, 2, (1 * GIB, 64 * GIB, 1 * TIB), 512 * MIB, 5.0)
QUICK = Config(1 * GIB, 128 * MIB, 1, (1 * GIB, 16 * GIB, 256 * GIB), 128 * MIB, 2.0)


# -- results -----------------------------------------------------------------


@dataclass
class CopyResult:
    array: list[float] = field(default_factory=list)  # pair create -> PAIR + fdatasync
    cp: list[float] = field(default_factory=list)  # cp --sparse=always + sync --data
    write_seconds: float = 0.0  # writing the data through the array (context only)
    svol_allocated: int = 0
    cp_allocated: int = 0
    source_allocated: int = 0


@dataclass
class SizeResult:
    size: int
    form: float = 0.0  # pair create -> PAIR of the sparse volume
    splits: list[float] = field(default_factory=list)
    resync_unchanged: list[float] = field(default_factory=list)
    resync_4k: list[float] = field(default_factory=list)
    resync_1m: list[float] = field(default_factory=list)
    split_dirty: float = 0.0  # smallest size only: split right after unflushed writes
    dirty_bytes: int = 0  # of those writes


@dataclass
class SeqResult:
    nbytes: int
    acked: float  # last write acknowledged
    flushed: float  # and the flush after it

    def rate(self, seconds: float) -> float:
        return self.nbytes / MIB / seconds


@dataclass
class Qd1Result:
    latencies: list[int]  # ns, one per write
    seconds: float

    @property
    def iops(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def median_us(self) -> float:
        return statistics.median(self.latencies) / 1000

    @property
    def p99_us(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000


@dataclass
class Results:
    copy: CopyResult = field(default_factory=CopyResult)
    sizes: list[SizeResult] = field(default_factory=list)
    seq: dict[tuple[str, str], SeqResult] = field(default_factory=dict)  # (pass, kind)
    qd1: dict[str, Qd1Result] = field(default_factory=dict)  # smpl, sync, async
    async_lag_records: int = 0
    async_lag_bytes: int = 0
    async_drain: float = 0.0


# -- files: cache drops and allocation ------------------------------------------


def drop_cache(path: Path) -> None:
    """Write back and evict *path* from the page cache, so the next read hits the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fdatasync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def warm_up_memory(workdir: Path, nbytes: int) -> None:
    """Write *nbytes* to a scratch file and delete it, so the next writes get recycled pages.

    A virtual machine may back its RAM lazily (and a free-page reporter or DAMON
    may hand idle pages back to the host): the first write into a page the
    guest never touched, or gave back, then costs a fault in the host, which
    made fresh-page writes 5-8 times slower than writes into recycled pages on
    the machine this was written on. Whichever side of a comparison ran first
    got the recycled pages. Doing this before each side gives both the same.
    """
    path = workdir / "warm-up.tmp"
    block = bytes(SEQ_BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for offset in range(0, nbytes, SEQ_BLOCK):
            os.pwrite(fd, block, offset)
    finally:
        os.close(fd)
        path.unlink()  # dirty pages of a deleted file are dropped, never written


def read_data_once(path: Path) -> None:
    """Read every data extent of *path* once (holes skipped), untimed.

    The first read of freshly written data was up to 3 times slower than
    later cold reads on the machine this was written on (the host under the
    VM still writing it back, presumably), and it fell on whichever side ran
    first. One untimed read takes that one-off out of the comparison.
    """
    drop_cache(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos, end = 0, os.fstat(fd).st_size
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: no data after pos
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            for offset in range(data, hole, SEQ_BLOCK):
                os.pread(fd, min(SEQ_BLOCK, hole - offset), offset)
            pos = hole
    finally:
        os.close(fd)


def timed_cp(source: Path, target: Path) -> float:
    """``cp --sparse=always`` then ``sync --data`` of the copy; the source is dropped first."""
    target.unlink(missing_ok=True)
    drop_cache(source)
    start = time.perf_counter()
    subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)
    subprocess.run(["sync", "--data", str(target)], check=True)
    return time.perf_counter() - start


# -- the array server ------------------------------------------------------------


def copy_engine(server: Server) -> str:
    """The engine named in the server's first line ("... copy engine sparse, ...")."""
    match = re.search(r"copy engine (\w+)", server.banner)
    return match.group(1) if match else "unknown"


# -- talking to the array ------------------------------------------------------


@dataclass
class Bench:
    client: ArrayClient
    server: Server
    cfg: Config
    workdir: Path
    ldevs: Iterator[int] = field(default_factory=lambda: itertools.count(FIRST_LDEV))

    async def volume(self, size: int, label: str) -> tuple[int, bytes]:
        header = await self.client.create(next(self.ldevs), size, label=label)
        return header.ldev, header.pvid

    def volume_path(self, ldev: int) -> Path:
        return self.server.root / "volumes" / volume_filename(ldev)

    async def pair_status(self, pvol: int) -> dict[str, object]:
        return (await self.client.pair_display({"pvol": format_ldev(pvol)}))[0]

    async def wait_pair(self, pvol: int, states: tuple[str, ...] = ("PAIR",)) -> None:
        """Poll until the pair is in *states* at 100 %, every 0.5 % of the time waited so far.

        The poll interval grows with the wait (0.5 ms to 20 ms), so the figure
        is at most 0.5 % (or 0.5 ms) late and the array is not flooded.
        """
        start = time.perf_counter()
        while True:
            row = await self.pair_status(pvol)
            if row["status"] in states and row["copy_percent"] == 100:
                return
            if row["status"] == "PSUE":
                raise RuntimeError(f"pair of {format_ldev(pvol)} failed: {row}")
            waited = time.perf_counter() - start
            if waited > PAIR_TIMEOUT:
                raise RuntimeError(f"pair of {format_ldev(pvol)} not in {states}: {row}")
            await trio.sleep(min(0.02, max(0.0005, waited / 200)))

    async def command(self, op: Op, pvol: int) -> None:
        await self.client.pair_command(op, {"pvol": format_ldev(pvol)})

    async def form(self, pvol: int, svol: int, mode: str = "sync") -> float:
        """pair create, then wait for PAIR; returns the seconds it took."""
        start = time.perf_counter()
        await self.client.pair_create(format_ldev(pvol), format_ldev(svol), mode=mode)
        await self.wait_pair(pvol)
        return time.perf_counter() - start

    async def dissolve(self, pvol: int, *volumes: int) -> None:
        await self.command(Op.PAIR_DELETE, pvol)
        for ldev in volumes:
            await self.client.delete(ldev)

    async def settle(self) -> None:
        """Write back what earlier steps left dirty, so it does not land in the next figure."""
        await trio.to_thread.run_sync(os.sync)

    async def in_thread(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn)


# -- 1. initial copy -------------------------------------------------------------


async def bench_initial_copy(b: Bench) -> CopyResult:
    cfg, result = b.cfg, CopyResult()
    extents = cfg.copy_data // EXTENT
    progress.print(
        f"[1] initial copy: {human(cfg.copy_size)} volume, {extents} x 4 MiB extents "
        f"({human(cfg.copy_data)}) at random places"
    )
    pvol, pvid = await b.volume(cfg.copy_size, "copy-p")
    rng = random.Random(SEED)
    pattern = rng.randbytes(EXTENT)
    start = time.perf_counter()
    for slot in rng.sample(range(cfg.copy_size // EXTENT), extents):
        data = slot.to_bytes(8, "little") + pattern[8:]  # no two extents alike
        await b.client.write(pvol, pvid, slot * EXTENT, data)
    await b.client.flush(pvol, pvid)
    result.write_seconds = time.perf_counter() - start
    source = b.volume_path(pvol)
    result.source_allocated = allocated(source)
    progress.print(f"    data written and flushed in {result.write_seconds:.2f} s")
    await b.in_thread(lambda: read_data_once(source))
    copy_target = b.workdir / "cp-copy.vol"

    async def array_side(round_: int) -> None:
        svol, _ = await b.volume(cfg.copy_size, f"copy-s{round_}")
        target = b.volume_path(svol)

        def drop_both() -> None:
            warm_up_memory(b.workdir, 2 * cfg.copy_data)
            drop_cache(source)
            drop_cache(target)

        await b.in_thread(drop_both)
        start = time.perf_counter()
        await b.client.pair_create(format_ldev(pvol), format_ldev(svol), mode="sync")
        await b.wait_pair(pvol)
        await b.in_thread(lambda: fdatasync_path(target))
        seconds = time.perf_counter() - start
        result.array.append(seconds)
        result.svol_allocated = allocated(target)
        progress.print(f"    array: pair create -> PAIR + fdatasync S-VOL {seconds:.2f} s")
        await b.dissolve(pvol, svol)

    async def cp_side() -> None:
        await b.in_thread(lambda: warm_up_memory(b.workdir, 2 * cfg.copy_data))
        seconds = await b.in_thread(lambda: timed_cp(source, copy_target))
        result.cp.append(seconds)
        result.cp_allocated = allocated(copy_target)
        copy_target.unlink()
        progress.print(f"    cp --sparse=always + sync --data {seconds:.2f} s")

    for round_ in range(cfg.copy_rounds):
        if round_ % 2 == 0:
            await array_side(round_)
            await cp_side()
        else:
            await cp_side()
            await array_side(round_)
    await b.client.delete(pvol)
    return result


# -- 2 and 3. split latency and resync time, per volume size ------------------------


async def random_small_writes(b: Bench, pvol: int, pvid: bytes, size: int, seed: int) -> None:
    rng = random.Random(seed)
    block = rng.randbytes(SMALL_WRITE)
    for _ in range(CHANGE // SMALL_WRITE):
        await b.client.write(pvol, pvid, rng.randrange(size // SMALL_WRITE) * SMALL_WRITE, block)


async def one_big_write(b: Bench, pvol: int, pvid: bytes, size: int, seed: int) -> None:
    rng = random.Random(seed)
    offset = rng.randrange((size - CHANGE) // SMALL_WRITE) * SMALL_WRITE
    await b.client.write(pvol, pvid, offset, rng.randbytes(CHANGE))


#: A way to change 1 MiB of a P-VOL: (bench, ldev, pvid, volume size, seed).
Change = Callable[[Bench, int, bytes, int, int], Awaitable[None]]


@dataclass(frozen=True)
class SizedPair:
    result: SizeResult
    pvol: int
    pvid: bytes
    svol: int

    async def split(self, b: Bench) -> float:
        start = time.perf_counter()
        await b.command(Op.PAIR_SPLIT, self.pvol)
        seconds = time.perf_counter() - start
        await b.wait_pair(self.pvol, ("PSUS",))  # a steady split of a PAIR is done at once
        return seconds

    async def resync(self, b: Bench) -> float:
        start = time.perf_counter()
        await b.command(Op.PAIR_RESYNC, self.pvol)
        await b.wait_pair(self.pvol)
        return time.perf_counter() - start


def millis(values: list[float]) -> str:
    return ", ".join(f"{t * 1000:.1f}" for t in values) + " ms"


async def form_sparse_pair(b: Bench, size: int) -> SizedPair:
    name = human(size)
    pvol, pvid = await b.volume(size, f"split-p-{name}")
    svol, _ = await b.volume(size, f"split-s-{name}")
    rng = random.Random(SEED + size)
    for _ in range(SPARSE_DATA // MIB):
        offset = rng.randrange(size // MIB) * MIB
        await b.client.write(pvol, pvid, offset, rng.randbytes(MIB))
    await b.settle()
    result = SizeResult(size)
    result.form = await b.form(pvol, svol)
    progress.print(f"    {name}: pair formed (initial copy, sparse) in {duration(result.form)}")
    return SizedPair(result, pvol, pvid, svol)


async def bench_sizes(b: Bench) -> list[SizeResult]:
    """Experiments 2 and 3 on one sparse pair per size, taking turns between the sizes.

    Taking turns (1 GiB, 64 GiB, 1 TiB, 1 GiB, ...) spreads whatever the host
    or the filesystem does meanwhile (writeback, journal commits) over every
    size, instead of charging it to whichever size runs first.
    """
    progress.print(f"[2] split latency, sizes {', '.join(human(s) for s in b.cfg.split_sizes)}")
    pairs = [await form_sparse_pair(b, size) for size in b.cfg.split_sizes]
    await b.settle()
    for _ in range(SPLITS):
        for pair in pairs:
            pair.result.splits.append(await pair.split(b))
            pair.result.resync_unchanged.append(await pair.resync(b))
    for pair in pairs:
        progress.print(
            f"    {human(pair.result.size)}: splits {millis(pair.result.splits)}; resync with "
            f"nothing changed {millis(pair.result.resync_unchanged)}"
        )

    # Context: a split right after writes nobody has flushed yet.
    first = pairs[0]
    payload = random.Random(SEED).randbytes(SEQ_BLOCK)
    first.result.dirty_bytes = b.cfg.write_size // 2
    for offset in range(0, first.result.dirty_bytes, SEQ_BLOCK):
        await b.client.write(first.pvol, first.pvid, offset, payload)
    first.result.split_dirty = await first.split(b)
    await first.resync(b)
    await b.client.flush(first.pvol, first.pvid)
    progress.print(
        f"    {human(first.result.size)}: split right after {human(first.result.dirty_bytes)} "
        f"of unflushed writes {duration(first.result.split_dirty)}"
    )

    progress.print("[3] resync after changing 1 MiB")
    await b.settle()
    changes: list[tuple[str, Change]] = [("4k", random_small_writes), ("1m", one_big_write)]
    for attempt in range(RESYNCS):
        for kind, change in changes:
            for pair in pairs:
                await pair.split(b)
                await change(b, pair.pvol, pair.pvid, pair.result.size, SEED + attempt)
                seconds = await pair.resync(b)
                if kind == "4k":
                    pair.result.resync_4k.append(seconds)
                else:
                    pair.result.resync_1m.append(seconds)
    for pair in pairs:
        progress.print(
            f"    {human(pair.result.size)}: after 256 x 4 KiB {millis(pair.result.resync_4k)}; "
            f"after one 1 MiB write {millis(pair.result.resync_1m)}"
        )
        await b.dissolve(pair.pvol, pair.pvol, pair.svol)
    return [pair.result for pair in pairs]


# -- 4 and 5. mirrored writes ---------------------------------------------------


async def sequential_writes(b: Bench, ldev: int, pvid: bytes, payload: bytes) -> SeqResult:
    start = time.perf_counter()
    for offset in range(0, b.cfg.write_size, SEQ_BLOCK):
        await b.client.write(ldev, pvid, offset, payload)
    acked = time.perf_counter() - start
    await b.client.flush(ldev, pvid)
    return SeqResult(b.cfg.write_size, acked, time.perf_counter() - start)


async def qd1_slice(
    b: Bench, ldev: int, pvid: bytes, rng: random.Random, result: Qd1Result
) -> None:
    """4 KiB writes at random places, one at a time, for one slice; adds to *result*."""
    block = rng.randbytes(SMALL_WRITE)
    blocks = b.cfg.write_size // SMALL_WRITE
    start = time.perf_counter()
    deadline = start + QD1_SLICE
    while time.perf_counter() < deadline:
        offset = rng.randrange(blocks) * SMALL_WRITE
        t0 = time.perf_counter_ns()
        await b.client.write(ldev, pvid, offset, block)
        result.latencies.append(time.perf_counter_ns() - t0)
    result.seconds += time.perf_counter() - start


def show_qd1(kind: str, r: Qd1Result) -> None:
    progress.print(
        f"    {kind}: {r.iops:,.0f} writes/s, median {r.median_us:.0f} µs, p99 {r.p99_us:.0f} µs"
    )


async def bench_writes(b: Bench, results: Results) -> None:
    size = b.cfg.write_size
    payload = random.Random(SEED).randbytes(SEQ_BLOCK)
    smpl, smpl_pvid = await b.volume(size, "smpl")
    pvol, pvid = await b.volume(size, "mirror-p")
    svol, _ = await b.volume(size, "mirror-s")
    await b.form(pvol, svol, "sync")
    await b.settle()
    progress.print(f"[4] {human(size)} of 1 MiB sequential writes + flush")
    for pass_ in PASSES:
        for kind, ldev, vol_pvid in (("smpl", smpl, smpl_pvid), ("sync", pvol, pvid)):
            if pass_ == "fresh":
                await b.in_thread(lambda: warm_up_memory(b.workdir, 2 * size))
            result = await sequential_writes(b, ldev, vol_pvid, payload)
            results.seq[pass_, kind] = result
            progress.print(
                f"    {pass_:9s} {KIND_NAMES[kind]:11s} acknowledged in {result.acked:.2f} s, "
                f"flushed in {result.flushed:.2f} s"
            )

    # 5: a third volume pair, async this time, written whole first so that no
    # volume allocates blocks during the test; then the three volumes take turns.
    apvol, apvid = await b.volume(size, "async-p")
    asvol, _ = await b.volume(size, "async-s")
    await sequential_writes(b, apvol, apvid, payload)
    form = await b.form(apvol, asvol, "async")
    progress.print(f"[5] async pair formed in {form:.2f} s")
    seconds = b.cfg.qd1_seconds
    progress.print(
        f"    4 KiB random writes, QD1, {seconds:g} s per volume in turns of {QD1_SLICE:g} s"
    )
    targets = {"smpl": (smpl, smpl_pvid), "sync": (pvol, pvid), "async": (apvol, apvid)}
    rngs = {kind: random.Random(SEED + n) for n, kind in enumerate(targets)}
    for kind in targets:
        results.qd1[kind] = Qd1Result([], 0.0)
    for _ in range(max(1, round(seconds / QD1_SLICE))):
        for kind, (ldev, vol_pvid) in targets.items():
            await qd1_slice(b, ldev, vol_pvid, rngs[kind], results.qd1[kind])
            if kind != "async":
                continue
            end = time.perf_counter()
            journal = (await b.pair_status(apvol))["journal"]
            assert isinstance(journal, dict)
            if int(journal["records"]) >= results.async_lag_records:
                results.async_lag_records = int(journal["records"])
                results.async_lag_bytes = int(journal["bytes"])
            await b.wait_pair(apvol)  # the journal drained: the next turn starts clean
            results.async_drain = max(results.async_drain, time.perf_counter() - end)
    for kind in targets:
        show_qd1(KIND_NAMES[kind], results.qd1[kind])
    progress.print(
        f"    largest journal lag at the end of a turn: {results.async_lag_records} records, "
        f"drained at most {duration(results.async_drain)} after the last write"
    )
    await b.dissolve(pvol, pvol, svol)
    await b.dissolve(apvol, apvol, asvol, smpl)


# -- running it all -----------------------------------------------------------------


async def run_all(server: Server, cfg: Config, workdir: Path) -> Results:
    results = Results()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_sigterm)
        async with open_client(parse_address(server.address)) as client:
            b = Bench(client, server, cfg, workdir)
            results.copy = await bench_initial_copy(b)
            results.sizes = await bench_sizes(b)
            await bench_writes(b, results)
        nursery.cancel_scope.cancel()
    return results


# -- reporting ------------------------------------------------------------------


def human(nbytes: int) -> str:
    """1073741824 -> "1 GiB", 134283264 -> "128.1 MiB"."""
    for unit, name in ((TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if nbytes >= unit:
            value = nbytes / unit
            return f"{value:.0f} {name}" if value == int(value) else f"{value:.1f} {name}"
    return f"{nbytes} B"


def duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def spread(values: list[float]) -> str:
    return f"{duration(min(values))} .. {duration(max(values))}"


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


Row = tuple[str, str, str, str, str]  # measurement, blockemu, reference, ratio, goal


def each(values: list[float]) -> str:
    """The single figures behind a mean, on a line of their own (nothing for one figure)."""
    return "\n(" + " + ".join(f"{t:.2f}" for t in values) + ")" if len(values) > 1 else ""


def copy_rows(cfg: Config, r: CopyResult) -> list[Row]:
    array, cp = mean(r.array), mean(r.cp)
    runs = f", mean of {len(r.array)} (ABBA)" if len(r.array) > 1 else ""
    mib = cfg.copy_data / MIB
    return [
        (
            f"initial copy: {human(cfg.copy_size)} volume, {human(cfg.copy_data)} of data, "
            f"source not cached{runs}. blockemu: pair create -> PAIR + fdatasync S-VOL; "
            "reference: cp --sparse=always + sync --data",
            f"{array:.2f} s\n{mib / array:,.0f} MiB/s{each(r.array)}",
            f"{cp:.2f} s\n{mib / cp:,.0f} MiB/s{each(r.cp)}",
            f"{cp / array:.2f}",
            "cp/array >= 1",
        ),
        (
            f"  space allocated by the copy (source: {human(r.source_allocated)})",
            human(r.svol_allocated),
            human(r.cp_allocated),
            "",
            "same as source",
        ),
    ]


def size_rows(results: list[SizeResult]) -> list[Row]:
    first = results[0]
    base = statistics.median(first.splits)
    rows: list[Row] = []
    for r in results:
        split = statistics.median(r.splits)
        rows.append(
            (
                f"split round trip (steady, sync pair in PAIR), {human(r.size)} volume; "
                f"median of {len(r.splits)} ({spread(r.splits)})",
                duration(split),
                "" if r is first else f"{human(first.size)}: {duration(base)}",
                f"{split / base:.2f}",
                "flat: size/smallest ~ 1",
            )
        )
    rows.append(
        (
            f"  context: split of the {human(first.size)} volume right after "
            f"{human(first.dirty_bytes)} of sync-mirrored writes not flushed yet",
            duration(first.split_dirty),
            f"flushed: {duration(base)}",
            f"{first.split_dirty / base:.1f}",
            "",
        )
    )
    for r in results:
        rows.append(
            (
                f"  context, {human(r.size)} volume with {SPARSE_DATA // MIB} MiB of data: "
                "pair create -> PAIR | resync -> PAIR with nothing changed",
                duration(r.form),
                duration(statistics.median(r.resync_unchanged)),
                "",
                "",
            )
        )
    return rows


def resync_rows(results: list[SizeResult]) -> list[Row]:
    small, large = results[0], results[1]
    rows: list[Row] = []
    picks: list[tuple[str, Callable[[SizeResult], list[float]]]] = [
        ("256 x 4 KiB writes at random places", lambda r: r.resync_4k),
        ("one 1 MiB write", lambda r: r.resync_1m),
    ]
    for title, pick in picks:
        base = statistics.median(pick(small))
        for r in results[1:]:
            value = statistics.median(pick(r))
            goal = f"{human(r.size)}/{human(small.size)} ~ 1" if r is large else "(extra size)"
            rows.append(
                (
                    f"resync -> PAIR after {title}, {human(r.size)} volume; "
                    f"median of {len(pick(r))} ({spread(pick(r))})",
                    duration(value),
                    f"{human(small.size)}: {duration(base)}",
                    f"{value / base:.2f}",
                    goal,
                )
            )
    return rows


def write_rows(res: Results) -> list[Row]:
    rows: list[Row] = []
    for pass_ in PASSES:
        smpl, sync = res.seq[pass_, "smpl"], res.seq[pass_, "sync"]
        for what, pick in (
            ("until the last is acknowledged", lambda s: s.acked),
            ("+ flush", lambda s: s.flushed),
        ):
            rows.append(
                (
                    f"{human(smpl.nbytes)} of 1 MiB sequential writes, QD1, {pass_} volume, "
                    f"{what}: sync P-VOL vs SMPL",
                    f"{sync.rate(pick(sync)):,.0f} MiB/s",
                    f"{smpl.rate(pick(smpl)):,.0f} MiB/s",
                    f"{pick(smpl) / pick(sync):.2f}",
                    "mirrored/SMPL >= 0.5",
                )
            )
    return rows


def qd1_rows(res: Results) -> list[Row]:
    smpl = res.qd1["smpl"]
    rows: list[Row] = []
    for kind in ("async", "sync"):
        r = res.qd1[kind]
        rows += [
            (
                f"4 KiB random writes, QD1, {kind} P-VOL in PAIR vs SMPL: throughput",
                f"{r.iops:,.0f} writes/s",
                f"{smpl.iops:,.0f} writes/s",
                f"{r.iops / smpl.iops:.2f}",
                "async/SMPL >= 0.9" if kind == "async" else "(extra, no goal)",
            ),
            (
                f"  latency median | p99 ({len(r.latencies):,} and {len(smpl.latencies):,} writes)",
                f"{r.median_us:,.0f} | {r.p99_us:,.0f} µs",
                f"{smpl.median_us:,.0f} | {smpl.p99_us:,.0f} µs",
                f"{r.median_us / smpl.median_us:.2f} | {r.p99_us / smpl.p99_us:.2f}",
                "(latency ratio)",
            ),
        ]
        if kind == "async":
            rows.append(
                (
                    "  async journal lag at the end of a turn | drained after (largest)",
                    f"{res.async_lag_records:,} rec. ({human(res.async_lag_bytes)})",
                    duration(res.async_drain),
                    "",
                    "",
                )
            )
    return rows


def print_report(
    cfg: Config, engine: str, fs: str, workdir: Path, res: Results, load: tuple[float, float]
) -> None:
    console = report_console(160)
    console.print(
        f"{machine_text()}, {load_text(*load)}; array root in {workdir.parent} ({fs}); "
        f"copy engine [bold]{engine}[/]",
        highlight=False,
    )
    table = Table(show_lines=False)
    table.add_column("measurement", ratio=1)
    add_columns(table, "blockemu", "reference", "ratio", right=True, no_wrap=True)
    add_columns(table, "goal", no_wrap=True)
    sections = [
        copy_rows(cfg, res.copy),
        size_rows(res.sizes),
        resync_rows(res.sizes),
        write_rows(res),
        qd1_rows(res),
    ]
    for number, rows in enumerate(sections, 1):
        for index, row in enumerate(rows):
            label = f"{number}. {row[0]}" if index == 0 else row[0]
            table.add_row(label, *row[1:])
        if number < len(sections):
            table.add_section()
    console.print(table)
    print_notes(
        console,
        [
            "ratio: cp/array and mirrored/SMPL are above 1 when blockemu is faster; size ratios "
            "are 1 when the time does not grow with the volume. Nothing is asserted; on small "
            "machines figures vary by 10-50% from run to run."
        ],
    )


# -- command line ---------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Costs of in-array replication on a real blockemu array: initial copy "
        "vs cp, split latency and resync time vs volume size, mirrored vs simplex writes. "
        "Progress goes to stderr.",
    )
    parser.add_argument(
        "--dir",
        default=DISK_PARENT,
        help=f"where to make the scratch directory; a disk filesystem (default {DISK_PARENT})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes, well under a minute in all"
    )
    args = parser.parse_args(argv)
    check_dir(parser, args.dir)
    refuse_memory_filesystem(
        parser,
        args.dir,
        "cache drops and fdatasync mean nothing there; give a directory on a disk filesystem",
    )
    cfg = QUICK if args.quick else FULL
    require_free_space(parser, args.dir, cfg.space_needed(), human)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = QUICK if args.quick else FULL
    fs = filesystem_text(args.dir)
    with scratch_dir(args.dir, "blockemu-repl-") as workdir:
        progress.print(f"scratch directory {workdir}: filesystem {fs}")
        with array_server(workdir) as server:
            engine = copy_engine(server)
            progress.print(f"array server pid {server.daemon.pid}, copy engine {engine}")
            load_before = load_average()
            results = trio.run(run_all, server, cfg, workdir)
            load = (load_before, load_average())
    print_report(cfg, engine, fs, workdir, results, load)


if __name__ == "__main__":
    run_main(main, "stopped; the array server was stopped and the scratch directory removed")
