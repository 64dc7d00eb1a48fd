"""A real cluster: one array and three nodeagent processes on loopback.

Every agent is a `nodeagent run` process with its own config, keys, HORCM
files, hooks and event log; the tests wait on the event logs, never on
sleeps, and fail over by SIGKILL and SIGSTOP.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
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

    def start(self) -> None:
        log = open(self.workdir / "agent.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodeagent", "run", "--config", str(self.config)],
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()

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


@pytest.fixture
def cluster(tmp_path: Path, short_dir: Path) -> Iterator[Cluster]:
    layout = LabLayout(
        tmp_path,
        array_address="",
        nodes=[LabNode(n, p, f"tcp:127.0.0.1:{free_port()}") for n, p in NODES.items()],
        pairs=[LabPair("appvg", "appdev1", 0x10, 0x11)],
        heartbeat_interval=INTERVAL,
        heartbeat_misses=MISSES,
        horcm_services=(free_port(), free_port()),
    )
    write_layout(layout)
    array = ArrayProcess(tmp_path / "root", short_dir / "a.sock", tmp_path / "array.log",
                         extra_args=["--hosts", str(layout.hosts_config)])  # fmt: skip
    array.start()
    layout.array_address = str(array.tcp)
    write_node_configs(layout)
    agents = {n: Agent(n, layout.node_config(n), layout.node_dir(n)) for n in NODES}
    trio.run(_make_volumes, array)
    cl = Cluster(array, agents, layout.keys)
    try:
        yield cl
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


async def _holder(array: ArrayProcess, ldev: int) -> str | None:
    async with open_client(array.unix) as admin:
        return (await admin.reservation(ldev))[0]


async def _write_as(array: ArrayProcess, host: str, key: bytes) -> bool:
    """Try one write to the P-VOL as *host*; True if the array accepted it."""
    assert array.tcp is not None
    async with open_client(array.tcp, host=host, key=key) as client:
        pvid = await client.read_pvid(0x10)
        try:
            await client.write(0x10, pvid, 0, b"fenced?")
        except ReservationConflict:
            return False
    return True


def test_start_failover_and_fencing_of_a_paused_active(cluster: Cluster) -> None:
    for agent in cluster.agents.values():
        agent.start()
    cluster.wait(lambda: cluster.active() == ["node1"] and len(cluster.roles()) == 3,
                 "node1 active, two standbys")  # fmt: skip
    assert sorted(cluster.roles().values()) == ["active", "standby", "standby"]
    assert trio.run(_holder, cluster.array, 0x10) == "node1"
    assert cluster.agents["node1"].hook_calls() == ["start epoch=1"]

    status = cluster.agents["node2"].cli("status", "--json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert view["api_version"] == 1 and view["role"] == "standby"
    assert view["peers"]["node1"]["alive"] and view["peers"]["node1"]["role"] == "active"

    # Pause the active (not dead: SIGSTOP). node2 takes over and fences it at the array.
    old = cluster.agents["node1"]
    old.signal(signal.SIGSTOP)
    cluster.wait(lambda: "node2" in cluster.active(), "node2 takes over")
    assert trio.run(_holder, cluster.array, 0x10) == "node2"
    assert trio.run(_holder, cluster.array, 0x11) == "node2"
    assert cluster.agents["node2"].hook_calls() == ["start epoch=2"]
    accepted = sum(
        trio.run(_write_as, cluster.array, "node1", cluster.keys["node1"]) for _ in range(5)
    )
    assert accepted == 0  # every write from the fenced node is refused
    # The paused node wakes up, finds its reservation preempted, stops and leaves.
    old.signal(signal.SIGCONT)
    assert old.proc is not None
    assert old.proc.wait(20) == 75
    kinds = [e["kind"] for e in old.events()]
    assert "fenced" in kinds
    assert old.hook_calls()[-1].startswith("stop")
    assert cluster.active() == ["node2"]


def test_sigkill_of_the_active_and_no_failback(cluster: Cluster) -> None:
    for agent in cluster.agents.values():
        agent.start()
    cluster.wait(lambda: cluster.active() == ["node1"] and len(cluster.roles()) == 3,
                 "node1 active")  # fmt: skip
    cluster.agents["node1"].signal(signal.SIGKILL)
    assert cluster.agents["node1"].proc is not None
    cluster.agents["node1"].proc.wait()
    cluster.wait(lambda: cluster.active() == ["node2"], "node2 active after the kill")
    assert trio.run(_holder, cluster.array, 0x10) == "node2"
    # node1 (highest priority) comes back: it stays standby; no automatic failback.
    cluster.agents["node1"].start()
    cluster.wait(lambda: cluster.roles().get("node1") == "standby", "node1 rejoins as standby")
    assert cluster.active() == ["node2"]


def test_partition_keeps_exactly_one_active(cluster: Cluster) -> None:
    for agent in cluster.agents.values():
        agent.start()
    cluster.wait(lambda: cluster.active() == ["node1"] and len(cluster.roles()) == 3,
                 "node1 active")  # fmt: skip
    # Cut node1 off from its peers (both directions); the array still sees everyone.
    assert cluster.agents["node1"].cli("partition", "node2", "node3").returncode == 0
    for name in ("node2", "node3"):
        assert cluster.agents[name].cli("partition", "node1").returncode == 0
    cluster.wait(
        lambda: all(
            not json.loads(cluster.agents[n].cli("status", "--json").stdout)["peers"]["node1"][
                "alive"
            ]
            for n in ("node2", "node3")
        ),
        "the standbys lose node1",
    )
    # node1 keeps renewing its reservations: the standbys see a live holder and wait.
    import time

    time.sleep(3 * INTERVAL * MISSES + 2.5)
    assert cluster.active() == ["node1"]
    for name in ("node1", "node2", "node3"):
        cluster.agents[name].cli("partition")
    time.sleep(1.0)
    assert cluster.active() == ["node1"]


def test_a_peer_with_the_wrong_key_is_ignored(cluster: Cluster, tmp_path: Path) -> None:
    for agent in cluster.agents.values():
        agent.start()
    cluster.wait(lambda: cluster.active() == ["node1"] and len(cluster.roles()) == 3,
                 "node1 active")  # fmt: skip
    # node3 restarts with a wrong cluster key: its frames are dropped as unauthenticated.
    node3 = cluster.agents["node3"]
    node3.stop()
    (tmp_path / "keys" / "cluster.key").rename(tmp_path / "keys" / "good.key")
    (tmp_path / "keys" / "cluster.key").write_bytes(os.urandom(32).hex().encode())
    node3.start()
    cluster.wait(
        lambda: any(
            e["kind"] == "frame_dropped" and e.get("reason") == "unauthenticated"
            for e in cluster.agents["node1"].events()
        ),
        "node1 drops node3's frames",
    )
    assert cluster.active() == ["node1"]
    status = json.loads(cluster.agents["node2"].cli("status", "--json").stdout)
    assert status["peers"]["node1"]["alive"]


def test_config_errors_are_all_reported_and_the_agent_does_not_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('id = "node 1"\npriority = -5\nlisten = "http://x"\nheartbeet = 1\n')
    proc = subprocess.run([sys.executable, "-m", "nodeagent", "run", "--config", str(bad)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2
    assert "not starting" in proc.stderr
    assert "bad node id 'node 1'" in proc.stderr
    assert "priority" in proc.stderr and "listen" in proc.stderr
    assert "heartbeet" in proc.stderr and "did you mean" in proc.stderr.lower()


def _settled(cluster: Cluster) -> None:
    for agent in cluster.agents.values():
        agent.start()
    cluster.wait(lambda: cluster.active() == ["node1"] and len(cluster.roles()) == 3,
                 "node1 active, two standbys")  # fmt: skip


def _status(agent: Agent) -> dict[str, Any]:
    answer = agent.cli("status", "--json")
    assert answer.returncode == 0, answer.stderr
    return dict(json.loads(answer.stdout))


def _ocf_hooks(agent: Agent) -> None:
    """Hooks like an OCF agent's: start/stop keep a "running" file, monitor checks it (7: not
    running). They log to hooks.log as the lab hooks do."""
    hooks, running, log = (agent.workdir / n for n in ("hooks", "running", "hooks.log"))
    record = f'echo "$1 epoch=$BLOCKEMU_EPOCH" >> "{log}"'
    scripts = {
        "start": f'{record}\ntouch "{running}"',
        "stop": f'{record}\nrm -f "{running}"',
        "monitor": f'[ -e "{running}" ] || exit 7',
    }
    for name, body in scripts.items():
        (hooks / name).write_text(f"#!/bin/sh\n{body}\nexit 0\n")
        (hooks / name).chmod(0o755)


def test_switchover_moves_the_active_role_and_the_reservations(cluster: Cluster) -> None:
    for agent in cluster.agents.values():
        _ocf_hooks(agent)
    _settled(cluster)
    node1, node2 = cluster.agents["node1"], cluster.agents["node2"]
    assert node1.hook_calls() == ["start epoch=1"]
    asked = node1.cli("switchover", "--to", "node2")
    assert asked.returncode == 0, asked.stderr
    assert "node2" in asked.stdout
    after = {"node1": "standby", "node2": "active", "node3": "standby"}
    cluster.wait(lambda: cluster.roles() == after, "node2 active after the switchover")

    def node1_hears_node2_active() -> bool:
        peer = _status(node1)["peers"]["node2"]
        return bool(peer["alive"] and peer["role"] == "active")

    # Once node1 hears node2 as the active, it can no longer contest.
    cluster.wait(node1_hears_node2_active, "node1 hears node2 as the active")

    def node2_holds_its_svols() -> bool:
        protocol = _status(node2)["protocol"]
        return protocol["round"] is None and not protocol["released"]

    # node1 joins as a standby: the S-VOL is lent to it while it reflects (D8), then taken back.
    cluster.wait(node2_holds_its_svols, "node2's protocol rounds are over")
    assert trio.run(_holder, cluster.array, 0x10) == "node2"
    assert trio.run(_holder, cluster.array, 0x11) == "node2"
    became = [e for e in node2.events() if e["kind"] == "role_change" and e["to"] == "active"]
    assert len(became) == 1 and became[0]["epoch"] > 1 and became[0]["reason"] == "switchover"
    assert node1.hook_calls() == ["start epoch=1", "stop epoch=1"]
    assert node2.hook_calls() == [f"start epoch={became[0]['epoch']}"]
    # Nobody took the role back or left: node1 became active once only (at the start).
    n1_changes = [e["to"] for e in node1.events() if e["kind"] == "role_change"]
    assert n1_changes == ["active", "standby"]
    assert all(a.proc is not None and a.proc.poll() is None for a in cluster.agents.values())
    assert _status(node1)["role"] == "standby" and _status(node2)["role"] == "active"
    assert _status(node2)["epoch"] == became[0]["epoch"]


def test_a_failing_monitor_stops_the_active_and_a_standby_takes_over(
    cluster: Cluster, tmp_path: Path
) -> None:
    node1 = cluster.agents["node1"]
    flag = tmp_path / "app-broken"
    monitor = node1.workdir / "hooks" / "monitor"
    monitor.write_text(f'#!/bin/sh\n[ -e "{flag}" ] && exit 1\nexit 0\n')
    monitor.chmod(0o755)
    _settled(cluster)
    cluster.wait(
        lambda: any(e["kind"] == "hook_call" and e["hook"] == "monitor" for e in node1.events()),
        "node1 runs its monitor",
    )
    flag.touch()
    assert node1.proc is not None
    assert node1.proc.wait(20) == 75
    leaving = [e for e in node1.events() if e["kind"] == "leaving"]
    assert len(leaving) == 1 and "monitor" in leaving[0]["reason"]
    monitors = [e for e in node1.events() if e["kind"] == "hook_call" and e["hook"] == "monitor"]
    assert monitors[-1]["outcome"] == "FAILED" and monitors[-1]["exit_code"] == 1
    assert node1.hook_calls() == ["start epoch=1", "stop epoch=1"]
    cluster.wait(lambda: cluster.active() == ["node2"], "node2 takes over")
    assert trio.run(_holder, cluster.array, 0x10) == "node2"
    assert cluster.agents["node2"].hook_calls() == ["start epoch=2"]


def test_status_without_a_running_agent_exits_3(cluster: Cluster) -> None:
    node1 = cluster.agents["node1"]
    never = node1.cli("status")
    assert never.returncode == 3
    assert "no agent answers" in never.stderr and "is `nodeagent run` running?" in never.stderr
    # A control socket left behind by a killed agent: refused, same answer.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(node1.workdir / "node1.ctl"))
    stale.close()
    left_over = node1.cli("status", "--json")
    assert left_over.returncode == 3
    assert "no agent answers" in left_over.stderr and left_over.stdout == ""


def test_status_answers_from_every_node(cluster: Cluster) -> None:
    # How fast it answers is measured in bench/failover.py, not asserted here.
    _settled(cluster)
    for name in ("node1", "node2"):
        answer = cluster.agents[name].cli("status")
        assert answer.returncode == 0, answer.stderr
        assert f"node {name}: " in answer.stdout


# -- the S-VOL consistency protocol, driven by the agents ------------------------------------


def _live(cluster: Cluster) -> dict[str, Agent]:
    return {n: a for n, a in cluster.agents.items() if a.proc is not None and a.proc.poll() is None}


def _state(agent: Agent) -> NodeState:
    return load_state(agent.workdir / "state")


def _svol_entry(agent: Agent) -> BufferEntry | None:
    return HostBuffer.load(agent.workdir / "buffer", agent.name).by_ldev(0x11)


def _protocol_idle(cluster: Cluster) -> bool:
    """Every live node at flag 0 with its role persisted (joins after the start are over)."""
    states = [_state(a) for a in _live(cluster).values()]
    return all(s.flag is ReplicaFlag.ZERO and s.role is not NodeRole.NONE for s in states)


def _replica(cluster: Cluster, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`nodeagent OP GROUP` on *node*, asked again while the active answers busy (D1)."""
    import time

    deadline = time.monotonic() + 20
    while True:
        answer = cluster.agents[node].cli(*args)
        if answer.returncode == 0 or "busy" not in answer.stderr or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


