"""How fast the cluster agent fails over, measured on real processes.

One ``blockemu serve`` array (with the hosts config of a lab layout from
:mod:`blockemu.labconfig`: a sync pair 00:10 -> 00:11, one host per node) and
three ``nodeagent run`` processes (node1..node3, priorities 30/20/10) on
loopback, in a scratch directory under ``--dir``. Then, ``--runs`` times:

1. wait for a **settled** cluster: asked over the control sockets, one node is
   active and two are standbys, all at the same epoch, every node sees the
   other two alive, and the active's ``start`` hook has run;
2. wait a random fraction of a heartbeat interval (so the failure lands at
   every phase of the heartbeat cycle), then take the active away: **SIGKILL**
   on runs 1, 3, 5, ..., **SIGSTOP** (a paused node: alive, silent, still
   holding its reservations) on runs 2, 4, 6, .... The time just before
   ``os.kill`` is t0;
3. wait for a survivor's ``hook_call`` event of the ``start`` hook, and read
   the times off the event logs (``mono`` is ``time.monotonic()``, one clock
   for every process on the host):

   * **detection**, t0 -> the failed node *declared failed*: the first
     ``peer_down`` naming it on a survivor, if the agent writes one for missed
     heartbeats; this agent does not (it writes ``peer_down`` only for a peer
     that said it leaves), so the figure falls back to the start of the first
     ``array_call`` ``reservation`` (lease read) or ``preempt`` after t0 by
     the node that takes over (event time minus the call's duration). A standby
     reads the lease only once the active missed ``misses`` heartbeats and no
     better candidate is alive, so that call is the moment it declared the
     active failed. The table names the source used;
   * **fence**, t0 -> the last ``preempt`` of the new active returned: from
     then on the array refuses the old active's I/O (context, no goal);
   * **failover**, t0 -> the new active's ``hook_call`` event of the
     ``start`` hook (written when the hook returned: the application runs);

4. on a pause run, before waking the paused node: 10 writes to the P-VOL over
   TCP as the paused node's host, authenticated with its key, as its
   application would (:func:`blockemu.client.open_client`); every one must be
   refused (``ReservationConflict``). Then SIGCONT: the node finds its
   reservation preempted (or hears the newer active), runs ``stop`` and must
   exit with 75 (left the cluster);
5. restart the failed node: it must rejoin as a standby (no failback), which
   the next settle checks.

Each agent runs a ``blockemu attach`` child (its host view, a FUSE mount)
that gets SIGTERM when the agent dies (PDEATHSIG). Before a failed node is
restarted its attach child must be gone and its view unmounted; a mount left
behind is detached with ``fusermount3 -u -z`` and counted.

Progress goes to stderr, the table to stdout. Nothing here asserts on
timings: the table shows p50/p99/max next to the goals (detection <= 1.5 s,
failover p50 <= 2.5 s and p99 <= 4 s, with the lab's 0.25-0.5 s heartbeat
interval and 3 misses), the fenced node's accepted writes (goal: 0), the
exit codes of the paused nodes and the failbacks. At the end, on failure,
Ctrl-C and SIGTERM too, every process is stopped by PID (agents: SIGCONT +
SIGTERM, SIGKILL if they linger; leftover attach children; the array), any
host view still mounted is detached with ``fusermount3 -u -z``, and the
scratch directory is removed (kept, and said so, if a mount remains).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from rich.table import Table

from blockemu.address import Address, parse_address
from blockemu.client import open_client
from blockemu.errors import ArrayError, ReservationConflict
from blockemu.labconfig import LabLayout, LabNode, LabPair, write_layout, write_node_configs
from formats.hosts_config import read_key_file
from formats.node_config import NodeConfig, load_node_config
from nodeagent.agent import EXIT_LEFT, control_request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/common.py: see there
from common import (
    MAX_SOCKET_PATH,
    MIB,
    Daemon,
    add_columns,
    array_socket,
    check_dir,
    coloured,
    handle_sigterm,
    launch,
    load_average,
    load_text,
    machine_text,
    mounts_under,
    percentile,
    print_notes,
    progress,
    report_console,
    run_main,
    scratch_dir,
    serve_command,
    stop_process,
    tcp_address,
    unmount_fuse,
)

NODES = {"node1": 30, "node2": 20, "node3": 10}  # id -> priority
PVOL, SVOL = 0x10, 0x11
FENCED_WRITES = 10  # per pause run
SEED = 20240612
START_TIMEOUT = 15.0  # the array's banner
SETTLE_TIMEOUT = 60.0
TAKEOVER_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0  # a woken paused node leaving
STOP_TIMEOUT = 15.0  # SIGTERM -> exit, before SIGKILL
ATTACH_GONE_TIMEOUT = 10.0
POLL = 0.02
GOAL_DETECTION = 1.5
GOAL_FAILOVER_P50 = 2.5
GOAL_FAILOVER_P99 = 4.0

#: Where a detection time was read from (see the module docstring).
SOURCES = {
    "peer_down": "peer_down on a survivor",
    "lease read": "lease read (array_call reservation) by the new active",
    "preempt": "array_call preempt by the new active",
}

Event = dict[str, Any]


# -- event logs ---------------------------------------------------------------------


class EventTail:
    """The events of one JSONL event log, read incrementally (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self._offset = 0
        self._partial = b""

    def refresh(self) -> list[Event]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.events
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)
        return self.events

    def after(self, mono: float) -> list[Event]:
        return [e for e in self.refresh() if e.get("mono", 0.0) > mono]


