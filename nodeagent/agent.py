"""The cluster agent of one node: heartbeats, failover, fencing, hooks, status.

One trio program per node. Its loop, every heartbeat interval:

1. tell every peer our role, epoch, priority and replica flag (HEARTBEAT);
2. ask :class:`~nodeagent.membership.Membership` what to do, given what we
   heard and what the array says about the reservations (the lease), and do
   it: stay, become standby, **take over** or **leave**;
3. as the active: renew the reservations on the protected volumes (a refusal
   means another node preempted us: leave at once) and run the monitor hook
   (a failure: stop the application and leave).

Taking over is, in this order: persist the new epoch, **preempt** the
reservations on every protected volume (from now on the array refuses the
old active's I/O, whether it is dead or only paused), make sure the host
view is attached, run the ``start`` hook. Leaving is: run ``stop``, and exit.
A failing ``stop`` is escalated by leaving anyway *without releasing*
anything: the reservations stay with us and the array keeps refusing every
host but the new active, which preempts them.

The agent answers `nodeagent status` and `nodeagent switchover` on a unix
control socket next to its state file, and writes every role change,
message, array call and hook call to its JSONL event log.

The S-VOL consistency protocol (:mod:`nodeagent.protocol`) runs inside the
agent through :class:`~nodeagent.driver.ProtocolDriver`: a standby's heartbeat
carries its protocol status (key ``protocol``), which the active feeds to its
protocol as a STATE message; standbys first heard become PeerUp, missed
heartbeats, LEAVE and a peer's new incarnation PeerDown; a takeover feeds
BecameActive (or Restarted as ACTIVE for the process's first role) after the
preempts, becoming standby at start Restarted(STANDBY). The driver's Persist is
the state file's only writer: role changes go through it too. `nodeagent split
/ resync / restore GROUP` are control requests ({"cmd": "replica"}) answered
with the protocol's Reply.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from blockemu.address import parse_address
from blockemu.connection import ArrayConnection, ArrayUnavailable
from blockemu.errors import ArrayError, ReservationConflict
from formats.hosts_config import read_key_file
from formats.node_config import NodeConfig
from formats.peer_frame import MsgType, PeerFrame
from formats.state_file import NodeRole, NodeState, ReplicaFlag, ReplicaOp
from formats.units import format_ldev

from . import protocol
from .driver import OPS, ProtocolDriver, body_of
from .events import EventLog
from .hooks import Hook, HookResult, Hooks
from .membership import Decision, Membership, Role
from .peers import PeerLinks
from .statefile import load_state

log = logging.getLogger(__name__)

API_VERSION = 1
#: Exit code of an agent that left the cluster (fenced, superseded, failed).
EXIT_LEFT = 75
#: How often (at least) the idle active compares its buffer with the array (D16), and how
#: long it waits before reflecting the same group again if the difference stays.
OBSERVE_INTERVAL, OBSERVE_BACKOFF = 0.5, 5.0
#: Seconds between restarts of a host-view attach that keeps dying.
ATTACH_RETRY = 5.0
_ROLE_TO_STATE = {Role.ACTIVE: NodeRole.ACTIVE, Role.STANDBY: NodeRole.STANDBY}


def control_path(config: NodeConfig) -> Path:
    """The unix socket `nodeagent status` talks to: next to the state file."""
    return config.state_file.with_name(f"{config.id}.ctl")


class Left(Exception):
    """The agent left the cluster; the process exits with EXIT_LEFT."""


class Agent:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.state: NodeState = load_state(config.state_file)
        self.events = EventLog(config.event_log, node_id=config.id)
        self.hooks = Hooks(config.hooks, node_id=config.id, events=self.events)
        self.membership = Membership(
            config.id,
            config.priority,
            config.heartbeat_interval,
            config.heartbeat_misses,
            epoch=self.state.epoch,
            started_at=time.monotonic(),
        )
        pairs = [p for r in config.replicas for p in r.pairs]
        self.protected = sorted({x for p in pairs for x in (p.pvol_ldev, p.svol_ldev)})
        #: The application's volumes: losing one of these reservations means we are fenced.
        self.pvols = {p.pvol_ldev for p in pairs}
        key = read_key_file(config.array.key_file) if config.array.key_file else None
        self.array = ArrayConnection(
            parse_address(config.array.address), host=config.array.host_id, key=key
        )
        self.links = PeerLinks(
            config.id,
            parse_address(config.listen),
            {p.id: parse_address(p.address) for p in config.peers},
            read_key_file(config.cluster_key_file),
            min_epoch=lambda: self.membership.epoch,
            on_event=self._link_event,
        )
        #: Peers whose frames we drop and do not send to (fault injection: a partition).
        self.blocked: set[str] = set()
        self._attach: trio.Process | None = None
        self._attach_started = 0.0
        self._switchover_to: str | None = None
        #: After handing the active role over: do not contest before this (monotonic).
        self._handover_until = 0.0
        self._alive: set[str] = set()
        #: Standbys the protocol was told are up (PeerUp), with the flag of their last heartbeat.
        self._proto_live: dict[str, ReplicaFlag] = {}
        self.driver = ProtocolDriver(self)

    def _link_event(self, kind: str, fields: dict[str, Any]) -> None:
        """Events of the peer links: logged, never allowed to break a link."""
        try:
            self.events.emit(kind, fields)
        except (TypeError, ValueError) as exc:
            log.error("cannot log %s event %r: %s", kind, fields, exc)
        if kind == "peer_session" and fields.get("previous") is not None:
            # A new incarnation: PeerDown for the old link before anything from the new one.
            self._proto_down(str(fields.get("sender")))

    # -- running -----------------------------------------------------------

    async def run(self) -> None:
        self.events.emit("agent_start", epoch=self.state.epoch, flag=self.state.flag.name)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.links.run)
                await nursery.start(self.driver.run)
                nursery.start_soon(self._keep_array)
                nursery.start_soon(self._receive)
                await nursery.start(self._serve_control)
                nursery.start_soon(self._signals, nursery.cancel_scope)
                nursery.start_soon(self._observe_array)
                await self._loop()
                nursery.cancel_scope.cancel()
        finally:
            await self._stop_attach()
            self.events.close()

    async def _keep_array(self) -> None:
        while True:
            try:
                await self.array.run()
            except (OSError, ArrayError) as exc:
                log.warning("array %s unreachable: %s", self.config.array.address, exc)
                await trio.sleep(self.config.heartbeat_interval)

    async def _observe_array(self) -> None:
        """The active notices pairs changed on the array without it (D16): while the
        protocol is idle it compares its own buffer with the array's pairs and, for a
        group that differs, runs a REFLECT round so that every standby re-reads it."""
        if self.config.reflection == "off":
            return  # nobody refreshes anything: the point of "off"
        interval = max(OBSERVE_INTERVAL, 2 * self.config.heartbeat_interval)
        last: dict[str, float] = {}
        while True:
            await trio.sleep(interval)
            if self.membership.role is not Role.ACTIVE or not self.driver.idle:
                continue
            try:
                groups = await self.driver.ops.drifted()
            except (ArrayError, ArrayUnavailable, OSError, trio.TooSlowError) as exc:
                log.debug("cannot compare the buffer with the array: %s", exc)
                continue
            now = time.monotonic()
            for group in groups:
                if now - last.get(group, -math.inf) < OBSERVE_BACKOFF or not self.driver.idle:
                    continue
                last[group] = now
                self.events.emit("out_of_band", group=group)
                log.info("group %s changed on the array without us: reflecting it", group)
                await self.driver.request(ReplicaOp.REFLECT, group, wait=False)

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s: stopping", signal.Signals(signum).name)
                self.events.emit("agent_stop", signal=signal.Signals(signum).name)
                if self.membership.role is Role.ACTIVE:
                    await self._run_hook(Hook.STOP)
                scope.cancel()
                return

    async def _loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            self._heartbeat()
            try:
                await self._step()
                await self._keep_attached()
            except Left:
                return
            await trio.sleep(interval)

    # -- heartbeats ----------------------------------------------------------

    def _heartbeat(self) -> None:
        body = {
            "role": self.membership.role.value,
            "priority": self.config.priority,
            "flag": int(self.state.flag),
            "protocol": self.driver.status(),
        }
        for peer in self.config.peers:
            if peer.id not in self.blocked:
                self.links.send(peer.id, MsgType.HEARTBEAT, body, epoch=self.membership.epoch)

    async def _receive(self) -> None:
        async for frame in self.links.received:
            if frame.sender in self.blocked:
                continue
            self._on_frame(frame)

    def _on_frame(self, frame: PeerFrame) -> None:
        now = time.monotonic()
        if frame.type is MsgType.HEARTBEAT:
            was_alive = frame.sender in self.membership.alive(now)
            try:
                role = Role(frame.body.get("role", "starting"))
            except ValueError:
                return
            self.membership.heartbeat(
                frame.sender,
                role=role,
                epoch=frame.epoch,
                priority=int(frame.body.get("priority", 0)),
                flag=int(frame.body.get("flag", 0)),
                now=now,
            )
            if not was_alive:
                self.events.emit("peer_up", peer=frame.sender, role=role.value, epoch=frame.epoch)
            self._proto_heartbeat(frame.sender, role, frame.body.get("protocol"))
        elif frame.type is MsgType.SWITCHOVER and frame.body.get("to") == self.config.id:
            self._switchover_to = self.config.id
            self.events.emit("switchover_requested", by=frame.sender)
        elif frame.type is MsgType.LEAVE:
            self.membership.peer_down(frame.sender)
            self.events.emit("peer_down", peer=frame.sender, reason="left")
            self._proto_down(frame.sender)
        elif frame.type.name in protocol.MsgType.__members__:
            body = body_of(frame.body)
            if body is None:
                return
            if self.membership.role is Role.ACTIVE and frame.sender not in self._proto_live:
                return  # not (yet) a member: its PeerUp comes with its heartbeat
            kind = protocol.MsgType[frame.type.name]
            self.driver.feed(protocol.MessageIn(frame.sender, kind, body))

    # -- the protocol's view of the peers ---------------------------------------

    def _proto_heartbeat(self, peer: str, role: Role, data: object) -> None:
        """PeerUp for a standby first heard, STATE for every heartbeat of a member."""
        body = body_of(data) if isinstance(data, dict) else None
        if role is not Role.STANDBY or body is None:
            self._proto_down(peer)
            return
        if peer not in self._proto_live:
            self._proto_live[peer] = body.flag
            self.driver.feed(protocol.PeerUp(peer, body.flag))
        self._proto_live[peer] = body.flag
        if self.membership.role is Role.ACTIVE:
            self.driver.feed(protocol.MessageIn(peer, protocol.MsgType.STATE, body))

    def _proto_down(self, peer: str) -> None:
        if self._proto_live.pop(peer, None) is not None:
            self.driver.feed(protocol.PeerDown(peer))

    # -- decisions -----------------------------------------------------------

    def _track_liveness(self, now: float) -> None:
        """Log peers declared failed (missed heartbeats); peer_up is logged on first contact."""
        alive = set(self.membership.alive(now))
        for peer in sorted(self._alive - alive):
            self.events.emit("peer_down", peer=peer, reason="missed heartbeats")
        for peer in sorted(set(self._proto_live) - alive):
            self._proto_down(peer)
        self._alive = alive

    async def _step(self) -> None:
        now = time.monotonic()
        m = self.membership
        self._track_liveness(now)
        if self._switchover_to == self.config.id and m.role is Role.STANDBY:
            self._switchover_to = None
            await self._take_over("switchover")
            return
        if now < self._handover_until and m.live_active(now) is None:
            return  # we handed the role over: give the target time to take it
        decision = m.decide(now)
        if decision is Decision.CHECK_LEASE:
            await self._read_lease()
            decision = m.decide(time.monotonic())
        if decision is Decision.TAKE_OVER:
            await self._take_over("no live active")
        elif decision is Decision.STANDBY:
            await self._become_standby()
        elif decision is Decision.LEAVE:
            await self._leave("superseded by a newer active")
        elif m.role is Role.ACTIVE:
            await self._renew()
            await self._monitor()

    async def _read_lease(self) -> None:
        """Who holds the protected volumes' reservations, and how fresh the renewal is."""
        holder: str | None = None
        age: float | None = None
        for ldev in self.protected:
            try:
                h, a = await self._array_call(
                    "reservation", ldev, lambda c, x=ldev: c.reservation(x)
                )
            except (ArrayError, ArrayUnavailable):
                return  # cannot see the array: no lease reading, so no takeover (no blind start)
            if h is not None and h != self.config.id and (age is None or (a or 0) < age):
                holder, age = h, a
        self.membership.lease(holder, age, now=time.monotonic())

    async def _take_over(self, reason: str) -> None:
        m = self.membership
        previous = m.role
        epoch = m.became_active()
        self._persist(role=NodeRole.ACTIVE, epoch=epoch)
        for ldev in self.protected:  # fence first: the array refuses the old active from now on
            await self._array_call("preempt", ldev, lambda c, x=ldev: c.preempt(x))
        if self.config.reflection == "lazy":  # the standby never refreshed: do it now, in line
            began = time.monotonic()
            ok, detail = await self.driver.refresh_all()
            self.events.emit("lazy_refresh", ok=ok, detail=detail,
                             duration=round(time.monotonic() - began, 6))  # fmt: skip
        standbys = dict(self._proto_live)
        if self.driver.started:
            self.driver.feed(protocol.BecameActive(standbys, epoch))
        else:
            self.driver.feed(protocol.Restarted(NodeRole.ACTIVE, standbys, epoch))
        await self._ensure_attached()
        self.events.emit(
            "role_change",
            **{"from": previous.value, "to": "active", "epoch": epoch, "reason": reason},
        )
        result = await self._run_hook(Hook.START, epoch=epoch)
        await self._run_hook(Hook.ROLE_CHANGE, role="active", epoch=epoch)
        if not result.ok:
            await self._leave(f"start hook failed ({result.describe()})")

    async def _become_standby(self) -> None:
        m = self.membership
        previous = m.role
        m.became_standby()
        self._persist(role=NodeRole.STANDBY, epoch=m.epoch)
        if not self.driver.started:
            self.driver.feed(protocol.Restarted(NodeRole.STANDBY, epoch=m.epoch))
        await self._ensure_attached()
        self.events.emit(
            "role_change", **{"from": previous.value, "to": "standby", "epoch": m.epoch,
                              "reason": "a live active exists"}
        )  # fmt: skip
        await self._run_hook(Hook.ROLE_CHANGE, role="standby", epoch=m.epoch)

    async def _renew(self) -> None:
        for ldev in self.protected:
            if ldev in self.driver.released:
                continue  # lent to the standbys by the protocol (Stage Y): not ours to renew
            try:
                await self._array_call("reserve", ldev, lambda c, x=ldev: c.reserve(x))
            except ReservationConflict as exc:
                if ldev in self.pvols:
                    await self._leave(f"reservation on LDEV {format_ldev(ldev)} was preempted")
                # An S-VOL's control right may be lent out (a standby reflecting it).
                log.info("S-VOL %s held by another host: %s", format_ldev(ldev), exc)
            except (ArrayError, ArrayUnavailable) as exc:
                log.warning("cannot renew LDEV %s: %s", format_ldev(ldev), exc)

    async def _monitor(self) -> None:
        result = await self._run_hook(Hook.MONITOR)
        if not result.ok and self.membership.role is Role.ACTIVE:  # not after a switchover's stop
            await self._leave(f"monitor hook reported {result.describe()}")

    async def _leave(self, reason: str) -> None:
        """Stop the application and leave the cluster; never writes again."""
        was_active = self.membership.role is Role.ACTIVE
        self.membership.left()
        self.events.emit("fenced" if "preempt" in reason else "leaving", reason=reason)
        log.error("leaving the cluster: %s", reason)
        if was_active:
            result = await self._run_hook(Hook.STOP)
            if result.escalates:
                log.error("stop hook failed (%s): leaving without releasing anything, so "
                          "the array keeps fencing this node", result.describe())  # fmt: skip
        for peer in self.config.peers:
            self.links.send(peer.id, MsgType.LEAVE, {"reason": reason}, epoch=self.membership.epoch)
        self._persist(role=NodeRole.NONE, epoch=self.membership.epoch)
        self.events.emit("role_change", **{"from": "active" if was_active else "standby",
                                           "to": "left", "epoch": self.membership.epoch,
                                           "reason": reason})  # fmt: skip
        await trio.sleep(0.1)  # let the LEAVE frames go out
        raise Left(reason)

    # -- helpers -------------------------------------------------------------

    def _persist(self, *, role: NodeRole, epoch: int) -> None:
        """Role changes go through the protocol driver: the state file has one writer."""
        self.driver.persist_role(role, epoch)

    async def _array_call(self, op: str, ldev: int, fn: Any) -> Any:
        started = time.monotonic()
        status = "ok"
        try:
            return await self.array.call(fn, wait=self.config.heartbeat_interval)
        except (ArrayError, ArrayUnavailable) as exc:
            status = type(exc).__name__
            raise
        finally:
            self.events.emit("array_call", op=op, ldev=format_ldev(ldev), status=status,
                             duration=round(time.monotonic() - started, 6))  # fmt: skip

    async def _run_hook(self, hook: Hook, **context: Any) -> HookResult:
        context.setdefault("role", self.membership.role.value)
        context.setdefault("epoch", self.membership.epoch)
        return await self.hooks.run(hook, **context)

    async def _keep_attached(self) -> None:
        """An attach that died (killed, or its mount forced away) is started again, at
        most every :data:`ATTACH_RETRY` seconds, while this node has a role."""
        if self.membership.role not in (Role.ACTIVE, Role.STANDBY):
            return
        if self._attach is None or self._attach.returncode is None:
            return
        if time.monotonic() - self._attach_started < ATTACH_RETRY:
            return
        self.events.emit("attach_died", pid=self._attach.pid, returncode=self._attach.returncode)
        await self._ensure_attached()

    async def _ensure_attached(self) -> None:
        """Keep `blockemu attach` running on the host view; it watches our PID and unmounts
        when we end, even by SIGKILL (PR_SET_PDEATHSIG would fire when the trio worker
        thread that forked it exits, not when we do)."""
        if self._attach is not None and self._attach.returncode is None:
            return
        self.config.host_view.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "blockemu", "attach", str(self.config.host_view),
               "--foreground", "--array", self.config.array.address,
               "--host", self.config.array.host_id, "--buffer", str(self.config.buffer_file),
               "--log-level", "warning", "--exit-with", str(os.getpid())]  # fmt: skip
        if self.config.array.key_file:
            cmd += ["--key-file", str(self.config.array.key_file)]
        log_path = self.config.state_file.with_name(f"{self.config.id}.attach.log")
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._attach = await trio.lowlevel.open_process(
                cmd, stdout=subprocess.DEVNULL, stderr=out
            )
        finally:
            os.close(out)
        self._attach_started = time.monotonic()
        self.events.emit("attach", pid=self._attach.pid, mountpoint=str(self.config.host_view))

    async def _stop_attach(self) -> None:
        proc = self._attach
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()

    # -- control socket --------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        m = self.membership
        return {
            "api_version": API_VERSION,
            "node": self.config.id,
            "role": m.role.value,
            "epoch": m.epoch,
            "priority": self.config.priority,
            "flag": self.state.flag.name if self.state.flag else "0",
            "op": self.state.op.name,
            "group": self.state.group,
            "array_connected": self.array.connected,
            "peers": {
                name: {
                    "role": v.role.value,
                    "epoch": v.epoch,
                    "priority": v.priority,
                    "flag": v.flag,
                    "alive": name in m.alive(now),
                    "last_heartbeat_age": None
                    if v.last_heard is None
                    else round(now - v.last_heard, 3),
                    "blocked": name in self.blocked,
                }
                for name, v in sorted(m.peers.items())
            },
            "protected": [format_ldev(x) for x in self.protected],
            "protocol": self.driver.describe(),
            "heartbeat": {"interval": m.interval, "misses": m.misses},
        }

    async def _serve_control(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        path = control_path(self.config)
        path.unlink(missing_ok=True)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(path))
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started()
        try:
            await trio.serve_listeners(self._control_client, [listener])
        finally:
            path.unlink(missing_ok=True)

    async def _control_client(self, stream: trio.SocketStream) -> None:
        """One request line in; progress lines (``{"progress": ...}``) and one answer out."""
        async with stream:
            data = b""
            while not data.endswith(b"\n"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            lines, out = trio.open_memory_channel[dict[str, Any]](math.inf)

            async def forward() -> None:
                async for line in out:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await stream.send_all(json.dumps(line).encode() + b"\n")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward)
                try:
                    request = json.loads(data)
                    answer = await self._control(
                        request, say=lambda text: lines.send_nowait({"progress": text})
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": f"bad request: {exc}"}
                lines.send_nowait(answer)
                lines.close()

    async def _control(
        self, request: dict[str, Any], say: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        cmd = request["cmd"]
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "switchover":
            return await self._switchover(request.get("to"))
        if cmd == "replica":
            return await self._replica(request, say if request.get("progress") else None)
        if cmd == "pause-at":  # fault injection for tests: see nodeagent.driver
            points = {str(x) for x in request.get("points", [])}
            self.driver.arm(points)
            return {"ok": True, "armed": sorted(points)}
        if cmd == "partition":  # fault injection for tests and labs
            self.blocked = set(request.get("peers", []))
            self.events.emit("partition", peers=sorted(self.blocked))
            return {"ok": True, "blocked": sorted(self.blocked)}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def _replica(
        self, request: dict[str, Any], say: Callable[[str], None] | None
    ) -> dict[str, Any]:
        op = OPS.get(str(request.get("op")))
        if op is None:
            return {"ok": False, "error": f"unknown replica op {request.get('op')!r}; "
                    f"known: {', '.join(OPS)}"}  # fmt: skip
        group = str(request["group"])
        reply = await self.driver.request(
            op, group, wait=bool(request.get("wait", True)), progress=say
        )
        return {"ok": reply.ok, "detail": reply.detail, **({} if reply.ok else
                                                            {"error": reply.detail})}  # fmt: skip

    async def _switchover(self, to: str | None) -> dict[str, Any]:
        m = self.membership
        if m.role is not Role.ACTIVE:
            return {"ok": False, "error": f"{self.config.id} is not the active node"}
        now = time.monotonic()
        candidates = sorted(
            ((v.priority, name) for name, v in m.alive(now).items() if v.role is Role.STANDBY),
            reverse=True,
        )
        target = to or (candidates[0][1] if candidates else None)
        if target is None or target not in {name for _, name in candidates}:
            return {"ok": False, "error": f"no live standby {to or ''} to switch over to"}
        await self._run_hook(Hook.STOP)
        m.became_standby()
        self._handover_until = time.monotonic() + m.priority_delay
        self._persist(role=NodeRole.STANDBY, epoch=m.epoch)
        self.links.send(target, MsgType.SWITCHOVER, {"to": target}, epoch=m.epoch)
        self.events.emit("role_change", **{"from": "active", "to": "standby", "epoch": m.epoch,
                                           "reason": f"switchover to {target}"})  # fmt: skip
        return {"ok": True, "to": target}


async def control_request(
    config: NodeConfig,
    request: dict[str, Any],
    *,
    seconds: float = 5.0,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Send one request to a running agent's control socket; progress lines the agent
    sends before its answer go to *on_progress*."""
    with trio.fail_after(seconds):
        stream = await trio.open_unix_socket(str(control_path(config)))
        async with stream:
            await stream.send_all(json.dumps(request).encode() + b"\n")
            data = b""
            while True:
                while b"\n" not in data:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return dict(json.loads(data))  # raises on a truncated answer
                    data += chunk
                line, data = data.split(b"\n", 1)
                message = json.loads(line)
                if "progress" not in message:
                    return dict(message)
                if on_progress is not None:
                    on_progress(str(message["progress"]))
