"""What the pair commands do on the array, for the dev_names an instance resolved.

Each CCI command here is a few calls of :class:`blockemu.client.ArrayClient`
(the same ones ``blockemu pair ...`` makes). Before anything changes, every
selected pair is checked against :mod:`blockemu.pairstate` (CCI's
command/state matrix, research note 1.3); one refusal refuses the whole
command with EX_CMDRJE, so a group is never left half split. A consistency
group created with ``paircreate -m grp`` is split or resynchronised with one
array command, at one instant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from blockemu.address import Address
from blockemu.client import ArrayClient, open_client
from blockemu.errors import ArrayError, CommandRejected, NoSuchVolume
from blockemu.pairstate import Command, Outcome, decide
from formats.units import format_ldev, parse_ldev
from formats.volume_header import NO_GROUP, PairStatus
from formats.wire import Op

from . import states
from .exitcodes import EX_CMDIOE, EX_CMDRJE, EX_ENLDEV, EX_EVOLCE, CciError
from .model import Dev, PairState

T = TypeVar("T")

#: The array operation of each pair command (after paircreate).
_OPS = {
    Command.SPLIT: Op.PAIR_SPLIT,
    Command.DELETE: Op.PAIR_DELETE,
    Command.SUSPEND: Op.PAIR_SUSPEND,
    Command.RESYNC: Op.PAIR_RESYNC,
    Command.RESTORE: Op.PAIR_RESTORE,
}
#: CCI's name for each command, for refusals.
_CCI_NAMES = {
    Command.FORM: "paircreate",
    Command.FORM_SPLIT: "paircreate -split",
    Command.SPLIT: "pairsplit",
    Command.DELETE: "pairsplit -S",
    Command.SUSPEND: "pairsplit -E",
    Command.RESYNC: "pairresync",
    Command.RESTORE: "pairresync -restore",
}

#: blockemu's own commands in the state table's hints, and what a CCI user types instead.
_IN_CCI_TERMS = (
    ("blockemu pair create --split", "paircreate -split"),
    ("blockemu pair create", "paircreate"),
    ("blockemu pair split", "pairsplit"),
    ("blockemu pair resync", "pairresync"),
    ("blockemu pair restore", "pairresync -restore"),
    ("blockemu pair delete", "pairsplit -S"),
    ("blockemu pair wait", "pairevtwait"),
)


def in_cci_terms(reason: str) -> str:
    """A refusal of :mod:`blockemu.pairstate` with its hints naming CCI commands."""
    for native, cci in _IN_CCI_TERMS:
        reason = reason.replace(native, cci)
    return reason


@asynccontextmanager
async def array_session(address: Address) -> AsyncIterator[ArrayClient]:
    """A connection to the array; failures to reach it are EX_CMDIOE."""
    try:
        async with open_client(address) as client:
            yield client
    except (ConnectionError, OSError) as exc:
        raise CciError(EX_CMDIOE, f"the array at {address}: {exc}") from None


async def _checked(call: Awaitable[T]) -> T:
    """Await an array call, turning its errors into CCI's."""
    try:
        return await call
    except NoSuchVolume as exc:
        raise CciError(EX_ENLDEV, str(exc)) from None
    except CommandRejected as exc:
        raise CciError(EX_CMDRJE, in_cci_terms(str(exc))) from None
    except (ConnectionError, OSError) as exc:
        raise CciError(EX_CMDIOE, str(exc)) from None
    except ArrayError as exc:
        raise CciError(EX_CMDRJE, str(exc)) from None


def _where(dev: Dev) -> str:
    return f"{dev.group}/{dev.name}"


async def observe(client: ArrayClient, devs: list[Dev]) -> list[Dev]:
    """*devs* with the array's pair of each filled in.

    EX_ENLDEV if a volume the HORCM files name does not exist; EX_EVOLCE if
    one of them is paired with a volume other than its partner in the files.
    """
    headers, _broken = await _checked(client.list_volumes())
    existing = {h.ldev for h in headers}
    missing = [
        f"{_where(d)}: LDEV {format_ldev(v.ldev)} ({v.ldev}) does not exist on the array; "
        "create it (blockemu vol create) or fix the HORCM file"
        for d in devs
        for v in (d.local, d.remote)
        if v.ldev not in existing
    ]
    if missing:
        raise CciError(EX_ENLDEV, *missing)
    rows = await _checked(client.pair_display({}))
    by_ldev: dict[int, dict[str, Any]] = {}
    for row in rows:
        for key in ("pvol", "svol"):
            by_ldev[parse_ldev(row[key])] = row
    out: list[Dev] = []
    wrong: list[str] = []
    for dev in devs:
        here, there = by_ldev.get(dev.local.ldev), by_ldev.get(dev.remote.ldev)
        if here is None and there is None:
            out.append(dev)
            continue
        if here is None or there is None or here is not there:
            for vol, other in ((dev.local, here), (dev.remote, there)):
                if other is not None:
                    wrong.append(
                        f"{_where(dev)}: LDEV {format_ldev(vol.ldev)} is in pair "
                        f"{other['pvol']}->{other['svol']}, not with the LDEV the other "
                        "instance's HORCM file names; delete that pair or fix the files"
                    )
            continue
        pair = PairState(
            parse_ldev(here["pvol"]),
            parse_ldev(here["svol"]),
            str(here["status"]),
            int(here["copy_percent"]),
            None if here["group"] is None else int(here["group"]),
        )
        out.append(dataclasses.replace(dev, pair=pair))
    if wrong:
        raise CciError(EX_EVOLCE, *wrong)
    return out


