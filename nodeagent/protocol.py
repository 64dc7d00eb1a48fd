"""The S-VOL consistency protocol as a pure state machine (DESIGN.md section 4).

What this module is
===================

The patent (JP 2003-057937, paragraphs 0017-0021 and 0036-0079) keeps the
disk-info buffers of an active node and its standbys consistent while the
active splits or re-forms a replica pair, and lets a survivor finish the job
when a node fails in the middle. This module is that protocol and nothing
else: no trio, no sockets, no files, no clock. In the manner of h11's
``_state.py`` a node is a value -- its persisted :class:`NodeState` plus a
:class:`Volatile` part that a crash loses -- and :meth:`ProtocolNode.handle`
maps (state, event) to (new state, list of actions). A driver (trio code,
written separately) performs the actions and feeds their outcomes back as
events. The tests crash a node between any two actions and check the
invariants of DESIGN.md section 4 over every reachable state.

Rule 1 (as in h11): everything that decides a transition lives in this file,
and as much of it as possible in the tables below, one row per box of the
patent's flowcharts, each row naming its patent step numbers so that a reader
can hold the table against Fig. 8-12. The code between the tables only
interprets them.

Rule 2: the protocol does no I/O. Every effect is an action; every outcome
is an event. ``handle`` is deterministic: sets are walked in sorted order.

Vocabulary
----------

*flag* -- the patent's VOL replica state flag, persisted in the state file
(:class:`formats.state_file.ReplicaFlag`): 0; A1 (replica about to run or
running), A2 (replica done, the active's own view re-read), A3 (standbys told,
waiting for their reflection) on the active; B1 (told a replica starts), B2
(told it is complete, reflecting), B3 (reflection done) on a standby.

*round* -- one pass of the protocol run by the active: a user's request
(:attr:`Kind.TXN`, Stage X, Y, Z), a takeover (:attr:`Kind.RECOVERY`,
Fig. 11 then Fig. 12) or bringing joining or stale standbys up to date
(:attr:`Kind.JOIN`, Stage Y and Z only). The active runs one round at a time.

*phase* -- where a round waits: :attr:`Phase.STARTING` (START sent, waiting
for START_ACK), :attr:`Phase.REPLICA` (the array runs the replica),
:attr:`Phase.OWN_VIEW` (re-reading its own view), :attr:`Phase.REFLECTING`
(DONE sent, waiting for REFLECTED). No round is "idle". A standby has no
phases; its flag says where it is.

*scope* -- the group whose S-VOLs an action concerns; :data:`ALL` (the empty
string) means every group of the definition file.

*live standbys* -- the nodes the active knows are up: given by
:class:`BecameActive` / :class:`Restarted`, grown by :class:`PeerUp`, shrunk
by :class:`PeerDown`. Electing the active and detecting failures is the
runtime's business, not this module's.

How the tables are used
-----------------------

Like h11, two kinds of transition. An *event-triggered* one records what an
event says (an ack came in, a peer went down, a call returned). A
*state-triggered* one fires when the wait of the current phase is over
(every START_ACK in, every REFLECTED in): :data:`ADVANCE` gives the steps to
run and the next phase. Rounds begin with :data:`BEGIN` (a request, a join)
or :data:`TAKEOVER` (by the node's own flag, Fig. 11). A standby reacts with
:data:`STANDBY`. A process that starts rewrites its flag with :data:`RESTART`
first. :data:`CONSISTENT` is Fig. 12's test of a standby's flag. Steps are
the members of :class:`Step`; each expands into zero or more actions in
:meth:`ProtocolNode._run`, and the conditions under which a step does nothing
(no standby to tell, an S-VOL that stays hidden) are written there and in the
comments of :class:`Step`.

The driver's contract
---------------------

* Perform the actions of one ``handle`` result in order, and finish a
  :class:`Persist` (write, fsync, rename) before performing anything after
  it. :class:`Send`, :class:`ReleaseControl`, :class:`TakeControl`,
  :class:`Hook`, :class:`Reply` and :class:`Log` are awaited in place; a
  failed Send is dropped (the heartbeat rules below resend). TakeControl
  preempts a reservation held by a node that is not a live member (fencing).
* :class:`RunReplica` and :class:`Reflect` are *calls*: they may take long,
  the driver runs them in the background and keeps feeding other events, and
  reports each one's end as exactly one :class:`ArrayResult` /
  :class:`ReflectResult`. The protocol never has two calls outstanding and
  always puts a call last in a list. RunReplica is idempotent on the array:
  it checks the pair state and runs only what has not happened (a split ends
  when the S-VOL is PSUS and visible, and leaves the caller holding the
  S-VOL's control right, as the array's volume manager does in paragraph
  0042; a resync or restore ends when the array accepted it). Reflect makes
  this node's buffer match the array for the scope: for a visible S-VOL read
  the PVID by physical name, take the control right (unless held already),
  read the volume info with that PVID, store both, release what it took; for
  a hidden one forget the entry.
* Links are connections: FIFO per pair of nodes, one per process
  incarnation. When a link breaks the driver reports :class:`PeerDown` after
  every message that arrived on it. When a standby's new incarnation
  connects, the active's driver reports PeerDown for the old link (if not
  done yet) and then :class:`PeerUp`, before anything that arrives on the
  new link; a Send goes down the link the driver has, so nothing the
  protocol sent before it saw PeerUp reaches the new incarnation. (The model
  check found that without this a restarted standby can reflect for a round
  that no longer counts it, end at 0, and miss the next replica.) A node
  whose links all broke while it stayed up (a partition) must restart its
  agent before it rejoins (DESIGN.md: a node whose checks fail stops and
  leaves; L1).
* The heartbeat: the driver of a standby sends ``STATE`` with
  :meth:`ProtocolNode.status` and feeds a standby's ``STATE`` to its active
  as a :class:`MessageIn`. It is the only retransmission timer there is and
  should fire well after a round trip (the model fires it only when nothing
  is in flight between the two nodes; earlier resends are harmless
  duplicates).
* The driver stamps :attr:`NodeState.updated`; the protocol never reads it.

Decisions (where the patent or DESIGN.md is silent or had to be refined)
-----------------------------------------------------------------------

D1. One round at a time. A request while a round runs, or while a standby is
    being brought up to date, is answered ``Reply(ok=False, "busy ...",
    busy=True)``; the driver keeps it in a queue and asks again when the
    node is idle (the monitoring loop of the patent) (paragraph 0062: the loop
    checks pending replica requests on every pass, after resuming an
    interrupted protocol).

D2. Hooks. ``svol-unusable`` is signalled when a request is accepted,
    before START: a resync or restore changes a split S-VOL the applications
    may use (for a split it is hidden anyway; the hook is harmless).
    ``svol-usable`` is signalled in Stage Z only after a split that
    succeeded (1005, 1117), never for resync or restore (the S-VOL is hidden).

D3. The active re-reads its own view with a :class:`Reflect` after the
    replica and before A2. DESIGN.md defines A2 as "replica done on the
    array; active's own view updated"; in the patent the replica ran through
    the active's own disk management and buffer (0042), here RunReplica
    talks to the array directly, so the active refreshes its buffer like a
    standby does (it holds the control right after a split, so it can).

D4. A failed replica (``ArrayResult(ok=False)``) still runs Stage Y and Z:
    the reflection makes every buffer match whatever the array holds, no
    standby is left at B1, and the user gets ``Reply(ok=False)``. A2 is
    persisted as usual, so a takeover does not retry a replica that failed.
    The request is reported failed even if the array changed after all; the
    views are consistent either way (invariant 3: never half). After a
    failed resync or restore the S-VOL may still be split and held by the
    active, so Stage Y releases the control right and Stage Z takes it back,
    as for a split (found by the model check); ``svol-usable`` is not
    signalled, the protocol does not know the array's state.

D5. Recovery order (Fig. 11, 12). The patent sets 0 and resumes S-VOL use
    (1114-1117) before it reflects the standbys (Fig. 12). That would tell
    the applications the S-VOL is usable while a standby's view is stale,
    against invariant 4, so here the standbys are reflected first (the flag
    is A3 meanwhile) and Stage Z -- 0, control right, ``svol-usable`` --
    comes last, as in a normal round.

D6. A takeover at A1/B1 re-runs Stage X towards *every* live standby
    (START, all acks, A1, RunReplica), not just the replica (1103-1104).
    Standbys that never saw the old active's START are at 0 yet stale once
    the replica runs, and if the new active dies while re-running, the
    standbys must know the intent (B1). Afterwards every live standby gets
    DONE (Stage Y for all, not only those whose flag is not consistent).

D7. A takeover by any other flag reflects the standbys whose flag is not
    consistent (1202: 0, A2, A3, B3 are), then ends with Stage Z. The active
    trusts its own view at 0, A2, A3 and B3 (1101, 1106, 1108); at B2 it
    re-reads it (1109-1113), which is also where every restarted process
    enters (D9). All DONEs of a recovery or a join have scope ALL (reflect
    every group): cheap, and it needs no knowledge of what the old active
    was doing to other groups. Stage Z of a recovery takes the control right
    on every visible S-VOL (resume S-VOL use, 1115-1116), whatever the flag.
    Under the driver's contract a live node never meets BecameActive at A1,
    A2, A3 (those live on the active) or B3 (B3, REFLECTED and 0 are one
    ``handle``); those rows serve an active demoted without a restart and
    are kept, each with a golden scenario.

D8. Joining. A :class:`PeerUp` of a node that is not a live member, or a
    standby whose heartbeat shows a flag that is not consistent while the
    active does not expect it to be busy, is brought up to date: while idle
    the active starts a JOIN round (ReleaseControl(ALL), DONE with scope ALL,
    wait for REFLECTED, TakeControl(ALL)); during a round the node is added
    to it -- it gets START if the replica has not finished (so its persisted
    intent is the current one), DONE with scope ALL in Stage Y, and Stage Z
    waits for it too (invariant 4). Releasing the control right is needed
    because the array refuses volume-info reads from other hosts while it is
    held; the active's own I/O goes on meanwhile.

D9. A restarted process never replays a persisted intent and never trusts
    its persisted view. :data:`RESTART` rewrites every flag to B2 with op
    NONE and scope ALL (as a standby: waiting for the active's DONE; as the
    active: re-read own view, reflect the standbys by their flags, Stage Z).
    Only a node that stayed up -- :class:`BecameActive` -- rolls an A1/B1
    intent forward (Fig. 11, 1102-1105). The patent rolls forward after a
    restart too (0057, 0072); the model check found why that is unsafe: a
    standby that crashed at B1 (split) and restarted was not yet a member
    when the active finished the split and ran a resync; the active died, the
    restarted node was elected and split the pair again, an operation nobody
    had asked for. The pair state cannot tell "not yet split" from "split and
    re-formed since", so an intent is only as good as the process that has
    followed every round since it was written. The cost: a request whose
    active restarts in place (instead of a standby holding the intent taking
    over) is neither finished nor answered -- its requester lost the
    connection anyway -- and the views are consistent either way (L3). B2 is
    not consistent, so a new active reflects such a node even if its join
    never completed.

D10. Epochs and rounds. Every message carries the sender's epoch and the
    round's ``seq``. A standby ignores START and DONE from an epoch older
    than the newest it has persisted (an old active's messages still in
    flight). The active accepts START_ACK and REFLECTED only with its epoch
    and the current round's seq, so an answer to an earlier round can never
    complete this one, whatever the network reorders. A new active's epoch
    is ``max(event.epoch, own epoch + 1)``.

D11. Loss. The heartbeat drives every resend. While the active waits for a
    standby's START_ACK and its STATE is not B1 with this round's seq, START
    is sent again (a STATE at B1 with this seq counts as the ack). While it
    waits for a REFLECTED and the standby is not busy reflecting for this
    round, DONE is sent again. A STATE never counts as REFLECTED: flag 0 is
    ambiguous (reflected, or never told). Duplicates are harmless: a
    standby re-acks a START and reflects again on a DONE.

D12. Acks. The standby sends REFLECTED and sets 0 without waiting for
    REFLECTED_ACK (the patent waits for receipt, 0053); the active still
    answers REFLECTED_ACK, which a standby logs. DONE_ACK is reserved and
    never sent: a REFLECTED for the round's seq proves the DONE arrived
    (0044's receipt check).

D13. One call at a time. If a call is due while one is outstanding (a DONE
    during a reflection, a takeover during one), the new call is queued, the
    outstanding one's result is discarded when it arrives and the queued one
    is issued: the result that is finally used always comes from a call made
    after the latest reason to make it.

D14. A standby whose reflection fails stays at B2 and answers REFLECTED with
    ok false; the active sends DONE again up to :data:`MAX_REFLECT_TRIES`
    times, then stops waiting for it (logged), and the request's Reply is
    ok false naming it (the array did the work; that node is stale). Its flag stays B2, so the
    next heartbeat starts a JOIN round for it again: it is retried at
    heartbeat pace and never counted as consistent. The runtime should fence
    a standby that stays there.

D15. The active ignores START and DONE (another node believes it is active:
    a partition, which the runtime and the array's reservations resolve) and
    logs them. A :class:`Request` to a standby is refused.

D16. Out-of-band changes. A pair split or re-formed on the array without
    the agent (a backup script calling the array directly) leaves every
    buffer stale. The active's runtime compares its own buffer with the
    array while idle and, on a difference, makes a request with op REFLECT:
    a normal round whose replica is a no-op, so Stage X records the intent,
    Stage Y reflects every standby and Stage Z ends it, and a crash anywhere
    is recovered like any other round. REFLECT is never rolled forward into
    an array command: there is nothing to run.

Known limits (the runtime has to cover them)
--------------------------------------------

L1. A node cut off by a partition while it stays up keeps a flag the
    protocol trusts: 0 as a consistent view, B1 as a current intent. It must
    restart its agent before it rejoins (the fenced side stops, DESIGN.md
    section 4); then D9 applies.

L2. A standby that cannot reflect (the array unreachable from it) is retried
    at heartbeat pace for ever and never counted as consistent (D14); the
    runtime should fence it.

L3. A request whose active dies before any standby has persisted its
    intent, or whose active is restarted in place, is lost: not answered,
    maybe applied (D9). The requester sees its connection drop and must
    check the pair state. The runtime should therefore elect a standby that
    stayed up rather than restart a crashed active as the active.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from formats.state_file import NodeRole, NodeState, ReplicaFlag, ReplicaOp

__all__ = [
    "ADVANCE",
    "ALL",
    "BEGIN",
    "CONSISTENT",
    "HOOK_UNUSABLE",
    "HOOK_USABLE",
    "MAX_REFLECT_TRIES",
    "RESTART",
    "STANDBY",
    "TAKEOVER",
    "Action",
    "ArrayResult",
    "BecameActive",
    "Body",
    "Event",
    "Hook",
    "Kind",
    "Log",
    "MessageIn",
    "MsgType",
    "PeerDown",
    "PeerUp",
    "Persist",
    "Phase",
    "ProtocolNode",
    "Reflect",
    "ReflectResult",
    "ReleaseControl",
    "Reply",
    "Request",
    "Restarted",
    "Round",
    "Row",
    "RunReplica",
    "Send",
    "Step",
    "TakeControl",
    "Volatile",
]

F = ReplicaFlag
Op = ReplicaOp

#: Scope meaning "every replica group of the definition file".
ALL = ""

#: Hook names (D2).
HOOK_UNUSABLE = "svol-unusable"
HOOK_USABLE = "svol-usable"

#: How often the active sends DONE again to a standby whose reflection failed (D14).
MAX_REFLECT_TRIES = 3

#: Operations after which the S-VOL is visible to hosts (split); resync and
#: restore hide it again.
SPLITS = frozenset({Op.SPLIT, Op.QUICK_SPLIT})


def _visible(op: ReplicaOp) -> bool:
    """May the S-VOL be visible after *op*? NONE (a join, a recovery) and REFLECT (an
    out-of-band change, D16) mean unknown: yes."""
    return op in SPLITS or op in (Op.NONE, Op.REFLECT)


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


class MsgType(enum.Enum):
    START = "START"  # active -> standby: a replica is about to run (0801, arrow 0881)
    START_ACK = "START_ACK"  # standby -> active: B1 persisted (arrow 0581 back)
    DONE = "DONE"  # active -> standby: change complete, reflect (0903, arrow 0981)
    DONE_ACK = "DONE_ACK"  # reserved, never sent (D12)
    REFLECTED = "REFLECTED"  # standby -> active: reflection done (1021, arrow 1081)
    REFLECTED_ACK = "REFLECTED_ACK"  # active -> standby: REFLECTED received (0053)
    STATE = "STATE"  # standby -> active: heartbeat with the flag (0704, arrow 0781)


@dataclass(frozen=True)
class Body:
    """The body of every message; unused fields keep their defaults.

    ``epoch`` and ``seq`` identify the sender's term and round (D10); ``op``
    and ``group`` the replica (``group`` :data:`ALL`: every group). For STATE,
    ``flag`` is the sender's flag and ``busy`` says a Reflect is running. For
    REFLECTED, ``ok`` and ``detail`` say how the reflection went.
    """

    epoch: int
    seq: int = 0
    op: ReplicaOp = Op.NONE
    group: str = ALL
    flag: ReplicaFlag = F.ZERO
    busy: bool = False
    ok: bool = True
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        """A JSON-able dict with enum names, for the wire."""
        return {
            "epoch": self.epoch,
            "seq": self.seq,
            "op": self.op.name,
            "group": self.group,
            "flag": self.flag.name,
            "busy": self.busy,
            "ok": self.ok,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Body:
        """Inverse of :meth:`to_dict`; ValueError names the bad field."""
        try:
            epoch, seq = data["epoch"], data.get("seq", 0)
            if not isinstance(epoch, int) or not isinstance(seq, int):
                raise ValueError("epoch and seq must be integers")
            op = ReplicaOp[str(data.get("op", "NONE"))]
            flag = ReplicaFlag[str(data.get("flag", "ZERO"))]
            group, detail = data.get("group", ALL), data.get("detail", "")
            busy, ok = data.get("busy", False), data.get("ok", True)
            if not isinstance(group, str) or not isinstance(detail, str):
                raise ValueError("group and detail must be strings")
            if not isinstance(busy, bool) or not isinstance(ok, bool):
                raise ValueError("busy and ok must be booleans")
        except KeyError as exc:
            raise ValueError(f"message body: missing or unknown {exc}") from None
        except ValueError as exc:
            raise ValueError(f"message body: {exc}") from None
        return cls(epoch, seq, op, group, flag, busy, ok, detail)


# ---------------------------------------------------------------------------
# Events (what the driver feeds in)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """The user asks the active to run *op* on replica *group*."""

    op: ReplicaOp
    group: str


@dataclass(frozen=True)
class MessageIn:
    sender: str
    type: MsgType
    body: Body


@dataclass(frozen=True)
class ArrayResult:
    """End of a :class:`RunReplica` call."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class ReflectResult:
    """End of a :class:`Reflect` call."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class PeerDown:
    node: str


@dataclass(frozen=True)
class PeerUp:
    """A standby connected (or its link came back), with the flag from its heartbeat."""

    node: str
    flag: ReplicaFlag = F.ZERO


@dataclass(frozen=True)
class BecameActive:
    """The runtime made this running node the active: recover by own flag (Fig. 11, 12).

    *standbys* are the live standbys and their flags; *epoch* the new term.
    """

    standbys: Mapping[str, ReplicaFlag] = field(default_factory=dict)
    epoch: int = 0


@dataclass(frozen=True)
class Restarted:
    """The process started with the persisted state; the runtime gives its role.

    For ACTIVE, *standbys* and *epoch* mean what they mean in :class:`BecameActive`.
    """

    role: NodeRole
    standbys: Mapping[str, ReplicaFlag] = field(default_factory=dict)
    epoch: int = 0


Event = (
    Request | MessageIn | ArrayResult | ReflectResult | PeerDown | PeerUp | BecameActive | Restarted
)


# ---------------------------------------------------------------------------
# Actions (what the driver performs)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Persist:
    """Write the state file (atomically) before performing any later action."""

    state: NodeState


@dataclass(frozen=True)
class Send:
    node: str
    type: MsgType
    body: Body


@dataclass(frozen=True)
class RunReplica:
    """Call: bring the array to *op* done on *group* (idempotent); ends with ArrayResult."""

    op: ReplicaOp
    group: str


@dataclass(frozen=True)
class ReleaseControl:
    """Release this node's control right on the scope's S-VOLs (no-op where not held)."""

    group: str


@dataclass(frozen=True)
class TakeControl:
    """Take the control right on the scope's visible S-VOLs (no-op for hidden ones)."""

    group: str