async def _admin_pvid(array: ArrayProcess, ldev: int) -> bytes:
    async with open_client(array.unix) as admin:
        return bytes(await admin.read_pvid(ldev))


async def _read_as(array: ArrayProcess, host: str, key: bytes, pvid: bytes) -> bytes:
    assert array.tcp is not None
    async with open_client(array.tcp, host=host, key=key) as client:
        return bytes(await client.read(0x11, pvid, 0, 512))


def test_split_and_resync_keep_every_view_consistent_across_a_takeover(cluster: Cluster) -> None:
    _settled(cluster)
    cluster.wait(lambda: _protocol_idle(cluster), "every node at flag 0")
    split = _replica(cluster, "node1", "split", "appvg")
    assert split.returncode == 0, split.stderr
    assert "split of 'appvg' done" in split.stdout
    pvid = trio.run(_admin_pvid, cluster.array, 0x11)
    for agent in cluster.agents.values():
        entry = _svol_entry(agent)
        assert entry is not None and entry.pvid == pvid, agent.name
    cluster.wait(lambda: _protocol_idle(cluster), "every node back at flag 0")
    assert trio.run(_holder, cluster.array, 0x11) == "node1"  # taken back in Stage Z

    node1 = cluster.agents["node1"]
    node1.signal(signal.SIGKILL)
    assert node1.proc is not None
    node1.proc.wait()
    cluster.wait(lambda: cluster.active() == ["node2"], "node2 takes over")
    node2 = cluster.agents["node2"]
    cluster.wait(
        lambda: _state(node2).role is NodeRole.ACTIVE and _protocol_idle(cluster),
        "node2's recovery round is over",
    )
    entry = _svol_entry(node2)
    assert entry is not None and entry.pvid == pvid
    data = trio.run(_read_as, cluster.array, "node2", cluster.keys["node2"], entry.pvid)
    assert len(data) == 512

    resync = _replica(cluster, "node2", "resync", "appvg")
    assert resync.returncode == 0, resync.stderr
    for name in ("node2", "node3"):
        assert _svol_entry(cluster.agents[name]) is None, name
    cluster.wait(lambda: _protocol_idle(cluster), "every node back at flag 0 after the resync")


