"""A lab's network: namespaces, one bridge, veth pairs, addresses, partitions.

Topology of a lab called ``NAME`` with nodes ``node1..nodeN``::

    be-NAME-array  eth0 10.213.0.1 ─┐
    be-NAME-node1  eth0 10.213.0.11 ┼─ v-array, v-node1, ... ─ br0   (in be-NAME-br)
    be-NAME-node2  eth0 10.213.0.12 ┘

Every interface is created inside a lab namespace (``ip -n NS link add ...
peer name eth0 netns OTHER``), so the root namespace never sees a lab
interface, route or address, and two labs with different names can run side
by side. No namespace has a default route: nothing in a lab can reach out.
The bridge lives in a namespace of its own, which has no address at all: it
is the lab's "switch".

Partitions are done in the switch: each bridge port has a ``clsact`` qdisc,
and a partition attaches a classic-BPF filter (direct action) to the ingress
of a port that silently drops IPv4 packets to the cut addresses, like a
switch losing a link. Nothing is dropped on the hosts, so a partitioned node
sees timeouts, not errors. (tc's bpf classifier is used because it needs only
iproute2 and a kernel with ``CONFIG_NET_CLS_BPF``; nftables' userspace and
tc's other actions are often missing on small lab machines.)

Processes enter a namespace with ``nsenter --net=/run/netns/NAME`` and nothing
else: unlike ``ip netns exec`` it does not give them a private mount
namespace, so the FUSE mounts they make are visible to the host and to
``losetup``.

The pure helpers (names, addresses, the BPF program, partition plans) are
kept apart from the functions that run ``ip``/``tc``, so they are tested
without privileges.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
DEFAULT_SUBNET = "10.213.0.0/24"
#: Namespace names are ``be-<lab>-<member>``.
PREFIX = "be"
BRIDGE = "br0"
#: The interface name inside the array's and the nodes' namespaces.
IFACE = "eth0"
ARRAY = "array"
#: Host numbers in the subnet: the array is .1, node i (1-based) is .10+i.
ARRAY_HOST, NODE_HOST_BASE = 1, 10

_LAB_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")
_MEMBER = re.compile(r"^[a-z][a-z0-9]{0,12}$")

# Classic BPF (linux/filter.h) for the partition filter.
_SKF_AD_PROTOCOL = 0xFFFFF000  # SKF_AD_OFF + SKF_AD_PROTOCOL: skb->protocol
_SKF_NET_OFF = 0xFFF00000  # loads relative to the network header
_ETH_P_IP = 0x0800
_TC_ACT_OK, _TC_ACT_SHOT = 0, 2


class NetnsError(RuntimeError):
    """A namespace or link command failed; the message has the command and its stderr."""


# -- pure: names, addresses, programs -----------------------------------------------------------


def validate_lab_name(name: str) -> str:
    if not _LAB_NAME.match(name):
        raise ValueError(
            f"bad lab name {name!r}: use 1-16 of a-z, 0-9 and '-', starting with a letter or "
            "digit (it becomes part of the namespace names)"
        )
    return name


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """An IPv4 subnet with room for the array and the nodes; private ranges only."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"bad lab subnet {text!r}: {exc} (e.g. {DEFAULT_SUBNET})") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError(f"bad lab subnet {text!r}: the lab is IPv4 only")
    if not net.is_private or net.overlaps(ipaddress.ip_network("127.0.0.0/8")):
        raise ValueError(
            f"lab subnet {net} is not a private range: use one of 10/8, 172.16/12, 192.168/16 "
            "that this machine does not use"
        )
    if net.prefixlen > 27:
        raise ValueError(f"lab subnet {net} is too small: use a /27 or larger (e.g. /24)")
    return net


