"""``pairdisplay`` output: the classic layout and ``-CLI``, as scripts parse them.

Pure functions from :class:`cci.model.Dev` records to text. Two layouts, each
with the column after Status being the partner's Seq# or, with ``-fc``, the
copy percentage:

classic (a real ``pairdisplay -fcx`` of ShadowImage pairs, BC-exec's log)::

    Group   PairVol(L/R) (Port#,TID, LU-M) ,Seq#,LDEV#.P/S,Status,   % ,P-LDEV# M
    vgdbRPS 40:06_40:4b(L) (CL1-A-3, 3,   7-0 )85827  404b.S-VOL PAIR,   99    4006 -

``-CLI`` (Cinder's fixtures): one token per column, except that data rows
split ``LU-M`` into two tokens, so a data row has one token more than the
header and LDEV# is token 8, P/S 9, Status 10 and the partner's LDEV# 12::

    Group PairVol L/R Port# TID LU-M Seq# LDEV# P/S Status Seq# P-LDEV# M
    G     dev1    L   CL1-A-0   0 16 0 412345   16 P-VOL PSUS 412345   17 W

What blockemu has no equivalent for is filled in the same way every time:
every volume is on port ``CL1-A-0``, target ID 0, and its LU number is its
LDEV number (decimal); Seq# is the serial the HORCM file gives. The last
column M is ``W`` on a P-VOL whose pair is split (the S-VOL is writable),
``-`` otherwise. A simplex volume shows ``SMPL`` as P/S and dashes after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import states
from .model import Dev

PORT = "CL1-A-0"
TARGET_ID = 0


@dataclass(frozen=True)
class Row:
    """One line of pairdisplay: one volume of one dev_name."""

    group: str
    name: str
    side: str  # "L" or "R"
    lu: int
    mu: int
    serial: int
    ldev: int
    role: str  # P-VOL, S-VOL or SMPL
    status: str  # as CCI shows it: PAIR, SSUS, RCPY, ...
    percent: int | None  # None for SMPL
    partner_serial: int | None  # shown for a P-VOL only
    partner_ldev: int | None
    writable: bool  # the M column: W


def rows(devs: Sequence[Dev], *, local_only: bool = False) -> list[Row]:
    """The L row then the R row of each dev (only L rows with ``-l``)."""
    out: list[Row] = []
    for dev in devs:
        for remote in (False, True) if not local_only else (False,):
            vol = dev.side(remote)
            role, status = dev.role(remote), dev.status(remote)
            pair = dev.pair
            partner: int | None = None
            if pair is not None:
                partner = pair.svol if role == states.PVOL else pair.pvol
            out.append(
                Row(
                    group=dev.group,
                    name=dev.name,
                    side="R" if remote else "L",
                    lu=vol.ldev,
                    mu=dev.mu,
                    serial=vol.serial,
                    ldev=vol.ldev,
                    role=role,
                    status=status,
                    percent=None if pair is None else pair.copy_percent,
                    partner_serial=vol.serial if role == states.PVOL else None,
                    partner_ldev=partner,
                    writable=role == states.PVOL and status == "PSUS",
                )
            )
    return out


def _middle(r: Row, percent: bool) -> str | None:
    """The column after Status: copy % with -fc, else the partner's Seq# (P-VOL rows only)."""
    if percent:
        return str(r.percent)
    return None if r.partner_serial is None else str(r.partner_serial)


def _ldev(value: int, hex_ldev: bool) -> str:
    return f"{value:04x}" if hex_ldev else str(value)


def render(rows_: Sequence[Row], *, cli: bool, percent: bool, hex_ldev: bool) -> str:
    """The whole output, header included, ending with a newline."""
    if cli:
        return render_cli(rows_, percent=percent, hex_ldev=hex_ldev)
    return render_classic(rows_, percent=percent, hex_ldev=hex_ldev)


