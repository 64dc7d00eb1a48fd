"""Shared fixtures: real array processes, and the rule for privileged tests.

An array started here is a real `blockemu serve` process; it is stopped by
its PID when the test ends, however the test ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import settings

from blockemu.address import Address, parse_address
from blockemu.client import ArrayClient
from formats.wire import Op

REQUIRE_PRIVILEGED = os.environ.get("BLOCKEMU_REQUIRE_PRIVILEGED") == "1"

# CI explores the same examples every run (a red run must be reproducible); a
# developer's runs keep exploring new ones. Failures print the reproducing blob.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if REQUIRE_PRIVILEGED else "dev")


def require_privileged(what: str) -> None:
    """Skip when not root, unless CI said privileged tests must run (then fail)."""
    if os.geteuid() == 0 and os.path.exists("/dev/fuse"):
        return
    message = f"needs root and /dev/fuse: {what}"
    if REQUIRE_PRIVILEGED:
        pytest.fail(message + " (BLOCKEMU_REQUIRE_PRIVILEGED=1: skipping is not allowed here)")
    pytest.skip(message)


class ArrayProcess:
    """A `blockemu serve` child process on ROOT, listening on unix and tcp.

    With *mount*, it also mounts the array view there (`serve --mount`);
    *extra_args* go to `serve` as they are (e.g. ``["--hosts", FILE]``).
    """

    def __init__(
        self,
        root: Path,
        sock: Path,
        log: Path,
        *,
        mount: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.root, self.sock, self.log = root, sock, log
        self.mount = mount
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.unix: Address = parse_address(f"unix:{sock}")
        self.tcp: Address | None = None
        self.banner = ""  # the "listening on" line of the last start

    def start(self, timeout: float = 15.0) -> None:
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        cmd = [
            sys.executable,
            "-m",
            "blockemu",
            "serve",
            "--root",
            str(self.root),
            "--listen",
            str(self.unix),
            "--listen",
            "tcp:127.0.0.1:0",
        ]
        if self.mount is not None:
            cmd += ["--mount", str(self.mount)]
        cmd += self.extra_args
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                self.kill()
                raise AssertionError(f"array did not start in {timeout}s: {self.log.read_text()}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"array exited at start: {self.log.read_text()}")
            line += chunk
        self.banner = line.decode()
        bound = self.banner.split("listening on ")[1].split()
        self.tcp = parse_address(next(a for a in bound if a.startswith("tcp:")))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up of any kind."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="be-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def array(tmp_path: Path, short_dir: Path) -> Iterator[ArrayProcess]:
    proc = ArrayProcess(tmp_path / "root", short_dir / "a.sock", tmp_path / "array.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def split_and_wait(admin: ArrayClient, selector: dict[str, Any]) -> None:
    """Split the pairs *selector* names on the array directly and wait until all are PSUS."""
    await admin.pair_command(Op.PAIR_SPLIT, selector)
    with trio.fail_after(60):
        while any(r["status"] != "PSUS" for r in await admin.pair_display(selector)):
            await trio.sleep(0.02)
