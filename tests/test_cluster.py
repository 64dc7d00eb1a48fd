"""The cluster runtime and the S-VOL protocol driven by real agents (tests/clusterkit.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from formats.state_file import NodeRole

from .clusterkit import (
    INTERVAL,
    MISSES,
    Agent,
    Cluster,
    admin_pvid,
    holder,
    protocol_idle,
    read_as,
    replica,
    running_cluster,
    settled,
    state,
    svol_entry,
    write_as,
)


@pytest.fixture
def cluster(tmp_path: Path, short_dir: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, short_dir) as cl:
        yield cl


def test_start_failover_and_fencing_of_a_paused_active(cluster: Cluster) -> None:
    for agent in cluster.agents.values():
        agent.start()
    cluster.wait(lambda: cluster.active() == ["node1"] and len(cluster.roles()) == 3,
                 "node1 active, two standbys")  # fmt: skip
    assert sorted(cluster.roles().values()) == ["active", "standby", "standby"]
    assert trio.run(holder, cluster.array, 0x10) == "node1"
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
    assert trio.run(holder, cluster.array, 0x10) == "node2"
    assert trio.run(holder, cluster.array, 0x11) == "node2"
    assert cluster.agents["node2"].hook_calls() == ["start epoch=2"]
    accepted = sum(
        trio.run(write_as, cluster.array, "node1", cluster.keys["node1"]) for _ in range(5)
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
    assert trio.run(holder, cluster.array, 0x10) == "node2"
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
    settled(cluster)
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
    assert trio.run(holder, cluster.array, 0x10) == "node2"
    assert trio.run(holder, cluster.array, 0x11) == "node2"
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
    settled(cluster)
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
    assert trio.run(holder, cluster.array, 0x10) == "node2"
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
    settled(cluster)
    for name in ("node1", "node2"):
        answer = cluster.agents[name].cli("status")
        assert answer.returncode == 0, answer.stderr
        assert f"node {name}: " in answer.stdout


# -- the S-VOL consistency protocol, driven by the agents ------------------------------------


def test_split_and_resync_keep_every_view_consistent_across_a_takeover(cluster: Cluster) -> None:
    settled(cluster)
    cluster.wait(lambda: protocol_idle(cluster), "every node at flag 0")
    split = replica(cluster, "node1", "split", "appvg")
    assert split.returncode == 0, split.stderr
    assert "split of 'appvg' done" in split.stdout
    pvid = trio.run(admin_pvid, cluster.array, 0x11)
    for agent in cluster.agents.values():
        entry = svol_entry(agent)
        assert entry is not None and entry.pvid == pvid, agent.name
    cluster.wait(lambda: protocol_idle(cluster), "every node back at flag 0")
    assert trio.run(holder, cluster.array, 0x11) == "node1"  # taken back in Stage Z

    node1 = cluster.agents["node1"]
    node1.signal(signal.SIGKILL)
    assert node1.proc is not None
    node1.proc.wait()
    cluster.wait(lambda: cluster.active() == ["node2"], "node2 takes over")
    node2 = cluster.agents["node2"]
    cluster.wait(
        lambda: state(node2).role is NodeRole.ACTIVE and protocol_idle(cluster),
        "node2's recovery round is over",
    )
    entry = svol_entry(node2)
    assert entry is not None and entry.pvid == pvid
    data = trio.run(read_as, cluster.array, "node2", cluster.keys["node2"], entry.pvid)
    assert len(data) == 512

    resync = replica(cluster, "node2", "resync", "appvg")
    assert resync.returncode == 0, resync.stderr
    for name in ("node2", "node3"):
        assert svol_entry(cluster.agents[name]) is None, name
    cluster.wait(lambda: protocol_idle(cluster), "every node back at flag 0 after the resync")


def test_replica_commands_are_refused_by_a_standby_and_no_wait_returns_at_once(
    cluster: Cluster,
) -> None:
    settled(cluster)
    cluster.wait(lambda: protocol_idle(cluster), "every node at flag 0")
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
        pvid = trio.run(admin_pvid, cluster.array, 0x11)  # a split S-VOL has a new PVID
        if pvid == trio.run(admin_pvid, cluster.array, 0x10):
            return False  # not split yet
        return all((e := svol_entry(a)) is not None and e.pvid == pvid
                   for a in cluster.agents.values())  # fmt: skip

    cluster.wait(reflected, "every node reflects the quick split")


def _array_cli(cluster: Cluster, *args: str) -> None:
    """`blockemu ARGS` against the array directly, as a backup script would run it."""
    env = {**os.environ, "BLOCKEMU_ARRAY": str(cluster.array.unix)}
    done = subprocess.run([sys.executable, "-m", "blockemu", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr


def everyone_knows(cluster: Cluster, expected: bytes | None) -> Callable[[], bool]:
    """Every node's buffer holds the S-VOL under *expected* (None: holds no entry)."""

    def check() -> bool:
        entries = [svol_entry(a) for a in cluster.agents.values()]
        if expected is None:
            return all(e is None for e in entries)
        return all(e is not None and e.pvid == expected for e in entries)

    return check


