"""blockemu.bitmap and formats.bitmap_file: the differential track bitmap.

Behaviour is checked against a plain set of track numbers; durability against
a close/reopen and against SIGKILL of a real child process.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockemu.bitmap import TRACK_SIZE, TrackBitmap
from formats import FormatError
from formats.bitmap_file import (
    BITS_OFFSET,
    HEADER_SIZE,
    MAGIC,
    BitmapHeader,
    BitmapRole,
    HeaderBlock,
    decode_bitmap_header,
    encode_bitmap_header,
)

REPO = Path(__file__).resolve().parent.parent
#: Bytes of the header block that carry data: the body, then its CRC-32.
USED = HeaderBlock.subcon.sizeof()
BODY = USED - 4
VERSION_OFFSET = 8  # after the magic
TRACKS_OFFSET = 8 + 2 + 4  # magic, version, track_size


def with_crc(block: bytes | bytearray) -> bytes:
    """*block* with its CRC field recomputed, so only the content is checked."""
    data = bytearray(block)
    data[BODY:USED] = zlib.crc32(data[:BODY]).to_bytes(4, "big")
    return bytes(data)


def tracks_of(offset: int, length: int, track_size: int) -> set[int]:
    """The model of mark(): every track overlapping [offset, offset+length)."""
    if length == 0:
        return set()
    return set(range(offset // track_size, (offset + length - 1) // track_size + 1))


@pytest.fixture
def bm(tmp_path: Path) -> Iterator[TrackBitmap]:
    """1000 tracks of 512 bytes, the last one 100 bytes long."""
    with TrackBitmap.for_size(
        tmp_path / "v.bmp", 999 * 512 + 100, ldev=1, role=0, track_size=512
    ) as b:
        yield b


# -- behaviour against a set model ------------------------------------------------


@st.composite
def scenario(draw: st.DrawFn) -> tuple[int, int, list[tuple[str, int, int]]]:
    """A volume (track size, size) and a list of operations on its bitmap."""
    track_size = draw(st.sampled_from([512, 1024, 4096, 48 * 1024]))
    size = draw(st.integers(min_value=1, max_value=3000 * track_size))

    def a_range() -> tuple[int, int]:
        kind = draw(st.sampled_from(["any", "boundary", "tail", "zero"]))
        if kind == "boundary":  # starts or ends next to a track boundary
            k = draw(st.integers(min_value=0, max_value=(size - 1) // track_size))
            offset = min(size, max(0, k * track_size + draw(st.sampled_from([-1, 0, 1]))))
        elif kind == "tail":  # the last (maybe partial) track
            offset = draw(st.integers(min_value=max(0, size - track_size - 1), max_value=size))
        else:
            offset = draw(st.integers(min_value=0, max_value=size))
        if kind == "zero":
            return offset, 0
        return offset, draw(st.integers(min_value=0, max_value=size - offset))

    ops: list[tuple[str, int, int]] = []
    tracks = -(-size // track_size)
    for _ in range(draw(st.integers(min_value=0, max_value=12))):
        op = draw(st.sampled_from(["mark"] * 6 + ["clear", "clear", "mark_all", "clear_all"]))
        if op == "mark":
            ops.append(("mark", *a_range()))
        elif op == "clear":
            ops.append(("clear", draw(st.integers(min_value=0, max_value=tracks - 1)), 0))
        else:
            ops.append((op, 0, 0))
    return track_size, size, ops


@settings(max_examples=150, deadline=None)
@given(scenario(), st.data())
def test_operations_match_a_set_model(
    case: tuple[int, int, list[tuple[str, int, int]]], data: st.DataObject
) -> None:
    track_size, size, ops = case
    tracks = -(-size // track_size)
    model: set[int] = set()
    with (
        tempfile.TemporaryDirectory() as tmp,
        TrackBitmap.for_size(Path(tmp) / "b", size, ldev=7, role=1, track_size=track_size) as b,
    ):
        assert b.tracks == tracks
        for op, x, y in ops:
            if op == "mark":
                b.mark(x, y)
                model |= tracks_of(x, y, track_size)
            elif op == "clear":
                b.clear(x)
                model.discard(x)
            elif op == "mark_all":
                b.mark_all()
                model = set(range(tracks))
            else:
                b.clear_all()
                model.clear()
        assert b.count() == len(model)
        assert list(b.iter_set()) == sorted(model)
        start = data.draw(st.integers(min_value=0, max_value=tracks + 9), label="start")
        assert list(b.iter_set(start)) == sorted(t for t in model if t >= start)
        probes = data.draw(st.lists(st.integers(0, tracks - 1), max_size=20), label="probes")
        for t in [*probes, 0, tracks - 1]:
            assert b.is_set(t) == (t in model)


def test_mark_small_write_sets_one_track(bm: TrackBitmap) -> None:
    bm.mark(512 * 10 + 100, 4)
    assert list(bm.iter_set()) == [10]
    bm.mark(512 * 20 - 1, 2)  # straddles a boundary
    assert list(bm.iter_set()) == [10, 19, 20]


def test_mark_range_spanning_many_bytes(bm: TrackBitmap) -> None:
    bm.mark(512 * 3 + 1, 512 * 500)
    assert list(bm.iter_set()) == list(range(3, 504))
    assert bm.count() == 501


def test_mark_edges_of_the_volume(bm: TrackBitmap) -> None:
    bm.mark(0, 1)
    bm.mark(bm.size - 1, 1)
    bm.mark(bm.size, 0)  # zero length at the very end: nothing
    assert list(bm.iter_set()) == [0, 999]


@pytest.mark.parametrize(
    ("offset", "length"),
    [(-1, 10), (0, -1), (999 * 512 + 100, 1), (999 * 512, 101), (0, 999 * 512 + 101), (-5, 0)],
)
def test_mark_outside_the_volume_is_refused(bm: TrackBitmap, offset: int, length: int) -> None:
    with pytest.raises(ValueError, match="outside the volume"):
        bm.mark(offset, length)
    assert bm.count() == 0


def test_mark_all_leaves_no_bit_past_the_last_track(tmp_path: Path) -> None:
    path = tmp_path / "b"
    with TrackBitmap.open(path, tracks=1003, ldev=1, role=0, track_size=512) as b:
        b.mark_all()
        assert b.count() == 1003
        assert list(b.iter_set(1000)) == [1000, 1001, 1002]
    assert path.read_bytes()[BITS_OFFSET:] == b"\xff" * 125 + b"\x07"


def test_bit_layout_in_the_file_is_lsb_first(tmp_path: Path) -> None:
    path = tmp_path / "b"
    with TrackBitmap.open(path, tracks=64, ldev=1, role=0, track_size=512) as b:
        for track in (0, 9, 63):
            b.mark(track * 512, 1)
        b.flush()
        bits = path.read_bytes()[BITS_OFFSET:]
    assert len(bits) == 8
    assert bits == bytes([0b1, 0b10, 0, 0, 0, 0, 0, 0b10000000])


def test_spare_bits_found_set_in_the_file_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "b"
    TrackBitmap.open(path, tracks=10, ldev=1, role=0, track_size=512).close()
    with open(path, "r+b") as f:
        f.seek(BITS_OFFSET + 1)
        f.write(b"\xff")  # tracks 8, 9 and six bits that are no track
    with TrackBitmap.open(path, tracks=10, ldev=1, role=0, track_size=512) as b:
        assert b.count() == 2
        assert list(b.iter_set()) == [8, 9]


def test_clear(bm: TrackBitmap) -> None:
    bm.mark(0, 512 * 16)
    bm.clear(3)
    bm.clear(3)  # clearing a clear bit is harmless
    bm.clear(15)
    assert list(bm.iter_set()) == [t for t in range(16) if t not in (3, 15)]
    assert not bm.is_set(3)
    bm.clear_all()
    assert bm.count() == 0
    for bad in (-1, 1000):
        with pytest.raises(ValueError, match="outside"):
            bm.clear(bad)
        with pytest.raises(ValueError, match="outside"):
            bm.is_set(bad)


def test_merge_from(tmp_path: Path) -> None:
    with (
        TrackBitmap.open(tmp_path / "p", tracks=200_000, ldev=1, role=0, track_size=512) as p,
        TrackBitmap.open(tmp_path / "s", tracks=200_000, ldev=1, role=1, track_size=512) as s,
    ):
        p.mark(0, 512 * 3)
        s.mark(512 * 2, 512 * 2)
        s.mark(512 * 150_000, 1)
        s.mark(512 * 199_999, 1)
        p.merge_from(s)
        assert list(p.iter_set()) == [0, 1, 2, 3, 150_000, 199_999]
        assert list(s.iter_set()) == [2, 3, 150_000, 199_999]  # the source is untouched
        other = TrackBitmap.open(tmp_path / "o", tracks=199_999, ldev=1, role=0, track_size=512)
        with other, pytest.raises(ValueError, match="cannot merge"):
            p.merge_from(other)


def test_track_range(tmp_path: Path, bm: TrackBitmap) -> None:
    assert bm.track_range(0) == (0, 512)
    assert bm.track_range(998) == (998 * 512, 512)
    assert bm.track_range(999) == (999 * 512, 100)  # the partial last track
    with pytest.raises(ValueError, match="outside"):
        bm.track_range(1000)
    size = 10 * TRACK_SIZE + 4096
    with TrackBitmap.for_size(tmp_path / "d", size, ldev=2, role=0) as d:
        assert d.tracks == 11
        assert d.track_range(10) == (10 * TRACK_SIZE, 4096)
    # open() with the size clips too; without it the volume is whole tracks.
    with TrackBitmap.open(tmp_path / "d", tracks=11, ldev=2, role=0, size=size) as d:
        assert d.track_range(10) == (10 * TRACK_SIZE, 4096)
    with TrackBitmap.open(tmp_path / "d", tracks=11, ldev=2, role=0) as d:
        assert d.track_range(10) == (10 * TRACK_SIZE, TRACK_SIZE)
    with pytest.raises(ValueError, match="does not have 12 tracks"):
        TrackBitmap.open(tmp_path / "d", tracks=12, ldev=2, role=0, size=size)


def test_iter_set_on_a_large_sparse_bitmap(tmp_path: Path) -> None:
    tracks = 4 << 20  # a 1 TiB volume: 512 KiB of bits
    with TrackBitmap.for_size(tmp_path / "big", tracks * TRACK_SIZE, ldev=3, role=0) as b:
        assert b.tracks == tracks
        wanted = [0, 7, 8, 65_535 * 8, 1 << 21, tracks - 2, tracks - 1]
        for t in wanted:
            b.mark(t * TRACK_SIZE + 5, 10)
        assert list(b.iter_set()) == wanted
        assert list(b.iter_set(9)) == wanted[3:]
        assert list(b.iter_set(tracks - 1)) == [tracks - 1]
        assert list(b.iter_set(tracks)) == []
        assert b.count() == len(wanted)
        with pytest.raises(ValueError, match="negative"):
            next(b.iter_set(-1))


def test_iter_set_sees_bits_set_ahead_of_it(tmp_path: Path) -> None:
    with TrackBitmap.open(tmp_path / "b", tracks=1 << 20, ldev=1, role=0, track_size=512) as b:
        b.mark(0, 1)
        it = b.iter_set()
        assert next(it) == 0
        b.mark(512 * 900_000, 1)  # chunks further on are read later
        assert list(it) == [900_000]


# -- persistence ------------------------------------------------------------------


def test_bits_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "v.bmp"
    with TrackBitmap.for_size(path, 100 * TRACK_SIZE, ldev=0x12, role=1) as b:
        b.mark(5 * TRACK_SIZE, 3 * TRACK_SIZE)
        b.mark(99 * TRACK_SIZE + 1, 1)
    with TrackBitmap.for_size(path, 100 * TRACK_SIZE, ldev=0x12, role=1, create=False) as b:
        assert list(b.iter_set()) == [5, 6, 7, 99]
        assert (b.ldev, b.role, b.tracks, b.track_size) == (0x12, BitmapRole.SVOL, 100, TRACK_SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.bmp"]  # no temporary file left


def test_create_false_on_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        TrackBitmap.open(tmp_path / "none", tracks=10, ldev=1, role=0, create=False)
    assert not (tmp_path / "none").exists()


CHILD = """
import sys, time
from blockemu.bitmap import TrackBitmap
b = TrackBitmap.open(sys.argv[1], tracks=100000, ldev=9, role=0, track_size=4096)
b.mark(0, 1)
b.mark(4096 * 77 + 10, 4096)
b.mark(4096 * 1000, 4096 * 300)
b.mark(4096 * 99999, 4096)
b.clear(1100)
print("ready", flush=True)
time.sleep(120)
"""


def test_bits_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "k.bmp"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, cwd=REPO, env=env
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "child did not get ready in 30 s"
        assert proc.stdout.readline() == b"ready\n"
        os.kill(proc.pid, signal.SIGKILL)  # no close, no flush, no atexit
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    with TrackBitmap.open(path, tracks=100000, ldev=9, role=0, track_size=4096) as b:
        expected = [0, 77, 78, *[t for t in range(1000, 1300) if t != 1100], 99999]
        assert list(b.iter_set()) == expected


# -- damaged or mismatched files ------------------------------------------------------


def make(path: Path) -> None:
    """A bitmap of 100 tracks of 512 bytes, LDEV 00:01, P-VOL side, track 0 set."""
    with TrackBitmap.open(path, tracks=100, ldev=1, role=0, track_size=512) as b:
        b.mark(0, 512)


def test_corrupt_header_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.bmp"
    make(path)
    data = bytearray(path.read_bytes())
    data[TRACKS_OFFSET + 7] ^= 1
    path.write_bytes(data)
    with pytest.raises(FormatError, match="CRC") as info:
        TrackBitmap.open(path, tracks=100, ldev=1, role=0, track_size=512)
    assert str(path) in str(info.value)
    assert "full copy" in str(info.value)
    assert path.read_bytes() == data  # a damaged file is reported, never replaced


def test_bad_magic_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.bmp"
    path.write_bytes(b"\0" * (HEADER_SIZE + 13))
    with pytest.raises(FormatError, match="bad magic") as info:
        TrackBitmap.open(path, tracks=100, ldev=1, role=0, track_size=512)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("delta", [-1, 1, -13])
def test_wrong_file_length_names_the_file(tmp_path: Path, delta: int) -> None:
    path = tmp_path / "t.bmp"
    make(path)
    os.truncate(path, HEADER_SIZE + 13 + delta)
    with pytest.raises(FormatError, match="truncated or extended") as info:
        TrackBitmap.open(path, tracks=100, ldev=1, role=0, track_size=512)
    assert str(path) in str(info.value)


def test_short_header_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.bmp"
    path.write_bytes(MAGIC)
    with pytest.raises(FormatError, match="bytes") as info:
        TrackBitmap.open(path, tracks=100, ldev=1, role=0, track_size=512)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "change", [{"tracks": 101}, {"track_size": 1024}, {"ldev": 2}, {"role": 1}]
)
def test_reopen_with_other_geometry_or_identity(tmp_path: Path, change: dict[str, int]) -> None:
    path = tmp_path / "g.bmp"
    make(path)
    args = {"tracks": 100, "ldev": 1, "role": 0, "track_size": 512, **change}
    with pytest.raises(FormatError, match="expected") as info:
        TrackBitmap.open(
            path,
            tracks=args["tracks"],
            ldev=args["ldev"],
            role=args["role"],
            track_size=args["track_size"],
        )
    assert str(path) in str(info.value)
    with TrackBitmap.open(path, tracks=100, ldev=1, role=0, track_size=512) as b:
        assert list(b.iter_set()) == [0]  # untouched


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        TrackBitmap.open(tmp_path / "x", tracks=10, ldev=1, role=2)
    with pytest.raises(FormatError, match="track size"):
        TrackBitmap.open(tmp_path / "x", tracks=10, ldev=1, role=0, track_size=1000)
    with pytest.raises(FormatError, match="not positive"):
        TrackBitmap.open(tmp_path / "x", tracks=0, ldev=1, role=0)
    with pytest.raises(ValueError, match="positive"):
        TrackBitmap.for_size(tmp_path / "x", 0, ldev=1, role=0)
    assert not list(tmp_path.iterdir())


def test_closed_bitmap(tmp_path: Path) -> None:
    b = TrackBitmap.open(tmp_path / "b", tracks=10, ldev=1, role=0)
    with b:
        pass
    assert b.closed
    b.close()  # twice is fine
    for call in (lambda: b.mark(0, 1), lambda: b.count(), b.flush, lambda: list(b.iter_set())):
        with pytest.raises(ValueError):
            call()


# -- the header format ----------------------------------------------------------------


@st.composite
def headers(draw: st.DrawFn) -> BitmapHeader:
    """Valid headers: any track size, as many tracks as a 2^64-byte volume can have."""
    track_size = 512 * draw(st.integers(min_value=1, max_value=(1 << 30) // 512))
    return BitmapHeader(
        track_size=track_size,
        tracks=draw(st.integers(min_value=1, max_value=-(-(1 << 64) // track_size))),
        ldev=draw(st.integers(min_value=0, max_value=0xFFFF)),
        role=draw(st.sampled_from(BitmapRole)),
    )


@given(headers())
def test_header_round_trip(header: BitmapHeader) -> None:
    block = encode_bitmap_header(header)
    assert len(block) == HEADER_SIZE
    assert block[:8] == MAGIC
    assert not any(block[USED:])  # zero padded
    assert decode_bitmap_header(block, name="f") == header
    assert decode_bitmap_header(block + b"\xff" * 100, name="f") == header  # bits follow


@given(st.binary(max_size=HEADER_SIZE + 64))
def test_random_bytes_only_raise_format_error(data: bytes) -> None:
    with pytest.raises(FormatError):
        decode_bitmap_header(data, name="f")


@given(st.binary(min_size=BODY - 8, max_size=BODY - 8))
def test_random_body_with_valid_crc_decodes_or_raises_format_error(rest: bytes) -> None:
    block = with_crc(MAGIC + rest + bytes(HEADER_SIZE - BODY))
    try:
        header = decode_bitmap_header(block, name="f")
    except FormatError as exc:
        assert str(exc).startswith("f: ")
    else:
        assert encode_bitmap_header(header) == block


def test_header_errors_name_the_file_and_the_fix() -> None:
    good = encode_bitmap_header(BitmapHeader(512, 10, 1, BitmapRole.PVOL))
    cases = {
        "bytes": good[:100],
        "bad magic": b"X" + good[1:],
        "CRC mismatch": good[:TRACKS_OFFSET] + b"\x01" + good[TRACKS_OFFSET + 1 :],
    }
    for what, data in cases.items():
        with pytest.raises(FormatError, match=what) as info:
            decode_bitmap_header(data, name="/r/x.bmp")
        assert str(info.value).startswith("/r/x.bmp: ")
        assert "full copy" in str(info.value)
    newer = bytearray(good)
    newer[VERSION_OFFSET : VERSION_OFFSET + 2] = (2).to_bytes(2, "big")
    with pytest.raises(FormatError, match=r"version 2 is not supported.*matching blockemu"):
        decode_bitmap_header(with_crc(newer), name="/r/x.bmp")
    for field, value in (("role", 2), ("track_size", 100), ("tracks", 0)):
        body = bytearray(good)
        offset = {"role": BODY - 1, "track_size": 10, "tracks": TRACKS_OFFSET}[field]
        width = {"role": 1, "track_size": 4, "tracks": 8}[field]
        body[offset : offset + width] = value.to_bytes(width, "big")
        with pytest.raises(FormatError, match=r"^/r/x\.bmp: "):
            decode_bitmap_header(with_crc(body), name="/r/x.bmp")


def test_encode_refuses_bad_fields() -> None:
    for header in (
        BitmapHeader(512, 10, 0x10000, BitmapRole.PVOL),
        BitmapHeader(513, 10, 1, BitmapRole.PVOL),
        BitmapHeader(1 << 31, 10, 1, BitmapRole.PVOL),
        BitmapHeader(512, (1 << 64) // 512 + 2, 1, BitmapRole.PVOL),
    ):
        with pytest.raises(FormatError):
            encode_bitmap_header(header)


# -- bulk operations: clear_range, run_from, count, clear_all ---------------------------


def model_run(model: set[int], start: int, limit: int, stop: int) -> tuple[int, int] | None:
    """The model of run_from(): the first set track in [start, stop), and its run."""
    found = [t for t in model if start <= t < stop]
    if not found:
        return None
    first = min(found)
    n = 1
    while n < limit and first + n < stop and first + n in model:
        n += 1
    return first, n


@st.composite
def bulk_scenario(draw: st.DrawFn) -> tuple[int, list[tuple[str, int, int]]]:
    """A bitmap of 512-byte tracks (small, or large enough for the 64 KiB scan windows)."""
    tracks = draw(
        st.one_of(
            st.integers(min_value=1, max_value=2000),
            st.sampled_from([70_001, 600_000, 2_400_017]),
        )
    )
    small = tracks <= 2000

    def a_track() -> int:
        kind = draw(st.sampled_from(["any", "low", "high", "byte"]))
        if kind == "low":
            return draw(st.integers(min_value=0, max_value=min(tracks - 1, 20)))
        if kind == "high":
            return draw(st.integers(min_value=max(0, tracks - 20), max_value=tracks - 1))
        if kind == "byte":  # next to a byte boundary
            k = draw(st.integers(min_value=0, max_value=(tracks - 1) // 8))
            return min(tracks - 1, max(0, 8 * k + draw(st.sampled_from([-1, 0, 1, 7]))))
        return draw(st.integers(min_value=0, max_value=tracks - 1))

    ops: list[tuple[str, int, int]] = []
    kinds = ["mark"] * 5 + ["clear_range"] * 3 + ["clear_all"]
    if small:
        kinds.append("mark_all")
    for _ in range(draw(st.integers(min_value=0, max_value=10))):
        op = draw(st.sampled_from(kinds))
        if op in ("mark", "clear_range"):
            first = a_track()
            most = tracks - first if op == "clear_range" or small else min(tracks - first, 3000)
            count = draw(st.one_of(st.integers(0, min(most, 70)), st.integers(0, most)))
            ops.append((op, first, count))
        else:
            ops.append((op, 0, 0))
    return tracks, ops


@settings(max_examples=120, deadline=None)
@given(bulk_scenario(), st.data())
def test_bulk_operations_match_a_set_model(
    case: tuple[int, list[tuple[str, int, int]]], data: st.DataObject
) -> None:
    tracks, ops = case
    model: set[int] = set()
    with (
        tempfile.TemporaryDirectory() as tmp,
        TrackBitmap.open(Path(tmp) / "b", tracks=tracks, ldev=7, role=0, track_size=512) as b,
    ):
        for op, first, count in ops:
            if op == "mark":
                b.mark(first * 512, count * 512)
                model |= set(range(first, first + count))
            elif op == "clear_range":
                b.clear_range(first, count)
                model = {t for t in model if not first <= t < first + count}
            elif op == "mark_all":
                b.mark_all()
                model = set(range(tracks))
            else:
                b.clear_all()
                model.clear()
        assert b.count() == len(model)
        assert list(b.iter_set()) == sorted(model)
        near = sorted({x for t in model for x in (t - 1, t, t + 1) if 0 <= x <= tracks})
        starts = [0, tracks - 1, tracks, *near[:10], *near[-10:]]
        starts += data.draw(st.lists(st.integers(0, tracks + 3), max_size=5), label="starts")
        for start in starts:
            limit = data.draw(st.sampled_from([1, 2, 7, 8, 9, 64, 1000, tracks]), label="limit")
            stop = data.draw(
                st.one_of(st.none(), st.integers(min_value=0, max_value=tracks)), label="stop"
            )
            want = model_run(model, start, limit, tracks if stop is None else stop)
            assert b.run_from(start, limit, stop) == want, (start, limit, stop)
        # Walking the runs the way the copier does finds every set track once.
        walked: list[int] = []
        at = 0
        while (run := b.run_from(at, 64)) is not None:
            first, n = run
            assert 1 <= n <= 64 and first >= at
            walked += range(first, first + n)
            at = first + n
        assert walked == sorted(model)


def test_run_from_and_clear_range_on_a_1_tib_bitmap(tmp_path: Path) -> None:
    tracks = 4 << 20  # a 1 TiB volume: 512 KiB of bits
    with TrackBitmap.for_size(tmp_path / "big", tracks * TRACK_SIZE, ldev=3, role=0) as b:
        assert b.run_from(0, 64) is None
        b.mark(5 * TRACK_SIZE, 200 * TRACK_SIZE)  # tracks 5..204
        b.mark((tracks - 3) * TRACK_SIZE, 3 * TRACK_SIZE)
        assert b.run_from(0, 64) == (5, 64)
        assert b.run_from(0, 1000) == (5, 200)
        assert b.run_from(100, 1000) == (100, 105)
        assert b.run_from(205, 1000) == (tracks - 3, 3)
        assert b.run_from(205, 1000, stop=tracks - 2) == (tracks - 3, 1)
        assert b.run_from(205, 1000, stop=tracks - 3) is None
        b.clear_range(0, tracks - 1)
        assert list(b.iter_set()) == [tracks - 1]
        assert b.count() == 1
        b.mark_all()
        assert b.run_from(3, tracks) == (3, tracks - 3)
        b.clear_range(1000, 2)
        assert b.run_from(3, tracks) == (3, 997)
        assert b.count() == tracks - 2
        b.clear_all()
        assert b.count() == 0 and b.run_from(0, tracks) is None
        b.clear_all()  # already clear: nothing to do
        assert b.count() == 0


def test_bulk_operations_refuse_bad_ranges(bm: TrackBitmap) -> None:
    bm.clear_range(0, 0)
    bm.clear_range(1000, 0)  # an empty range at the end
    for first, count in ((-1, 1), (0, 1001), (999, 2), (5, -1)):
        with pytest.raises(ValueError, match="outside"):
            bm.clear_range(first, count)
    for start, limit, stop in ((-1, 1, None), (0, 0, None), (0, 1, 1001)):
        with pytest.raises(ValueError, match="run search"):
            bm.run_from(start, limit, stop)
    assert bm.run_from(1000, 1) is None  # past the end: nothing, no error
    assert bm.run_from(5, 1, 5) is None  # empty range


def test_bulk_operations_on_a_closed_bitmap(tmp_path: Path) -> None:
    b = TrackBitmap.open(tmp_path / "b", tracks=10, ldev=1, role=0)
    b.close()
    for call in (lambda: b.clear_range(0, 3), lambda: b.run_from(0, 1), b.clear_all):
        with pytest.raises(ValueError):
            call()


def test_clear_all_and_count_after_every_way_of_setting_bits(tmp_path: Path) -> None:
    """clear_all and count skip the scan only when no bit can have been set since."""
    with (
        TrackBitmap.open(tmp_path / "a", tracks=100_000, ldev=1, role=0, track_size=512) as a,
        TrackBitmap.open(tmp_path / "b", tracks=100_000, ldev=1, role=0, track_size=512) as b,
    ):
        ways = [
            lambda: a.mark(512 * 99_999, 1),
            lambda: a.mark(512 * 70_000, 512 * 3),
            a.mark_all,
            lambda: a.merge_from(b),
        ]
        b.mark(512 * 50_000, 1)
        for way in ways:
            a.clear_all()
            a.clear_all()
            assert a.count() == 0
            way()
            assert a.count() > 0
            a.clear_all()
            assert a.count() == 0 and a.run_from(0, 1) is None
        a.mark(0, 1)
        a.clear_range(0, 1)  # cleared bit by bit: still counted right
        assert a.count() == 0
    path = tmp_path / "a"
    with TrackBitmap.open(path, tracks=100_000, ldev=1, role=0, track_size=512) as a:
        a.mark(512 * 12_345, 1)
    with TrackBitmap.open(path, tracks=100_000, ldev=1, role=0, track_size=512) as a:
        assert a.count() == 1  # bits found in the file count
        a.clear_all()
        assert a.count() == 0
    with TrackBitmap.open(path, tracks=100_000, ldev=1, role=0, track_size=512) as a:
        assert a.count() == 0
