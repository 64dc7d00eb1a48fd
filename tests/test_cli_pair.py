"""`blockemu pair ...` and the reservation verbs, run as a user would."""

from __future__ import annotations

import json

from .conftest import ArrayProcess
from .test_cli import run


def pairs(*args: str, array: ArrayProcess) -> list[dict]:
    proc = run("blockemu", "pair", *args, "--json", array=array)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["pairs"]


def test_pair_lifecycle_from_the_shell(array: ArrayProcess) -> None:
    for ldev in ("00:10", "00:11"):
        assert run("blockemu", "vol", "create", ldev, "64M", array=array).returncode == 0
    rows = pairs("create", "--pvol", "00:10", "--svol", "00:11", "--mode", "async", "--wait",
                 array=array)  # fmt: skip
    assert rows[0]["status"] == "PAIR" and rows[0]["copy_percent"] == 100
    assert rows[0]["mode"] == "async" and rows[0]["svol_pvid"] == rows[0]["pvol_pvid"]

    listed = run("blockemu", "vol", "list", array=array).stdout
    assert "PVOL PAIR with 00:11" in listed and "SVOL PAIR with 00:10" in listed

    rows = pairs("split", "--svol", "00:11", "--wait", array=array)
    assert rows[0]["status"] == "PSUS" and rows[0]["svol_status"] == "SSUS"
    assert rows[0]["svol_pvid"] != rows[0]["pvol_pvid"]

    timeout = run("blockemu", "pair", "wait", "--pvol", "00:10", "--status", "PAIR",
                  "--timeout", "0.5", array=array)  # fmt: skip
    assert timeout.returncode == 9
    assert "timed out after 0.5s waiting for PAIR" in timeout.stderr

    rows = pairs("resync", "--pvol", "00:10", "--wait", array=array)
    assert rows[0]["status"] == "PAIR"

    refused = run("blockemu", "pair", "restore", "--pvol", "00:10", array=array)
    assert refused.returncode == 10
    assert "cannot restore" in refused.stderr

    table = run("blockemu", "pair", "display", array=array).stdout
    assert "00:10" in table and "PAIR" in table and "async" in table

    assert run("blockemu", "pair", "delete", "--pvol", "00:10", array=array).returncode == 0
    assert pairs("display", array=array) == []


def test_group_commands_and_bad_selectors(array: ArrayProcess) -> None:
    for ldev in ("00:20", "00:21", "00:30", "00:31"):
        run("blockemu", "vol", "create", ldev, "16M", array=array)
    for p, s in (("00:20", "00:21"), ("00:30", "00:31")):
        pairs("create", "--pvol", p, "--svol", s, "--group", "5", "--wait", array=array)
    rows = pairs("split", "--group", "5", "--wait", array=array)
    assert [r["status"] for r in rows] == ["PSUS", "PSUS"]
    assert {r["split_time"] for r in rows} and all(r["group"] == 5 for r in rows)
    missing = run("blockemu", "pair", "split", "--group", "6", array=array)
    assert missing.returncode == 4 and "no pair in consistency group 6" in missing.stderr
    smpl = run("blockemu", "vol", "create", "00:40", "16M", array=array)
    assert smpl.returncode == 0
    proc = run("blockemu", "pair", "split", "--pvol", "00:40", array=array)
    assert proc.returncode == 10 and "SMPL" in proc.stderr
    proc = run("blockemu", "pair", "create", "--pvol", "00:40", "--svol", "00:40", array=array)
    assert proc.returncode == 1 and "paired with itself" in proc.stderr


def test_hidden_svol_and_reservations_from_the_shell(array: ArrayProcess) -> None:
    run("blockemu", "vol", "create", "00:01", "1M", array=array)
    proc = run("blockemu", "vol", "reserve", "00:01", "--host", "node1", array=array)
    assert proc.returncode == 0, proc.stderr
    proc = run("blockemu", "vol", "show", "00:01", "--host", "node2", array=array)
    assert proc.returncode == 12 and "reserved by host 'node1'" in proc.stderr
    proc = run("blockemu", "vol", "preempt", "00:01", "--host", "node2", "--json", array=array)
    assert json.loads(proc.stdout)["previous"] == "node1"
    assert run("blockemu", "vol", "show", "00:01", "--host", "node2", array=array).returncode == 0
    proc = run("blockemu", "vol", "release", "00:01", "--host", "node1", array=array)
    assert proc.returncode == 12
    proc = run("blockemu", "vol", "reserve", "00:01", array=array)
    assert proc.returncode == 12 and "need a host id" in proc.stderr


def test_deleting_a_simplex_volumes_pair_is_nothing_to_do(array: ArrayProcess) -> None:
    assert run("blockemu", "vol", "create", "00:50", "1M", array=array).returncode == 0
    proc = run("blockemu", "pair", "delete", "--pvol", "00:50", array=array)
    assert proc.returncode == 0, proc.stderr  # the table's SMPL row: delete is "ok"
    proc = run("blockemu", "pair", "resync", "--pvol", "00:50", array=array)
    assert proc.returncode == 10 and "cannot resync" in proc.stderr
