"""The namespace lab for real: `blockemu lab ...` commands, real namespaces, processes and mounts.

Every lab here is brought up by the CLI in a subprocess, as a person would,
with a short heartbeat, and torn down by `lab down` however the test ends.
"Nothing left behind" is checked from the outside: `ip netns list`,
/proc/mounts, the loop devices' backing files, the recorded PIDs, the
guard's registry.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from blockemu import labproc, netguard
from blockemu.address import parse_address
from blockemu.client import open_client

from .conftest import require_privileged

pytestmark = pytest.mark.root

HEARTBEAT = ["--heartbeat-interval", "0.2", "--heartbeat-misses", "3"]
PVOL = 0x10


#: Run `blockemu` with every TCP connect made to fail loudly: a guard that let the
#: connection through would end the process with this message, not send a packet.
NO_CONNECT = """
import socket, sys
def _no(*a, **k):
    sys.exit("A TCP CONNECT WAS ATTEMPTED")
socket.socket.connect = _no
socket.socket.connect_ex = _no
sys.argv[0] = "blockemu"
from blockemu.cli import main
"""


def blockemu(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockemu", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@dataclass
class Lab:
    name: str
    dir: Path
    subnet: str

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        action, rest = args[0], args[1:]
        proc = blockemu("lab", action, "--dir", str(self.dir), *rest)
        if check and proc.returncode != 0:
            raise AssertionError(f"lab {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")  # fmt: skip
        return proc

    def up(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("up", "--name", self.name, "--subnet", self.subnet, *HEARTBEAT, *args,
                        check=check)  # fmt: skip

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.run("status", "--json").stdout))

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.dir / "lab.json").read_text()))

    def roles(self) -> dict[str, str]:
        return {n: v["role"] for n, v in self.status()["nodes"].items()}

    def exec(self, node: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return blockemu("lab", "exec", node, "--dir", str(self.dir), "--", *cmd, timeout=60)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def leftovers(lab: Lab, pids: list[tuple[int, int]]) -> list[str]:
    """Everything of *lab* that still exists, seen from outside the lab's code."""
    found = []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    found += [f"namespace {n}" for n in names if n.startswith(f"be-{lab.name}-")]
    root = str(lab.dir.resolve())
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f]
    found += [f"mount {m}" for m in mounts if m == root or m.startswith(root + "/")]
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().startswith(root + "/"):
                found.append(f"loop {backing.parent.parent.name}")
    found += [f"pid {pid}" for pid, start in pids if labproc.alive(pid, start)]
    if (netguard.registry_dir() / f"{lab.name}.json").exists():
        found.append("registry entry")
    return found


def recorded_pids(lab: Lab) -> list[tuple[int, int]]:
    return [(p["pid"], p["start"]) for p in lab.state()["procs"]]


@pytest.fixture
def labs() -> Iterator[Callable[[str, str], Lab]]:
    """Make labs in short temporary dirs; each is downed and its dir removed at the end."""
    require_privileged("network namespaces, FUSE mounts, loop devices")
    for tool in ("nsenter", "ip", "tc"):
        if shutil.which(tool) is None:
            require_privileged(f"`{tool}` (util-linux / iproute2)")
    made: list[Lab] = []

    def make(name: str, subnet: str) -> Lab:
        lab = Lab(name, Path(tempfile.mkdtemp(prefix="be-lab-")), subnet)
        made.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in made:
            try:
                down = lab.run("down", check=False)
                if down.returncode != 0:
                    print(f"lab down of {lab.name} failed: {down.stdout}{down.stderr}")
            finally:
                shutil.rmtree(lab.dir, ignore_errors=True)


async def _read_pvol(sock: Path, host: str, offset: int, count: int) -> bytes:
    """Read the P-VOL as *host* (the reservation holder) over the admin socket."""
    async with open_client(parse_address(f"unix:{sock}"), host=host) as admin:
        pvid = await admin.read_pvid(PVOL)
        return bytes(await admin.read(PVOL, pvid, offset, count))