def render_classic(rows_: Sequence[Row], *, percent: bool, hex_ldev: bool) -> str:
    """The default layout (see the module docstring)."""
    gw = max([len("Group")] + [len(r.group) for r in rows_])
    pw = max([len("PairVol(L/R)")] + [len(r.name) + 3 for r in rows_])
    middle = "   % " if percent else " Seq#"
    lines = [
        f"{'Group':<{gw}} {'PairVol(L/R)':<{pw}} (Port#,TID, LU-M) ,Seq#,LDEV#.P/S,"
        f"Status,{middle},P-LDEV# M"
    ]
    for r in rows_:
        ldev = _ldev(r.ldev, hex_ldev)
        # CCI pads a short LDEV# with a second dot: "  18..P-VOL", "404b.S-VOL".
        ldev_field = f"{ldev:>4}" + ("." if len(ldev) >= 4 else "..")
        if r.role == states.SIMPLEX:
            ps, status, mid, partner, m = "SMPL", "----", "-----", "----", "-"
            if percent:
                mid = "-"
        else:
            ps, status, m = r.role, r.status, "W" if r.writable else "-"
            mid = _middle(r, percent) or "-----"
            partner = "----" if r.partner_ldev is None else _ldev(r.partner_ldev, hex_ldev)
        lines.append(
            f"{r.group:<{gw}} {r.name + '(' + r.side + ')':<{pw}} "
            f"({PORT},{TARGET_ID:>2}, {r.lu:>3}-{r.mu} ){r.serial}{ldev_field:>7}{ps} "
            f"{status},{mid:>5} {partner:>7} {m}"
        )
    return "\n".join(lines) + "\n"


_CLI_HEADER = (
    "Group",
    "PairVol",
    "L/R",
    "Port#",
    "TID",
    "LU-M",
    "Seq#",
    "LDEV#",
    "P/S",
    "Status",
    "Seq#",
    "P-LDEV#",
    "M",
)
# Data columns that are numbers: right-aligned, as CCI prints them.
_NUMERIC = frozenset({4, 5, 6, 7, 8, 11, 12})


def cli_tokens(r: Row, *, percent: bool, hex_ldev: bool) -> list[str]:
    """The 14 tokens of a ``-CLI`` data row."""
    head = [
        r.group,
        r.name,
        r.side,
        PORT,
        str(TARGET_ID),
        str(r.lu),
        str(r.mu),
        str(r.serial),
        _ldev(r.ldev, hex_ldev),
    ]
    if r.role == states.SIMPLEX:
        return [*head, "SMPL", "-", "-", "-", "-"]
    mid = _middle(r, percent) or "-"
    partner = "-" if r.partner_ldev is None else _ldev(r.partner_ldev, hex_ldev)
    return [*head, r.role, r.status, mid, partner, "W" if r.writable else "-"]


def render_cli(rows_: Sequence[Row], *, percent: bool, hex_ldev: bool) -> str:
    """The ``-CLI`` layout: whitespace-separated tokens, aligned for people."""
    header = list(_CLI_HEADER)
    if percent:
        header[10] = "%"
    data = [cli_tokens(r, percent=percent, hex_ldev=hex_ldev) for r in rows_]
    # Data column i sits under header column i, except LU and M (5, 6) under LU-M.
    width = [max([0] + [len(row[i]) for row in data]) for i in range(14)]
    under = [*range(5), 5, 5, *range(6, 13)]  # header column of each data column
    for i in range(14):
        if i not in (5, 6):
            width[i] = max(width[i], len(header[under[i]]))
    width[6] = max(width[6], len("LU-M") - width[5] - 1)
    spans = [*width[:5], width[5] + 1 + width[6], *width[7:]]
    lines = [" ".join(h.ljust(w) for h, w in zip(header, spans, strict=True)).rstrip()]
    for row in data:
        cells = [
            cell.rjust(width[i]) if i in _NUMERIC else cell.ljust(width[i])
            for i, cell in enumerate(row)
        ]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
