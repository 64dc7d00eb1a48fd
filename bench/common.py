"""What the benchmark scripts of bench/ share, so that each of them keeps only what it measures.

* the progress console: progress lines go to stderr, the report to stdout;
* Ctrl-C and SIGTERM: :class:`Terminated`, a SIGTERM handler (or a trio task)
  raising it, and :func:`run_main`, which turns either into a last line and
  exit status 130 once the clean-up has run;
* scratch directories (:func:`scratch_dir`): removed at the end, on failure,
  Ctrl-C and SIGTERM too, but kept and named if something is still mounted
  below them; :func:`mounts_under` and :func:`unmount_fuse` for FUSE mounts
  left behind;
* ``--dir`` and other options: a directory, not a filesystem in RAM (tmpfs has
  no O_DIRECT, and fdatasync and cache drops mean nothing there), enough free
  space; argparse types for sizes and seconds;
* processes started in a session of their own (Ctrl-C reaches only the script,
  which stops them by PID in its own order) with their stdout and stderr in
  files of the scratch directory (:func:`launch`), a wait for their ready
  line, stopping by PID (:func:`stop_process`: SIGTERM, SIGKILL if they
  linger) and what they logged; :func:`array_server`, a ``blockemu serve`` on
  a unix socket, ready once it printed its ``listening on`` line;
* the report: the machine and load header, a console as wide as the table,
  columns, notes, rates, ratios, coloured goal marks, JSON on stdout.

How the scripts import it
-------------------------
The scripts are run as files (``.venv/bin/python bench/X.py``), and bench/ is
not a package (no ``__init__.py``, not installed), so a relative import cannot
work. Each script ends its imports with::

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import ...

Python puts a script's own directory first on ``sys.path`` anyway, but not
under ``python -P``, ``-I`` or ``PYTHONSAFEPATH``, nor for ``python -m
bench.X`` or a script imported from elsewhere; the explicit insert finds this
file in all of those cases, with no package, no install step and nothing
outside bench/. ``mypy bench/*.py`` finds it as module ``common`` too (a
directory without ``__init__.py`` is a search root), and ruff takes the import
after a ``sys.path`` change as still at the top of the file (no E402).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import trio
from rich.console import Console
from rich.table import Table

from formats.errors import FormatError
from formats.units import parse_size

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
#: sun_path of a unix socket holds 108 bytes including the trailing NUL.
MAX_SOCKET_PATH = 107
#: Filesystems that live in RAM: no O_DIRECT, and fdatasync and cache drops mean nothing there.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"})
#: The default ``--dir`` of the benchmarks that need a disk filesystem.
DISK_PARENT = "/var/tmp"
SERVER_START_TIMEOUT = 15.0
SERVER_STOP_TIMEOUT = 10.0
POLL = 0.05

#: Progress lines: stderr, so that stdout holds only the report.
progress = Console(stderr=True, highlight=False)


# -- Ctrl-C and SIGTERM -----------------------------------------------------------


class Terminated(Exception):
    """SIGTERM reached this script."""


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: raise :class:`Terminated`; a second SIGTERM is ignored, so that it
    cannot cut the clean-up short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated("terminated by SIGTERM")


def handle_sigterm() -> None:
    """SIGTERM raises :class:`Terminated`, so that the clean-up runs as for Ctrl-C."""
    signal.signal(signal.SIGTERM, raise_terminated)


async def watch_sigterm() -> None:
    """The same inside ``trio.run`` (a handler must not raise in the middle of trio): start
    this in a nursery, cancel it when done."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            raise Terminated("terminated by SIGTERM")


