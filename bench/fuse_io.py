"""fio through the FUSE views of a real blockemu array, next to a plain file (the baseline).

What is measured
----------------
One run puts three targets side by side, all on the filesystem of ``--dir``
(default ``/var/tmp``; a filesystem in RAM is refused, it has no O_DIRECT):

* **native**: a plain sparse file in the scratch directory, opened by fio
  with ``O_DIRECT``: what the disk and the filesystem give without blockemu;
* **array view**: ``blockemu serve --mount`` (a real process) on a root in
  the scratch directory; a loop device (``losetup --direct-io=on``) on its
  file ``00-10``; fio on the loop device;
* **host view**: the same array, started with a ``hosts.toml`` and a key
  generated here; ``blockemu host scan`` and ``blockemu attach --foreground``
  (another real process) over TCP loopback as host ``bench``, which sees only
  LDEV 00:11; a loop device (``--direct-io=on``) on its file ``hdisk0``; fio
  on that loop device.

Each volume, and the native file, is ``--size`` bytes. Eight fio jobs run on
each target in turn (native, array view, host view, then the next job), all
with ``--direct=1`` on the file or device and ``--output-format=json``:

1. 1 MiB sequential writes over the whole target, then an fsync
   (``--end_fsync=1``, counted in the time), at QD1 (``psync``) and QD16
   (``libaio --iodepth=16``). They fill every target, so the reads after
   them read data, not holes;
2. 1 MiB sequential reads of the whole target, QD1 and QD16;
3. 4 KiB random reads, QD1 and QD16, time-based (``--runtime``);
4. 4 KiB random writes, QD1 and QD16, time-based.

Sequential jobs are size-based (one pass of ``--size``), random jobs
time-based. fio's default buffer contents are random bytes: a zero write
covering a whole 256 KiB track would punch a hole in a volume instead of
writing it. fio's offsets are seeded (``randrepeat``), so every target gets
the same sequence.

Reading the figures
-------------------
The views are the path a host's I/O takes: loop device -> FUSE -> daemon ->
(host view: TCP -> array) -> the volume file. The array keeps its own I/O
buffered (a write is acknowledged once it is in the array's page cache, and
FLUSH makes it durable), while the native file is O_DIRECT: so the views'
reads of a freshly written volume come from the array's page cache, and can
beat the native figure, and their writes are durable only at the fsync of
the sequential write jobs. The ratios are what a host gets compared with
using the disk directly, which is what the goals of the issue are about:

* array view >= 0.9 x native at 1 MiB, >= 0.6 x native at 4 KiB QD1;
* host view over TCP >= 0.5 x the array view at 1 MiB.

Nothing here asserts on timings: the script prints figures and goals.

Needs root (loop devices, FUSE mounts with ``allow_other``) and fio.
Everything it makes is undone at the end, on failure, Ctrl-C and SIGTERM
too: fio stopped, loop devices detached, the attach and serve processes
stopped by PID with SIGTERM (SIGKILL if they linger), any FUSE mount left
behind detached lazily, the scratch directory removed; then it checks that
no loop device or mount of its own remains.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from blockemu.fusefs import mounts_at
from formats.units import format_size, parse_size

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/common.py: see there
from common import (
    DISK_PARENT,
    KIB,
    MIB,
    Daemon,
    add_columns,
    array_socket,
    check_dir,
    coloured,
    filesystem_text,
    format_rate,
    handle_sigterm,
    launch,
    load_average,
    mounts_under,
    number_type,
    print_json,
    print_notes,
    progress,
    python_text,
    ratio,
    refuse_memory_filesystem,
    report_console,
    require_free_space,
    run_main,
    serve_command,
    size_type,
    stop_process,
    tcp_address,
    unmount_fuse,
)

DEFAULT_SIZE = "1G"
DEFAULT_RUNTIME = 5.0
QUICK_SIZE = "256M"
QUICK_RUNTIME = 2.0
ARRAY_LDEV = "00:10"  # the array view's volume (file 00-10)
HOST_LDEV = "00:11"  # the host view's volume (hdisk0 of host bench)
HOST_ID = "bench"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 60.0

TARGETS = ("native", "array", "host")
TARGET_TITLES = {"native": "native", "array": "array view", "host": "host view"}
TARGET_TEXT = {
    "native": "native: fio with O_DIRECT on a plain sparse file in the scratch directory",
    "array": "array view: loop device (--direct-io=on) on `blockemu serve --mount` DIR/00-10",
    "host": "host view: loop device (--direct-io=on) on `blockemu attach` DIR/hdisk0, "
    "host bench authenticated over TCP loopback to the same array",
}


# -- jobs, goals and results ----------------------------------------------------


@dataclass(frozen=True)
class Goal:
    ratio: str  # "array/native" or "host/array"
    minimum: float


@dataclass(frozen=True)
class Job:
    name: str
    title: str
    rw: str  # fio --rw
    block: int
    depth: int
    goals: tuple[Goal, ...] = ()

    @property
    def unit(self) -> str:
        return "MiB/s" if self.block >= MIB else "IOPS"

    @property
    def timed(self) -> bool:
        return self.rw.startswith("rand")

    @property
    def direction(self) -> str:
        """The section of fio's JSON that holds the figures."""
        return "write" if "write" in self.rw else "read"

    def goal(self, ratio: str) -> Goal | None:
        return next((g for g in self.goals if g.ratio == ratio), None)

    def fio_args(self, target: str, size: int, runtime: float) -> list[str]:
        engine = ["--ioengine=psync"] if self.depth == 1 else ["--ioengine=libaio"]
        args = [
            "fio",
            f"--name={self.name}",
            f"--filename={target}",
            f"--rw={self.rw}",
            f"--bs={self.block}",
            *engine,
            f"--iodepth={self.depth}",
            "--direct=1",
            f"--size={size}",
            "--randrepeat=1",
            "--output-format=json",
        ]
        if self.timed:
            args += ["--time_based", f"--runtime={runtime:g}s"]
        if self.rw == "write":
            args.append("--end_fsync=1")
        return args


