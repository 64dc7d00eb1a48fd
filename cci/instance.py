"""The HORCM instance: ``horcmstart.sh``/``horcmshutdown.sh`` and the daemon they run.

Real CCI commands do nothing on their own: they ask a running HORCM
instance, which holds the HORCM file read at its start, talks to the partner
instance named in HORCM_INST and sends orders to the array's command device.
blockemu keeps that shape, because scripts depend on it (a command without
a running instance fails with EX_ATTHOR 251; Cinder restarts the instance
after editing its file):

* ``horcmstart.sh N`` reads ``/etc/horcmN.conf`` (``$HORCM_CONF``; see
  :mod:`cci.rundir`), checks it, and starts ``python -m cci.instance`` in
  its own session. It returns once the instance listens (exit 0), or prints
  why it could not start (exit 2); 1 means it was already running.
* The instance listens on UDP as HORCM_MON says (partners ask it for its
  HORCM file there) and on ``$BLOCKEMU_CCI_RUNDIR/horcmN.sock`` for commands.
* The array it orders about is a ``unix:``/``tcp:`` address given as a
  HORCM_CMD entry (blockemu's stand-in for a command device), else
  ``$BLOCKEMU_ARRAY`` at start time. ``$BLOCKEMU_CCI_MODE`` (sync, async or
  deferred; default deferred, which is how ShadowImage copies) is the
  mirror mode of the pairs paircreate forms.
* ``horcmshutdown.sh N`` asks the instance to stop and waits until it has.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from blockemu.address import Address, AddressError, open_listeners, parse_address
from blockemu.cliutil import run_trio
from blockemu.pairstate import Command
from formats.horcm import HorcmConfig, HorcmError, InstEntry, load_horcm, parse_horcm

from . import actions, groups, rpc
from .exitcodes import EX_ATTHOR, EX_COMERR, EX_ENORMT, EX_INVARG, CciError, report
from .model import Dev
from .options import Selector, instance_from_env
from .rundir import InstancePaths, config_path, paths

log = logging.getLogger("cci.instance")

MODES = ("sync", "async", "deferred")
DEFAULT_MODE = "deferred"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
#: How often a partner is asked again while it does not answer (UDP may drop).
RESEND = 0.5

EXIT_ALREADY_RUNNING = 1
EXIT_START_FAILED = 2


class StartError(Exception):
    """The instance cannot start; the message says why and what to do."""


def array_address(config: HorcmConfig, env: Mapping[str, str]) -> Address:
    """The array a HORCM file orders about: a unix:/tcp: HORCM_CMD entry, else $BLOCKEMU_ARRAY."""
    for entry in config.cmd:
        if entry.startswith(("unix:", "tcp:")):
            try:
                return parse_address(entry)
            except AddressError as exc:
                raise StartError(f"{config.path}: HORCM_CMD entry {entry!r}: {exc}") from None
    value = env.get("BLOCKEMU_ARRAY")
    if not value:
        raise StartError(
            f"{config.path}: no array to talk to: put its address (unix:/path or tcp:HOST:PORT) "
            "on a line of HORCM_CMD, or set BLOCKEMU_ARRAY before horcmstart.sh"
        )
    try:
        return parse_address(value)
    except AddressError as exc:
        raise StartError(f"BLOCKEMU_ARRAY: {exc}") from None


def mirror_mode(env: Mapping[str, str]) -> str:
    mode = (env.get("BLOCKEMU_CCI_MODE") or DEFAULT_MODE).lower()
    if mode not in MODES:
        raise StartError(f"BLOCKEMU_CCI_MODE={mode!r}: expected one of {', '.join(MODES)}")
    return mode


# -- the daemon ----------------------------------------------------------------------------------


class Instance:
    """One running HORCM instance (the ``horcmd`` of CCI)."""

    def __init__(
        self,
        name: str,
        config: HorcmConfig,
        text: str,
        array: Address,
        mode: str,
        where: InstancePaths,
    ) -> None:
        if config.mon is None:
            raise StartError(
                f"{config.path}: no HORCM_MON line: the instance needs the address and service "
                "(UDP port) to listen on, e.g. 'localhost 11000 1000 3000'"
            )
        self.name = name
        self.config = config
        self.text = text
        self.array = array
        self.mode = mode
        self.paths = where
        self.mon = config.mon
        self.timeout = self.mon.timeout_ms10 / 100

    async def run(self) -> None:
        """Bind, check the array, say READY on stdout, and serve until told to stop."""
        try:
            family, sockaddr = rpc.udp_address(self.mon.ip_address, self.mon.service, listen=True)
        except (OSError, ValueError) as exc:
            raise StartError(
                f"{self.config.path}: HORCM_MON {self.mon.ip_address} {self.mon.service}: {exc}"
            ) from None
        udp = trio.socket.socket(family, socket.SOCK_DGRAM)
        try:
            await udp.bind(sockaddr)
        except OSError as exc:
            raise StartError(
                f"{self.config.path}: cannot listen on HORCM_MON {sockaddr[0]} port {sockaddr[1]} "
                f"({exc.strerror or exc}); another instance may use that service"
            ) from None
        try:
            async with actions.array_session(self.array) as client:
                await client.list_volumes()
        except CciError as exc:
            raise StartError("; ".join(exc.causes) or str(exc)) from None
        self.paths.rundir.mkdir(parents=True, exist_ok=True)
        try:
            listeners = await open_listeners(parse_address(f"unix:{self.paths.socket}"))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartError(
                    f"HORCM {self.paths.label} is already running ({self.paths.socket})"
                ) from None
            raise StartError(f"cannot listen on {self.paths.socket}: {exc}") from None
        self.paths.pidfile.write_text(f"{os.getpid()}\n")
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._udp_loop, udp)
                nursery.start_soon(trio.serve_listeners, self._serve_command, listeners)
                nursery.start_soon(self._signals)
                log.info(
                    "HORCM %s: %s, array %s, mode %s, UDP %s",
                    self.paths.label,
                    self.config.path,
                    self.array,
                    self.mode,
                    sockaddr,
                )
                _ready()
        finally:
            with contextlib.suppress(OSError):
                self.paths.socket.unlink()
            with contextlib.suppress(OSError):
                self.paths.pidfile.unlink()
            udp.close()
            log.info("HORCM %s stopped", self.paths.label)

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("signal %d: stopping", signum)
                self.nursery.cancel_scope.cancel()
                return

    # -- partners (UDP) --------------------------------------------------------------------------

    async def _udp_loop(self, udp: trio.socket.SocketType) -> None:
        while True:
            data, peer = await udp.recvfrom(rpc.MAX_DATAGRAM)
            try:
                request = rpc.decode(data)
            except ValueError:
                log.warning("ignoring a malformed datagram from %s", peer)
                continue
            if request.get("op") != "config":
                answer: dict[str, Any] = CciError(EX_COMERR, "unknown request").to_json()
            else:
                answer = {
                    "ok": True,
                    "instance": self.name,
                    "path": self.config.path,
                    "text": self.text,
                    "serial": request.get("serial"),
                }
            reply = rpc.encode({**answer, "id": request.get("id")})
            if len(reply) > rpc.MAX_DATAGRAM:
                reply = rpc.encode(
                    {
                        **CciError(
                            EX_COMERR, f"{self.config.path} is too large to send in one datagram"
                        ).to_json(),
                        "id": request.get("id"),
                    }
                )
            with contextlib.suppress(OSError):
                await udp.sendto(reply, peer)

    async def partner_config(self, entry: InstEntry) -> HorcmConfig:
        """Ask the partner instance at *entry* for its HORCM file (EX_ENORMT if it is silent)."""
        where = f"{entry.ip_address} {entry.service}"
        try:
            family, sockaddr = rpc.udp_address(entry.ip_address, entry.service)
        except (OSError, ValueError) as exc:
            raise CciError(
                EX_ENORMT,
                f"{self.config.path}: HORCM_INST of group {entry.group!r}: {where}: {exc}",
            ) from None
        request_id = os.urandom(8).hex()
        with trio.socket.socket(family, socket.SOCK_DGRAM) as udp:
            await udp.connect(sockaddr)
            with trio.move_on_after(self.timeout):
                while True:
                    with contextlib.suppress(OSError):
                        await udp.send(rpc.encode({"op": "config", "id": request_id}))
                    with trio.move_on_after(RESEND):
                        while True:
                            try:
                                data = await udp.recv(rpc.MAX_DATAGRAM)
                            except OSError:  # e.g. ECONNREFUSED: nobody there (yet)
                                await trio.sleep_forever()  # until this round ends; ask again
                            try:
                                answer = rpc.decode(data)
                            except ValueError:
                                continue
                            if answer.get("id") == request_id:
                                return self._partner_answer(answer, where)
        raise CciError(
            EX_ENORMT,
            f"the partner instance of group {entry.group!r} at {where} "
            f"(HORCM_INST in {self.config.path}) did not answer within "
            f"{self.timeout:g} s; start it with horcmstart.sh",
        )

    @staticmethod
    def _partner_answer(answer: dict[str, Any], where: str) -> HorcmConfig:
        if not answer.get("ok"):
            raise CciError.from_json(answer)
        try:
            return parse_horcm(str(answer["text"]), path=str(answer["path"]))
        except (KeyError, HorcmError) as exc:
            raise CciError(EX_COMERR, f"partner at {where} sent an unusable file: {exc}") from None

    # -- commands (unix socket) ------------------------------------------------------------------

    async def _serve_command(self, stream: trio.SocketStream) -> None:
        async with stream:
            buffer = b""
            while not buffer.endswith(b"\n") and len(buffer) < rpc.MAX_MESSAGE:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
            try:
                request = rpc.decode(buffer)
                answer = await self.handle(request)
            except CciError as exc:
                answer = exc.to_json()
            except ValueError as exc:
                answer = CciError(EX_INVARG, f"malformed request: {exc}").to_json()
            except Exception as exc:  # report, keep serving the other commands
                log.exception("request failed")
                answer = CciError(EX_COMERR, f"HORCM internal error: {exc!r}").to_json()
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(rpc.encode(answer))
            if request_is_shutdown(answer):
                self.nursery.cancel_scope.cancel()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {
                "ok": True,
                "instance": self.name,
                "pid": os.getpid(),
                "config": self.config.path,
                "array": str(self.array),
                "mode": self.mode,
            }
        if op == "shutdown":
            return {"ok": True, "shutdown": True}
        if op not in ("status", "create", "command"):
            raise CciError(EX_INVARG, f"unknown request {op!r}")
        selector = Selector(
            group=request.get("group"),
            dev=request.get("dev"),
            volume=None if request.get("volume") is None else tuple(request["volume"]),
        )
        devs = await self.resolve(selector)
        async with actions.array_session(self.array) as client:
            if op == "status":
                devs = await actions.observe(client, devs)
                return {"ok": True, "devs": [d.to_json() for d in devs]}
            if op == "create":
                await actions.create(
                    client,
                    devs,
                    local_is_pvol=bool(request["local_is_pvol"]),
                    pace=int(request["pace"]),
                    split=request.get("split"),
                    consistency=bool(request.get("consistency")),
                    ctg=request.get("ctg"),
                    mode=self.mode,
                )
            else:
                cmd = Command(request["command"])
                await actions.command(client, devs, cmd, quick=bool(request.get("quick")))
            devs = await actions.observe(client, devs)
            return {"ok": True, "devs": [d.to_json() for d in devs]}

    async def resolve(self, selector: Selector) -> list[Dev]:
        group = groups.find_group(self.config, selector)
        remote = await self.partner_config(groups.partner(self.config, group))
        return groups.resolve(self.config, remote, group, selector)


def request_is_shutdown(answer: dict[str, Any]) -> bool:
    return bool(answer.get("shutdown"))


def _ready() -> None:
    """Tell horcmstart.sh we are serving, then stop writing to its pipe."""
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def daemon_main(argv: Sequence[str]) -> int:
    """``python -m cci.instance NAME CONFIG ARRAY MODE RUNDIR``: run one instance."""
    name, conf, array, mode, rundir = argv
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s horcmd_0%(process)d %(levelname)s %(message)s",
    )
    try:
        with open(conf, encoding="utf-8", errors="replace") as f:
            text = f.read()
        config = parse_horcm(text, path=conf)
        where = paths(name, {"BLOCKEMU_CCI_RUNDIR": rundir})
        instance = Instance(name, config, text, parse_address(array), mode, where)
        run_trio(instance.run)
    except (StartError, HorcmError, OSError) as exc:
        log.error("%s", exc)
        print(f"ERROR: {exc}", flush=True)
        return EXIT_START_FAILED
    return 0


# -- horcmstart.sh / horcmshutdown.sh --------------------------------------------------------------


def _instances(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    if not argv:
        return [instance_from_env(env)]
    for arg in argv:
        if not arg.isdigit():
            raise CciError(EX_INVARG, f"{arg!r}: give instance numbers (horcmstart.sh 0 1)")
    return [str(int(a)) for a in argv]


def ping(where: InstancePaths) -> dict[str, Any] | None:
    """The running instance's answer to ping, or None if it is not running."""
    try:
        return rpc.call(where.socket, {"op": "ping"}, timeout=5, label=where.label)
    except CciError:
        return None


