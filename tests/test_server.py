"""The array server as a real process, over real unix and TCP sockets."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from blockemu.address import Address
from blockemu.client import open_client
from blockemu.errors import (
    BadRequest,
    NoSuchVolume,
    OutOfRange,
    StaleIdentity,
    TooLarge,
    Unsupported,
)
from formats.volume_header import DATA_OFFSET, SLOT_OFFSETS, encode_slot
from formats.wire import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Frame,
    FrameReader,
    Op,
    Status,
    encode_frame,
    encode_header,
)

from .conftest import ArrayProcess

MiB = 1 << 20


def both(array: ArrayProcess) -> list[Address]:
    assert array.tcp is not None
    return [array.unix, array.tcp]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_write_read_flush_discard(array: ArrayProcess, transport: str) -> None:
    addr = array.unix if transport == "unix" else array.tcp
    assert addr is not None
    async with open_client(addr) as client:
        h = await client.create(0x1A, 64 * MiB, label="t")
        data = os.urandom(3 * MiB + 512)
        await client.write(h.ldev, h.pvid, 512, data)
        await client.flush(h.ldev, h.pvid)
        assert await client.read(h.ldev, h.pvid, 512, len(data)) == data
        await client.discard(h.ldev, h.pvid, MiB, MiB)
        assert await client.read(h.ldev, h.pvid, MiB, MiB) == bytes(MiB)
        await client.write(h.ldev, h.pvid, 0, b"fua", fua=True)
        assert await client.read(h.ldev, h.pvid, 0, 3) == b"fua"


async def test_large_io_is_split_by_the_client(array: ArrayProcess) -> None:
    async with open_client(array.unix) as client:
        h = await client.create(1, 64 * MiB)
        data = os.urandom(20 * MiB)  # more than MAX_IO: several frames
        await client.write(h.ldev, h.pvid, 0, data)
        assert await client.read(h.ldev, h.pvid, 0, len(data)) == data


async def test_pipelined_io_from_several_clients(array: ArrayProcess) -> None:
    """4 connections (2 unix, 2 tcp) x 16 tasks each, all in flight at once."""
    async with open_client(array.unix) as admin:
        h = await admin.create(2, 64 * MiB)
    blocks: dict[int, bytes] = {}
    rng = random.Random(7)
    offsets = rng.sample(range(0, 64 * MiB, 4096), 64 * 16)

    async def worker(client, index: int) -> None:
        for n in range(16):
            off = offsets[index * 16 + n]
            data = rng.randbytes(4096)
            blocks[off] = data
            await client.write(h.ldev, h.pvid, off, data)

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(open_client(a)) for a in both(array) * 2]
        async with trio.open_nursery() as nursery:
            for c, client in enumerate(clients):
                for t in range(16):
                    nursery.start_soon(worker, client, c * 16 + t)
    async with open_client(array.tcp) as reader:  # type: ignore[arg-type]
        results = {}

        async def check(off: int) -> None:
            results[off] = await reader.read(h.ldev, h.pvid, off, 4096)

        async with trio.open_nursery() as nursery:
            for off in blocks:
                nursery.start_soon(check, off)
    assert len(blocks) == 64 * 16
    assert results == blocks


async def test_stale_pvid_unknown_ldev_and_out_of_range(array: ArrayProcess) -> None:
    async with open_client(array.unix) as client:
        h = await client.create(3, MiB)
        await client.write(h.ldev, h.pvid, 0, b"keep")
        with pytest.raises(StaleIdentity, match=r"00:03.*refresh"):
            await client.write(h.ldev, os.urandom(16), 0, b"lost")
        with pytest.raises(StaleIdentity):
            await client.read(h.ldev, bytes(16), 0, 4)
        with pytest.raises(NoSuchVolume, match="00:04"):
            await client.read(4, h.pvid, 0, 4)
        with pytest.raises(OutOfRange, match="outside the volume"):
            await client.write(h.ldev, h.pvid, MiB - 2, b"abc")
        # The connection stays usable after refused requests, and nothing was written.
        assert await client.read(h.ldev, h.pvid, 0, 4) == b"keep"
        assert await client.read(h.ldev, h.pvid, MiB - 2, 2) == b"\0\0"


async def test_show_reads_the_header_from_disk(array: ArrayProcess) -> None:
    async with open_client(array.unix) as client:
        h = await client.create(5, MiB, label="old")
        # Another path to the disk (think: a second controller) writes a new header.
        newer = h.replace(generation=h.generation + 1, label="from-disk")
        path = array.root / "volumes" / "00-05.vol"
        with open(path, "r+b") as f:
            f.seek(SLOT_OFFSETS[newer.generation % 2])
            f.write(encode_slot(newer))
        shown = await client.show(5)
        assert shown.info.label == "from-disk"
        assert shown.pvid == h.pvid
        headers, broken = await client.list_volumes()
        assert [x.info.label for x in headers] == ["from-disk"] and broken == {}
        await client.delete(5)
        with pytest.raises(NoSuchVolume):
            await client.read(5, h.pvid, 0, 1)


async def test_sigkill_loses_no_acknowledged_write(array: ArrayProcess) -> None:
    written: dict[int, bytes] = {}
    async with open_client(array.unix) as client:
        h = await client.create(6, 32 * MiB)
        for i in range(200):
            data = os.urandom(4096)
            await client.write(h.ldev, h.pvid, i * 8192, data)
            written[i * 8192] = data  # acknowledged: must survive
    array.kill()  # SIGKILL, no flush
    array.start()  # same root and socket path: lock and stale socket are recovered
    async with open_client(array.unix) as client:
        for off, data in written.items():
            assert await client.read(h.ldev, h.pvid, off, 4096) == data


async def test_acknowledged_reservation_changes_survive_sigkill(array: ArrayProcess) -> None:
    """Group commit: many concurrent reserve/release/preempt, each acked only once durable."""
    async with open_client(array.unix) as admin:
        for ldev in range(0x40, 0x60):
            await admin.create(ldev, MiB)
    async with open_client(array.unix) as a, open_client(array.unix) as b:
        await a.hello("hostA")
        await b.hello("hostB")
        async with trio.open_nursery() as nursery:  # pipelined: one commit covers many
            for ldev in range(0x40, 0x60):
                nursery.start_soon(a.reserve, ldev)
        async with trio.open_nursery() as nursery:
            for ldev in range(0x40, 0x50):
                nursery.start_soon(a.release, ldev)
            for ldev in range(0x50, 0x58):
                nursery.start_soon(b.preempt, ldev)
    array.kill()  # SIGKILL right after the last acknowledgement
    array.start()
    async with open_client(array.unix) as admin:
        holders = {ldev: (await admin.reservation(ldev))[0] for ldev in range(0x40, 0x60)}
    expected = {**dict.fromkeys(range(0x40, 0x50)), **dict.fromkeys(range(0x50, 0x58), "hostB")}
    assert holders == {**expected, **dict.fromkeys(range(0x58, 0x60), "hostA")}


async def test_sigterm_stops_cleanly_and_removes_the_socket(array: ArrayProcess) -> None:
    assert array.sock.exists()
    assert array.terminate() == 0
    assert not array.sock.exists()


def test_second_server_on_the_same_root_is_refused(array: ArrayProcess, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "blockemu", "serve", "--root", str(array.root),
         "--listen", f"unix:{tmp_path}/other.sock"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 8
    assert "in use by another blockemu process" in proc.stderr
    assert f"pid {array.pid}" in proc.stderr


# -- bad input on the wire ---------------------------------------------------


def raw_exchange(array: ArrayProcess, data: bytes) -> list[Frame]:
    """Send raw bytes, read frames until the server closes or goes quiet."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(array.sock))
    s.sendall(data)
    reader = FrameReader()
    frames = []
    try:
        while chunk := s.recv(65536):
            reader.feed(chunk)
            while (f := reader.next_frame()) is not None:
                frames.append(f)
    except TimeoutError:
        pass
    finally:
        s.close()
    return frames