# -- processes ------------------------------------------------------------------------


@dataclass
class Node:
    id: str
    config_path: Path
    workdir: Path
    config: NodeConfig
    log: EventTail
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # monotonic: events before this are an earlier incarnation's
    attach_pids: set[int] = field(default_factory=set)

    @property
    def view(self) -> Path:
        return self.config.host_view

    def start(self) -> None:
        self.started_at = time.monotonic()
        with open(self.workdir / "agent.log", "ab") as out:
            # A session of its own: Ctrl-C reaches only this script, which stops it by PID.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nodeagent", "run", "--config", str(self.config_path),
                 "--log-level", "warning"],
                stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def note_attach_children(self) -> None:
        self.attach_pids |= {int(e["pid"]) for e in self.log.refresh() if e["kind"] == "attach"}

    def stop(self) -> None:
        """SIGCONT + SIGTERM by PID (the agent runs its stop hook if active); SIGKILL if it
        lingers."""
        stop_process(self.proc, self.id, timeout=STOP_TIMEOUT, cont=True)


@dataclass
class ArrayServer:
    daemon: Daemon
    unix: Address
    tcp: Address


def start_array(workdir: Path, hosts: Path, daemons: list[Daemon]) -> ArrayServer:
    """`blockemu serve` on unix and tcp loopback; its address read from its first line."""
    sock = array_socket(workdir)
    command = serve_command(workdir, sock, "--listen", "tcp:127.0.0.1:0", "--hosts", str(hosts))
    array = launch(workdir, "array", command, "array")
    daemons.append(array)  # stopped by teardown(), after the agents
    banner = array.wait_for("listening on", START_TIMEOUT)
    return ArrayServer(array, parse_address(f"unix:{sock}"), parse_address(tcp_address(banner)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def terminate_pid(pid: int) -> None:
    """SIGTERM a process we did not start as a child (no Popen to wait on), wait up to
    STOP_TIMEOUT for it to go, then SIGKILL."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """Whether *pid* is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def is_attach_of(pid: int, view: Path) -> bool:
    """Whether *pid* is still the `blockemu attach` serving *view* (PIDs get reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"attach" in argv and str(view).encode() in argv


# -- talking to the agents and the array -----------------------------------------------


async def _statuses(configs: dict[str, NodeConfig]) -> dict[str, dict[str, Any] | None]:
    answers: dict[str, dict[str, Any] | None] = {}
    for name, config in configs.items():
        try:
            answer = await control_request(config, {"cmd": "status"}, seconds=2.0)
        except (OSError, ValueError, trio.TooSlowError):
            answers[name] = None
            continue
        answers[name] = answer.get("status") if answer.get("ok") else None
    return answers


async def _make_volumes(unix: Address) -> None:
    async with open_client(unix) as admin:
        await admin.create(PVOL, 16 * MIB, label="app")
        await admin.create(SVOL, 16 * MIB, label="app-copy")
        await admin.pair_create("00:10", "00:11")


@dataclass
class WriteTally:
    accepted: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


async def _write_as(tcp: Address, host: str, key: bytes, count: int) -> WriteTally:
    """*count* 4 KiB writes to the P-VOL as *host* (its key): the fenced node's application."""
    tally = WriteTally()
    block = b"fenced?\n" * 512
    try:
        async with open_client(tcp, host=host, key=key) as client:
            pvid = await client.read_pvid(PVOL)
            for n in range(count):
                try:
                    await client.write(PVOL, pvid, n * len(block), block)
                except ReservationConflict:
                    tally.refused += 1
                except ArrayError as exc:
                    tally.errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    tally.accepted += 1
    except (OSError, ArrayError) as exc:
        tally.errors.append(f"cannot connect as {host}: {type(exc).__name__}: {exc}")
    return tally


# -- one run ---------------------------------------------------------------------------


@dataclass
class Run:
    number: int
    mode: str  # "SIGKILL" or "SIGSTOP"
    victim: str
    taker: str
    epoch: int
    detection: float
    detection_source: str
    fence: float
    failover: float
    lease_reads: int  # by the new active between t0 and its preempts (each reads every LDEV)
    writes: WriteTally | None = None
    exit_code: int | None = None


@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)
    failbacks: int = 0
    stale_mounts: int = 0


class Cluster:
    def __init__(self, layout: LabLayout, array: ArrayServer) -> None:
        self.layout = layout
        self.array = array
        self.nodes: dict[str, Node] = {}
        for name in NODES:
            path = layout.node_config(name)
            config = load_node_config(path)
            assert config.event_log is not None  # the lab layout always names one
            self.nodes[name] = Node(name, path, layout.node_dir(name), config,
                                    EventTail(config.event_log))  # fmt: skip

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                recent = {
                    n: [f"{e['kind']} {e.get('to', e.get('op', e.get('hook', '')))}"
                        for e in node.log.refresh()[-6:]]
                    for n, node in self.nodes.items()
                }  # fmt: skip
                raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}: {recent}")
            time.sleep(POLL)

    def settled(self) -> str | None:
        """The active node's id when the cluster is settled (see the module docstring)."""
        if not all(node.running for node in self.nodes.values()):
            return None
        status = trio.run(_statuses, {n: node.config for n, node in self.nodes.items()})
        if any(s is None for s in status.values()):
            return None
        views = {n: s for n, s in status.items() if s is not None}
        active = [n for n, s in views.items() if s["role"] == "active"]
        standbys = [n for n, s in views.items() if s["role"] == "standby"]
        if len(active) != 1 or len(standbys) != 2:
            return None
        if len({s["epoch"] for s in views.values()}) != 1:
            return None
        for name, view in views.items():  # everyone hears both others (a restarted node too)
            peers = view["peers"]
            if set(peers) != set(NODES) - {name} or not all(p["alive"] for p in peers.values()):
                return None
        if not all(views[n]["peers"][active[0]]["role"] == "active" for n in standbys):
            return None
        node = self.nodes[active[0]]
        events = node.log.after(node.started_at)
        became = [e for e in events if e["kind"] == "role_change" and e["to"] == "active"]
        if not became or not any(
            e["kind"] == "hook_call" and e["hook"] == "start" and e["seq"] > became[-1]["seq"]
            for e in events
        ):
            return None
        return active[0]

    def takeover(self, victim: str, t0: float) -> tuple[str, Event] | None:
        """(new active, its start hook_call event) once a survivor ran start after t0."""
        for name, node in self.nodes.items():
            if name == victim:
                continue
            events = node.log.after(t0)
            became = [e for e in events if e["kind"] == "role_change" and e["to"] == "active"]
            if not became:
                continue
            first = became[0]["seq"]
            for e in events:
                if e["kind"] == "hook_call" and e["hook"] == "start" and e["seq"] > first:
                    return name, e
        return None

    def detection(self, victim: str, taker: str, t0: float) -> tuple[float, str]:
        """When *victim* was declared failed (monotonic), and from which event."""
        downs = [
            e["mono"]
            for name, node in self.nodes.items()
            if name != victim
            for e in node.log.after(t0)
            if e["kind"] == "peer_down" and e.get("peer") == victim
        ]
        if downs:
            return min(downs), "peer_down"
        calls = [
            e for e in self.nodes[taker].log.after(t0)
            if e["kind"] == "array_call" and e["op"] in ("reservation", "preempt")
        ]  # fmt: skip
        if not calls:
            raise RuntimeError(f"{taker} took over without reading the lease or preempting")
        first = calls[0]
        source = "lease read" if first["op"] == "reservation" else "preempt"
        return first["mono"] - float(first.get("duration", 0.0)), source

    def reap_attach(self, node: Node, results: Results) -> None:
        """After *node*'s agent died: its attach child gone, its view unmounted."""
        node.note_attach_children()
        deadline = time.monotonic() + ATTACH_GONE_TIMEOUT
        live = {p for p in node.attach_pids if pid_alive(p) and is_attach_of(p, node.view)}
        while live and time.monotonic() < deadline:
            time.sleep(POLL)
            live = {p for p in live if pid_alive(p)}
        for pid in live:
            progress.print(f"[yellow]    attach child {pid} of {node.id} outlived it: SIGKILL")
            os.kill(pid, signal.SIGKILL)
        for point in mounts_under(node.view):
            results.stale_mounts += 1
            progress.print(f"[yellow]    {point} still mounted: fusermount3 -u -z")
            unmount_fuse(point)

    def one_run(self, number: int, mode: str, rng: random.Random, results: Results) -> Run:
        interval = self.layout.heartbeat_interval
        active = self.wait(self.settled, "a settled cluster", SETTLE_TIMEOUT)
        if results.runs and active != results.runs[-1].taker:
            results.failbacks += 1
        victim = self.nodes[active]
        victim.note_attach_children()
        time.sleep(rng.uniform(0, interval))
        sig = signal.SIGKILL if mode == "SIGKILL" else signal.SIGSTOP
        t0 = time.monotonic()
        os.kill(victim.pid, sig)
        taker, started = self.wait(
            lambda: self.takeover(active, t0), f"a takeover from {active}", TAKEOVER_TIMEOUT
        )
        detected, source = self.detection(active, taker, t0)
        preempts = [
            e for e in self.nodes[taker].log.after(t0)
            if e["kind"] == "array_call" and e["op"] == "preempt" and e["seq"] < started["seq"]
        ]  # fmt: skip
        became = next(
            e for e in self.nodes[taker].log.after(t0)
            if e["kind"] == "role_change" and e["to"] == "active"
        )  # fmt: skip
        run = Run(
            number, mode, active, taker, int(became["epoch"]),
            detection=detected - t0, detection_source=source,
            fence=(preempts[-1]["mono"] if preempts else became["mono"]) - t0,
            failover=started["mono"] - t0,
            lease_reads=sum(
                e["kind"] == "array_call" and e["op"] == "reservation" and e["seq"] < became["seq"]
                for e in self.nodes[taker].log.after(t0)
            ) // max(1, len(self.layout.ldevs)),
        )  # fmt: skip
        assert victim.proc is not None
        if mode == "SIGSTOP":
            key = read_key_file(self.layout.directory / "keys" / f"{active}.key")
            run.writes = trio.run(_write_as, self.array.tcp, active, key, FENCED_WRITES)
            os.kill(victim.pid, signal.SIGCONT)
            try:
                run.exit_code = victim.proc.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                progress.print(f"[red]    {active} did not leave within {EXIT_TIMEOUT:g} s")
                victim.stop()
                run.exit_code = victim.proc.returncode
        else:
            victim.proc.wait()
        self.reap_attach(victim, results)
        victim.start()
        return run


