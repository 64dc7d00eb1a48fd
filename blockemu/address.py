"""Array addresses: ``unix:/run/blockemu.sock`` or ``tcp:HOST:PORT``.

One spelling for the command line, config files and the environment
(``BLOCKEMU_ARRAY``), parsed in one place.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

import trio

from .netguard import acheck_tcp_target

ENV_VAR = "BLOCKEMU_ARRAY"


class AddressError(ValueError):
    pass


@dataclass(frozen=True)
class Address:
    kind: str  # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return Address("unix", path=rest)
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if host and port.isdigit() and int(port) < 65536:
            return Address("tcp", host=host, port=int(port))
    raise AddressError(
        f"bad array address {text!r}: use unix:/path/to/socket or tcp:HOST:PORT "
        "(e.g. tcp:127.0.0.1:7400)"
    )


def default_address() -> Address:
    value = os.environ.get(ENV_VAR)
    if not value:
        raise AddressError(f"no array address: pass --array ADDR or set {ENV_VAR}")
    return parse_address(value)


async def open_stream(addr: Address) -> trio.SocketStream:
    """Connect to *addr*; OSError carries a message naming the address.

    A TCP address inside a running lab's subnet is refused from the root network
    namespace before any socket exists (:mod:`blockemu.netguard`).
    """
    if addr.kind == "tcp":
        await acheck_tcp_target(addr.host, addr.port)
    try:
        if addr.kind == "unix":
            return await trio.open_unix_socket(addr.path)
        # trio's SocketStream turns on TCP_NODELAY itself: small I/O is not delayed.
        return await trio.open_tcp_stream(addr.host, addr.port)
    except OSError as exc:
        raise ConnectionError(
            exc.errno or errno.ECONNREFUSED,
            f"cannot reach the array at {addr}: {exc.strerror or exc}. "
            "Is `blockemu serve` running there?",
        ) from None


def _unix_socket_in_use(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        return False
    finally:
        s.close()
    return True


async def open_listeners(addr: Address) -> list[trio.SocketListener]:
    """Listen on *addr*; a leftover unix socket file from a dead server is removed."""
    if addr.kind == "unix":
        if os.path.exists(addr.path):
            if _unix_socket_in_use(addr.path):
                raise OSError(errno.EADDRINUSE, f"another process already listens on {addr}")
            os.unlink(addr.path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(addr.path)
        sock.listen(128)
        return [trio.SocketListener(sock)]
    return await trio.open_tcp_listeners(addr.port, host=addr.host)
