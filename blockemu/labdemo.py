"""`blockemu lab demo`: the problem the patent solves, and its fix, told on a real lab.

One run per reflection policy, each on a fresh two-node namespace lab:

1. ``lab up``: an array, node1 (active) and node2 (standby). The pairs start
   split -- last night's backup exists -- and every host scanned its disks
   at install time, so both buffers know the backup S-VOL.
2. node1 resyncs the group (through nodeagent), puts ext4 on the P-VOL(s)
   through its host view and runs a database (SQLite; PostgreSQL with data
   and WAL on two volumes of one consistency group).
3. Tonight's backup: ``nodeagent split`` of the group while the database
   writes; its Stage X/Y/Z progress is shown as it happens. The S-VOL gets a
   new identity (PVID).
4. node1 crashes (every process of the node is SIGKILLed).
5. node2 takes over, mounts the P-VOL, checks the database (nothing
   acknowledged lost) and resumes it; then it mounts the backup S-VOL and
   checks the database in it.

With ``reflection = "eager"`` (the patent) node2 learned the new PVID during
the split and everything works. With ``off`` node2 still holds the
install-time PVID and its access to the S-VOL fails with EIO: the patent's
Fig. 2. A summary table compares the runs; an SVG per run shows both nodes'
roles and flags over time. The exit status is non-zero if any run did not
end as its policy predicts (off *must* meet EIO; eager and lazy must not).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeagent.events import read_events

from . import lab, labnode, netns
from .hostbuffer import HostBuffer
from .hostdisk import DiskError, MountedDisk
from .labconfig import LAB_GROUP, LAB_PVOL_BASE, LAB_SVOL_BASE
from .labrun import wait_for
from .labstate import LabOptions, LabState
from .timeline import Lane, lane_from_events, write_svg
from .workloads import (
    Check,
    Postgres,
    PostgresError,
    ledger_batches,
    postgres_bindir,
    sqlite_verify,
    sqlite_write,
)

Out = Callable[[str], None]

#: What each policy is expected to show on node2's S-VOL after the takeover.
EXPECT_SVOL_USABLE = {"eager": True, "lazy": True, "off": False}
DEMO_SUBNET = "10.213.250.0/24"
PG_PORT = 25432


@dataclass
class RunResult:
    """One policy's run: timings, what node2 found, the database checks, what went wrong."""

    policy: str
    db: str
    takeover: float | None = None  # kill -> node2 active with its recovery over
    answering: float | None = None  # kill -> database checked on node2's P-VOL
    svol: str = "not reached"
    primary: Check | None = None
    backup: Check | None = None
    timeline: Path | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class _Clock:
    """Step lines with the time since the run began."""

    def __init__(self, out: Out) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.wall0 = time.time()

    def say(self, text: str) -> None:
        self.out(f"[{time.monotonic() - self.t0:7.2f}s] {text}")


