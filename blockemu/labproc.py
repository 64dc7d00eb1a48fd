"""Processes, mounts and loop devices of a lab, found and released by PID and by path.

The lab never kills by name: it kills the PIDs it started (checked against
their start time, so a recycled PID is never hit), their descendants, and the
processes living in its network namespaces. It never unmounts by guess
either: only mounts under the lab directory and mounts of loop devices whose
backing file is under it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    """A process the lab started (or found): pid + start time identify it for sure."""

    pid: int
    start: int  # /proc/PID/stat field 22: clock ticks after boot
    role: str  # "array", "agent", "attach", "other"
    node: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "start": self.start, "role": self.role, "node": self.node}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Proc:
        node = data.get("node")
        return cls(int(str(data["pid"])), int(str(data["start"])), str(data["role"]),
                   None if node is None else str(node))  # fmt: skip


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which may hold spaces and parentheses.
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def parent(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def alive(pid: int, start: int | None = None) -> bool:
    """Running (not a zombie), and the same process if *start* is given."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return start is None or int(fields[19]) == start


def is_alive(proc: Proc) -> bool:
    return alive(proc.pid, proc.start)


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def found(pid: int, role: str, node: str | None = None) -> Proc | None:
    """A :class:`Proc` for a live *pid* (its start time read now), or None."""
    start = start_time(pid)
    if start is None or not alive(pid, start):
        return None
    return Proc(pid, start, role, node)


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(pids: Iterable[int]) -> list[int]:
    """Every live descendant of *pids*, children before grandchildren."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        ppid = parent(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = list(pids)
    while todo:
        kids = children.get(todo.pop(0), [])
        out += kids
        todo += kids
    return [p for p in out if alive(p)]


def in_netns(inodes: Iterable[int]) -> list[int]:
    """Live processes whose network namespace is one of *inodes*."""
    wanted = set(inodes)
    pids = []
    for pid in _all_pids():
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        if ino in wanted and pid != os.getpid() and alive(pid):
            pids.append(pid)
    return pids


def reap(pids: Iterable[int]) -> None:
    """Collect our own dead children (a zombie still has a PID)."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def send(pids: Iterable[int], sig: int) -> list[int]:
    """Signal each live pid; the ones signalled."""
    sent = []
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                sent.append(pid)
    return sent


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of *pids* is alive; the ones still alive after *timeout*."""
    left = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        reap(left)
        left = [p for p in left if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def stop(pids: Iterable[int], *, grace: float) -> list[int]:
    """SIGTERM, up to *grace* seconds, then SIGKILL; the pids that were signalled."""
    sent = send(pids, signal.SIGTERM)
    left = wait_gone(sent, grace)
    send(left, signal.SIGKILL)
    wait_gone(left, 5.0)
    return sent


def kill(pids: Iterable[int]) -> list[int]:
    """SIGKILL now (a crash: no clean-up of any kind); waits until they are gone."""
    sent = send(pids, signal.SIGKILL)
    wait_gone(sent, 5.0)
    return sent


# -- mounts and loop devices ----------------------------------------------------------------


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def mounts() -> list[tuple[str, str, str]]:
    """(mountpoint, fstype, source) of every mount this process sees, in mount order."""
    found_mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) > 4 and len(tail) >= 2:
                found_mounts.append((_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return found_mounts


def is_mounted(path: str | os.PathLike[str]) -> bool:
    """From mountinfo, not stat: a dead FUSE mount is still a mount (and stat would fail)."""
    return os.path.realpath(path) in {m for m, _, _ in mounts()}


def mounts_under(root: str) -> list[str]:
    """Mountpoints at or below *root*, deepest (last mounted) first."""
    return [m for m, _, _ in reversed(mounts()) if under(m, root)]


def loops() -> dict[str, str]:
    """/dev/loopN -> backing file, for every bound loop device."""
    found_loops = {}
    for entry in Path("/sys/block").glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        found_loops[f"/dev/{entry.name}"] = backing.removesuffix(" (deleted)")
    return found_loops


def loops_under(root: str) -> dict[str, str]:
    return {dev: f for dev, f in loops().items() if under(f, root)}


def release_loops(root: str) -> list[str]:
    """Unmount the filesystems on loop devices backed by files under *root*, detach the loops.

    Do this while the files' mounts (host views) are still there: a loop whose
    FUSE mount was lazily unmounted under it only shows a path like
    ``/hdisk0`` and can no longer be told apart from any other.
    """
    done = []
    root = os.path.realpath(root)
    for dev, backing in sorted(loops_under(root).items()):
        for mountpoint, _, source in reversed(mounts()):
            if source == dev:
                _umount(mountpoint)
                done.append(f"unmounted {mountpoint} ({dev})")
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=30)
        done.append(f"detached {dev} ({backing})")
    return done


def release_storage(root: str) -> list[str]:
    """Unmount and detach everything that uses files under *root*; what was done.

    Loop devices (and what is mounted on them) first, while their backing
    paths still read as under *root*; then the mounts under *root*, deepest
    first, lazily, so a dead FUSE mount never blocks.
    """
    done = release_loops(root)
    for mountpoint in mounts_under(os.path.realpath(root)):
        _umount(mountpoint)
        done.append(f"unmounted {mountpoint}")
    return done


def orphan_loops() -> dict[str, str]:
    """Loop devices backed by a file whose mount was detached (path like ``/hdisk0``).

    They cannot be attributed to a lab any more; ``lab down`` names them so a
    person can decide.
    """
    return {dev: f for dev, f in loops().items()
            if f.startswith("/hdisk") and not os.path.exists(f)}  # fmt: skip


def _umount(path: str) -> None:
    """Lazy unmount: a dead FUSE daemon or a busy file cannot make it hang or fail."""
    subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)
