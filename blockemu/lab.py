"""The namespace lab: an array and N cluster nodes on one machine, with real TCP between them.

``up`` builds it in steps, each recorded in the lab's state file
(``DIR/lab.json``, written atomically) *before* it is taken, so ``down`` can
always undo exactly what exists, whether the lab is running, half built by a
failed ``up``, or already partly gone; a failed ``up`` calls ``down`` itself.

1. register the lab's subnet (``/run/blockemu-labs/NAME.json``) for the
   network guard (:mod:`blockemu.netguard`), before any address exists;
2. namespaces, bridge, veths, addresses (:mod:`blockemu.netns`);
3. configs: keys, hosts.toml, node.toml, HORCM files, hooks
   (:func:`blockemu.labconfig.standard_layout`, shared with the Vagrant lab);
4. the array (`blockemu serve`) in its namespace, on TCP and on
   ``DIR/array.sock``;
5. volumes and the pairs, formed (admin, over the unix socket);
6. each node's disk-info buffer, scanned over TCP from inside the node;
7. one `nodeagent run` per node in its namespace; the agents elect the active
   and each starts its host view (`blockemu attach` on ``DIR/NODE/view``);
8. wait until one node is active, the others standby, and every view is
   mounted.

Processes are started with ``nsenter --net`` only, so their FUSE mounts are
in the host's mount namespace: the host sees ``DIR/NODE/view/hdisk0`` and can
``losetup`` it. The CLI side (status, kill, ...) talks to the lab only through
unix sockets in DIR and by PID; it starts agents with ``nodeagent run`` and
asks them over their control sockets (``nodeagent.agent.control_request``).

Node actions (kill, stop, start, partition, heal, exec) are in
:mod:`blockemu.labnode`; the state file in :mod:`blockemu.labstate`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from formats.units import format_ldev
from formats.wire import Op

from . import labproc, netguard, netns
from .address import parse_address
from .client import open_client
from .fileio import atomic_write
from .hostbuffer import HostBuffer
from .labconfig import LabLayout, lab_node_ids, lab_pairs, standard_layout, write_layout
from .labproc import Proc
from .labrun import (
    agent_statuses,
    check_agents,
    live_attach,
    python,
    spawn,
    start_agent,
    tail,
    wait_for,
    wait_view,
)
from .labstate import (
    ARRAY_GROUP,
    LOCK_NAME,
    PEER_PORT,
    STATE_NAME,
    LabError,
    LabOptions,
    LabState,
    Out,
    Steps,
    locked,
)

# -- helpers -----------------------------------------------------------------------------------


def _require_tools() -> None:
    if os.geteuid() != 0:
        raise LabError("the namespace lab needs root (network namespaces, FUSE, loop devices)")
    if not os.path.exists("/dev/fuse"):
        raise LabError("/dev/fuse is missing: the nodes' host views need FUSE (apt install fuse3)")
    for tool, package in (("nsenter", "util-linux"), ("ip", "iproute2"), ("tc", "iproute2")):
        if shutil.which(tool) is None:
            raise LabError(f"`{tool}` is not installed: apt install {package}")


def _check_subnet(subnet: str, name: str, directory: Path) -> None:
    """Refuse a subnet this machine routes (the guard would cut it off) or a running lab uses."""
    net = netns.parse_subnet(subnet)
    routes = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"],
                            capture_output=True, text=True, timeout=10)  # fmt: skip
    for route in json.loads(routes.stdout or "[]"):
        dst = route.get("dst", "default")
        try:
            other = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue  # "default", or not an address
        if other.overlaps(net) and not other.is_loopback:
            raise LabError(
                f"lab subnet {net} overlaps {dst} (dev {route.get('dev', '?')}), which this "
                "machine uses: pick another --subnet"
            )
    for lab in netguard.lab_networks():
        if lab.network.overlaps(net) and lab.directory != str(directory) and lab.name != name:
            raise LabError(
                f"lab subnet {net} overlaps {lab.network} of lab {lab.name!r} ({lab.directory}): "
                "pick another --subnet"
            )


def _registry_path(name: str) -> Path:
    return netguard.registry_dir() / f"{name}.json"


def _register(state: LabState) -> None:
    path = _registry_path(state.name)
    if path.exists():
        try:
            other = json.loads(path.read_text())
        except (OSError, ValueError):
            other = {}
        other_dir = Path(str(other.get("dir", "")))
        if other_dir != state.directory and _running_in(other_dir):
            raise LabError(
                f"a lab named {state.name!r} is up in {other_dir}: pick another --name, or "
                f"`blockemu lab down --dir {other_dir}`"
            )
    state.registry = str(path)
    state.save()
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"name": state.name, "dir": str(state.directory), "subnet": state.subnet,
             "namespaces": state.topology().namespaces, "created": state.created}  # fmt: skip
    atomic_write(path, json.dumps(entry).encode() + b"\n", mode=0o644)


def _running_in(directory: Path) -> bool:
    try:
        return LabState.load(directory).status != "down"
    except LabError:
        return False


def _prepare_dir(directory: Path) -> None:
    """An empty directory, or the leftovers of a lab that is down (removed)."""
    state_path = directory / STATE_NAME
    if state_path.exists():
        old = LabState.load(directory)
        if old.status != "down":
            raise LabError(
                f"a lab ({old.name!r}, {old.status}) is in {directory}: `blockemu lab down "
                f"--dir {directory}` first"
            )
    elif any(p.name != LOCK_NAME for p in directory.iterdir()):
        raise LabError(f"{directory} is not empty and holds no lab: pick another --dir")
    busy = labproc.mounts_under(str(directory.resolve())) or labproc.loops_under(
        str(directory.resolve())
    )
    if busy:
        raise LabError(f"{directory} still has mounts or loop devices: {busy}; `lab down` first")
    for entry in directory.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# -- up ----------------------------------------------------------------------------------------


def up(opts: LabOptions, out: Out = print) -> LabState:
    """Build and start a lab; on any failure undo everything and raise :class:`LabError`."""
    _require_tools()
    directory = opts.directory.resolve()  # mountinfo shows canonical paths
    longest = directory / "node64" / "node64.ctl"  # an agent's control socket
    if len(str(longest)) > 100:
        raise LabError(f"--dir {directory} is too long: unix socket paths under it (e.g. "
                       f"{longest}) must stay under 108 bytes; pick a shorter one")  # fmt: skip
    nodes = lab_node_ids(opts.nodes)
    lab_pairs(opts.pairs)  # bad counts are refused here, before anything exists
    topo = netns.Topology(netns.validate_lab_name(opts.name), netns.parse_subnet(opts.subnet),
                          tuple(nodes))  # fmt: skip
    with locked(directory):
        _prepare_dir(directory)
        _check_subnet(opts.subnet, opts.name, directory)
        state = LabState(opts.name, directory, str(topo.subnet), nodes)
        state.options = {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in vars(opts).items()}  # fmt: skip
        state.save()
        steps = Steps(out)
        out(f"lab {opts.name!r} in {directory}: {len(nodes)} node(s), subnet {topo.subnet}, "
            f"reflection {opts.reflection}")  # fmt: skip
        try:
            _build(state, opts, steps)
        except BaseException as exc:
            why = str(exc) or type(exc).__name__
            out(f"[{steps.elapsed:6.2f}s] {steps.current}: FAILED: {why}")
            out("rolling back: stopping what was started, removing what was created")
            state.status, state.error = "failed", f"{steps.current}: {why}"
            state.save()
            try:
                _down(state, out)
            except LabError as cleanup:
                out(f"rollback incomplete: {cleanup}")
            if isinstance(exc, LabError | netns.NetnsError | OSError | ValueError):
                raise LabError(f"lab up failed at {steps.current}: {why}") from exc
            raise
        state.status = "up"
        state.save()
        out(f"[{steps.elapsed:6.2f}s] lab {opts.name!r} is up")
    return state


def _build(state: LabState, opts: LabOptions, steps: Steps) -> None:
    topo = state.topology()
    with steps.step("registry") as d:
        _register(state)
        d.append(f"{state.registry} (the guard refuses {topo.subnet} from the root namespace)")
    with steps.step("network") as d:

        def record(ns: str) -> None:
            state.namespaces.append(ns)
            state.save()

        netns.create(topo, before=record)
        d.append(f"namespaces {', '.join(topo.namespaces)}")
        d.append(f"bridge {netns.BRIDGE} in {topo.bridge_ns}")
    with steps.step("configs") as d:
        layout = _layout(state, opts)
        write_layout(layout)
        d.append(f"keys, hosts.toml, {len(topo.nodes)} x node.toml/HORCM/hooks")
    with steps.step("array") as d:
        proc = _start_array(state, opts.timeout)
        d.append(f"pid {proc.pid}, {state.array_tcp} and unix:{state.array_sock}")
    with steps.step("volumes") as d:
        rows = trio.run(_make_volumes, state, layout, opts)
        d += [f"{r['pvol']} -> {r['svol']} {r['status']}" for r in rows]
    with steps.step("host buffers") as d:
        d += _scan_buffers(state, opts.timeout)
    with steps.step("agents") as d:
        for node in topo.nodes:
            proc = start_agent(state, node)
            d.append(f"{node} pid {proc.pid}")
    with steps.step("roles") as d:
        roles = _wait_roles(state, topo.nodes, opts.timeout)
        d += [f"{n} {r}" for n, r in roles.items()]
    with steps.step("host views") as d:
        for node in topo.nodes:
            attach = wait_view(state, node, opts.timeout)
            d.append(f"{node} attach pid {attach.pid}")


def _layout(state: LabState, opts: LabOptions) -> LabLayout:
    topo = state.topology()
    return standard_layout(
        state.directory,
        array_address=state.array_tcp,
        node_listen={n: f"tcp:{topo.ip(n)}:{PEER_PORT}" for n in topo.nodes},
        pairs=opts.pairs,
        reflection=opts.reflection,
        heartbeat_interval=opts.heartbeat_interval,
        heartbeat_misses=opts.heartbeat_misses,
    )


def _start_array(state: LabState, timeout: float) -> Proc:
    log = state.array_log
    offset = log.stat().st_size if log.exists() else 0
    argv = python("-m", "blockemu", "serve", "--root", str(state.array_root),
                   "--listen", state.array_tcp, "--listen", f"unix:{state.array_sock}",
                   "--hosts", str(state.directory / "hosts.toml"))  # fmt: skip
    proc = spawn(state, netns.ARRAY, argv, log, "array")

    def listening() -> bool:
        with open(log, "rb") as f:
            f.seek(offset)
            return b"listening on" in f.read()

    def check() -> None:
        if not labproc.is_alive(proc):
            raise LabError(f"the array exited at start; {log}:\n    {tail(log)}")

    wait_for("the array to listen", listening, timeout, check)
    return proc


async def _make_volumes(state: LabState, layout: LabLayout, opts: LabOptions) -> list[Any]:
    async with open_client(parse_address(f"unix:{state.array_sock}")) as admin:
        for pair in layout.pairs:
            await admin.create(pair.pvol, opts.size, label=pair.name)
            await admin.create(pair.svol, opts.size, label=f"{pair.name}-copy")
        for pair in layout.pairs:
            await admin.pair_create(format_ldev(pair.pvol), format_ldev(pair.svol),
                                    mode=opts.mode, group=ARRAY_GROUP)  # fmt: skip
        with trio.fail_after(opts.timeout):
            while True:
                rows = await admin.pair_display({"group": ARRAY_GROUP})
                if rows and all(r["status"] == "PAIR" and r["copy_percent"] == 100 for r in rows):
                    break
                await trio.sleep(0.05)
            if not opts.initial_split:
                return rows
            # A first backup already exists: the hosts' install-time scan will see it.
            await admin.pair_command(Op.PAIR_SPLIT, {"group": ARRAY_GROUP})
            while True:
                rows = await admin.pair_display({"group": ARRAY_GROUP})
                if all(r["status"] == "PSUS" and r["copy_percent"] == 100 for r in rows):
                    return rows
                await trio.sleep(0.05)


def _scan_buffers(state: LabState, timeout: float) -> list[str]:
    """`blockemu host scan` on every node, from inside it, over the lab network (in parallel)."""
    topo = state.topology()
    running = {}
    for node in topo.nodes:
        argv = python("-m", "blockemu", "host", "scan", "--array", state.array_tcp,
                       "--host", node, "--key-file", str(state.key_file(node)),
                       "--buffer", str(state.buffer(node)), "--json")  # fmt: skip
        running[node] = subprocess.Popen(netns.nsenter_argv(topo.ns(node), argv),
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)  # fmt: skip
    done = []
    for node, child in running.items():
        stdout, stderr = child.communicate(timeout=timeout)
        if child.returncode != 0:
            raise LabError(f"{node}: `blockemu host scan` failed: {stderr.strip()}")
        devices = json.loads(stdout)["devices"]
        done.append(f"{node} " + (", ".join(f"{d['device']}={d['ldev']}" for d in devices)
                                  or "no devices"))  # fmt: skip
    return done


def _wait_roles(state: LabState, nodes: Sequence[str], timeout: float) -> dict[str, str]:
    """Until exactly one node is active and the others standby."""
    roles: dict[str, str] = {}

    def settled() -> bool:
        nonlocal roles
        answers = agent_statuses(state, nodes)
        roles = {n: str(a.get("role", "?")) for n, a in answers.items()}
        values = sorted(roles.values())
        return values == ["active"] + ["standby"] * (len(nodes) - 1)

    wait_for("one active node and the others standby", settled, timeout,
             lambda: check_agents(state, nodes))  # fmt: skip
    return roles


# -- status ------------------------------------------------------------------------------------


async def _pairs(state: LabState) -> list[dict[str, Any]]:
    with trio.fail_after(5):
        async with open_client(parse_address(f"unix:{state.array_sock}")) as admin:
            return await admin.pair_display()


def status(directory: Path) -> dict[str, Any]:
    """The lab as seen right now: array pairs, each node's role, flags, buffer, view, PIDs."""
    state = LabState.load(directory.absolute())
    topo = state.topology()
    array = state.latest("array")
    view: dict[str, Any] = {
        "name": state.name,
        "dir": str(state.directory),
        "status": state.status,
        "error": state.error,
        "subnet": state.subnet,
        "bridge_ns": topo.bridge_ns,
        "partition": state.partition,
        "array": {
            "ns": topo.ns(netns.ARRAY),
            "ip": str(topo.ip(netns.ARRAY)),
            "tcp": state.array_tcp,
            "unix": f"unix:{state.array_sock}",
            "pid": array.pid if array else None,
            "alive": bool(array and labproc.is_alive(array)),
            "log": str(state.array_log),
        },
        "nodes": {},
    }
    try:
        view["array"]["pairs"] = trio.run(_pairs, state)
    except (OSError, trio.TooSlowError) as exc:
        view["array"]["pairs"] = []
        view["array"]["pairs_error"] = str(exc) or type(exc).__name__
    running = [n for n in topo.nodes if (a := state.latest("agent", n)) and labproc.is_alive(a)]
    answers = agent_statuses(state, running)
    for node in topo.nodes:
        agent = state.latest("agent", node)
        attach = live_attach(state, node)
        answer = answers.get(node, {"role": "down"})
        try:
            buffer = HostBuffer.load(state.buffer(node), node)
            devices = [{"device": e.device, "ldev": format_ldev(e.ldev), "pvid": e.pvid.hex()}
                       for e in buffer.entries]  # fmt: skip
        except (OSError, ValueError) as exc:
            devices = [{"error": str(exc)}]
        view["nodes"][node] = {
            "ns": topo.ns(node),
            "ip": str(topo.ip(node)),
            "agent_pid": agent.pid if agent else None,
            "agent_alive": bool(agent and labproc.is_alive(agent)),
            "attach_pid": attach.pid if attach else None,
            "view": str(state.view(node)),
            "mounted": labproc.is_mounted(state.view(node)),
            "config": str(state.node_config(node)),
            "buffer": devices,
            "role": answer.get("role", "down"),
            "epoch": answer.get("epoch"),
            "flag": answer.get("flag"),
            "array_connected": answer.get("array_connected"),
            "peers": {p: v.get("alive") for p, v in answer.get("peers", {}).items()},
            "error": answer.get("error"),
        }
    return view