def _refusals(devs: list[Dev], command: Command) -> list[str]:
    reasons: list[str] = []
    for dev in devs:
        status = PairStatus[dev.pair.status] if dev.pair else PairStatus.SMPL
        decision = decide(status, command)
        if decision.outcome is Outcome.REJECT:
            reasons.append(f"{_where(dev)}: {_CCI_NAMES[command]}: {in_cci_terms(decision.reason)}")
        elif (
            command is Command.DELETE
            and dev.pair is not None
            and states.blockemu_state(dev.pair.status, dev.pair.copy_percent) == states.PSUS_SP
        ):
            reasons.append(
                f"{_where(dev)}: pairsplit -S: the quick split is still copying "
                f"({dev.pair.copy_percent} %); the S-VOL would be left incomplete. "
                "Wait for it (pairevtwait -s psus -ss ssus), then delete"
            )
    return reasons


async def create(
    client: ArrayClient,
    devs: list[Dev],
    *,
    local_is_pvol: bool,
    pace: int,
    split: str | None,
    consistency: bool,
    ctg: int | None,
    mode: str,
) -> None:
    """paircreate; with *consistency* (``-m grp [CTG]``) in CTG *ctg*, or a free one."""
    devs = await observe(client, devs)
    command = Command.FORM if split is None else Command.FORM_SPLIT
    reasons = _refusals(devs, command)
    for dev in devs:
        if dev.pair is not None and (dev.pair.pvol == dev.local.ldev) != local_is_pvol:
            side = "local" if local_is_pvol else "remote"
            reasons.append(
                f"{_where(dev)}: already paired the other way: the {side} volume is the "
                f"S-VOL; delete the pair (pairsplit -S) to change direction"
            )
    if reasons:
        raise CciError(EX_CMDRJE, *reasons)
    group: int | None = None
    if consistency:
        group = ctg if ctg is not None else await _free_ctg(client, devs)
    for dev in devs:
        pvol, svol = (dev.local, dev.remote) if local_is_pvol else (dev.remote, dev.local)
        await _checked(
            client.pair_create(
                format_ldev(pvol.ldev),
                format_ldev(svol.ldev),
                mode=mode,
                mu=dev.mu,
                group=group,
                pace=pace,
                split=split,
            )
        )


async def _free_ctg(client: ArrayClient, devs: list[Dev]) -> int:
    """The CTG the group's pairs already use, else the lowest one no pair uses."""
    for dev in devs:
        if dev.pair is not None and dev.pair.ctg is not None:
            return dev.pair.ctg
    used = {row["group"] for row in await _checked(client.pair_display({}))}
    return next(n for n in range(NO_GROUP) if n not in used)


async def command(
    client: ArrayClient, devs: list[Dev], command: Command, *, quick: bool = False
) -> None:
    """pairsplit (plain, -S, -E) and pairresync (plain, -restore) on *devs*."""
    devs = await observe(client, devs)
    reasons = _refusals(devs, command)
    if reasons:
        raise CciError(EX_CMDRJE, *reasons)
    paired = [d for d in devs if d.pair is not None]
    if not paired:
        return  # e.g. pairsplit -S of simplex volumes: nothing to do

    async def run(sel: dict[str, Any]) -> None:
        await _checked(client.pair_command(_OPS[command], sel, quick=quick))

    ctgs = {d.pair.ctg for d in paired if d.pair is not None}
    if len(ctgs) == 1 and len(paired) > 1 and (ctg := next(iter(ctgs))) is not None:
        in_ctg = [r for r in await _checked(client.pair_display({})) if r["group"] == ctg]
        mine = {d.pair.pvol for d in paired if d.pair is not None}
        if {parse_ldev(r["pvol"]) for r in in_ctg} == mine:
            await run({"group": ctg})  # the whole consistency group at one instant
            return
    for dev in paired:
        assert dev.pair is not None
        await run({"pvol": format_ldev(dev.pair.pvol)})
