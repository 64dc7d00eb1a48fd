"""How commands reach their instance, and instances reach each other.

* Command -> instance: one JSON object per line over the instance's unix
  socket (``horcmN.sock``), one request per connection, answered by one
  line. Commands use plain blocking sockets, so a CCI command costs a
  Python start-up and no event loop.
* Instance -> partner instance: one JSON datagram over UDP to the address
  HORCM_INST gives, answered by one datagram, the way HORCM instances talk
  to each other on their HORCM_MON service.

A command that cannot connect gets EX_ATTHOR (251, "Can't be attached to
HORC manager"), exactly what scripts and Cinder test for before restarting
HORCM; a broken answer is EX_COMERR (255).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from .exitcodes import EX_ATTHOR, EX_COMERR, CciError

#: Largest answer a command accepts, and largest datagram between instances.
MAX_MESSAGE = 1 << 20
MAX_DATAGRAM = 65000


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def call(
    sock_path: Path, request: dict[str, Any], *, timeout: float | None = None, label: str = ""
) -> dict[str, Any]:
    """Send *request* to the instance at *sock_path* and return its answer.

    An answer with ``ok: false`` is raised as the :class:`CciError` it names.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(sock_path))
        except OSError as exc:
            raise CciError(
                EX_ATTHOR,
                f"HORCM {label or sock_path} is not running "
                f"({sock_path}: {exc.strerror or exc}); start it with "
                "horcmstart.sh",
            ) from None
        s.sendall(encode(request))
        chunks: list[bytes] = []
        size = 0
        while not chunks or not chunks[-1].endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_MESSAGE:
                break
    except OSError as exc:
        raise CciError(EX_COMERR, f"talking to HORCM {label}: {exc}") from None
    finally:
        s.close()
    try:
        answer = decode(b"".join(chunks))
    except ValueError:
        raise CciError(
            EX_COMERR, f"HORCM {label} closed the connection without an answer; see its log"
        ) from None
    if not answer.get("ok"):
        raise CciError.from_json(answer)
    return answer


def udp_address(host: str, service: str, *, listen: bool = False) -> tuple[int, tuple[Any, ...]]:
    """(address family, sockaddr) for a HORCM_MON / HORCM_INST host and service.

    ``service`` is a port number or an /etc/services name (``horcm0``). IPv4
    is preferred when a name has both, so both ends pick the same family;
    ``NONE``/``NONE6`` (listen on every address) are for HORCM_MON.
    """
    port = int(service) if service.isdigit() else socket.getservbyname(service, "udp")
    if listen and host == "NONE":
        return socket.AF_INET, ("0.0.0.0", port)
    if listen and host == "NONE6":
        return socket.AF_INET6, ("::", port)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr
