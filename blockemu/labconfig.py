"""Write the files of a lab cluster: keys, the array's hosts config, HORCM files, node configs.

Tests, benchmarks and labs all need the same topology on disk -- one array,
N nodes with priorities, one or more replica pairs -- so it is generated in
one place. The result is plain files a person can read and edit; nothing
here starts a process.

Layout under DIR::

    keys/cluster.key, keys/<node>.key   secrets (hex text)
    hosts.toml                          the array's host groups (--hosts)
    <node>/node.toml                    nodeagent config (listen, peers, array, hooks)
    <node>/horcm0.conf, horcm1.conf     the replica definition (P-VOL side, S-VOL side)
    <node>/hooks/                       start/stop hooks that log to <node>/hooks.log
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from formats.errors import FormatError
from formats.hosts_config import read_key_file
from formats.units import format_ldev

HOOK_SCRIPT = """#!/bin/sh
# Lab hook: records each call; replace with your application's start/stop.
echo "$1 epoch=$BLOCKEMU_EPOCH" >> "{log}"
exit 0
"""


@dataclass(frozen=True)
class LabNode:
    id: str
    priority: int
    listen: str  # tcp:HOST:PORT


@dataclass(frozen=True)
class LabPair:
    group: str
    name: str
    pvol: int
    svol: int


@dataclass
class LabLayout:
    directory: Path
    array_address: str  # what the nodes connect to
    nodes: list[LabNode]
    pairs: list[LabPair]
    heartbeat_interval: float = 0.2
    heartbeat_misses: int = 3
    reflection: str = "eager"
    horcm_services: tuple[int, int] = (11000, 11001)
    serial: int = 412345
    keys: dict[str, bytes] = field(default_factory=dict)

    def node_dir(self, node: str) -> Path:
        return self.directory / node

    def node_config(self, node: str) -> Path:
        return self.node_dir(node) / "node.toml"

    @property
    def hosts_config(self) -> Path:
        return self.directory / "hosts.toml"

    @property
    def ldevs(self) -> list[int]:
        return sorted({x for p in self.pairs for x in (p.pvol, p.svol)})


def _key() -> bytes:
    return os.urandom(32).hex().encode()


def _horcm(layout: LabLayout, side: int) -> str:
    service, partner = layout.horcm_services[side], layout.horcm_services[1 - side]
    lines = [
        "HORCM_MON",
        "#ip_address service poll(10ms) timeout(10ms)",
        f"localhost {service} 1000 3000",
        "",
        "HORCM_CMD",
        "#dev_name",
        f"\\\\.\\CMD-{layout.serial}:/dev/sd",
        "",
        "HORCM_LDEV",
        "#dev_group dev_name Serial# CU:LDEV(LDEV#) MU#",
    ]
    for p in layout.pairs:
        ldev = p.pvol if side == 0 else p.svol
        lines.append(f"{p.group} {p.name} {layout.serial} {format_ldev(ldev)} 0")
    lines += ["", "HORCM_INST", "#dev_group ip_address service"]
    for group in sorted({p.group for p in layout.pairs}):
        lines.append(f"{group} localhost {partner}")
    return "\n".join(lines) + "\n"


def _ldev_ranges(ldevs: list[int]) -> str:
    return ", ".join(f'"{format_ldev(x)}"' for x in ldevs)


def write_layout(layout: LabLayout) -> LabLayout:
    """Write every file of *layout* (new keys each time) and return it with its keys."""
    return write_layout_keys(layout, {name: _key() for name in lab_key_names(layout)})


def write_layout_keys(layout: LabLayout, keys: Mapping[str, bytes]) -> LabLayout:
    """Write every file of *layout* with the given *keys* (one per :func:`lab_key_names`),
    e.g. keys made once for several machines that each render the same lab."""
    missing = [name for name in lab_key_names(layout) if name not in keys]
    if missing:
        raise ValueError(f"no key for {', '.join(missing)}")
    d = layout.directory
    (d / "keys").mkdir(parents=True, exist_ok=True)
    layout.keys = {name: keys[name] for name in lab_key_names(layout)}
    for name, key in layout.keys.items():
        path = d / "keys" / f"{name}.key"
        path.write_bytes(key)
        path.chmod(0o600)
    layout.hosts_config.write_text(
        "".join(
            f'[hosts.{n.id}]\nkey_file = "keys/{n.id}.key"\n'
            f"ldevs = [{_ldev_ranges(layout.ldevs)}]\nreplication = true\n\n"
            for n in layout.nodes
        )
    )
    write_node_configs(layout)
    return layout


def write_node_configs(layout: LabLayout) -> None:
    """(Re)write each node's directory: config, HORCM files, hooks (e.g. once the array's
    address is known)."""
    for node in layout.nodes:
        work = layout.node_dir(node.id)
        (work / "hooks").mkdir(parents=True, exist_ok=True)
        for hook in ("start", "stop"):
            path = work / "hooks" / hook
            path.write_text(HOOK_SCRIPT.format(log=work / "hooks.log"))
            path.chmod(0o755)
        (work / "horcm0.conf").write_text(_horcm(layout, 0))
        (work / "horcm1.conf").write_text(_horcm(layout, 1))
        peers = "".join(
            f'\n[[peers]]\nid = "{p.id}"\naddress = "{p.listen}"\n'
            for p in layout.nodes
            if p.id != node.id
        )
        config = textwrap.dedent(f"""\
            id = "{node.id}"
            priority = {node.priority}
            listen = "{node.listen}"
            cluster_key_file = "../keys/cluster.key"
            host_view = "view"
            buffer_file = "buffer"
            state_file = "state"
            event_log = "events.jsonl"
            reflection = "{layout.reflection}"

            [heartbeat]
            interval = {layout.heartbeat_interval}
            misses = {layout.heartbeat_misses}

            [array]
            address = "{layout.array_address}"
            host_id = "{node.id}"
            key_file = "../keys/{node.id}.key"

            [[replicas]]
            local = "horcm0.conf"
            remote = "horcm1.conf"

            [hooks]
            directory = "hooks"
            """)
        layout.node_config(node.id).write_text(config + peers)


# -- the standard lab topology (namespace lab, Vagrant lab) ------------------------------------

#: The replica group of a standard lab: its pairs split and resync together.
LAB_GROUP = "labvg"
#: P-VOLs are 00:10, 00:11, ...; their S-VOLs 00:20, 00:21, ...
LAB_PVOL_BASE, LAB_SVOL_BASE = 0x10, 0x20
MAX_LAB_PAIRS = 16


def lab_node_ids(count: int) -> list[str]:
    """node1..nodeN: every lab names its nodes the same way, so commands read the same."""
    if not 1 <= count <= 64:
        raise ValueError(f"a lab has 1 to 64 nodes, not {count}")
    return [f"node{i}" for i in range(1, count + 1)]


def lab_pairs(count: int) -> list[LabPair]:
    """*count* pairs in one replica group (a consistency group: one split instant)."""
    if not 1 <= count <= MAX_LAB_PAIRS:
        raise ValueError(f"a lab has 1 to {MAX_LAB_PAIRS} pairs, not {count}")
    return [
        LabPair(LAB_GROUP, f"labdev{i + 1}", LAB_PVOL_BASE + i, LAB_SVOL_BASE + i)
        for i in range(count)
    ]


def standard_layout(
    directory: Path,
    *,
    array_address: str,
    node_listen: dict[str, str],
    pairs: int = 1,
    reflection: str = "eager",
    heartbeat_interval: float = 0.5,
    heartbeat_misses: int = 3,
) -> LabLayout:
    """The layout of a lab whose nodes are *node_listen*'s keys, in priority order.

    The first node has the highest priority (it becomes the active when all
    start together; no failback after). Labs on one machine (namespaces) and on
    several (Vagrant) call this with their own addresses and get the same files.
    """
    ids = list(node_listen)
    nodes = [LabNode(n, 10 * (len(ids) - i), node_listen[n]) for i, n in enumerate(ids)]
    return LabLayout(
        directory,
        array_address=array_address,
        nodes=nodes,
        pairs=lab_pairs(pairs),
        heartbeat_interval=heartbeat_interval,
        heartbeat_misses=heartbeat_misses,
        reflection=reflection,
    )


# -- labs rendered on several machines (Vagrant): shared keys, one member's files ------------

#: The member name of the array in a lab (the nodes are node1..nodeN).
ARRAY_MEMBER = "array"
NODE_FILES = ("node.toml", "horcm0.conf", "horcm1.conf", "hooks/start", "hooks/stop")


def lab_key_names(layout: LabLayout) -> list[str]:
    """The keys of a lab: the cluster's (peer messages) and one per node (the array's host
    groups). Key files are ``keys/NAME.key``."""
    return ["cluster", *(n.id for n in layout.nodes)]


def read_keys(directory: Path, names: Iterable[str]) -> dict[str, bytes]:
    """The keys ``DIRECTORY/NAME.key`` made elsewhere (e.g. once, on the Vagrant host, for
    every VM), byte for byte. Raises ValueError naming every missing or unusable file."""
    keys, problems = {}, []
    for name in names:
        path = directory / f"{name}.key"
        try:
            read_key_file(path)  # the array's and nodeagent's rules: readable, long enough
            keys[name] = path.read_bytes()
        except (FormatError, OSError) as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError(
            f"{len(problems)} key file(s) missing or unusable in {directory} (every machine of "
            "a lab must use the same keys; make them once, where all machines read them):\n  "
            + "\n  ".join(problems)
        )
    return keys


def member_files(layout: LabLayout, member: str) -> list[Path]:
    """The files of *layout* (relative to its directory) that one machine of the lab needs:
    the array its host groups and the nodes' keys; a node its own directory, its array key
    and the cluster key."""
    ids = [n.id for n in layout.nodes]
    if member == ARRAY_MEMBER:
        return [Path("hosts.toml"), *(Path("keys") / f"{n}.key" for n in ids)]
    if member not in ids:
        raise ValueError(f"no member {member!r} in this lab: {ARRAY_MEMBER}, {', '.join(ids)}")
    return [Path("keys/cluster.key"), Path("keys") / f"{member}.key",
            *(Path(member) / f for f in NODE_FILES)]  # fmt: skip


def all_files(layout: LabLayout) -> list[Path]:
    """Every file :func:`write_layout` writes (relative to the layout's directory)."""
    found = [*member_files(layout, ARRAY_MEMBER), Path("keys/cluster.key")]
    for node in layout.nodes:
        found += [Path(node.id) / f for f in NODE_FILES]
    return found


def prune_to_member(layout: LabLayout, member: str) -> list[Path]:
    """Remove the rendered files *member* does not need (only files the generator writes,
    and then directories left empty); returns what was removed."""
    keep = set(member_files(layout, member))
    removed = []
    for rel in all_files(layout):
        path = layout.directory / rel
        if rel not in keep and path.is_file():
            path.unlink()
            removed.append(rel)
    for node in layout.nodes:
        for empty in (layout.node_dir(node.id) / "hooks", layout.node_dir(node.id)):
            if node.id != member and empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()
    return removed
