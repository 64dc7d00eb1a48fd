"""The three reflection policies, each showing its outcome on a real cluster.

The story is the patent's Fig. 2: every node's buffer knows the split S-VOL
under its first PVID; the active resyncs and splits again (the S-VOL gets a
new PVID); then the active crashes and node2 takes over.

* ``eager`` (the patent): the standbys re-read the S-VOL during the split, so
  node2 knows the new PVID before the crash and reads it after takeover.
* ``lazy`` (AIX PowerHA's "lazy update"): the standbys do not re-read; node2
  still holds the old PVID before the crash (it could not use the S-VOL as a
  standby), and re-reads everything on the takeover path (``lazy_refresh``).
* ``off``: nobody re-reads; after takeover node2's host view answers EIO on
  the S-VOL: the failure the patent exists to prevent.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from blockemu.client import open_client
from blockemu.hostbuffer import HostBuffer
from formats.state_file import NodeRole
from formats.volume_header import VolumeHeader

from .clusterkit import (
    Cluster,
    admin_pvid,
    protocol_idle,
    replica,
    running_cluster,
    settled,
    state,
    svol_entry,
)
from .conftest import ArrayProcess, require_privileged, split_and_wait

pytestmark = pytest.mark.root

SVOL = 0x11


async def _split_on_the_array(array: ArrayProcess) -> None:
    async with open_client(array.unix) as admin:
        await split_and_wait(admin, {"svol": "00:11"})


async def _show(array: ArrayProcess, ldev: int) -> VolumeHeader:
    async with open_client(array.unix) as admin:
        return await admin.show(ldev)


@pytest.fixture(params=["eager", "lazy", "off"])
def policy_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, short_dir: Path
) -> Iterator[tuple[str, Cluster]]:
    require_privileged("the host views of the nodes are FUSE mounts")
    with running_cluster(tmp_path, short_dir, reflection=request.param) as cl:
        # Before the agents start: the S-VOL is split and every node's buffer knows it.
        trio.run(_split_on_the_array, cl.array)
        header = trio.run(_show, cl.array, SVOL)
        for agent in cl.agents.values():
            HostBuffer.load(agent.workdir / "buffer", agent.name).store(
                SVOL, header.pvid, header.info
            )
        yield request.param, cl


def test_reflection_policy_outcome(policy_cluster: tuple[str, Cluster]) -> None:
    policy, cluster = policy_cluster
    settled(cluster)
    cluster.wait(lambda: protocol_idle(cluster), "every node at flag 0")
    old = trio.run(admin_pvid, cluster.array, SVOL)
    for op in ("resync", "split"):
        answer = replica(cluster, "node1", op, "appvg")
        assert answer.returncode == 0, answer.stderr
    new = trio.run(admin_pvid, cluster.array, SVOL)
    assert new != old  # a split S-VOL gets a new identity
    node2 = cluster.agents["node2"]
    before = svol_entry(node2)
    if policy == "eager":
        assert before is not None and before.pvid == new  # reflected during the split
    else:
        # lazy and off: the standby's view is stale (lazy: it forgot it on the resync)
        assert before is None or before.pvid == old

    cluster.agents["node1"].kill()
    cluster.wait(lambda: cluster.active() == ["node2"], "node2 takes over")
    cluster.wait(lambda: state(node2).role is NodeRole.ACTIVE, "node2 persisted its role")
    cluster.wait(lambda: protocol_idle(cluster), "node2's recovery round is over")
    refreshes = [e for e in node2.events() if e["kind"] == "lazy_refresh"]
    entry = svol_entry(node2)
    if policy == "off":
        assert not refreshes
        assert entry is not None and entry.pvid == old  # still the identity from before
    else:
        assert entry is not None and entry.pvid == new
        assert len(refreshes) == (1 if policy == "lazy" else 0)
        if policy == "lazy":
            assert refreshes[0]["ok"] and refreshes[0]["duration"] >= 0
    device = node2.workdir / "view" / entry.device
    cluster.wait(device.exists, f"{device} in node2's host view")
    fd = os.open(device, os.O_RDONLY)
    try:
        if policy == "off":
            with pytest.raises(OSError) as failed:
                os.pread(fd, 4096, 0)
            assert failed.value.errno == errno.EIO  # the patent's Fig. 2
        else:
            assert len(os.pread(fd, 4096, 0)) == 4096
    finally:
        os.close(fd)
