"""The pair state table: every (state, command) cell against an independent copy."""

from __future__ import annotations

import itertools

import pytest

from blockemu.pairstate import TABLE, Command, Decision, Outcome, decide, settled
from formats.volume_header import PairStatus

SMPL = PairStatus.SMPL
COPY = PairStatus.COPY
PAIR = PairStatus.PAIR
COPY_SP = PairStatus.COPY_SP
PSUS = PairStatus.PSUS
COPY_RS = PairStatus.COPY_RS
COPY_RS_R = PairStatus.COPY_RS_R
PSUE = PairStatus.PSUE

FORM = Command.FORM
FORM_SPLIT = Command.FORM_SPLIT
SUSPEND = Command.SUSPEND
SPLIT = Command.SPLIT
DELETE = Command.DELETE
RESYNC = Command.RESYNC
RESTORE = Command.RESTORE

OK = "ok"  # accepted, nothing to do
R = "R"  # rejected

# Written from the issue's table and notes, not from the module: a tuple is an
# accepted command's path, OK and R as above.
EXPECTED: dict[PairStatus, dict[Command, tuple[PairStatus, ...] | str]] = {
    SMPL: {
        FORM: (COPY, PAIR),
        FORM_SPLIT: (COPY, PSUS),
        SUSPEND: R,
        SPLIT: R,
        DELETE: OK,
        RESYNC: R,
        RESTORE: R,
    },
    COPY: {
        FORM: OK,
        FORM_SPLIT: (COPY_SP, PSUS),
        SUSPEND: (PSUE,),
        SPLIT: (COPY_SP, PSUS),
        DELETE: (SMPL,),
        RESYNC: OK,
        RESTORE: R,
    },
    PAIR: {
        FORM: OK,
        FORM_SPLIT: (COPY_SP, PSUS),
        SUSPEND: (PSUE,),
        SPLIT: (COPY_SP, PSUS),
        DELETE: (SMPL,),
        RESYNC: OK,
        RESTORE: R,
    },
    COPY_SP: {
        FORM: R,
        FORM_SPLIT: OK,
        SUSPEND: (PSUE,),
        SPLIT: OK,
        DELETE: (SMPL,),
        RESYNC: R,
        RESTORE: R,
    },
    PSUS: {
        FORM: R,
        FORM_SPLIT: OK,
        SUSPEND: (PSUE,),
        SPLIT: OK,
        DELETE: (SMPL,),
        RESYNC: (COPY_RS, PAIR),
        RESTORE: (COPY_RS_R, PAIR),
    },
    COPY_RS: {
        FORM: OK,
        FORM_SPLIT: (COPY_SP, PSUS),
        SUSPEND: (PSUE,),
        SPLIT: (COPY_SP, PSUS),
        DELETE: (SMPL,),
        RESYNC: OK,
        RESTORE: R,
    },
    COPY_RS_R: {
        FORM: OK,
        FORM_SPLIT: R,
        SUSPEND: (PSUE,),
        SPLIT: R,
        DELETE: (SMPL,),
        RESYNC: OK,
        RESTORE: OK,
    },
    PSUE: {
        FORM: R,
        FORM_SPLIT: OK,
        SUSPEND: OK,
        SPLIT: OK,
        DELETE: (SMPL,),
        RESYNC: (COPY, PAIR),
        RESTORE: R,
    },
}

CELLS = [
    (state, command, expected)
    for state, row in EXPECTED.items()
    for command, expected in row.items()
]
REJECTED = [(state, command) for state, command, expected in CELLS if expected == R]
ACCEPTED = [(state, command) for state, command, expected in CELLS if isinstance(expected, tuple)]


def cell_id(value: object) -> str:
    if isinstance(value, PairStatus | Command):
        return value.name
    if isinstance(value, tuple):
        return ">".join(s.name for s in value)
    return str(value)


def test_expected_table_is_complete() -> None:
    """The test's own copy has every cell exactly once, so the parametrized test is exhaustive."""
    assert len(CELLS) == len(PairStatus) * len(Command) == 56
    assert {(s, c) for s, c, _ in CELLS} == set(itertools.product(PairStatus, Command))


@pytest.mark.parametrize(("state", "command", "expected"), CELLS, ids=cell_id)
def test_cell(state: PairStatus, command: Command, expected: tuple[PairStatus, ...] | str) -> None:
    decision = decide(state, command)
    assert decision is TABLE[state, command]
    if expected == OK:
        assert decision == Decision(Outcome.NOTHING, (), "")
    elif expected == R:
        assert decision.outcome is Outcome.REJECT
        assert decision.path == ()
    else:
        assert isinstance(expected, tuple)
        assert decision == Decision(Outcome.ACCEPT, expected, "")


def test_table_covers_every_combination() -> None:
    assert set(TABLE) == set(itertools.product(PairStatus, Command))
    assert len(TABLE) == 56


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TABLE[SMPL, FORM] = Decision(Outcome.NOTHING)  # type: ignore[index]


@pytest.mark.parametrize(("state", "command"), REJECTED, ids=cell_id)
def test_reject_reason_names_state_command_and_a_way_out(
    state: PairStatus, command: Command
) -> None:
    reason = decide(state, command).reason
    assert reason.strip()
    assert state.name in reason
    assert f"cannot {command.value}:" in reason
    assert "blockemu pair " in reason  # says what to run instead


def test_reasons_only_on_rejects() -> None:
    for (state, command), decision in TABLE.items():
        assert bool(decision.reason) == (decision.outcome is Outcome.REJECT), (state, command)
        assert bool(decision.path) == (decision.outcome is Outcome.ACCEPT), (state, command)


def test_example_reason_from_the_issue() -> None:
    assert decide(SMPL, SPLIT).reason.startswith(
        "cannot split: the volume is SMPL (not paired); form the pair first (blockemu pair create)"
    )


@pytest.mark.parametrize(("state", "command"), ACCEPTED, ids=cell_id)
def test_accept_path_passes_through_transitions_and_settles(
    state: PairStatus, command: Command
) -> None:
    *through, end = decide(state, command).path
    assert settled(end)
    assert not any(settled(s) for s in through)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (SMPL, True),
        (COPY, False),
        (PAIR, True),
        (COPY_SP, False),
        (PSUS, True),
        (COPY_RS, False),
        (COPY_RS_R, False),
        (PSUE, True),
    ],
    ids=cell_id,
)
def test_settled(state: PairStatus, expected: bool) -> None:
    assert settled(state) is expected


def test_every_state_is_reachable_from_smpl() -> None:
    seen = {SMPL}
    todo = [SMPL]
    while todo:
        state = todo.pop()
        for command in Command:
            for nxt in decide(state, command).path:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
    assert seen == set(PairStatus)


def test_decide_takes_the_raw_header_value() -> None:
    assert decide(int(PSUS), RESYNC) is TABLE[PSUS, RESYNC]  # type: ignore[arg-type]


def test_decide_refuses_what_is_not_a_pair_state() -> None:
    with pytest.raises(ValueError):
        decide(99, SPLIT)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("outcome", "path", "reason"),
    [
        (Outcome.ACCEPT, (), ""),
        (Outcome.NOTHING, (PAIR,), ""),
        (Outcome.REJECT, (), ""),
        (Outcome.NOTHING, (), "why"),
    ],
)
def test_decision_refuses_inconsistent_fields(
    outcome: Outcome, path: tuple[PairStatus, ...], reason: str
) -> None:
    with pytest.raises(ValueError):
        Decision(outcome, path, reason)
