"""The CCI pair commands: parse, ask the instance, print CCI's output, exit with CCI's code.

Each command is a thin client of its HORCM instance (``-I<n>``, ``-IM<n>`` or
``$HORCMINST``): the instance resolves the group and acts on the array; the
command turns the answer into pairdisplay text and exit statuses. Output
shapes and exit codes are described in ``cci/README.md``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import display, rpc, states
from .exitcodes import (
    EX_ENQVOL,
    EX_EWSTOT,
    EX_EWSUSE,
    EX_INVARG,
    EX_REQARG,
    CciError,
    report,
)
from .model import Dev
from .options import Options, parse
from .rundir import paths

#: How long a command waits for its instance to answer one request.
REQUEST_TIMEOUT = 300.0
#: pairevtwait's polling interval when -t gives none.
DEFAULT_INTERVAL = 0.5

USAGE = {
    "paircreate": "paircreate -g <group> [-d <dev>] -vl|-vr [-c <pace 1-15>] "
    "[-split [-fq normal|quick]] [-m grp [CTG]] [-I<n>|-IM<n>]",
    "pairsplit": "pairsplit -g <group> [-d <dev>] [-S | -E | -r | -rw] [-fq normal|quick] [-I<n>]",
    "pairresync": "pairresync -g <group> [-d <dev>] [-c <pace>] [-restore] [-I<n>]",
    "pairdisplay": "pairdisplay -g <group> [-d <dev>] [-fc] [-fx] [-fcx] [-CLI] [-l] [-I<n>]",
    "pairevtwait": "pairevtwait -g <group> [-d <dev>] -s <status>... [-ss <status>...] "
    "-t <timeout> [interval] | -nowait | -nowaits [-I<n>]",
    "pairvolchk": "pairvolchk -g <group> [-d <dev>] [-c] [-ss] [-I<n>]",
}


def _ask(opts: Options, env: Mapping[str, str], request: dict[str, Any]) -> list[Dev]:
    where = paths(opts.instance, env)
    body = {**opts.selector().to_json(), **request}
    answer = rpc.call(where.socket, body, timeout=REQUEST_TIMEOUT, label=where.label)
    return [Dev.from_json(d) for d in answer["devs"]]


def _split_mode(opts: Options, env: Mapping[str, str]) -> str:
    """-fq, else $HORCC_SPLT (CCI's default for it), else normal."""
    mode = (opts.one("-fq") or env.get("HORCC_SPLT") or "normal").lower()
    if mode not in ("normal", "quick"):
        raise CciError(EX_INVARG, f"split mode {mode!r}: expected normal or quick")
    return mode


def paircreate(opts: Options, env: Mapping[str, str]) -> int:
    vl, vr = opts.has("-vl"), opts.has("-vr")
    if vl == vr:
        raise CciError(
            EX_REQARG if not vl else EX_INVARG,
            "give exactly one of -vl (the local volumes become P-VOLs) and -vr "
            "(the remote ones do)",
        )
    pace = opts.integer("-c", 1, 15, 3)
    split = None
    if opts.has("-split"):
        split = "quick" if _split_mode(opts, env) == "quick" else "steady"
    elif opts.has("-fq"):
        raise CciError(EX_INVARG, "-fq goes with -split")
    consistency, ctg = False, None
    if opts.has("-m"):
        mode = opts.values["-m"]
        if mode[0] != "grp" or (len(mode) == 2 and not mode[1].isdigit()):
            raise CciError(
                EX_INVARG,
                "-m " + " ".join(mode) + ": blockemu supports -m grp [CTG] "
                "(a consistency group that splits at one instant)",
            )
        consistency, ctg = True, int(mode[1]) if len(mode) == 2 else None
    request = {
        "op": "create",
        "local_is_pvol": vl,
        "pace": pace,
        "split": split,
        "consistency": consistency,
        "ctg": ctg,
    }
    _ask(opts, env, request)
    return 0


def pairsplit(opts: Options, env: Mapping[str, str]) -> int:
    given = [o for o in ("-S", "-E", "-r", "-rw") if opts.has(o)]
    if len(given) > 1:
        raise CciError(EX_INVARG, f"{' and '.join(given)} exclude each other")
    command, quick = "split", False
    if opts.has("-S"):
        command = "delete"
    elif opts.has("-E"):
        command = "suspend"
    if command != "split" and opts.has("-fq"):
        raise CciError(EX_INVARG, "-fq goes with a plain split")
    if command == "split":
        quick = _split_mode(opts, env) == "quick"
    # -r/-rw choose the S-VOL's access after a split; blockemu's split S-VOL is read/write.
    _ask(opts, env, {"op": "command", "command": command, "quick": quick})
    return 0


def pairresync(opts: Options, env: Mapping[str, str]) -> int:
    opts.integer("-c", 1, 15, 3)  # checked like CCI; the array keeps the pair's creation pace
    command = "restore" if opts.has("-restore") else "resync"
    _ask(opts, env, {"op": "command", "command": command})
    return 0


def pairdisplay(opts: Options, env: Mapping[str, str]) -> int:
    devs = _ask(opts, env, {"op": "status"})
    text = display.render(
        display.rows(devs, local_only=opts.has("-l")),
        cli=opts.has("-CLI"),
        percent="c" in opts.formats,
        hex_ldev="x" in opts.formats,
    )
    sys.stdout.write(text)
    return 0


def _fold(statuses: list[str], what: str) -> int:
    try:
        return states.fold(statuses)
    except ValueError:
        raise CciError(EX_ENQVOL, f"{what}: " + ", ".join(statuses)) from None


def _wanted(opts: Options, name: str) -> set[int] | None:
    values = opts.values.get(name)
    if values is None:
        return None
    out: set[int] = set()
    for value in values:
        if value.lower() not in states.WAIT_NAMES:
            names = ", ".join(sorted(states.WAIT_NAMES))
            raise CciError(EX_INVARG, f"{name} {value!r}: expected one of {names}")
        out.add(states.number(value.upper()))
    return out


def pairevtwait(opts: Options, env: Mapping[str, str]) -> int:
    if opts.has("-nowait") or opts.has("-nowaits"):
        devs = _ask(opts, env, {"op": "status"})
        if opts.has("-nowaits"):
            return _fold([d.svol_status() for d in devs], "S-VOL statuses")
        return _fold([d.pvol_status() for d in devs], "P-VOL statuses")
    want_p, want_s = _wanted(opts, "-s"), _wanted(opts, "-ss")
    if want_p is None and want_s is None:
        raise CciError(
            EX_REQARG,
            "give the status to wait for: -s <status>... [-ss <status>...] "
            "(or -nowait to get it at once)",
        )
    times = opts.values.get("-t")
    if not times:
        raise CciError(EX_REQARG, "give -t <timeout seconds> [interval]")
    if not all(t.isdigit() for t in times):
        raise CciError(EX_INVARG, "-t " + " ".join(times) + ": expected whole seconds")
    deadline = time.monotonic() + int(times[0])
    interval = int(times[1]) if len(times) > 1 else DEFAULT_INTERVAL
    while True:
        devs = _ask(opts, env, {"op": "status"})
        pstat, sstat = [d.pvol_status() for d in devs], [d.svol_status() for d in devs]
        if all(
            (want_p is None or states.number(p) in want_p)
            and (want_s is None or states.number(s) in want_s)
            for p, s in zip(pstat, sstat, strict=True)
        ):
            if not opts.has("-nomsg"):
                print("pairevtwait : Wait status done.", flush=True)
            return 0
        if "PSUE" in pstat and 5 not in (want_p or set()) | (want_s or set()):
            suspended = [d.name for d in devs if d.pvol_status() == "PSUE"]
            raise CciError(EX_EWSUSE, "suspended (PSUE): " + ", ".join(suspended))
        if time.monotonic() >= deadline:
            now = ", ".join(f"{d.name} {p}/{s}" for d, p, s in zip(devs, pstat, sstat, strict=True))
            raise CciError(EX_EWSTOT, f"after {times[0]} s: {now} (P-VOL/S-VOL)")
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def pairvolchk(opts: Options, env: Mapping[str, str]) -> int:
    devs = _ask(opts, env, {"op": "status"})
    remote = opts.has("-c")  # -c: the remote volumes' attribute
    roles = sorted({d.role(remote) for d in devs})
    if len(roles) != 1:
        raise CciError(EX_ENQVOL, "volumes of the group are " + " and ".join(roles))
    role = roles[0]
    statuses = [d.status(remote) for d in devs]
    number = _fold(statuses, "statuses")
    code = states.volchk_code(role, number, with_status=opts.has("-ss"))
    if not opts.has("-nomsg"):
        if role == states.SIMPLEX:
            print("pairvolchk : Volstat is SMPL.", flush=True)
        else:
            name = next(s for s in statuses if states.number(s) == number)
            ctgs = {d.pair.ctg for d in devs if d.pair is not None}
            ctg = f" CTGID = {ctgs.pop()}" if len(ctgs) == 1 and None not in ctgs else ""
            print(f"pairvolchk : Volstat is {role}.[status = {name}{ctg}]", flush=True)
    return code


HANDLERS = {
    "paircreate": paircreate,
    "pairsplit": pairsplit,
    "pairresync": pairresync,
    "pairdisplay": pairdisplay,
    "pairevtwait": pairevtwait,
    "pairvolchk": pairvolchk,
}


def run(command: str, argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run one CCI pair command; returns its exit status."""
    try:
        opts = parse(command, argv, env)
        if opts.has("-h"):
            print(f"Usage: {USAGE[command]}")
            return 0
        return HANDLERS[command](opts, env)
    except CciError as exc:
        return report(command, exc)
    except KeyboardInterrupt:
        return 130