def show_run(run: Run, total: int) -> None:
    line = (
        f"run {run.number:2d}/{total} {run.mode} {run.victim}: declared failed after "
        f"{run.detection:.3f} s ({run.detection_source} by {run.taker}), fenced "
        f"{run.fence:.3f} s, start hook done {run.failover:.3f} s on {run.taker} "
        f"(epoch {run.epoch}, lease read {run.lease_reads}x)"
    )
    if run.writes is not None:
        w = run.writes
        line += (
            f"; writes as {run.victim}: {w.accepted} accepted, {w.refused} refused"
            f"{f', {len(w.errors)} errors' if w.errors else ''}; it exited {run.exit_code}"
        )
    progress.print(line, soft_wrap=True)
    if run.writes is not None:
        for error in run.writes.errors:
            progress.print(f"[yellow]    {error}")


# -- setting up and tearing down ----------------------------------------------------------


def make_layout(workdir: Path, interval: float, misses: int) -> LabLayout:
    nodes = [LabNode(n, p, f"tcp:127.0.0.1:{free_port()}") for n, p in NODES.items()]
    layout = LabLayout(
        workdir, array_address="", nodes=nodes, pairs=[LabPair("appvg", "appdev1", PVOL, SVOL)],
        heartbeat_interval=interval, heartbeat_misses=misses,
        horcm_services=(free_port(), free_port()),
    )  # fmt: skip
    write_layout(layout)
    for name in NODES:
        control = layout.node_dir(name) / f"{name}.ctl"
        if len(str(control)) > MAX_SOCKET_PATH:
            raise RuntimeError(f"{control} is too long for a unix socket: pick a shorter --dir")
    return layout


