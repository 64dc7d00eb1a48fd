"""Application hooks: the executables nodeagent calls on cluster events.

A hook is how a node tells its applications (database, file system mounts,
service IP, ...) what the cluster decided. The calling convention is that of
an OCF resource agent, so an existing agent can be used unchanged.

Hooks
-----

| hook | called when | suggested context |
| --- | --- | --- |
| start | this node became active, holds the reservations | role, epoch |
| stop | this node stops being active (leaving, handover) | role, epoch, reason |
| monitor | every monitoring interval on the active | role, epoch |
| role-change | the node's role changed (standby, active, left) | role, previous, epoch |
| svol-unusable | S-VOLs go away (before a form/resync hides them) | group, svols, op |
| svol-usable | S-VOLs usable (split done, every standby reflected) | group, svols, op |

Which executable
----------------

With a hook **directory** configured (``[hooks] directory = "hooks.d"``), hook
``start`` is the file ``hooks.d/start``; ``role-change`` is
``hooks.d/role-change`` (the spellings ``role_change`` and ``on_role_change``
are accepted too, first found wins). No such file: the hook is MISSING. A
file that is there but not executable (or is a directory) is an ERROR --
a ``chmod +x`` was forgotten, and that must not pass silently.

With **commands** configured (``[hooks] start = "..."``), the command line is
split with :func:`shlex.split` -- it is *not* run by a shell; use
``sh -c '...'`` for pipes or redirections (the hook name then becomes ``$0``).
The config keys may be spelt ``role-change``, ``role_change`` or
``on_role_change`` (likewise ``svol_usable``/``on_svol_usable``). A relative
program path (one with a ``/``) is relative to the config file's directory
(``HookConfig.cwd``), which is also the working directory of every hook.

Arguments and environment
-------------------------

The hook name is appended as the **last argument**: ``hooks.d/start start``,
or ``/usr/lib/ocf/resource.d/heartbeat/IPaddr2 start``, exactly as Pacemaker
calls an OCF agent. Nothing is read from stdin (it is ``/dev/null``).

The environment is the agent's own, plus the ``env`` given to :class:`Hooks`,
plus:

* ``BLOCKEMU_HOOK`` -- the hook name (``start``, ``svol-usable``, ...);
* ``BLOCKEMU_NODE`` -- this node's id;
* ``BLOCKEMU_<KEY>`` for every context item (``role="active"`` ->
  ``BLOCKEMU_ROLE=active``; also ``BLOCKEMU_EPOCH``, ``BLOCKEMU_GROUP``,
  ``BLOCKEMU_SVOLS``, ...); lists are space-separated (``BLOCKEMU_SVOLS="00:1A 00:1B"``),
  booleans ``true``/``false``, enums their name;
* ``OCF_RESKEY_<key>`` with the same values (``OCF_RESKEY_role=active``), as an OCF
  agent receives its parameters;
* ``OCF_ROOT``: kept when set, else ``/usr/lib/ocf`` when that directory exists,
  so an agent sourcing ``${OCF_ROOT}/lib/heartbeat/ocf-shellfuncs`` works.

An OCF agent's own parameters are set in the command line, e.g.
``start = "env OCF_RESKEY_ip=192.0.2.10 /usr/lib/ocf/resource.d/heartbeat/IPaddr2"``.

Exit codes (OCF)
----------------

| exit | outcome | meaning |
| --- | --- | --- |
| 0 | SUCCESS | done / running and healthy (monitor) |
| 7 | NOT_RUNNING | not running, cleanly (monitor); from ``stop`` it also means stopped |
| other, or a signal | FAILED | 1 generic, 2 args, 3 unimplemented, 5/6 not installed/configured |
| (timeout) | TIMEOUT | did not exit in time: its whole process group was killed |
| (no hook) | MISSING | nothing configured for this hook: counts as success, for every hook |
| (cannot run) | ERROR | not executable, program not found, unsplittable command line, ... |

:attr:`HookResult.ok` says whether the hook achieved its purpose: SUCCESS or
MISSING for every hook, and NOT_RUNNING too for ``stop`` (OCF: "stop must
succeed if the resource is already stopped"). A ``monitor`` that answers
NOT_RUNNING is not ok: the applications are down.

Contract for hook authors
-------------------------

* **Idempotent**, as OCF requires: ``start`` on a started application and
  ``stop`` on a stopped one succeed; the agent may repeat any hook after a
  crash or failover, and does not say what it believes the current state is.
* **Bounded**: default timeouts are 30 s for start and stop and 10 s for the
  others (:data:`DEFAULT_TIMEOUTS`). On timeout the hook's process group gets
  SIGTERM, then SIGKILL after :data:`KILL_GRACE` s. Hooks run in their own
  session (``setsid``), so this reaches every process they started -- a hook
  that starts a daemon which must outlive a *timed-out* hook must detach it
  (``setsid``) itself. A hook that exits in time is never killed, nor is
  anything it left running.
* **Output**: stdout and stderr are captured, the last 4 KiB of each kept in
  the result (and logged by the agent). A daemon started by a hook must not
  keep the hook's stdout/stderr open (redirect it, as OCF agents do): the
  agent stops reading :data:`OUTPUT_GRACE` s after the hook exits and closes
  the pipes, and a daemon that then writes to them gets SIGPIPE.
* **One at a time**: a :class:`Hooks` object runs one hook at a time (Pacemaker
  never runs two actions of one resource at once either); a second call waits
  for the first to finish. The wait does not count against the timeout.

Failing stop: escalation
------------------------

See :data:`STOP_FAILURE_POLICY`. In short: a stop that is not ok means the
applications may still be writing, so the node **fences itself**: it releases
nothing and leaves the cluster, and the array's reservations keep its I/O
refused until a peer takes over.
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from formats.node_config import HookConfig

if TYPE_CHECKING:
    from .events import EventLog


class Hook(enum.Enum):
    START = "start"
    STOP = "stop"
    MONITOR = "monitor"
    ROLE_CHANGE = "role-change"
    SVOL_UNUSABLE = "svol-unusable"
    SVOL_USABLE = "svol-usable"

    @property
    def spellings(self) -> tuple[str, ...]:
        """Names accepted for this hook's file or config key, preferred first."""
        name = self.value
        under = name.replace("-", "_")
        return tuple(dict.fromkeys((name, under, f"on_{under}")))


