"""nodeagent.peers: PeerLinks over real TCP on 127.0.0.1 (several agents in one trio run)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from blockemu.address import Address, parse_address
from formats.peer_frame import MALFORMED, UNAUTHENTICATED, MsgType, PeerFrame, encode_frame
from nodeagent.peers import (
    QUEUE_SIZE,
    REPLAYED,
    STALE_EPOCH,
    UNKNOWN_SENDER,
    PeerLinks,
)

KEY = b"the-cluster-key-0123456789"
OTHER_KEY = b"not-the-cluster-key-987654"
LOCAL = Address("tcp", host="127.0.0.1", port=0)
NOWHERE = Address("tcp", host="127.0.0.1", port=1)  # refused: placeholder until the real port


@dataclass
class Node:
    links: PeerLinks
    address: Address
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    floor: list[int] = field(default_factory=lambda: [0])  # min_epoch() returns floor[0]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def drops(self, reason: str | None = None) -> list[dict[str, Any]]:
        return [
            f
            for kind, f in self.events
            if kind == "frame_dropped" and (reason is None or f["reason"] == reason)
        ]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [f for k, f in self.events if k == kind]

    def stop(self) -> None:
        self.scope.cancel()


async def start_node(
    nursery: trio.Nursery,
    node_id: str,
    peers: dict[str, Address],
    *,
    key: bytes = KEY,
    listen: Address = LOCAL,
    **kwargs: Any,
) -> Node:
    events: list[tuple[str, dict[str, Any]]] = []
    floor = [0]
    links = PeerLinks(
        node_id,
        listen,
        peers,
        key,
        min_epoch=lambda: floor[0],
        on_event=lambda kind, fields: events.append((kind, fields)),
        **kwargs,
    )
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await links.run(task_status=task_status)

    bound = await nursery.start(run)
    return Node(links, parse_address(bound), events, floor, scope)


async def start_cluster(
    nursery: trio.Nursery, ids: list[str], keys: dict[str, bytes] | None = None
) -> dict[str, Node]:
    """Listen first on port 0, then tell everyone the others' real addresses."""
    nodes = {}
    for node_id in ids:
        peers = {other: NOWHERE for other in ids if other != node_id}
        key = (keys or {}).get(node_id, KEY)
        nodes[node_id] = await start_node(nursery, node_id, peers, key=key)
    for node_id, node in nodes.items():
        for other in ids:
            if other != node_id:
                node.links.set_address(other, nodes[other].address)
    await wait_for(lambda: all(len(n.links.connected()) == len(ids) - 1 for n in nodes.values()))
    return nodes


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    with trio.fail_after(within):
        while not predicate():
            await trio.sleep(0.01)


async def receive(node: Node, within: float = 5.0) -> PeerFrame:
    with trio.fail_after(within):
        return await node.links.received.receive()


async def raw_connect(node: Node) -> trio.SocketStream:
    return await trio.open_tcp_stream(node.address.host, node.address.port)


def frame(
    sender: str = "b",
    *,
    session: int = 1000,
    seq: int = 1,
    epoch: int = 0,
    body: dict[str, Any] | None = None,
    type: MsgType = MsgType.HEARTBEAT,
    key: bytes = KEY,
) -> bytes:
    return encode_frame(PeerFrame(type, sender, session, epoch, seq, body or {}), key)


# -- construction ---------------------------------------------------------------------------


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="itself"):
        PeerLinks("a", LOCAL, {"a": NOWHERE}, KEY, min_epoch=lambda: 0)
    with pytest.raises(ValueError, match="1-32 bytes"):
        PeerLinks("a" * 33, LOCAL, {}, KEY, min_epoch=lambda: 0)
    with pytest.raises(ValueError, match="empty"):
        PeerLinks("a", LOCAL, {}, b"", min_epoch=lambda: 0)
    assert QUEUE_SIZE == 256