def teardown(cluster: Cluster | None, daemons: list[Daemon], workdir: Path) -> None:
    """Everything started, stopped by PID: agents, their attach children, the array."""
    if cluster is not None:
        for node in cluster.nodes.values():
            node.note_attach_children()
            node.stop()
        for node in cluster.nodes.values():
            for pid in node.attach_pids:
                if pid_alive(pid) and is_attach_of(pid, node.view):
                    progress.print(f"[yellow]attach child {pid} of {node.id} is left: SIGTERM")
                    terminate_pid(pid)
    for point in mounts_under(workdir):
        progress.print(f"[yellow]{point} is still mounted: fusermount3 -u -z")
        unmount_fuse(point)
    for daemon in daemons:  # the array
        daemon.stop(STOP_TIMEOUT)


def run_all(args: argparse.Namespace, workdir: Path) -> tuple[Results, LabLayout, float]:
    results = Results()
    rng = random.Random(SEED)
    daemons: list[Daemon] = []
    cluster: Cluster | None = None
    try:
        layout = make_layout(workdir, args.interval, args.misses)
        array = start_array(workdir, layout.hosts_config, daemons)
        progress.print(f"array pid {array.daemon.pid} on {array.unix} and {array.tcp}")
        layout.array_address = str(array.tcp)
        write_node_configs(layout)
        trio.run(_make_volumes, array.unix)
        cluster = Cluster(layout, array)
        for node in cluster.nodes.values():
            node.start()
        pids = ", ".join(f"{n} {node.pid}" for n, node in cluster.nodes.items())
        progress.print(f"agents started (pids {pids}); heartbeat {args.interval:g} s x "
                       f"{args.misses} misses")  # fmt: skip
        load = load_average()
        for number in range(1, args.runs + 1):
            mode = "SIGKILL" if number % 2 == 1 else "SIGSTOP"
            run = cluster.one_run(number, mode, rng, results)
            results.runs.append(run)
            show_run(run, args.runs)
        last = cluster.wait(cluster.settled, "a settled cluster", SETTLE_TIMEOUT)
        if last != results.runs[-1].taker:
            results.failbacks += 1
        progress.print(f"settled after the last run: {last} active, the restarted node standby")
        return results, layout, load
    finally:
        teardown(cluster, daemons, workdir)