class HookOutcome(enum.Enum):
    SUCCESS = "success"  # exit 0 (OCF_SUCCESS)
    NOT_RUNNING = "not-running"  # exit 7 (OCF_NOT_RUNNING)
    FAILED = "failed"  # any other exit code, or killed by a signal
    TIMEOUT = "timeout"  # did not exit in time; its process group was killed
    MISSING = "missing"  # no hook configured: counts as success
    ERROR = "error"  # could not be run at all


OCF_SUCCESS = 0
OCF_NOT_RUNNING = 7

#: Default timeouts, seconds.
DEFAULT_TIMEOUTS: Mapping[Hook, float] = {
    Hook.START: 30.0,
    Hook.STOP: 30.0,
    Hook.MONITOR: 10.0,
    Hook.ROLE_CHANGE: 10.0,
    Hook.SVOL_UNUSABLE: 10.0,
    Hook.SVOL_USABLE: 10.0,
}
#: Seconds between SIGTERM and SIGKILL to a timed-out hook's process group.
KILL_GRACE = 2.0
#: Seconds the output pipes are still read after the hook exited (a leftover
#: child may still hold them open).
OUTPUT_GRACE = 0.2
#: Bytes of stdout and of stderr kept, from the end.
OUTPUT_TAIL = 4096
#: Where OCF agents live when ``OCF_ROOT`` is not set.
OCF_ROOT_DEFAULT = "/usr/lib/ocf"

STOP_FAILURE_POLICY = """\
A failing stop escalates to fencing, as Pacemaker's on-fail=fence for stop.

When the stop hook's result is not ok (FAILED, TIMEOUT or ERROR; NOT_RUNNING
and MISSING are ok), nobody knows whether the applications still write to the
volumes. The node then fences itself:

1. it releases NOTHING: no reservation (control right) is given up, no volume is
   detached, no further hook is run (no role-change, no svol hooks);
2. it writes a `fenced` event (reason "stop hook failed: <outcome>") and leaves
   the cluster: stops heartbeating and answering peers, and exits with a
   non-zero status (it must not be restarted automatically into the cluster);
3. the array keeps refusing every other host's I/O on its volumes until a peer
   takes over: the peer sees the heartbeats stop and the reservation lease age,
   preempts the reservation and starts the applications itself. From then on the
   array refuses the fenced node's I/O, so even an application that survived the
   failed stop cannot write to the volumes any more.

An operator clears it by stopping the applications by hand and restarting the
agent, which joins as a standby.
"""