def stopped(exc: BaseException) -> bool:
    """Ctrl-C or SIGTERM, possibly wrapped in the exception group of a trio nursery."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup((KeyboardInterrupt, Terminated)) is not None
    return isinstance(exc, KeyboardInterrupt | Terminated)


def run_main(main: Callable[[], int | None], stopped_message: str) -> NoReturn:
    """Run a script's *main* and exit with what it returns; after Ctrl-C or SIGTERM (the
    clean-up has run on the way out) print *stopped_message* and exit with 130."""
    try:
        status = main()
    except BaseException as exc:
        if not stopped(exc):
            raise
        progress.print(stopped_message)
        sys.exit(130)
    sys.exit(status)


# -- filesystems, mounts and scratch directories -------------------------------------


def filesystem_of(path: Path | str) -> tuple[str, str]:
    """(type, source) of the mount holding *path*, e.g. ``("ext4", "/dev/vda")``."""
    target = os.path.realpath(path)
    best = ("", "unknown", "unknown")
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                source, mountpoint, fstype = line.split()[:3]
                inside = target == mountpoint or target.startswith(mountpoint.rstrip("/") + "/")
                if inside and len(mountpoint) >= len(best[0]):
                    best = (mountpoint, fstype, source)
    except OSError:
        pass
    return best[1], best[2]


def filesystem_text(path: Path | str) -> str:
    """``"ext4 on /dev/vda"``: the filesystem of *path*, as the reports name it."""
    fstype, source = filesystem_of(path)
    return f"{fstype} on {source}"


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def mounts_under(directory: Path | str) -> list[Path]:
    """Mount points at or below *directory*, from /proc/self/mountinfo (octal escapes
    decoded); FUSE mounts whose daemon died are listed too, unlike os.path.ismount."""
    root = os.path.realpath(directory)
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4])
                if point == root or point.startswith(root + "/"):
                    found.append(Path(point))
    except OSError:
        pass
    return found


def unmount_fuse(path: Path) -> bool:
    """``fusermount3 -u -z``: detach a FUSE mount lazily, even a busy one or one whose
    daemon died. Whether it worked."""
    done = subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
    return done.returncode == 0


@contextmanager
def scratch_dir(parent: str | None, prefix: str, *, quiet: bool = False) -> Iterator[Path]:
    """A fresh directory under *parent* (None: the system's temporary directory), removed
    at the end, on failure, Ctrl-C and SIGTERM too (said so unless *quiet*); kept, and
    named, if something is still mounted below it: removing it would reach into the mount."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        left = mounts_under(path)
        if left:
            progress.print(f"[red]kept {path}: still mounted there: {', '.join(map(str, left))}")
        else:
            if not quiet:
                progress.print(f"removing {path}")
            shutil.rmtree(path, ignore_errors=True)


# -- options ---------------------------------------------------------------------


def check_dir(parser: argparse.ArgumentParser, directory: str) -> None:
    if not os.path.isdir(directory):
        parser.error(f"--dir {directory!r} is not a directory")


def refuse_memory_filesystem(parser: argparse.ArgumentParser, directory: str, why: str) -> None:
    """An error unless *directory* is on a disk filesystem; *why* says what needs one."""
    fstype, _ = filesystem_of(directory)
    if fstype in MEMORY_FILESYSTEMS:
        parser.error(f"--dir {directory!r} is on {fstype}, in RAM: {why}")


def require_free_space(
    parser: argparse.ArgumentParser,
    directory: str,
    needed: int,
    show: Callable[[int], str],
    what: str = "",
) -> None:
    """An error unless *directory* has *needed* bytes free (sizes written by *show*)."""
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        parser.error(
            f"--dir {directory!r} has {show(free)} free; this run needs about {show(needed)}{what}"
        )


def size_type(minimum: int, step: int, rule: str) -> Callable[[str], int]:
    """An argparse type: a size such as ``256M``, at least *minimum* and a multiple of
    *step*; *rule* says so in the error (``size '1K' must be RULE``)."""

    def parse(text: str) -> int:
        try:
            size = parse_size(text)
        except FormatError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if size < minimum or size % step:
            raise argparse.ArgumentTypeError(f"size {text!r} must be {rule}")
        return size

    return parse


def number_type(option: str, ok: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    """An argparse type: a number for which *ok* holds; *rule* says which in the error."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{option} {text!r} must be {rule}")
        return value

    return parse


# -- processes ---------------------------------------------------------------------


def stop_process(
    proc: subprocess.Popen[Any] | None, name: str, *, timeout: float, cont: bool = False
) -> None:
    """Stop *proc* by PID: SIGTERM (after SIGCONT if *cont*: a stopped process acts on it
    only once continued) and wait up to *timeout* s; SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    if cont:
        os.kill(proc.pid, signal.SIGCONT)
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        progress.print(f"[yellow]{name} (pid {proc.pid}) ignored SIGTERM; killing it[/]")
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Daemon:
    """A process started by :func:`launch`, named *title* in messages."""

    title: str
    proc: subprocess.Popen[bytes]
    out: Path  # its stdout
    log: Path  # its stderr

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logged(self) -> str:
        return self.log.read_text(errors="replace").strip() if self.log.exists() else ""

    def wait_for(self, ready: str, timeout: float) -> str:
        """The first complete line of its stdout that holds *ready*; RuntimeError (with its
        log) if it exits first, or after *timeout* s."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.out.read_text(errors="replace")
            for line in text[: text.rfind("\n") + 1].splitlines():
                if ready in line:
                    return line
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.title} exited with status {self.proc.returncode} at start: "
                    f"{self.logged()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.title} did not start within {timeout:.0f} s")
            time.sleep(POLL)

    def stop(self, timeout: float) -> None:
        stop_process(self.proc, self.title, timeout=timeout)

    def report(self) -> None:
        """Show what it logged (the scripts start daemons at --log-level warning) and an
        unclean exit status."""
        text = self.logged()
        if text:
            progress.print(f"[yellow]{self.title} log:[/]")
            progress.print(text, markup=False)
        if self.proc.returncode not in (None, 0, -signal.SIGTERM):
            progress.print(f"[yellow]{self.title} exited with status {self.proc.returncode}[/]")


def launch(workdir: Path, name: str, command: list[str], title: str) -> Daemon:
    """Start *command* in a session of its own, stdout to WORKDIR/NAME.out and stderr to
    WORKDIR/NAME.log. Record it for the clean-up before waiting for it to be ready."""
    out, log = workdir / f"{name}.out", workdir / f"{name}.log"
    with out.open("wb") as out_file, log.open("wb") as log_file:
        # A session of its own: Ctrl-C reaches only the script, which then stops
        # its processes by PID, in its own order.
        proc = subprocess.Popen(command, stdout=out_file, stderr=log_file, start_new_session=True)
    return Daemon(title, proc, out, log)


# -- blockemu serve ----------------------------------------------------------------


def array_socket(workdir: Path) -> Path:
    """WORKDIR/array.sock, the array's unix socket, if its path is short enough for one."""
    sock = workdir / "array.sock"
    if len(str(sock)) > MAX_SOCKET_PATH:
        raise RuntimeError(f"{sock} is too long for a unix socket path: pick a shorter --dir")
    return sock


def serve_command(workdir: Path, sock: Path, *options: str) -> list[str]:
    """``blockemu serve`` on WORKDIR/root listening on *sock*, plus *options*; warnings and
    up in its log."""
    command = [sys.executable, "-m", "blockemu", "serve", "--root", str(workdir / "root")]
    return [*command, "--listen", f"unix:{sock}", *options, "--log-level", "warning"]


def tcp_address(banner: str) -> str:
    """The TCP address in the first line of ``blockemu serve`` (``... listening on A B``)."""
    return next(a for a in banner.split("listening on ")[1].split() if a.startswith("tcp:"))


@dataclass(frozen=True)
class Server:
    daemon: Daemon
    root: Path
    sock: Path
    banner: str  # its first line: volumes, pairs, copy engine, the addresses it listens on

    @property
    def address(self) -> str:
        return f"unix:{self.sock}"


@contextmanager
def array_server(workdir: Path, *options: str, title: str = "array server") -> Iterator[Server]:
    """Run ``blockemu serve`` on WORKDIR/root (see :func:`serve_command`), ready once it
    printed its ``listening on`` line; stopped by PID and its log shown at the end."""
    sock = array_socket(workdir)
    daemon = launch(workdir, "server", serve_command(workdir, sock, *options), title)
    try:
        banner = daemon.wait_for("listening on", SERVER_START_TIMEOUT)
        yield Server(daemon, workdir / "root", sock, banner)
    finally:
        daemon.stop(SERVER_STOP_TIMEOUT)
        daemon.report()


# -- the report ------------------------------------------------------------------


def python_text() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def machine_text() -> str:
    """``CPython 3.11.7, 2 cores``: how the first line of a report starts."""
    return f"{python_text()}, {os.cpu_count()} cores"


def load_average() -> float:
    """The 1-minute load average: other work on the machine moves the figures."""
    return os.getloadavg()[0]


def load_text(start: float, end: float) -> str:
    return f"load average {start:.1f} at the start and {end:.1f} at the end"


def report_console(width: int) -> Console:
    """stdout, as wide as the terminal, or *width* columns when redirected (a report in a
    file is not folded at 80 columns)."""
    return Console() if sys.stdout.isatty() else Console(width=width)


def add_columns(table: Table, *names: str, right: bool = False, no_wrap: bool = False) -> None:
    for name in names:
        table.add_column(name, justify="right" if right else "left", no_wrap=no_wrap)


def print_notes(console: Console, notes: Iterable[str]) -> None:
    """Plain lines under the table, each on one line however long."""
    for note in notes:
        console.print(note, highlight=False, markup=False, soft_wrap=True)


def format_rate(value: float, unit: str) -> str:
    """MiB/s with one decimal, anything else (IOPS) whole."""
    return f"{value:,.1f}" if unit == "MiB/s" else f"{value:,.0f}"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ratio(top: float, bottom: float) -> float:
    """*top* / *bottom*, NaN where *bottom* is 0."""
    return top / bottom if bottom else float("nan")


def coloured(text: str, ok: bool) -> str:
    """*text* in green where a goal is met, in red where it is not."""
    return f"[{'green' if ok else 'red'}]{text}[/]"


def print_json(data: dict[str, Any]) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