def test_a_split_made_on_the_array_directly_is_reflected_everywhere(cluster: Cluster) -> None:
    """D16: nobody asked nodeagent; the active notices and every buffer follows."""
    settled(cluster)
    cluster.wait(lambda: protocol_idle(cluster), "every node at flag 0")
    _array_cli(cluster, "pair", "split", "--svol", "00:11", "--wait")
    pvid = trio.run(admin_pvid, cluster.array, 0x11)

    cluster.wait(everyone_knows(cluster, pvid), "every node's buffer holds the split S-VOL")
    node1 = cluster.agents["node1"]
    assert [e["group"] for e in node1.events() if e["kind"] == "out_of_band"] == ["appvg"]
    cluster.wait(lambda: protocol_idle(cluster), "the REFLECT round is over")
    _array_cli(cluster, "pair", "resync", "--svol", "00:11", "--wait")
    cluster.wait(everyone_knows(cluster, None), "every node forgot the re-formed S-VOL")
    # `nodeagent reflect` runs the same round on request, and there is nothing to change.
    again = replica(cluster, "node1", "reflect", "appvg", "--quiet")
    assert again.returncode == 0, again.stderr
    assert everyone_knows(cluster, None)()


def test_a_cci_backup_script_bypassing_nodeagent_keeps_every_view_consistent(
    cluster: Cluster, tmp_path: Path
) -> None:
    """#8 + D16: `pairsplit`/`pairresync` of blockemu-cci on the node's own HORCM files."""
    settled(cluster)
    cluster.wait(lambda: protocol_idle(cluster), "every node at flag 0")
    links, rundir = tmp_path / "cci-bin", tmp_path / "cci-run"
    cci = Path(sys.executable).parent / "blockemu-cci"
    subprocess.run([str(cci), "install-links", str(links)], check=True, capture_output=True)
    env = {**os.environ, "PATH": f"{links}{os.pathsep}{os.environ['PATH']}",
           "BLOCKEMU_ARRAY": str(cluster.array.unix), "BLOCKEMU_CCI_RUNDIR": str(rundir),
           "BLOCKEMU_CCI_CONFDIR": str(cluster.agents["node1"].workdir)}  # fmt: skip
    env.pop("HORCMINST", None)

    def cci_cmd(*args: str) -> None:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{args}: {done.stdout} {done.stderr}"

    try:
        cci_cmd("horcmstart.sh", "0", "1")
        cci_cmd("pairsplit", "-g", "appvg", "-I0")
        cci_cmd("pairevtwait", "-g", "appvg", "-s", "psus", "-t", "60", "-I0")
        pvid = trio.run(admin_pvid, cluster.array, 0x11)
        cluster.wait(everyone_knows(cluster, pvid), "every node learns the S-VOL split by CCI")
        cluster.wait(lambda: protocol_idle(cluster), "the REFLECT round is over")
        cci_cmd("pairresync", "-g", "appvg", "-I0")
        cci_cmd("pairevtwait", "-g", "appvg", "-s", "pair", "-t", "60", "-I0")
        cluster.wait(everyone_knows(cluster, None), "every node forgets the re-formed S-VOL")
    finally:
        subprocess.run(["horcmshutdown.sh", "0", "1"], env=env, capture_output=True, timeout=60)
        for pidfile in rundir.glob("horcm*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text())
                if b"cci.instance" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