@dataclass(frozen=True)
class HookResult:
    hook: Hook
    outcome: HookOutcome
    exit_code: int | None  # None unless the hook exited on its own; -N: killed by signal N
    duration: float  # seconds the hook ran (0 when it did not run)
    stdout_tail: str  # the last OUTPUT_TAIL bytes of its stdout (utf-8, errors replaced)
    stderr_tail: str  # likewise for stderr; for ERROR, why it could not run
    command: list[str] | None  # the argv run (hook name last), None for MISSING

    @property
    def ok(self) -> bool:
        """Whether the hook achieved its purpose (see the module docstring)."""
        if self.outcome in (HookOutcome.SUCCESS, HookOutcome.MISSING):
            return True
        return self.hook is Hook.STOP and self.outcome is HookOutcome.NOT_RUNNING

    @property
    def escalates(self) -> bool:
        """A stop that is not ok: the node must fence itself (:data:`STOP_FAILURE_POLICY`)."""
        return self.hook is Hook.STOP and not self.ok

    def describe(self) -> str:
        """One line for logs: ``stop: FAILED (exit 1) in 0.03 s: <last stderr line>``."""
        code = f" (exit {self.exit_code})" if self.exit_code is not None else ""
        text = f"{self.hook.value}: {self.outcome.name}{code} in {self.duration:.2f} s"
        last = next((ln for ln in reversed(self.stderr_tail.splitlines()) if ln.strip()), "")
        return f"{text}: {last.strip()}" if last and not self.ok else text


ContextValue = str | int | enum.Enum | Sequence[str]


def _env_value(value: ContextValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.name)
    if isinstance(value, str | int):
        return str(value)
    return " ".join(str(v) for v in value)


class _Tail:
    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, chunk: bytes | bytearray) -> None:
        self.data += chunk
        if len(self.data) > 2 * OUTPUT_TAIL:
            del self.data[:-OUTPUT_TAIL]

    def text(self) -> str:
        return bytes(self.data[-OUTPUT_TAIL:]).decode("utf-8", errors="replace")


