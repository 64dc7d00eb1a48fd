"""What a cluster node's agent needs from the array: pair commands on its own pairs, leases."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from blockemu.client import open_client
from blockemu.errors import AdminOnly, VolumeMasked
from blockemu.reservations import Reservations
from formats.wire import Op

from .conftest import ArrayProcess

MiB = 1 << 20

HOSTS = """
[hosts.node1]
key_file = "n1.key"
ldevs = ["00:10-00:11"]
replication = true

[hosts.node2]
key_file = "n2.key"
ldevs = ["00:10-00:11", "00:20-00:21"]
"""


def test_reservation_age_shows_whether_the_holder_renews(tmp_path: Path) -> None:
    res = Reservations(tmp_path / "r.json")
    assert res.status(1) == (None, None)
    res.reserve(1, "a")
    time.sleep(0.05)
    holder, age = res.status(1)
    assert holder == "a" and age is not None and age >= 0.05
    res.reserve(1, "a")  # renewal
    assert (res.status(1)[1] or 1.0) < 0.05
    reopened = Reservations(tmp_path / "r.json")
    assert reopened.status(1)[0] == "a"  # after an array restart: counts as just renewed
    res.preempt(1, "b")
    assert res.status(1)[0] == "b"


async def test_replication_hosts_run_pair_commands_on_their_own_pairs(
    tmp_path: Path, short_dir: Path
) -> None:
    for name in ("n1", "n2"):
        (tmp_path / f"{name}.key").write_bytes(os.urandom(32))
    (tmp_path / "hosts.toml").write_text(HOSTS)
    array = ArrayProcess(tmp_path / "root", short_dir / "a.sock", tmp_path / "a.log",
                         extra_args=["--hosts", str(tmp_path / "hosts.toml")])  # fmt: skip
    array.start()
    try:
        assert array.tcp is not None
        async with open_client(array.unix) as admin:
            for ldev in (0x10, 0x11, 0x20, 0x21):
                await admin.create(ldev, 4 * MiB)
            await admin.pair_create("00:10", "00:11")
            await admin.pair_create("00:20", "00:21")
        key1 = (tmp_path / "n1.key").read_bytes()
        async with open_client(array.tcp, host="node1", key=key1) as node1:
            with trio.fail_after(20):
                while (await node1.pair_display())[0]["status"] != "PAIR":
                    await trio.sleep(0.05)
            rows = await node1.pair_display()
            assert [r["pvol"] for r in rows] == ["00:10"]  # only its own pair
            rows = await node1.pair_command(Op.PAIR_SPLIT, {"pvol": "00:10"})
            assert rows[0]["status"] == "PSUS"
            with pytest.raises(VolumeMasked):
                await node1.pair_command(Op.PAIR_SPLIT, {"pvol": "00:20"})
            with pytest.raises(AdminOnly):
                await node1.pair_create("00:10", "00:11")
            await node1.reserve(0x11)
            holder, age = await node1.reservation(0x11)
            assert holder == "node1" and age is not None and age < 5
        key2 = (tmp_path / "n2.key").read_bytes()
        async with open_client(array.tcp, host="node2", key=key2) as node2:
            with pytest.raises(AdminOnly):  # no replication = true
                await node2.pair_command(Op.PAIR_RESYNC, {"pvol": "00:10"})
            assert (await node2.reservation(0x11))[0] == "node1"
    finally:
        array.stop()
