"""Which pair command is accepted in which pair state, kept as data.

The rules of DESIGN.md section 3 (ShadowImage-style pair states) are written
below as one table, :data:`_GRID`, laid out like the table in the issue: one
row per pair state, one column per command. Every cell says one of

* ``ok`` -- accepted, nothing to do: the pair is already where the command
  would take it (:attr:`Outcome.NOTHING`);
* ``R`` -- rejected; :data:`_HINTS` holds what to do instead, and the reason
  names the state and the command (:attr:`Outcome.REJECT`);
* ``A>B>...`` -- accepted; the pair goes through states A, B, ... and settles
  in the last one (:attr:`Outcome.ACCEPT`).

Why a table and not code: the rules are a finite grid (8 states x 7 commands)
that people check against CCI manuals and issues cell by cell. As data they
can be read in one screen, changed in one place, and tested exhaustively; the
array server (to act), the CLI (to refuse early with the same words) and the
node agent (to bring the array to an intended state during recovery) all ask
the same table, so they cannot drift apart. This module does no I/O: carrying
out a path (copying, flushing, rewriting headers) is the caller's job.

Path choices. A path lists the states a pair shows from the moment the command
is accepted until the background work is done; the first element is the status
right after the command, the last one is settled (:func:`settled`):

* form from SMPL is ``COPY > PAIR``: the issue's "A -> COPY" is where it starts,
  PAIR is where the initial copy ends.
* form+split from SMPL is ``COPY > PSUS``: the end of the initial copy is the
  split instant, there are no mirrored writes to flush, so no COPY_SP.
* split from COPY, PAIR or COPY_RS is ``COPY_SP > PSUS``: a steady split first
  drains the journal or marked tracks (and finishes a running copy). A quick
  split may show PSUS at once; the path is the steady one.
* form+split of a pair that already exists (COPY, PAIR, COPY_RS) is the same as
  split, ``COPY_SP > PSUS``: the form part has nothing to do. (The issue's table
  shows only the end state, PSUS.)
* suspend goes straight to PSUE and delete straight to SMPL.
* resync from PSUS is ``COPY_RS > PAIR`` (differences only); from PSUE it is
  ``COPY > PAIR``, a full copy, because the difference bitmap cannot be trusted
  after an error.
* restore from PSUS is ``COPY_RS_R > PAIR``.

States the issue's table leaves out follow its notes: COPY_RS behaves like
COPY (restore rejected); COPY_SP is a split under way; COPY_RS_R is a restore
under way, which a split has to wait for.
"""

from __future__ import annotations

import enum
import itertools
import types
from collections.abc import Mapping
from dataclasses import dataclass

from formats.volume_header import PairStatus

__all__ = ["TABLE", "Command", "Decision", "Outcome", "decide", "settled"]


class Command(enum.Enum):
    """A pair command; the value is the name people use for it."""

    FORM = "form"
    FORM_SPLIT = "form+split"
    SUSPEND = "suspend"  # CCI pairsplit -E: stop mirroring, pair goes PSUE
    SPLIT = "split"
    DELETE = "delete"  # CCI pairsplit -S: back to SMPL
    RESYNC = "resync"  # P-VOL -> S-VOL, differences only
    RESTORE = "restore"  # reverse resync: S-VOL -> P-VOL differences


class Outcome(enum.Enum):
    """What the array does with a command in a given state."""

    ACCEPT = "accept"  # runs; the pair goes along Decision.path
    NOTHING = "nothing"  # accepted, nothing to do: already there
    REJECT = "reject"  # refused; Decision.reason says why and what to do


@dataclass(frozen=True)
class Decision:
    """The answer for one (state, command) cell.

    ``path`` is non-empty exactly for ACCEPT; ``reason`` exactly for REJECT.
    """

    outcome: Outcome
    path: tuple[PairStatus, ...] = ()
    reason: str = ""

    def __post_init__(self) -> None:
        if (self.outcome is Outcome.ACCEPT) != bool(self.path):
            raise ValueError(f"{self.outcome.name} decision with path {self.path!r}")
        if (self.outcome is Outcome.REJECT) != bool(self.reason):
            raise ValueError(f"{self.outcome.name} decision with reason {self.reason!r}")


_TRANSITIONAL = frozenset(
    {PairStatus.COPY, PairStatus.COPY_SP, PairStatus.COPY_RS, PairStatus.COPY_RS_R}
)


def settled(status: PairStatus) -> bool:
    """False for the states a pair only passes through (COPY, COPY_SP, COPY_RS, COPY_RS_R)."""
    return PairStatus(status) not in _TRANSITIONAL


# The table. Columns are in the order of the header line; see the module docstring.
_GRID = """
           FORM       FORM_SPLIT    SUSPEND SPLIT         DELETE RESYNC        RESTORE
SMPL       COPY>PAIR  COPY>PSUS     R       R             ok     R             R
COPY       ok         COPY_SP>PSUS  PSUE    COPY_SP>PSUS  SMPL   ok            R
PAIR       ok         COPY_SP>PSUS  PSUE    COPY_SP>PSUS  SMPL   ok            R
COPY_SP    R          ok            PSUE    ok            SMPL   R             R
PSUS       R          ok            PSUE    ok            SMPL   COPY_RS>PAIR  COPY_RS_R>PAIR
COPY_RS    ok         COPY_SP>PSUS  PSUE    COPY_SP>PSUS  SMPL   ok            R
COPY_RS_R  ok         R             PSUE    R             SMPL   ok            ok
PSUE       R          ok            ok      ok            SMPL   COPY>PAIR     R
"""

