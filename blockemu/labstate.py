"""The lab's state file and what every lab command shares: options, paths, the lock, steps.

``DIR/lab.json`` is written atomically and *before* each step of ``lab up``
is taken (an intent log): the namespaces about to be created, the processes
just started (PID and start time, so a recycled PID is never signalled).
Whatever happens to ``up``, ``down`` reads it and undoes exactly what may
exist. Every lab command holds ``DIR/.lab.lock`` while it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import labproc, netns
from .fileio import atomic_write
from .labproc import Proc

DIR_ENV = "BLOCKEMU_LAB_DIR"
DEFAULT_DIR = Path("/var/tmp/blockemu-lab")
STATE_NAME = "lab.json"
LOCK_NAME = ".lab.lock"
ARRAY_PORT = 7400
PEER_PORT = 7500
#: The array's consistency group for the lab's pairs (one split instant).
ARRAY_GROUP = 1
MiB = 1 << 20

Out = Callable[[str], None]


class LabError(RuntimeError):
    """What went wrong, and what to do about it."""


def default_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)


@dataclass
class LabOptions:
    directory: Path = field(default_factory=default_dir)
    name: str = "lab"
    nodes: int = 2
    subnet: str = netns.DEFAULT_SUBNET
    reflection: str = "eager"
    pairs: int = 1
    size: int = 256 * MiB
    mode: str = "sync"
    heartbeat_interval: float = 0.5
    heartbeat_misses: int = 3
    timeout: float = 60.0
    #: Split the pairs before the hosts scan (a first backup exists at install time).
    initial_split: bool = False


# -- state -------------------------------------------------------------------------------------


@dataclass
class LabState:
    """Everything a later command needs, and everything ``down`` must undo."""

    name: str
    directory: Path
    subnet: str
    nodes: list[str]
    status: str = "starting"  # starting, up, failed, down
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    registry: str | None = None
    partition: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    created: float = field(default_factory=time.time)

    # paths
    @property
    def path(self) -> Path:
        return self.directory / STATE_NAME

    @property
    def array_root(self) -> Path:
        return self.directory / "array"

    @property
    def array_sock(self) -> Path:
        return self.directory / "array.sock"

    @property
    def array_log(self) -> Path:
        return self.directory / "array.log"

    def node_dir(self, node: str) -> Path:
        return self.directory / node

    def node_config(self, node: str) -> Path:
        return self.node_dir(node) / "node.toml"

    def view(self, node: str) -> Path:
        return self.node_dir(node) / "view"

    def buffer(self, node: str) -> Path:
        return self.node_dir(node) / "buffer"

    def key_file(self, node: str) -> Path:
        return self.directory / "keys" / f"{node}.key"

    # addresses
    def topology(self) -> netns.Topology:
        return netns.Topology(self.name, netns.parse_subnet(self.subnet), tuple(self.nodes))

    @property
    def array_tcp(self) -> str:
        return f"tcp:{self.topology().ip(netns.ARRAY)}:{ARRAY_PORT}"

    # processes
    def latest(self, role: str, node: str | None = None) -> Proc | None:
        return next((p for p in reversed(self.procs) if p.role == role and p.node == node), None)

    def live(self) -> list[Proc]:
        return [p for p in self.procs if labproc.is_alive(p)]

    def where(self) -> dict[str, dict[str, str]]:
        """Namespace, address, directory and mount of every member of the lab."""
        topo = self.topology()
        found = {
            netns.ARRAY: {"ns": topo.ns(netns.ARRAY), "ip": str(topo.ip(netns.ARRAY)),
                          "tcp": self.array_tcp, "unix": f"unix:{self.array_sock}",
                          "root": str(self.array_root)},
            "bridge": {"ns": topo.bridge_ns},
        }  # fmt: skip
        for node in self.nodes:
            found[node] = {"ns": topo.ns(node), "ip": str(topo.ip(node)),
                           "dir": str(self.node_dir(node)), "view": str(self.view(node)),
                           "config": str(self.node_config(node))}  # fmt: skip
        return found

    def save(self) -> None:
        data = {
            "version": 1,
            "name": self.name,
            "directory": str(self.directory),
            "subnet": self.subnet,
            "nodes": self.nodes,
            "status": self.status,
            "namespaces": self.namespaces,
            "procs": [p.to_json() for p in self.procs],
            "registry": self.registry,
            "partition": self.partition,
            "options": self.options,
            "error": self.error,
            "created": self.created,
            # For people and scripts reading the file; derived, never loaded.
            "where": self.where(),
        }
        atomic_write(self.path, json.dumps(data, indent=2).encode() + b"\n", mode=0o644)

    @classmethod
    def load(cls, directory: Path) -> LabState:
        path = directory / STATE_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(
                f"no lab in {directory} (no {STATE_NAME}): start one with `blockemu lab up "
                f"--dir {directory}`, or pass the --dir of a running one"
            ) from None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read the lab state {path}: {exc}") from None
        return cls(
            name=data["name"],
            directory=Path(data["directory"]),
            subnet=data["subnet"],
            nodes=list(data["nodes"]),
            status=data["status"],
            namespaces=list(data["namespaces"]),
            procs=[Proc.from_json(p) for p in data["procs"]],
            registry=data.get("registry"),
            partition=data.get("partition"),
            options=dict(data.get("options") or {}),
            error=data.get("error"),
            created=float(data.get("created", 0)),
        )


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One lab command at a time per directory (two `up`s would build one lab twice)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"lab: waiting for another lab command on {directory}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Steps:
    """One line per finished step: time since start, what, details, how long it took."""

    def __init__(self, out: Out) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.current = ""

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[list[str]]:
        started = time.monotonic()
        self.current = what
        details: list[str] = []
        yield details
        took = time.monotonic() - started
        self.out(f"[{self.elapsed:6.2f}s] {what}: {'; '.join(details) or 'done'} ({took:.2f}s)")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0
