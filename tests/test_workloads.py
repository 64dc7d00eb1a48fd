"""Databases through the mounts: SQLite and PostgreSQL on ext4 on loop devices on the
array view, a consistency-group split in the middle of the load, and each database's own
checks on the P-VOL and on the split copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from blockemu.client import open_client
from blockemu.hostdisk import MountedDisk
from blockemu.labproc import is_mounted, loops_under
from blockemu.workloads import (
    BATCH,
    Postgres,
    ledger_batches,
    postgres_bindir,
    sqlite_verify,
    sqlite_write,
)

from .conftest import REQUIRE_PRIVILEGED, ArrayProcess, require_privileged, split_and_wait

pytestmark = pytest.mark.root
MiB = 1 << 20


class Rig:
    """A real array with its array view mounted, and the disks a test attached."""

    def __init__(self, array: ArrayProcess, view: Path, work: Path) -> None:
        self.array, self.view, self.work = array, view, work
        self.disks: list[MountedDisk] = []

    def disk(self, ldev: str, where: str, *, mkfs: bool = False) -> MountedDisk:
        d = MountedDisk.attach(self.view / ldev.replace(":", "-"), self.work / where, mkfs=mkfs)
        self.disks.append(d)
        return d

    def call(self, fn, *args):  # type: ignore[no-untyped-def]
        async def go():  # type: ignore[no-untyped-def]
            async with open_client(self.array.unix) as admin:
                return await fn(admin, *args)

        return trio.run(go)


@pytest.fixture
def rig(tmp_path: Path, short_dir: Path) -> Iterator[Rig]:
    require_privileged("loop devices, ext4 and the array view's FUSE mount")
    view = tmp_path / "view"
    view.mkdir()
    array = ArrayProcess(tmp_path / "root", short_dir / "a.sock", tmp_path / "array.log",
                         mount=view)  # fmt: skip
    array.start()
    # Mountpoints where the postgres user can reach them (pytest's tmp dirs are 0700).
    work = Path(tempfile.mkdtemp(prefix="blockemu-db-", dir="/var/tmp"))
    work.chmod(0o755)
    r = Rig(array, view, work)
    try:
        yield r
    finally:
        for d in reversed(r.disks):
            d.detach()
        array.stop()
        if not any(is_mounted(d.mountpoint) for d in r.disks):
            shutil.rmtree(work, ignore_errors=True)
        assert not loops_under(str(view.resolve()))
        assert not any(is_mounted(d.mountpoint) for d in r.disks)


async def _volumes(admin, pairs, group):  # type: ignore[no-untyped-def]
    for p, s in pairs:
        await admin.create(p, 256 * MiB)
        await admin.create(s, 256 * MiB)
    for p, s in pairs:
        await admin.pair_create(f"00:{p:02X}", f"00:{s:02X}", group=group)
    with trio.fail_after(60):
        while any(r["status"] != "PAIR" for r in await admin.pair_display()):
            await trio.sleep(0.05)


def test_sqlite_on_ext4_split_during_the_load(rig: Rig) -> None:
    rig.call(_volumes, [(0x30, 0x31)], 1)
    pvol = rig.disk("00:30", "p", mkfs=True)
    db, ledger = pvol.mountpoint / "app.db", rig.work / "ledger"
    writer = subprocess.Popen([sys.executable, "-m", "blockemu.workloads", "sqlite-load",
                               str(db), str(ledger), "--pause", "0.005"])  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while ledger_batches(ledger) < 20:
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        rig.call(split_and_wait, {"group": 1})  # the backup, while transactions commit
        acknowledged_at_split = ledger_batches(ledger)
        time.sleep(0.3)
    finally:
        writer.kill()  # a crash of the application: SIGKILL
        writer.wait()
    copy = sqlite_verify(rig.disk("00:31", "s").mountpoint / "app.db")
    assert copy.ok, copy.detail
    # The copy holds every batch acknowledged before the split, and only whole batches.
    assert copy.rows // BATCH >= acknowledged_at_split - 1  # one commit may straddle the split
    primary = sqlite_verify(db, at_least_batches=ledger_batches(ledger))
    assert primary.ok, primary.detail
    assert primary.rows > copy.rows  # the P-VOL went on after the split
    assert sqlite_write(db, batches=1) == 1  # and the application can go on


def test_postgres_data_and_wal_in_one_consistency_group(rig: Rig) -> None:
    if postgres_bindir() is None:
        if REQUIRE_PRIVILEGED:
            pytest.fail("PostgreSQL is not installed (scripts/setup.sh installs it)")
        pytest.skip("PostgreSQL is not installed")
    rig.call(_volumes, [(0x40, 0x41), (0x42, 0x43)], 2)
    data, wal = rig.disk("00:40", "pgdata", mkfs=True), rig.disk("00:42", "pgwal", mkfs=True)
    pg = Postgres(data.mountpoint / "db", port=15432 + os.getpid() % 1000,
                  socket_dir=rig.work / "sock")  # fmt: skip
    pg.initdb(wal.mountpoint / "wal")
    pg.start()
    copy_pg: Postgres | None = None
    try:
        pg.pgbench_init()
        load = subprocess.Popen(
            [str(pg.bin / "pgbench"), "-h", str(pg.socket_dir), "-p", str(pg.port), "-U",
             "postgres", "-n", "-c", "2", "-T", "4", "postgres"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.5)
        rig.call(split_and_wait, {"group": 2})  # data and WAL at one instant, while pgbench runs
        assert load.wait(60) == 0
        primary = pg.verify()
        assert primary.ok and primary.rows > 0, primary.detail
        # The copy starts from the split instant: crash recovery from its own WAL copy.
        cdata, cwal = rig.disk("00:41", "cdata"), rig.disk("00:43", "cwal")
        copy_pg = Postgres(cdata.mountpoint / "db", port=pg.port + 1, socket_dir=pg.socket_dir)
        copy_pg.adopt_copy(cwal.mountpoint / "wal")
        copy_pg.start()
        copy = copy_pg.verify()
        assert copy.ok, copy.detail
        assert 0 < copy.rows <= primary.rows
    finally:
        for server in (copy_pg, pg):
            if server is not None and server.postmaster_pid():
                try:
                    server.stop("immediate")
                except Exception:
                    pid = server.postmaster_pid()
                    if pid:
                        os.kill(pid, 9)