@dataclass(frozen=True)
class Reflect:
    """Call: make this node's buffer match the array for the scope; ends with ReflectResult."""

    group: str


@dataclass(frozen=True)
class Hook:
    """Tell the applications: :data:`HOOK_UNUSABLE` or :data:`HOOK_USABLE`."""

    name: str
    group: str


@dataclass(frozen=True)
class Reply:
    """Answer to the user's :class:`Request`. ``busy``: refused only because a round
    runs or a flag is not 0 (D1); the driver queues such a request and asks again."""

    ok: bool
    detail: str
    busy: bool = False


@dataclass(frozen=True)
class Log:
    message: str


Action = Persist | Send | RunReplica | ReleaseControl | TakeControl | Reflect | Hook | Reply | Log
Call = RunReplica | Reflect


# ---------------------------------------------------------------------------
# Rounds and volatile state
# ---------------------------------------------------------------------------


class Kind(enum.Enum):
    TXN = "request"  # a user's request: Stage X, Y, Z (Fig. 8, 9, 10)
    RECOVERY = "recovery"  # a takeover: Fig. 11, then Fig. 12, then Stage Z
    JOIN = "join"  # joining or stale standbys: Stage Y and Z only (D8)


class Phase(enum.Enum):
    STARTING = "Stage X: waiting for START_ACK"
    REPLICA = "Stage X: replica running on the array"
    OWN_VIEW = "Stage X: re-reading own view"
    REFLECTING = "Stage Y: waiting for REFLECTED"


