"""Who is active: failure detection and role decisions, without I/O.

The agent feeds this module what it observes -- heartbeats from peers, the
array's reservation lease on the protected volumes, the clock -- and asks
:meth:`Membership.decide` what to do next. Keeping the rules here, as plain
functions of those observations, is what lets tests walk through partitions,
pauses and restarts without sockets or sleeps.

The rules (DESIGN.md section 4; issue "nodeagent"):

* A peer is **alive** while its last heartbeat is younger than
  ``misses * interval`` (the detection time).
* **No blind start**: a node decides nothing until it has either heard a peer
  or read the array's reservation state, and it first listens for one
  detection time, so a restarted node hears the active before contesting.
* A live peer that says it is active, with an epoch at least ours, is the
  active: we are a standby. There is **no automatic failback**: a
  higher-priority node that comes back stays standby.
* With no live active, the **highest-priority** eligible node (ties: the
  smaller id) contests at once; the others wait a **priority delay** of
  ``2 * (detection + reservation call)``, so that when the highest one is
  alive it has long taken over by the time they look.
* Contesting means reading the **lease**: the reservation on the protected
  volumes and how long ago its holder renewed it. A holder that renewed within
  the detection time is alive, only unreachable (a partition): stay standby.
  Otherwise take over: preempt, then attach, then the start hook. The active
  renews every interval, so exactly one node is ever active, and the array's
  reservation fences the other one's I/O even if it does not know yet.
* An active whose renewal is refused (preempted), or who sees a live active
  with a higher epoch, **leaves**: it stops its applications and never writes
  again. Epochs grow on every takeover and are persisted, so a message from an
  old active is recognisably stale.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Role(enum.Enum):
    STARTING = "starting"
    STANDBY = "standby"
    ACTIVE = "active"
    LEFT = "left"  # fenced, failed or stopped: takes no part any more


class Decision(enum.Enum):
    WAIT = "wait"  # nothing to do now
    STANDBY = "standby"  # become (or stay) standby
    CHECK_LEASE = "check-lease"  # read the array's reservation state, then call lease()
    TAKE_OVER = "take-over"  # preempt, attach, start hook; then call became_active()
    LEAVE = "leave"  # stop applications and leave the cluster


@dataclass
class PeerView:
    """What we last heard from one peer."""

    role: Role = Role.STARTING
    epoch: int = 0
    priority: int = 0
    flag: int = 0
    last_heard: float | None = None


@dataclass
class Membership:
    node_id: str
    priority: int
    interval: float
    misses: int
    epoch: int = 0
    role: Role = Role.STARTING
    #: How long a reservation call takes at most (for the priority delay).
    reservation_call: float = 0.5
    peers: dict[str, PeerView] = field(default_factory=dict)
    started_at: float = 0.0
    #: When we last saw a live active (or our own start): the priority delay runs from here.
    active_seen_at: float = 0.0
    #: The last lease reading: (holder, age, when read), or None.
    lease_reading: tuple[str | None, float | None, float] | None = None

    def __post_init__(self) -> None:
        self.active_seen_at = self.started_at

    # -- timing ----------------------------------------------------------

    @property
    def detection(self) -> float:
        return self.interval * self.misses

    @property
    def priority_delay(self) -> float:
        return 2 * (self.detection + self.reservation_call)

    # -- observations ------------------------------------------------------

    def heartbeat(
        self, peer: str, *, role: Role, epoch: int, priority: int, flag: int, now: float
    ) -> None:
        view = self.peers.setdefault(peer, PeerView())
        view.role, view.epoch, view.priority, view.flag = role, epoch, priority, flag
        view.last_heard = now
        if role is Role.ACTIVE:
            self.active_seen_at = now
        if epoch > self.epoch and self.role is not Role.ACTIVE:
            self.epoch = epoch  # a standby follows the cluster's epoch

    def peer_down(self, peer: str) -> None:
        view = self.peers.get(peer)
        if view is not None:
            view.last_heard = None

    def lease(self, holder: str | None, age: float | None, *, now: float) -> None:
        """The reservation state of the protected volumes, as just read from the array."""
        self.lease_reading = (holder, age, now)

    def alive(self, now: float) -> dict[str, PeerView]:
        return {
            name: view
            for name, view in self.peers.items()
            if view.last_heard is not None and now - view.last_heard < self.detection
        }

    def live_active(self, now: float) -> str | None:
        """The peer that is active now, by heartbeat (highest epoch if two claim it)."""
        actives = [
            (view.epoch, name) for name, view in self.alive(now).items() if view.role is Role.ACTIVE
        ]
        return max(actives)[1] if actives else None

    # -- decisions ---------------------------------------------------------

    def _outranks(self, name: str, view: PeerView) -> bool:
        """Whether peer *name* comes before us in the takeover order (ties: smaller id)."""
        if view.priority != self.priority:
            return view.priority > self.priority
        return name < self.node_id

    def decide(self, now: float) -> Decision:
        if self.role is Role.LEFT:
            return Decision.WAIT
        alive = self.alive(now)
        active = self.live_active(now)
        if self.role is Role.ACTIVE:
            if active is not None and alive[active].epoch > self.epoch:
                return Decision.LEAVE  # superseded: another node took over
            return Decision.WAIT
        if active is not None and alive[active].epoch >= self.epoch:
            return Decision.STANDBY if self.role is not Role.STANDBY else Decision.WAIT
        if now - self.started_at < self.detection:
            return Decision.WAIT  # listen first: the active may simply not have spoken yet
        eligible = [
            name
            for name, view in alive.items()
            if view.role in (Role.STANDBY, Role.STARTING) and self._outranks(name, view)
        ]
        if eligible and now - self.active_seen_at < self.priority_delay:
            return Decision.WAIT  # a better candidate is alive: give it time
        reading = self.lease_reading
        if reading is None or now - reading[2] > self.interval:
            return Decision.CHECK_LEASE
        holder, age, _ = reading
        renewing = age is not None and age < self.detection
        if holder is not None and holder != self.node_id and renewing:
            # The holder renews: it is alive, we just cannot hear it.
            return Decision.STANDBY if self.role is Role.STARTING else Decision.WAIT
        return Decision.TAKE_OVER

    # -- outcomes ----------------------------------------------------------

    def became_active(self) -> int:
        """Record a takeover; returns the new epoch (persist it before acting on it)."""
        highest = max([self.epoch, *(v.epoch for v in self.peers.values())])
        self.epoch = highest + 1
        self.role = Role.ACTIVE
        return self.epoch

    def became_standby(self) -> None:
        self.role = Role.STANDBY

    def left(self) -> None:
        self.role = Role.LEFT
