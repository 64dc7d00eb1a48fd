"""Starting and watching a lab's processes: the array, the agents, their host views.

Daemons are started with ``nsenter --net`` into their namespace, in a session
of their own (a Ctrl-C of the lab command must not reach them), and recorded
in the state file at once. The agents are asked through their own command
(`nodeagent status --json`, over their control socket); the host view each
agent starts is found by the PID the agent reports in its event log.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from . import labproc, netns
from .labproc import Proc
from .labstate import LabError, LabState


def tail(path: Path, lines: int = 8) -> str:
    """The last lines of a daemon's log, for an error message that says why it died."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n    ".join(text[-lines:]) or "(empty log)"


def spawn(state: LabState, member: str, argv: Sequence[str], log: Path, role: str) -> Proc:
    """Start a daemon in *member*'s namespace, detached from us, and record it at once."""
    ns = state.topology().ns(member)
    with open(log, "ab") as out:
        child = subprocess.Popen(
            netns.nsenter_argv(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=log.parent,
            start_new_session=True,  # a Ctrl-C of `lab up` must not reach the lab
        )
    node = None if member == netns.ARRAY else member
    proc = labproc.found(child.pid, role, node)
    if proc is None:  # it died at once: record it anyway, `down` will find it dead
        proc = Proc(child.pid, labproc.start_time(child.pid) or 0, role, node)
    state.procs.append(proc)
    state.save()
    return proc


def wait_for(
    what: str,
    until: Callable[[], bool],
    timeout: float,
    check: Callable[[], None] = lambda: None,
) -> None:
    """Poll *until* (0.05 s apart); *check* raises if waiting is pointless (a process died)."""
    deadline = time.monotonic() + timeout
    while not until():
        check()
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def python(*args: str) -> list[str]:
    """Our own interpreter: the lab runs the blockemu and nodeagent it was started from."""
    return [sys.executable, *args]


def start_agent(state: LabState, node: str) -> Proc:
    argv = python("-m", "nodeagent", "run", "--config", str(state.node_config(node)))
    return spawn(state, node, argv, state.node_dir(node) / "agent.log", "agent")


def check_agents(state: LabState, nodes: Sequence[str]) -> None:
    for node in nodes:
        agent = state.latest("agent", node)
        if agent is None or not labproc.is_alive(agent):
            log = state.node_dir(node) / "agent.log"
            raise LabError(f"{node}'s agent exited; {log}:\n    {tail(log)}")


def attach_pids(events: Path) -> list[int]:
    """PIDs of the `blockemu attach` processes the node's agent reported, oldest first."""
    pids = []
    try:
        lines = events.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("kind") == "attach" and "pid" in event:
                pids.append(int(event["pid"]))
    return pids


def live_attach(state: LabState, node: str) -> Proc | None:
    """The node's running attach (the latest reported one that is alive and is ours)."""
    view = str(state.view(node))
    for pid in reversed(attach_pids(state.node_dir(node) / "events.jsonl")):
        argv = labproc.cmdline(pid)
        if "attach" in argv and view in argv:
            proc = labproc.found(pid, "attach", node)
            if proc is not None:
                return proc
    return None


def wait_view(state: LabState, node: str, timeout: float) -> Proc:
    """Until the node's agent has its host view mounted; the attach is recorded."""
    found: list[Proc] = []

    def ready() -> bool:
        proc = live_attach(state, node)
        if proc is None or not labproc.is_mounted(state.view(node)):
            return False
        found.append(proc)
        return True

    wait_for(f"{node}'s host view at {state.view(node)}", ready, timeout,
             lambda: check_agents(state, [node]))  # fmt: skip
    proc = found[-1]
    if proc not in state.procs:
        state.procs.append(proc)
        state.save()
    return proc


def agent_statuses(state: LabState, nodes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each node agent's status, asked in parallel over its control socket from this
    process (what `nodeagent status --json` prints; a `nodeagent` process per node per
    poll would cost a Python start-up each, and the demo and benchmarks poll this).

    A node that does not answer gets ``{"error": ...}``.
    """
    from formats.node_config import ConfigError, load_node_config
    from nodeagent.agent import control_path, control_request

    answers: dict[str, dict[str, Any]] = {}

    async def ask(node: str) -> None:
        try:
            config = load_node_config(state.node_config(node))
        except (ConfigError, OSError) as exc:
            answers[node] = {"error": f"{state.node_config(node)}: {exc}"}
            return
        try:
            answer = await control_request(config, {"cmd": "status"}, seconds=15)
            answers[node] = dict(answer["status"])
        except (OSError, ValueError, KeyError, trio.TooSlowError) as exc:
            answers[node] = {"error": f"no agent answers on {control_path(config)} ({exc})"}

    async def ask_all() -> None:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(ask, node)

    trio.run(ask_all)
    return answers