SEQ_GOALS = (Goal("array/native", 0.9), Goal("host/array", 0.5))
QD1_GOALS = (Goal("array/native", 0.6),)

JOBS = [
    Job("seq-write-qd1", "1 MiB seq write + fsync, QD1", "write", MIB, 1, SEQ_GOALS),
    Job("seq-write-qd16", "1 MiB seq write + fsync, QD16", "write", MIB, 16, SEQ_GOALS),
    Job("seq-read-qd1", "1 MiB seq read, QD1", "read", MIB, 1, SEQ_GOALS),
    Job("seq-read-qd16", "1 MiB seq read, QD16", "read", MIB, 16, SEQ_GOALS),
    Job("rand-read-qd1", "4 KiB random read, QD1", "randread", 4 * KIB, 1, QD1_GOALS),
    Job("rand-read-qd16", "4 KiB random read, QD16", "randread", 4 * KIB, 16),
    Job("rand-write-qd1", "4 KiB random write, QD1", "randwrite", 4 * KIB, 1, QD1_GOALS),
    Job("rand-write-qd16", "4 KiB random write, QD16", "randwrite", 4 * KIB, 16),
]


@dataclass(frozen=True)
class Measurement:
    """One fio job on one target, and what the daemons spent meanwhile."""

    mib_s: float
    iops: float
    io_bytes: int
    seconds: float
    lat_mean_us: float
    lat_p99_us: float
    daemon_cpu: dict[str, float]  # daemon name -> CPU seconds during the job

    def rate(self, unit: str) -> float:
        return self.mib_s if unit == "MiB/s" else self.iops

    def as_json(self) -> dict[str, Any]:
        return {
            "mib_s": round(self.mib_s, 2),
            "iops": round(self.iops, 1),
            "io_bytes": self.io_bytes,
            "seconds": round(self.seconds, 3),
            "lat_mean_us": round(self.lat_mean_us, 1),
            "lat_p99_us": round(self.lat_p99_us, 1),
            "daemon_cpu_seconds": {k: round(v, 2) for k, v in self.daemon_cpu.items()},
        }


@dataclass
class Row:
    job: Job
    results: dict[str, Measurement] = field(default_factory=dict)

    def rate(self, target: str) -> float:
        return self.results[target].rate(self.job.unit)

    def ratio(self, name: str) -> float:
        top, bottom = name.split("/")
        return ratio(self.rate(top), self.rate(bottom))


