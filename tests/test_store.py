"""The volume store on a real filesystem: bounds, sparseness, header slots, locking."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from blockemu.errors import (
    BadRequest,
    CorruptVolume,
    NoSuchVolume,
    OutOfRange,
    StoreLocked,
    VolumeExists,
)
from blockemu.fileio import allocated_bytes
from blockemu.store import VolumeStore, volume_filename
from formats.volume_header import DATA_OFFSET, SLOT_OFFSETS, SLOT_SIZE, encode_slot

MiB = 1 << 20
GiB = 1 << 30


@pytest.fixture
def store(tmp_path: Path):
    with VolumeStore.open(tmp_path / "root") as s:
        yield s


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_create_is_sparse_and_stays_sparse(store: VolumeStore) -> None:
    vol = store.create(0x1A, 10 * GiB, label="data")
    assert os.path.getsize(vol.path) == DATA_OFFSET + 10 * GiB
    assert allocated_bytes(vol.path) < 64 * 1024  # two header slots, no data
    vol.pwrite(5 * GiB, b"x" * 4096)
    assert allocated_bytes(vol.path) < 256 * 1024
    assert vol.pread(5 * GiB, 4096) == b"x" * 4096
    assert vol.pread(0, 4096) == bytes(4096)


def test_pvids_are_unique_and_headers_describe_the_volume(store: VolumeStore) -> None:
    vols = [store.create(ldev, MiB, label=f"v{ldev}") for ldev in range(20)]
    assert len({v.header.pvid for v in vols}) == 20
    v = vols[3]
    assert v.header.info.label == "v3"
    assert v.header.info.size == MiB
    assert v.path.name == "00-03.vol"


@pytest.mark.parametrize(
    ("offset", "length"),
    [(-1, 1), (MiB, 1), (MiB - 511, 512), (0, MiB + 1), (2 * MiB, 0)],
)
def test_io_past_the_end_is_refused(store: VolumeStore, offset: int, length: int) -> None:
    vol = store.create(1, MiB)
    with pytest.raises(OutOfRange, match="outside the volume"):
        vol.pwrite(offset, b"a" * length)
    with pytest.raises(OutOfRange):
        vol.pread(offset, length)
    with pytest.raises(OutOfRange):
        vol.discard(offset, length)
    assert allocated_bytes(vol.path) < 64 * 1024  # nothing was written


def test_last_byte_is_writable(store: VolumeStore) -> None:
    vol = store.create(1, MiB)
    vol.pwrite(MiB - 1, b"z")
    assert vol.pread(MiB - 1, 1) == b"z"


def test_bad_sizes_and_duplicates(store: VolumeStore) -> None:
    with pytest.raises(BadRequest, match="multiple of the block size"):
        store.create(1, 1000)
    with pytest.raises(BadRequest, match="power of two"):
        store.create(1, 3000 * 4, block_size=3000)
    with pytest.raises(BadRequest, match="at most 32 bytes"):
        store.create(1, MiB, label="x" * 33)
    store.create(1, MiB)
    with pytest.raises(VolumeExists, match="00:01 already exists"):
        store.create(1, MiB)
    with pytest.raises(NoSuchVolume, match="00:02"):
        store.get(2)


def test_discard_punches_a_hole(store: VolumeStore) -> None:
    vol = store.create(1, 64 * MiB)
    vol.pwrite(0, os.urandom(16 * MiB))
    vol.flush()
    before = allocated_bytes(vol.path)
    vol.discard(4 * MiB, 8 * MiB)
    assert allocated_bytes(vol.path) <= before - 8 * MiB + 64 * 1024
    assert vol.pread(4 * MiB, 8 * MiB) == bytes(8 * MiB)
    assert vol.pread(0, 1) != b"" and vol.pread(12 * MiB, 4096) != bytes(4096)


def test_header_updates_survive_reopen_and_alternate_slots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with VolumeStore.open(root) as store:
        vol = store.create(7, MiB, label="a")
        for i in range(5):
            vol.update_header(label=f"gen{i}")
        assert vol.header.generation == 6
        path = vol.path
    with VolumeStore.open(root) as store:
        assert store.get(7).header.info.label == "gen4"
        assert store.get(7).header.generation == 6
    # generation 6 lives in slot 0, generation 5 in slot 1
    with open(path, "rb") as f:
        slot0, slot1 = (f.read(SLOT_SIZE) for _ in range(2))
    assert b"gen4" in slot0 and b"gen3" in slot1


@pytest.mark.parametrize("slot", [0, 1])
def test_one_corrupt_slot_falls_back_to_the_other(
    tmp_path: Path, slot: int, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    with VolumeStore.open(root) as store:
        vol = store.create(7, MiB)
        vol.update_header(label="newest")  # generation 2 -> slot 0; slot 1 holds gen 1
        vol.pwrite(0, b"precious")
        path = vol.path
    flip_byte(path, SLOT_OFFSETS[slot] + 40)
    with caplog.at_level(logging.WARNING), VolumeStore.open(root) as store:
        vol = store.get(7)
        assert vol.pread(0, 8) == b"precious"
        expected_label = "" if slot == 0 else "newest"
        assert vol.header.info.label == expected_label
        assert f"slot {slot}" in caplog.text
        # The next update rewrites the damaged slot, so both are valid again.
        vol.update_header(label="repaired")
    with VolumeStore.open(root) as store:
        assert store.get(7).header.info.label == "repaired"


def test_torn_header_write_keeps_the_previous_header(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with VolumeStore.open(root) as store:
        vol = store.create(3, MiB, label="before")
        header = vol.header
        path = vol.path
    # A crash halfway through writing generation 2 into slot 0.
    torn = encode_slot(header.replace(generation=2, label="after"))[: SLOT_SIZE // 64]
    with open(path, "r+b") as f:
        f.seek(SLOT_OFFSETS[0])
        f.write(torn[:64] + bytes(64))
    with VolumeStore.open(root) as store:
        assert store.get(3).header.info.label == "before"


def test_both_slots_corrupt_is_reported_and_does_not_hide_other_volumes(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    with VolumeStore.open(root) as store:
        store.create(1, MiB)
        bad = store.create(2, MiB)
        bad.pwrite(0, b"data stays")
        path = bad.path
    flip_byte(path, SLOT_OFFSETS[0] + 40)
    flip_byte(path, SLOT_OFFSETS[1] + 40)
    with VolumeStore.open(root) as store:
        assert [v.ldev for v in store.list()] == [1]
        assert "00-02.vol" in store.broken
        with pytest.raises(CorruptVolume, match=r"slot 0.*slot 1.*data area is untouched"):
            store.get(2)
        with pytest.raises(VolumeExists):
            store.create(2, MiB)
    with open(path, "rb") as f:
        f.seek(DATA_OFFSET)
        assert f.read(10) == b"data stays"  # nothing was lost by opening it


def test_truncated_and_misnamed_files_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with VolumeStore.open(root) as store:
        a = store.create(1, 4 * MiB)
        b = store.create(2, MiB)
        a_path, b_path = a.path, b.path
    os.truncate(a_path, DATA_OFFSET + MiB)
    os.rename(b_path, b_path.with_name(volume_filename(9)))
    with VolumeStore.open(root) as store:
        assert store.list() == []
        assert "truncated" in store.broken["00-01.vol"]
        assert "must be named 00-02.vol" in store.broken["00-09.vol"]


def test_one_process_owns_a_root(tmp_path: Path) -> None:
    with (
        VolumeStore.open(tmp_path / "root"),
        pytest.raises(StoreLocked, match=rf"in use .*pid {os.getpid()}"),
    ):
        VolumeStore.open(tmp_path / "root")
    with VolumeStore.open(tmp_path / "root"):  # free again once closed
        pass


def test_delete_and_leftover_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with VolumeStore.open(root) as store:
        vol = store.create(5, MiB)
        path = vol.path
        store.delete(5)
        assert not path.exists()
        with pytest.raises(NoSuchVolume):
            store.delete(5)
    (root / "volumes" / "00-06.tmp").write_bytes(b"half-created")
    with VolumeStore.open(root) as store:
        assert store.list() == []
    assert not (root / "volumes" / "00-06.tmp").exists()
