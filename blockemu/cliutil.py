"""What every `blockemu` subcommand shares: exit codes, argument types, output, the client."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import NoReturn

import trio
from rich.console import Console

from formats.errors import FormatError
from formats.hosts_config import read_key_file
from formats.units import parse_ldev, parse_size

from .address import AddressError, default_address, parse_address
from .client import ArrayClient, open_client
from .errors import (
    AdminOnly,
    ArrayError,
    AuthenticationFailed,
    AuthenticationRequired,
    CommandRejected,
    CorruptVolume,
    NoSuchVolume,
    ReservationConflict,
    StaleIdentity,
    StoreLocked,
    VolumeExists,
    VolumeHidden,
    VolumeMasked,
)


class UsageError(Exception):
    """Options that do not go together."""


#: Exit codes scripts can rely on. Anything else the array refuses is 1.
EXIT_CODES = {
    "ok": 0,
    "error": 1,
    "usage": 2,
    "unreachable": 3,
    "no-such-volume": 4,
    "exists": 5,
    "stale-identity": 6,
    "corrupt-volume": 7,
    "root-in-use": 8,
    "timeout": 9,
    "rejected": 10,
    "hidden": 11,
    "reserved": 12,
    "auth": 13,
    "masked": 14,
}

_EXIT_BY_ERROR: list[tuple[type[BaseException], str]] = [
    (NoSuchVolume, "no-such-volume"),
    (VolumeExists, "exists"),
    (StaleIdentity, "stale-identity"),
    (CorruptVolume, "corrupt-volume"),
    (StoreLocked, "root-in-use"),
    (CommandRejected, "rejected"),
    (VolumeHidden, "hidden"),
    (ReservationConflict, "reserved"),
    (AuthenticationFailed, "auth"),
    (AuthenticationRequired, "auth"),
    (AdminOnly, "auth"),
    (VolumeMasked, "masked"),
    (UsageError, "usage"),
    (ConnectionError, "unreachable"),
    (AddressError, "usage"),
    (FormatError, "usage"),
    (ArrayError, "error"),
    (OSError, "error"),
]

EPILOG = "exit codes: " + ", ".join(f"{v} {k}" for k, v in EXIT_CODES.items())

err_console = Console(stderr=True, soft_wrap=True)


def out_console() -> Console:
    """stdout; piped output gets room to spare so tables are never truncated."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def when(ns: int) -> str:
    if not ns:
        return "never"
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="seconds")


def fail(exc: BaseException) -> NoReturn:
    for cls, name in _EXIT_BY_ERROR:
        if isinstance(exc, cls):
            err_console.print(f"[bold red]blockemu:[/] {exc}", highlight=False)
            sys.exit(EXIT_CODES[name])
    raise exc


def ldev_arg(text: str) -> int:
    try:
        return parse_ldev(text)
    except FormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except FormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_trio(fn: Callable[..., Awaitable[object]], *args: object) -> None:
    """trio.run a daemon's main; one failure wrapped by nurseries is re-raised as itself.

    (A busy mountpoint or an address in use should reach :func:`fail` as the
    OSError it is, not as an exception group.)
    """
    try:
        trio.run(fn, *args)
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if leaf is group:
            raise
        raise leaf from None


def emit_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def with_array(
    action: Callable[[ArrayClient, argparse.Namespace], Awaitable[None]],
) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        addr = parse_address(args.array) if args.array else default_address()
        host: str | None = getattr(args, "host", None)
        key = None
        if getattr(args, "key_file", None):
            if not host:
                raise UsageError("--key-file needs --host ID: the key is that host's")
            key = read_key_file(args.key_file)

        async def main() -> None:
            async with open_client(addr, host=host, key=key) as client:
                await action(client, args)

        trio.run(main)

    return run
