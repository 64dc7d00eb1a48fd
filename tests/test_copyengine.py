"""Sparse-aware range copies on real files: ext4 (tmp_path) and an XFS loop image (reflink)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockemu import copyengine
from blockemu.copyengine import (
    CopyEngine,
    ReflinkCopy,
    SparseCopy,
    data_extents,
    detect_engine,
)
from blockemu.fileio import allocated_bytes

from .conftest import REQUIRE_PRIVILEGED, require_privileged

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

ENGINES: dict[str, Callable[[], CopyEngine]] = {"sparse": SparseCopy, "reflink": ReflinkCopy}


# --- helpers -----------------------------------------------------------------


@contextlib.contextmanager
def open_fd(path: Path, size: int | None = None) -> Iterator[int]:
    """O_RDWR fd on *path*; with *size*, the file is (re)created empty and sparse."""
    flags = os.O_RDWR | os.O_CLOEXEC
    if size is not None:
        flags |= os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600)
    try:
        if size is not None:
            os.ftruncate(fd, size)
        yield fd
    finally:
        os.close(fd)


def write_extents(fd: int, extents: list[tuple[int, int]], seed: int) -> None:
    rng = random.Random(seed)
    for off, length in extents:
        os.pwrite(fd, rng.randbytes(length), off)


def range_digest(fd: int, start: int, end: int) -> str:
    h = hashlib.sha256()
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(4 * MiB, end - pos), pos)
        assert chunk, f"file ends at {pos}, before {end}"
        h.update(chunk)
        pos += len(chunk)
    return h.hexdigest()


def covered(extents: list[tuple[int, int]], off: int, length: int) -> bool:
    """Whether [off, off+length) lies inside one of *extents*."""
    return any(d <= off and off + length <= d + n for d, n in extents)


def fs_type(path: Path) -> str:
    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()


# Layout of the 64 MiB source used by the basic tests: MiB-aligned data, plus
# one short unaligned write (a partial block) and data touching the end.
SIZE = 64 * MiB
SRC_LAYOUT = [
    (1 * MiB, 1 * MiB),
    (8 * MiB, 3 * MiB),
    (20 * MiB + 4 * KiB, 10_000),
    (40 * MiB, 512 * KiB),
    (SIZE - 2 * MiB, 2 * MiB),
]
SRC_DATA = 1 * MiB + 3 * MiB + 3 * 4 * KiB + 512 * KiB + 2 * MiB  # 10_000 bytes take 3 blocks


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> CopyEngine:
    return ENGINES[request.param]()


# --- data_extents ------------------------------------------------------------


def test_data_extents_finds_data_in_order(tmp_path: Path) -> None:
    layout = [(1 * MiB, 1 * MiB), (8 * MiB, 3 * MiB), (40 * MiB, 512 * KiB)]
    with open_fd(tmp_path / "f", SIZE) as fd:
        write_extents(fd, layout, seed=1)
        ext = list(data_extents(fd, 0, SIZE))
        for off, length in layout:
            assert covered(ext, off, length), (off, length, ext)
        assert ext == sorted(ext)
        for (d1, n1), (d2, _) in itertools.pairwise(ext):
            assert d1 + n1 < d2  # separated by a hole, never overlapping or touching
        assert all(n > 0 for _, n in ext)
        assert sum(n for _, n in ext) < SIZE // 4  # holes are not reported as data


def test_data_extents_clips_to_range(tmp_path: Path) -> None:
    with open_fd(tmp_path / "f", SIZE) as fd:
        write_extents(fd, [(1 * MiB, 1 * MiB), (8 * MiB, 3 * MiB)], seed=1)
        ext = list(data_extents(fd, 1 * MiB + MiB // 2, 9 * MiB))
        assert ext[0][0] == 1 * MiB + MiB // 2
        assert ext[-1][0] + ext[-1][1] == 9 * MiB
        assert covered(ext, 1 * MiB + MiB // 2, MiB // 2)
        assert covered(ext, 8 * MiB, 1 * MiB)
        assert all(1 * MiB + MiB // 2 <= d and d + n <= 9 * MiB for d, n in ext)
        # Ranges with no data: inside a hole, empty, past the end of the file.
        assert list(data_extents(fd, 2 * MiB, 8 * MiB)) == []
        assert list(data_extents(fd, 8 * MiB, 8 * MiB)) == []
        assert list(data_extents(fd, SIZE, SIZE + GiB)) == []


def test_data_extents_of_empty_sparse_file(tmp_path: Path) -> None:
    with open_fd(tmp_path / "f", 5 * GiB) as fd:
        assert list(data_extents(fd, 0, 5 * GiB)) == []


# --- SparseCopy and ReflinkCopy on the test filesystem (ext4 here) ----------


def check_full_copy(directory: Path, engine: CopyEngine) -> None:
    """Whole-file copy onto a dst full of other data: equal content, same holes."""
    with open_fd(directory / "src", SIZE) as src, open_fd(directory / "dst", SIZE) as dst:
        write_extents(src, SRC_LAYOUT, seed=1)
        write_extents(dst, [(0, SIZE)], seed=2)  # dense: every hole in src must be punched
        copied = engine.copy(src, dst, 0, SIZE)
        assert copied == SRC_DATA
        assert copied == sum(n for _, n in data_extents(src, 0, SIZE))
        assert range_digest(dst, 0, SIZE) == range_digest(src, 0, SIZE)
        assert list(data_extents(dst, 0, SIZE)) == list(data_extents(src, 0, SIZE))
        src_alloc = allocated_bytes(directory / "src")
        dst_alloc = allocated_bytes(directory / "dst")
        assert abs(dst_alloc - src_alloc) <= 64 * KiB, (src_alloc, dst_alloc)
        assert dst_alloc < SIZE // 4


def check_sub_range_copy(directory: Path, engine: CopyEngine) -> None:
    """An unaligned sub-range: inside equals src, outside is dst's old content."""
    start, end = 5 * MiB + 1000, 42 * MiB - 77  # cuts through data at both ends of dst
    with open_fd(directory / "src", SIZE) as src, open_fd(directory / "dst", SIZE) as dst:
        write_extents(src, [*SRC_LAYOUT, (41 * MiB, 2 * MiB)], seed=1)
        write_extents(dst, [(4 * MiB, 4 * MiB), (16 * MiB, 16 * MiB), (41 * MiB, 8 * MiB)], 2)
        before_head, before_tail = range_digest(dst, 0, start), range_digest(dst, end, SIZE)
        copied = engine.copy(src, dst, start, end - start)
        assert copied == sum(n for _, n in data_extents(src, start, end))
        assert range_digest(dst, start, end) == range_digest(src, start, end)
        assert range_digest(dst, 0, start) == before_head
        assert range_digest(dst, end, SIZE) == before_tail
        # [16, 20) MiB and [21, 32) MiB were data in dst and are holes in src: now holes.
        assert list(data_extents(dst, 16 * MiB, 20 * MiB)) == []
        assert list(data_extents(dst, 21 * MiB, 32 * MiB)) == []
        assert os.pread(dst, 4 * MiB, 16 * MiB) == bytes(4 * MiB)