def test_with_reflection_off_a_standby_view_stays_stale(cluster: Cluster) -> None:
    for agent in cluster.agents.values():
        text = agent.config.read_text()
        agent.config.write_text(text.replace('reflection = "eager"', 'reflection = "off"'))
    _settled(cluster)
    cluster.wait(lambda: _protocol_idle(cluster), "every node at flag 0")
    split = _replica(cluster, "node1", "split", "appvg")
    assert split.returncode == 0, split.stderr
    node1 = cluster.agents["node1"]
    node1.signal(signal.SIGKILL)
    assert node1.proc is not None
    node1.proc.wait()
    cluster.wait(lambda: cluster.active() == ["node2"], "node2 takes over")
    node2 = cluster.agents["node2"]
    cluster.wait(lambda: _state(node2).role is NodeRole.ACTIVE, "node2 persisted its role")
    assert _svol_entry(node2) is None  # stale: the split S-VOL never made it into its view


def test_replica_commands_are_refused_by_a_standby_and_no_wait_returns_at_once(
    cluster: Cluster,
) -> None:
    _settled(cluster)
    cluster.wait(lambda: _protocol_idle(cluster), "every node at flag 0")
    answer = cluster.agents["node2"].cli("split", "appvg")
    assert answer.returncode == 1
    assert "not the active node" in answer.stderr
    unknown = cluster.agents["node1"].cli("resync", "nosuchvg")
    assert unknown.returncode == 1 and "unknown replica group" in unknown.stderr
    # --no-wait returns once submitted; the round still runs to its end.
    submitted = cluster.agents["node1"].cli("split", "appvg", "--quick", "--no-wait")
    assert submitted.returncode == 0, submitted.stderr
    assert "submitted" in submitted.stdout

    def reflected() -> bool:
        pvid = trio.run(_admin_pvid, cluster.array, 0x11)  # a split S-VOL has a new PVID
        if pvid == trio.run(_admin_pvid, cluster.array, 0x10):
            return False  # not split yet
        return all((e := _svol_entry(a)) is not None and e.pvid == pvid
                   for a in cluster.agents.values())  # fmt: skip

    cluster.wait(reflected, "every node reflects the quick split")