@dataclass(frozen=True)
class Round:
    """The active's current round.

    ``targets`` get DONE in Stage Y, those in ``wide`` with scope ALL (joiners,
    recovery); ``acks`` and ``waiting`` are who has not answered START and DONE.
    """

    kind: Kind
    op: ReplicaOp
    group: str
    phase: Phase
    seq: int
    acks: frozenset[str] = frozenset()
    targets: frozenset[str] = frozenset()
    wide: frozenset[str] = frozenset()
    waiting: frozenset[str] = frozenset()
    tries: tuple[tuple[str, int], ...] = ()
    own_tries: int = 0
    reply: bool = False
    error: str = ""

    @property
    def scope(self) -> str:
        """The control-right scope: the group, or ALL once anybody reflects every group."""
        return self.group if self.kind is Kind.TXN and not self.wide else ALL

    @property
    def maybe_visible(self) -> bool:
        """May the S-VOL be visible now? After a split, or if unknown (a join, a failure)."""
        return _visible(self.op) or bool(self.error)

    @property
    def own_scope(self) -> str:
        return self.group if self.kind is Kind.TXN else ALL

    def describe(self) -> str:
        what = f"{self.op.name.lower()} of {self.group!r}" if self.op is not Op.NONE else "views"
        return f"{self.kind.value} ({what}): {self.phase.value}"


