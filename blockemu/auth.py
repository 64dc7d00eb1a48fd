"""Mutual challenge-response authentication of a host and the array, sans-IO.

Both sides know the host's key (a file named in the array's hosts config and
given to the host with ``--key-file``); the key never travels::

    host                                              array
    HELLO {host, client_nonce}                  ->
                                                <-    {server_nonce}
    AUTH  {mac: HMAC(key, "blockemu-client"
                     + host + client_nonce + server_nonce)}  ->   checks it
                                                <-    {mac: HMAC(key, "blockemu-server"
                                                             + host + client_nonce + server_nonce)}
    checks it

HMAC-SHA256; nonces are 32 random bytes from :mod:`secrets`, hex in the JSON
bodies; MACs are compared in constant time. Both nonces are fixed-size, so
the concatenation is unambiguous; the labels keep a client MAC from ever
passing as a server MAC. A fresh server nonce per HELLO means a recorded AUTH
is worthless in another session, and a fresh client nonce means a recorded
answer of the array is too.

Nothing here does I/O: the server and the client move the bodies; these
functions make and check them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from .errors import AuthenticationFailed, BadRequest

NONCE_SIZE = 32
MAC_SIZE = hashlib.sha256().digest_size
CLIENT_LABEL = b"blockemu-client"
SERVER_LABEL = b"blockemu-server"
MAX_HOST_LEN = 64


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def _mac(label: bytes, key: bytes, host: str, client_nonce: bytes, server_nonce: bytes) -> bytes:
    message = label + host.encode("utf8") + client_nonce + server_nonce
    return hmac.new(key, message, hashlib.sha256).digest()


def client_mac(key: bytes, host: str, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What the host sends in AUTH to prove it knows *key*."""
    return _mac(CLIENT_LABEL, key, host, client_nonce, server_nonce)


def server_mac(key: bytes, host: str, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What the array answers AUTH with to prove it knows *key* too."""
    return _mac(SERVER_LABEL, key, host, client_nonce, server_nonce)


def _hex_field(body: Any, name: str, size: int) -> bytes:
    """``body[name]`` as *size* bytes from hex; ValueError names what is wrong."""
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str):
        raise ValueError(f"{name} is missing")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{name} is not hex") from None
    if len(raw) != size:
        raise ValueError(f"{name} must be {size} bytes, not {len(raw)}")
    return raw


# -- HELLO -----------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """A HELLO: the host a connection speaks for; a client nonce starts authentication."""

    host: str
    client_nonce: bytes | None = None


def parse_hello(body: Any) -> Hello:
    """The HELLO in *body* (a JSON object); BadRequest if it is malformed."""
    host = body.get("host") if isinstance(body, dict) else None
    if not isinstance(host, str) or not host or len(host) > MAX_HOST_LEN:
        raise BadRequest(
            f"HELLO needs a host id: a non-empty string of at most {MAX_HOST_LEN} characters"
        )
    if body.get("client_nonce") is None:
        return Hello(host)
    try:
        return Hello(host, _hex_field(body, "client_nonce", NONCE_SIZE))
    except ValueError as exc:
        raise BadRequest(f"HELLO: {exc}; send {NONCE_SIZE} random bytes in hex") from None


# -- the array's side ----------------------------------------------------------


class Refused(Exception):
    """Authentication failed; ``str()`` is the reason, for the array's log only."""


@dataclass(frozen=True)
class Challenge:
    """What the array remembers between a host's HELLO and its AUTH (used once)."""

    host: str
    client_nonce: bytes
    server_nonce: bytes

    @classmethod
    def new(cls, hello: Hello) -> Challenge:
        if hello.client_nonce is None:
            raise ValueError("a challenge answers a HELLO with a client nonce")
        return cls(hello.host, hello.client_nonce, new_nonce())

    def answer(self) -> dict[str, str]:
        """The array's answer to the HELLO."""
        return {"server_nonce": self.server_nonce.hex()}

    def verify(self, key: bytes | None, body: Any) -> dict[str, str]:
        """Check the host's AUTH *body* against *key* (None: the host is unknown).

        Returns the array's answer, which proves the array knows the key too;
        raises :class:`Refused` with the reason otherwise.
        """
        try:
            mac = _hex_field(body, "mac", MAC_SIZE)
        except ValueError as exc:
            raise Refused(f"malformed AUTH: {exc}") from None
        # An unknown host costs the same HMAC as a known one: timing does not tell them apart.
        expected = client_mac(key or new_nonce(), self.host, self.client_nonce, self.server_nonce)
        if key is None:
            raise Refused("unknown host: not in the hosts config")
        if not hmac.compare_digest(mac, expected):
            raise Refused("wrong key: the MAC does not match the key in the hosts config")
        return {"mac": server_mac(key, self.host, self.client_nonce, self.server_nonce).hex()}


def refusal_message(host: str) -> str:
    """What a refused host is told: the same for an unknown host and a wrong key."""
    return (
        f"host {host!r} could not be authenticated: the array does not know this host, or its "
        "key differs from the one in the array's hosts config (the array's log says which); "
        "check --host and --key-file"
    )


# -- the host's side -----------------------------------------------------------


class ClientHandshake:
    """The host's half: make the HELLO and AUTH bodies, check the array's answers.

    *array* names the array in error messages.
    """

    def __init__(
        self, host: str, key: bytes, array: str, *, client_nonce: bytes | None = None
    ) -> None:
        self.host = host
        self.key = key
        self.array = array
        self.client_nonce = client_nonce or new_nonce()
        self.server_nonce: bytes | None = None

    def _failed(self, why: str) -> AuthenticationFailed:
        return AuthenticationFailed(
            f"the array at {self.array} could not prove it knows host {self.host}'s key: {why}"
        )

    def hello(self) -> dict[str, str]:
        return {"host": self.host, "client_nonce": self.client_nonce.hex()}

    def auth(self, answer: Any) -> dict[str, str]:
        """The AUTH body, from the array's answer to HELLO."""
        if answer is None:
            raise self._failed(
                "it does not authenticate hosts (it runs without --hosts); connect without "
                "--key-file, or check that this is the array you meant"
            )
        try:
            self.server_nonce = _hex_field(answer, "server_nonce", NONCE_SIZE)
        except ValueError as exc:
            raise self._failed(f"malformed answer to HELLO ({exc})") from None
        mac = client_mac(self.key, self.host, self.client_nonce, self.server_nonce)
        return {"mac": mac.hex()}

    def verify(self, answer: Any) -> None:
        """Check the array's answer to AUTH; AuthenticationFailed if it does not prove the key."""
        if self.server_nonce is None:
            raise ValueError("verify() comes after auth()")
        try:
            mac = _hex_field(answer, "mac", MAC_SIZE)
        except ValueError as exc:
            raise self._failed(f"malformed answer to AUTH ({exc})") from None
        expected = server_mac(self.key, self.host, self.client_nonce, self.server_nonce)
        if not hmac.compare_digest(mac, expected):
            raise self._failed(
                "its answer does not match; it is not the array you meant, or its hosts config "
                "holds another key for this host"
            )
