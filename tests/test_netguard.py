"""The network guard refuses, before any socket exists, a connection to a lab address from outside.

Every test here makes creating or connecting a socket fail loudly, so a
guard that let a connection through would fail the test instead of sending
a packet anywhere. (tests/test_lab.py checks the same with a real lab, and
that the lab's own namespaces are let through.)
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from blockemu import netguard
from blockemu.address import open_stream, parse_address
from blockemu.client import open_client


class PacketWouldLeave(AssertionError):
    pass


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any TCP socket creation or connect fails the test."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise PacketWouldLeave(f"a TCP connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", boom)
    monkeypatch.setattr(socket.socket, "connect_ex", boom)
    monkeypatch.setattr(trio, "open_tcp_stream", boom)
    monkeypatch.setattr(trio.socket, "socket", boom)
    yield


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry with one lab 'g1' on 10.213.7.0/24, and no other lab."""
    reg = tmp_path / "labs"
    reg.mkdir()
    entry = {"name": "g1", "dir": "/var/tmp/g1", "subnet": "10.213.7.0/24",
             "namespaces": ["be-g1-br", "be-g1-node1"]}  # fmt: skip
    (reg / "g1.json").write_text(json.dumps(entry))
    (reg / "torn.json").write_text('{"name": "x", "sub')  # half-written: ignored
    monkeypatch.setenv(netguard.REGISTRY_ENV, str(reg))
    monkeypatch.delenv(netguard.SUBNETS_ENV, raising=False)
    return reg


def test_a_registered_lab_address_is_refused_from_the_root_namespace(
    registry: Path, no_sockets: None
) -> None:
    with pytest.raises(netguard.LabNetworkRefused) as info:
        netguard.check_tcp_target("10.213.7.1", 7400, root_netns=True)
    message = str(info.value)
    assert "10.213.7.1:7400" in message and "10.213.7.0/24" in message
    assert "lab 'g1'" in message and "/var/tmp/g1" in message and "lab exec" in message
    assert isinstance(info.value, ConnectionError)  # callers treat it as unreachable
    # Not a lab address, or not the root namespace: nothing to refuse.
    netguard.check_tcp_target("10.213.8.1", 7400, root_netns=True)
    netguard.check_tcp_target("10.213.7.1", 7400, root_netns=False)
    # Spelled as an IPv4-mapped IPv6 address: the same address, refused.
    with pytest.raises(netguard.LabNetworkRefused):
        netguard.check_tcp_target("::ffff:10.213.7.9", 7400, root_netns=True)


def test_subnets_from_the_environment_and_names_that_resolve_into_them(
    registry: Path, no_sockets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(netguard.SUBNETS_ENV, "127.99.0.0/16, not-a-net")
    with pytest.raises(netguard.LabNetworkRefused, match=netguard.SUBNETS_ENV):
        netguard.check_tcp_target("127.99.0.5", 1, root_netns=True)
    # A name is resolved first (localhost -> 127.0.0.1: outside the lab subnets).
    netguard.check_tcp_target("localhost", 1, root_netns=True)
    monkeypatch.setenv(netguard.SUBNETS_ENV, "127.0.0.0/8")
    with pytest.raises(netguard.LabNetworkRefused):
        netguard.check_tcp_target("localhost", 1, root_netns=True)


async def test_the_client_refuses_before_creating_a_socket(
    registry: Path, no_sockets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netguard, "in_root_netns", lambda: True)
    with pytest.raises(netguard.LabNetworkRefused, match="root network namespace"):
        await open_stream(parse_address("tcp:10.213.7.1:7400"))
    with pytest.raises(netguard.LabNetworkRefused):
        async with open_client(parse_address("tcp:10.213.7.1:7400"), host="node1"):
            pass  # pragma: no cover
    monkeypatch.setenv(netguard.SUBNETS_ENV, "127.0.0.0/8")
    with pytest.raises(netguard.LabNetworkRefused):
        await netguard.acheck_tcp_target("localhost", 7400)


def test_without_any_lab_nothing_is_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(netguard.REGISTRY_ENV, str(tmp_path / "none"))
    monkeypatch.delenv(netguard.SUBNETS_ENV, raising=False)

    def no_lookup(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("resolved a name with no lab registered")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    assert netguard.lab_networks() == []
    netguard.check_tcp_target("example.invalid", 80, root_netns=True)


def test_root_namespace_detection_is_conservative(monkeypatch: pytest.MonkeyPatch) -> None:
    real_stat = netguard.os.stat

    def hidden_init(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == "/proc/1/ns/net":
            raise PermissionError(13, "Permission denied")
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(netguard.os, "stat", hidden_init)
    assert netguard.in_root_netns()  # cannot tell: the safe side