@dataclass(frozen=True)
class Topology:
    """Names and addresses of one lab's network: all derived from (name, subnet, nodes)."""

    lab: str
    subnet: ipaddress.IPv4Network
    nodes: tuple[str, ...]

    def __post_init__(self) -> None:
        validate_lab_name(self.lab)
        for node in self.nodes:
            if not _MEMBER.match(node) or node in (ARRAY, "br"):
                raise ValueError(f"bad node id {node!r} for a lab: use a-z0-9, e.g. node1")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"duplicate node ids in {self.nodes}")
        last = NODE_HOST_BASE + len(self.nodes)
        if last >= self.subnet.num_addresses - 1:
            raise ValueError(f"lab subnet {self.subnet} has no room for {len(self.nodes)} nodes")

    @property
    def members(self) -> tuple[str, ...]:
        """Everything plugged into the bridge: the array, then the nodes."""
        return (ARRAY, *self.nodes)

    @property
    def bridge_ns(self) -> str:
        return f"{PREFIX}-{self.lab}-br"

    def ns(self, member: str) -> str:
        """The namespace of the array or of a node."""
        self._check(member)
        return f"{PREFIX}-{self.lab}-{member}"

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the lab, bridge first (the order they are created in)."""
        return [self.bridge_ns, *(self.ns(m) for m in self.members)]

    def ip(self, member: str) -> ipaddress.IPv4Address:
        self._check(member)
        host = ARRAY_HOST if member == ARRAY else NODE_HOST_BASE + 1 + self.nodes.index(member)
        return self.subnet.network_address + host

    def port(self, member: str) -> str:
        """The bridge port (in the bridge namespace) of the array or a node."""
        self._check(member)
        return f"v-{member}"

    def _check(self, member: str) -> None:
        if member not in self.members:
            raise KeyError(f"no {member!r} in lab {self.lab!r}: it has {', '.join(self.members)}")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def nsenter_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """Run *argv* in network namespace *ns* only (mounts stay shared with the host)."""
    return ["nsenter", f"--net={netns_path(ns)}", "--", *argv]


def drop_program(ips: Iterable[ipaddress.IPv4Address]) -> str:
    """tc's ``bpf bytecode`` text: drop IPv4 packets whose destination is one of *ips*.

    Classic BPF, run as a direct action: anything else (ARP, other addresses)
    passes. Loads are relative to the network header, so the same program
    works wherever the kernel has the link-layer header.
    """
    targets = sorted(set(ips))
    n = len(targets)
    if not 1 <= n <= 200:
        raise ValueError(f"a drop program needs 1 to 200 addresses, not {n}")
    code = [
        (0x28, 0, 0, _SKF_AD_PROTOCOL),  # ldh skb->protocol
        (0x15, 0, n + 1, _ETH_P_IP),  # not IPv4: pass
        (0x20, 0, 0, _SKF_NET_OFF + 16),  # ld destination address
    ]
    code += [(0x15, n - i, 0, int(ip)) for i, ip in enumerate(targets)]  # match: drop
    code += [(0x06, 0, 0, _TC_ACT_OK), (0x06, 0, 0, _TC_ACT_SHOT)]
    return f"{len(code)}," + ",".join(f"{op} {jt} {jf} {k}" for op, jt, jf, k in code)


def partition_plan(
    topo: Topology, cut: Iterable[str], *, from_array: bool = False
) -> dict[str, list[ipaddress.IPv4Address]]:
    """For each bridge member, the destinations its port must drop.

    *cut* nodes lose the other nodes (both ways); they still talk among
    themselves and, unless *from_array*, to the array.
    """
    cut_set = set(cut)
    for node in cut_set:
        if node not in topo.nodes:
            raise KeyError(f"no node {node!r} in lab {topo.lab!r}: it has {', '.join(topo.nodes)}")
    if not cut_set:
        raise ValueError("name at least one node to cut off")
    rest = [n for n in topo.nodes if n not in cut_set]
    if not rest and not from_array:
        raise ValueError("cutting every node off from the other nodes cuts nothing: name "
                         "fewer nodes, or add --from-array")  # fmt: skip
    plan: dict[str, list[ipaddress.IPv4Address]] = {m: [] for m in topo.members}
    for node in topo.nodes:
        if node in cut_set:
            plan[node] += [topo.ip(r) for r in rest]
            if from_array:
                plan[node].append(topo.ip(ARRAY))
        else:
            plan[node] += [topo.ip(c) for c in sorted(cut_set)]
    if from_array:
        plan[ARRAY] += [topo.ip(c) for c in sorted(cut_set)]
    return plan


# -- commands (root) -------------------------------------------------------------------------


def _run(cmd: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def existing() -> set[str]:
    """Names of the namespaces in /run/netns."""
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def create(topo: Topology, *, before: Callable[[str], None] = lambda ns: None) -> None:
    """Create the lab's namespaces, bridge, veths and addresses.

    *before(ns)* is called before each namespace is created, so the caller can
    record it first: whatever happens next, clean-up knows what may exist.
    """
    taken = existing() & set(topo.namespaces)
    if taken:
        raise NetnsError(
            f"network namespace(s) {', '.join(sorted(taken))} already exist: another lab "
            f"named {topo.lab!r} is up (pick another --name) or was left behind "
            f"(`ip netns del NAME`)"
        )
    for ns in topo.namespaces:
        before(ns)
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
    br = topo.bridge_ns
    _run(["ip", "-n", br, "link", "add", BRIDGE, "type", "bridge"])
    _run(["ip", "-n", br, "link", "set", BRIDGE, "up"])
    prefix = topo.subnet.prefixlen
    for member in topo.members:
        port, ns = topo.port(member), topo.ns(member)
        _run(["ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", IFACE,
              "netns", ns])  # fmt: skip
        _run(["ip", "-n", br, "link", "set", port, "master", BRIDGE])
        _run(["ip", "-n", br, "link", "set", port, "up"])
        _run(["tc", "-n", br, "qdisc", "add", "dev", port, "clsact"])
        _run(["ip", "-n", ns, "addr", "add", f"{topo.ip(member)}/{prefix}", "dev", IFACE])
        _run(["ip", "-n", ns, "link", "set", IFACE, "up"])


def apply_partition(topo: Topology, plan: dict[str, list[ipaddress.IPv4Address]]) -> None:
    """Replace every port's filter by *plan* (members without drops get none)."""
    heal(topo)
    for member, ips in plan.items():
        if ips:
            _run(["tc", "-n", topo.bridge_ns, "filter", "add", "dev", topo.port(member),
                  "ingress", "pref", "10", "bpf", "bytecode", drop_program(ips), "da"])  # fmt: skip


def heal(topo: Topology) -> None:
    """Remove every partition filter: all members see each other again."""
    for member in topo.members:
        _run(["tc", "-n", topo.bridge_ns, "filter", "del", "dev", topo.port(member), "ingress"],
             check=False)  # fmt: skip


def filters(topo: Topology) -> dict[str, str]:
    """The partition filters in place, per member (empty text: none)."""
    found = {}
    for member in topo.members:
        out = _run(["tc", "-n", topo.bridge_ns, "filter", "show", "dev", topo.port(member),
                    "ingress"], check=False).stdout  # fmt: skip
        found[member] = out.strip()
    return found


def inode(ns: str) -> int | None:
    """The namespace's inode (what /proc/PID/ns/net of its processes point at)."""
    try:
        return os.stat(netns_path(ns)).st_ino
    except OSError:
        return None


def delete(ns: str) -> bool:
    """Delete namespace *ns*; False if it did not exist."""
    if ns not in existing():
        return False
    _run(["ip", "netns", "del", ns])
    return True
