"""A real cluster for tests: one array and N nodeagent processes on loopback.

Every agent is a `nodeagent run` process with its own config, keys, HORCM
files, hooks and event log; tests wait on the event logs and state files,
never on sleeps, and fail over by SIGKILL and SIGSTOP. Used by
test_cluster.py (the runtime) and test_protocol_kills.py (the S-VOL
protocol under real kills).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from blockemu.client import open_client
from blockemu.errors import ReservationConflict
from blockemu.hostbuffer import HostBuffer
from blockemu.labconfig import LabLayout, LabNode, LabPair, write_layout, write_node_configs
from formats.host_buffer import BufferEntry
from formats.state_file import NodeRole, NodeState, ReplicaFlag
from nodeagent.events import read_events
from nodeagent.statefile import load_state

from .conftest import ArrayProcess

MiB = 1 << 20
INTERVAL, MISSES = 0.2, 3
NODES = {"node1": 30, "node2": 20, "node3": 10}  # id -> priority


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Agent:
    name: str
    config: Path
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def events_path(self) -> Path:
        return self.workdir / "events.jsonl"

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.events_path) if self.events_path.exists() else []

    def hook_calls(self) -> list[str]:
        path = self.workdir / "hooks.log"
        return path.read_text().split("\n")[:-1] if path.exists() else []

    def start(self, env: dict[str, str] | None = None) -> None:
        """Start the agent; *env* adds variables (e.g. a fault-injection pause point)."""
        log = open(self.workdir / "agent.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodeagent", "run", "--config", str(self.config)],
            stdout=log, stderr=log, env={**os.environ, **(env or {})},
        )  # fmt: skip
        log.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (a crash), and reap it; the attach daemon it started is left alone."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nodeagent", *args, "--config", str(self.config)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip


@dataclass
class Cluster:
    array: ArrayProcess
    agents: dict[str, Agent]
    keys: dict[str, bytes]

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 45.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                logs = {n: a.events()[-8:] for n, a in self.agents.items()}
                raise AssertionError(f"timed out waiting for {what}; recent events: {logs}")
            time.sleep(0.05)

    def roles(self) -> dict[str, str]:
        """Each live agent's role, from its last role_change event."""
        roles = {}
        for name, agent in self.agents.items():
            changes = [e for e in agent.events() if e["kind"] == "role_change"]
            if agent.proc is not None and agent.proc.poll() is None and changes:
                roles[name] = changes[-1]["to"]
        return roles

    def active(self) -> list[str]:
        return [n for n, r in self.roles().items() if r == "active"]


@contextlib.contextmanager
def running_cluster(
    tmp_path: Path,
    short_dir: Path,
    nodes: dict[str, int] = NODES,
    *,
    reflection: str = "eager",
) -> Iterator[Cluster]:
    """One array (P-VOL 00:10 paired with S-VOL 00:11, group ``appvg``) and an agent
    per node (not started); everything is stopped and unmounted on the way out."""
    layout = LabLayout(
        tmp_path,
        array_address="",
        nodes=[LabNode(n, p, f"tcp:127.0.0.1:{free_port()}") for n, p in nodes.items()],
        pairs=[LabPair("appvg", "appdev1", 0x10, 0x11)],
        heartbeat_interval=INTERVAL,
        heartbeat_misses=MISSES,
        reflection=reflection,
        horcm_services=(free_port(), free_port()),
    )
    write_layout(layout)
    array = ArrayProcess(tmp_path / "root", short_dir / "a.sock", tmp_path / "array.log",
                         extra_args=["--hosts", str(layout.hosts_config)])  # fmt: skip
    array.start()
    agents: dict[str, Agent] = {}
    try:
        layout.array_address = str(array.tcp)
        write_node_configs(layout)
        agents = {n: Agent(n, layout.node_config(n), layout.node_dir(n)) for n in nodes}
        trio.run(_make_volumes, array)
        yield Cluster(array, agents, layout.keys)
    finally:
        for agent in agents.values():
            agent.stop()
        for agent in agents.values():
            view = agent.workdir / "view"
            if view.exists() and os.path.ismount(view):
                subprocess.run(["fusermount3", "-u", "-z", str(view)], capture_output=True)
        array.stop()


async def _make_volumes(array: ArrayProcess) -> None:
    async with open_client(array.unix) as admin:
        await admin.create(0x10, 16 * MiB, label="app")
        await admin.create(0x11, 16 * MiB, label="app-copy")
        await admin.pair_create("00:10", "00:11")


async def holder(array: ArrayProcess, ldev: int) -> str | None:
    async with open_client(array.unix) as admin:
        return (await admin.reservation(ldev))[0]


async def write_as(array: ArrayProcess, host: str, key: bytes) -> bool:
    """Try one write to the P-VOL as *host*; True if the array accepted it."""
    assert array.tcp is not None
    async with open_client(array.tcp, host=host, key=key) as client:
        pvid = await client.read_pvid(0x10)
        try:
            await client.write(0x10, pvid, 0, b"fenced?")
        except ReservationConflict:
            return False
    return True


def settled(cluster: Cluster) -> None:
    """Start every agent and wait for node1 (the highest priority) to be the active."""
    for agent in cluster.agents.values():
        agent.start()
    cluster.wait(lambda: cluster.active() == ["node1"] and len(cluster.roles()) == 3,
                 "node1 active, two standbys")  # fmt: skip


def live(cluster: Cluster) -> dict[str, Agent]:
    return {n: a for n, a in cluster.agents.items() if a.proc is not None and a.proc.poll() is None}


def state(agent: Agent) -> NodeState:
    return load_state(agent.workdir / "state")


def svol_entry(agent: Agent) -> BufferEntry | None:
    return HostBuffer.load(agent.workdir / "buffer", agent.name).by_ldev(0x11)


def protocol_idle(cluster: Cluster) -> bool:
    """Every live node at flag 0 with its role persisted (joins after the start are over)."""
    states = [state(a) for a in live(cluster).values()]
    return all(s.flag is ReplicaFlag.ZERO and s.role is not NodeRole.NONE for s in states)


def replica(cluster: Cluster, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`nodeagent OP GROUP` on *node* (a busy active queues it, D1)."""
    return cluster.agents[node].cli(*args)


async def admin_pvid(array: ArrayProcess, ldev: int) -> bytes:
    async with open_client(array.unix) as admin:
        return bytes(await admin.read_pvid(ldev))


async def read_as(
    array: ArrayProcess, host: str, key: bytes, pvid: bytes, ldev: int = 0x11
) -> bytes:
    assert array.tcp is not None
    async with open_client(array.tcp, host=host, key=key) as client:
        return bytes(await client.read(ldev, pvid, 0, 512))
