"""Role decisions of nodeagent, walked through without sockets or sleeps."""

from __future__ import annotations

from nodeagent.membership import Decision, Membership, Role

INTERVAL, MISSES = 0.5, 3  # detection 1.5 s, priority delay 2 * (1.5 + 0.5) = 4 s


def node(name: str, priority: int, now: float = 0.0) -> Membership:
    return Membership(name, priority, INTERVAL, MISSES, started_at=now)


def hb(m: Membership, peer: str, role: Role, now: float, *, epoch: int = 1,
       priority: int = 10) -> None:  # fmt: skip
    m.heartbeat(peer, role=role, epoch=epoch, priority=priority, flag=0, now=now)


def test_no_blind_start_then_lease_decides() -> None:
    m = node("n1", 30)
    assert m.decide(0.1) is Decision.WAIT  # listening for a detection time
    assert m.decide(1.6) is Decision.CHECK_LEASE
    m.lease(None, None, now=1.6)
    assert m.decide(1.7) is Decision.TAKE_OVER
    assert m.became_active() == 1 and m.role is Role.ACTIVE


def test_a_live_active_makes_us_standby_and_no_failback() -> None:
    m = node("n1", 99)  # highest priority, but somebody is active already
    hb(m, "n2", Role.ACTIVE, 0.2, epoch=4, priority=10)
    assert m.decide(0.3) is Decision.STANDBY
    m.became_standby()
    assert m.epoch == 4
    hb(m, "n2", Role.ACTIVE, 5.0, epoch=4, priority=10)
    assert m.decide(5.1) is Decision.WAIT


def test_highest_priority_standby_takes_over_others_wait_the_priority_delay() -> None:
    hi, lo = node("hi", 30), node("lo", 20)
    for m in (hi, lo):
        m.became_standby()
        hb(m, "act", Role.ACTIVE, 1.0, epoch=2, priority=50)
    other = {"hi": ("lo", 20), "lo": ("hi", 30)}
    for m in (hi, lo):
        peer, prio = other[m.node_id]
        hb(m, peer, Role.STANDBY, 2.4, epoch=2, priority=prio)
    now = 2.6  # the active's last heartbeat is 1.6 s old: failed
    assert hi.decide(now) is Decision.CHECK_LEASE
    hi.lease("act", 1.6, now=now)
    assert hi.decide(now) is Decision.TAKE_OVER
    assert lo.decide(now) is Decision.WAIT  # hi is alive and outranks it
    assert hi.became_active() == 3


def test_lower_priority_contests_after_the_delay_if_the_better_one_is_silent() -> None:
    lo = node("lo", 20)
    lo.became_standby()
    hb(lo, "act", Role.ACTIVE, 1.0, epoch=2, priority=50)
    hb(lo, "hi", Role.STANDBY, 1.0, epoch=2, priority=30)
    assert lo.decide(2.0) is Decision.WAIT
    # hi is dead too: after the detection time it is no longer a candidate.
    assert lo.decide(2.6) is Decision.CHECK_LEASE


def test_a_renewing_holder_we_cannot_hear_is_alive_partition() -> None:
    m = node("n2", 20)
    m.became_standby()
    hb(m, "n1", Role.ACTIVE, 1.0, epoch=3, priority=30)
    now = 10.0  # partitioned: no heartbeats for 9 s
    assert m.decide(now) is Decision.CHECK_LEASE
    m.lease("n1", 0.3, now=now)  # but n1 renewed its reservation 0.3 s ago
    assert m.decide(now) is Decision.WAIT
    m.lease("n1", 2.0, now=now + 3)  # it stopped renewing: dead
    assert m.decide(now + 3) is Decision.TAKE_OVER


def test_an_active_superseded_by_a_higher_epoch_leaves() -> None:
    m = node("n1", 30)
    m.became_active()
    hb(m, "n2", Role.ACTIVE, 5.0, epoch=1, priority=20)
    assert m.decide(5.1) is Decision.WAIT  # same epoch: not superseded
    hb(m, "n2", Role.ACTIVE, 6.0, epoch=2, priority=20)
    assert m.decide(6.1) is Decision.LEAVE
    m.left()
    assert m.decide(7.0) is Decision.WAIT


def test_priority_ties_go_to_the_smaller_id() -> None:
    b = node("b", 10)
    b.became_standby()
    hb(b, "a", Role.STANDBY, 1.9, priority=10)
    assert b.decide(2.0) is Decision.WAIT  # "a" outranks "b"
    a = node("a", 10)
    a.became_standby()
    hb(a, "b", Role.STANDBY, 1.9, priority=10)
    assert a.decide(2.0) is Decision.CHECK_LEASE
