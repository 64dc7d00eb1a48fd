"""End-to-end takeover in the namespace lab, and database throughput through the mounts.

Part 1, takeover: one two-node lab (``blockemu lab up``, heartbeat 0.2 s x 3).
Each run, the active node mounts the SQLite database on its P-VOL (ext4 on a
loop device on its FUSE host view), runs the writer until 10 batches
committed, and is crashed (``lab kill``: SIGKILL of every process of the
node). t0 is the kill. The other node becomes active; the clock stops when
the database *answers there*: P-VOL mounted through that node's host view,
``PRAGMA integrity_check`` ok, every acknowledged batch present, one new
transaction committed. The dead node is started again (it rejoins as a
standby) and the next run crashes the other one. Reported: p50/p99/max of
kill -> node active, and kill -> database answering.

Part 2, throughput (side by side, same run): SQLite inserts/s (10-row
transactions, WAL, synchronous=FULL) and pgbench TPS (2 clients) on ext4
through the active node's host view vs in a plain directory on the local
filesystem that holds the lab. The ratio is what the whole stack costs
(ext4 -> loop -> FUSE -> TCP -> array -> volume file).

Needs root. Not part of the tests: figures depend on the machine's load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    add_columns,
    load_average,
    load_text,
    machine_text,
    percentile,
    print_json,
    ratio,
    report_console,
)
from rich.table import Table

from blockemu import lab, labnode, netns
from blockemu.hostdisk import MountedDisk
from blockemu.labconfig import LAB_PVOL_BASE
from blockemu.labdemo import device_of
from blockemu.labrun import wait_for
from blockemu.labstate import LabOptions, LabState
from blockemu.workloads import (
    Postgres,
    ledger_batches,
    postgres_bindir,
    sqlite_verify,
    sqlite_write,
)

SUBNET = "10.213.251.0/24"


def _active(directory: Path) -> str | None:
    nodes = lab.status(directory)["nodes"]
    ready = [n for n, v in nodes.items() if v["role"] == "active" and v["flag"] == "0"
             and v["mounted"]]  # fmt: skip
    return ready[0] if len(ready) == 1 else None


def _pvol_device(state: LabState, node: str) -> Path:
    device = device_of(state, node, LAB_PVOL_BASE)
    if device is None:
        raise RuntimeError(f"{node}'s buffer has no P-VOL")
    return device


def takeover_runs(state: LabState, runs: int, say: Any) -> tuple[list[float], list[float]]:
    directory = state.directory
    ledger = directory / "ledger"
    active_times, answer_times = [], []
    first = True
    for run in range(1, runs + 1):
        node = _active(directory)
        if node is None:
            wait_for("one active node", lambda: _active(directory) is not None, 60)
            node = _active(directory)
        assert node is not None
        other = next(n for n in state.nodes if n != node)
        mnt = state.node_dir(node) / "mnt"
        MountedDisk.attach(_pvol_device(state, node), mnt, mkfs=first)
        first = False
        writer = subprocess.Popen(netns.nsenter_argv(state.topology().ns(node), [
            sys.executable, "-m", "blockemu.workloads", "sqlite-load", str(mnt / "app.db"),
            str(ledger), "--pause", "0.005"]))  # fmt: skip
        goal = ledger_batches(ledger) + 10
        wait_for("10 committed batches", lambda goal=goal: ledger_batches(ledger) >= goal, 60)
        t0 = time.monotonic()
        labnode.kill_node(directory, node, out=lambda line: None)
        writer.wait(10)
        wait_for(f"{other} active", lambda other=other: _active(directory) == other, 60)
        t_active = time.monotonic() - t0
        mnt2 = state.node_dir(other) / "mnt"
        disk = MountedDisk.attach(_pvol_device(state, other), mnt2)
        check = sqlite_verify(mnt2 / "app.db", at_least_batches=ledger_batches(ledger))
        if not check.ok:
            raise RuntimeError(f"run {run}: database on {other}: {check.detail}")
        sqlite_write(mnt2 / "app.db", batches=1)
        t_answer = time.monotonic() - t0
        disk.detach()
        active_times.append(t_active)
        answer_times.append(t_answer)
        say(f"run {run}: {node} killed; {other} active after {t_active:.2f}s, "
            f"database answering after {t_answer:.2f}s ({check.rows} rows)")  # fmt: skip
        labnode.start_node(directory, node, out=lambda line: None)
        wait_for("the cluster to settle", lambda: all(
            v["role"] in ("active", "standby") and v["flag"] == "0" and v["mounted"]
            for v in lab.status(directory)["nodes"].values()), 60)  # fmt: skip
    return active_times, answer_times


def sqlite_rate(db: Path, batches: int) -> float:
    """Rows per second inserted by 10-row transactions."""
    start = time.monotonic()
    sqlite_write(db, batches=batches)
    return batches * 10 / (time.monotonic() - start)


def pgbench_tps(data: Path, socket_dir: Path, port: int, seconds: int) -> float:
    pg = Postgres(data / "pg", port=port, socket_dir=socket_dir)
    pg.initdb(data / "pg_wal")
    pg.start()
    try:
        pg.pgbench_init()
        return pg.pgbench(seconds=seconds, clients=2)
    finally:
        pg.stop("fast")


def throughput(state: LabState, batches: int, seconds: int, say: Any) -> dict[str, Any]:
    directory = state.directory
    node = _active(directory)
    assert node is not None
    local = directory / "local"
    local.mkdir(mode=0o755, exist_ok=True)
    mnt = state.node_dir(node) / "tput"
    disk = MountedDisk.attach(_pvol_device(state, node), mnt, mkfs=True)
    os.chmod(mnt, 0o755)
    out: dict[str, Any] = {}
    try:
        say("SQLite: local directory, then through the host view")
        out["sqlite_local"] = sqlite_rate(local / "t.db", batches)
        out["sqlite_view"] = sqlite_rate(mnt / "t.db", batches)
        if postgres_bindir() is not None:
            say(f"pgbench {seconds}s: local directory, then through the host view")
            out["pg_local"] = pgbench_tps(local, directory / "pgsock", 25500, seconds)
            out["pg_view"] = pgbench_tps(mnt, directory / "pgsock", 25501, seconds)
    finally:
        disk.detach()
        shutil.rmtree(local, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="takeovers (default 10)")
    parser.add_argument("--dir", default="/var/tmp/blockemu-bench-lab", help="the lab's dir")
    parser.add_argument("--batches", type=int, default=300, help="SQLite transactions timed")
    parser.add_argument("--seconds", type=int, default=10, help="pgbench duration per side")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, FUSE, loop devices)")
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    say = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    load0 = load_average()
    opts = LabOptions(directory=directory, name="bench", subnet=SUBNET, nodes=2,
                      heartbeat_interval=0.2, heartbeat_misses=3)  # fmt: skip
    state = lab.up(opts, out=lambda line: say("  " + line))
    try:
        active, answer = takeover_runs(state, args.runs, say)
        rates = throughput(state, args.batches, args.seconds, say)
    finally:
        lab.down(directory, out=lambda line: None)
    load1 = load_average()
    result = {
        "runs": args.runs,
        "kill_to_active": {"p50": percentile(active, 50), "p99": percentile(active, 99),
                           "max": max(active), "mean": statistics.mean(active)},
        "kill_to_db_answering": {"p50": percentile(answer, 50),
                                 "p99": percentile(answer, 99), "max": max(answer),
                                 "mean": statistics.mean(answer)},
        **rates,
        "load": [load0, load1],
    }  # fmt: skip
    if args.json:
        print_json(result)
        return 0
    console = report_console(110)
    console.print(f"{machine_text()}; {load_text(load0, load1)}; heartbeat 0.2 s x 3")
    table = Table(title=f"takeover in the namespace lab, {args.runs} SIGKILLs")
    add_columns(table, "measure")
    add_columns(table, "p50", "p99", "max", right=True)
    for name, key in (("kill -> other node active", "kill_to_active"),
                      ("kill -> database answering there", "kill_to_db_answering")):  # fmt: skip
        v = result[key]
        table.add_row(name, f"{v['p50']:.2f}s", f"{v['p99']:.2f}s", f"{v['max']:.2f}s")
    console.print(table)
    tput = Table(title="database throughput: through the host view vs a local directory")
    add_columns(tput, "workload")
    add_columns(tput, "local", "host view", "ratio", right=True)
    tput.add_row("SQLite rows/s", f"{rates['sqlite_local']:,.0f}",
                 f"{rates['sqlite_view']:,.0f}",
                 f"{ratio(rates['sqlite_view'], rates['sqlite_local']):.2f}")  # fmt: skip
    if "pg_local" in rates:
        tput.add_row("pgbench TPS", f"{rates['pg_local']:,.0f}", f"{rates['pg_view']:,.0f}",
                     f"{ratio(rates['pg_view'], rates['pg_local']):.2f}")  # fmt: skip
    console.print(tput)
    return 0


if __name__ == "__main__":
    sys.exit(main())
