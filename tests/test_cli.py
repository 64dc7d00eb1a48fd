"""`blockemu` and `nodeagent` as a user runs them: real processes, exit codes, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from formats.state_file import NodeRole, NodeState, ReplicaFlag, ReplicaOp, encode_state

from .conftest import ArrayProcess


def run(*args: str, array: ArrayProcess | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("BLOCKEMU_ARRAY", None)
    if array is not None:
        env["BLOCKEMU_ARRAY"] = str(array.unix)
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_volume_lifecycle_with_json(array: ArrayProcess) -> None:
    created = run("blockemu", "vol", "create", "00:1A", "10G", "--label", "db", "--json",
                  array=array)  # fmt: skip
    assert created.returncode == 0, created.stderr
    header = json.loads(created.stdout)
    assert header["ldev"] == "00:1A"
    assert header["info"]["size"] == 10 << 30
    assert header["info"]["label"] == "db"
    assert len(header["pvid"]) == 32

    listed = json.loads(run("blockemu", "vol", "list", "--json", array=array).stdout)
    assert [v["pvid"] for v in listed["volumes"]] == [header["pvid"]]

    shown = json.loads(run("blockemu", "vol", "show", "26", "--json", array=array).stdout)
    assert shown == header

    table = run("blockemu", "vol", "list", array=array)
    assert header["pvid"] in table.stdout and "00:1A" in table.stdout and "10G" in table.stdout

    assert run("blockemu", "vol", "delete", "00:1A", array=array).returncode == 0
    assert json.loads(run("blockemu", "vol", "list", "--json", array=array).stdout) == {
        "volumes": [],
        "broken": {},
    }


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("vol", "show", "00:99"), 4, "no volume with LDEV 00:99"),
        (("vol", "delete", "00:99"), 4, "no volume with LDEV 00:99"),
        (("vol", "create", "00:01", "1000"), 1, "multiple of the block size 512"),
        (("vol", "create", "00:01", "10X"), 2, "bad size '10X'"),
        (("vol", "create", "1:2:3", "1G"), 2, "bad LDEV"),
    ],
)
def test_errors_have_exit_codes_and_messages(
    array: ArrayProcess, args: tuple[str, ...], code: int, message: str
) -> None:
    proc = run("blockemu", *args, array=array)
    assert proc.returncode == code
    assert message in proc.stderr


def test_duplicate_create_exits_5(array: ArrayProcess) -> None:
    assert run("blockemu", "vol", "create", "00:01", "1M", array=array).returncode == 0
    proc = run("blockemu", "vol", "create", "00:01", "1M", array=array)
    assert proc.returncode == 5
    assert "already exists" in proc.stderr


def test_unreachable_array_and_missing_address(tmp_path: Path) -> None:
    proc = run("blockemu", "vol", "list", "--array", f"unix:{tmp_path}/none.sock")
    assert proc.returncode == 3
    assert "cannot reach the array" in proc.stderr and "blockemu serve" in proc.stderr
    proc = run("blockemu", "vol", "list")
    assert proc.returncode == 2
    assert "BLOCKEMU_ARRAY" in proc.stderr
    proc = run("blockemu", "vol", "list", "--array", "http://x")
    assert proc.returncode == 2
    assert "unix:/path/to/socket or tcp:HOST:PORT" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [(), ("serve",), ("vol",), ("vol", "create"), ("vol", "list"), ("vol", "show"),
     ("vol", "delete")],
)  # fmt: skip
def test_every_command_has_help(args: tuple[str, ...]) -> None:
    proc = run("blockemu", *args, "--help")
    assert proc.returncode == 0
    assert "usage: blockemu" in proc.stdout


def test_nodeagent_state_show(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(
        encode_state(NodeState(ReplicaFlag.A2, NodeRole.ACTIVE, 3, ReplicaOp.SPLIT, "g1"))
    )
    proc = run("nodeagent", "state", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["flag"] == "A2"
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    proc = run("nodeagent", "state", str(path))
    assert proc.returncode == 7
    assert "CRC mismatch" in proc.stderr
    assert run("nodeagent", "state", str(tmp_path / "none")).returncode == 4
