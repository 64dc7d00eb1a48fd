"""The lab network's pure parts: names, addresses, partition plans, and the BPF drop program.

The drop program is run here by a small classic-BPF interpreter over real
packet bytes, so what the kernel will execute is checked without a kernel.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from blockemu.netns import (
    Topology,
    drop_program,
    nsenter_argv,
    parse_subnet,
    partition_plan,
    validate_lab_name,
)

NET = ipaddress.IPv4Network("10.213.0.0/24")


def topo(nodes: tuple[str, ...] = ("node1", "node2", "node3")) -> Topology:
    return Topology("t1", NET, nodes)


def test_names_addresses_and_ports() -> None:
    t = topo()
    assert t.namespaces == ["be-t1-br", "be-t1-array", "be-t1-node1", "be-t1-node2", "be-t1-node3"]
    assert str(t.ip("array")) == "10.213.0.1"
    assert [str(t.ip(n)) for n in t.nodes] == ["10.213.0.11", "10.213.0.12", "10.213.0.13"]
    assert t.port("node2") == "v-node2" and len(t.port("node2")) <= 15  # IFNAMSIZ
    with pytest.raises(KeyError, match="node9"):
        t.ip("node9")
    assert nsenter_argv("be-t1-node1", ["ip", "addr"]) == [
        "nsenter", "--net=/run/netns/be-t1-node1", "--", "ip", "addr"
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["", "Lab", "-x", "a" * 17, "a b", "a/b"])
def test_bad_lab_names(name: str) -> None:
    with pytest.raises(ValueError, match="bad lab name"):
        validate_lab_name(name)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("8.8.8.0/24", "not a private range"),
        ("10.213.0.0/28", "too small"),
        ("10.213.0.1/24", "host bits"),
        ("fd00::/64", "IPv4 only"),
        ("nonsense", "bad lab subnet"),
    ],
)
def test_bad_subnets(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_subnet(text)


def test_a_subnet_too_small_for_the_nodes() -> None:
    with pytest.raises(ValueError, match="no room"):
        Topology("t1", ipaddress.IPv4Network("10.0.0.0/27"), tuple(f"n{i}" for i in range(30)))
    with pytest.raises(ValueError, match="bad node id"):
        Topology("t1", NET, ("array",))


def test_partition_plan_cuts_both_ways_and_keeps_the_array() -> None:
    t = topo()
    ip = t.ip
    plan = partition_plan(t, ["node1"])
    assert plan == {"array": [], "node1": [ip("node2"), ip("node3")],
                    "node2": [ip("node1")], "node3": [ip("node1")]}  # fmt: skip
    both = partition_plan(t, ["node1", "node2"])
    assert both["node1"] == [ip("node3")] and both["node2"] == [ip("node3")]
    assert both["node3"] == [ip("node1"), ip("node2")]  # the cut side still sees itself
    full = partition_plan(t, ["node3"], from_array=True)
    assert full["node3"] == [ip("node1"), ip("node2"), ip("array")]
    assert full["array"] == [ip("node3")]
    with pytest.raises(KeyError, match="node7"):
        partition_plan(t, ["node7"])
    with pytest.raises(ValueError, match="at least one"):
        partition_plan(t, [])
    with pytest.raises(ValueError, match="cuts nothing"):
        partition_plan(t, t.nodes)
    assert partition_plan(t, t.nodes, from_array=True)["array"] == [ip(n) for n in t.nodes]


# -- a classic-BPF interpreter for the instructions drop_program uses --------------------------


def run_cbpf(program: str, frame: bytes, protocol: int) -> int:
    """Run tc ``bytecode`` text over an Ethernet *frame* (skb->protocol = *protocol*)."""
    count, _, rest = program.partition(",")
    code = [tuple(int(x) for x in ins.split()) for ins in rest.split(",")]
    assert len(code) == int(count)
    net = 14  # the network header follows the Ethernet header
    acc, pc = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        if op == 0x28 and k == 0xFFFFF000:  # ldh skb->protocol
            acc = protocol
        elif op == 0x20 and k >= 0xFFF00000:  # ld word at network header + offset
            acc = struct.unpack_from("!I", frame, net + k - 0xFFF00000)[0]
        elif op == 0x15:  # jeq #k
            pc += jt if acc == k else jf
        elif op == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"instruction {op:#x} not expected in a drop program")
        pc += 1


def ipv4_frame(dst: str) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
                         ipaddress.IPv4Address("10.213.0.11").packed,
                         ipaddress.IPv4Address(dst).packed)  # fmt: skip
    return b"\xff" * 12 + b"\x08\x00" + header + bytes(20)


def test_drop_program_drops_exactly_the_listed_destinations() -> None:
    listed = [ipaddress.IPv4Address("10.213.0.12"), ipaddress.IPv4Address("10.213.0.1")]
    program = drop_program(listed)
    for dst in ("10.213.0.12", "10.213.0.1"):
        assert run_cbpf(program, ipv4_frame(dst), 0x0800) == 2  # TC_ACT_SHOT
    for dst in ("10.213.0.13", "10.213.0.11", "192.168.1.12"):
        assert run_cbpf(program, ipv4_frame(dst), 0x0800) == 0  # TC_ACT_OK
    arp = b"\xff" * 12 + b"\x08\x06" + bytes(28)
    assert run_cbpf(program, arp, 0x0806) == 0  # ARP passes: only IP is cut
    with pytest.raises(ValueError):
        drop_program([])