def _group_alive(pgid: int) -> bool:
    """Whether process group *pgid* has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies (children reparented to an init that does not reap) still count for kill(2).
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Hooks:
    """Runs the application hooks of one node (see the module docstring).

    *timeouts* override :data:`DEFAULT_TIMEOUTS` per hook; *env* adds
    variables to every hook's environment. With *events*, every run that
    executed or tried to execute something is logged as a ``hook_call`` event
    (MISSING ones are not).
    """

    def __init__(
        self,
        config: HookConfig,
        *,
        node_id: str,
        timeouts: Mapping[Hook, float] | None = None,
        env: Mapping[str, str] | None = None,
        events: EventLog | None = None,
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.timeouts = dict(DEFAULT_TIMEOUTS)
        for hook, seconds in (timeouts or {}).items():
            if not isinstance(hook, Hook):
                raise TypeError(f"timeouts keys must be Hook members, got {hook!r}")
            if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"timeout of hook {hook.value} must be > 0 seconds, got {seconds}")
            self.timeouts[hook] = float(seconds)
        self.env = dict(env or {})
        self.events = events
        self._lock = trio.Lock()

    # -- which executable ------------------------------------------------------------------

    def resolve(self, hook: Hook) -> list[str] | None:
        """The argv for *hook* (hook name last), or None when none is configured.

        Raises ``OSError``/``ValueError`` with the reason when one is configured
        but cannot be run (not executable, unsplittable command line).
        """
        cfg = self.config
        if cfg.directory is not None:
            for name in hook.spellings:
                path = cfg.directory / name
                if not os.path.lexists(path):
                    continue
                if not path.exists():
                    raise OSError(f"hook {path} is a dangling symbolic link")
                if path.is_dir():
                    raise OSError(f"hook {path} is a directory, not an executable")
                if not os.access(path, os.X_OK):
                    raise OSError(f"hook {path} is not executable: chmod +x it")
                return [str(path), hook.value]
            return None
        for name in hook.spellings:
            line = cfg.commands.get(name)
            if line is not None:
                break
        else:
            return None
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise ValueError(f"cannot split hook command {line!r}: {exc}") from None
        if not argv:
            raise ValueError(f"hook command for {hook.value} is empty")
        if "/" in argv[0] and not os.path.isabs(argv[0]) and cfg.cwd is not None:
            argv[0] = os.path.normpath(cfg.cwd / os.path.expanduser(argv[0]))
        return [*argv, hook.value]

    def environment(self, hook: Hook, context: Mapping[str, ContextValue]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        if "OCF_ROOT" not in env and os.path.isdir(OCF_ROOT_DEFAULT):
            env["OCF_ROOT"] = OCF_ROOT_DEFAULT
        for key, value in context.items():
            if not key.isidentifier():
                raise ValueError(f"hook context key {key!r} must be an identifier")
            text = _env_value(value)
            env[f"BLOCKEMU_{key.upper()}"] = text
            env[f"OCF_RESKEY_{key}"] = text
        env["BLOCKEMU_HOOK"] = hook.value
        env["BLOCKEMU_NODE"] = self.node_id
        return env

    # -- running -----------------------------------------------------------------------------

    async def run(self, hook: Hook, /, **context: ContextValue) -> HookResult:
        """Run *hook* with *context*; never raises for a hook's failure, returns it.

        Raises only for programming errors (a bad context key) and, as any trio
        call, ``Cancelled`` -- after killing the hook's process group.
        """
        env = self.environment(hook, context)
        async with self._lock:
            result = await self._run(hook, env)
        if self.events is not None and result.outcome is not HookOutcome.MISSING:
            self.events.emit(
                "hook_call",
                hook=hook.value,
                outcome=result.outcome,
                exit_code=result.exit_code,
                duration=round(result.duration, 6),
            )
        return result

    async def _run(self, hook: Hook, env: dict[str, str]) -> HookResult:
        def error(message: str, argv: list[str] | None) -> HookResult:
            return HookResult(hook, HookOutcome.ERROR, None, 0.0, "", message, argv)

        try:
            argv = self.resolve(hook)
        except (OSError, ValueError) as exc:
            return error(str(exc), None)
        if argv is None:
            return HookResult(hook, HookOutcome.MISSING, None, 0.0, "", "", None)

        out, err = _Tail(), _Tail()
        exited = trio.Event()
        term_sent: list[float] = []  # when SIGTERM went to the group, if it did
        pgid: int | None = None

        async def deliver_cancel(proc: trio.Process) -> None:
            term_sent.append(trio.current_time())
            _killpg(proc.pid, signal.SIGTERM)
            await trio.sleep(KILL_GRACE)
            _killpg(proc.pid, signal.SIGKILL)

        async def run_it(task_status: trio.TaskStatus[trio.Process]) -> None:
            await trio.run_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
                env=env,
                cwd=self.config.cwd,
                start_new_session=True,
                deliver_cancel=deliver_cancel,
                task_status=task_status,
            )
            exited.set()

        async def pump(stream: trio.abc.ReceiveStream | None, tail: _Tail) -> None:
            if stream is None:
                return
            async with stream:
                async for chunk in stream:
                    tail.add(chunk)

        started = trio.current_time()
        proc: trio.Process | None = None
        try:
            with trio.move_on_after(self.timeouts[hook]):
                async with trio.open_nursery() as nursery:
                    try:
                        proc = await nursery.start(run_it)
                    except OSError as exc:
                        return error(f"cannot run {argv[0]}: {exc.strerror or exc}", argv)
                    except ValueError as exc:  # e.g. a NUL byte in an argument or variable
                        return error(f"cannot run {argv[0]}: {exc}", argv)
                    pgid = proc.pid
                    async with trio.open_nursery() as readers:
                        readers.start_soon(pump, proc.stdout, out)
                        readers.start_soon(pump, proc.stderr, err)
                        await exited.wait()
                        # Leftover children may hold the pipes: read a moment more, then stop.
                        readers.cancel_scope.deadline = trio.current_time() + OUTPUT_GRACE
        finally:
            if pgid is not None and term_sent:
                with trio.CancelScope(shield=True):
                    await self._finish_group(pgid, term_sent[0])
        duration = trio.current_time() - started
        assert proc is not None
        if term_sent:  # deliver_cancel ran: it did not exit in time
            return HookResult(
                hook, HookOutcome.TIMEOUT, None, duration, out.text(), err.text(), argv
            )
        code = proc.returncode
        if code == OCF_SUCCESS:
            outcome = HookOutcome.SUCCESS
        elif code == OCF_NOT_RUNNING:
            outcome = HookOutcome.NOT_RUNNING
        else:
            outcome = HookOutcome.FAILED
        return HookResult(hook, outcome, code, duration, out.text(), err.text(), argv)

    @staticmethod
    async def _finish_group(pgid: int, term_time: float) -> None:
        """After SIGTERM: SIGKILL the group if anything of it is left KILL_GRACE s later."""
        while _group_alive(pgid):
            if trio.current_time() >= term_time + KILL_GRACE:
                _killpg(pgid, signal.SIGKILL)
                return
            await trio.sleep(0.02)


__all__ = [
    "DEFAULT_TIMEOUTS",
    "KILL_GRACE",
    "STOP_FAILURE_POLICY",
    "Hook",
    "HookOutcome",
    "HookResult",
    "Hooks",
]