def horcmstart(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Start each instance named (or $HORCMINST); 0 if all started, else the worst code."""
    try:
        names = _instances(argv, env)
    except CciError as exc:
        return report("horcmstart.sh", exc)
    if len(names) > 1 and env.get("HORCM_CONF"):
        print(
            "horcmstart.sh: HORCM_CONF names one file; start one instance at a time with it",
            file=sys.stderr,
        )
        return EXIT_START_FAILED
    return max(_start_one(name, env) for name in names)


def _start_one(name: str, env: Mapping[str, str]) -> int:
    where = paths(name, env)
    print(f"starting HORCM {where.label}", flush=True)
    running = ping(where)
    if running is not None:
        print(f"HORCM {where.label} has already been started (pid {running['pid']}).")
        return EXIT_ALREADY_RUNNING
    conf = config_path(name, env)
    try:
        config = load_horcm(conf)
        array = array_address(config, env)
        mode = mirror_mode(env)
        if config.mon is None:
            raise StartError(
                f"{conf}: no HORCM_MON line: the instance needs the address and "
                "service (UDP port) to listen on"
            )
        try:
            where.rundir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartError(
                f"cannot create the run directory {where.rundir} ({exc.strerror or exc}); "
                "set BLOCKEMU_CCI_RUNDIR to a directory you can write"
            ) from None
    except (HorcmError, StartError) as exc:
        print(f"horcmstart.sh: {exc}", file=sys.stderr)
        print(f"HORCM {where.label} failed to start.", file=sys.stderr)
        return EXIT_START_FAILED
    cmd = [
        sys.executable,
        "-m",
        "cci.instance",
        name,
        str(conf),
        str(array),
        mode,
        str(where.rundir),
    ]
    with open(where.log, "ab") as logfile:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=logfile,
            start_new_session=True,
            env=dict(env),
        )
    assert proc.stdout is not None
    line = _read_line(proc.stdout.fileno(), START_TIMEOUT)
    proc.stdout.close()
    if line == "READY":
        print(f"HORCM {where.label} starts successfully.")
        proc.returncode = 0  # it runs on in its own session; not ours to wait for
        return 0
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    reason = line.removeprefix("ERROR: ") if line else f"no word from it in {START_TIMEOUT:g} s"
    print(f"horcmstart.sh: {reason} (log: {where.log})", file=sys.stderr)
    print(f"HORCM {where.label} failed to start.", file=sys.stderr)
    return EXIT_START_FAILED


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def horcmshutdown(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Stop each instance named (or $HORCMINST); EX_ATTHOR if one is not running."""
    try:
        names = _instances(argv, env)
    except CciError as exc:
        return report("horcmshutdown.sh", exc)
    status = 0
    for name in names:
        where = paths(name, env)
        print(f"{where.label}:", flush=True)
        running = ping(where)
        if running is None:
            status = report(
                "horcmshutdown.sh",
                CciError(EX_ATTHOR, f"HORCM {where.label} is not running ({where.socket})"),
            )
            continue
        pid = int(running["pid"])
        with contextlib.suppress(CciError):
            rpc.call(where.socket, {"op": "shutdown"}, timeout=5, label=where.label)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        print(f"horcmshutdown {where.label} !!!")
    return status


if __name__ == "__main__":
    sys.exit(daemon_main(sys.argv[1:]))