# -- reporting --------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return coloured("yes" if ok else "NO", ok)


def print_report(args: argparse.Namespace, results: Results, load: float) -> None:
    console = report_console(150)
    runs = results.runs
    kills = [r for r in runs if r.mode == "SIGKILL"]
    pauses = [r for r in runs if r.mode == "SIGSTOP"]
    detection_window = args.interval * args.misses
    console.print(
        f"{machine_text()}, {load_text(load, load_average())}. "
        f"1 array + 3 agents on loopback; heartbeat interval [bold]{args.interval:g} s[/], "
        f"misses [bold]{args.misses}[/] (a peer is dead after {detection_window:g} s of "
        f"silence); {len(runs)} runs: {len(kills)} SIGKILL, {len(pauses)} SIGSTOP",
        highlight=False,
    )
    table = Table()
    table.add_column("measurement (from the kill/pause, t0)", ratio=1)
    add_columns(table, "runs", "p50", "p99", "max", right=True, no_wrap=True)
    add_columns(table, "goal", "met", no_wrap=True)

    def rows(title: str, pick: Callable[[Run], float], goal: str,
             check: Callable[[list[float]], bool] | None) -> None:  # fmt: skip
        for label, group in ((title, runs), ("  SIGKILL runs", kills), ("  SIGSTOP runs", pauses)):
            values = [pick(r) for r in group]
            if not values:
                continue
            cells = [f"{percentile(values, p):.3f} s" for p in (50, 99, 100)]
            top = group is runs
            met = verdict(check(values)) if check is not None and top else ""
            table.add_row(label, str(len(values)), *cells, goal if top else "", met)

    sources = " or ".join(SOURCES[x] for x in sorted({r.detection_source for r in runs}))
    rows(
        f"1. detection: t0 -> declared failed (from the first {sources}"
        + ("" if sources == SOURCES["peer_down"] else "; the agent writes no peer_down for "
           "missed heartbeats") + ")",
        lambda r: r.detection, f"<= {GOAL_DETECTION:g} s (max)",
        lambda v: max(v) <= GOAL_DETECTION,
    )  # fmt: skip
    table.add_section()
    rows("2. fence: t0 -> last preempt of the new active returned (context)",
         lambda r: r.fence, "", None)  # fmt: skip
    table.add_section()
    rows(
        "3. failover: t0 -> the new active's start hook done (hook_call start)",
        lambda r: r.failover, f"p50 <= {GOAL_FAILOVER_P50:g} s, p99 <= {GOAL_FAILOVER_P99:g} s",
        lambda v: percentile(v, 50) <= GOAL_FAILOVER_P50 and percentile(v, 99) <= GOAL_FAILOVER_P99,
    )  # fmt: skip
    table.add_section()
    accepted = sum(r.writes.accepted for r in pauses if r.writes)
    refused = sum(r.writes.refused for r in pauses if r.writes)
    errors = sum(len(r.writes.errors) for r in pauses if r.writes)
    tried = len(pauses) * FENCED_WRITES
    table.add_row(
        f"4. fenced node: writes to the P-VOL as the paused node's host, after the takeover "
        f"({FENCED_WRITES} per SIGSTOP run): accepted (refused {refused}"
        f"{f', errors {errors}' if errors else ''})",
        str(len(pauses)), f"{accepted} of {tried}", "", "", "0 accepted", verdict(accepted == 0),
    )  # fmt: skip
    left = sum(r.exit_code == EXIT_LEFT for r in pauses)
    codes = sorted({str(r.exit_code) for r in pauses})
    table.add_row(
        f"5. paused node woken (SIGCONT) exits {EXIT_LEFT}, left (exit codes: {', '.join(codes)})",
        str(len(pauses)), f"{left} of {len(pauses)}", "", "", "all", verdict(left == len(pauses)),
    )  # fmt: skip
    table.add_row(
        "6. failed node restarted rejoins as standby: failbacks (active changed at the settle)",
        str(len(runs)), str(results.failbacks), "", "", "0", verdict(results.failbacks == 0),
    )  # fmt: skip
    table.add_row(
        "   host views still mounted after their agent died (detached: fusermount3 -u -z)",
        str(len(runs)), str(results.stale_mounts), "", "", "", "",
    )  # fmt: skip
    console.print(table)
    note = (
        f"Goals assume the lab's heartbeat (interval 0.25-0.5 s, 3 misses); this run: "
        f"{args.interval:g} s x {args.misses}. Percentiles are nearest-rank: with few runs p99 "
        "is the maximum. Detection is quantised by the heartbeat interval (heartbeats and "
        "decisions both run once per interval); failover adds the preempts, the start hook and "
        "one interval per extra lease read (a holder that renewed within the detection time "
        "counts as alive, so the lease is read again; progress shows how often it was read). "
        "Nothing is asserted."
    )
    print_notes(console, [note])


