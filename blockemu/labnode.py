"""What a lab does to one node, or to the network: crash it, stop it, start it, cut it off.

A node is its network namespace: `lab kill` SIGKILLs every process in it
(and the agent's descendants), then releases the dead host view and
whatever was stacked on it (loop devices, filesystems), so the node can
start again. Partitions are drops in the lab's switch (:mod:`blockemu.netns`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import labproc, netns
from .labproc import Proc
from .labrun import (
    agent_statuses,
    check_agents,
    live_attach,
    start_agent,
    wait_for,
    wait_view,
)
from .labstate import LabError, LabState, Out, locked


def _up_state(directory: Path) -> LabState:
    state = LabState.load(directory.absolute())
    if state.status != "up":
        raise LabError(f"the lab in {state.directory} is {state.status}, not up")
    return state


def _node_state(directory: Path, node: str) -> LabState:
    state = _up_state(directory)
    if node not in state.nodes:
        raise LabError(f"no node {node!r} in the lab: it has {', '.join(state.nodes)}")
    return state


def kill_node(directory: Path, node: str, out: Out = print) -> list[Proc]:
    """A node crash: SIGKILL every process of *node*, then clear its dead mounts.

    "Every process" is: everything in the node's network namespace (the agent,
    its attach, its hooks, whatever `lab exec` started there), plus the
    descendants of the agent and the attach the agent reported. The attach is
    killed first, so it cannot unmount cleanly. Then mounts of loop devices
    backed by the node's view, those loop devices, and the dead FUSE mount are
    released, so the node can start again.
    """
    with locked(directory):
        state = _node_state(directory, node)
        topo = state.topology()
        agent = state.latest("agent", node)
        pids = set(labproc.in_netns(filter(None, [netns.inode(topo.ns(node))])))
        roots = [agent.pid] if agent and labproc.is_alive(agent) else []
        pids |= set(labproc.descendants(roots)) | set(roots)
        attach = live_attach(state, node)
        if attach is not None:
            pids.add(attach.pid)
        procs = [p for pid in sorted(pids) if (p := labproc.found(pid, _role(pid, roots), node))]
        labproc.kill([p.pid for p in procs if p.pid not in roots])  # the attach before the agent
        labproc.kill(roots)
        released = labproc.release_storage(str(state.node_dir(node)))
    killed = ", ".join(f"{p.pid} ({p.role})" for p in procs) or "nothing was running"
    out(f"killed {node}: {killed}")
    for line in released:
        out(f"  {line}")
    return procs


def _role(pid: int, agents: list[int]) -> str:
    """What a process of a node is, for the report (read before it is killed)."""
    if pid in agents:
        return "agent"
    argv = labproc.cmdline(pid)
    if "attach" in argv and "blockemu" in argv:
        return "attach"
    return os.path.basename(argv[0]) if argv else "?"


def stop_agent(directory: Path, node: str, out: Out = print, timeout: float = 20.0) -> None:
    """SIGTERM the node's agent: it runs its stop hook (if active), unmounts, leaves."""
    with locked(directory):
        state = _node_state(directory, node)
        agent = state.latest("agent", node)
        if agent is None or not labproc.is_alive(agent):
            raise LabError(f"{node}'s agent is not running (start it: `blockemu lab start {node}`)")
        # The view goes with the agent: detach what is stacked on it first (lazily, so an
        # application still running until the stop hook keeps its open files).
        released = labproc.release_loops(str(state.view(node)))
        labproc.send([agent.pid], signal.SIGTERM)
        left = labproc.wait_gone([agent.pid], timeout)
        if left:
            labproc.kill(left)
            out(f"{node}'s agent did not stop in {timeout:.0f}s: killed")
        if labproc.is_mounted(state.view(node)) and live_attach(state, node) is None:
            released += labproc.release_storage(str(state.view(node)))
    out(f"stopped {node}'s agent (pid {agent.pid})")
    for line in released:
        out(f"  {line}")


def start_node(directory: Path, node: str, out: Out = print, *, timeout: float = 60.0) -> Proc:
    """Start the node's agent again; it rejoins (as standby when another node is active)."""
    with locked(directory):
        state = _node_state(directory, node)
        agent = state.latest("agent", node)
        if agent is not None and labproc.is_alive(agent):
            raise LabError(f"{node}'s agent is already running (pid {agent.pid})")
        if labproc.is_mounted(state.view(node)) and live_attach(state, node) is None:
            labproc.release_storage(str(state.view(node)))
        proc = start_agent(state, node)

        def joined() -> bool:
            role = agent_statuses(state, [node])[node].get("role")
            return role in ("active", "standby")

        wait_for(f"{node} to join", joined, timeout, lambda: check_agents(state, [node]))
        attach = wait_view(state, node, timeout)
    role = agent_statuses(state, [node])[node].get("role")
    out(f"started {node}: agent pid {proc.pid}, {role}, attach pid {attach.pid}")
    return proc


def partition(directory: Path, nodes: Sequence[str], *, from_array: bool, out: Out = print) -> None:
    """Cut *nodes* off from the other nodes (and from the array with *from_array*)."""
    with locked(directory):
        state = _up_state(directory)
        topo = state.topology()
        try:
            plan = netns.partition_plan(topo, nodes, from_array=from_array)
        except (KeyError, ValueError) as exc:
            raise LabError(str(exc).strip("'\"")) from None
        netns.apply_partition(topo, plan)
        state.partition = {"nodes": sorted(nodes), "from_array": from_array}
        state.save()
    rest = [n for n in topo.nodes if n not in nodes]
    cut = "the other nodes and the array" if from_array else "the other nodes (not the array)"
    out(f"partitioned: {', '.join(sorted(nodes))} cut off from {cut}"
        + (f"; {', '.join(rest)} still see each other" if len(rest) > 1 else ""))  # fmt: skip


def heal(directory: Path, out: Out = print) -> None:
    """Remove the partition: every member reaches every other again."""
    with locked(directory):
        state = _up_state(directory)
        netns.heal(state.topology())
        state.partition = None
        state.save()
    out("healed: every member sees every other again")


def exec_argv(
    directory: Path, member: str, argv: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment to run *argv* inside a node's (or the array's) network.

    The environment names the lab's array (``BLOCKEMU_ARRAY``, over the lab
    network) and, for a node, its buffer, key and host id.
    """
    state = LabState.load(directory.absolute())
    topo = state.topology()
    if member not in topo.members:
        raise LabError(f"no {member!r} in the lab: it has {', '.join(topo.members)}")
    if not argv:
        raise LabError("no command: `blockemu lab exec NODE -- COMMAND...`")
    env = dict(os.environ)
    # This blockemu's commands first (a venv need not be activated to use the lab).
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
    env.update({"BLOCKEMU_ARRAY": state.array_tcp, "BLOCKEMU_LAB_DIR": str(state.directory),
                "BLOCKEMU_LAB_MEMBER": member})  # fmt: skip
    if member != netns.ARRAY:
        env.update({"BLOCKEMU_HOST_BUFFER": str(state.buffer(member)),
                    "BLOCKEMU_LAB_HOST": member,
                    "BLOCKEMU_LAB_KEY_FILE": str(state.key_file(member))})  # fmt: skip
    return netns.nsenter_argv(topo.ns(member), argv), env
