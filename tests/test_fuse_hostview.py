"""Host views for real: `blockemu attach` processes over TCP, loop devices, ext4, SQLite.

Two hosts (nodeA, nodeB) authenticate with their keys and see volumes
00:10-00:1F. The story of the patent, end to end: host A runs a database on
the P-VOL; the pair is split; host B, whose buffer still holds the S-VOL's old
PVID, gets EIO and a log line saying why; after `blockemu host refresh` it
mounts the S-VOL and finds every committed transaction.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from blockemu.fusefs import mounts_at

from .conftest import ArrayProcess, require_privileged

MiB = 1 << 20

HOSTS_TOML = """
[hosts.nodeA]
key_file = "keys/nodeA.key"
ldevs = ["00:10-00:1F"]

[hosts.nodeB]
key_file = "keys/nodeB.key"
ldevs = ["00:10-00:1F"]

[hosts.nodeC]
key_file = "keys/nodeC.key"
ldevs = ["00:20"]
"""


def blockemu(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "blockemu", *args], capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"blockemu {' '.join(args)} failed: {proc.stderr}")
    return proc


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout


@dataclass
class Host:
    """One node: its key, buffer, host-view mount and what it attached on top."""

    name: str
    workdir: Path
    tcp: str
    proc: subprocess.Popen[bytes] | None = None
    loops: list[str] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)

    @property
    def key_file(self) -> Path:
        return self.workdir.parent / "keys" / f"{self.name}.key"

    @property
    def buffer(self) -> Path:
        return self.workdir / "buffer"

    @property
    def view(self) -> Path:
        return self.workdir / "view"

    @property
    def log(self) -> Path:
        return self.workdir / "attach.log"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return blockemu(*args, "--array", self.tcp, "--host", self.name,
                        "--key-file", str(self.key_file), "--buffer", str(self.buffer),
                        check=check)  # fmt: skip

    def attach(self, timeout: float = 20.0) -> None:
        self.view.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "blockemu", "attach", str(self.view), "--foreground",
               "--array", self.tcp, "--host", self.name, "--key-file", str(self.key_file),
               "--buffer", str(self.buffer)]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = os.read(self.proc.stdout.fileno(), 4096) if ready else b""
        if b"mounted at" not in line:
            self.detach()
            raise AssertionError(f"attach of {self.name} failed: {self.log.read_text()}")

    def detach(self) -> None:
        for mnt in reversed(self.mounts):
            subprocess.run(["umount", str(mnt)], capture_output=True)
            if mounts_at(str(mnt)):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        self.mounts.clear()
        for loop in self.loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        self.loops.clear()
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        if mounts_at(str(self.view)):
            subprocess.run(["fusermount3", "-u", "-z", str(self.view)], capture_output=True)

    def losetup(self, device: str) -> str:
        loop = sh("losetup", "--direct-io=on", "-f", "--show", str(self.view / device)).strip()
        self.loops.append(loop)
        return loop

    def mount(self, loop: str, where: Path) -> Path:
        where.mkdir(exist_ok=True)
        sh("mount", loop, str(where))
        self.mounts.append(where)
        return where


@dataclass
class Cluster:
    array: ArrayProcess
    admin: str
    a: Host
    b: Host
    c: Host


@pytest.fixture
def cluster(tmp_path: Path, short_dir: Path) -> Iterator[Cluster]:
    require_privileged("FUSE host views, loop devices and ext4")
    (tmp_path / "keys").mkdir()
    for name in ("nodeA", "nodeB", "nodeC"):
        (tmp_path / "keys" / f"{name}.key").write_bytes(os.urandom(32).hex().encode())
    (tmp_path / "hosts.toml").write_text(HOSTS_TOML)
    array = ArrayProcess(tmp_path / "root", short_dir / "a.sock", tmp_path / "array.log",
                         extra_args=["--hosts", str(tmp_path / "hosts.toml")])  # fmt: skip
    array.start()
    hosts = []
    for name in ("nodeA", "nodeB", "nodeC"):
        (tmp_path / name).mkdir()
        hosts.append(Host(name, tmp_path / name, str(array.tcp)))
    try:
        yield Cluster(array, str(array.unix), *hosts)
    finally:
        for host in hosts:
            host.detach()
        array.stop()


def admin(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return blockemu(*args, "--array", cluster.admin)


def test_two_host_views_see_each_others_writes(cluster: Cluster) -> None:
    admin(cluster, "vol", "create", "00:10", "64M")
    for host in (cluster.a, cluster.b):
        host.cli("host", "scan")
        host.attach()
    data = os.urandom(MiB)
    fa = os.open(cluster.a.view / "hdisk0", os.O_RDWR)
    fb = os.open(cluster.b.view / "hdisk0", os.O_RDWR)
    try:
        assert os.fstat(fa).st_size == 64 * MiB
        os.pwrite(fa, data, 5 * MiB)
        os.fsync(fa)
        assert os.pread(fb, MiB, 5 * MiB) == data
        os.pwrite(fb, b"from B", 0)
        os.fsync(fb)
        assert os.pread(fa, 6, 0) == b"from B"  # no stale page cache on A
    finally:
        os.close(fa)
        os.close(fb)


def test_split_stale_identity_refresh_and_sqlite_on_the_svol(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b = cluster.a, cluster.b
    admin(cluster, "vol", "create", "00:10", "128M", "--label", "db")
    admin(cluster, "vol", "create", "00:11", "128M", "--label", "db-copy")
    for host in (a, b):  # both volumes SMPL: each host caches both identities
        scanned = json.loads(host.cli("host", "scan", "--json").stdout)
        assert [d["ldev"] for d in scanned["devices"]] == ["00:10", "00:11"]
        host.attach()
    admin(cluster, "pair", "create", "--pvol", "00:10", "--svol", "00:11", "--wait")

    # Host A: ext4 and SQLite on the P-VOL, every transaction committed durably.
    loop = a.losetup("hdisk0")
    sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop)
    fs = a.mount(loop, tmp_path / "fsA")
    db = sqlite3.connect(fs / "orders.db")
    # WAL + FULL: a commit returns after the WAL is fsynced, so it is on the array. (In the
    # default DELETE mode the commit point is the journal's unlink, which SQLite only
    # makes durable with synchronous=EXTRA: a split could roll the last one back.)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER)")
    for t in range(300):
        with db:
            db.executemany("INSERT INTO orders (item, qty) VALUES (?, ?)",
                           [(f"item-{t}-{i}", i) for i in range(10)])  # fmt: skip
    committed = db.execute("SELECT count(*) FROM orders").fetchone()[0]
    assert committed == 3000
    admin(cluster, "pair", "split", "--pvol", "00:10", "--wait")
    with db:  # after the split instant: must not appear on the S-VOL
        db.execute("INSERT INTO orders (item, qty) VALUES ('late', 1)")
    db.close()

    # Host B never refreshed: the S-VOL's PVID it holds is stale -> EIO and a clear log line.
    fd = os.open(b.view / "hdisk1", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as failure:
            os.pread(fd, 4096, 0)
        assert failure.value.errno == errno.EIO
    finally:
        os.close(fd)
    new_pvid = json.loads(admin(cluster, "vol", "show", "00:11", "--json").stdout)["pvid"]
    deadline = time.monotonic() + 5
    while "stale identity" not in b.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in b.log.read_text().splitlines() if "stale identity" in x)
    assert "hdisk1" in line and "00:11" in line and new_pvid in line
    assert "blockemu host refresh hdisk1" in line

    # After a refresh the same device works, without remounting the view.
    b.cli("host", "refresh", "hdisk1")
    loop_b = b.losetup("hdisk1")
    fs_b = b.mount(loop_b, tmp_path / "fsB")  # read-write: ext4 replays its journal
    copy = sqlite3.connect(fs_b / "orders.db")
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT count(*) FROM orders").fetchone()[0] == committed
    with copy:
        copy.execute("INSERT INTO orders (item, qty) VALUES ('written on B', 1)")
    copy.close()


def test_refused_hosts_keys_and_masked_volumes(cluster: Cluster, tmp_path: Path) -> None:
    admin(cluster, "vol", "create", "00:10", "16M")
    admin(cluster, "vol", "create", "00:20", "16M")
    c = cluster.c
    seen = json.loads(c.cli("host", "scan", "--json").stdout)["devices"]
    assert [d["ldev"] for d in seen] == ["00:20"]  # 00:10 is masked from nodeC
    refused = c.cli("host", "refresh", "00:10", check=False)
    assert refused.returncode == 14 and "00:10" in refused.stderr
    bad = tmp_path / "bad.key"
    bad.write_bytes(os.urandom(32).hex().encode())
    proc = blockemu("host", "scan", "--array", c.tcp, "--host", "nodeC", "--key-file", str(bad),
                    "--buffer", str(tmp_path / "x.buf"), check=False)  # fmt: skip
    assert proc.returncode == 13
    proc = blockemu("host", "scan", "--array", c.tcp, "--host", "nobody", "--key-file",
                    str(bad), "--buffer", str(tmp_path / "y.buf"), check=False)  # fmt: skip
    assert proc.returncode == 13
    log = cluster.array.log.read_text()
    assert "nobody" in log and "nodeC" in log


def test_a_killed_attach_leaves_a_stale_mount_the_next_start_cleans(cluster: Cluster) -> None:
    admin(cluster, "vol", "create", "00:10", "16M")
    a = cluster.a
    a.cli("host", "scan")
    a.attach()
    with open(a.view / "hdisk0", "r+b") as f:
        f.write(b"survives")
        f.flush()
        os.fsync(f.fileno())
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait()
    with pytest.raises(OSError) as stale:
        os.listdir(a.view)
    assert stale.value.errno == errno.ENOTCONN
    a.attach()
    with open(a.view / "hdisk0", "rb") as f:
        assert f.read(8) == b"survives"
    with contextlib.suppress(OSError):
        assert len(mounts_at(str(a.view))) == 1