_MEANING = {
    PairStatus.SMPL: "not paired",
    PairStatus.COPY: "initial copy from P-VOL to S-VOL running",
    PairStatus.PAIR: "paired and mirroring",
    PairStatus.COPY_SP: "being split, flushing pending writes to the S-VOL",
    PairStatus.PSUS: "split",
    PairStatus.COPY_RS: "resync from P-VOL to S-VOL running",
    PairStatus.COPY_RS_R: "restore from S-VOL to P-VOL running",
    PairStatus.PSUE: "suspended after an error or a forced suspend",
}

# What to do instead, for every R cell of _GRID (and only those).
_CREATE = "form the pair first (blockemu pair create)"
_HINTS: dict[tuple[PairStatus, Command], str] = {
    (PairStatus.SMPL, Command.SUSPEND): (
        "nothing is mirrored, so nothing to stop; to pair it, use blockemu pair create"
    ),
    (PairStatus.SMPL, Command.SPLIT): (
        f"{_CREATE}, or form and split in one step (blockemu pair create --split)"
    ),
    (PairStatus.SMPL, Command.RESYNC): f"there is no pair to re-form; {_CREATE}",
    (PairStatus.SMPL, Command.RESTORE): (
        f"there is no S-VOL to copy back; {_CREATE} and split it (blockemu pair split)"
    ),
    (PairStatus.COPY, Command.RESTORE): (
        "restore copies a split S-VOL back; wait for PAIR, split (blockemu pair split), "
        "then restore"
    ),
    (PairStatus.PAIR, Command.RESTORE): (
        "restore copies a split S-VOL back; split first (blockemu pair split), then restore"
    ),
    (PairStatus.COPY_SP, Command.FORM): (
        "the pair exists and is being split; wait for PSUS, then re-form it with "
        "blockemu pair resync"
    ),
    (PairStatus.COPY_SP, Command.RESYNC): (
        "wait for the split to reach PSUS, then run blockemu pair resync"
    ),
    (PairStatus.COPY_SP, Command.RESTORE): (
        "wait for the split to reach PSUS, then run blockemu pair restore"
    ),
    (PairStatus.PSUS, Command.FORM): (
        "the pair already exists; re-form it with blockemu pair resync (P-VOL to S-VOL) "
        "or blockemu pair restore (S-VOL to P-VOL)"
    ),
    (PairStatus.COPY_RS, Command.RESTORE): (
        "a resync is copying the other way; wait for PAIR, split (blockemu pair split), "
        "then restore"
    ),
    (PairStatus.COPY_RS_R, Command.FORM_SPLIT): (
        "wait for the restore to reach PAIR, then run blockemu pair split"
    ),
    (PairStatus.COPY_RS_R, Command.SPLIT): (
        "wait for the restore to reach PAIR, then run blockemu pair split"
    ),
    (PairStatus.PSUE, Command.FORM): (
        "the pair already exists; re-form it with blockemu pair resync (a full copy), "
        "or delete it (blockemu pair delete) and form a new one"
    ),
    (PairStatus.PSUE, Command.RESTORE): (
        "the S-VOL may not be a consistent image after a suspend; resync instead "
        "(blockemu pair resync, a full P-VOL to S-VOL copy)"
    ),
}


def _reason(status: PairStatus, command: Command) -> str:
    return (
        f"cannot {command.value}: the volume is {status.name} ({_MEANING[status]}); "
        f"{_HINTS[status, command]}"
    )


def _cell(status: PairStatus, command: Command, text: str) -> Decision:
    if text == "ok":
        return Decision(Outcome.NOTHING)
    if text == "R":
        if (status, command) not in _HINTS:
            raise AssertionError(f"_GRID rejects {command.name} in {status.name} but no hint")
        return Decision(Outcome.REJECT, reason=_reason(status, command))
    path = tuple(PairStatus[name] for name in text.split(">"))
    if not settled(path[-1]):
        raise AssertionError(f"_GRID path {text} for {command.name} in {status.name} unsettled")
    return Decision(Outcome.ACCEPT, path=path)


def _names(cells: set[tuple[PairStatus, Command]]) -> str:
    return ", ".join(sorted(f"{s.name}/{c.name}" for s, c in cells))


def _parse(grid: str) -> dict[tuple[PairStatus, Command], Decision]:
    header, *rows = grid.strip().splitlines()
    commands = [Command[name] for name in header.split()]
    table: dict[tuple[PairStatus, Command], Decision] = {}
    for row in rows:
        state_name, *cells = row.split()
        status = PairStatus[state_name]
        if len(cells) != len(commands):
            raise AssertionError(f"_GRID row {state_name} has {len(cells)} cells")
        for command, text in zip(commands, cells, strict=True):
            table[status, command] = _cell(status, command, text)
    missing = set(itertools.product(PairStatus, Command)) - set(table)
    if missing:
        raise AssertionError(f"_GRID misses {_names(missing)}")
    spare = set(_HINTS) - {k for k, d in table.items() if d.outcome is Outcome.REJECT}
    if spare:
        raise AssertionError(f"_HINTS for cells that are not rejected: {_names(spare)}")
    return table


#: Every (state, command) combination and its decision; read-only.
TABLE: Mapping[tuple[PairStatus, Command], Decision] = types.MappingProxyType(_parse(_GRID))


def decide(status: PairStatus, command: Command) -> Decision:
    """What the array does with *command* on a pair in *status*.

    *status* may be the raw int stored in a volume header; ValueError if it is
    not a pair state.
    """
    return TABLE[PairStatus(status), Command(command)]
