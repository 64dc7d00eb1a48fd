"""`blockemu pair ...` and `blockemu vol reserve|release|preempt`.

Pair commands name their target with --pvol, --svol or --group (a whole
consistency group, which splits at one instant). Long copies are followed by
`--wait` or `pair wait`: a progress bar on a terminal, plain lines otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import trio
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from formats.units import format_ldev
from formats.wire import Op

from .client import ArrayClient
from .cliutil import (
    EXIT_CODES,
    emit_json,
    err_console,
    ldev_arg,
    out_console,
    when,
    with_array,
)

PAIR_STATES = ("SMPL", "COPY", "PAIR", "COPY_SP", "PSUS", "COPY_RS", "COPY_RS_R", "PSUE")
_COMMAND_OPS = {
    "split": Op.PAIR_SPLIT,
    "resync": Op.PAIR_RESYNC,
    "restore": Op.PAIR_RESTORE,
    "suspend": Op.PAIR_SUSPEND,
    "delete": Op.PAIR_DELETE,
}
#: Where each command settles, for --wait.
_SETTLES_IN = {
    "create": ("PAIR",),
    "split": ("PSUS",),
    "resync": ("PAIR",),
    "restore": ("PAIR",),
    "suspend": ("PSUE",),
}


class WaitTimeout(Exception):
    pass


def selector(args: argparse.Namespace) -> dict[str, Any]:
    if args.group is not None:
        return {"group": args.group}
    if args.pvol is not None:
        return {"pvol": format_ldev(args.pvol)}
    if args.svol is not None:
        return {"svol": format_ldev(args.svol)}
    return {}


def print_pairs(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"{len(rows)} pair(s)", title_justify="left")
    for col in ("GROUP", "P-VOL", "S-VOL", "STATUS", "S-STATUS", "%", "MODE", "MU", "LAG", "SPLIT"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        lag = r["journal"]
        table.add_row(
            "-" if r["group"] is None else str(r["group"]),
            r["pvol"],
            r["svol"],
            r["status"],
            r["svol_status"],
            str(r["copy_percent"]),
            r["mode"],
            str(r["mirror_unit"]),
            f"{lag['bytes']}B/{lag['seconds']}s" if r["mode"] == "async" else "-",
            when(r["split_time"]) if r["split_time"] else "-",
        )
    out_console().print(table)


def _done(rows: list[dict[str, Any]], states: tuple[str, ...], complete: bool) -> bool:
    return bool(rows) and all(
        r["status"] in states and (not complete or r["copy_percent"] == 100) for r in rows
    )


async def wait_for(
    array: ArrayClient,
    sel: dict[str, Any],
    states: tuple[str, ...],
    seconds: float,
    *,
    complete: bool = True,
) -> list[dict[str, Any]]:
    """Poll until every selected pair is in one of *states* (and, if *complete*, at 100 %)."""
    deadline = time.monotonic() + seconds
    tty = sys.stderr.isatty()
    last_line = 0.0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        console=err_console,
        disable=not tty,
        transient=True,
    ) as progress:
        tasks: dict[str, Any] = {}
        while True:
            rows = await array.pair_display(sel)
            if _done(rows, states, complete):
                return rows
            for r in rows:
                name = f"{r['pvol']}->{r['svol']}"
                if name not in tasks:
                    tasks[name] = progress.add_task(name, total=100)
                progress.update(
                    tasks[name], completed=r["copy_percent"], description=f"{name} {r['status']}"
                )
            now = time.monotonic()
            if not tty and now - last_line >= 1.0:
                last_line = now
                for r in rows:
                    print(f"{r['pvol']}->{r['svol']} {r['status']} {r['copy_percent']}%",
                          file=sys.stderr, flush=True)  # fmt: skip
            if now >= deadline:
                states_now = ", ".join(
                    f"{r['pvol']} {r['status']} {r['copy_percent']}%" for r in rows
                )
                raise WaitTimeout(
                    f"timed out after {seconds:g}s waiting for {'/'.join(states)}: {states_now}"
                )
            await trio.sleep(0.2)


async def _finish(array: ArrayClient, args: argparse.Namespace, rows: list[dict[str, Any]],
                  settles: tuple[str, ...]) -> None:  # fmt: skip
    if getattr(args, "wait", False) and settles:
        rows = await wait_for(array, selector(args) or {"pvol": rows[0]["pvol"]}, settles,
                              args.timeout)  # fmt: skip
    if args.json:
        emit_json({"pairs": rows})
    else:
        print_pairs(rows)


async def pair_create(array: ArrayClient, args: argparse.Namespace) -> None:
    split = None
    if args.split:
        split = "quick" if args.quick else "steady"
    rows = await array.pair_create(
        format_ldev(args.pvol),
        format_ldev(args.svol),
        mode=args.mode,
        mu=args.mu,
        group=args.group,
        pace=args.pace,
        split=split,
    )
    await _finish(array, args, rows, ("PSUS",) if split else _SETTLES_IN["create"])


async def pair_command(array: ArrayClient, args: argparse.Namespace) -> None:
    rows = await array.pair_command(
        _COMMAND_OPS[args.pair_command], selector(args), quick=getattr(args, "quick", False)
    )
    if args.pair_command == "delete":
        if args.json:
            emit_json({"deleted": [r["pvol"] for r in rows] or selector(args)})
        else:
            print("pair(s) deleted")
        return
    await _finish(array, args, rows, _SETTLES_IN.get(args.pair_command, ()))


async def pair_display(array: ArrayClient, args: argparse.Namespace) -> None:
    rows = await array.pair_display(selector(args))
    if args.json:
        emit_json({"pairs": rows})
    else:
        print_pairs(rows)


async def pair_wait(array: ArrayClient, args: argparse.Namespace) -> None:
    rows = await wait_for(array, selector(args), tuple(args.status), args.timeout,
                          complete=not args.any_progress)  # fmt: skip
    if args.json:
        emit_json({"pairs": rows})
    else:
        print_pairs(rows)


async def vol_reservation(array: ArrayClient, args: argparse.Namespace) -> None:
    action = args.vol_command
    previous = None
    if action == "reserve":
        await array.reserve(args.ldev)
    elif action == "release":
        await array.release(args.ldev)
    else:
        previous = await array.preempt(args.ldev)
    if args.json:
        emit_json({"ldev": format_ldev(args.ldev), "action": action, "previous": previous})
    else:
        extra = f" (taken from {previous})" if previous and previous != args.host else ""
        print(f"{action}: LDEV {format_ldev(args.ldev)} for host {args.host}{extra}")


def add_selector(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--pvol", type=ldev_arg, metavar="LDEV", help="the pair of this P-VOL")
    group.add_argument("--svol", type=ldev_arg, metavar="LDEV", help="the pair of this S-VOL")
    group.add_argument("--group", type=int, metavar="CTG", help="every pair of a consistency group")


def add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="return when the copy is done")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for --wait (3600)")


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    vsub: argparse._SubParsersAction[argparse.ArgumentParser],
    client_opts: argparse.ArgumentParser,
    epilog: str,
) -> None:
    """Register `pair ...` under *sub* and the reservation verbs under `vol` (*vsub*)."""
    pair = sub.add_parser(
        "pair",
        help="in-array copies: create, split, resync, restore, suspend, delete, display, wait",
        description="In-array replication (ShadowImage-like): a P-VOL copied onto an S-VOL.",
    )
    psub = pair.add_subparsers(dest="pair_command", required=True, metavar="ACTION")

    create = psub.add_parser(
        "create",
        parents=[client_opts],
        help="form a pair; the S-VOL is hidden and the initial copy starts",
        description="Form a pair. The S-VOL must be as large as the P-VOL; it takes the "
        "P-VOL's PVID and is hidden from hosts until a split.",
        epilog=epilog,
    )
    create.add_argument("--pvol", type=ldev_arg, required=True, metavar="LDEV")
    create.add_argument("--svol", type=ldev_arg, required=True, metavar="LDEV")
    create.add_argument("--mode", choices=["sync", "async", "deferred"], default="sync",
                        help="how P-VOL writes reach the S-VOL (default sync)")  # fmt: skip
    create.add_argument("--mu", type=int, default=0, help="mirror unit MU# 0-2 (default 0)")
    create.add_argument("--group", type=int, metavar="CTG", help="consistency group id")
    create.add_argument(
        "--pace", type=int, default=15,
        help="copy pace 1-15; 15 (default) is unthrottled, n limits to n*32 MiB/s",
    )  # fmt: skip
    create.add_argument(
        "--split", action="store_true",
        help="split as soon as formed (the S-VOL is the P-VOL of now)",
    )  # fmt: skip
    create.add_argument(
        "--quick", action="store_true",
        help="with --split: the S-VOL is usable at once; copying goes on behind",
    )  # fmt: skip
    add_wait(create)
    create.set_defaults(func=with_array(pair_create))

    helps = {
        "split": "split: the S-VOL gets a new PVID and is the P-VOL of this instant",
        "resync": "re-form after a split, copying only changed tracks P-VOL to S-VOL",
        "restore": "copy the S-VOL's changed tracks back onto the P-VOL",
        "suspend": "stop mirroring (PSUE); the next resync is a full copy",
        "delete": "dissolve the pair; both volumes become simplex",
    }
    for name, text in helps.items():
        cmd = psub.add_parser(name, parents=[client_opts], help=text, description=text,
                              epilog=epilog)  # fmt: skip
        add_selector(cmd, required=True)
        if name == "split":
            cmd.add_argument(
                "--quick", action="store_true",
                help="S-VOL usable at once, remaining tracks copied behind",
            )  # fmt: skip
        if name in _SETTLES_IN:
            add_wait(cmd)
        cmd.set_defaults(func=with_array(pair_command))

    display = psub.add_parser(
        "display", parents=[client_opts], help="show pairs: status, copy %, mode, lag",
        epilog=epilog,
    )  # fmt: skip
    add_selector(display, required=False)
    display.set_defaults(func=with_array(pair_display))

    wait = psub.add_parser(
        "wait",
        parents=[client_opts],
        help="wait until pairs reach a status",
        description="Wait until every selected pair is in one of the given states and its "
        f"copy is complete. Exit code {EXIT_CODES['timeout']} on timeout.",
        epilog=epilog,
    )
    add_selector(wait, required=True)
    wait.add_argument("--status", nargs="+", choices=PAIR_STATES, required=True)
    wait.add_argument("--timeout", type=float, default=3600, help="seconds (default 3600)")
    wait.add_argument("--any-progress", action="store_true",
                      help="do not wait for the copy to reach 100 %%")  # fmt: skip
    wait.set_defaults(func=with_array(pair_wait))

    for name, text in (
        ("reserve", "take the control right on a volume for --host"),
        ("release", "give up --host's control right on a volume"),
        ("preempt", "take the control right over from whoever holds it (fencing)"),
    ):
        cmd = vsub.add_parser(name, parents=[client_opts], help=text, description=text,
                              epilog=epilog)  # fmt: skip
        cmd.add_argument("ldev", type=ldev_arg)
        cmd.set_defaults(func=with_array(vol_reservation))
