"""The per-node event log: one JSON object per line (JSONL), appended as things happen.

Every role change, flag change, message sent or received, array call and hook
call of a node is written here with timestamps. It is the record tests and
tools read to see what a node did and in what order -- tests *wait on it*
(:func:`wait_for_event`) instead of sleeping, and check forbidden patterns
over it (e.g. "S-VOL usable" before every REFLECTED).

Line format
-----------

Every line is one JSON object with these keys first, then the event's fields::

    {"ts": 1764010000.123456, "mono": 8123.456789, "node": "node1", "kind": "role_change",
     "seq": 17, "from": "STANDBY", "to": "ACTIVE", "epoch": 4, "reason": "peer node2 down"}

| key | type | meaning |
| --- | --- | --- |
| ts | float | Unix time (``time.time()``), for humans and for merging logs |
| mono | float | ``time.monotonic()`` of this host: durations and order on one node |
| node | str | the node's id (``id`` in its config) |
| kind | str | what happened: one of the kinds below |
| seq | int | 1, 2, 3, ... per :class:`EventLog` object (see below) |

``seq`` restarts at 1 when the agent restarts; the file is appended to, so a
drop in ``seq`` marks a restart.

Field values are converted to JSON as follows: enums by **name**
(``NodeRole.ACTIVE`` -> ``"ACTIVE"``, ``ReplicaFlag.ZERO`` -> ``"ZERO"``,
``ReplicaFlag.A1`` -> ``"A1"``), bytes as lowercase hex, paths as strings,
tuples and sets as lists, dataclasses as objects, exceptions as
``"TypeName: message"``; anything else JSON cannot hold raises ``TypeError``.
A field name may end in ``_`` to dodge a Python keyword: ``from_=...`` is
written as ``"from"``. The five keys above are reserved (``ValueError``).

Event kinds
-----------

The agent writes these kinds, with at least these fields (more may be added;
readers must ignore fields they do not know, and kinds they do not know):

| kind | fields | when |
| --- | --- | --- |
| agent_start | epoch, flag | the agent started, state file loaded |
| agent_stop | reason or signal | the agent is stopping (never on SIGKILL) |
| role_change | from, to, epoch, reason | the node's role changed |
| flag_change | from, to, op, group | the replica flag changed (after the state file) |
| message_sent | peer, type, seq, epoch | a frame went out to a peer |
| message_received | peer, type, seq, epoch | an authenticated frame came in |
| frame_dropped | peer, reason | an incoming frame was refused or dropped |
| peer_up | peer (role, epoch) | a peer became alive (again) |
| peer_down | peer (reason) | a peer missed heartbeats, or said it leaves |
| link_up / link_down | peer, address (why, dropped) | our connection to a peer |
| array_call | op, args or ldev, status, duration | a request to the array returned |
| hook_call | hook, outcome, exit_code, duration | an application hook returned |
| buffer_refresh | ldev, action, pvid | an S-VOL's disk-info buffer entry changed |
| replica_request | op, group | a replica operation was requested here |
| replica_done | op, group, status | a requested replica operation ended |
| svol_unusable | group, svols | applications told S-VOLs are going away |
| svol_usable | group, svols | applications told S-VOLs are usable |
| fenced | reason | this node is fenced, or fenced itself, and leaves |
| leaving | reason | this node leaves the cluster (not fenced) |
| error | where, message | an unexpected error the agent survived |

Notes on the fields:

* ``role_change``: roles as lowercase words -- ``starting``, ``standby``,
  ``active``, ``left`` (the values of :class:`nodeagent.membership.Role`;
  pass ``role.value``, since an enum itself is written by name); ``reason``
  free text.
* ``flag_change``: flags by ``ReplicaFlag`` name (``ZERO``, ``A1``-``A3``,
  ``B1``-``B3``), ``op`` a ``ReplicaOp`` name (``NONE``, ``SPLIT``, ...),
  ``group`` the replica group ("" for none). Written once the state file
  holds the new flag.
* ``message_*``: ``type`` is the frame type's name (``STATUS``, ``START``,
  ``DONE``, ``REFLECTED``, ...), ``seq`` the frame's own sequence number,
  ``epoch`` the sender's epoch.
* ``frame_dropped``: ``reason`` a short word such as ``bad-mac``,
  ``stale-epoch``, ``replayed``, ``malformed``, or ``test-drop`` (dropped on
  purpose by a test); ``sender``, ``type``, ``seq``, ``epoch`` when known.
* ``array_call``: ``op`` the request's name, its arguments as ``args`` (an
  object) or, for a call on one volume, ``ldev`` (``"00:1A"``); ``status``
  ``"ok"`` or the error's class name; ``duration`` seconds.
* ``hook_call``: ``hook`` the hook name (``start``, ``stop``, ``monitor``,
  ``role-change``, ``svol-unusable``, ``svol-usable``), ``outcome`` a
  ``HookOutcome`` name (``SUCCESS``, ``NOT_RUNNING``, ``FAILED``, ``TIMEOUT``,
  ``MISSING``, ``ERROR``), ``exit_code`` null unless the hook exited on its
  own, ``duration`` seconds. See :mod:`nodeagent.hooks`.
* ``buffer_refresh``: ``action`` ``"refresh"`` (``pvid`` the new PVID, hex) or
  ``"forget"`` (entry removed, ``pvid`` null).
* ``replica_done``: ``status`` ``"ok"`` or the error.
* ``svol_*``: ``svols`` a list of LDEV names (``"00:1A"``); written when the
  corresponding hook is called (usable: only after every live standby
  reflected -- DESIGN.md invariant 4 is checked over these).
* ``fenced``: ``reason`` e.g. reservation preempted, renewal refused, or
  ``"stop hook failed: TIMEOUT"`` (see ``nodeagent.hooks.STOP_FAILURE_POLICY``).

Times: ``duration`` fields are seconds as floats.

Writing
-------

Each event is encoded to one line and written with a single ``write(2)`` on a
descriptor opened with ``O_APPEND``, so readers never see two events mixed and
at worst see a last line still being written (readers skip it). Lines are not
fsynced: after a power loss the last few events may be missing, never half of
one in the middle. The last 1000 events are also kept in memory
(:meth:`EventLog.recent`); with no path, *only* in memory. A log that cannot
be written (disk full, ...) does not stop the agent: the event is kept in
memory, the error is counted in ``write_errors`` and reported once on stderr.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

import trio

#: Keys every event has; fields cannot use them.
RESERVED = ("ts", "mono", "node", "kind", "seq")
#: How many events :class:`EventLog` keeps in memory.
MEMORY_EVENTS = 1000
#: How many of the last events a :func:`wait_for_event` timeout message quotes.
TIMEOUT_CONTEXT = 5

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


class EventLogError(ValueError):
    """A line in the middle of an event log is not a JSON object (see :func:`read_events`)."""


def jsonable(value: object) -> Any:
    """*value* as plain JSON types, by the rules in the module docstring."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):  # before int/str: IntEnum and StrEnum are both
        return value.name if value.name is not None else jsonable(value.value)
    if isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        items = [jsonable(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, BaseException):
        text = str(value)
        return f"{type(value).__name__}: {text}" if text else type(value).__name__
    raise TypeError(
        f"event field value {value!r} of type {type(value).__name__} is not JSON-serialisable: "
        "pass a str, number, bool, None, enum, bytes, path, list, dict or dataclass"
    )


def _key(key: object) -> str:
    if isinstance(key, enum.Enum):
        return str(key.name)
    if isinstance(key, bytes):
        return key.hex()
    return str(key)


class EventLog:
    """The event log of one node: appends to *path* (created if needed), or memory only.

    Not a context for I/O errors: :meth:`emit` never raises for a failed write
    (see the module docstring). Safe to call from several threads.
    """

    def __init__(self, path: Path | str | None, *, node_id: str) -> None:
        self.path = Path(path) if path is not None else None
        self.node_id = node_id
        self.write_errors = 0
        self.last_error: OSError | None = None
        self._memory: collections.deque[Event] = collections.deque(maxlen=MEMORY_EVENTS)
        self._seq = 0
        self._lock = threading.Lock()
        self._fd: int | None = None
        if self.path is not None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o644)

    @property
    def closed(self) -> bool:
        return self.path is not None and self._fd is None

    def emit(
        self, kind: str, more: Mapping[str, object] | None = None, /, **fields: object
    ) -> Event:
        """Record one event; returns it as written (a fresh dict).

        Fields come as keywords, or as a mapping (``emit(kind, {"from": ...})``,
        the ``on_event(kind, fields)`` callback shape), or both. After
        :meth:`close`, events are kept in memory only.
        """
        if not kind:
            raise ValueError("an event needs a kind")
        body: Event = {}
        items = {**more, **fields} if more else fields
        for name, value in items.items():
            key = name[:-1] if name.endswith("_") and len(name) > 1 else name
            if key in RESERVED:
                raise ValueError(f"event field {key!r} is reserved (reserved: {RESERVED})")
            body[key] = jsonable(value)
        with self._lock:
            self._seq += 1
            event: Event = {
                "ts": time.time(),
                "mono": time.monotonic(),
                "node": self.node_id,
                "kind": kind,
                "seq": self._seq,
            }
            event.update(body)
            line = (json.dumps(event, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode()
            self._memory.append(event)
            if self._fd is not None:
                self._write(line)
        return dict(event)

    def _write(self, line: bytes) -> None:
        assert self._fd is not None
        view = memoryview(line)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self.write_errors += 1
            self.last_error = exc
            if self.write_errors == 1:
                print(
                    f"nodeagent: cannot write event log {self.path}: {exc.strerror or exc}; "
                    "events are kept in memory only until it can be written again",
                    file=sys.stderr,
                )

    def recent(self, n: int = 100) -> list[Event]:
        """The last *n* events (at most the last 1000), oldest first."""
        with self._lock:
            if n <= 0:
                return []
            return [dict(e) for e in list(self._memory)[-n:]]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- reading -----------------------------------------------------------------------------------


def _parse(line: bytes) -> Event | None:
    try:
        event = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return event if isinstance(event, dict) else None


def read_events(path: Path | str, *, strict: bool = True) -> list[Event]:
    """All events in the log at *path*, oldest first.

    A last line without its newline (being written, or torn by a crash) is
    skipped. Any other line that is not a JSON object raises
    :class:`EventLogError` naming ``FILE:LINE`` -- unless *strict* is false,
    when such lines are skipped too. Blank lines are ignored.
    """
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn last line
    events: list[Event] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        event = _parse(line)
        if event is None:
            if strict:
                raise EventLogError(
                    f"{path}:{number}: not a JSON object: {line[:80]!r}; the log is damaged "
                    "(read it with strict=False to skip such lines)"
                )
            continue
        events.append(event)
    return events


class _Tail:
    """Reads the complete lines appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.exists = False

    def read_new(self) -> list[Event]:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # truncated or replaced: start over
                    self.offset, self.partial = 0, b""
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            self.exists = False
            return []
        self.exists = True
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        events = []
        for line in lines:
            event = _parse(line) if line.strip() else None
            if event is not None:
                events.append(event)
        return events


def _matches(predicate: Predicate, event: Event) -> bool:
    try:
        return bool(predicate(event))
    except KeyError:
        return False


async def wait_for_event(
    path: Path | str,
    predicate: Predicate | str,
    *,
    timeout: float,  # noqa: ASYNC109 - the deadline is part of the call, by design
    poll: float = 0.05,
) -> Event:
    """The first event in the log at *path* that *predicate* accepts, waiting up to *timeout* s.

    The whole file is searched from its start, then followed as it grows, so
    an event written before the call counts (filter on ``seq``, ``mono`` or
    ``ts`` to look only at later ones). The file may not exist yet. A
    *predicate* that is a string matches events of that kind; a predicate that
    raises ``KeyError`` (a field the event does not have) does not match.
    Lines that are not JSON objects are skipped.

    Raises ``TimeoutError`` naming the file and quoting its last few events.
    """
    check: Predicate
    if isinstance(predicate, str):
        kind = predicate

        def check(event: Event) -> bool:
            return event.get("kind") == kind

    else:
        check = predicate
    tail = _Tail(Path(path))
    last: collections.deque[Event] = collections.deque(maxlen=TIMEOUT_CONTEXT)
    with trio.move_on_after(timeout):
        while True:
            for event in tail.read_new():
                if _matches(check, event):
                    return event
                last.append(event)
            await trio.sleep(poll)
    what = f"kind {predicate!r}" if isinstance(predicate, str) else "the predicate"
    if not tail.exists:
        raise TimeoutError(f"no event matching {what} within {timeout} s: {path} does not exist")
    if not last:
        raise TimeoutError(f"no event matching {what} within {timeout} s: {path} has no events")
    quoted = "\n".join("  " + json.dumps(e, ensure_ascii=False) for e in last)
    raise TimeoutError(
        f"no event matching {what} within {timeout} s in {path}; the last {len(last)}:\n{quoted}"
    )
