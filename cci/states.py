"""blockemu pair states as CCI shows them, and the numbers scripts read from exit codes.

One table, :data:`DISPLAY`, says what each side of a pair shows in
``pairdisplay`` for each blockemu state (DESIGN.md section 3; the research
note's table of SI states, section 1.2). The rest is arithmetic on it:

* ``pairevtwait -nowait``/``-nowaits`` exit with the status number
  SMPL 1, COPY (and RCPY) 2, PAIR 3, PSUS (and SSUS) 4, PSUE 5;
* ``pairvolchk`` exits 1 SMPL, 2 P-VOL, 3 S-VOL, or with ``-ss`` 11 for
  SMPL and 20/30 plus the status number for a P-VOL/S-VOL (22 = P-VOL COPY,
  34 = S-VOL SSUS, ...);
* a group's status is the "worst" of its volumes, by CCI's priority
  COPY > PSUE > PSUS > PAIR.

Why a separate quick-split row: after ``pairsplit -fq quick`` blockemu's pair
is PSUS at once but still copies in the background (its copy percentage is
below 100). Real ShadowImage shows that as PSUS on the P-VOL and COPY on the
S-VOL (research note 1.3, note 2), and refuses to delete the pair until the
copy is done; a script that waits for ``-ss ssus`` therefore waits for a
complete S-VOL, here as there.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Roles as pairdisplay prints them in the P/S column.
PVOL, SVOL, SIMPLEX = "P-VOL", "S-VOL", "SMPL"

#: Quick split still copying: a blockemu PSUS whose copy percentage is below 100.
PSUS_SP = "PSUS_SP"

#: blockemu state -> (what the P-VOL shows, what the S-VOL shows).
DISPLAY: dict[str, tuple[str, str]] = {
    "SMPL": ("SMPL", "SMPL"),
    "COPY": ("COPY", "COPY"),  # initial copy (COPY(PD))
    "PAIR": ("PAIR", "PAIR"),
    "COPY_SP": ("COPY", "COPY"),  # steady split draining (COPY(SP))
    "PSUS": ("PSUS", "SSUS"),
    PSUS_SP: ("PSUS", "COPY"),  # quick split, background copy (PSUS(SP))
    "COPY_RS": ("COPY", "COPY"),  # forward resync (COPY(RS))
    "COPY_RS_R": ("RCPY", "RCPY"),  # restore, S-VOL to P-VOL (COPY(RS-R))
    "PSUE": ("PSUE", "PSUE"),
}

#: pairevtwait -nowait / pairvolchk -ss numbering of a displayed status.
STATUS_NUMBER: dict[str, int] = {
    "SMPL": 1,
    "COPY": 2,
    "RCPY": 2,
    "PAIR": 3,
    "PSUS": 4,
    "SSUS": 4,
    "PSUE": 5,
}

#: Status names pairevtwait -s/-ss accepts (lower case, as CCI users type them).
WAIT_NAMES = frozenset(name.lower() for name in STATUS_NUMBER)

# Group folding: the highest rank wins (COPY > PSUE > PSUS > PAIR).
_RANK = {3: 0, 4: 1, 5: 2, 2: 3}


def blockemu_state(status: str, copy_percent: int) -> str:
    """The :data:`DISPLAY` key of a pair as ``pair_display`` reports it."""
    if status == "PSUS" and copy_percent < 100:
        return PSUS_SP
    return status


def shown(status: str, copy_percent: int, role: str) -> str:
    """The Status column for one volume: its *role* (P-VOL, S-VOL, SMPL) in that pair state."""
    if role == SIMPLEX:
        return "SMPL"
    pvol, svol = DISPLAY[blockemu_state(status, copy_percent)]
    return pvol if role == PVOL else svol


def number(status: str) -> int:
    """SMPL 1, COPY/RCPY 2, PAIR 3, PSUS/SSUS 4, PSUE 5."""
    return STATUS_NUMBER[status]


def fold(statuses: Iterable[str]) -> int:
    """The status number of a group of paired volumes (COPY > PSUE > PSUS > PAIR).

    SMPL (1) only when every volume is SMPL; ValueError for a mix of SMPL and
    paired volumes or an empty group, which CCI reports as EX_ENQVOL.
    """
    numbers = {number(s) for s in statuses}
    if not numbers:
        raise ValueError("no volumes")
    if 1 in numbers:
        if numbers == {1}:
            return 1
        raise ValueError("SMPL and paired volumes in one group")
    return max(numbers, key=_RANK.__getitem__)


def volchk_code(role: str, status_number: int, *, with_status: bool) -> int:
    """pairvolchk's exit status: 1/2/3 by role, or with ``-ss`` 11, 2x, 3x."""
    base = {SIMPLEX: 1, PVOL: 2, SVOL: 3}[role]
    if not with_status:
        return base
    return 11 if role == SIMPLEX else base * 10 + status_number
