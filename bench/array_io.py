"""Throughput and IOPS of block I/O through a real blockemu array, next to a baseline.

What is measured
----------------
A ``blockemu serve`` process is started on a fresh root in a temporary
directory, a volume of ``--size`` is created in it, and one
:class:`~blockemu.client.ArrayClient` in this process drives five workloads
through the unix socket:

1. 1 MiB sequential writes over the whole volume, then one FLUSH (fdatasync);
2. 1 MiB sequential reads of the whole volume, pass after pass until
   ``--seconds`` have passed (at least one pass: a single pass of a cached
   volume takes milliseconds, too short to time);
3. 4 KiB random writes for ``--seconds``, queue depth 1;
4. 4 KiB random reads for ``--seconds``, queue depth 1;
5. 4 KiB random reads and writes (half each) for ``--seconds``, queue depth 16:
   16 trio tasks share the one client, which pipelines their requests.

Random offsets are 4 KiB aligned and drawn from :class:`random.Random` with a
fixed seed, so every run issues the same sequence of requests.

Why the baseline is what it is
------------------------------
The array stores a volume as a sparse file and serves it with ``os.pread`` and
``os.pwrite``. The baseline therefore runs the same workloads with
``os.pread``/``os.pwrite`` (and ``os.fdatasync`` for the flush) on a plain
sparse file of the same size in the same directory, from this same Python
process: what a program gets from the file system without the array. The
ratio array/baseline is then the cost of the array itself -- framing, the
socket round trip, two event loops and a second process -- and not of the disk
or of Python. The queue-depth-16 baseline runs 16 threads, each doing its own
pread/pwrite; they share the GIL, so that row says how much the pipelined
client gains over what plain threads get, not what the disk could do.

A volume that fits in RAM is served from the page cache on both sides, so
only the flush of workload 1 touches the disk. Each workload runs on the array
first and on the baseline right after, so both see the same page-cache state.
Nothing here asserts on timings: the script reports figures, people judge them.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from rich.table import Table

from blockemu.address import parse_address
from blockemu.client import ArrayClient, open_client
from formats.units import format_size

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/common.py: see there
from common import (
    MIB,
    add_columns,
    array_server,
    check_dir,
    filesystem_text,
    format_rate,
    machine_text,
    number_type,
    print_json,
    print_notes,
    progress,
    python_text,
    ratio,
    report_console,
    run_main,
    scratch_dir,
    size_type,
)

SEQ_BLOCK = 1 << 20
RANDOM_BLOCK = 4096
SEED = 20240611
LDEV = 0x00

ARRAY_TEXT = "array: `blockemu serve` in its own process, one ArrayClient over a unix socket"
BASELINE_TEXT = (
    "baseline: os.pread/os.pwrite (+ os.fdatasync for the flush) on a sparse file in the "
    "same directory, from this process; QD1 in one thread, QD16 in 16 threads sharing the GIL"
)


# -- workloads and results -------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    unit: str  # "MiB/s" or "IOPS"
    kind: str  # "seq-write", "seq-read" or "random"
    write_share: float = 0.0  # random: fraction of requests that are writes
    depth: int = 1  # random: requests in flight at once


WORKLOADS = [
    Workload("seq-write", "1 MiB sequential write + flush", "MiB/s", "seq-write"),
    Workload("seq-read", "1 MiB sequential read, repeated passes", "MiB/s", "seq-read"),
    Workload("rand-write-qd1", "4 KiB random write, QD1", "IOPS", "random", write_share=1.0),
    Workload("rand-read-qd1", "4 KiB random read, QD1", "IOPS", "random", write_share=0.0),
    Workload(
        "rand-rw-qd16",
        "4 KiB random 50/50 read/write, QD16",
        "IOPS",
        "random",
        write_share=0.5,
        depth=16,
    ),
]


@dataclass(frozen=True)
class Result:
    ops: int
    nbytes: int
    seconds: float

    def rate(self, unit: str) -> float:
        """MiB/s or IOPS, as *unit* says."""
        if unit == "MiB/s":
            return self.nbytes / MIB / self.seconds
        return self.ops / self.seconds


@dataclass(frozen=True)
class Config:
    size: int
    seconds: float
    payload: bytes  # SEQ_BLOCK bytes of seeded random data; random writes use the first 4 KiB


def random_offset(rng: random.Random, size: int) -> int:
    return rng.randrange(size // RANDOM_BLOCK) * RANDOM_BLOCK


def check_length(data: bytes, expected: int, where: str) -> None:
    """A short read would inflate the figures: refuse it (this is not a timing check)."""
    if len(data) != expected:
        raise RuntimeError(f"{where}: read returned {len(data)} bytes instead of {expected}")


# -- the array side (trio, one client) -------------------------------------


@dataclass(frozen=True)
class ArrayVolume:
    client: ArrayClient
    ldev: int
    pvid: bytes

    async def read(self, offset: int, count: int) -> bytes:
        return await self.client.read(self.ldev, self.pvid, offset, count)

    async def write(self, offset: int, data: bytes) -> None:
        await self.client.write(self.ldev, self.pvid, offset, data)


async def array_seq_write(vol: ArrayVolume, cfg: Config) -> Result:
    start = time.perf_counter()
    for offset in range(0, cfg.size, SEQ_BLOCK):
        await vol.write(offset, cfg.payload)
    await vol.client.flush(vol.ldev, vol.pvid)
    return Result(cfg.size // SEQ_BLOCK, cfg.size, time.perf_counter() - start)


async def array_seq_read(vol: ArrayVolume, cfg: Config) -> Result:
    start = time.perf_counter()
    passes = 0
    while passes == 0 or time.perf_counter() - start < cfg.seconds:
        for offset in range(0, cfg.size, SEQ_BLOCK):
            check_length(await vol.read(offset, SEQ_BLOCK), SEQ_BLOCK, "array")
        passes += 1
    elapsed = time.perf_counter() - start
    return Result(passes * cfg.size // SEQ_BLOCK, passes * cfg.size, elapsed)


async def array_random(vol: ArrayVolume, cfg: Config, write_share: float, depth: int) -> Result:
    block = cfg.payload[:RANDOM_BLOCK]
    counts = [0] * depth
    deadline = time.perf_counter() + cfg.seconds

    async def worker(index: int) -> None:
        rng = random.Random(SEED + index)
        while time.perf_counter() < deadline:
            offset = random_offset(rng, cfg.size)
            if rng.random() < write_share:
                await vol.write(offset, block)
            else:
                check_length(await vol.read(offset, RANDOM_BLOCK), RANDOM_BLOCK, "array")
            counts[index] += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(depth):
            nursery.start_soon(worker, index)
    ops = sum(counts)
    return Result(ops, ops * RANDOM_BLOCK, time.perf_counter() - start)


async def run_on_array(workload: Workload, vol: ArrayVolume, cfg: Config) -> Result:
    if workload.kind == "seq-write":
        return await array_seq_write(vol, cfg)
    if workload.kind == "seq-read":
        return await array_seq_read(vol, cfg)
    return await array_random(vol, cfg, workload.write_share, workload.depth)


# -- the baseline side (plain file, synchronous) ---------------------------


def file_seq_write(fd: int, cfg: Config) -> Result:
    start = time.perf_counter()
    for offset in range(0, cfg.size, SEQ_BLOCK):
        os.pwrite(fd, cfg.payload, offset)
    os.fdatasync(fd)
    return Result(cfg.size // SEQ_BLOCK, cfg.size, time.perf_counter() - start)


def file_seq_read(fd: int, cfg: Config) -> Result:
    start = time.perf_counter()
    passes = 0
    while passes == 0 or time.perf_counter() - start < cfg.seconds:
        for offset in range(0, cfg.size, SEQ_BLOCK):
            check_length(os.pread(fd, SEQ_BLOCK, offset), SEQ_BLOCK, "baseline")
        passes += 1
    elapsed = time.perf_counter() - start
    return Result(passes * cfg.size // SEQ_BLOCK, passes * cfg.size, elapsed)


def file_random(fd: int, cfg: Config, write_share: float, depth: int) -> Result:
    block = cfg.payload[:RANDOM_BLOCK]
    counts = [0] * depth
    deadline = time.perf_counter() + cfg.seconds

    def worker(index: int) -> None:
        rng = random.Random(SEED + index)
        while time.perf_counter() < deadline:
            offset = random_offset(rng, cfg.size)
            if rng.random() < write_share:
                os.pwrite(fd, block, offset)
            else:
                check_length(os.pread(fd, RANDOM_BLOCK, offset), RANDOM_BLOCK, "baseline")
            counts[index] += 1

    start = time.perf_counter()
    if depth == 1:
        worker(0)
    else:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(depth)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    ops = sum(counts)
    return Result(ops, ops * RANDOM_BLOCK, time.perf_counter() - start)


def run_on_file(workload: Workload, fd: int, cfg: Config) -> Result:
    if workload.kind == "seq-write":
        return file_seq_write(fd, cfg)
    if workload.kind == "seq-read":
        return file_seq_read(fd, cfg)
    return file_random(fd, cfg, workload.write_share, workload.depth)


# -- the baseline file ----------------------------------------------------


@contextmanager
def baseline_file(workdir: Path, size: int) -> Iterator[int]:
    fd = os.open(workdir / "baseline.img", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        yield fd
    finally:
        os.close(fd)


# -- running it all --------------------------------------------------------


def announce(step: str, workload: Workload, cfg: Config) -> None:
    timed = f" for {cfg.seconds:g} s" if workload.kind != "seq-write" else ""
    progress.print(f"{step} {workload.title}{timed} ...")


def show_result(workload: Workload, result: Result) -> None:
    rate = format_rate(result.rate(workload.unit), workload.unit)
    progress.print(
        f"        {rate} {workload.unit} ({result.ops:,} requests in {result.seconds:.2f} s)"
    )


async def run_all(address: str, fd: int, cfg: Config) -> list[tuple[Workload, Result, Result]]:
    """Each workload on the array, then right after on the baseline file."""
    rows = []
    async with open_client(parse_address(address)) as client:
        header = await client.create(LDEV, cfg.size, label="bench")
        vol = ArrayVolume(client, header.ldev, header.pvid)
        for number, workload in enumerate(WORKLOADS, 1):
            step = f"[{number}/{len(WORKLOADS)}]"
            announce(f"{step} array   ", workload, cfg)
            on_array = await run_on_array(workload, vol, cfg)
            show_result(workload, on_array)
            announce(f"{step} baseline", workload, cfg)
            run = functools.partial(run_on_file, workload, fd, cfg)
            on_file = await trio.to_thread.run_sync(run)
            show_result(workload, on_file)
            rows.append((workload, on_array, on_file))
    return rows


# -- reporting -------------------------------------------------------------


def machine_info(workdir: Path, cfg: Config) -> dict[str, Any]:
    return {
        "python": python_text(),
        "cores": os.cpu_count(),
        "dir": str(workdir.parent),
        "filesystem": filesystem_text(workdir),
        "size": cfg.size,
        "seconds": cfg.seconds,
        "seed": SEED,
        "array": ARRAY_TEXT,
        "baseline": BASELINE_TEXT,
    }


def result_json(workload: Workload, on_array: Result, on_file: Result) -> dict[str, Any]:
    array_rate = on_array.rate(workload.unit)
    file_rate = on_file.rate(workload.unit)
    return {
        "workload": workload.name,
        "title": workload.title,
        "unit": workload.unit,
        "array": round(array_rate, 2),
        "baseline": round(file_rate, 2),
        "ratio": round(ratio(array_rate, file_rate), 2),
        "array_requests": on_array.ops,
        "array_seconds": round(on_array.seconds, 4),
        "baseline_requests": on_file.ops,
        "baseline_seconds": round(on_file.seconds, 4),
    }


def print_table(info: dict[str, Any], rows: list[tuple[Workload, Result, Result]]) -> None:
    console = report_console(120)
    console.print(
        f"{machine_text()}; volume {format_size(info['size'])} "
        f"in {info['dir']} ({info['filesystem']}); timed workloads {info['seconds']:g} s per side",
        highlight=False,
    )
    table = Table()
    add_columns(table, "workload", "unit")
    add_columns(table, "array", "baseline", "array/baseline", right=True)
    for workload, on_array, on_file in rows:
        array_rate = on_array.rate(workload.unit)
        file_rate = on_file.rate(workload.unit)
        table.add_row(
            workload.title,
            workload.unit,
            format_rate(array_rate, workload.unit),
            format_rate(file_rate, workload.unit),
            f"{ratio(array_rate, file_rate):.2f}",
        )
    console.print(table)
    print_notes(console, (ARRAY_TEXT, BASELINE_TEXT))


# -- command line ----------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Block I/O through a blockemu array over a unix socket, next to plain "
        "pread/pwrite on a file (the baseline). Progress goes to stderr.",
    )
    parser.add_argument(
        "--size",
        type=size_type(SEQ_BLOCK, SEQ_BLOCK, "a positive multiple of 1M"),
        default="256M",
        help="volume size (default 256M)",
    )
    parser.add_argument(
        "--seconds",
        type=number_type("--seconds", lambda v: v > 0, "a positive number"),
        default=5.0,
        help="duration of the read and random workloads, per side (default 5)",
    )
    parser.add_argument(
        "--dir", help="where to put the array root and the baseline file (default: $TMPDIR)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.dir is not None:
        check_dir(parser, args.dir)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = Config(args.size, args.seconds, random.Random(SEED).randbytes(SEQ_BLOCK))
    with scratch_dir(args.dir, "blockemu-bench-", quiet=True) as workdir:
        info = machine_info(workdir, cfg)
        progress.print(f"scratch directory {workdir} ({info['filesystem']})")
        with array_server(workdir) as server, baseline_file(workdir, cfg.size) as fd:
            rows = trio.run(run_all, server.address, fd, cfg)
    if args.json:
        info["workloads"] = [result_json(*row) for row in rows]
        print_json(info)
    else:
        print_table(info, rows)


if __name__ == "__main__":
    run_main(main, "interrupted; the array server was stopped and the scratch directory removed")