@dataclass(frozen=True)
class Volatile:
    """What a crash loses. Hashable, so a model checker can store it.

    ``live``: live standbys (active). ``round``: the active's round, None when
    idle. ``call``: the outstanding RunReplica/Reflect, ``queued``: the call to
    issue when it returns (D13). ``answer``: whom a standby tells REFLECTED,
    with the DONE's body. ``seq``: the active's last round number; a
    standby's last seq received (reported in STATE).
    """

    live: frozenset[str] = frozenset()
    round: Round | None = None
    call: Call | None = None
    queued: Call | None = None
    answer: tuple[str, Body] | None = None
    seq: int = 0


# ---------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------


class Step(enum.Enum):
    """One box of a flowchart. What it emits is in ProtocolNode._run."""

    # active
    PERSIST_TAKEOVER = "persist role ACTIVE and the new epoch (flag unchanged)"
    HOOK_UNUSABLE = "hook svol-unusable (D2)"
    SEND_START = "send START to every standby that has not acked"
    PERSIST_A1 = "persist A1"
    RUN_REPLICA = "call RunReplica"
    REFLECT_OWN = "call Reflect on own view (D3)"
    PERSIST_A2 = "persist A2"
    # "may be visible": after a split; unknown (a join, a recovery); after a failed replica
    RELEASE = "release the control right (if a DONE goes out and the S-VOL may be visible)"
    SEND_DONE = "send DONE to every target"
    PERSIST_A3 = "persist A3 (if a DONE went out)"
    PERSIST_0 = "persist 0"
    TAKE = "take the control right (if the S-VOL may be visible)"
    HOOK_USABLE = "hook svol-usable (after a split that succeeded)"
    REPLY = "reply to the user (if a request waits)"
    # standby
    PERSIST_B1 = "persist B1"
    SEND_START_ACK = "send START_ACK"
    PERSIST_B2 = "persist B2"
    REFLECT = "call Reflect on the DONE's scope"
    PERSIST_B3 = "persist B3"
    SEND_REFLECTED = "send REFLECTED"


S = Step


class Row(NamedTuple):
    steps: tuple[Step, ...]
    then: Phase | None  # the phase to wait in next; None: the round is over
    patent: str  # the flowchart boxes, paragraph numbers, or a decision