def _nodeagent(state: LabState, node: str, *args: str, say: Out | None = None) -> None:
    """`nodeagent ARGS` on *node* (control socket: no network needed); progress to *say*."""
    cmd = [sys.executable, "-m", "nodeagent", *args, "--config", str(state.node_config(node))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if say is not None:
            say("    " + line.rstrip())
    err = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0:
        raise RuntimeError(f"nodeagent {' '.join(args)} on {node} failed: {err.strip()}")


def _node(directory: Path, node: str) -> dict[str, Any]:
    return dict(lab.status(directory)["nodes"][node])


def _all_idle(directory: Path) -> bool:
    nodes = lab.status(directory)["nodes"].values()
    return all(n["role"] in ("active", "standby") and n["flag"] == "0" for n in nodes)


def device_of(state: LabState, node: str, ldev: int) -> Path | None:
    """The device file of *ldev* in *node*'s host view, per its buffer (None: not there)."""
    entry = HostBuffer.load(state.buffer(node), node).by_ldev(ldev)
    return state.view(node) / entry.device if entry else None


def run_policy(base: Path, policy: str, db: str, out: Out) -> RunResult:
    """The whole story once, under *policy*, with database *db* (sqlite or postgres)."""
    result = RunResult(policy, db)
    clock = _Clock(out)
    say = clock.say
    pairs = 2 if db == "postgres" else 1
    directory = base / policy
    opts = LabOptions(
        directory=directory,
        name="demo",
        subnet=DEMO_SUBNET,
        nodes=2,
        reflection=policy,
        pairs=pairs,
        heartbeat_interval=0.2,
        initial_split=True,
    )
    say(f"=== reflection = {policy!r}, database {db} ===")
    say("lab up: array + node1 + node2; last night's backup exists, every host scanned it")
    state = lab.up(opts, out=lambda line: out("    " + line))
    disks: list[MountedDisk] = []
    servers: list[Postgres] = []
    markers: list[tuple[float, str]] = []
    t_kill: float | None = None
    try:
        wait_for("node1 active, every flag 0", lambda: _all_idle(directory), 60)
        say("node1: resync the group for today (nodeagent resync)")
        _nodeagent(state, "node1", "resync", LAB_GROUP, "--quiet")
        wait_for("every flag 0", lambda: _all_idle(directory), 60)
        pvols = [LAB_PVOL_BASE + i for i in range(pairs)]
        svols = [LAB_SVOL_BASE + i for i in range(pairs)]
        node1_ns = netns.nsenter_argv(state.topology().ns("node1"), [])
        mnt1 = state.node_dir("node1") / "mnt"
        say("node1: ext4 on the P-VOL(s) through its host view (losetup --direct-io=on)")
        names = ["data", "wal"][:pairs]
        for ldev, name in zip(pvols, names, strict=True):
            dev = device_of(state, "node1", ldev)
            if dev is None:
                raise RuntimeError(f"node1's buffer has no P-VOL {ldev:#x}")
            disks.append(MountedDisk.attach(dev, mnt1 / name, mkfs=True, label=name))
        ledger = directory / "sqlite.ledger"
        load: subprocess.Popen[bytes] | None = None
        pg: Postgres | None = None
        if db == "sqlite":
            say("node1: SQLite writing batches of 10 rows, one transaction each")
            load = subprocess.Popen(
                [
                    *node1_ns,
                    sys.executable,
                    "-m",
                    "blockemu.workloads",
                    "sqlite-load",
                    str(mnt1 / "data" / "app.db"),
                    str(ledger),
                    "--pause",
                    "0.01",
                ]
            )
            wait_for("20 committed batches", lambda: ledger_batches(ledger) >= 20, 60)
        else:
            say("node1: PostgreSQL, data and WAL on two volumes of one consistency group")
            pg = Postgres(
                mnt1 / "data" / "pg",
                port=PG_PORT,
                socket_dir=state.node_dir("node1") / "pgsock",
                prefix=node1_ns,
            )
            servers.append(pg)
            pg.initdb(mnt1 / "wal" / "pg_wal")
            pg.start()
            pg.pgbench_init()
            say("node1: pgbench running (TPC-B-like transactions)")
            load = subprocess.Popen(
                pg.argv("pgbench", "-U", "postgres", "-n", "-c", "2", "-T", "120", "postgres"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(2)
        acked_before = ledger_batches(ledger)
        say(f"tonight's backup: nodeagent split {LAB_GROUP} on node1, while the database writes")
        markers.append((time.time(), "nodeagent split"))
        _nodeagent(state, "node1", "split", LAB_GROUP, say=say)
        markers.append((time.time(), "split done (Stage Z)"))
        time.sleep(1.0)
        say("node1 crashes: SIGKILL of every process of the node")
        t_kill = time.time()
        markers.append((t_kill, "node1 SIGKILL"))
        killed_at = time.monotonic()
        labnode.kill_node(directory, "node1", out=lambda line: out("    " + line))
        disks = [d for d in disks if not str(d.mountpoint).startswith(str(mnt1))]
        if load is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                load.wait(10)
        servers = [s for s in servers if s is not pg]

        def node2_ready() -> bool:
            n = _node(directory, "node2")
            return n["role"] == "active" and n["flag"] == "0" and n["mounted"]

        wait_for("node2 to take over and finish its recovery", node2_ready, 60)
        result.takeover = time.monotonic() - killed_at
        markers.append((time.time(), "node2 active"))
        say(f"node2 is active {result.takeover:.2f}s after the crash")
        mnt2 = state.node_dir("node2") / "mnt"
        result.primary = _resume_primary(state, pvols, names, mnt2, db, disks, servers, ledger, say)
        result.answering = time.monotonic() - killed_at
        markers.append((time.time(), "database answering on node2"))
        if not result.primary.ok:
            result.failures.append(f"P-VOL database on node2: {result.primary.detail}")
        result.svol, result.backup = _check_backup(
            state, svols, names, mnt2, db, disks, servers, acked_before, say
        )
        markers.append((time.time(), "backup checked"))
        usable = result.backup is not None and result.backup.ok
        if usable != EXPECT_SVOL_USABLE[policy]:
            expected = "usable" if EXPECT_SVOL_USABLE[policy] else "EIO"
            result.failures.append(f"S-VOL on node2: {result.svol} (expected {expected})")
    except (RuntimeError, OSError, DiskError, PostgresError, lab.LabError) as exc:
        result.failures.append(f"{type(exc).__name__}: {exc}")
        say(f"FAILED: {exc}")
    finally:
        for server in servers:
            with contextlib.suppress(PostgresError, OSError, subprocess.TimeoutExpired):
                server.stop("immediate")
        for disk in reversed(disks):
            disk.detach()
        with contextlib.suppress(Exception):
            result.timeline = _timeline(state, policy, clock.wall0, t_kill, markers)
        say("lab down")
        lab.down(directory, out=lambda line: out("    " + line))
    return result


def _check_backup(
    state: LabState,
    svols: list[int],
    names: list[str],
    mnt2: Path,
    db: str,
    disks: list[MountedDisk],
    servers: list[Postgres],
    acked_before: int,
    say: Out,
) -> tuple[str, Check | None]:
    """node2 mounts the backup S-VOL(s) and checks the database in them."""
    say("node2: mount tonight's backup (the S-VOLs) and check the database in it")
    for ldev in svols:
        dev = device_of(state, "node2", ldev)
        if dev is None:
            say(f"    S-VOL {ldev:#06x} is not in node2's buffer")
            return "not in node2's view", None
        try:
            fd = os.open(dev, os.O_RDONLY)
            try:
                os.pread(fd, 4096, 0)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            say(
                f"    {dev.name}: EIO -- node2's buffer holds the S-VOL's old identity "
                "(the patent's Fig. 2); `blockemu host refresh` would fix it by hand"
            )
            return "EIO (stale identity)", None
    backup = [
        MountedDisk.attach(device_of(state, "node2", ldev) or Path(), mnt2 / f"backup-{n}")
        for ldev, n in zip(svols, names, strict=True)
    ]
    disks.extend(backup)
    if db == "sqlite":
        check = sqlite_verify(mnt2 / "backup-data" / "app.db", at_least_batches=acked_before)
    else:
        copy = Postgres(
            mnt2 / "backup-data" / "pg",
            port=PG_PORT + 1,
            socket_dir=state.node_dir("node2") / "pgsock",
        )
        copy.adopt_copy(mnt2 / "backup-wal" / "pg_wal")
        servers.append(copy)
        copy.start()
        check = copy.verify()
        copy.stop("fast")
        servers.remove(copy)
    say(f"    backup: {'OK' if check.ok else 'FAILED'}: {check.detail}")
    return ("usable" if check.ok else "mounted, check failed"), check


def _resume_primary(
    state: LabState,
    pvols: list[int],
    names: list[str],
    mnt2: Path,
    db: str,
    disks: list[MountedDisk],
    servers: list[Postgres],
    ledger: Path,
    say: Out,
) -> Check:
    """node2 mounts the P-VOL(s), checks the database, and resumes it."""
    say("node2: mount the P-VOL(s), check the database, resume it")
    for ldev, name in zip(pvols, names, strict=True):
        dev = device_of(state, "node2", ldev)
        if dev is None:
            return Check(False, 0, f"P-VOL {ldev:#06x} is not in node2's buffer")
        disks.append(MountedDisk.attach(dev, mnt2 / name))
    if db == "sqlite":
        db_file = mnt2 / "data" / "app.db"
        check = sqlite_verify(db_file, at_least_batches=ledger_batches(ledger))
        if check.ok:
            sqlite_write(db_file, batches=5)
            check = sqlite_verify(db_file)
    else:
        node2_ns = netns.nsenter_argv(state.topology().ns("node2"), [])
        pg = Postgres(
            mnt2 / "data" / "pg",
            port=PG_PORT,
            socket_dir=state.node_dir("node2") / "pgsock",
            prefix=node2_ns,
        )
        pg.adopt_copy(mnt2 / "wal" / "pg_wal")  # node1's mount paths are gone with node1
        servers.append(pg)
        pg.start()  # crash recovery from its WAL volume
        check = pg.verify()
        if check.ok:
            pg.pgbench(transactions=50, clients=2)
            check = pg.verify()
    say(f"    primary: {'OK' if check.ok else 'FAILED'}: {check.detail}")
    return check


def _timeline(
    state: LabState, policy: str, start: float, died: float | None, markers: list[tuple[float, str]]
) -> Path:
    lanes: list[Lane] = []
    for node in state.nodes:
        path = state.node_dir(node) / "events.jsonl"
        events = read_events(path) if path.exists() else []
        lanes.append(lane_from_events(node, events, died if node == "node1" else None))
    end = time.time()
    return write_svg(
        state.directory.parent / f"timeline-{policy}.svg",
        lanes,
        markers,
        title=f"blockemu lab demo: reflection = {policy!r}",
        start=start,
        end=end,
    )


def choose_databases(wanted: str) -> list[str]:
    """``sqlite``, ``postgres`` or ``both`` (postgres only where it is installed)."""
    if wanted == "both":
        return ["sqlite", "postgres"] if postgres_bindir() else ["sqlite"]
    if wanted == "postgres" and postgres_bindir() is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
    return [wanted]


@contextlib.contextmanager
def _demo_dir(base: Path) -> Iterator[Path]:
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # the postgres user walks into the mounts below it
    yield base


def run_demo(base: Path, policies: list[str], databases: list[str], out: Out) -> list[RunResult]:
    """Every (database, policy) run, one after the other."""
    results = []
    with _demo_dir(base):
        for db in databases:
            for policy in policies:
                results.append(run_policy(base / db, policy, db, out))
    return results