def test_up_io_exec_partition_kill_takeover_restart_and_down(
    labs: Callable[[str, str], Lab],
) -> None:
    lab = labs("pt1", "10.213.201.0/24")
    started = time.monotonic()
    out = lab.up().stdout
    assert "registry:" in out and "network:" in out and "host views:" in out and "is up" in out
    assert "nsenter --net=/run/netns/be-pt1-node1" in out  # how to enter a node
    view = lab.status()
    assert view["status"] == "up"
    assert {n: v["role"] for n, v in view["nodes"].items()} == {"node1": "active",
                                                                "node2": "standby"}  # fmt: skip
    pairs = view["array"]["pairs"]
    assert [(p["pvol"], p["svol"], p["status"]) for p in pairs] == [("00:10", "00:20", "PAIR")]
    for node, v in view["nodes"].items():
        assert v["mounted"], node
        assert v["buffer"][0]["device"] == "hdisk0" and v["buffer"][0]["ldev"] == "00:10"
        assert v["peers"] == {"node2" if node == "node1" else "node1": True}
        assert v["ip"].startswith("10.213.201.")

    # The active's host view, from this (the root) mount namespace: write, read back,
    # and the array holds it. The standby is fenced by the active's reservation.
    data = os.urandom(8192)
    hdisk = lab.dir / "node1" / "view" / "hdisk0"
    fd = os.open(hdisk, os.O_RDWR)
    try:
        os.pwrite(fd, data, 1 << 20)
        os.fsync(fd)
        assert os.pread(fd, len(data), 1 << 20) == data
    finally:
        os.close(fd)
    assert trio.run(_read_pvol, lab.dir / "array.sock", "node1", 1 << 20, len(data)) == data
    with pytest.raises(OSError) as fenced:
        (lab.dir / "node2" / "view" / "hdisk0").read_bytes()
    assert fenced.value.errno == errno.EIO

    # exec: in the node's network, in our mount namespace, with the lab's array named.
    inside = lab.exec("node1", "sh", "-c", 'ip -4 -o addr show dev eth0; readlink '
                      '/proc/self/ns/mnt; echo "$BLOCKEMU_ARRAY"; exit 3')  # fmt: skip
    assert inside.returncode == 3, inside.stderr
    assert "10.213.201.11/24" in inside.stdout
    assert os.readlink("/proc/self/ns/mnt") in inside.stdout
    assert "tcp:10.213.201.1:7400" in inside.stdout
    listed = lab.exec("node1", "blockemu", "vol", "list", "--json", "--host", "node1",
                      "--key-file", str(lab.dir / "keys" / "node1.key"))  # fmt: skip
    assert listed.returncode == 0, listed.stderr  # TCP to the array from inside: allowed
    # The same from the root namespace is refused by the guard, before any connect.
    refused = subprocess.run([sys.executable, "-c", NO_CONNECT + "main()", "vol", "list",
                              "--array", "tcp:10.213.201.1:7400"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "refusing to connect to 10.213.201.1:7400 from the root network namespace" in (
        refused.stderr
    )

    # Partition: node2 loses node1 (both ways) but both keep the array; no failover.
    lab.run("partition", "node2")
    probe = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)"
    cut = lab.exec("node2", sys.executable, "-c", probe, "10.213.201.11", "7500")
    assert cut.returncode != 0 and "timed out" in cut.stderr  # dropped silently
    assert lab.exec("node2", sys.executable, "-c", probe, "10.213.201.1", "7400").returncode == 0

    def apart() -> bool:
        nodes = lab.status()["nodes"]
        return nodes["node1"]["peers"] == {"node2": False} and nodes["node2"]["peers"] == {
            "node1": False
        }

    wait_until(apart, "node1 and node2 to lose each other")
    nodes = lab.status()["nodes"]
    assert nodes["node1"]["role"] == "active" and nodes["node2"]["role"] == "standby"
    assert nodes["node1"]["array_connected"] and nodes["node2"]["array_connected"]
    assert lab.status()["partition"] == {"nodes": ["node2"], "from_array": False}
    lab.run("heal")
    wait_until(lambda: all(all(v["peers"].values()) for v in lab.status()["nodes"].values()),
               "the partition to heal")  # fmt: skip
    assert lab.roles() == {"node1": "active", "node2": "standby"}

    # Crash the active: node2 takes over, and reads node1's data through its own view.
    node1_pids = [(p["pid"], p["start"]) for p in lab.state()["procs"] if p["node"] == "node1"]
    killed = lab.run("kill", "node1").stdout
    assert "agent" in killed

    def taken_over() -> bool:
        nodes = lab.status()["nodes"]
        roles = {n: v["role"] for n, v in nodes.items()}
        return roles == {"node1": "down", "node2": "active"} and nodes["node2"]["mounted"]

    wait_until(taken_over, "node2 to take over and mount its view")
    assert not any(labproc.alive(pid, start) for pid, start in node1_pids)
    view = lab.status()["nodes"]
    assert not view["node1"]["mounted"] and view["node2"]["mounted"]
    hdisk2 = lab.dir / "node2" / "view" / "hdisk0"
    with open(hdisk2, "rb") as f:
        f.seek(1 << 20)
        assert f.read(len(data)) == data

    # node1 comes back as a standby (no failback).
    assert "standby" in lab.run("start", "node1").stdout
    assert lab.roles() == {"node1": "standby", "node2": "active"}
    assert lab.run("start", "node1", check=False).returncode == 1  # already running

    # A loop device on node2's view, as a database would use it: `lab down` must detach it.
    loop = subprocess.run(["losetup", "-r", "-f", "--show", str(hdisk2)], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    with open(loop, "rb") as f:
        f.seek(1 << 20)
        assert f.read(len(data)) == data
    pids = recorded_pids(lab)
    assert leftovers(lab, pids)  # the lab really is there...
    down = lab.run("down").stdout
    assert "is down" in down
    assert leftovers(lab, pids) == []  # ...and now nothing of it is
    assert not Path(f"/sys/block/{Path(loop).name}/loop").exists()  # detached, not orphaned
    assert lab.state()["status"] == "down"
    assert "already down" in lab.run("down").stdout  # idempotent
    print(f"lab scenario took {time.monotonic() - started:.1f}s")


def test_two_labs_side_by_side(labs: Callable[[str, str], Lab]) -> None:
    a, b = labs("pt2a", "10.213.202.0/24"), labs("pt2b", "10.213.203.0/24")
    a.up()
    b.up("--nodes", "1")
    assert a.roles() == {"node1": "active", "node2": "standby"}
    assert b.roles() == {"node1": "active"}
    # Same node names, different namespaces and subnets; no route from one lab to the other.
    probe = "import socket,sys; socket.create_connection((sys.argv[1], 7400), 1)"
    assert a.exec("node1", sys.executable, "-c", probe, "10.213.202.1").returncode == 0
    across = a.exec("node1", sys.executable, "-c", probe, "10.213.203.1")
    assert across.returncode != 0 and "unreachable" in across.stderr  # nothing leaves
    # Same name or an overlapping subnet as a running lab: refused before anything is made.
    clash = labs("pt2a", "10.213.204.0/24").up(check=False)
    assert clash.returncode == 1 and "pt2a" in clash.stderr
    overlap = labs("pt2c", "10.213.203.0/24").up(check=False)
    assert overlap.returncode == 1 and "overlaps" in overlap.stderr
    pids_a = recorded_pids(a)
    a.run("down")
    assert leftovers(a, pids_a) == []
    assert b.roles() == {"node1": "active"}  # b did not notice
    pids_b = recorded_pids(b)
    b.run("down")
    assert leftovers(b, pids_b) == []


def test_a_late_failure_of_up_rolls_everything_back(labs: Callable[[str, str], Lab]) -> None:
    lab = labs("pt3", "10.213.205.0/24")
    # nodeagent (not the lab) checks the heartbeat: the agents refuse to start, after the
    # namespaces, the array, the volumes and the buffers exist.
    failed = lab.up("--heartbeat-interval", "20", check=False)
    assert failed.returncode == 1, failed.stdout
    assert "rolling back" in failed.stdout
    assert "agent exited" in failed.stderr and "interval" in failed.stderr
    state = lab.state()
    assert state["status"] == "down" and "roles" in state["error"]
    assert {p["role"] for p in state["procs"]} >= {"array", "agent"}
    assert leftovers(lab, recorded_pids(lab)) == []
    # The directory can be used again at once.
    lab.up("--nodes", "1")
    assert lab.roles() == {"node1": "active"}


def test_down_cleans_up_after_an_up_that_was_killed(labs: Callable[[str, str], Lab]) -> None:
    lab = labs("pt4", "10.213.206.0/24")
    up = subprocess.Popen([sys.executable, "-m", "blockemu", "lab", "up", "--dir", str(lab.dir),
                           "--name", lab.name, "--subnet", lab.subnet, *HEARTBEAT],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert up.stdout is not None
    try:
        for line in up.stdout:
            if "] array:" in line:
                break
        up.send_signal(signal.SIGKILL)  # no rollback: namespaces and the array are left
    finally:
        up.wait()
    state = lab.state()
    assert state["status"] == "starting" and state["namespaces"]
    pids = recorded_pids(lab)
    assert any(labproc.alive(pid, start) for pid, start in pids)
    again = lab.up(check=False)
    assert again.returncode == 1 and "lab down" in again.stderr  # refuses to build on it
    lab.run("down")
    assert leftovers(lab, pids) == []


def test_host_views_stay_mounted(labs: Callable[[str, str], Lab]) -> None:
    """Regression: the agent's attach outlives trio's idle worker thread (10 s)."""
    lab = labs("pt5", "10.213.207.0/24")
    lab.up("--nodes", "1")
    time.sleep(12)
    assert lab.status()["nodes"]["node1"]["mounted"]