#: How a round begins (event-triggered: a request, a join).
BEGIN: Mapping[Kind, Row] = {
    Kind.TXN: Row(
        (S.HOOK_UNUSABLE, S.SEND_START), Phase.STARTING, "Fig. 8: 0801 notify start (0065); D2"
    ),
    Kind.JOIN: Row(
        (S.RELEASE, S.SEND_DONE), Phase.REFLECTING, "Fig. 9 left: 0902-0903 for joiners (D8)"
    ),
}

#: When the wait of a phase is over, run the steps and move on (state-triggered).
ADVANCE: Mapping[tuple[Kind, Phase], Row] = {
    # Stage X (Fig. 8, 0065)
    (Kind.TXN, Phase.STARTING): Row(
        (S.PERSIST_A1, S.RUN_REPLICA), Phase.REPLICA, "0802 set A1, 0803 run replica"
    ),
    (Kind.TXN, Phase.REPLICA): Row((S.REFLECT_OWN,), Phase.OWN_VIEW, "A2's own view (D3)"),
    # 0804 set A2, then Stage Y (Fig. 9 left, 0067)
    (Kind.TXN, Phase.OWN_VIEW): Row(
        (S.PERSIST_A2, S.RELEASE, S.SEND_DONE, S.PERSIST_A3),
        Phase.REFLECTING,
        "0804 set A2; 0901-0902 split: release S-VOL; 0903 notify done; 0904 set A3",
    ),
    # Stage Z (Fig. 10 left, 0069)
    (Kind.TXN, Phase.REFLECTING): Row(
        (S.PERSIST_0, S.TAKE, S.HOOK_USABLE, S.REPLY),
        None,
        "1001-1002 set 0; 1003-1004 split: take S-VOL; 1005 tell applications",
    ),
    # Recovery (Fig. 11 and 12, D5-D7): Stage X again, then Y, then Z
    (Kind.RECOVERY, Phase.STARTING): Row(
        (S.PERSIST_A1, S.RUN_REPLICA), Phase.REPLICA, "1103-1104 (= 0802-0803); D6"
    ),
    (Kind.RECOVERY, Phase.REPLICA): Row((S.REFLECT_OWN,), Phase.OWN_VIEW, "1105's own view (D3)"),
    (Kind.RECOVERY, Phase.OWN_VIEW): Row(
        (S.PERSIST_A2, S.RELEASE, S.SEND_DONE, S.PERSIST_A3),
        Phase.REFLECTING,
        "1105 / 1209 set A2; Fig. 12 -> Fig. 9 left for the standbys",
    ),
    (Kind.RECOVERY, Phase.REFLECTING): Row(
        (S.PERSIST_0, S.TAKE, S.HOOK_USABLE),
        None,
        "1114 set 0; 1115-1117 resume S-VOL use -- after the standbys (D5)",
    ),
    # Join (D8)
    (Kind.JOIN, Phase.REFLECTING): Row((S.TAKE,), None, "1004 take S-VOL back (D8)"),
}

_STAGE_Y = (S.PERSIST_TAKEOVER, S.RELEASE, S.SEND_DONE, S.PERSIST_A3)

#: Fig. 11: what a node that becomes the active (BecameActive) does first, by its own flag.
#: A restarted process always enters at B2 (RESTART, D9).
TAKEOVER: Mapping[ReplicaFlag, Row] = {
    F.ZERO: Row(_STAGE_Y, Phase.REFLECTING, "1101: view consistent; Fig. 12 for the standbys"),
    F.A1: Row(
        (S.PERSIST_TAKEOVER, S.SEND_START),
        Phase.STARTING,
        "1102-1105: replica may not have run: Stage X again, to every standby (D6)",
    ),
    F.B1: Row(
        (S.PERSIST_TAKEOVER, S.SEND_START),
        Phase.STARTING,
        "1102-1105: replica may not have run: Stage X again, to every standby (D6)",
    ),
    F.A2: Row(_STAGE_Y, Phase.REFLECTING, "1106-1107: stop waiting for the old standbys"),
    F.A3: Row(_STAGE_Y, Phase.REFLECTING, "1106-1107: stop waiting for the old standbys"),
    F.B2: Row(
        (S.PERSIST_TAKEOVER, S.REFLECT_OWN),
        Phase.OWN_VIEW,
        "1108-1113: finish the reflection it had started (= 0923-0927)",
    ),
    F.B3: Row(_STAGE_Y, Phase.REFLECTING, "1108: reflection was complete; nothing"),
}

#: Fig. 12 (1202, 1222): a standby at one of these flags has a consistent view.
CONSISTENT: frozenset[ReplicaFlag] = frozenset({F.ZERO, F.A2, F.A3, F.B3})

#: What a standby does on a message (Fig. 8, 9, 10 right) and when its reflection is done.
STANDBY: Mapping[MsgType | str, Row] = {
    MsgType.START: Row(
        (S.PERSIST_B1, S.SEND_START_ACK), None, "0821 receive; 0822 set B1; ack (0524)"
    ),
    MsgType.DONE: Row(
        (S.PERSIST_B2, S.REFLECT),
        None,
        "0921 receive; 0922 set B2; 0923-0928 split: PVID, lock, info, unlock; 0924 form: delete",
    ),
    "reflected": Row(
        (S.PERSIST_B3, S.SEND_REFLECTED, S.PERSIST_0),
        None,
        "0929 set B3; 1021 notify reflected; 1022 set 0",
    ),
}

#: D9: a restarted process (as standby or as active) rewrites its flag before anything
#: else: its view is unconfirmed and a persisted intent is never replayed. Every flag
#: becomes B2 with op NONE and scope ALL; the reason per flag:
RESTART: Mapping[ReplicaFlag, tuple[ReplicaFlag, str]] = {
    F.ZERO: (F.B2, "may have missed a change while it was down"),
    F.A1: (F.B2, "intent may be stale: another active may have finished it and moved on"),
    F.B1: (F.B2, "intent may be stale: another active may have finished it and moved on"),
    F.A2: (F.B2, "replica done, but the view may be stale since"),
    F.A3: (F.B2, "replica done, but the view may be stale since"),
    F.B2: (F.B2, "reflection unfinished"),
    F.B3: (F.B2, "reflection done, but the view may be stale since"),
}


def _check_tables() -> None:
    for kind in Kind:
        for phase in Phase:
            reachable = kind is not Kind.JOIN or phase is Phase.REFLECTING
            if reachable and (kind, phase) not in ADVANCE:
                raise AssertionError(f"ADVANCE misses ({kind}, {phase})")
    if set(TAKEOVER) != set(F) or set(RESTART) != set(F):
        raise AssertionError("TAKEOVER and RESTART must cover every flag")
    for flag, (new, _) in RESTART.items():
        if new in CONSISTENT or TAKEOVER[new].then is Phase.STARTING:
            raise AssertionError(f"a restart at {flag.name} must not look consistent or replay")