def test_full_copy(tmp_path: Path, engine: CopyEngine) -> None:
    check_full_copy(tmp_path, engine)


def test_sub_range_copy(tmp_path: Path, engine: CopyEngine) -> None:
    check_sub_range_copy(tmp_path, engine)


def test_zero_length_copy_changes_nothing(tmp_path: Path, engine: CopyEngine) -> None:
    with open_fd(tmp_path / "src", SIZE) as src, open_fd(tmp_path / "dst", SIZE) as dst:
        write_extents(dst, [(0, 4 * MiB)], seed=2)
        before = range_digest(dst, 0, 4 * MiB)
        assert engine.copy(src, dst, 1 * MiB, 0) == 0
        assert range_digest(dst, 0, 4 * MiB) == before
        with pytest.raises(ValueError):
            engine.copy(src, dst, -1, 10)


def test_copy_over_2gib_of_sparse_file(tmp_path: Path, engine: CopyEngine) -> None:
    """5 GiB range, a little data near the end: cheap, and past copy_file_range's 2 GiB cap."""
    size = 5 * GiB
    src_layout = [(1 * MiB, 1 * MiB), (size - 4 * MiB, 3 * MiB)]
    with open_fd(tmp_path / "src", size) as src, open_fd(tmp_path / "dst", size) as dst:
        write_extents(src, src_layout, seed=1)
        write_extents(dst, [(3 * GiB, 2 * MiB), (size - 2 * MiB, 2 * MiB)], seed=2)
        assert engine.copy(src, dst, 0, size) == 4 * MiB
        # Same data extents and same bytes in them means same content (holes read as zeros);
        # this avoids reading 5 GiB of zeros.
        ext = list(data_extents(src, 0, size))
        assert list(data_extents(dst, 0, size)) == ext
        for off, length in ext:
            assert range_digest(dst, off, off + length) == range_digest(src, off, off + length)
        assert allocated_bytes(tmp_path / "dst") < 8 * MiB


