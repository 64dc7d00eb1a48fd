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

Wiring (done by :class:`nodeagent.agent.Agent`): a process tells the protocol
``Restarted`` once it knows its first role (standby, or active through a
takeover); events that arrive before that are dropped (the heartbeat resends
what matters), requests are refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
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
from .replica import ReplicaOps
from .statefile import save_state

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)

_HOOKS = {p.HOOK_UNUSABLE: Hook.SVOL_UNUSABLE, p.HOOK_USABLE: Hook.SVOL_USABLE}
#: Control-socket op names -> replica operations.
OPS = {
    "split": ReplicaOp.SPLIT,
    "quick-split": ReplicaOp.QUICK_SPLIT,
    "resync": ReplicaOp.RESYNC,
    "restore": ReplicaOp.RESTORE,
}


@dataclass
class _Waiter:
    """A control-socket request waiting for the protocol's Reply."""

    done: trio.Event = field(default_factory=trio.Event)
    reply: p.Reply | None = None

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

    # -- feeding -------------------------------------------------------------

    def feed(self, event: p.Event) -> None:
        """Queue *event* (never blocks). Before Restarted only Restarted gets through."""
        if isinstance(event, p.Restarted):
            self.started = True
        elif not self.started and not isinstance(event, p.BecameActive):
            return
        self._in.send_nowait(_Fed(event))

    async def request(self, op: ReplicaOp, group: str, *, wait: bool = True) -> p.Reply:
        """A user's request; with *wait*, its Reply (at the end of the round)."""
        if not self.started:
            return p.Reply(False, f"{self.node.name} has no role yet; retry in a moment")
        waiter = _Waiter() if wait else None
        self._in.send_nowait(_Fed(p.Request(op, group), waiter))
        if waiter is None:
            return p.Reply(True, f"{op.name.lower()} of {group!r} submitted")
        await waiter.done.wait()
        assert waiter.reply is not None
        return waiter.reply

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
        actions = self.node.handle(fed.event)
        if isinstance(fed.event, p.Request):
            replies = [a for a in actions if isinstance(a, p.Reply)]
            if replies:  # refused at once: not the answer of the round that may be running
                if fed.waiter is not None:
                    fed.waiter.resolve(replies[0])
                actions = [a for a in actions if not isinstance(a, p.Reply)]
                self._event("reply", ok=replies[0].ok, detail=replies[0].detail)
            else:  # accepted: answered at the end of its round (--no-wait: nobody waits)
                self._round_waiter = fed.waiter
        for action in actions:
            await self._perform(action)

    async def _perform(self, action: p.Action) -> None:
        agent = self.agent
        if isinstance(action, p.Persist):
            agent.state = save_state(agent.config.state_file, action.state)
            if action.state.role is NodeRole.ACTIVE and action.state.epoch > agent.membership.epoch:
                agent.membership.epoch = action.state.epoch
            self._event("persist", flag=_flag(action.state.flag), op=action.state.op.name,
                        group=action.state.group, epoch=action.state.epoch)  # fmt: skip
        elif isinstance(action, p.Send):
            if action.node not in agent.blocked:
                agent.links.send(action.node, FrameType[action.type.name], action.body.to_dict(),
                                 epoch=agent.membership.epoch)  # fmt: skip
            self._event("send", to=action.node, type=action.type.value, seq=action.body.seq)
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

    def _resolve(self, reply: p.Reply) -> None:
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
        for ldev in sorted(self._svols(group)):
            op = "preempt" if take else "release"
            try:
                await self.agent._array_call(
                    op, ldev, lambda c, x=ldev: c.preempt(x) if take else c.release(x)
                )
            except (ArrayError, ArrayUnavailable) as exc:
                log.warning("cannot %s S-VOL %s: %s", op, format_ldev(ldev), exc)

    async def _call(self, call: p.RunReplica | p.Reflect) -> None:
        ok, detail = False, ""
        try:
            if isinstance(call, p.RunReplica):
                ok, detail = await self.ops.run_replica(call.op, call.group)
            elif self.agent.config.reflection == "off":
                ok, detail = True, "reflection is off in this node's config: buffer left as is"
            else:
                self.buffer.reload_if_changed()
                ok, detail = await self.ops.reflect(call.group)
        except (ArrayError, ArrayUnavailable, OSError, KeyError, trio.TooSlowError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        result: p.Event = (
            p.ArrayResult(ok, detail)
            if isinstance(call, p.RunReplica)
            else p.ReflectResult(ok, detail)
        )
        self._event("result", call=type(call).__name__, ok=ok, detail=detail)
        self._in.send_nowait(_Fed(result))


def _flag(flag: ReplicaFlag) -> str:
    return flag.name if flag else "0"


def body_of(data: Mapping[str, Any]) -> p.Body | None:
    """A protocol body from a frame or heartbeat, or None if it is not one."""
    try:
        return p.Body.from_dict(data)
    except (ValueError, TypeError):
        return None
