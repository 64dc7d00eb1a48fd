"""The JSONL event log: writing, reading, tailing, and a writer in another process."""

from __future__ import annotations

import enum
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from formats.state_file import NodeRole, ReplicaFlag
from nodeagent.events import (
    MEMORY_EVENTS,
    EventLog,
    EventLogError,
    read_events,
    wait_for_event,
)

ROOT = Path(__file__).resolve().parent.parent


class Color(enum.Enum):
    RED = "red"


@dataclass
class Point:
    x: int
    tag: bytes


def test_emit_read_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "node1.events.jsonl"
    with EventLog(path, node_id="node1") as log:
        before = time.time()
        first = log.emit("role_change", from_="standby", to="active", epoch=4, reason="peer down")
        log.emit(
            "flag_change",
            {"from": ReplicaFlag.ZERO, "to": ReplicaFlag.A1},
            op="SPLIT",
            group="G1",
        )
        log.emit(
            "misc",
            pvid=b"\x01\xab",
            path=tmp_path,
            roles={NodeRole.ACTIVE: [Color.RED]},
            items=(1, 2),
            tags={"b", "a"},
            point=Point(3, b"\xff"),
            error=OSError(5, "I/O error"),
            nothing=None,
        )
    events = read_events(path)
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert all(e["node"] == "node1" for e in events)
    assert list(events[0])[:5] == ["ts", "mono", "node", "kind", "seq"]
    assert before <= events[0]["ts"] <= time.time()
    assert events[0]["mono"] <= events[1]["mono"] <= events[2]["mono"]
    assert events[0] == first
    assert events[0]["from"] == "standby" and events[0]["to"] == "active"
    assert (events[1]["from"], events[1]["to"]) == ("ZERO", "A1")
    misc = events[2]
    assert misc["pvid"] == "01ab"
    assert misc["path"] == str(tmp_path)
    assert misc["roles"] == {"ACTIVE": ["RED"]}
    assert misc["items"] == [1, 2] and misc["tags"] == ["a", "b"]
    assert misc["point"] == {"x": 3, "tag": "ff"}
    assert misc["error"] == "OSError: [Errno 5] I/O error"
    assert misc["nothing"] is None
    # One object per line, nothing else.
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["node"] == "node1" for line in lines)


def test_reserved_and_unserialisable_fields_are_refused(tmp_path: Path) -> None:
    log = EventLog(None, node_id="n")
    with pytest.raises(ValueError, match="reserved"):
        log.emit("x", seq=3)
    with pytest.raises(ValueError, match="reserved"):
        log.emit("x", kind_="y")
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        log.emit("x", what=object())
    assert log.recent() == []


def test_memory_only_keeps_the_last_thousand() -> None:
    log = EventLog(None, node_id="n")
    for i in range(MEMORY_EVENTS + 5):
        log.emit("tick", i=i)
    everything = log.recent(10_000)
    assert len(everything) == MEMORY_EVENTS
    assert everything[0]["i"] == 5 and everything[-1]["seq"] == MEMORY_EVENTS + 5
    assert [e["i"] for e in log.recent(3)] == list(range(MEMORY_EVENTS + 2, MEMORY_EVENTS + 5))
    assert log.recent(0) == []
    log.recent(1)[0]["i"] = "changed"  # copies: the log itself is not changed
    assert log.recent(1)[0]["i"] == MEMORY_EVENTS + 4


