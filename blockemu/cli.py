"""`blockemu`: run an array, and manage its volumes from the shell.

Every subcommand has --help. Output is a table for people and JSON with
--json for scripts; the exit code says what went wrong (see EXIT_CODES).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from typing import Any

import trio
from rich.table import Table

from formats.units import format_ldev, format_size
from formats.volume_header import VolumeHeader, header_to_dict

from . import __version__, cli_host, cli_lab, cli_pair
from .address import ENV_VAR, parse_address
from .client import ArrayClient
from .cliutil import (
    EPILOG,
    EXIT_CODES,
    emit_json,
    err_console,
    fail,
    ldev_arg,
    out_console,
    run_trio,
    size_arg,
    when,
    with_array,
)
from .errors import BadRequest


def pair_text(h: VolumeHeader) -> str:
    if h.pair.role.name == "SIMPLEX":
        return "SMPL"
    partner = format_ldev(h.pair.partner_ldev)
    return f"{h.pair.role.name} {h.pair.status.name} with {partner}"


def print_volumes(headers: list[VolumeHeader], broken: dict[str, str]) -> None:
    table = Table(title=f"{len(headers)} volume(s)", title_justify="left")
    for col in ("LDEV", "SIZE", "PVID", "LABEL", "SERIAL", "PAIR", "GEN"):
        table.add_column(col, no_wrap=col in ("PVID", "LDEV"))
    for h in headers:
        table.add_row(
            format_ldev(h.ldev),
            format_size(h.info.size),
            h.pvid.hex(),
            h.info.label,
            h.info.serial,
            pair_text(h),
            str(h.generation),
        )
    out_console().print(table)
    for name, why in broken.items():
        err_console.print(f"[yellow]unreadable volume file {name}:[/] {why}", highlight=False)


def print_volume(h: VolumeHeader) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    d = header_to_dict(h)
    info: dict[str, Any] = d["info"]  # type: ignore[assignment]
    pair: dict[str, Any] = d["pair"]  # type: ignore[assignment]
    rows: list[tuple[str, object]] = [
        ("LDEV", d["ldev"]),
        ("PVID", d["pvid"]),
        ("generation", d["generation"]),
        ("size", f"{format_size(h.info.size)} ({h.info.size} bytes)"),
    ]
    info["created"] = when(h.info.created)
    pair["split_time"] = when(h.pair.split_time)
    rows += [(k, v) for k, v in info.items() if k != "size"]
    rows += [(f"pair.{k}", v) for k, v in pair.items()]
    for key, value in rows:
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    out_console().print(table, highlight=False)


# -- subcommands -----------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> None:
    from formats.hosts_config import load_hosts_config

    from .array import Array
    from .server import run_until_signalled

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    addresses = [parse_address(a) for a in args.listen]
    # Every problem of the hosts config at once, before the root is touched (exit 2).
    hosts = load_hosts_config(args.hosts) if args.hosts else None
    mountpoint = None
    if args.mount:
        mountpoint = os.path.abspath(args.mount)
        root = os.path.abspath(args.root)
        if os.path.commonpath([root, mountpoint]) == mountpoint:
            raise BadRequest(
                f"--root {root} is inside --mount {mountpoint}: the array would do I/O "
                "through its own mount and hang; mount somewhere else"
            )
    array = Array.open(args.root)
    try:
        extra = None
        if mountpoint is not None:
            from .arrayview import ArrayBackend
            from .fusefs import VolumeFS, run_mount

            fs = VolumeFS(ArrayBackend(array))
            fsname = f"blockemu:{os.path.abspath(args.root)}"

            async def extra(nursery: trio.Nursery) -> None:
                await nursery.start(functools.partial(run_mount, fs, mountpoint, fsname=fsname))

        def announce(bound: list[str]) -> None:
            mounted = f" mount:{mountpoint}" if mountpoint else ""
            print(
                f"blockemu: array {args.root} with {len(array.store.volumes)} volume(s), "
                f"{len(array.pairs)} pair(s), copy engine {array.engine.name}, "
                f"listening on {' '.join(bound)}{mounted}",
                flush=True,
            )

        run_trio(run_until_signalled, array, addresses, announce, extra, hosts)
    finally:
        array.close()


async def vol_create(array: ArrayClient, args: argparse.Namespace) -> None:
    h = await array.create(args.ldev, args.size, label=args.label, block_size=args.block_size)
    if args.json:
        emit_json(header_to_dict(h))
    else:
        size = format_size(h.info.size)
        print(f"created LDEV {format_ldev(h.ldev)} ({size}) PVID {h.pvid.hex()}")


async def vol_list(array: ArrayClient, args: argparse.Namespace) -> None:
    headers, broken = await array.list_volumes()
    if args.json:
        emit_json({"volumes": [header_to_dict(h) for h in headers], "broken": broken})
    else:
        print_volumes(headers, broken)


async def vol_show(array: ArrayClient, args: argparse.Namespace) -> None:
    h = await array.show(args.ldev)
    if args.json:
        emit_json(header_to_dict(h))
    else:
        print_volume(h)


async def vol_delete(array: ArrayClient, args: argparse.Namespace) -> None:
    await array.delete(args.ldev)
    if args.json:
        emit_json({"deleted": format_ldev(args.ldev)})
    else:
        print(f"deleted LDEV {format_ldev(args.ldev)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockemu",
        description="A disk-array emulator: volumes as sparse files, served over "
        "unix or TCP sockets.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"blockemu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run an array on a root directory",
        description="Run the array: own ROOT (one process per root), serve its volumes on "
        "each --listen address until SIGTERM/SIGINT.",
        epilog=EPILOG,
    )
    serve.add_argument("--root", required=True, help="directory holding the volumes")
    serve.add_argument(
        "--listen",
        action="append",
        required=True,
        metavar="ADDR",
        help="unix:/path/to.sock or tcp:HOST:PORT (port 0 picks one); repeatable",
    )
    serve.add_argument(
        "--mount",
        metavar="DIR",
        help="also mount the array's own view on DIR: one file per volume hosts can see "
        "(hidden S-VOLs excluded), for losetup --direct-io=on; unmounted on exit",
    )
    serve.add_argument(
        "--hosts",
        metavar="FILE",
        help="hosts.toml: host keys and host groups; TCP clients must then authenticate "
        "and see only their LDEVs (without it the array is open to every client)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    client_opts = argparse.ArgumentParser(add_help=False)
    client_opts.add_argument("--array", metavar="ADDR", help=f"array address (default: ${ENV_VAR})")
    client_opts.add_argument("--json", action="store_true", help="machine-readable output")
    client_opts.add_argument("--host", metavar="ID", help="act as this host (reservations)")
    client_opts.add_argument(
        "--key-file",
        metavar="FILE",
        help="authenticate as --host with this key (arrays started with --hosts require it "
        "over TCP)",
    )

    vol = sub.add_parser(
        "vol", help="create, list, show and delete volumes", description="Manage volumes."
    )
    vsub = vol.add_subparsers(dest="vol_command", required=True, metavar="ACTION")

    create = vsub.add_parser(
        "create",
        parents=[client_opts],
        help="create a sparse volume",
        description="Create a volume; it takes no space until written.",
        epilog=EPILOG,
    )
    create.add_argument("ldev", type=ldev_arg, help="physical name CU:LDEV, e.g. 00:1A")
    create.add_argument("size", type=size_arg, help="size, e.g. 10G, 512M, 1048576")
    create.add_argument("--label", default="", help="volume label (at most 32 bytes)")
    create.add_argument("--block-size", type=int, default=512, help="default 512")
    create.set_defaults(func=with_array(vol_create))

    lst = vsub.add_parser("list", parents=[client_opts], help="list volumes", epilog=EPILOG)
    lst.set_defaults(func=with_array(vol_list))

    show = vsub.add_parser(
        "show",
        parents=[client_opts],
        help="show a volume's header, read from disk",
        description="Show the header of one volume, read straight from the volume file.",
        epilog=EPILOG,
    )
    show.add_argument("ldev", type=ldev_arg)
    show.set_defaults(func=with_array(vol_show))

    delete = vsub.add_parser(
        "delete", parents=[client_opts], help="delete a volume and its data", epilog=EPILOG
    )
    delete.add_argument("ldev", type=ldev_arg)
    delete.set_defaults(func=with_array(vol_delete))

    cli_pair.add_commands(sub, vsub, client_opts, EPILOG)
    cli_host.add_commands(sub, client_opts, EPILOG)
    cli_host.add_attach(sub, EPILOG)
    cli_lab.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except cli_pair.WaitTimeout as exc:
        err_console.print(f"[bold red]blockemu:[/] {exc}", highlight=False)
        sys.exit(EXIT_CODES["timeout"])
    except Exception as exc:  # mapped to an exit code, or re-raised
        fail(exc)


if __name__ == "__main__":
    main()
