"""A connection to the array that comes back by itself.

Long-running clients (a host view, a cluster agent) outlive array restarts.
:class:`ArrayConnection` keeps one authenticated client open, reconnects with
backoff when it drops, and lets callers run a request on whatever connection
is current: :meth:`call` waits a few seconds for a lost connection to return,
retries a request cut off by a disconnect (callers send only idempotent
requests), and otherwise raises :class:`ArrayUnavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from .address import Address
from .client import ArrayClient, ConnectionLost, open_client
from .errors import ArrayError

log = logging.getLogger(__name__)

T = TypeVar("T")
#: How long a request waits for a lost connection to come back.
RECONNECT_WAIT = 5.0


class ArrayUnavailable(ConnectionError):
    """The array could not be reached within the wait."""


class ArrayConnection:
    def __init__(self, addr: Address, *, host: str | None = None, key: bytes | None = None) -> None:
        self.addr = addr
        self.host = host
        self.key = key
        self._client: ArrayClient | None = None
        self._connected = trio.Event()
        self._lost = trio.Event()

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection open; reports started once first connected (or raises)."""
        started = False
        delay = 0.1
        while True:
            try:
                async with open_client(self.addr, host=self.host, key=self.key) as client:
                    self._client = client
                    self._connected.set()
                    delay = 0.1
                    log.info("connected to the array at %s as host %s", self.addr, self.host)
                    if not started:
                        task_status.started()
                        started = True
                    await self._lost.wait()
            except (OSError, ArrayError) as exc:
                if not started:
                    raise
                log.warning("array at %s: %s; reconnecting", self.addr, exc)
            self._client = None
            self._connected = trio.Event()
            self._lost = trio.Event()
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def call(
        self, fn: Callable[[ArrayClient], Awaitable[T]], *, wait: float = RECONNECT_WAIT
    ) -> T:
        """Run *fn* with the current client; reconnects and retries after a disconnect."""
        for _attempt in range(3):
            with trio.move_on_after(wait):
                await self._connected.wait()
            client = self._client
            if client is None:
                break
            try:
                return await fn(client)
            except ConnectionLost:
                self._lost.set()
        raise ArrayUnavailable(f"the array at {self.addr} is unreachable")
