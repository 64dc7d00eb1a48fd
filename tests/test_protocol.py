"""The protocol's transitions one by one, and the golden recovery scenarios.

``tests/golden/protocol/*.toml`` hold one scenario each: a node's persisted
state, then events and, after each, the actions the node must return (Log
actions left out), written compactly so that a reviewer can hold them
against the patent's flowcharts (docs/protocol.md gives the step numbers).
There is one file per branch of the recovery rules (Fig. 11 by own flag,
Fig. 12 by the standbys' flags, restarts, joins) and one per normal flow.
When a golden file disagrees, the failure prints the actual actions in the
file's own notation; changing a golden file means reviewing it again.

Notation of an action (``*`` is the scope ALL, every group):

* ``persist B1 SPLIT g role=STANDBY epoch=1``
* ``send START to n2 e2 s1 SPLIT g`` (epoch, round seq, op, group; STATE also
  shows ``flag`` and ``busy``, REFLECTED ``failed: detail`` when not ok)
* ``run-replica SPLIT g``, ``reflect *``, ``release-control g``, ``take-control *``
* ``hook svol-usable g``, ``reply ok: ...`` / ``reply failed: ...``
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from formats.state_file import NodeRole, NodeState, ReplicaFlag, ReplicaOp
from nodeagent.protocol import (
    ALL,
    CONSISTENT,
    HOOK_UNUSABLE,
    HOOK_USABLE,
    MAX_REFLECT_TRIES,
    RESTART,
    TAKEOVER,
    Action,
    ArrayResult,
    BecameActive,
    Body,
    Event,
    Hook,
    Log,
    MessageIn,
    MsgType,
    PeerDown,
    PeerUp,
    Persist,
    Phase,
    ProtocolNode,
    Reflect,
    ReflectResult,
    ReleaseControl,
    Reply,
    Request,
    Restarted,
    RunReplica,
    Send,
    TakeControl,
    Volatile,
)

F = ReplicaFlag
Op = ReplicaOp
GOLDEN = Path(__file__).parent / "golden" / "protocol"


# ---------------------------------------------------------------------------
# notation
# ---------------------------------------------------------------------------


def _scope(group: str) -> str:
    return "*" if group == ALL else group


def render(a: Action) -> str:
    if isinstance(a, Persist):
        s = a.state
        what = f"{s.flag.name} {s.op.name} {_scope(s.group)}"
        return f"persist {what} role={s.role.name} epoch={s.epoch}"
    if isinstance(a, Send):
        b = a.body
        text = f"send {a.type.value} to {a.node} e{b.epoch} s{b.seq} {b.op.name} {_scope(b.group)}"
        if a.type is MsgType.STATE:
            text += f" flag={b.flag.name} busy={b.busy}"
        if not b.ok:
            text += f" failed: {b.detail}"
        return text
    if isinstance(a, RunReplica):
        return f"run-replica {a.op.name} {_scope(a.group)}"
    if isinstance(a, Reflect):
        return f"reflect {_scope(a.group)}"
    if isinstance(a, ReleaseControl):
        return f"release-control {_scope(a.group)}"
    if isinstance(a, TakeControl):
        return f"take-control {_scope(a.group)}"
    if isinstance(a, Hook):
        return f"hook {a.name} {_scope(a.group)}"
    if isinstance(a, Reply):
        return f"reply {'ok' if a.ok else 'failed'}: {a.detail}"
    return f"log {a.message}"


def _flags(table: Mapping[str, str]) -> dict[str, ReplicaFlag]:
    return {node: ReplicaFlag[flag] for node, flag in table.items()}


def parse_event(d: Mapping[str, Any]) -> Event:
    kind = d["event"]
    if kind == "Request":
        return Request(ReplicaOp[d["op"]], d["group"])
    if kind == "MessageIn":
        body = Body(
            epoch=d["epoch"],
            seq=d.get("seq", 0),
            op=ReplicaOp[d.get("op", "NONE")],
            group=d.get("group", ALL),
            flag=ReplicaFlag[d.get("flag", "ZERO")],
            busy=d.get("busy", False),
            ok=d.get("ok", True),
            detail=d.get("detail", ""),
        )
        return MessageIn(d["from"], MsgType[d["type"]], body)
    if kind == "ArrayResult":
        return ArrayResult(d["ok"], d.get("detail", ""))
    if kind == "ReflectResult":
        return ReflectResult(d["ok"], d.get("detail", ""))
    if kind == "PeerDown":
        return PeerDown(d["node"])
    if kind == "PeerUp":
        return PeerUp(d["node"], ReplicaFlag[d.get("flag", "ZERO")])
    if kind == "BecameActive":
        return BecameActive(_flags(d.get("standbys", {})), d.get("epoch", 0))
    if kind == "Restarted":
        return Restarted(NodeRole[d["role"]], _flags(d.get("standbys", {})), d.get("epoch", 0))
    raise ValueError(f"unknown event {kind!r}")


def load_node(d: Mapping[str, Any]) -> ProtocolNode:
    st = d["state"]
    state = NodeState(
        flag=ReplicaFlag[st.get("flag", "ZERO")],
        role=NodeRole[st.get("role", "NONE")],
        epoch=st.get("epoch", 0),
        op=ReplicaOp[st.get("op", "NONE")],
        group=st.get("group", ALL),
    )
    live = frozenset(d.get("live", ()))
    return ProtocolNode(d["name"], state, groups=d.get("groups", ()), volatile=Volatile(live=live))


def actions_of(node: ProtocolNode, event: Event) -> list[str]:
    return [render(a) for a in node.handle(event) if not isinstance(a, Log)]


def _toml_list(lines: list[str]) -> str:
    if not lines:
        return "expect = []"
    inner = "".join(f'  "{x}",\n' for x in lines)
    return f"expect = [\n{inner}]"


# ---------------------------------------------------------------------------
# golden scenarios
# ---------------------------------------------------------------------------


def golden_files() -> list[Path]:
    return sorted(GOLDEN.glob("*.toml"))


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    scenario = tomllib.loads(path.read_text())
    node = load_node(scenario["node"])
    for n, step in enumerate(scenario["step"], 1):
        got = actions_of(node, parse_event(step))
        assert got == step["expect"], (
            f"{path.name} step {n} ({step['event']}): actual actions, in the file's notation:\n"
            f"{_toml_list(got)}"
        )
    final = scenario.get("final")
    if final is not None:
        assert node.state.flag is ReplicaFlag[final["flag"]]
        assert node.idle is final.get("idle", True)


def test_golden_files_cover_every_recovery_branch() -> None:
    """One file per Fig. 11 row (BecameActive by own flag) and restart as either role."""
    takeovers: set[ReplicaFlag] = set()
    restarts: set[tuple[str, ReplicaFlag]] = set()
    for path in golden_files():
        scenario = tomllib.loads(path.read_text())
        flag = ReplicaFlag[scenario["node"]["state"].get("flag", "ZERO")]
        first = scenario["step"][0]
        if first["event"] == "BecameActive":
            takeovers.add(flag)
        if first["event"] == "Restarted":
            restarts.add((first["role"], flag))
    assert takeovers == set(TAKEOVER), f"no golden takeover at {set(TAKEOVER) - takeovers}"
    assert {role for role, _ in restarts} == {"ACTIVE", "STANDBY"}


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------


def test_fig12_consistent_flags() -> None:
    # 0077-0078: "待機系状態フラグが0またはA2またはA3またはB3"
    assert {F.ZERO, F.A2, F.A3, F.B3} == CONSISTENT


def test_takeover_rows_match_fig11() -> None:
    starting = {f for f, row in TAKEOVER.items() if row.then is Phase.STARTING}
    own_view = {f for f, row in TAKEOVER.items() if row.then is Phase.OWN_VIEW}
    assert starting == {F.A1, F.B1}  # 1102: Stage X again
    assert own_view == {F.B2}  # 1108-1113: finish the reflection
    # 0, A2, A3, B3: nothing for the own view (1101, 1106-1107, 1108), straight to Fig. 12


def test_restart_never_replays_and_never_trusts() -> None:
    for flag, (new, why) in RESTART.items():
        assert new is F.B2 and new not in CONSISTENT and why, flag


# ---------------------------------------------------------------------------
# helpers for the unit tests
# ---------------------------------------------------------------------------

E = 3  # the epoch of the clusters below


def active(*standbys: str, groups: tuple[str, ...] = ("g",)) -> ProtocolNode:
    state = NodeState(role=NodeRole.ACTIVE, epoch=E)
    return ProtocolNode("a", state, groups=groups, volatile=Volatile(live=frozenset(standbys)))


def standby(name: str = "b", flag: ReplicaFlag = F.ZERO, op: ReplicaOp = Op.NONE) -> ProtocolNode:
    group = "g" if op is not Op.NONE else ALL
    state = NodeState(flag=flag, role=NodeRole.STANDBY, epoch=E, op=op, group=group)
    return ProtocolNode(name, state, groups=("g",))


def body(seq: int = 1, op: ReplicaOp = Op.SPLIT, group: str = "g", **kw: Any) -> Body:
    return Body(epoch=kw.pop("epoch", E), seq=seq, op=op, group=group, **kw)


def msg(sender: str, type_: MsgType, b: Body) -> MessageIn:
    return MessageIn(sender, type_, b)


def sends(actions: list[Action], type_: MsgType) -> list[str]:
    return [a.node for a in actions if isinstance(a, Send) and a.type is type_]


def quiet(actions: list[Action]) -> list[Action]:
    return [a for a in actions if not isinstance(a, Log)]


def to_reflecting(a: ProtocolNode, *standbys: str, op: ReplicaOp = Op.SPLIT) -> None:
    """Drive the active of a request up to Stage Y (DONE sent)."""
    a.handle(Request(op, "g"))
    for s in standbys:
        a.handle(msg(s, MsgType.START_ACK, body(op=op)))
    a.handle(ArrayResult(True))
    a.handle(ReflectResult(True))
    assert a.volatile.round is not None and a.volatile.round.phase is Phase.REFLECTING


# ---------------------------------------------------------------------------
# the active: requests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("groups", "op", "group", "why"),
    [
        ((), Op.SPLIT, "g", "no replica definition file"),
        (("g",), Op.NONE, "g", "no replica operation"),
        (("g",), Op.SPLIT, "h", "unknown replica group 'h'"),
    ],
)
def test_request_refused(groups: tuple[str, ...], op: ReplicaOp, group: str, why: str) -> None:
    a = active("b", groups=groups)
    out = a.handle(Request(op, group))
    assert len(out) == 1 and isinstance(out[0], Reply) and not out[0].ok
    assert not out[0].busy  # refused for good: the driver does not queue it
    assert why in out[0].detail
    assert a.idle and a.state.flag is F.ZERO


def test_request_while_busy_is_refused_and_changes_nothing() -> None:
    a = active("b")
    a.handle(Request(Op.SPLIT, "g"))
    before = (a.state, a.volatile)
    out = a.handle(Request(Op.RESYNC, "g"))
    assert out == [Reply(False, out[0].detail, busy=True)] and "busy" in out[0].detail  # type: ignore[union-attr]
    assert (a.state, a.volatile) == before


def test_request_to_a_standby_is_refused() -> None:
    out = standby().handle(Request(Op.SPLIT, "g"))
    assert len(out) == 1 and isinstance(out[0], Reply) and not out[0].ok


def test_split_without_standbys_runs_at_once() -> None:
    a = active()
    out = quiet(a.handle(Request(Op.SPLIT, "g")))
    assert out == [
        Hook(HOOK_UNUSABLE, "g"),
        Persist(replace(a.state)),
        RunReplica(Op.SPLIT, "g"),
    ]
    assert a.state.flag is F.A1
    assert quiet(a.handle(ArrayResult(True))) == [Reflect("g")]
    out = quiet(a.handle(ReflectResult(True)))
    # A2, no DONE to send (no A3), Stage Z at once
    assert [type(x) for x in out] == [Persist, Persist, TakeControl, Hook, Reply]
    assert out[0].state.flag is F.A2 and out[1].state.flag is F.ZERO  # type: ignore[union-attr]
    assert out[3] == Hook(HOOK_USABLE, "g") and out[4].ok  # type: ignore[union-attr]


def test_resync_neither_releases_nor_takes_nor_signals_usable() -> None:
    a = active("b")
    to_reflecting(a, "b", op=Op.RESYNC)
    out = quiet(a.handle(msg("b", MsgType.REFLECTED, body(op=Op.RESYNC))))
    kinds = {type(x) for x in out}
    assert TakeControl not in kinds and ReleaseControl not in kinds
    assert Hook not in kinds and isinstance(out[-1], Reply) and out[-1].ok


def test_failed_replica_still_reflects_and_reports_failure() -> None:
    a = active("b")
    a.handle(Request(Op.RESYNC, "g"))
    a.handle(msg("b", MsgType.START_ACK, body(op=Op.RESYNC)))
    assert quiet(a.handle(ArrayResult(False, "array refused"))) == [Reflect("g")]
    out = quiet(a.handle(ReflectResult(True)))
    # a failed resync may have left the S-VOL split and held: release it (D4)
    assert ReleaseControl("g") in out and sends(out, MsgType.DONE) == ["b"]
    out = quiet(a.handle(msg("b", MsgType.REFLECTED, body(op=Op.RESYNC))))
    assert TakeControl("g") in out
    assert not any(isinstance(x, Hook) for x in out)
    reply = out[-1]
    assert isinstance(reply, Reply) and not reply.ok and "array refused" in reply.detail
    assert a.state.flag is F.ZERO and a.idle


def test_start_ack_of_another_round_or_epoch_is_ignored() -> None:
    a = active("b")
    a.handle(Request(Op.SPLIT, "g"))
    for wrong in (body(seq=7), body(epoch=E - 1), body(epoch=E + 1)):
        assert quiet(a.handle(msg("b", MsgType.START_ACK, wrong))) == []
    assert a.state.flag is F.ZERO
    assert sends(a.handle(msg("c", MsgType.START_ACK, body())), MsgType.START) == []
    assert a.state.flag is F.ZERO  # c is no member
    out = a.handle(msg("b", MsgType.START_ACK, body()))
    assert RunReplica(Op.SPLIT, "g") in out


def test_peer_down_stops_the_wait() -> None:
    a = active("b", "c")
    a.handle(Request(Op.SPLIT, "g"))
    a.handle(msg("b", MsgType.START_ACK, body()))
    out = a.handle(PeerDown("c"))
    assert RunReplica(Op.SPLIT, "g") in out
    a.handle(ArrayResult(True))
    out = a.handle(ReflectResult(True))
    assert sends(out, MsgType.DONE) == ["b"]
    assert quiet(a.handle(PeerDown("zz"))) == []


def test_reflected_answered_with_reflected_ack() -> None:
    a = active("b", "c")
    to_reflecting(a, "b", "c")
    out = a.handle(msg("b", MsgType.REFLECTED, body()))
    assert sends(out, MsgType.REFLECTED_ACK) == ["b"] and a.state.flag is F.A3
    out = a.handle(msg("b", MsgType.REFLECTED, body()))  # duplicate
    assert quiet(out) == []


def test_reflection_failure_retried_then_given_up() -> None:
    a = active("b")
    to_reflecting(a, "b")
    failed = body(ok=False, detail="array unreachable")
    for _ in range(MAX_REFLECT_TRIES - 1):
        assert sends(a.handle(msg("b", MsgType.REFLECTED, failed)), MsgType.DONE) == ["b"]
    out = quiet(a.handle(msg("b", MsgType.REFLECTED, failed)))
    assert sends(out, MsgType.DONE) == [] and a.state.flag is F.ZERO
    # The array side succeeded, but the requester learns which live node is stale (D14).
    assert isinstance(out[-1], Reply) and not out[-1].ok
    assert "done on the array, but b could not reflect it" in out[-1].detail


# ---------------------------------------------------------------------------
# the active: heartbeats (D11) and joins (D8)
# ---------------------------------------------------------------------------


def state_of(flag: ReplicaFlag, seq: int = 1, busy: bool = False) -> Body:
    return body(seq=seq, flag=flag, busy=busy)


def test_heartbeat_at_b1_counts_as_start_ack() -> None:
    a = active("b")
    a.handle(Request(Op.SPLIT, "g"))
    out = a.handle(msg("b", MsgType.STATE, state_of(F.B1)))
    assert RunReplica(Op.SPLIT, "g") in out


def test_heartbeat_resends_a_lost_start() -> None:
    a = active("b")
    a.handle(Request(Op.SPLIT, "g"))
    assert sends(a.handle(msg("b", MsgType.STATE, state_of(F.ZERO, seq=0))), MsgType.START) == ["b"]
    # B1, but of an older round: START again
    out = a.handle(msg("b", MsgType.STATE, state_of(F.B1, seq=0)))
    assert sends(out, MsgType.START) == ["b"] and a.state.flag is F.ZERO


@pytest.mark.parametrize(
    ("flag", "busy", "seq", "resend"),
    [
        (F.B2, True, 1, False),  # reflecting for this round: wait
        (F.B2, True, 0, True),  # reflecting for something else
        (F.B2, False, 1, True),  # restarted, or its reflection failed
        (F.ZERO, False, 1, True),  # REFLECTED lost, or never told: 0 is ambiguous
        (F.B1, False, 1, True),  # DONE lost
        (F.B3, False, 1, True),
    ],
)
def test_heartbeat_while_waiting_for_reflected(
    flag: ReplicaFlag, busy: bool, seq: int, resend: bool
) -> None:
    a = active("b")
    to_reflecting(a, "b")
    out = a.handle(msg("b", MsgType.STATE, state_of(flag, seq, busy)))
    assert sends(out, MsgType.DONE) == (["b"] if resend else [])
    assert a.state.flag is F.A3  # a heartbeat never counts as REFLECTED


@pytest.mark.parametrize("flag", list(F))
def test_heartbeat_while_idle(flag: ReplicaFlag) -> None:
    a = active("b")
    out = quiet(a.handle(msg("b", MsgType.STATE, state_of(flag, seq=0))))
    if flag in CONSISTENT:
        assert out == [] and a.idle
    else:  # Fig. 12 "N": Stage Y for it, as a join round
        assert out == [
            ReleaseControl(ALL),
            Send("b", MsgType.DONE, Body(E, 1, Op.NONE, ALL)),
        ]
        out = quiet(a.handle(msg("b", MsgType.REFLECTED, Body(E, 1, Op.NONE, ALL))))
        assert out == [Send("b", MsgType.REFLECTED_ACK, Body(E, 1)), TakeControl(ALL)]
        assert a.idle and a.state.flag is F.ZERO


def test_heartbeat_while_idle_waits_for_a_busy_reflection() -> None:
    a = active("b")
    assert quiet(a.handle(msg("b", MsgType.STATE, state_of(F.B2, busy=True)))) == []


def test_heartbeat_of_an_unknown_node_is_ignored() -> None:
    a = active("b")
    assert quiet(a.handle(msg("z", MsgType.STATE, state_of(F.B1)))) == []


def test_join_while_starting_gets_start_and_is_waited_for() -> None:
    a = active("b")
    a.handle(Request(Op.SPLIT, "g"))
    out = a.handle(PeerUp("c", F.B2))
    assert sends(out, MsgType.START) == ["c"]
    a.handle(msg("b", MsgType.START_ACK, body()))
    assert a.state.flag is F.ZERO  # still waiting for c
    a.handle(msg("c", MsgType.START_ACK, body()))
    assert a.state.flag is F.A1
    a.handle(ArrayResult(True))
    out = quiet(a.handle(ReflectResult(True)))
    # c reflects every group (it joined); so the control right goes for every group
    assert ReleaseControl(ALL) in out
    assert Send("c", MsgType.DONE, Body(E, 1, Op.NONE, ALL)) in out
    assert Send("b", MsgType.DONE, body()) in out


def test_join_while_reflecting_is_waited_for_before_stage_z() -> None:
    a = active("b")
    to_reflecting(a, "b")
    out = quiet(a.handle(PeerUp("c")))
    assert out == [ReleaseControl(ALL), Send("c", MsgType.DONE, Body(E, 1, Op.NONE, ALL))]
    a.handle(msg("b", MsgType.REFLECTED, body()))
    assert a.state.flag is F.A3  # c not yet
    out = quiet(a.handle(msg("c", MsgType.REFLECTED, Body(E, 1, Op.NONE, ALL))))
    assert TakeControl(ALL) in out and Hook(HOOK_USABLE, "g") in out


def test_join_while_the_replica_runs_gets_the_intent() -> None:
    a = active("b")
    a.handle(Request(Op.SPLIT, "g"))
    a.handle(msg("b", MsgType.START_ACK, body()))
    out = quiet(a.handle(PeerUp("c")))
    assert out == [Send("c", MsgType.START, body())]  # not waited for: already running
    assert quiet(a.handle(msg("c", MsgType.START_ACK, body()))) == []


def test_peer_up_of_a_member_is_a_status() -> None:
    a = active("b")
    assert quiet(a.handle(PeerUp("b", F.ZERO))) == []
    assert sends(a.handle(PeerUp("b", F.B2)), MsgType.DONE) == ["b"]


def test_active_ignores_start_and_done() -> None:
    a = active("b")
    for t in (MsgType.START, MsgType.DONE):
        out = a.handle(msg("x", t, body(epoch=E + 5)))
        assert quiet(out) == [] and len(out) == 1 and "D15" in out[0].message  # type: ignore[union-attr]


def test_became_active_twice_is_ignored() -> None:
    a = active("b")
    out = a.handle(BecameActive({"b": F.ZERO}, 9))
    assert quiet(out) == [] and a.state.epoch == E


# ---------------------------------------------------------------------------
# the standby
# ---------------------------------------------------------------------------


def test_standby_start_done_reflected() -> None:
    b = standby()
    out = b.handle(msg("a", MsgType.START, body()))
    assert out == [
        Persist(NodeState(F.B1, NodeRole.STANDBY, E, Op.SPLIT, "g")),
        Send("a", MsgType.START_ACK, body()),
    ]
    out = b.handle(msg("a", MsgType.DONE, body()))
    assert out == [Persist(NodeState(F.B2, NodeRole.STANDBY, E, Op.SPLIT, "g")), Reflect("g")]
    assert b.status().busy
    out = b.handle(ReflectResult(True))
    assert out == [
        Persist(NodeState(F.B3, NodeRole.STANDBY, E, Op.SPLIT, "g")),
        Send("a", MsgType.REFLECTED, body()),
        Persist(NodeState(F.ZERO, NodeRole.STANDBY, E)),
    ]
    assert b.idle and b.status() == Body(E, 1)


def test_standby_adopts_a_newer_epoch_and_ignores_an_older_one() -> None:
    b = standby()
    out = quiet(b.handle(msg("x", MsgType.START, body(epoch=E - 1))))
    assert out == [] and b.state.flag is F.ZERO
    out = b.handle(msg("n", MsgType.DONE, body(epoch=E + 1, op=Op.NONE, group=ALL)))
    assert out[0] == Persist(NodeState(F.B2, NodeRole.STANDBY, E + 1, Op.NONE, ALL))
    assert out[1] == Reflect(ALL)


def test_standby_duplicate_start_is_acked_again_without_persisting() -> None:
    b = standby()
    b.handle(msg("a", MsgType.START, body()))
    assert b.handle(msg("a", MsgType.START, body())) == [Send("a", MsgType.START_ACK, body())]


def test_standby_done_during_a_reflection_reflects_again() -> None:
    b = standby()
    b.handle(msg("a", MsgType.DONE, body()))
    assert quiet(b.handle(msg("a", MsgType.DONE, body(seq=2)))) == []  # queued (D13)
    assert quiet(b.handle(ReflectResult(True))) == [Reflect("g")]  # first result discarded
    out = b.handle(ReflectResult(True))
    assert Send("a", MsgType.REFLECTED, body(seq=2)) in out and b.state.flag is F.ZERO


def test_standby_start_during_a_reflection_makes_it_obsolete() -> None:
    b = standby()
    b.handle(msg("a", MsgType.DONE, body()))
    b.handle(msg("a", MsgType.START, body(seq=2, op=Op.RESYNC)))
    out = quiet(b.handle(ReflectResult(True)))
    assert out == [] and b.state.flag is F.B1 and b.state.op is Op.RESYNC


def test_standby_reflection_failure_stays_b2() -> None:
    b = standby()
    b.handle(msg("a", MsgType.DONE, body()))
    out = quiet(b.handle(ReflectResult(False, "reserved by a")))
    assert out == [Send("a", MsgType.REFLECTED, body(ok=False, detail="reserved by a"))]
    assert b.state.flag is F.B2 and b.idle and not b.status().busy


@pytest.mark.parametrize("flag", list(F))
@pytest.mark.parametrize("ack", [MsgType.REFLECTED_ACK, MsgType.DONE_ACK])
def test_standby_ignores_acks_in_every_state(flag: ReplicaFlag, ack: MsgType) -> None:
    """The model check relies on this: it does not carry REFLECTED_ACK."""
    b = standby(flag=flag, op=Op.SPLIT if flag is not F.ZERO else Op.NONE)
    for prep in ([], [msg("a", MsgType.DONE, body())]):
        for ev in prep:
            b.handle(ev)
        before = (b.state, b.volatile)
        assert b.handle(msg("a", ack, body())) == []
        assert (b.state, b.volatile) == before


def test_standby_ignores_membership_events() -> None:
    b = standby()
    assert b.handle(PeerDown("a")) == [] and b.handle(PeerUp("c")) == []


def test_result_without_a_call_is_logged() -> None:
    b = standby()
    out = b.handle(ReflectResult(True))
    assert len(out) == 1 and isinstance(out[0], Log)


# ---------------------------------------------------------------------------
# restart and takeover details
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag", list(F))
def test_restart_as_standby_marks_the_view_unconfirmed(flag: ReplicaFlag) -> None:
    node = ProtocolNode("b", NodeState(flag, NodeRole.ACTIVE, 4, Op.SPLIT, "g"), groups=("g",))
    out = quiet(node.handle(Restarted(NodeRole.STANDBY)))
    assert out == [Persist(NodeState(F.B2, NodeRole.STANDBY, 4, Op.NONE, ALL))]


def test_became_active_during_a_reflection_reuses_the_call_slot() -> None:
    b = standby()
    b.handle(msg("a", MsgType.DONE, body()))  # Reflect("g") outstanding
    out = quiet(b.handle(BecameActive({"c": F.ZERO}, E + 1)))
    assert out == [Persist(NodeState(F.B2, NodeRole.ACTIVE, E + 1, Op.SPLIT, "g"))]
    # the old result is discarded and the takeover's own Reflect(ALL) issued (D13)
    assert quiet(b.handle(ReflectResult(True))) == [Reflect(ALL)]
    out = quiet(b.handle(ReflectResult(True)))
    assert out[0] == Persist(NodeState(F.A2, NodeRole.ACTIVE, E + 1, Op.SPLIT, "g"))
    assert Hook(HOOK_USABLE, "g") in out and b.state.flag is F.ZERO and b.idle


def test_takeover_epoch_is_newer_than_own() -> None:
    b = standby()
    b.handle(BecameActive({}, 0))
    assert b.state.epoch == E + 1 and b.state.role is NodeRole.ACTIVE


def test_body_round_trip_and_errors() -> None:
    b = Body(7, 3, Op.RESTORE, "grp", F.B2, True, False, "why")
    assert Body.from_dict(b.to_dict()) == b
    assert Body.from_dict({"epoch": 1}) == Body(1)
    with pytest.raises(ValueError, match="missing or unknown"):
        Body.from_dict({"seq": 1})
    with pytest.raises(ValueError, match="missing or unknown"):
        Body.from_dict({"epoch": 1, "op": "EXPLODE"})
    with pytest.raises(ValueError, match="integers"):
        Body.from_dict({"epoch": "1"})
    with pytest.raises(ValueError, match="booleans"):
        Body.from_dict({"epoch": 1, "busy": "yes"})
