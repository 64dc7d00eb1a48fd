"""The demo's story as tests: a namespace lab, a database through the mounts, a backup
split through nodeagent, a SIGKILLed node, a takeover; each reflection policy's outcome.

eager and lazy: node2 resumes the database on the P-VOL (nothing acknowledged lost)
and the backup S-VOL holds a consistent database. off: node2 gets EIO on the S-VOL (the
patent's Fig. 2) while the P-VOL database is fine. Each run leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockemu import labdemo, labproc, netns
from blockemu.workloads import postgres_bindir

from .conftest import REQUIRE_PRIVILEGED, require_privileged

pytestmark = pytest.mark.root


def _nothing_left(directory: Path) -> None:
    assert not [ns for ns in netns.existing() if ns.startswith("be-demo-")]
    assert not labproc.mounts_under(str(directory.resolve()))
    assert not labproc.loops_under(str(directory.resolve()))


@pytest.fixture
def base() -> Iterator[Path]:
    require_privileged("network namespaces, FUSE mounts, loop devices")
    # /var/tmp-like permissions: the postgres user walks into the mounts.
    path = Path(tempfile.mkdtemp(prefix="be-demo-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        if not labproc.mounts_under(str(path.resolve())):  # never reach into a mount
            shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("policy", ["eager", "lazy", "off"])
def test_sqlite_story_per_policy(base: Path, policy: str) -> None:
    lines: list[str] = []
    result = labdemo.run_policy(base, policy, "sqlite", lines.append)
    text = "\n".join(lines)
    assert result.ok, f"{result.failures}\n{text}"
    assert result.primary is not None and result.primary.ok
    assert result.takeover is not None and result.answering is not None
    if policy == "off":
        assert result.svol.startswith("EIO") and result.backup is None
        assert "the patent's Fig. 2" in text
    else:
        assert result.svol == "usable" and result.backup is not None and result.backup.ok
        assert result.backup.rows > 0
    # The split's stages were shown as they happened.
    for stage in ("(A1)", "(A2)", "(A3)", "node2 reflected", "Stage Z"):
        assert stage in text
    assert result.timeline is not None
    svg = ET.parse(result.timeline).getroot()
    titles = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert "flag A3" in titles and "flag B2" in titles  # both nodes' flags are drawn
    _nothing_left(base)


@pytest.mark.parametrize("policy", ["eager", "off"])
def test_postgres_story(base: Path, policy: str) -> None:
    if postgres_bindir() is None:
        if REQUIRE_PRIVILEGED:
            pytest.fail("PostgreSQL is not installed (scripts/setup.sh installs it)")
        pytest.skip("PostgreSQL is not installed")
    lines: list[str] = []
    result = labdemo.run_policy(base, policy, "postgres", lines.append)
    assert result.ok, f"{result.failures}\n" + "\n".join(lines)
    assert result.primary is not None and "sum(abalance) = sum(delta)" in result.primary.detail
    if policy == "eager":
        assert result.backup is not None and "pg_amcheck clean" in result.backup.detail
    else:
        assert result.svol.startswith("EIO")
    _nothing_left(base)
