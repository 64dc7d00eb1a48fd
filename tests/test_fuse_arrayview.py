"""The array view (`blockemu serve --mount`), used the way a host uses a volume.

Real FUSE mounts, real loop devices with direct I/O, real ext4. Everything a
test attaches or mounts is recorded in a :class:`Rig` and undone however the
test ends: filesystems unmounted, loop devices detached, the array stopped by
its PID, and a FUSE mount it left behind detached lazily.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from blockemu.client import ArrayClient, open_client
from blockemu.fusefs import mounts_at
from formats.wire import Op

from .conftest import ArrayProcess, require_privileged

pytestmark = pytest.mark.root

MiB = 1 << 20


class Rig:
    """Loop devices and mounts a test made, to be undone in reverse order."""

    def __init__(self) -> None:
        self.loops: list[str] = []
        self.mounts: list[Path] = []

    async def sh(self, *cmd: str) -> str:
        proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
        out, err = proc.stdout.decode(), proc.stderr.decode()
        assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}): {err}{out}"
        return out

    async def losetup(self, file: Path, *extra: str) -> str:
        dev = (
            await self.sh("losetup", "--direct-io=on", *extra, "-f", "--show", str(file))
        ).strip()
        self.loops.append(dev)
        return dev

    async def detach(self, dev: str) -> None:
        await self.sh("losetup", "-d", dev)
        self.loops.remove(dev)

    async def mount(self, dev: str, where: Path, *options: str) -> None:
        await self.sh("mount", *options, dev, str(where))
        self.mounts.append(where)

    async def umount(self, where: Path) -> None:
        await self.sh("umount", str(where))
        self.mounts.remove(where)

    def cleanup(self) -> None:
        def run(*cmd: str) -> bool:
            return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0

        while self.mounts:
            where = self.mounts.pop()
            run("umount", str(where)) or run("umount", "-l", str(where))
        while self.loops:
            run("losetup", "-d", self.loops.pop())


def detach_fuse(mountpoint: Path) -> None:
    """Last resort: lazily unmount whatever FUSE mount is left at *mountpoint*."""
    for _ in range(8):
        if not any(t.startswith("fuse") for t in mounts_at(str(mountpoint))):
            return
        done = subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


@pytest.fixture
def rig() -> Iterator[Rig]:
    require_privileged("FUSE mounts and loop devices")
    r = Rig()
    try:
        yield r
    finally:
        r.cleanup()


@pytest.fixture
def view(rig: Rig, tmp_path: Path, short_dir: Path) -> Iterator[ArrayProcess]:
    """`blockemu serve --mount`, on a fresh root; stopped and unmounted whatever happens."""
    mountpoint = short_dir / "m"
    mountpoint.mkdir()
    proc = ArrayProcess(
        tmp_path / "root", short_dir / "a.sock", tmp_path / "array.log", mount=mountpoint
    )
    try:
        proc.start()
        yield proc
    finally:
        rig.cleanup()  # the host side first: a loop device on the mount holds it
        proc.stop()
        detach_fuse(mountpoint)


def fuse_mounts(mountpoint: Path) -> list[str]:
    return [t for t in mounts_at(str(mountpoint)) if t.startswith("fuse")]


async def wait_status(client: ArrayClient, pvol: str, status: str) -> None:
    with trio.fail_after(30):
        while (await client.pair_display({"pvol": pvol}))[0]["status"] != status:
            await trio.sleep(0.05)


async def test_ext4_on_a_direct_io_loop_device(
    view: ArrayProcess, rig: Rig, tmp_path: Path
) -> None:
    assert view.mount is not None
    assert f"mount:{view.mount}" in view.banner
    async with open_client(view.unix) as client:
        header = await client.create(0x10, 256 * MiB)
        device = view.mount / "00-10"
        st = device.stat()
        assert (st.st_size, st.st_mode & 0o7777, st.st_uid) == (256 * MiB, 0o600, 0)
        assert os.listdir(view.mount) == ["00-10"]

        loop = await rig.losetup(device)
        assert Path(f"/sys/block/{Path(loop).name}/loop/dio").read_text().strip() == "1"
        await rig.sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop)
        # mkfs went to the array: the ext4 magic is in the volume, read over the socket.
        superblock = await client.read(0x10, header.pvid, 1024, 1024)
        assert superblock[56:58] == b"\x53\xef"

        fs = tmp_path / "ext4"
        fs.mkdir()
        rng = random.Random(10)
        files = {f"f{i}": rng.randbytes(rng.randrange(1, 4 * MiB)) for i in range(4)}
        await rig.mount(loop, fs)
        for name, data in files.items():
            (fs / name).write_bytes(data)
        os.sync()
        await rig.umount(fs)  # drops ext4's cache: the reads below come from the array
        await rig.mount(loop, fs)
        for name, data in files.items():
            assert (fs / name).read_bytes() == data
        await rig.umount(fs)
        await rig.sh("e2fsck", "-fn", loop)
        await rig.detach(loop)

    assert view.terminate() == 0
    assert fuse_mounts(view.mount) == []


async def test_device_file_io_behaves_like_a_block_device(view: ArrayProcess, rig: Rig) -> None:
    assert view.mount is not None
    size = 16 * MiB
    path = view.mount / "00-20"
    async with open_client(view.unix) as client:
        pvid = (await client.create(0x20, size)).pvid
        fd = os.open(path, os.O_RDWR)
        try:
            data = os.urandom(MiB)
            assert os.pwrite(fd, data, 4096) == MiB
            assert os.pread(fd, MiB, 4096) == data
            assert os.pwrite(fd, b"x" * 1000, 12345) == 1000  # unaligned
            expected = bytearray(data)
            expected[12345 - 4096 : 13345 - 4096] = b"x" * 1000
            assert os.pread(fd, MiB, 4096) == expected
            # The end of the device: a write across it is cut short, one past it fails.
            assert os.pwrite(fd, b"t" * 4096, size - 4096) == 4096
            assert os.pwrite(fd, b"y" * 8192, size - 100) == 100
            for offset in (size, size + MiB):
                with pytest.raises(OSError) as info:
                    os.pwrite(fd, b"z", offset)
                assert info.value.errno == errno.ENOSPC
            assert os.pread(fd, 4096, size - 200) == b"t" * 100 + b"y" * 100
            assert os.pread(fd, 10, size) == b""
            assert os.pread(fd, 10, size + MiB) == b""
            os.fsync(fd)
            # No page cache in between: a write by the array is seen at once.
            await client.write(0x20, pvid, 4096, b"A" * 4096)
            assert os.pread(fd, 4096, 4096) == b"A" * 4096
        finally:
            os.close(fd)

        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        try:
            out, back = mmap.mmap(-1, MiB), mmap.mmap(-1, MiB)  # page-aligned buffers
            out[:] = os.urandom(MiB)
            assert os.pwrite(fd, out, 2 * MiB) == MiB
            assert os.preadv(fd, [back], 2 * MiB) == MiB
            assert back[:] == out[:]
            assert await client.read(0x20, pvid, 2 * MiB, MiB) == out[:]
            assert os.pwrite(fd, memoryview(out)[:4096], size - 4096) == 4096
            with pytest.raises(OSError) as info:
                os.pwrite(fd, memoryview(out)[:4096], size)
            assert info.value.errno == errno.ENOSPC
            assert os.preadv(fd, [back], size - 4096) == 4096
            assert back[:4096] == out[:4096]
            assert os.preadv(fd, [back], size) == 0
            os.fsync(fd)
        finally:
            os.close(fd)

    # The namespace and the size belong to the array.
    os.truncate(path, size)
    for attempt in (
        lambda: os.truncate(path, size - 4096),
        lambda: os.truncate(path, size + 4096),
        lambda: os.open(path, os.O_WRONLY | os.O_TRUNC),
        lambda: os.chmod(path, 0o644),
        lambda: os.unlink(path),
        lambda: os.rename(path, view.mount / "00-21"),
        lambda: os.open(view.mount / "new", os.O_CREAT | os.O_WRONLY, 0o600),
        lambda: os.mkdir(view.mount / "dir"),
    ):
        with pytest.raises(PermissionError):
            attempt()
    os.utime(path)  # times are not kept, and touching them is harmless
    assert path.stat().st_size == size


async def test_devices_follow_the_array_without_a_remount(view: ArrayProcess, rig: Rig) -> None:
    assert view.mount is not None
    assert os.listdir(view.mount) == []
    async with open_client(view.unix) as client:
        await client.create(0x30, 8 * MiB)
        assert os.listdir(view.mount) == ["00-30"]
        assert (view.mount / "00-30").stat().st_size == 8 * MiB
        await client.create(0x31, 8 * MiB)
        assert sorted(os.listdir(view.mount)) == ["00-30", "00-31"]

        await client.pair_create("00:30", "00:31", mode="sync")
        assert os.listdir(view.mount) == ["00-30"]  # the S-VOL is hidden from hosts
        await trio.sleep(1.2)  # the kernel may remember a looked-up name for 1 s
        assert not (view.mount / "00-31").exists()
        await wait_status(client, "00:30", "PAIR")

        await client.pair_command(Op.PAIR_SPLIT, {"pvol": "00:30"})
        await wait_status(client, "00:30", "PSUS")
        assert sorted(os.listdir(view.mount)) == ["00-30", "00-31"]
        assert (view.mount / "00-31").stat().st_size == 8 * MiB

        await client.pair_command(Op.PAIR_DELETE, {"pvol": "00:30"})
        await client.delete(0x30)
        assert os.listdir(view.mount) == ["00-31"]


async def test_sigkill_leaves_a_stale_mount_the_next_start_cleans(
    view: ArrayProcess, rig: Rig
) -> None:
    assert view.mount is not None
    async with open_client(view.unix) as client:
        await client.create(0x40, 16 * MiB)
    data = os.urandom(MiB)
    fd = os.open(view.mount / "00-40", os.O_RDWR)
    try:
        os.pwrite(fd, data, 0)  # acknowledged: in the array's page cache, survives SIGKILL
    finally:
        os.close(fd)
    loop = await rig.losetup(view.mount / "00-40")  # a host still using it when the array dies

    view.kill()
    for look in (os.listdir, os.statvfs):  # (a stat may come from the kernel's cache for 1 s)
        with pytest.raises(OSError) as info:
            look(view.mount)
        assert info.value.errno == errno.ENOTCONN
    assert fuse_mounts(view.mount) == ["fuse.blockemu"]

    view.start()
    assert fuse_mounts(view.mount) == ["fuse.blockemu"]  # the dead one is gone, not stacked
    assert os.listdir(view.mount) == ["00-40"]
    fd = os.open(view.mount / "00-40", os.O_RDONLY)
    try:
        assert os.pread(fd, MiB, 0) == data
    finally:
        os.close(fd)
    # The old loop device still points into the dead mount: it fails, it does not hang.
    fd = os.open(loop, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            os.pread(fd, 4096, 8 * MiB)
    finally:
        os.close(fd)
    await rig.detach(loop)
    assert "stale FUSE mount" in view.log.read_text()


async def test_writes_through_the_view_are_mirrored_to_the_svol(
    view: ArrayProcess, rig: Rig, tmp_path: Path
) -> None:
    assert view.mount is not None
    fs = tmp_path / "ext4"
    fs.mkdir()
    content = os.urandom(3 * MiB)
    async with open_client(view.unix) as client:
        await client.create(0x50, 64 * MiB)
        await client.create(0x51, 64 * MiB)
        await client.pair_create("00:50", "00:51", mode="sync")
        await wait_status(client, "00:50", "PAIR")

        loop = await rig.losetup(view.mount / "00-50")
        await rig.sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop)
        await rig.mount(loop, fs)
        (fs / "data").write_bytes(content)
        await rig.umount(fs)
        await rig.detach(loop)

        await client.pair_command(Op.PAIR_SPLIT, {"pvol": "00:50"})
        await wait_status(client, "00:50", "PSUS")

    # After the split the P-VOL goes its own way; the S-VOL keeps the split-time copy.
    fd = os.open(view.mount / "00-50", os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(4096), 1024)  # wipes the P-VOL's ext4 superblock
    finally:
        os.close(fd)
    loop = await rig.losetup(view.mount / "00-51", "-r")
    await rig.sh("e2fsck", "-fn", loop)
    await rig.mount(loop, fs, "-o", "ro")
    assert (fs / "data").read_bytes() == content
    await rig.umount(fs)
    await rig.detach(loop)


async def test_reservation_of_another_host_refuses_the_view(view: ArrayProcess, rig: Rig) -> None:
    assert view.mount is not None
    async with open_client(view.unix, host="node1") as client:
        await client.create(0x60, 4 * MiB)
        fd = os.open(view.mount / "00-60", os.O_RDWR)
        try:
            await client.reserve(0x60)
            with pytest.raises(PermissionError):
                os.pread(fd, 4096, 0)
            await client.release(0x60)
            assert os.pread(fd, 4096, 0) == bytes(4096)
        finally:
            os.close(fd)
    assert "reserved by host 'node1'" in view.log.read_text()


def test_a_live_mount_is_not_taken_over(view: ArrayProcess, tmp_path: Path) -> None:
    assert view.mount is not None
    other = subprocess.run(
        [sys.executable, "-m", "blockemu", "serve", "--root", str(tmp_path / "other"), "--listen",
         f"unix:{view.sock}.2", "--mount", str(view.mount)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert other.returncode == 1
    assert "already a live FUSE mount" in other.stderr
    assert os.listdir(view.mount) == []  # the first array's mount still answers