def test_appends_to_an_existing_log_and_close(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    with EventLog(path, node_id="n") as log:
        log.emit("a")
    log = EventLog(path, node_id="n")  # a restarted agent: seq starts again
    log.emit("b")
    log.close()
    assert log.closed
    log.emit("c")  # after close: memory only
    assert [(e["kind"], e["seq"]) for e in read_events(path)] == [("a", 1), ("b", 1)]
    assert [e["kind"] for e in log.recent()] == ["b", "c"]


def test_write_errors_do_not_stop_the_agent(capsys: pytest.CaptureFixture[str]) -> None:
    log = EventLog("/dev/full", node_id="n")
    log.emit("a")
    log.emit("b")
    log.close()
    assert log.write_errors == 2 and log.last_error is not None
    assert [e["kind"] for e in log.recent()] == ["a", "b"]
    assert capsys.readouterr().err.count("cannot write event log /dev/full") == 1


def test_torn_last_line_is_skipped_and_damage_elsewhere_reported(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    with EventLog(path, node_id="n") as log:
        log.emit("one")
        log.emit("two")
    with open(path, "ab") as f:
        f.write(b'{"ts": 1.0, "mono": 2.0, "node": "n", "ki')
    assert [e["kind"] for e in read_events(path)] == ["one", "two"]

    damaged = tmp_path / "damaged.jsonl"
    lines = path.read_bytes().split(b"\n")
    damaged.write_bytes(lines[0] + b"\n" + b'{"torn\n' + b"[1, 2]\n\n" + lines[1] + b"\n")
    with pytest.raises(EventLogError, match=r"damaged\.jsonl:2: not a JSON object"):
        read_events(damaged)
    assert [e["kind"] for e in read_events(damaged, strict=False)] == ["one", "two"]


async def test_wait_for_event_sees_events_as_they_come(tmp_path: Path) -> None:
    path = tmp_path / "later" / "ev.jsonl"  # does not exist yet

    async def writer() -> None:
        await trio.sleep(0.1)
        path.parent.mkdir()
        log = EventLog(path, node_id="n1")
        log.emit("peer_up", peer="n2")
        await trio.sleep(0.1)
        log.emit("role_change", from_="standby", to="active", epoch=2, reason="test")
        log.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        # A predicate asking for a field some events lack just does not match them.
        event = await wait_for_event(path, lambda e: e["to"] == "active", timeout=5)
    assert event["kind"] == "role_change" and event["epoch"] == 2
    # Events already in the file count, and a kind can be given as a string.
    assert (await wait_for_event(path, "peer_up", timeout=1))["peer"] == "n2"


async def test_wait_for_event_ignores_a_partial_line_until_it_is_complete(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ev.jsonl"
    line = json.dumps({"ts": 1.0, "mono": 1.0, "node": "n", "kind": "fenced", "seq": 1}) + "\n"
    path.write_text(line[:20])

    async def finish() -> None:
        await trio.sleep(0.15)
        with open(path, "a") as f:
            f.write(line[20:])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish)
        event = await wait_for_event(path, "fenced", timeout=5, poll=0.01)
    assert event["seq"] == 1


async def test_wait_for_event_timeout_quotes_the_last_events(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    with EventLog(path, node_id="n") as log:
        for i in range(8):
            log.emit("tick", i=i)
    with pytest.raises(TimeoutError) as info:
        await wait_for_event(path, "fenced", timeout=0.2)
    message = str(info.value)
    assert "kind 'fenced'" in message and "0.2 s" in message and str(path) in message
    assert "the last 5:" in message
    assert '"i": 7' in message and '"i": 3' in message and '"i": 2' not in message

    with pytest.raises(TimeoutError, match="does not exist"):
        await wait_for_event(tmp_path / "nope.jsonl", lambda e: True, timeout=0.1)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TimeoutError, match="has no events"):
        await wait_for_event(tmp_path / "empty.jsonl", lambda e: True, timeout=0.1)


WRITER = """
import sys, time
from nodeagent.events import EventLog
path, node, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = EventLog(path, node_id=node)
for i in range(count):
    log.emit("tick", i=i, padding="x" * (i * 37 % 3000))
    if i % 50 == 0:
        time.sleep(0.01)
log.emit("done", count=count)
log.close()
"""


def done_by(node: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["kind"] == "done" and e["node"] == node


async def test_writer_processes_and_a_reader(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    count = 400
    reads = 0

    async def reader() -> None:
        nonlocal reads
        while True:
            if path.exists():
                events = read_events(path)  # strict: no line is ever half of two events
                reads += 1
                for node in ("w1", "w2"):
                    seqs = [e["seq"] for e in events if e["node"] == node]
                    assert seqs == list(range(1, len(seqs) + 1))
            await trio.sleep(0.005)

    cmd = [sys.executable, "-c", WRITER, str(path)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for node in ("w1", "w2"):
            run = partial(trio.run_process, [*cmd, node, str(count)], cwd=ROOT, check=True)
            nursery.start_soon(run)
        for node in ("w1", "w2"):
            done = await wait_for_event(path, done_by(node), timeout=30)
            assert done["seq"] == count + 1
        nursery.cancel_scope.cancel()
    assert reads > 0
    events = read_events(path)
    assert len(events) == 2 * (count + 1)
    for node in ("w1", "w2"):
        ticks = [e for e in events if e["node"] == node and e["kind"] == "tick"]
        assert [e["i"] for e in ticks] == list(range(count))
        assert all(e["padding"] == "x" * (e["i"] * 37 % 3000) for e in ticks)
