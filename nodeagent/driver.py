"""The trio driver of the S-VOL consistency protocol (:mod:`nodeagent.protocol`).

The protocol is a pure state machine; this module performs its actions for
the agent of one node and feeds their outcomes back, following the "driver's
contract" in the protocol's docstring:

* one task takes events from a memory channel, one at a time, calls
  :meth:`ProtocolNode.handle` and performs the actions in order. ``Persist``
  is written (atomically, fsync) before anything after it; ``Send``,
  ``ReleaseControl``, ``TakeControl``, ``Hook``, ``Reply`` and ``Log`` are
  awaited in place; ``RunReplica`` and ``Reflect`` run in the background and
  report exactly one ``ArrayResult`` / ``ReflectResult`` through the channel.
  The protocol never has two calls outstanding, so neither has the driver.
* ``TakeControl`` *preempts* the S-VOL reservations (simplest form of "fence
  a holder that is not a live member": the protocol only takes them back once
  every live standby has reflected and released them).
* Between ``ReleaseControl`` and ``TakeControl`` the S-VOLs of the scope are
  :attr:`ProtocolDriver.released`; the agent does not renew their
  reservations meanwhile (a standby is reading their volume info).

The state file has one writer: the protocol's ``Persist``. Role changes the
protocol does not model (becoming standby, leaving, a switchover) go through
:meth:`ProtocolDriver.persist_role`, which merges role and epoch into the
protocol's own state and writes that, so flag, op, group, role and epoch are
always written together. Becoming active is persisted by the protocol itself
(``BecameActive`` / ``Restarted(ACTIVE)``: role ACTIVE and the new epoch).

Fault injection: ``NODEAGENT_PAUSE_AT`` names points (comma-separated) where
the driver stops its own process with SIGSTOP after logging a ``pause``
event, so that a test can SIGKILL it exactly there (:data:`PAUSE_ENV`,
:meth:`ProtocolDriver._checkpoint`). A point is ``ROLE:WHAT`` or
``ROLE:KIND:WHAT``: ROLE ``active`` or ``standby`` (the persisted role),
KIND the round's kind (``request``, ``recovery``, ``join``; the active only)
and WHAT one of ``pre-persist:FLAG`` / ``persist:FLAG`` (before / after the
state file write; FLAG ``0``, ``A1`` ... ``B3``), ``pre-send:TYPE`` /
``send:TYPE`` (a message), ``call:CALL`` / ``called:CALL`` (before the
array or buffer work of ``RunReplica`` / ``Reflect`` starts, and after it
ended but before its result is fed back), ``release`` and ``take`` (control
right). Each point pauses once per process.

Wiring (done by :class:`nodeagent.agent.Agent`): a process tells the protocol
``Restarted`` once it knows its first role (standby, or active through a
takeover); events that arrive before that are dropped (the heartbeat resends
what matters), requests are refused.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import trio

from blockemu.connection import ArrayUnavailable
from blockemu.errors import ArrayError
from blockemu.hostbuffer import HostBuffer
from formats.peer_frame import MsgType as FrameType
from formats.state_file import NodeRole, ReplicaFlag, ReplicaOp
from formats.units import format_ldev

from . import protocol as p
from .hooks import Hook
from .replica import ReplicaOps, each_concurrently
from .statefile import save_state

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)

_HOOKS = {p.HOOK_UNUSABLE: Hook.SVOL_UNUSABLE, p.HOOK_USABLE: Hook.SVOL_USABLE}
#: Environment variable naming the fault-injection pause points (see the module docstring).
PAUSE_ENV = "NODEAGENT_PAUSE_AT"

#: Control-socket op names -> replica operations.
OPS = {
    "split": ReplicaOp.SPLIT,
    "quick-split": ReplicaOp.QUICK_SPLIT,
    "resync": ReplicaOp.RESYNC,
    "restore": ReplicaOp.RESTORE,
    "reflect": ReplicaOp.REFLECT,
}


#: How many requests may wait for a busy active (D1) before new ones are refused.
QUEUE_LIMIT = 16


@dataclass
class _Waiter:
    """A control-socket request waiting for the protocol's Reply; ``progress`` gets a
    line per stage of its round."""

    done: trio.Event = field(default_factory=trio.Event)
    reply: p.Reply | None = None
    progress: Callable[[str], None] | None = None

    def resolve(self, reply: p.Reply) -> None:
        self.reply = reply
        self.done.set()


@dataclass(frozen=True)
class _Fed:
    """An event on the channel; a Request may carry its waiter."""

    event: p.Event
    waiter: _Waiter | None = None


class ProtocolDriver:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        config = agent.config
        pairs = [pair for r in config.replicas for pair in r.pairs]
        self.buffer = HostBuffer.load(config.buffer_file, config.array.host_id)
        self.ops = ReplicaOps(agent.array, self.buffer, pairs)
        self.node = p.ProtocolNode(config.id, agent.state, groups=self.ops.groups())
        self._in, self._out = trio.open_memory_channel[_Fed](math.inf)
        #: Restarted has been fed: the protocol knows its role.
        self.started = False
        #: S-VOL LDEVs whose control right the protocol has released (not renewed meanwhile).
        self.released: set[int] = set()
        self._round_waiter: _Waiter | None = None
        self._nursery: trio.Nursery | None = None
        self._pause_at = {x.strip() for x in os.environ.get(PAUSE_ENV, "").split(",") if x.strip()}
        self._kind = ""  # the kind of the round being handled, for pause-point names
        #: Standbys that went down during the request round being answered.
        self._dropped: set[str] = set()
        #: Requests refused as busy (D1), asked again when the node is idle.
        self._queued: deque[_Fed] = deque()

    # -- feeding -------------------------------------------------------------

    def feed(self, event: p.Event) -> None:
        """Queue *event* (never blocks). Before Restarted only Restarted gets through."""
        if isinstance(event, p.Restarted):
            self.started = True
        elif not self.started and not isinstance(event, p.BecameActive):
            return
        self._in.send_nowait(_Fed(event))

    async def request(
        self,
        op: ReplicaOp,
        group: str,
        *,
        wait: bool = True,
        progress: Callable[[str], None] | None = None,
    ) -> p.Reply:
        """A user's request; with *wait*, its Reply (at the end of the round), and a
        line per stage to *progress* meanwhile. A busy active queues it (D1)."""
        if not self.started:
            return p.Reply(False, f"{self.node.name} has no role yet; retry in a moment")
        if len(self._queued) >= QUEUE_LIMIT:
            return p.Reply(False, f"{len(self._queued)} requests already wait; retry later")
        waiter = _Waiter(progress=progress) if wait else None
        self._in.send_nowait(_Fed(p.Request(op, group), waiter))
        if waiter is None:
            return p.Reply(True, f"{op.name.lower()} of {group!r} submitted")
        await waiter.done.wait()
        assert waiter.reply is not None
        return waiter.reply

    @property
    def idle(self) -> bool:
        """No round, no call, nothing queued, flag 0: a good moment to look at the array."""
        return (
            self.started
            and self.node.idle
            and not self._queued
            and (self.node.state.flag is ReplicaFlag.ZERO)
        )

    def arm(self, points: set[str]) -> None:
        """Fault injection: pause at these points from now on (module docstring)."""
        self._pause_at |= points
        self._event("armed", points=sorted(self._pause_at))

    async def refresh_all(self) -> tuple[bool, str]:
        """Re-read every S-VOL of the definition files into this node's buffer (a lazy
        node's takeover: AIX PowerHA's "lazy update" compares and re-imports there)."""
        try:
            self.buffer.reload_if_changed()
            return await self.ops.reflect(p.ALL)
        except (ArrayError, ArrayUnavailable, OSError, KeyError, trio.TooSlowError) as exc:
            return False, f"{type(exc).__name__}: {exc}"

    def persist_role(self, role: NodeRole, epoch: int) -> None:
        """A role change the protocol does not model: merge role and epoch, write (one writer).

        Becoming ACTIVE is left to the protocol's takeover (it persists role and epoch).
        """
        if role is NodeRole.ACTIVE:
            return
        st = self.node.state
        if st.role is NodeRole.ACTIVE and not self.node.idle:
            self._resolve(p.Reply(False, "this node stopped being the active; round abandoned"))
        if st.role is NodeRole.ACTIVE:  # demoted without a restart (switchover)
            self.node.volatile = p.Volatile(seq=self.node.volatile.seq)
            self.released.clear()
        self.node.state = replace(st, role=role, epoch=max(st.epoch, epoch))
        self.agent.state = save_state(self.agent.config.state_file, self.node.state)

    def status(self) -> dict[str, Any]:
        """The heartbeat's protocol part (what a STATE message carries)."""
        return self.node.status().to_dict()

    def describe(self) -> dict[str, Any]:
        """For `nodeagent status`: the round running (if any) and the released S-VOLs."""
        r = self.node.volatile.round
        return {
            "started": self.started,
            "round": None if r is None else r.describe(),
            "released": [format_ldev(x) for x in sorted(self.released)],
        }

    # -- running -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            async for fed in self._out:
                await self._handle(fed)

    async def _handle(self, fed: _Fed) -> None:
        await self._handle_one(fed)
        while self._queued and self.node.idle and self.node.state.flag is ReplicaFlag.ZERO:
            await self._handle_one(self._queued.popleft())

    async def _handle_one(self, fed: _Fed) -> None:
        before, live_before = self.node.volatile.round, self.node.volatile.live
        actions = self.node.handle(fed.event)
        # The kind of round these actions belong to (the one that just ended, if it did).
        current = self.node.volatile.round or before
        self._kind = current.kind.value if current is not None else ""
        if isinstance(fed.event, p.Request):
            replies = [a for a in actions if isinstance(a, p.Reply)]
            if replies and replies[0].busy:  # D1: keep it, ask again once idle
                self._queued.append(fed)
                self._tell(fed.waiter, f"queued: {replies[0].detail.split('busy: ')[-1]}")
                self._event("queued", op=fed.event.op.name, group=fed.event.group)
                return
            if replies:  # refused at once: not the answer of the round that may be running
                if fed.waiter is not None:
                    fed.waiter.resolve(replies[0])
                actions = [a for a in actions if not isinstance(a, p.Reply)]
                self._event("reply", ok=replies[0].ok, detail=replies[0].detail)
            else:  # accepted: answered at the end of its round (--no-wait: nobody waits)
                self._round_waiter = fed.waiter
                self._dropped = set()
                self._tell(fed.waiter, f"accepted: {fed.event.op.name.lower()} of "
                           f"{fed.event.group!r}; Stage X: telling the standbys")  # fmt: skip
        elif isinstance(fed.event, p.PeerDown) and before is not None and before.kind is p.Kind.TXN:
            if fed.event.node in live_before:
                self._dropped.add(fed.event.node)
                self._tell(self._round_waiter, f"{fed.event.node} went down: dropped from the "
                           "round; it is reflected when it rejoins")  # fmt: skip
        elif (
            isinstance(fed.event, p.MessageIn)
            and fed.event.type is p.MsgType.REFLECTED
            and self._round_waiter is not None
        ):
            body = fed.event.body
            self._tell(self._round_waiter, f"Stage Y: {fed.event.sender} reflected"
                       + ("" if body.ok else f" with an error: {body.detail}"))  # fmt: skip
        for action in actions:
            await self._perform(action)

    @staticmethod
    def _tell(waiter: _Waiter | None, line: str) -> None:
        if line and waiter is not None and waiter.progress is not None:
            waiter.progress(line)

    async def _perform(self, action: p.Action) -> None:
        point = _point_of(action)
        if point:
            self._checkpoint(f"pre-{point}")
        await self._act(action)
        if point:
            self._checkpoint(point)

    async def _act(self, action: p.Action) -> None:
        agent = self.agent
        if isinstance(action, p.Persist):
            agent.state = save_state(agent.config.state_file, action.state)
            live = ", ".join(sorted(self.node.volatile.live)) or "none"
            line = _STAGE_LINES.get(action.state.flag, "")
            self._tell(self._round_waiter, line.format(live=live))
            if action.state.role is NodeRole.ACTIVE and action.state.epoch > agent.membership.epoch:
                agent.membership.epoch = action.state.epoch
            self._event("persist", flag=_flag(action.state.flag), op=action.state.op.name,
                        group=action.state.group, epoch=action.state.epoch)  # fmt: skip
        elif isinstance(action, p.Send):
            if action.node not in agent.blocked:
                agent.links.send(action.node, FrameType[action.type.name], action.body.to_dict(),
                                 epoch=agent.membership.epoch)  # fmt: skip
            self._event("send", to=action.node, type=action.type.value, round=action.body.seq)
        elif isinstance(action, p.RunReplica | p.Reflect):
            assert self._nursery is not None
            self._event("call", call=type(action).__name__, group=action.group)
            self._nursery.start_soon(self._call, action)
        elif isinstance(action, p.ReleaseControl):
            self.released |= self._svols(action.group)
            await self._control(action.group, take=False)
        elif isinstance(action, p.TakeControl):
            await self._control(action.group, take=True)
            self.released -= self._svols(action.group)
        elif isinstance(action, p.Hook):
            await agent._run_hook(_HOOKS[action.name], group=action.group or "*")
        elif isinstance(action, p.Reply):
            self._event("reply", ok=action.ok, detail=action.detail)
            self._resolve(action)
        elif isinstance(action, p.Log):
            log.info("%s", action.message)
            self._event("log", message=action.message)

    def _checkpoint(self, what: str) -> None:
        """Fault injection: stop this process at a named point (module docstring)."""
        if not self._pause_at:
            return
        role = "active" if self.node.state.role is NodeRole.ACTIVE else "standby"
        names = {f"{role}:{what}"}
        if role == "active" and self._kind:
            names.add(f"{role}:{self._kind}:{what}")
        hit = names & self._pause_at
        if not hit:
            return
        self._pause_at -= hit
        point = min(hit)
        log.warning("fault injection: pausing at %s (SIGSTOP)", point)
        self._event("pause", point=point, pid=os.getpid())
        os.kill(os.getpid(), signal.SIGSTOP)

    def _resolve(self, reply: p.Reply) -> None:
        if self._dropped:
            names = ", ".join(sorted(self._dropped))
            reply = replace(reply, detail=f"{reply.detail}; {names} went down during the "
                            "round and will be reflected when rejoining")  # fmt: skip
            self._dropped = set()
        waiter, self._round_waiter = self._round_waiter, None
        if waiter is not None:
            waiter.resolve(reply)

    def _event(self, what: str, **fields: object) -> None:
        self.agent._link_event("protocol", {"what": what, **fields})

    def _svols(self, group: str) -> set[int]:
        try:
            return {pair.svol_ldev for pair in self.ops.of(group)}
        except KeyError:
            return set()

    async def _control(self, group: str, *, take: bool) -> None:
        """Release the scope's S-VOLs, or take them back by preempting (fencing any holder)."""
        op = "preempt" if take else "release"

        async def one(ldev: int) -> None:
            try:
                await self.agent._array_call(
                    op, ldev, lambda c: c.preempt(ldev) if take else c.release(ldev)
                )
            except (ArrayError, ArrayUnavailable) as exc:
                log.warning("cannot %s S-VOL %s: %s", op, format_ldev(ldev), exc)

        await each_concurrently(sorted(self._svols(group)), one)

    async def _call(self, call: p.RunReplica | p.Reflect) -> None:
        ok, detail = False, ""
        name = type(call).__name__
        self._checkpoint(f"call:{name}")
        try:
            if isinstance(call, p.RunReplica):
                ok, detail = await self.ops.run_replica(call.op, call.group)
            elif self.agent.config.reflection == "off":
                ok, detail = True, "reflection is off in this node's config: buffer left as is"
            elif (
                self.agent.config.reflection == "lazy"
                and self.node.state.role is not NodeRole.ACTIVE
            ):
                ok, detail = True, "reflection is lazy: the buffer is refreshed at takeover"
            else:
                self.buffer.reload_if_changed()
                ok, detail = await self.ops.reflect(call.group)
        except Exception as exc:  # a call reports failure; it must never kill the driver
            if not isinstance(exc, ArrayError | ArrayUnavailable | OSError | trio.TooSlowError):
                log.exception("unexpected error in %s", name)
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        result: p.Event = (
            p.ArrayResult(ok, detail)
            if isinstance(call, p.RunReplica)
            else p.ReflectResult(ok, detail)
        )
        self._checkpoint(f"called:{name}")
        self._event("result", call=name, ok=ok, detail=detail)
        self._in.send_nowait(_Fed(result))


#: What a user waiting for a round is told when the active persists each flag.
_STAGE_LINES = {
    ReplicaFlag.A1: "Stage X: every live standby ({live}) holds the intent (B1); "
    "replica running on the array (A1)",
    ReplicaFlag.A2: "Stage X: replica done on the array, own view re-read (A2)",
    ReplicaFlag.A3: "Stage Y: standbys ({live}) told; waiting for their reflection (A3)",
    ReplicaFlag.ZERO: "Stage Z: every live standby reflected; flag 0, S-VOL control right back",
}


def _point_of(action: p.Action) -> str:
    """The pause-point name of *action* ("" for actions that have none)."""
    if isinstance(action, p.Persist):
        return f"persist:{_flag(action.state.flag)}"
    if isinstance(action, p.Send):
        return f"send:{action.type.name}"
    if isinstance(action, p.ReleaseControl):
        return "release"
    if isinstance(action, p.TakeControl):
        return "take"
    return ""


def _flag(flag: ReplicaFlag) -> str:
    return flag.name if flag else "0"


def body_of(data: Mapping[str, Any]) -> p.Body | None:
    """A protocol body from a frame or heartbeat, or None if it is not one."""
    try:
        return p.Body.from_dict(data)
    except (ValueError, TypeError):
        return None