def test_send_without_connection_is_dropped_not_blocked() -> None:
    links = PeerLinks("a", LOCAL, {"b": NOWHERE}, KEY, min_epoch=lambda: 0)
    assert links.connected() == set()
    assert links.send("b", MsgType.HEARTBEAT, {}, epoch=1) is False
    assert links.broadcast(MsgType.HEARTBEAT, {}, epoch=1) == []
    with pytest.raises(KeyError, match="not a configured peer"):
        links.send("zed", MsgType.HEARTBEAT, {}, epoch=1)


# -- delivery -------------------------------------------------------------------------------


async def test_messages_delivered_in_order() -> None:
    async with trio.open_nursery() as nursery:
        nodes = await start_cluster(nursery, ["a", "b", "c"])
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        assert a.address.port != 0
        for i in range(200):
            assert a.links.send("b", MsgType.START, {"i": i}, epoch=7)
        got = [await receive(b) for _ in range(200)]
        assert [f.body["i"] for f in got] == list(range(200))
        assert {(f.sender, f.session, f.epoch, f.type) for f in got} == {
            ("a", a.links.session, 7, MsgType.START)
        }
        seqs = [f.seq for f in got]
        assert seqs == sorted(set(seqs))

        assert sorted(c.links.broadcast(MsgType.DONE, {"x": 1}, epoch=8)) == ["a", "b"]
        for node in (a, b):
            got_frame = await receive(node)
            assert (got_frame.sender, got_frame.type, got_frame.body) == (
                "c",
                MsgType.DONE,
                {"x": 1},
            )
        assert b.drops() == [] and a.drops() == [] and c.drops() == []
        assert [f["peer"] for f in a.kinds("link_up")].count("b") == 1
        nursery.cancel_scope.cancel()


async def test_queue_full_drops_oldest_heartbeat_then_refuses() -> None:
    async with trio.open_nursery() as nursery:
        b = await start_node(nursery, "b", {"a": NOWHERE})
        a = await start_node(nursery, "a", {"b": b.address}, queue_size=8)
        await wait_for(lambda: a.links.connected() == {"b"})
        # Nothing below yields, so the sender task cannot drain the queue meanwhile.
        assert all(a.links.send("b", MsgType.HEARTBEAT, {"hb": i}, epoch=0) for i in range(8))
        assert a.links.send("b", MsgType.START, {"start": 1}, epoch=0)  # hb 0 made room
        got = [(await receive(b)).body for _ in range(8)]
        assert got == [{"hb": i} for i in range(1, 8)] + [{"start": 1}]

        assert all(a.links.send("b", MsgType.DONE, {"d": i}, epoch=0) for i in range(8))
        assert not a.links.send("b", MsgType.DONE, {"d": 8}, epoch=0)
        assert not a.links.send("b", MsgType.HEARTBEAT, {"hb": 9}, epoch=0)
        got = [(await receive(b)).body for _ in range(8)]
        assert got == [{"d": i} for i in range(8)]
        nursery.cancel_scope.cancel()


# -- rejections -----------------------------------------------------------------------------


async def test_wrong_key_peer_is_rejected_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="nodeagent.peers")
    async with trio.open_nursery() as nursery:
        nodes = await start_cluster(nursery, ["a", "b", "c"], keys={"c": OTHER_KEY})
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        for i in range(3):
            assert c.links.send("a", MsgType.SWITCHOVER, {"to": "c"}, epoch=99)
            assert a.links.send("b", MsgType.START, {"i": i}, epoch=1)
            assert b.links.send("a", MsgType.START_ACK, {"i": i}, epoch=1)
            assert (await receive(b)).body == {"i": i}
            assert (await receive(a)).body == {"i": i}
        await wait_for(lambda: len(a.drops(UNAUTHENTICATED)) == 3)
        drop = a.drops()[0]
        assert drop["sender"] == "c"
        assert drop["peer"].startswith("tcp:127.0.0.1:")
        lines = [r.getMessage() for r in caplog.records if "dropped frame" in r.getMessage()]
        assert any(
            drop["peer"] in line and "'c'" in line and UNAUTHENTICATED in line for line in lines
        )
        assert a.links.received.statistics().current_buffer_used == 0  # nothing from c
        nursery.cancel_scope.cancel()


