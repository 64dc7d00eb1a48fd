"""The S-VOL protocol under real crashes: pause an agent at a named point, SIGKILL it there.

Each case runs a real cluster (one array, three `nodeagent run` processes,
node1 active), arms one fault-injection point on one agent
(`nodeagent pause-at`, see nodeagent/driver.py), starts a split or a resync
of group ``appvg`` on the active, waits until the armed agent has stopped
itself at that point and SIGKILLs it. Then the cluster settles (a standby
takes over if the active died), the killed node is started again and joins,
and the invariants of DESIGN.md section 4 are checked through the real
array and the real state files, buffers and host views:

* every node is at flag 0 with a role; exactly one active;
* the array did what the standbys' persisted intent says: every point below
  is reached after the standbys persisted B1 or the active finished the
  replica, so the operation is done (rolled forward by the survivor);
* every node's buffer matches the array: after a split each holds the
  S-VOL's new PVID, after a resync none holds an entry for it;
* the active holds the S-VOL's control right after a split, and applications
  on the active can do I/O on the S-VOL through its host view (FUSE mount).

The points: one per flag value per role, on the active and on a standby
(14), for a split and for a resync; plus crashes during a join.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from formats.state_file import NodeRole, ReplicaFlag

from .clusterkit import (
    Agent,
    Cluster,
    admin_pvid,
    holder,
    live,
    protocol_idle,
    read_as,
    replica,
    running_cluster,
    settled,
    state,
    svol_entry,
)
from .conftest import require_privileged

pytestmark = pytest.mark.root

#: Points on the active (node1), in the order a request round reaches them.
ACTIVE_POINTS = [
    "active:request:pre-persist:A1",  # flag 0, every START_ACK in: standbys at B1
    "active:request:persist:A1",  # A1 durable, replica not started
    "active:request:called:RunReplica",  # replica done on the array, still A1
    "active:request:persist:A2",
    "active:request:persist:A3",  # DONE not sent yet
    "active:request:send:DONE",  # DONE sent to one standby only
    "active:request:persist:0",  # Stage Z: flag 0, control right not taken back
]
#: Points on a standby (node2).
STANDBY_POINTS = [
    "standby:pre-persist:B1",  # START received, nothing persisted
    "standby:persist:B1",  # START_ACK not sent
    "standby:send:START_ACK",
    "standby:persist:B2",  # DONE received, reflection not started
    "standby:called:Reflect",  # buffer rewritten, B3 not persisted
    "standby:persist:B3",  # REFLECTED not sent
    "standby:persist:0",
]

SVOL, PVOL = 0x11, 0x10


@pytest.fixture
def cluster(tmp_path: Path, short_dir: Path) -> Iterator[Cluster]:
    require_privileged("the host views of the nodes are FUSE mounts")
    with running_cluster(tmp_path, short_dir) as cl:
        yield cl


def _wait_pause(cluster: Cluster, agent: Agent, point: str) -> None:
    def paused() -> bool:
        return any(
            e["kind"] == "protocol" and e.get("what") == "pause" and e.get("point") == point
            for e in agent.events()
        )

    cluster.wait(paused, f"{agent.name} to pause at {point}")


def _restart_and_join(cluster: Cluster, agent: Agent, env: dict[str, str] | None = None) -> None:
    """Start *agent* again and wait until its new incarnation has been reflected (flag 0)."""
    seen = len(agent.events())
    agent.start(env)

    def joined() -> bool:
        fresh = agent.events()[seen:]
        return any(
            e["kind"] == "protocol" and e.get("what") == "persist" and e.get("flag") == "0"
            for e in fresh
        )

    cluster.wait(joined, f"{agent.name} rejoins and is reflected")


def _settle(cluster: Cluster) -> str:
    """Wait for one active and every live node at flag 0; returns the active's name."""
    cluster.wait(lambda: len(cluster.active()) == 1, "one active")
    cluster.wait(
        lambda: (
            protocol_idle(cluster)
            and sum(state(a).role is NodeRole.ACTIVE for a in live(cluster).values()) == 1
        ),
        "every live node at flag 0, one persisted active",
    )
    return cluster.active()[0]


def _check_invariants(cluster: Cluster, op: str) -> None:
    active_name = _settle(cluster)
    agents = cluster.agents
    assert all(a.alive for a in agents.values())
    for agent in agents.values():
        st = state(agent)
        assert st.flag is ReplicaFlag.ZERO, (agent.name, st)
    svol_pvid = trio.run(admin_pvid, cluster.array, SVOL)
    pvol_pvid = trio.run(admin_pvid, cluster.array, PVOL)
    active = agents[active_name]
    view = active.workdir / "view"
    if op == "split":
        assert svol_pvid != pvol_pvid, "the split was rolled forward: S-VOL has its own PVID"
        for agent in agents.values():
            entry = svol_entry(agent)
            assert entry is not None and entry.pvid == svol_pvid, (agent.name, entry)
        cluster.wait(
            lambda: trio.run(holder, cluster.array, SVOL) == active_name,
            "the active holds the S-VOL's control right",
        )
        entry = svol_entry(active)
        assert entry is not None
        device = view / entry.device
        cluster.wait(device.exists, f"{device} in the active's host view")
        payload = os.urandom(4096)
        fd = os.open(device, os.O_RDWR)
        try:
            os.pwrite(fd, payload, 1 << 20)
            os.fsync(fd)
            assert os.pread(fd, 4096, 1 << 20) == payload
        finally:
            os.close(fd)
    else:
        assert svol_pvid == pvol_pvid, "the resync hid the S-VOL again (P-VOL's PVID)"
        for agent in agents.values():
            assert svol_entry(agent) is None, agent.name
        # The active's applications go on with the P-VOL (it holds its reservation).
        data = trio.run(read_as, cluster.array, active_name, cluster.keys[active_name],
                        pvol_pvid, PVOL)  # fmt: skip
        assert len(data) == 512