# -- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Failover of the cluster agent on real processes: one array, three "
        "`nodeagent run` agents; the active is SIGKILLed or SIGSTOPped again and again, and "
        "detection and failover times, fencing and rejoining are measured. Progress goes to "
        "stderr, the table to stdout.",
    )
    parser.add_argument("--runs", type=int, default=20, help="failures to inject (default 20)")
    parser.add_argument("--interval", type=float, default=0.25,
                        help="heartbeat interval, seconds (default 0.25)")  # fmt: skip
    parser.add_argument("--misses", type=int, default=3,
                        help="heartbeats missed before a peer is dead (default 3)")  # fmt: skip
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="where the scratch directory goes (default %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    check_cluster_args(parser, args)
    return args


def check_cluster_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--runs, --interval, --misses and --dir of a benchmark that runs agents."""
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not (0 < args.interval <= 10):
        parser.error("--interval must be in (0, 10] seconds")
    if args.misses < 1:
        parser.error("--misses must be at least 1")
    check_dir(parser, args.dir)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    handle_sigterm()
    with scratch_dir(args.dir, "blockemu-failover-") as workdir:
        progress.print(f"scratch directory {workdir}")
        results, _, load = run_all(args, workdir)
    print_report(args, results, load)


if __name__ == "__main__":
    run_main(main, "stopped; every process was stopped and the scratch directory removed")
