"""`blockemu host ...`: a host's disk-info buffer, and `blockemu attach`, its mount.

The buffer changes only when you say so: `scan` rebuilds it from what the
array shows this host, `refresh` re-reads one volume, `forget` drops one.
Until then a split S-VOL keeps its old PVID here and I/O to it fails: the
stale-identity failure, reproducible on demand.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.table import Table

from formats.hosts_config import read_key_file
from formats.units import format_ldev, format_size, parse_ldev

from .client import ArrayClient
from .cliutil import EXIT_CODES, emit_json, err_console, out_console, run_trio, with_array
from .hostbuffer import HostBuffer, refresh, scan

ENV_BUFFER = "BLOCKEMU_HOST_BUFFER"


def buffer_path(args: argparse.Namespace) -> Path:
    if args.buffer:
        return Path(args.buffer)
    if os.environ.get(ENV_BUFFER):
        return Path(os.environ[ENV_BUFFER])
    return Path("/var/lib/blockemu") / f"{args.host}.buf"


def open_buffer(args: argparse.Namespace) -> HostBuffer:
    if not args.host:
        err_console.print("[bold red]blockemu:[/] host commands need --host ID (whose buffer)")
        sys.exit(EXIT_CODES["usage"])
    return HostBuffer.load(buffer_path(args), args.host)


def target_arg(text: str) -> str | int:
    """A device name (hdisk3) or an LDEV (00:1A)."""
    return text if text.startswith("hdisk") else parse_ldev(text)


def entries_view(buf: HostBuffer) -> list[dict[str, object]]:
    return [
        {
            "device": e.device,
            "ldev": format_ldev(e.ldev),
            "pvid": e.pvid.hex(),
            "size": e.info.size,
            "label": e.info.label,
            "serial": e.info.serial,
        }
        for e in buf.entries
    ]


def print_buffer(buf: HostBuffer, args: argparse.Namespace) -> None:
    if args.json:
        emit_json({"host": buf.host, "generation": buf.generation, "devices": entries_view(buf)})
        return
    table = Table(
        title=f"host {buf.host}: disk-info buffer {buf.path} (generation {buf.generation})",
        title_justify="left",
    )
    for col in ("DEVICE", "LDEV", "PVID", "SIZE", "LABEL", "SERIAL"):
        table.add_column(col, no_wrap=True)
    for e in buf.entries:
        table.add_row(
            e.device, format_ldev(e.ldev), e.pvid.hex(), format_size(e.info.size), e.info.label,
            e.info.serial,
        )  # fmt: skip
    out_console().print(table)


async def host_scan(array: ArrayClient, args: argparse.Namespace) -> None:
    buf = open_buffer(args)
    await scan(array, buf)
    print_buffer(buf, args)


async def host_refresh(array: ArrayClient, args: argparse.Namespace) -> None:
    buf = open_buffer(args)
    entry = await refresh(array, buf, args.target, take_control=args.take_control)
    if args.json:
        emit_json({"refreshed": entry.device, "ldev": format_ldev(entry.ldev),
                   "pvid": entry.pvid.hex()})  # fmt: skip
    else:
        print(f"{entry.device}: LDEV {format_ldev(entry.ldev)} PVID {entry.pvid.hex()}")


def host_forget(args: argparse.Namespace) -> None:
    buf = open_buffer(args)
    entry = buf.forget(args.target)
    if args.json:
        emit_json({"forgot": entry.device, "ldev": format_ldev(entry.ldev)})
    else:
        print(f"forgot {entry.device} (LDEV {format_ldev(entry.ldev)})")


def host_show(args: argparse.Namespace) -> None:
    print_buffer(open_buffer(args), args)


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    client_opts: argparse.ArgumentParser,
    epilog: str,
) -> None:
    buffer_opts = argparse.ArgumentParser(add_help=False)
    buffer_opts.add_argument(
        "--buffer",
        metavar="FILE",
        help=f"the buffer file (default ${ENV_BUFFER}, else /var/lib/blockemu/HOST.buf)",
    )
    host = sub.add_parser(
        "host",
        help="a host's disk-info buffer: scan, refresh, forget, show",
        description="The host's persisted cache of devices (device -> LDEV, PVID, info).",
    )
    hsub = host.add_subparsers(dest="host_command", required=True, metavar="ACTION")

    sc = hsub.add_parser("scan", parents=[client_opts, buffer_opts], epilog=epilog,
                         help="rebuild the buffer from every volume this host may see")  # fmt: skip
    sc.set_defaults(func=with_array(host_scan))
    rf = hsub.add_parser("refresh", parents=[client_opts, buffer_opts], epilog=epilog,
                         help="re-read one volume's PVID and info from the array")  # fmt: skip
    rf.add_argument("target", type=target_arg, help="device (hdisk0) or LDEV (00:1A)")
    rf.add_argument("--take-control", action="store_true",
                    help="hold the volume's control right while reading its info")  # fmt: skip
    rf.set_defaults(func=with_array(host_refresh))
    fg = hsub.add_parser("forget", parents=[client_opts, buffer_opts], epilog=epilog,
                         help="drop one device from the buffer")  # fmt: skip
    fg.add_argument("target", type=target_arg, help="device (hdisk0) or LDEV (00:1A)")
    fg.set_defaults(func=host_forget)
    sh = hsub.add_parser("show", parents=[client_opts, buffer_opts], epilog=epilog,
                         help="print the buffer")  # fmt: skip
    sh.set_defaults(func=host_show)


def _daemonize(log_file: str | None) -> None:
    """Detach from the terminal (double fork); the parent returns to the shell."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    fd = os.open(log_file or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def cmd_attach(args: argparse.Namespace) -> None:
    import logging

    from .address import default_address, parse_address
    from .hostview import run_attach

    if not args.host:
        err_console.print("[bold red]blockemu:[/] attach needs --host ID")
        sys.exit(EXIT_CODES["usage"])
    addr = parse_address(args.array) if args.array else default_address()
    key = read_key_file(args.key_file) if args.key_file else None
    buf = open_buffer(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if not args.foreground:
        _daemonize(args.log_file)
    if args.pid_file:
        Path(args.pid_file).write_text(f"{os.getpid()}\n")

    def announce() -> None:
        print(
            f"blockemu: host {args.host} view of {addr} mounted at "
            f"{os.path.abspath(args.mountpoint)} ({len(buf.entries)} device(s), "
            f"buffer {buf.path})",
            flush=True,
        )

    try:
        run_trio(run_attach, addr, args.host, key, buf, args.mountpoint, announce,
                 args.exit_with)  # fmt: skip
    finally:
        if args.pid_file:
            Path(args.pid_file).unlink(missing_ok=True)


def add_attach(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    epilog: str,
) -> None:
    attach = sub.add_parser(
        "attach",
        help="mount a host's view: its buffer's devices, I/O forwarded to the array",
        description="Mount the devices of this host's disk-info buffer as files. Attach "
        "them with `losetup --direct-io=on` (measured fastest). I/O carries the buffer's "
        "PVID: after a split the array refuses a stale one (EIO) until `blockemu host "
        "refresh`. Unmounts cleanly on SIGTERM/SIGINT; a stale mount of a killed attach "
        "is cleaned on the next start.",
        epilog=epilog,
    )
    attach.add_argument("mountpoint", help="an existing empty directory")
    attach.add_argument("--array", metavar="ADDR", help="array address (default $BLOCKEMU_ARRAY)")
    attach.add_argument("--host", metavar="ID", help="this host's id (required)")
    attach.add_argument("--key-file", metavar="FILE", help="this host's key (host groups)")
    attach.add_argument("--buffer", metavar="FILE",
                        help=f"the buffer file (default ${ENV_BUFFER}, else "
                        "/var/lib/blockemu/HOST.buf)")  # fmt: skip
    attach.add_argument("--foreground", action="store_true", help="do not detach")
    attach.add_argument("--exit-with", type=int, metavar="PID",
                        help="unmount and exit when process PID ends, however")  # fmt: skip
    attach.add_argument("--pid-file", metavar="FILE", help="write the daemon's pid here")
    attach.add_argument("--log-file", metavar="FILE", help="log here when detached")
    attach.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])  # fmt: skip
    attach.set_defaults(func=cmd_attach)