def _scenario(cluster: Cluster, op: str, point: str) -> None:
    settled(cluster)
    cluster.wait(lambda: protocol_idle(cluster), "every node at flag 0")
    if op == "resync":
        done = replica(cluster, "node1", "split", "appvg")
        assert done.returncode == 0, done.stderr
        cluster.wait(lambda: protocol_idle(cluster), "the split is over everywhere")
    target = cluster.agents["node1" if point.startswith("active") else "node2"]
    armed = target.cli("pause-at", point)
    assert armed.returncode == 0, armed.stderr
    node1 = cluster.agents["node1"]
    # The requester waits for the round (it dies with node1 when node1 is the target).
    requester = subprocess.Popen(
        [sys.executable, "-m", "nodeagent", op, "appvg", "--config", str(node1.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_pause(cluster, target, point)
        target.kill()
        out, err = requester.communicate(timeout=90)
    finally:
        if requester.poll() is None:
            requester.kill()
            requester.wait()
    if target.name == "node1":
        assert requester.returncode != 0  # its connection died with the active
        cluster.wait(lambda: cluster.active() == ["node2"], "node2 takes over")
    else:  # the round went on without node2, and said so
        assert requester.returncode == 0, err
        assert f"{op} of 'appvg' done" in out
        if point not in ("standby:persist:0",):
            assert "node2 went down" in out, out
    _settle(cluster)
    _restart_and_join(cluster, target)
    _check_invariants(cluster, op)


@pytest.mark.parametrize("point", ACTIVE_POINTS + STANDBY_POINTS)
@pytest.mark.parametrize("op", ["split", "resync"])
def test_crash_at_a_named_point(cluster: Cluster, op: str, point: str) -> None:
    _scenario(cluster, op, point)


def test_a_standby_that_crashes_while_joining_is_reflected_when_it_returns(
    cluster: Cluster,
) -> None:
    settled(cluster)
    cluster.wait(lambda: protocol_idle(cluster), "every node at flag 0")
    node3 = cluster.agents["node3"]
    node3.kill()
    split = replica(cluster, "node1", "split", "appvg")  # node3 misses the split
    assert split.returncode == 0, split.stderr
    assert svol_entry(node3) is None
    # It comes back armed: it stops in the middle of its join's reflection, and dies there.
    seen = len(node3.events())
    node3.start({"NODEAGENT_PAUSE_AT": "standby:called:Reflect"})
    _wait_pause(cluster, node3, "standby:called:Reflect")
    assert len(node3.events()) > seen
    node3.kill()
    assert state(node3).flag is ReplicaFlag.B2  # its restart persisted "reflect me" (D9)
    _restart_and_join(cluster, node3)
    _check_invariants(cluster, "split")


def test_the_active_crashes_while_a_standby_joins(cluster: Cluster) -> None:
    settled(cluster)
    cluster.wait(lambda: protocol_idle(cluster), "every node at flag 0")
    node3 = cluster.agents["node3"]
    node3.kill()
    split = replica(cluster, "node1", "split", "appvg")
    assert split.returncode == 0, split.stderr
    node1 = cluster.agents["node1"]
    armed = node1.cli("pause-at", "active:join:send:DONE")
    assert armed.returncode == 0, armed.stderr
    node3.start()
    _wait_pause(cluster, node1, "active:join:send:DONE")
    node1.kill()
    cluster.wait(lambda: cluster.active() == ["node2"], "node2 takes over")
    _settle(cluster)
    _restart_and_join(cluster, node1)
    _check_invariants(cluster, "split")
    # The joiner got the split it missed, through the new active's recovery.
    entry = svol_entry(node3)
    assert entry is not None and entry.pvid == trio.run(admin_pvid, cluster.array, SVOL)


def test_progress_lines_and_a_queued_request(cluster: Cluster) -> None:
    """`nodeagent split` prints a line per stage; a request during a round waits its turn."""
    settled(cluster)
    cluster.wait(lambda: protocol_idle(cluster), "every node at flag 0")
    node1 = cluster.agents["node1"]
    armed = cluster.agents["node2"].cli("pause-at", "standby:persist:B2")
    assert armed.returncode == 0, armed.stderr
    first = node1.cli("split", "appvg", "--no-wait")
    assert first.returncode == 0, first.stderr
    _wait_pause(cluster, cluster.agents["node2"], "standby:persist:B2")
    # node2 is stopped mid-round: the active waits for its REFLECTED; a resync now is queued.
    queued = subprocess.Popen(
        [sys.executable, "-m", "nodeagent", "resync", "appvg", "--config", str(node1.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not any(e.get("what") == "queued" for e in node1.events()):
            assert time.monotonic() < deadline, "the resync was not queued"
            time.sleep(0.05)
        cluster.agents["node2"].kill()  # the round drops node2 and ends; the resync runs
        out, err = queued.communicate(timeout=60)
    finally:
        if queued.poll() is None:
            queued.kill()
            queued.wait()
    assert queued.returncode == 0, err
    lines = out.splitlines()
    assert any("queued: request (split of 'appvg')" in x for x in lines), lines
    start = next(i for i, x in enumerate(lines) if "] accepted: resync of 'appvg'" in x)
    stages = "\n".join(lines[start:])
    assert stages.index("(A1)") < stages.index("(A2)") < stages.index("(A3)")
    assert stages.index("(A3)") < stages.index("Stage Z")
    assert "node3 reflected" in stages
    assert "resync of 'appvg' done" in lines[-1]
    _settle(cluster)
    _restart_and_join(cluster, cluster.agents["node2"])
    _check_invariants(cluster, "resync")