async def test_garbage_does_not_break_the_listener() -> None:
    async with trio.open_nursery() as nursery:
        nodes = await start_cluster(nursery, ["a", "b"])
        a, b = nodes["a"], nodes["b"]
        junk = await raw_connect(a)
        await junk.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
        with trio.fail_after(5):
            assert await junk.receive_some(100) == b""  # a hung up on it
        await junk.aclose()
        assert [d["reason"] for d in a.drops()] == [MALFORMED]
        assert "bad magic" in a.drops()[0]["detail"]
        assert a.kinds("connection_closed")[0]["why"] == "stream cannot be decoded"

        # a flood of well-framed but unauthenticated frames: closed after 16 in a row
        flood = await raw_connect(a)
        await flood.send_all(b"".join(frame(seq=i, key=OTHER_KEY) for i in range(40)))
        with trio.fail_after(5):
            while await flood.receive_some(100):
                pass
        await flood.aclose()
        assert len(a.drops(UNAUTHENTICATED)) == 16
        assert a.kinds("connection_closed")[1]["why"] == "16 rejected frames in a row"

        # the listener and the real link are fine
        assert b.links.send("a", MsgType.HEARTBEAT, {"ok": True}, epoch=0)
        assert (await receive(a)).body == {"ok": True}
        late = await raw_connect(a)
        await late.send_all(frame("b", session=b.links.session + 1, body={"late": 1}))
        assert (await receive(a)).body == {"late": 1}
        await late.aclose()
        nursery.cancel_scope.cancel()


async def test_replayed_frame_is_dropped() -> None:
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, "a", {"b": NOWHERE, "c": NOWHERE})
        captured = frame("b", seq=1, body={"n": 1})
        stream = await raw_connect(a)
        await stream.send_all(captured + captured + frame("b", seq=2, body={"n": 2}))
        assert (await receive(a)).body == {"n": 1}
        assert (await receive(a)).body == {"n": 2}
        (drop,) = a.drops()
        assert (drop["reason"], drop["sender"], drop["frame_seq"]) == (REPLAYED, "b", 1)

        # replay state is per sender, not per connection
        other = await raw_connect(a)
        await other.send_all(captured + frame("b", seq=3, body={"n": 3}))
        assert (await receive(a)).body == {"n": 3}
        assert [d["reason"] for d in a.drops()] == [REPLAYED, REPLAYED]
        await stream.aclose()
        await other.aclose()
        nursery.cancel_scope.cancel()


async def test_old_session_is_dropped_and_new_session_accepted() -> None:
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, "a", {"b": NOWHERE})
        stream = await raw_connect(a)
        await stream.send_all(frame(session=200, seq=5, body={"n": 1}))
        assert (await receive(a)).body == {"n": 1}
        await stream.send_all(frame(session=100, seq=6, body={"n": 2}))  # an older boot
        await stream.send_all(frame(session=300, seq=1, body={"n": 3}))  # a restart
        assert (await receive(a)).body == {"n": 3}
        (drop,) = a.drops()
        assert (drop["reason"], drop["session"]) == (REPLAYED, 100)
        assert "older" in drop["detail"]
        sessions = [(e["session"], e["previous"]) for e in a.kinds("peer_session")]
        assert sessions == [(200, None), (300, 200)]
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_stale_epoch_is_dropped_and_the_link_stays() -> None:
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, "a", {"b": NOWHERE})
        a.floor[0] = 5
        stream = await raw_connect(a)
        stale = b"".join(frame(seq=i, epoch=4) for i in range(1, 31))  # more than MAX_REJECTS
        await stream.send_all(stale + frame(seq=31, epoch=5, body={"ok": 1}))
        got = await receive(a)
        assert (got.body, got.epoch) == ({"ok": 1}, 5)
        drops = a.drops()
        assert len(drops) == 30
        assert {d["reason"] for d in drops} == {STALE_EPOCH}
        assert "epoch 4 is below 5" in drops[0]["detail"]
        assert a.kinds("connection_closed") == []
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_unknown_sender_is_dropped() -> None:
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, "a", {"b": NOWHERE})
        stream = await raw_connect(a)
        await stream.send_all(frame("zed") + frame("a") + frame("b", body={"ok": 1}))
        assert (await receive(a)).body == {"ok": 1}
        assert [(d["reason"], d["sender"]) for d in a.drops()] == [
            (UNKNOWN_SENDER, "zed"),
            (UNKNOWN_SENDER, "a"),
        ]
        assert "this node itself" in a.drops()[1]["detail"]
        await stream.aclose()
        nursery.cancel_scope.cancel()