async def test_malformed_frames_get_an_answer_and_a_closed_connection(
    array: ArrayProcess,
) -> None:
    frames = await trio.to_thread.run_sync(raw_exchange, array, b"GET / HTTP/1.1\r\n" * 8)
    assert [f.status for f in frames] == [Status.BAD_REQUEST]
    assert "does not speak the blockemu array protocol" in frames[0].message()

    huge = encode_header(Op.WRITE, 9, length=MAX_PAYLOAD + 1)
    frames = await trio.to_thread.run_sync(raw_exchange, array, huge)
    assert [f.status for f in frames] == [Status.TOO_LARGE]
    assert "limit" in frames[0].message()

    # The server is still fine for everybody else.
    async with open_client(array.unix) as client:
        assert (await client.list_volumes())[0] == []


async def test_unknown_op_and_inconsistent_write(array: ArrayProcess) -> None:
    async with open_client(array.unix) as client:
        h = await client.create(8, MiB)
        with pytest.raises(Unsupported, match="unknown operation 99"):
            await client.request(Frame(99, 0, ldev=8))
        with pytest.raises(BadRequest, match="says 10 bytes but carries 3"):
            await client.request(Frame(Op.WRITE, 0, ldev=8, pvid=h.pvid, count=10, payload=b"abc"))
        with pytest.raises(TooLarge):
            await client.request(Frame(Op.READ, 0, ldev=8, pvid=h.pvid, count=64 * MiB))
        with pytest.raises(BadRequest, match="JSON"):
            await client.request(Frame(Op.CREATE, 0, payload=b"{not json"))
        assert await client.read(h.ldev, h.pvid, 0, 3) == b"\0\0\0"


async def test_connection_dropped_mid_request_applies_nothing(array: ArrayProcess) -> None:
    async with open_client(array.unix) as client:
        h = await client.create(9, MiB)
    frame = encode_frame(
        Frame(Op.WRITE, 1, ldev=9, pvid=h.pvid, offset=0, count=4096, payload=b"w" * 4096)
    )
    half = frame[: HEADER_SIZE + 1000]
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(array.sock))
    s.sendall(half)
    s.close()
    await trio.sleep(0.2)
    async with open_client(array.unix) as client:
        assert await client.read(h.ldev, h.pvid, 0, 4096) == bytes(4096)
    assert "dropped in the middle of a request" in array.log.read_text()
    # and the data file really holds nothing there
    with open(array.root / "volumes" / "00-09.vol", "rb") as f:
        f.seek(DATA_OFFSET)
        assert f.read(4096) == bytes(4096)