_check_tables()


# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------


class ProtocolNode:
    """One node's protocol state; :meth:`handle` is the only way it changes.

    *state* is what the state file holds (NodeState() if there is none);
    *groups* the replica groups of the definition file (pre-processing,
    0601-0604: without a definition file there is nothing to protect and
    every request is refused). *volatile* is for model checkers; a real
    process starts without one and is told :class:`Restarted`.
    """

    def __init__(
        self,
        name: str,
        state: NodeState | None = None,
        *,
        groups: Iterable[str] = (),
        volatile: Volatile | None = None,
    ) -> None:
        self.name = name
        self.groups = tuple(groups)
        self.state = state if state is not None else NodeState()
        self.volatile = volatile if volatile is not None else Volatile()
        self._out: list[Action] = []

    # -- public ------------------------------------------------------------

    @property
    def role(self) -> NodeRole:
        return self.state.role

    @property
    def idle(self) -> bool:
        """No round, no call, no pending answer."""
        v = self.volatile
        return v.round is None and v.call is None and v.queued is None and v.answer is None

    def status(self) -> Body:
        """The body of this node's heartbeat STATE message."""
        return Body(
            epoch=self.state.epoch,
            seq=self.volatile.seq,
            op=self.state.op,
            group=self.state.group,
            flag=self.state.flag,
            busy=isinstance(self.volatile.call, Reflect),
        )

    def handle(self, event: Event) -> list[Action]:
        """Feed one event; return the actions to perform, in order."""
        self._out = []
        if isinstance(event, Restarted):
            self._restarted(event)
        elif isinstance(event, BecameActive):
            if self.role is NodeRole.ACTIVE:
                self._log(f"already active (epoch {self.state.epoch}); takeover ignored")
            else:
                self._takeover(event.standbys, event.epoch)
        elif isinstance(event, ArrayResult | ReflectResult):
            self._result(event)
        elif self.role is NodeRole.ACTIVE:
            self._active(event)
        else:
            self._standby(event)
        out, self._out = self._out, []
        return out

    # -- small helpers -----------------------------------------------------

    def _emit(self, action: Action) -> None:
        self._out.append(action)

    def _log(self, message: str) -> None:
        self._out.append(Log(f"{self.name}: {message}"))

    def _set(self, **changes: object) -> None:
        self.volatile = replace(self.volatile, **changes)  # type: ignore[arg-type]

    def _set_round(self, round_: Round | None) -> None:
        self.volatile = replace(self.volatile, round=round_)

    def _persist(
        self,
        flag: ReplicaFlag,
        op: ReplicaOp | None = None,
        group: str | None = None,
        **changes: object,
    ) -> None:
        if flag is F.ZERO:
            op, group = Op.NONE, ALL
        new = replace(
            self.state,
            flag=flag,
            op=self.state.op if op is None else op,
            group=self.state.group if group is None else group,
            **changes,  # type: ignore[arg-type]
        )
        if new != self.state:
            self.state = new
            self._emit(Persist(new))

    def _call(self, call: Call) -> None:
        """Issue *call*, or queue it behind the outstanding one (D13)."""
        if self.volatile.call is None:
            self._set(call=call)
            self._emit(call)
        else:
            self._set(queued=call)

    def _body(self, round_: Round, *, wide: bool = False) -> Body:
        if wide:
            return Body(self.state.epoch, round_.seq, Op.NONE, ALL)
        return Body(self.state.epoch, round_.seq, round_.op, round_.group)

    def _send_done(self, node: str, round_: Round) -> None:
        self._emit(Send(node, MsgType.DONE, self._body(round_, wide=node in round_.wide)))

    # -- the interpreter ---------------------------------------------------

    def _run(self, steps: tuple[Step, ...]) -> None:
        """Expand table steps into actions, for the current round (active) or answer."""
        for step in steps:
            r = self.volatile.round
            if step is S.PERSIST_TAKEOVER:
                self._emit(Persist(self.state))  # _takeover set role and epoch in memory
            elif r is None:
                self._standby_step(step)
            elif step is S.HOOK_UNUSABLE:
                self._emit(Hook(HOOK_UNUSABLE, r.group))
            elif step is S.SEND_START:
                for node in sorted(r.acks):
                    self._emit(Send(node, MsgType.START, self._body(r)))
            elif step is S.PERSIST_A1:
                self._persist(F.A1, r.op, r.group)
            elif step is S.RUN_REPLICA:
                self._call(RunReplica(r.op, r.group))
            elif step is S.REFLECT_OWN:
                self._call(Reflect(r.own_scope))
            elif step is S.PERSIST_A2:
                self._persist(F.A2, r.op, r.group)
            elif step is S.RELEASE:
                if r.targets and (r.maybe_visible or r.scope == ALL):
                    self._emit(ReleaseControl(r.scope))
            elif step is S.SEND_DONE:
                for node in sorted(r.targets):
                    self._send_done(node, r)
                self._set_round(replace(r, waiting=r.targets))
            elif step is S.PERSIST_A3:
                if r.targets:
                    self._persist(F.A3, r.op, r.group)
            elif step is S.PERSIST_0:
                self._persist(F.ZERO)
            elif step is S.TAKE:
                if r.maybe_visible or r.scope == ALL:
                    self._emit(TakeControl(r.scope))
            elif step is S.HOOK_USABLE:
                if r.op in SPLITS and not r.error:
                    self._emit(Hook(HOOK_USABLE, r.group))
            elif step is S.REPLY:
                if r.reply:
                    self._emit(self._reply(r))
            else:
                raise AssertionError(f"{step} is a standby step")

    def _standby_step(self, step: Step) -> None:
        answer = self.volatile.answer
        if answer is None:
            raise AssertionError(f"{step} without a message to answer")
        sender, body = answer
        if step is S.PERSIST_B1:
            self._persist(F.B1, body.op, body.group, epoch=body.epoch)
        elif step is S.SEND_START_ACK:
            self._emit(Send(sender, MsgType.START_ACK, body))
            self._set(answer=None)  # nothing more to say about a START
        elif step is S.PERSIST_B2:
            self._persist(F.B2, body.op, body.group, epoch=body.epoch)
        elif step is S.REFLECT:
            self._call(Reflect(body.group))
        elif step is S.PERSIST_B3:
            self._persist(F.B3)
        elif step is S.SEND_REFLECTED:
            self._emit(Send(sender, MsgType.REFLECTED, body))
        elif step is S.PERSIST_0:
            self._persist(F.ZERO)
            self._set(answer=None)
        else:
            raise AssertionError(f"{step} is an active step")

    def _reply(self, r: Round) -> Reply:
        what = f"{r.op.name.lower()} of {r.group!r}"
        stale = sorted(node for node, tries in r.tries if tries >= MAX_REFLECT_TRIES)
        if r.error:
            return Reply(
                False,
                f"{what} failed: {r.error}; every live node's view now shows the array as it is",
            )
        if stale:  # D14: the array did it, but these live nodes could not follow
            names = ", ".join(stale)
            return Reply(
                False,
                f"{what} done on the array, but {names} could not reflect it (D14): "
                "their views are stale until they reflect again",
            )
        return Reply(True, f"{what} done; every live node's view is consistent")

    # -- state-triggered transitions -----------------------------------------

    def _go(self, row: Row) -> None:
        self._run(row.steps)
        r = self.volatile.round
        if r is not None:
            self._set_round(None if row.then is None else replace(r, phase=row.then))

    def _advance(self) -> None:
        """Fire ADVANCE while the current phase's wait is over."""
        while (r := self.volatile.round) is not None:
            over = (r.phase is Phase.STARTING and not r.acks) or (
                r.phase is Phase.REFLECTING and not r.waiting
            )
            if not over:
                return
            self._go(ADVANCE[r.kind, r.phase])

    # -- takeover and restart ----------------------------------------------

    def _takeover(self, standbys: Mapping[str, ReplicaFlag], epoch: int) -> None:
        """Fig. 11 by own flag, then Fig. 12 for the standbys, then Stage Z (D5-D7)."""
        st = self.state
        flag, op = st.flag, st.op
        row = TAKEOVER[flag]
        if flag in (F.A1, F.B1) and op is Op.NONE:  # no intent to roll forward: re-read view
            row = TAKEOVER[F.B2]
        live = frozenset(standbys) - {self.name}
        seq = self.volatile.seq + 1
        if row.then is Phase.STARTING:
            targets = live  # D6: every live standby gets START and DONE
        else:
            targets = frozenset(n for n in live if ReplicaFlag(standbys[n]) not in CONSISTENT)
        self.state = replace(st, role=NodeRole.ACTIVE, epoch=max(epoch, st.epoch + 1))
        self._set(live=live, answer=None, seq=seq)
        self._set_round(
            Round(
                Kind.RECOVERY,
                op,
                st.group if op is not Op.NONE else ALL,
                Phase.STARTING,
                seq,
                acks=live if row.then is Phase.STARTING else frozenset(),
                targets=targets,
                wide=targets,
            )
        )
        flags = ", ".join(f"{n}={ReplicaFlag(f).name}" for n, f in sorted(standbys.items()))
        self._log(f"takeover at {flag.name} (epoch {self.state.epoch}): {row.patent}; {flags}")
        self._go(row)
        self._advance()

    def _restarted(self, ev: Restarted) -> None:
        self.volatile = Volatile(seq=self.volatile.seq)
        flag = self.state.flag
        new, why = RESTART[flag]
        self._log(f"restarted as {ev.role.name} at {flag.name}: now {new.name}, {why} (D9)")
        if ev.role is NodeRole.ACTIVE:
            self.state = replace(self.state, flag=new, op=Op.NONE, group=ALL)
            self._takeover(ev.standbys, ev.epoch)  # persists it
        else:
            self._persist(new, Op.NONE, ALL, role=ev.role)

    # -- results of calls ----------------------------------------------------

    def _result(self, ev: ArrayResult | ReflectResult) -> None:
        v = self.volatile
        if v.call is None:
            self._log(f"{type(ev).__name__} with no call outstanding; ignored")
            return
        if v.queued is not None:  # D13
            self._log(f"{type(v.call).__name__} result discarded; issuing the queued call")
            self._set(call=v.queued, queued=None)
            self._emit(v.queued)
            return
        expected = ArrayResult if isinstance(v.call, RunReplica) else ReflectResult
        if not isinstance(ev, expected):
            self._log(f"{type(ev).__name__} while {type(v.call).__name__} runs; ignored")
            return
        self._set(call=None)
        r = v.round
        if self.role is NodeRole.ACTIVE and r is not None:
            if r.phase is Phase.REPLICA and isinstance(ev, ArrayResult):
                if not ev.ok:
                    self._log(f"replica failed: {ev.detail}; reflecting anyway (D4)")
                    self._set_round(replace(r, error=ev.detail or "array refused"))
                self._go(ADVANCE[r.kind, Phase.REPLICA])
                return
            if r.phase is Phase.OWN_VIEW and isinstance(ev, ReflectResult):
                if not ev.ok:
                    if r.own_tries + 1 < MAX_REFLECT_TRIES:
                        self._log(f"own reflection failed ({ev.detail}); again")
                        self._set_round(replace(r, own_tries=r.own_tries + 1))
                        self._call(Reflect(r.own_scope))
                        return
                    self._log(f"own reflection failed {MAX_REFLECT_TRIES} times: {ev.detail}")
                    self._set_round(replace(r, error=r.error or f"own view: {ev.detail}"))
                self._go(ADVANCE[r.kind, Phase.OWN_VIEW])
                self._advance()
                return
        if self.role is not NodeRole.ACTIVE and isinstance(ev, ReflectResult):
            self._standby_reflected(ev)
            return
        self._log(f"{type(ev).__name__} no longer awaited; ignored")

    def _standby_reflected(self, ev: ReflectResult) -> None:
        answer = self.volatile.answer
        if self.state.flag is not F.B2 or answer is None:
            self._log("reflection result no longer needed (a newer START came); ignored")
            return
        sender, body = answer
        if ev.ok:
            self._run(STANDBY["reflected"].steps)
            return
        self._log(f"reflection failed: {ev.detail}; staying at B2 (D14)")
        self._emit(Send(sender, MsgType.REFLECTED, replace(body, ok=False, detail=ev.detail)))
        self._set(answer=None)

    # -- standby -----------------------------------------------------------

    def _standby(self, ev: Event) -> None:
        if isinstance(ev, Request):
            self._emit(Reply(False, f"{self.name} is not the active node; ask the active"))
            return
        if not isinstance(ev, MessageIn):
            return  # PeerUp/PeerDown: membership is the active's business
        if ev.type in (MsgType.REFLECTED_ACK, MsgType.DONE_ACK):
            return
        row = STANDBY.get(ev.type)
        if row is None:
            self._log(f"{ev.type.value} from {ev.sender} ignored: this node is a standby")
            return
        if ev.body.epoch < self.state.epoch:
            self._log(
                f"{ev.type.value} from {ev.sender} ignored: epoch {ev.body.epoch} "
                f"older than {self.state.epoch} (D10)"
            )
            return
        self._set(answer=(ev.sender, ev.body), seq=ev.body.seq)
        if ev.type is MsgType.START:
            self._set(queued=None)  # a reflection still running is obsolete now
        self._run(row.steps)

    # -- active --------------------------------------------------------------

    def _active(self, ev: Event) -> None:
        if isinstance(ev, Request):
            self._request(ev)
        elif isinstance(ev, PeerDown):
            self._peer_down(ev.node)
        elif isinstance(ev, PeerUp):
            if ev.node in self.volatile.live:
                self._observe(ev.node, Body(self.state.epoch, flag=ev.flag))
            else:
                self._set(live=self.volatile.live | {ev.node})
                self._log(f"{ev.node} joins at {ev.flag.name} (D8)")
                self._add_joiner(ev.node)
        elif isinstance(ev, MessageIn):
            self._message(ev)

    def _request(self, ev: Request) -> None:
        r = self.volatile.round
        reason, busy = "", False
        if not self.groups:
            reason = "no replica definition file: there is nothing to protect"
        elif ev.op is Op.NONE:
            reason = "no replica operation given"
        elif ev.group not in self.groups:
            reason = (
                f"unknown replica group {ev.group!r}; the definition file lists "
                f"{', '.join(repr(g) for g in self.groups)}"
            )
        elif r is not None:
            reason, busy = f"busy: {r.describe()}; retry when it is over (D1)", True
        elif self.state.flag is not F.ZERO:
            reason, busy = f"busy: flag {self.state.flag.name}; retry when it is 0 (D1)", True
        if reason:
            refusal = f"{ev.op.name.lower()} of {ev.group!r} refused: {reason}"
            self._emit(Reply(False, refusal, busy))
            return
        seq = self.volatile.seq + 1
        self._set(seq=seq)
        live = self.volatile.live
        self._set_round(
            Round(Kind.TXN, ev.op, ev.group, Phase.STARTING, seq, live, live, reply=True)
        )
        self._go(BEGIN[Kind.TXN])
        self._advance()

    def _peer_down(self, node: str) -> None:
        if node not in self.volatile.live:
            return
        self._set(live=self.volatile.live - {node})
        r = self.volatile.round
        if r is not None:
            self._log(f"{node} is down: no longer waited for")
            self._set_round(
                replace(
                    r,
                    acks=r.acks - {node},
                    targets=r.targets - {node},
                    wide=r.wide - {node},
                    waiting=r.waiting - {node},
                )
            )
            self._advance()

    def _add_joiner(self, node: str) -> None:
        """D8: bring *node* up to date, in a JOIN round or the current round."""
        r = self.volatile.round
        if r is None:
            seq = self.volatile.seq + 1
            self._set(seq=seq)
            one = frozenset({node})
            self._set_round(
                Round(Kind.JOIN, Op.NONE, ALL, Phase.REFLECTING, seq, targets=one, wide=one)
            )
            self._go(BEGIN[Kind.JOIN])
            self._advance()
            return
        r = replace(r, targets=r.targets | {node}, wide=r.wide | {node})
        if r.phase is Phase.STARTING:
            r = replace(r, acks=r.acks | {node})
        if r.phase is not Phase.REFLECTING and r.op is not Op.NONE:
            self._emit(Send(node, MsgType.START, self._body(r)))
        if r.phase is Phase.REFLECTING:
            r = replace(r, waiting=r.waiting | {node})
            self._emit(ReleaseControl(ALL))
            self._send_done(node, r)
        self._set_round(r)

    def _message(self, ev: MessageIn) -> None:
        r = self.volatile.round
        body, node = ev.body, ev.sender
        ours = r is not None and body.epoch == self.state.epoch and body.seq == r.seq
        if ev.type is MsgType.STATE:
            if node in self.volatile.live:
                self._observe(node, body)
        elif ev.type is MsgType.START_ACK:
            if r is not None and ours and r.phase is Phase.STARTING and node in r.acks:
                self._set_round(replace(r, acks=r.acks - {node}))
                self._advance()
        elif ev.type is MsgType.REFLECTED:
            if r is not None and ours and r.phase is Phase.REFLECTING and node in r.waiting:
                self._reflected(node, body, r)
        elif ev.type in (MsgType.START, MsgType.DONE):
            self._log(f"{ev.type.value} from {node} ignored: this node is the active (D15)")

    def _reflected(self, node: str, body: Body, r: Round) -> None:
        if body.ok:
            self._emit(Send(node, MsgType.REFLECTED_ACK, body))
            self._set_round(replace(r, waiting=r.waiting - {node}))
            self._advance()
            return
        tries = dict(r.tries)
        tries[node] = tries.get(node, 0) + 1
        if tries[node] < MAX_REFLECT_TRIES:
            self._log(f"{node} could not reflect ({body.detail}); DONE again (D14)")
            self._set_round(replace(r, tries=tuple(sorted(tries.items()))))
            self._send_done(node, r)
            return
        self._log(f"{node} could not reflect {tries[node]} times ({body.detail}); given up (D14)")
        self._set_round(replace(r, waiting=r.waiting - {node}, tries=tuple(sorted(tries.items()))))
        self._advance()

    def _observe(self, node: str, body: Body) -> None:
        """A standby's heartbeat (D11): resend what it missed, repair what is stale (D8)."""
        r = self.volatile.round
        ours = r is not None and body.epoch == self.state.epoch and body.seq == r.seq
        if r is not None and r.phase is Phase.STARTING and node in r.acks:
            if body.flag is F.B1 and ours:
                self._set_round(replace(r, acks=r.acks - {node}))
                self._advance()
            else:
                self._emit(Send(node, MsgType.START, self._body(r)))
        elif r is not None and r.phase is Phase.REFLECTING and node in r.waiting:
            if not (body.flag is F.B2 and body.busy and ours):
                self._send_done(node, r)
        elif (r is None or r.phase is Phase.REFLECTING) and not (
            body.flag in CONSISTENT or (body.flag is F.B2 and body.busy)
        ):
            self._log(f"{node} is at {body.flag.name}: not consistent, reflecting it (1202)")
            self._add_joiner(node)