def test_sparse_copy_moves_data_in_the_kernel_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy_file_range only ever covers data extents of src, and nothing is read into Python."""
    calls: list[tuple[int, int]] = []
    real_cfr = os.copy_file_range

    def spy(src: int, dst: int, count: int, offset_src: int, offset_dst: int) -> int:
        assert offset_src == offset_dst
        calls.append((offset_src, count))
        return real_cfr(src, dst, count, offset_src, offset_dst)

    def no_read(*args: object) -> bytes:
        raise AssertionError("data went through Python")

    with open_fd(tmp_path / "src", SIZE) as src, open_fd(tmp_path / "dst", SIZE) as dst:
        write_extents(src, SRC_LAYOUT, seed=1)
        src_ext = list(data_extents(src, 0, SIZE))
        monkeypatch.setattr(os, "copy_file_range", spy)
        monkeypatch.setattr(os, "pread", no_read)
        monkeypatch.setattr(os, "read", no_read)
        assert SparseCopy().copy(src, dst, 0, SIZE) == SRC_DATA
        monkeypatch.undo()
        assert calls
        for off, count in calls:
            assert covered(src_ext, off, count), (off, count, src_ext)
        assert range_digest(dst, 0, SIZE) == range_digest(src, 0, SIZE)


def test_sparse_copy_survives_short_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_cfr = os.copy_file_range
    sizes: list[int] = []

    def short(src: int, dst: int, count: int, offset_src: int, offset_dst: int) -> int:
        n = real_cfr(src, dst, min(count, 12_345), offset_src, offset_dst)
        sizes.append(n)
        return n

    monkeypatch.setattr(copyengine, "COPY_CHUNK", 100_000)
    monkeypatch.setattr(os, "copy_file_range", short)
    with open_fd(tmp_path / "src", SIZE) as src, open_fd(tmp_path / "dst", SIZE) as dst:
        write_extents(src, SRC_LAYOUT[:3], seed=1)
        assert SparseCopy().copy(src, dst, 0, SIZE) == 4 * MiB + 12 * KiB
        assert len(sizes) > 300
        assert range_digest(dst, 0, SIZE) == range_digest(src, 0, SIZE)


def test_sparse_copy_falls_back_when_kernel_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    with open_fd(tmp_path / "src", SIZE) as src, open_fd(tmp_path / "dst", SIZE) as dst:
        write_extents(src, SRC_LAYOUT, seed=1)
        write_extents(dst, [(0, SIZE)], seed=2)
        assert SparseCopy().copy(src, dst, 0, SIZE) == SRC_DATA
        assert range_digest(dst, 0, SIZE) == range_digest(src, 0, SIZE)
        assert list(data_extents(dst, 0, SIZE)) == list(data_extents(src, 0, SIZE))


def test_detect_engine_on_ext4_is_sparse(tmp_path: Path) -> None:
    if fs_type(tmp_path) != "ext2/ext3":
        pytest.skip(f"tmp_path is on {fs_type(tmp_path)}, not ext4")
    engine = detect_engine(tmp_path)
    assert isinstance(engine, SparseCopy)
    assert engine.name == "sparse"
    assert os.listdir(tmp_path) == []  # the probe files are gone


# --- property: random layouts, random sub-ranges -----------------------------

HSIZE = 16 * MiB
FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # files are recreated per example
layouts = st.lists(
    st.tuples(st.integers(0, HSIZE - 1), st.integers(1, 2 * MiB)).map(
        lambda t: (t[0], min(t[1], HSIZE - t[0]))
    ),
    max_size=6,
)


def check_random_copy(
    directory: Path,
    engine: CopyEngine,
    src_layout: list[tuple[int, int]],
    dst_layout: list[tuple[int, int]],
    start: int,
    length: int,
) -> None:
    end = start + length
    with open_fd(directory / "src", HSIZE) as src, open_fd(directory / "dst", HSIZE) as dst:
        write_extents(src, src_layout, seed=len(src_layout))
        write_extents(dst, dst_layout, seed=100 + len(dst_layout))
        old = os.pread(dst, HSIZE, 0)
        copied = engine.copy(src, dst, start, length)
        new, want = os.pread(dst, HSIZE, 0), os.pread(src, HSIZE, 0)
        assert copied == sum(n for _, n in data_extents(src, start, end))
        assert new[start:end] == want[start:end]
        assert new[:start] == old[:start]
        assert new[end:] == old[end:]
        # Whole blocks inside the range are data in dst only where they are in src.
        bs = os.fstatvfs(dst).f_bsize
        core = (-(-start // bs) * bs, end // bs * bs)
        src_ext = list(data_extents(src, *core))
        for off, n in data_extents(dst, *core):
            assert covered(src_ext, off, n), (off, n, src_ext)


copy_cases = st.tuples(layouts, layouts, st.integers(0, HSIZE), st.integers(0, HSIZE)).map(
    lambda t: (t[0], t[1], min(t[2], t[3]), abs(t[3] - t[2]))
)


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(case=copy_cases, engine_name=st.sampled_from(sorted(ENGINES)))
def test_random_layout_copy(
    tmp_path: Path,
    case: tuple[list[tuple[int, int]], list[tuple[int, int]], int, int],
    engine_name: str,
) -> None:
    check_random_copy(tmp_path, ENGINES[engine_name](), *case)


# --- XFS with reflink on a loop device ---------------------------------------


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def xfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 1 GiB XFS (reflink=1) image on a loop device, mounted; all undone afterwards."""
    require_privileged("XFS loop mount for reflink")
    if shutil.which("mkfs.xfs") is None:
        message = "mkfs.xfs not found: install the apt package xfsprogs (scripts/setup.sh)"
        if REQUIRE_PRIVILEGED:
            pytest.fail(message + " (BLOCKEMU_REQUIRE_PRIVILEGED=1: skipping is not allowed here)")
        pytest.skip(message)
    base = tmp_path_factory.mktemp("xfs")
    image, mnt = base / "xfs.img", base / "mnt"
    loop = ""
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(1 * GiB)
        loop = _run("losetup", "-f", "--show", str(image))
        _run("mkfs.xfs", "-q", "-m", "reflink=1", loop)
        mnt.mkdir()
        _run("mount", "-t", "xfs", loop, str(mnt))
        mounted = True
        yield mnt
    finally:
        errors = []
        if mounted and subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            errors.append("umount failed; detached lazily")
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        if loop and subprocess.run(["losetup", "-d", loop], capture_output=True).returncode:
            errors.append(f"losetup -d {loop} failed")
        image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()
        assert not errors, errors


