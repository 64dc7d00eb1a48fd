"""The host's disk-info buffer: its file format, its API, and scan/refresh against a real array."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from blockemu.client import open_client
from blockemu.errors import StaleIdentity
from blockemu.hostbuffer import HiddenVolume, HostBuffer, refresh, scan
from formats.errors import FormatError
from formats.host_buffer import BufferEntry, HostBufferData, decode_buffer, encode_buffer
from formats.volume_header import VolumeInfo
from formats.wire import Op

from .conftest import ArrayProcess

MiB = 1 << 20

entries = st.lists(
    st.builds(
        BufferEntry,
        device=st.from_regex(r"hdisk[0-9]{1,3}", fullmatch=True),
        ldev=st.integers(0, 0xFFFF),
        pvid=st.binary(min_size=16, max_size=16),
        info=st.builds(
            VolumeInfo,
            size=st.integers(1, 1 << 30).map(lambda n: n * 512),
            label=st.text(max_size=8).filter(lambda t: "\0" not in t),
        ),
    ),
    max_size=8,
    unique_by=lambda e: e.device,
)


@given(st.text(min_size=1, max_size=20).filter(lambda t: "\0" not in t), st.integers(0, 2**63),
       entries)  # fmt: skip
def test_round_trip(host: str, generation: int, items: list[BufferEntry]) -> None:
    data = HostBufferData(host, generation, tuple(items))
    assert decode_buffer(encode_buffer(data)) == data


@given(st.binary(max_size=400))
def test_random_bytes_only_raise_format_error(blob: bytes) -> None:
    with contextlib.suppress(FormatError):
        decode_buffer(blob)
    with contextlib.suppress(FormatError):
        decode_buffer(b"BEMUHBUF" + blob)


def test_every_flipped_byte_is_caught() -> None:
    data = HostBufferData("n1", 1, (BufferEntry("hdisk0", 1, b"p" * 16, VolumeInfo(MiB)),))
    blob = encode_buffer(data)
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(FormatError, match="buf"):
            decode_buffer(bytes(bad), name="node1.buf")


def test_names_are_stable_and_changes_are_seen_by_other_readers(tmp_path: Path) -> None:
    path = tmp_path / "n1.buf"
    writer = HostBuffer.load(path, "n1")
    reader = HostBuffer.load(path, "n1")
    assert writer.entries == () and not path.exists()
    a = writer.store(0x10, b"a" * 16, VolumeInfo(MiB))
    b = writer.store(0x20, b"b" * 16, VolumeInfo(MiB))
    assert (a.device, b.device) == ("hdisk0", "hdisk1")
    assert reader.reload_if_changed() and len(reader.entries) == 2
    assert not reader.reload_if_changed()
    writer.forget("hdisk0")
    c = writer.store(0x30, b"c" * 16, VolumeInfo(MiB))
    assert c.device == "hdisk0"  # the free name is reused
    again = writer.store(0x20, b"B" * 16, VolumeInfo(MiB))
    assert again.device == "hdisk1"  # refreshing keeps the name
    reader.reload_if_changed()
    assert reader.lookup(0x20).pvid == b"B" * 16
    with pytest.raises(KeyError, match="host scan"):
        reader.lookup("hdisk9")
    with pytest.raises(FormatError, match="not 'n2'"):
        HostBuffer.load(path, "n2")


async def test_scan_refresh_forget_against_an_array(array: ArrayProcess, tmp_path: Path) -> None:
    buf = HostBuffer.load(tmp_path / "h.buf", "h")
    async with open_client(array.unix, host="h") as client:
        await client.create(0x10, 4 * MiB, label="data")
        await client.create(0x11, 4 * MiB, label="copy")
        await client.create(0x20, 4 * MiB)
        await client.pair_create("00:10", "00:11")
        found = await scan(client, buf)
        assert [(e.device, e.ldev) for e in found] == [("hdisk0", 0x10), ("hdisk1", 0x20)]
        with pytest.raises(HiddenVolume, match="forget it instead"):
            await refresh(client, buf, 0x11)
        with trio.fail_after(20):  # wait for PAIR, then split: 00:11 gets a new PVID
            while (await client.pair_display())[0]["status"] != "PAIR":
                await trio.sleep(0.05)
        await client.pair_command(Op.PAIR_SPLIT, {"pvol": "00:10"})
        assert buf.by_ldev(0x11) is None
        entry = await refresh(client, buf, 0x11, take_control=True)
        assert entry.device == "hdisk2" and entry.info.label == "copy"
        assert entry.pvid == await client.read_pvid(0x11)
        await client.write(entry.ldev, entry.pvid, 0, b"usable after refresh")
        stale = buf.by_ldev(0x10)
        assert stale is not None
        await client.delete(0x20)
        await client.create(0x20, 4 * MiB)  # re-created: new PVID, the buffer is stale
        with pytest.raises(StaleIdentity):
            await client.read(0x20, buf.lookup("hdisk1").pvid, 0, 512)
        buf.forget("hdisk1")
        assert [e.device for e in buf.entries] == ["hdisk0", "hdisk2"]
    assert os.stat(buf.path).st_size > 0