# -- down --------------------------------------------------------------------------------------


def down(directory: Path, out: Out = print) -> bool:
    """Stop and remove everything of the lab in *directory*; False if there was no lab.

    Idempotent; works on a lab half built by a failed `up`. Raises
    :class:`LabError` listing whatever could not be removed.
    """
    directory = directory.absolute()
    if not (directory / STATE_NAME).exists():
        out(f"no lab in {directory}: nothing to do")
        return False
    with locked(directory):
        state = LabState.load(directory)
        if state.status == "down" and not leftovers(state):
            out(f"lab {state.name!r} in {directory} is already down")
            return True
        _down(state, out)
    return True


def _down(state: LabState, out: Out) -> None:
    steps = Steps(out)
    topo = state.topology()
    inodes = [i for ns in state.namespaces if (i := netns.inode(ns)) is not None]
    with steps.step("storage") as d:
        # First, while the host views are still mounted (see labproc.release_loops).
        d += labproc.release_storage(str(state.directory)) or ["nothing mounted"]
    with steps.step("agents") as d:
        agents = [p.pid for p in state.live() if p.role == "agent"]
        d.append(f"SIGTERM {', '.join(map(str, agents))}" if agents else "none running")
        labproc.stop(agents, grace=10.0)
    with steps.step("processes") as d:
        pids = {p.pid for p in state.live()}
        for node in topo.nodes:
            attach = live_attach(state, node)
            if attach is not None:
                pids.add(attach.pid)
        pids |= set(labproc.descendants(pids)) | set(labproc.in_netns(inodes))
        stopped = labproc.stop(sorted(pids), grace=5.0)
        d.append(f"stopped {', '.join(map(str, stopped))}" if stopped else "none running")
        # Anything an agent mounted again before it stopped (a takeover in between).
        d += labproc.release_storage(str(state.directory))
    with steps.step("namespaces") as d:
        stray = labproc.in_netns(inodes)
        labproc.kill(stray)
        for ns in state.namespaces:
            if netns.delete(ns):
                d.append(ns)
        if not d:
            d.append("none left")
    with steps.step("registry") as d:
        if state.registry:
            path = Path(state.registry)
            with contextlib.suppress(OSError, ValueError):
                if json.loads(path.read_text()).get("dir") == str(state.directory):
                    path.unlink()
                    d.append(f"removed {path}")
    problems = leftovers(state)
    if problems:
        state.error = "; ".join(problems)
        state.save()
        raise LabError("lab down left things behind: " + "; ".join(problems))
    state.status = "down"
    state.save()
    out(f"[{steps.elapsed:6.2f}s] lab {state.name!r} is down (files kept in {state.directory})")
    for dev, backing in labproc.orphan_loops().items():
        out(f"note: {dev} is backed by {backing} on a host view that was unmounted under it; "
            f"if it was this lab's, `losetup -d {dev}`")  # fmt: skip


def leftovers(state: LabState) -> list[str]:
    """What of the lab still exists: namespaces, mounts, loop devices, processes, registry."""
    problems = []
    root = str(state.directory.resolve())
    names = set(state.namespaces) | set(state.topology().namespaces)
    if left := sorted(netns.existing() & names):
        problems.append(f"namespaces {', '.join(left)}")
    if mounts := labproc.mounts_under(root):
        problems.append(f"mounts {', '.join(mounts)}")
    if loops := labproc.loops_under(root):
        problems.append(f"loop devices {', '.join(sorted(loops))}")
    if procs := state.live():
        problems.append(f"processes {', '.join(str(p.pid) for p in procs)}")
    if state.registry and Path(state.registry).exists():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(Path(state.registry).read_text()).get("dir") == str(state.directory):
                problems.append(f"registry entry {state.registry}")
    return problems