def parse_fio(stdout: str, job: Job) -> tuple[float, float, int, float, float, float]:
    """(MiB/s, IOPS, bytes, seconds, mean and p99 completion latency in µs) from fio's JSON."""
    start = stdout.find("{")  # fio may print notes before the JSON
    if start < 0:
        raise RuntimeError(f"fio printed no JSON: {stdout[:500]}")
    report = json.loads(stdout[start:])["jobs"][0]
    if report.get("error"):
        raise RuntimeError(f"fio job {job.name} failed with error {report['error']}")
    side = report[job.direction]
    clat = side.get("clat_ns", {})
    p99 = clat.get("percentile", {}).get("99.000000", 0)
    return (
        side["bw_bytes"] / MIB,
        side["iops"],
        side["io_bytes"],
        side["runtime"] / 1000,
        clat.get("mean", 0.0) / 1000,
        p99 / 1000,
    )


# -- processes, loop devices and mounts: all of it undone in cleanup() ---------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of *pid* so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(*cmd: str, timeout: float = CLI_TIMEOUT) -> str:
    """Run *cmd*; its stdout, or RuntimeError with its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip()
        raise RuntimeError(f"`{' '.join(cmd)}` failed with status {proc.returncode}: {why}")
    return proc.stdout


def blockemu(*args: str) -> str:
    return run(sys.executable, "-m", "blockemu", *args)


class Rig:
    """Everything this run started or attached, undone in reverse by :meth:`cleanup`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.daemons: dict[str, Daemon] = {}  # "serve"/"attach", in order
        self.loops: list[str] = []
        self.mountpoints: list[Path] = []
        self.fio: subprocess.Popen[str] | None = None

    # -- starting things -------------------------------------------------

    def start_daemon(self, name: str, command: list[str], ready: str) -> str:
        """Start *command* as daemon *name*; wait for a stdout line holding *ready*."""
        daemon = launch(self.workdir, name, command, f"blockemu {name}")
        self.daemons[name] = daemon  # stopped by cleanup(), after the loop devices
        return daemon.wait_for(ready, START_TIMEOUT)

    def losetup(self, file: Path) -> str:
        deadline = time.monotonic() + 5
        while not file.exists():  # a new volume shows in the mount at the next lookup
            if time.monotonic() > deadline:
                raise RuntimeError(f"{file} did not appear in the mount")
            time.sleep(0.05)
        dev = run("losetup", "--direct-io=on", "-f", "--show", str(file)).strip()
        self.loops.append(dev)
        return dev

    def run_fio(self, args: list[str]) -> str:
        self.fio = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        out, err = self.fio.communicate()
        code = self.fio.returncode
        self.fio = None
        if code != 0:
            lines = (err.strip() or out.strip()).splitlines()
            more = f"\n  ... and {len(lines) - 5} more lines" if len(lines) > 5 else ""
            shown = "\n  ".join(lines[:5])
            raise RuntimeError(f"fio failed with status {code}:\n  {shown}{more}")
        return out

    def daemon_cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(daemon.pid) for name, daemon in self.daemons.items()}

    # -- undoing them ----------------------------------------------------

    def cleanup(self) -> list[str]:
        """Undo everything, in reverse order; the problems left (empty if clean)."""
        stop_process(self.fio, "fio", timeout=10)
        # Also a loop device attached just before a Ctrl-C, before it was recorded.
        for dev in reversed([name for name, _ in self.loops_of_this_run()]):
            detach_loop(dev)
        for daemon in reversed(list(self.daemons.values())):
            daemon.stop(STOP_TIMEOUT)
        for path in self.mountpoints:
            if any(t.startswith("fuse") for t in mounts_at(str(path))):
                progress.print(f"[yellow]{path} is still mounted; detaching it lazily[/]")
                unmount_fuse(path)
            if mounts_at(str(path)):
                subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return self.leftovers()

    def inside(self, path: str) -> bool:
        return path == str(self.workdir) or path.startswith(f"{self.workdir}/")

    def loops_of_this_run(self) -> list[tuple[str, str]]:
        """(device, backing file) of each loop device this run attached or on its files."""
        listing = subprocess.run(
            ["losetup", "--list", "--noheadings", "--raw", "--output", "NAME,BACK-FILE"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        found = []
        for line in listing.splitlines():
            name, _, back = line.partition(" ")
            if name in self.loops or self.inside(back):
                found.append((name, back))
        return found

    def leftovers(self) -> list[str]:
        """Loop devices and mounts of this run that still exist."""
        problems = [f"loop device {dev} ({back}) is still attached"
                    for dev, back in self.loops_of_this_run()]  # fmt: skip
        problems += [f"{point} is still mounted" for point in mounts_under(self.workdir)]
        return problems


def detach_loop(dev: str) -> None:
    for attempt in range(20):
        proc = subprocess.run(["losetup", "-d", dev], capture_output=True, text=True)
        if proc.returncode == 0:
            return
        if attempt == 19:
            progress.print(f"[yellow]losetup -d {dev} failed: {proc.stderr.strip()}[/]")
        time.sleep(0.1)


def loop_dio(dev: str) -> bool:
    """Whether the loop device really does direct I/O (losetup may fall back silently)."""
    try:
        return Path(f"/sys/block/{Path(dev).name}/loop/dio").read_text().strip() == "1"
    except OSError:
        return False


# -- setting up the three targets ------------------------------------------------


@dataclass
class Targets:
    paths: dict[str, str]  # target -> file or device fio runs on
    dio: dict[str, bool]  # array/host -> loop device does direct I/O
    pids: dict[str, int]


def set_up(rig: Rig, size: int) -> Targets:
    workdir = rig.workdir
    sock = array_socket(workdir)
    (workdir / "keys").mkdir(mode=0o700)
    key_file = workdir / "keys" / f"{HOST_ID}.key"
    key_file.write_text(os.urandom(32).hex() + "\n")
    key_file.chmod(0o600)
    hosts = workdir / "hosts.toml"
    hosts.write_text(
        f'[hosts.{HOST_ID}]\nkey_file = "keys/{HOST_ID}.key"\nldevs = ["{HOST_LDEV}"]\n'
    )
    array_mount, host_mount = workdir / "array", workdir / "host"
    for path in (array_mount, host_mount):
        path.mkdir()
        rig.mountpoints.append(path)

    progress.print("starting `blockemu serve --mount` with a hosts config ...")
    banner = rig.start_daemon(
        "serve",
        serve_command(workdir, sock, "--listen", "tcp:127.0.0.1:0",
                      "--mount", str(array_mount), "--hosts", str(hosts)),
        "listening on",
    )  # fmt: skip
    tcp = tcp_address(banner)
    admin = f"unix:{sock}"
    for ldev, label in ((ARRAY_LDEV, "bench-array-view"), (HOST_LDEV, "bench-host-view")):
        blockemu("vol", "create", ldev, str(size), "--label", label, "--array", admin)
    progress.print(f"volumes {ARRAY_LDEV} and {HOST_LDEV} of {format_size(size)}; array at {tcp}")

    host_opts = ["--array", tcp, "--host", HOST_ID, "--key-file", str(key_file),
                 "--buffer", str(workdir / f"{HOST_ID}.buf")]  # fmt: skip
    blockemu("host", "scan", *host_opts)
    progress.print(f"starting `blockemu attach` as host {HOST_ID} over TCP ...")
    rig.start_daemon(
        "attach",
        [sys.executable, "-m", "blockemu", "attach", str(host_mount), "--foreground",
         *host_opts, "--log-level", "warning"],
        "mounted at",
    )  # fmt: skip

    array_loop = rig.losetup(array_mount / ARRAY_LDEV.replace(":", "-"))
    host_loop = rig.losetup(host_mount / "hdisk0")
    dio = {"array": loop_dio(array_loop), "host": loop_dio(host_loop)}
    for target, dev in (("array", array_loop), ("host", host_loop)):
        state = "on" if dio[target] else "[yellow]OFF (the loop driver fell back)[/]"
        progress.print(f"{TARGET_TITLES[target]}: {dev}, direct I/O {state}")
    return Targets(
        {"native": str(workdir / "native.img"), "array": array_loop, "host": host_loop},
        dio,
        {name: daemon.pid for name, daemon in rig.daemons.items()},
    )


# -- running the jobs -------------------------------------------------------------


def measure(rig: Rig, job: Job, target: str, path: str, size: int, runtime: float) -> Measurement:
    args = job.fio_args(path, size, runtime)
    if target == "native":
        args.append("--fallocate=none")  # sparse, like the volume files
    before = rig.daemon_cpu()
    out = rig.run_fio(args)
    after = rig.daemon_cpu()
    mib_s, iops, nbytes, seconds, lat_mean, lat_p99 = parse_fio(out, job)
    if not job.timed and nbytes != size:
        raise RuntimeError(f"fio {job.name} on {path} moved {nbytes} bytes instead of {size}")
    cpu = {name: after[name] - before[name] for name in after}
    return Measurement(mib_s, iops, nbytes, seconds, lat_mean, lat_p99, cpu)


def run_all(rig: Rig, targets: Targets, size: int, runtime: float) -> list[Row]:
    rows = []
    for number, job in enumerate(JOBS, 1):
        row = Row(job)
        for target in TARGETS:
            timed = f" for {runtime:g} s" if job.timed else f" over {format_size(size)}"
            progress.print(
                f"[{number}/{len(JOBS)}] {job.title} on {TARGET_TITLES[target]}{timed} ..."
            )
            result = measure(rig, job, target, targets.paths[target], size, runtime)
            row.results[target] = result
            cpu = ", ".join(
                f"{name} {seconds / result.seconds:.0%} CPU"
                for name, seconds in result.daemon_cpu.items()
                if target != "native" and result.seconds and (name == "serve" or target == "host")
            )
            progress.print(
                f"        {format_rate(result.rate(job.unit), job.unit)} {job.unit}, "
                f"mean latency {result.lat_mean_us:,.0f} µs" + (f"; {cpu}" if cpu else "")
            )
        rows.append(row)
    return rows


# -- reporting ---------------------------------------------------------------------


def fio_version() -> str:
    try:
        return run("fio", "--version").strip()
    except (OSError, RuntimeError):
        return "fio (unknown version)"


def machine_info(parent: str, size: int, runtime: float, targets: Targets) -> dict[str, Any]:
    return {
        "python": python_text(),
        "kernel": platform.release(),
        "fio": fio_version(),
        "cores": os.cpu_count(),
        "dir": parent,
        "filesystem": filesystem_text(parent),
        "size": size,
        "runtime": runtime,
        "loop_direct_io": targets.dio,
        "targets": TARGET_TEXT,
    }


def goal_json(row: Row, name: str) -> dict[str, Any]:
    goal = row.job.goal(name)
    value = row.ratio(name)
    return {
        "ratio": round(value, 3),
        "goal": goal.minimum if goal else None,
        "met": (value >= goal.minimum) if goal else None,
    }


def row_json(row: Row) -> dict[str, Any]:
    job = row.job
    return {
        "job": job.name,
        "title": job.title,
        "rw": job.rw,
        "block": job.block,
        "depth": job.depth,
        "unit": job.unit,
        **{t: round(row.rate(t), 2) for t in TARGETS},
        "array/native": goal_json(row, "array/native"),
        "host/array": goal_json(row, "host/array"),
        "details": {t: row.results[t].as_json() for t in TARGETS},
    }


def ratio_cell(row: Row, name: str) -> str:
    value = row.ratio(name)
    goal = row.job.goal(name)
    if goal is None:
        return f"{value:.2f}"
    return coloured(f"{value:.2f}", value >= goal.minimum)


def goal_cell(row: Row, name: str) -> str:
    goal = row.job.goal(name)
    if goal is None:
        return "[dim]-[/]"
    met = row.ratio(name) >= goal.minimum
    return f">= {goal.minimum:.1f}" + (" met" if met else " [red]MISSED[/]")


def print_table(info: dict[str, Any], rows: list[Row], load: tuple[float, float]) -> None:
    console = report_console(160)
    dio = ", ".join(
        f"{TARGET_TITLES[t]} {'on' if on else 'OFF'}" for t, on in info["loop_direct_io"].items()
    )
    console.print(
        f"{info['python']}, {info['fio']}, Linux {info['kernel']}, {info['cores']} cores; "
        f"{format_size(info['size'])} per target in {info['dir']} ({info['filesystem']}); "
        f"random jobs {info['runtime']:g} s; loop direct I/O: {dio}; "
        f"load {load[0]:.2f} -> {load[1]:.2f}",
        highlight=False,
        soft_wrap=True,
    )
    table = Table()
    add_columns(table, "job", "unit")
    add_columns(table, *(TARGET_TITLES[t] for t in TARGETS), "array/native", right=True)
    add_columns(table, "goal")
    add_columns(table, "host/array", right=True)
    add_columns(table, "goal")
    for row in rows:
        table.add_row(
            row.job.title,
            row.job.unit,
            *(format_rate(row.rate(t), row.job.unit) for t in TARGETS),
            ratio_cell(row, "array/native"),
            goal_cell(row, "array/native"),
            ratio_cell(row, "host/array"),
            goal_cell(row, "host/array"),
        )
    console.print(table)
    print_notes(console, TARGET_TEXT.values())


# -- command line ------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="fio through the FUSE array view and a host view over TCP of a real "
        "blockemu array (loop devices with direct I/O), next to O_DIRECT on a plain file. "
        "Needs root. Progress goes to stderr, the table to stdout.",
    )
    parser.add_argument(
        "--size",
        type=size_type(16 * MIB, MIB, "a multiple of 1M, at least 16M"),
        help=f"bytes per target: native file and each volume (default {DEFAULT_SIZE}, "
        f"--quick {QUICK_SIZE})",
    )
    parser.add_argument(
        "--runtime",
        type=number_type("--runtime", lambda v: v >= 1, "a number of seconds >= 1"),
        help=f"seconds per random job and target (default {DEFAULT_RUNTIME:g}, "
        f"--quick {QUICK_RUNTIME:g})",
    )
    parser.add_argument(
        "--dir",
        default=DISK_PARENT,
        help=f"where to make the scratch directory; a disk filesystem (default {DISK_PARENT})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SIZE} per target and {QUICK_RUNTIME:g} s per random job",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = parse_size(QUICK_SIZE if args.quick else DEFAULT_SIZE)
    if args.runtime is None:
        args.runtime = QUICK_RUNTIME if args.quick else DEFAULT_RUNTIME
    check_dir(parser, args.dir)
    args.dir = os.path.realpath(args.dir)
    refuse_memory_filesystem(
        parser,
        args.dir,
        "the native baseline needs O_DIRECT on a disk filesystem; give a directory on one",
    )
    needed = 3 * args.size + 256 * MIB
    what = " (the native file and two volumes of --size)"
    require_free_space(parser, args.dir, needed, format_size, what)
    return args


def check_privileges() -> None:
    """Exit with a clear message unless this is root with FUSE, loop devices and fio."""
    if os.geteuid() != 0:
        sys.exit(
            "bench/fuse_io.py needs root: it attaches loop devices and mounts FUSE "
            "filesystems. Run it as root, e.g. `sudo .venv/bin/python bench/fuse_io.py`."
        )
    for path, what in (("/dev/fuse", "FUSE"), ("/dev/loop-control", "loop devices")):
        if not os.path.exists(path):
            sys.exit(f"bench/fuse_io.py needs {what}: {path} is missing on this machine")
    missing = [tool for tool in ("fio", "losetup", "fusermount3") if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"bench/fuse_io.py needs {', '.join(missing)} on PATH: `apt-get install -y fio "
            "util-linux fuse3` (`make bench-fuse` installs fio itself)"
        )


def finish(rig: Rig) -> list[str]:
    """Undo everything, immune to a second Ctrl-C; remove the scratch directory if clean."""
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        progress.print("cleaning up: fio, loop devices, attach, serve, mounts ...")
        problems = rig.cleanup()
        for daemon in rig.daemons.values():
            daemon.report()  # what it logged (warnings and up), an unclean exit
        if problems:
            progress.print(f"[red]left behind, scratch directory {rig.workdir} kept:[/]")
            for problem in problems:
                progress.print(f"[red]  {problem}[/]")
        else:
            shutil.rmtree(rig.workdir, ignore_errors=True)
            progress.print(f"removed {rig.workdir}; no loop device or mount of this run remains")
        return problems
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_privileges()
    handle_sigterm()
    rig = Rig(Path(tempfile.mkdtemp(prefix="be-fuse-", dir=args.dir)))
    try:
        progress.print(f"scratch directory {rig.workdir} ({filesystem_text(rig.workdir)})")
        targets = set_up(rig, args.size)
        info = machine_info(args.dir, args.size, args.runtime, targets)
        info["daemon_pids"] = targets.pids
        load_before = load_average()
        rows = run_all(rig, targets, args.size, args.runtime)
        load = (load_before, load_average())
    finally:
        problems = finish(rig)
    if args.json:
        info["load"] = [round(x, 2) for x in load]
        info["jobs"] = [row_json(row) for row in rows]
        info["leftovers"] = problems
        print_json(info)
    else:
        print_table(info, rows, load)
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        run_main(main, "stopped; everything this run started was undone (see above)")
    except RuntimeError as exc:  # a step failed: the message says which and why
        progress.print("[red]bench/fuse_io.py failed:[/]", end=" ")
        progress.print(str(exc), markup=False)
        sys.exit(1)