@pytest.fixture
def xfs_dir(xfs_mount: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory on the XFS mount, emptied after the test (the mount is shared)."""
    path = xfs_mount / request.node.name.replace("/", "_")[:100]
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.root
def test_detect_engine_on_xfs_is_reflink(xfs_dir: Path) -> None:
    engine = detect_engine(xfs_dir)
    assert isinstance(engine, ReflinkCopy)
    assert engine.name == "reflink"
    assert os.listdir(xfs_dir) == []


@pytest.mark.root
def test_xfs_reflink_full_copy(xfs_dir: Path) -> None:
    check_full_copy(xfs_dir, detect_engine(xfs_dir))


@pytest.mark.root
def test_xfs_reflink_sub_range_copy(xfs_dir: Path) -> None:
    check_sub_range_copy(xfs_dir, detect_engine(xfs_dir))


@pytest.mark.root
def test_xfs_reflink_shares_blocks(xfs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """48 MiB of data cloned: the filesystem's free space barely moves, no byte is copied."""

    def no_copy(*args: object, **kwargs: object) -> int:
        raise AssertionError("copy_file_range used for block-aligned data on XFS")

    with open_fd(xfs_dir / "src", SIZE) as src, open_fd(xfs_dir / "dst", SIZE) as dst:
        write_extents(src, [(0, 16 * MiB), (32 * MiB, 32 * MiB)], seed=1)
        os.fsync(src)
        st = os.statvfs(xfs_dir)
        free_before = st.f_bfree * st.f_frsize
        monkeypatch.setattr(os, "copy_file_range", no_copy)
        assert detect_engine(xfs_dir).copy(src, dst, 0, SIZE) == 48 * MiB
        monkeypatch.undo()
        os.fsync(dst)
        st = os.statvfs(xfs_dir)
        assert free_before - st.f_bfree * st.f_frsize < 4 * MiB
        assert range_digest(dst, 0, SIZE) == range_digest(src, 0, SIZE)


@pytest.mark.root
@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
@given(case=copy_cases)
def test_xfs_random_layout_copy(
    xfs_dir: Path, case: tuple[list[tuple[int, int]], list[tuple[int, int]], int, int]
) -> None:
    check_random_copy(xfs_dir, ReflinkCopy(), *case)