# -- restarts and dead connections ----------------------------------------------------------


async def test_restarted_peer_is_accepted_again() -> None:
    async with trio.open_nursery() as nursery:
        nodes = await start_cluster(nursery, ["a", "b"])
        a, b1 = nodes["a"], nodes["b"]
        for i in range(5):
            assert b1.links.send("a", MsgType.HEARTBEAT, {"i": i}, epoch=3)
        for _ in range(5):
            await receive(a)
        b1.stop()
        await wait_for(lambda: a.links.connected() == set())
        assert not a.links.send("b", MsgType.HEARTBEAT, {}, epoch=3)

        b2 = await start_node(nursery, "b", {"a": a.address})  # a new process, a new port
        assert b2.links.session > b1.links.session
        a.links.set_address("b", b2.address)
        await wait_for(lambda: b2.links.connected() == {"a"} and a.links.connected() == {"b"})
        assert b2.links.send("a", MsgType.HEARTBEAT, {"again": 1}, epoch=3)
        got = await receive(a)
        assert (got.body, got.session, got.seq) == ({"again": 1}, b2.links.session, 1)
        assert a.drops() == []
        assert a.kinds("peer_session")[-1] == {
            "sender": "b",
            "session": b2.links.session,
            "previous": b1.links.session,
        }
        assert a.links.send("b", MsgType.HEARTBEAT, {"back": 1}, epoch=3)
        assert (await receive(b2)).body == {"back": 1}
        nursery.cancel_scope.cancel()


async def test_reconnects_after_the_listener_restarts() -> None:
    async with trio.open_nursery() as nursery:
        nodes = await start_cluster(nursery, ["a", "b"])
        a, b1 = nodes["a"], nodes["b"]
        b1.stop()
        await wait_for(lambda: "b" not in a.links.connected())
        assert a.kinds("link_down")[0]["peer"] == "b"
        await trio.sleep(0.3)  # a few failed dials, so the backoff has grown

        b2 = await start_node(nursery, "b", {"a": a.address}, listen=b1.address)  # same port
        await wait_for(lambda: "b" in a.links.connected())
        assert a.links.send("b", MsgType.STATE, {"state": "x"}, epoch=2)
        got = await receive(b2)
        assert (got.sender, got.type, got.body) == ("a", MsgType.STATE, {"state": "x"})
        assert len(a.kinds("link_up")) == 2
        nursery.cancel_scope.cancel()


async def test_stalled_peer_connection_is_dropped() -> None:
    """A peer that accepts but never reads: the send times out and the link redials."""
    accepted: list[trio.SocketStream] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def hold(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        try:
            await trio.sleep_forever()
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, hold, listeners)
        peer = Address("tcp", host="127.0.0.1", port=port)
        a = await start_node(nursery, "a", {"b": peer}, io_timeout=0.3)
        await wait_for(lambda: a.links.connected() == {"b"})
        big = {"blob": "x" * 500_000}
        with trio.fail_after(20):
            while not a.kinds("link_down"):
                a.links.send("b", MsgType.STATE, big, epoch=0)
                await trio.sleep(0.005)
        down = a.kinds("link_down")[0]
        assert "stalled" in down["why"], down
        await wait_for(lambda: len(accepted) >= 2)  # it dialled again
        nursery.cancel_scope.cancel()
