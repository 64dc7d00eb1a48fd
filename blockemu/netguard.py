"""Refuse TCP connections from the root network namespace to a lab's subnet.

A namespace lab (``blockemu lab up``) puts its array and nodes on a private
subnet that exists only inside the lab's network namespaces. The machine's
root namespace does not know that subnet, but it has a default route out: a
connection from there to a lab address would not reach the lab, it would
leave the machine towards whatever the default gateway knows as that
address. Nothing in a lab ever needs that (the CLI reaches lab daemons
through unix sockets in the lab directory, or by entering a namespace), so
every TCP connect in blockemu (:func:`blockemu.address.open_stream`) and in
nodeagent's peer links asks :func:`check_tcp_target` first, and the guard
raises *before* any socket exists.

Which subnets are labs': one JSON file per running lab in :data:`REGISTRY`
(written by ``lab up`` before its namespaces exist, removed by ``lab down``),
plus the comma-separated networks in ``$BLOCKEMU_LAB_SUBNETS``. A stale
registry file (a lab directory deleted by hand) only makes the guard refuse
more: the safe side.

A connection to a lab address is allowed from one of that lab's own
namespaces (their names are in the registry entry; ``/proc/self/ns/net`` is
compared with ``/run/netns/NAME``), and from a namespace that is provably
not the root one (``/proc/self/ns/net`` differs from ``/proc/1/ns/net``);
everything else is refused. Where ``/proc/1/ns/net`` cannot be read (not
root, or a sandbox that hides PID 1 even from root) the process counts as
being in the root namespace: the safe side.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import trio

#: Where ``lab up`` registers each running lab (``NAME.json``); overridable for tests.
REGISTRY_ENV = "BLOCKEMU_LAB_REGISTRY"
REGISTRY_DEFAULT = Path("/run/blockemu-labs")
#: Extra lab subnets, comma-separated (``10.213.0.0/24,10.214.0.0/24``).
SUBNETS_ENV = "BLOCKEMU_LAB_SUBNETS"
NETNS_DIR = "/run/netns"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class LabNetworkRefused(ConnectionError):
    """A TCP connection to a lab address from outside the lab's namespaces."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(frozen=True)
class LabNet:
    """One lab subnet, the lab's namespaces, and where it came from (for the error message)."""

    network: Network
    name: str  # lab name, or the env var
    directory: str = ""
    namespaces: tuple[str, ...] = ()

    def contains_current(self) -> bool:
        """Is this process in one of the lab's namespaces?"""
        here = _netns_id("/proc/self/ns/net")
        return here is not None and any(
            _netns_id(f"{NETNS_DIR}/{ns}") == here for ns in self.namespaces
        )


def registry_dir() -> Path:
    return Path(os.environ.get(REGISTRY_ENV) or REGISTRY_DEFAULT)


def _netns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def in_root_netns() -> bool:
    """True if this process shares PID 1's network namespace, or if that cannot be read."""
    init = _netns_id("/proc/1/ns/net")
    return init is None or _netns_id("/proc/self/ns/net") == init


def lab_networks() -> list[LabNet]:
    """Every registered lab subnet, then those of $BLOCKEMU_LAB_SUBNETS."""
    found: list[LabNet] = []
    try:
        entries = sorted(registry_dir().glob("*.json"))
    except OSError:
        entries = []
    for path in entries:
        try:
            data = json.loads(path.read_text())
            net = ipaddress.ip_network(str(data["subnet"]), strict=False)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign: the lab's own checks report it
        names = tuple(str(n) for n in data.get("namespaces", []))
        found.append(LabNet(net, str(data.get("name", path.stem)), str(data.get("dir", "")), names))
    for text in os.environ.get(SUBNETS_ENV, "").split(","):
        if text.strip():
            try:
                found.append(LabNet(ipaddress.ip_network(text.strip(), strict=False), SUBNETS_ENV))
            except ValueError:
                continue
    return found


def _refusal(ip: IP, port: int, lab: LabNet) -> LabNetworkRefused:
    where = f"lab {lab.name!r}" + (f" (dir {lab.directory})" if lab.directory else "")
    how = (
        f"Use the lab's unix sockets in {lab.directory} or run the command inside the lab: "
        f"`blockemu lab exec NODE --dir {lab.directory} -- ...`"
        if lab.directory
        else "Run it inside the lab's namespaces (`blockemu lab exec NODE -- ...`)"
    )
    return LabNetworkRefused(
        f"refusing to connect to {ip}:{port} from the root network namespace: {ip} is in "
        f"{lab.network}, the subnet of {where}, which exists only inside the lab's "
        f"namespaces; from here the packets would leave this machine by the default route. {how}"
    )


def check_ip(ip: IP | str, port: int, *, root_netns: bool | None = None) -> None:
    """Raise :class:`LabNetworkRefused` if connecting to *ip* from here would leave the machine.

    *root_netns* is for tests: whether this process counts as being in the root
    namespace (by default: :func:`in_root_netns`, asked only for lab addresses).
    """
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for lab in lab_networks():
        if addr.version != lab.network.version or addr not in lab.network:
            continue
        if lab.contains_current():
            return
        if root_netns is None:
            root_netns = in_root_netns()
        if root_netns:
            raise _refusal(addr, port, lab)


def _literal(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def check_tcp_target(host: str, port: int, *, root_netns: bool | None = None) -> None:
    """The guard for a TCP connect to *host*:*port*; call it before creating the socket.

    An IP literal is checked as it is; a name is resolved (``getaddrinfo``,
    blocking: async callers that may pass names use :func:`acheck_tcp_target`)
    and refused if any of its addresses is in a lab subnet.
    """
    literal = _literal(host)
    if literal is not None:
        check_ip(literal, port, root_netns=root_netns)
        return
    if not lab_networks():
        return  # no lab: no name lookup just for the guard
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return  # the connect reports an unknown name itself
    for info in infos:
        check_ip(str(info[4][0]), port, root_netns=root_netns)


async def acheck_tcp_target(host: str, port: int, *, root_netns: bool | None = None) -> None:
    """:func:`check_tcp_target` for trio code: names are resolved without blocking the loop."""
    literal = _literal(host)
    if literal is not None:
        check_ip(literal, port, root_netns=root_netns)
        return
    if not lab_networks():
        return
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return
    for info in infos:
        check_ip(str(info[4][0]), port, root_netns=root_netns)
