"""CCI commands against a real array and real HORCM instances, run the way scripts run them.

Every test starts a `blockemu serve` process and two instances through the
`horcmstart.sh` symlink (instance 0 holds the P-VOL side of the HORCM files,
instance 1 the S-VOL side), then runs the CCI commands as subprocesses with
the links on PATH. Every process started is killed by its PID at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from blockemu.client import open_client
from formats.units import format_ldev
from formats.volume_header import DATA_OFFSET

from .conftest import ArrayProcess

SERIAL = 412345
MiB = 1 << 20
#: group -> [(dev_name, LDEV in horcm0.conf, LDEV in horcm1.conf)]
GROUPS = {
    "oradb": [("dev1", 0x10, 0x11), ("dev2", 0x12, 0x13)],
    "big": [("bigdev", 0x20, 0x21)],
    "ctg": [("c1", 0x30, 0x31), ("c2", 0x32, 0x33)],
}
SIZES = {0x20: 1 << 30, 0x21: 1 << 30}  # the rest are 64 MiB


def free_udp_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Lab:
    """An array, two HORCM files, the CCI links on PATH and the instances started."""

    def __init__(self, array: ArrayProcess, base: Path) -> None:
        self.array = array
        self.base = base
        self.bin = base / "bin"
        self.rundir = base / "run"
        self.ports = free_udp_ports(2)
        self.pids: set[int] = set()
        cci = Path(sys.executable).parent / "blockemu-cci"
        subprocess.run([str(cci), "install-links", str(self.bin)], check=True, capture_output=True)
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "BLOCKEMU_ARRAY": str(array.unix),
            "BLOCKEMU_CCI_RUNDIR": str(self.rundir),
            "BLOCKEMU_CCI_CONFDIR": str(base),
        }
        for name in ("HORCMINST", "HORCM_CONF", "HORCC_SPLT", "BLOCKEMU_CCI_MODE"):
            self.env.pop(name, None)
        for side in (0, 1):
            self.conf(side).write_text(self.horcm(side))

    def conf(self, side: int) -> Path:
        return self.base / f"horcm{side}.conf"

    def horcm(self, side: int, groups: dict[str, list[tuple[str, int, int]]] = GROUPS) -> str:
        lines = [
            "HORCM_MON",
            "#ip_address service poll(10ms) timeout(10ms)",
            f"localhost {self.ports[side]} 1000 100",
            "",
            "HORCM_CMD",
            f"\\\\.\\CMD-{SERIAL}:/dev/sd",
            "",
            "HORCM_LDEV",
        ]
        for group, devs in groups.items():
            lines += [
                f"{group} {name} {SERIAL} {format_ldev(ldevs[side])} 0" for name, *ldevs in devs
            ]
        lines += ["", "HORCM_INST"]
        lines += [f"{group} localhost {self.ports[1 - side]}" for group in groups]
        return "\n".join(lines) + "\n"

    def run(
        self, *args: str, inst: int | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """One CCI command, found on PATH as a script would find it."""
        argv = [*args, f"-I{inst}"] if inst is not None else list(args)
        return subprocess.run(
            argv, capture_output=True, text=True, env={**self.env, **env}, timeout=120
        )

    def start(self, *insts: int, **env: str) -> subprocess.CompletedProcess[str]:
        proc = self.run("horcmstart.sh", *map(str, insts), **env)
        for inst in insts:
            with contextlib.suppress(OSError, ValueError):
                self.pids.add(int((self.rundir / f"horcm{inst}.pid").read_text()))
        return proc

    def kill_all(self) -> None:
        """SIGKILL every instance started, by PID (checking the PID is still an instance)."""
        for pid in self.pids:
            if is_instance(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def code(self, *args: str, inst: int | None = None) -> int:
        return self.run(*args, inst=inst).returncode

    def volume_file(self, ldev: int) -> Path:
        return self.array.root / "volumes" / (format_ldev(ldev).replace(":", "-") + ".vol")


def is_instance(pid: int) -> bool:
    """True while *pid* is a live (not zombie) ``python -m cci.instance`` process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return b"cci.instance" in cmdline and state != "Z"


async def _create_volumes(lab: Lab) -> None:
    async with open_client(lab.array.unix) as client:
        for devs in GROUPS.values():
            for _, *ldevs in devs:
                for ldev in ldevs:
                    await client.create(ldev, SIZES.get(ldev, 64 * MiB))


async def _delete_volumes(lab: Lab, ldevs: list[int]) -> None:
    async with open_client(lab.array.unix) as client:
        for ldev in ldevs:
            await client.delete(ldev)


def write_through_array(lab: Lab, ldev: int, offset: int, data: bytes) -> None:
    async def go() -> None:
        async with open_client(lab.array.unix) as client:
            await client.write(ldev, await client.read_pvid(ldev), offset, data)

    trio.run(go)


@pytest.fixture
def lab(array: ArrayProcess, short_dir: Path) -> Iterator[Lab]:
    lab = Lab(array, short_dir)
    trio.run(_create_volumes, lab)
    try:
        started = lab.start(0, 1)
        assert started.returncode == 0, started.stderr
        assert started.stdout.splitlines() == [
            "starting HORCM inst 0",
            "HORCM inst 0 starts successfully.",
            "starting HORCM inst 1",
            "HORCM inst 1 starts successfully.",
        ]
        yield lab
    finally:
        lab.kill_all()


def codes_in_state(lab: Lab, group: str) -> tuple[int, int, int, int]:
    """(pairvolchk -ss on inst 0, on inst 1, pairevtwait -nowait, pairevtwait -nowaits)."""
    return (
        lab.code("pairvolchk", "-g", group, "-ss", inst=0),
        lab.code("pairvolchk", "-g", group, "-ss", inst=1),
        lab.code("pairevtwait", "-g", group, "-nowait", inst=0),
        lab.code("pairevtwait", "-g", group, "-nowaits", inst=1),
    )


def cli_rows(lab: Lab, *args: str, inst: int) -> list[list[str]]:
    proc = lab.run("pairdisplay", "-CLI", *args, inst=inst)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert len(header.split()) == 13
    return [row.split() for row in rows]


# -- the backup script ---------------------------------------------------------------------------

BACKUP_SCRIPT = """\
#!/bin/bash
# A ShadowImage backup the way BC-exec.sh does it, run on the S-VOL host (HORCMINST=1).
G=oradb
pairdisplay -g $G -fcx || exit 10
pairsplit -g $G || exit 11
pairevtwait -g $G -s psus -ss ssus -t 60 || exit 12
dd if="$SVOL_FILE" of="$BACKUP" bs=1M skip=1 count=2 status=none || exit 13
pairresync -g $G || exit 14
pairevtwait -g $G -s pair -ss pair -t 600 || exit 15
pairdisplay -g $G -fcx
"""


def test_backup_script_runs_unchanged(lab: Lab) -> None:
    assert lab.code("paircreate", "-g", "oradb", "-vl", inst=0) == 0
    assert (
        lab.code("pairevtwait", "-g", "oradb", "-s", "pair", "-ss", "pair", "-t", "60", inst=0) == 0
    )
    image = os.urandom(2 * MiB)
    write_through_array(lab, 0x10, 0, image)  # the P-VOL of dev1, while paired
    script = lab.base / "backup.sh"
    script.write_text(BACKUP_SCRIPT)
    backup = lab.base / "backup.img"
    proc = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **lab.env,
            "HORCMINST": "1",
            "BACKUP": str(backup),
            "SVOL_FILE": str(lab.volume_file(0x11)),
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert backup.read_bytes() == image  # the S-VOL held the P-VOL's data at the split
    lines = proc.stdout.splitlines()
    assert lines.count("pairevtwait : Wait status done.") == 2
    before, after = lines[0:5], lines[-5:]
    for table in (before, after):
        assert "".join(table[0].split()) == (
            "GroupPairVol(L/R)(Port#,TID,LU-M),Seq#,LDEV#.P/S,Status,%,P-LDEV#M"
        )
        # As awk sees it: S-VOL on the local (L) side, hex LDEVs because of -fcx.
        dev1_l, dev1_r = table[1].split(), table[2].split()
        assert dev1_l[:2] == ["oradb", "dev1(L)"] and dev1_r[1] == "dev1(R)"
        assert dev1_l[6:8] == ["0011.S-VOL", "PAIR,"] and dev1_l[9] == "0010"
        assert dev1_r[6:8] == ["0010.P-VOL", "PAIR,"] and dev1_r[9] == "0011"
        assert dev1_l[5] == f"){SERIAL}" and dev1_l[10] == "-"


# -- columns as Cinder reads them ------------------------------------------------------------------


def test_pairdisplay_cli_columns_by_position(lab: Lab) -> None:
    smpl = cli_rows(lab, "-g", "oradb", "-d", "dev1", inst=0)
    assert [r[8:] for r in smpl] == [
        ["16", "SMPL", "-", "-", "-", "-"],
        ["17", "SMPL", "-", "-", "-", "-"],
    ]
    assert lab.code("paircreate", "-g", "oradb", "-vr", "-split", inst=1) == 0  # inst 0 is P
    assert (
        lab.code("pairevtwait", "-g", "oradb", "-s", "psus", "-ss", "ssus", "-t", "60", inst=0) == 0
    )
    for inst, (pvol_row, svol_row) in ((0, (0, 1)), (1, (1, 0))):
        rows = cli_rows(lab, "-g", "oradb", inst=inst)
        assert len(rows) == 4 and all(len(r) == 14 for r in rows)  # one token more than the header
        p, s = rows[pvol_row], rows[svol_row]
        assert [p[8], p[9], p[10], p[12]] == ["16", "P-VOL", "PSUS", "17"]
        assert [s[8], s[9], s[10], s[12]] == ["17", "S-VOL", "SSUS", "16"]
        assert p[11] == str(SERIAL) and s[11] == "-" and p[13] == "W" and s[13] == "-"
        assert p[:3] == ["oradb", "dev1", "L" if inst == 0 else "R"]
    rows = cli_rows(lab, "-g", "oradb", "-fcx", "-l", inst=1)
    assert [(r[1], r[8], r[9], r[10], r[11], r[12]) for r in rows] == [
        ("dev1", "0011", "S-VOL", "SSUS", "100", "0010"),
        ("dev2", "0013", "S-VOL", "SSUS", "100", "0012"),
    ]
    # Cinder's form: -d <Seq#> <LDEV#> <MU#> names the volume without its group.
    rows = cli_rows(lab, "-d", str(SERIAL), "17", "0", inst=1)
    assert rows[0][0] == "oradb" and rows[0][9] == "S-VOL" and rows[0][12] == "16"


# -- exit codes in every state ------------------------------------------------------------------


def test_exit_codes_in_every_state(lab: Lab) -> None:
    # SMPL
    assert codes_in_state(lab, "oradb") == (11, 11, 1, 1)
    assert lab.code("pairvolchk", "-g", "oradb", inst=0) == 1
    # COPY, held for many seconds: 384 MiB of data copied at pace 1 (32 MiB/s).
    chunk = os.urandom(MiB)
    fd = os.open(lab.volume_file(0x20), os.O_WRONLY)
    try:
        for n in range(384):
            os.pwrite(fd, chunk, DATA_OFFSET + n * MiB)
    finally:
        os.close(fd)
    assert lab.code("paircreate", "-g", "big", "-vl", "-c", "1", inst=0) == 0
    assert codes_in_state(lab, "big") == (22, 32, 2, 2)
    volstat = [
        lab.code("pairvolchk", "-g", "big", *c, inst=i) for i, c in ((0, ()), (1, ()), (0, ("-c",)))
    ]
    assert volstat == [2, 3, 3]  # P-VOL, S-VOL; -c: the remote side's
    # A quick split while copying: the P-VOL is PSUS, the S-VOL COPY until the copy is done,
    # and the pair may not be deleted before that.
    assert lab.code("pairsplit", "-g", "big", "-fq", "quick", inst=0) == 0
    assert codes_in_state(lab, "big") == (24, 32, 4, 2)
    refused = lab.run("pairsplit", "-g", "big", "-S", inst=0)
    assert refused.returncode == 221 and "still copying" in refused.stderr
    # PSUE
    assert lab.code("pairsplit", "-g", "big", "-E", inst=1) == 0
    assert codes_in_state(lab, "big") == (25, 35, 5, 5)
    assert lab.code("pairsplit", "-g", "big", "-S", inst=0) == 0
    assert codes_in_state(lab, "big") == (11, 11, 1, 1)
    trio.run(_delete_volumes, lab, [0x20, 0x21])  # give the disk space back at once
    # PAIR, then PSUS
    assert lab.code("paircreate", "-g", "oradb", "-vl", inst=0) == 0
    assert lab.code("pairevtwait", "-g", "oradb", "-s", "pair", "-t", "60", inst=1) == 0
    assert codes_in_state(lab, "oradb") == (23, 33, 3, 3)
    assert lab.code("pairsplit", "-g", "oradb", inst=0) == 0
    assert (
        lab.code("pairevtwait", "-g", "oradb", "-s", "psus", "-ss", "ssus", "-t", "60", inst=1) == 0
    )
    assert codes_in_state(lab, "oradb") == (24, 34, 4, 4)
    msg = lab.run("pairvolchk", "-g", "oradb", "-ss", inst=1).stdout
    assert msg.strip() == "pairvolchk : Volstat is S-VOL.[status = SSUS]"
    # restore (RCPY while it runs), then PAIR again
    assert lab.code("pairresync", "-g", "oradb", "-restore", inst=0) == 0
    assert (
        lab.code("pairevtwait", "-g", "oradb", "-s", "pair", "-ss", "pair", "-t", "60", inst=0) == 0
    )
    assert codes_in_state(lab, "oradb") == (23, 33, 3, 3)


def test_consistency_group_splits_at_one_instant(lab: Lab) -> None:
    assert lab.code("paircreate", "-g", "ctg", "-vl", "-m", "grp", inst=0) == 0
    assert lab.code("pairevtwait", "-g", "ctg", "-s", "pair", "-t", "60", inst=0) == 0
    assert lab.run("pairvolchk", "-g", "ctg", "-ss", inst=0).stdout.strip() == (
        "pairvolchk : Volstat is P-VOL.[status = PAIR CTGID = 0]"
    )
    assert lab.code("pairsplit", "-g", "ctg", inst=1) == 0
    pairs = subprocess.run(
        [sys.executable, "-m", "blockemu", "pair", "display", "--json"],
        capture_output=True,
        text=True,
        env=lab.env,
        check=True,
    ).stdout
    rows = [r for r in json.loads(pairs)["pairs"] if r["group"] == 0]
    assert len(rows) == 2 and rows[0]["split_time"] == rows[1]["split_time"] != 0


# -- errors ----------------------------------------------------------------------------------------


def first_line(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stderr.splitlines()[0]


def test_every_error_code(lab: Lab) -> None:
    def err(code: int, line: str, *args: str, inst: int | None = 0) -> str:
        proc = lab.run(*args, inst=inst)
        assert (proc.returncode, first_line(proc)) == (code, line), proc.stderr
        return proc.stderr

    command = "pairsplit"
    err(239, f"{command}: [EX_ENOGRP] No such group", command, "-g", "nosuch")
    err(246, f"{command}: [EX_ENODEV] No such device", command, "-g", "oradb", "-d", "nodev")
    err(
        253,
        "paircreate: [EX_INVARG] Invalid argument",
        "paircreate",
        "-g",
        "oradb",
        "-vl",
        "-c",
        "16",
    )
    err(252, "pairdisplay: [EX_UNWOPT] Unknown option", "pairdisplay", "-g", "oradb", "-fz")
    err(254, "paircreate: [EX_REQARG] Required Arg list", "paircreate", "-g", "oradb")
    err(
        241,
        "pairdisplay: [EX_INVMOD] Invalid RAID command mode",
        "pairdisplay",
        "-g",
        "oradb",
        "-IH0",
        inst=None,
    )
    causes = err(
        221,
        f"{command}: [EX_CMDRJE] An order to the control/command device was rejected",
        command,
        "-g",
        "oradb",
    )
    assert "cannot split: the volume is SMPL" in causes and "paircreate -split" in causes
    err(
        251,
        "pairdisplay: [EX_ATTHOR] Can't be attached to HORC manager",
        "pairdisplay",
        "-g",
        "oradb",
        inst=7,
    )
    err(
        247,
        "pairdisplay: [EX_ENOENT] No such device or group",
        "pairdisplay",
        "-d",
        str(SERIAL),
        "999",
    )
    assert lab.code("paircreate", "-g", "oradb", "-vl", inst=0) == 0
    assert lab.code("pairevtwait", "-g", "oradb", "-s", "pair", "-t", "60", inst=0) == 0
    err(
        221,
        "pairresync: [EX_CMDRJE] An order to the control/command device was rejected",
        "pairresync",
        "-g",
        "oradb",
        "-restore",
    )
    causes = err(
        233,
        "pairevtwait: [EX_EWSTOT] Timeout waiting for specified status",
        "pairevtwait",
        "-g",
        "oradb",
        "-s",
        "psus",
        "-t",
        "1",
    )
    assert "dev1 PAIR/PAIR" in causes
    assert lab.code("pairsplit", "-g", "oradb", "-d", "dev2", "-E", inst=0) == 0
    err(
        234,
        "pairevtwait: [EX_EWSUSE] Pair suspended at WAIT state",
        "pairevtwait",
        "-g",
        "oradb",
        "-s",
        "pair",
        "-t",
        "60",
    )
    # Files that name a missing LDEV, or disagree about a group, once the instances reread them.
    bad = {**GROUPS, "ghost": [("g1", 0x70, 0x71)], "skew": [("s1", 0x10, 0x11)]}
    lab.conf(0).write_text(lab.horcm(0, bad))
    lab.conf(1).write_text(lab.horcm(1, bad).replace("s1 412345 00:11 0", "s1 412345 00:11 1"))
    assert lab.code("horcmshutdown.sh", "0", "1") == 0
    assert lab.start(0, 1).returncode == 0
    causes = err(
        227, "pairdisplay: [EX_ENLDEV] No such LDEV within the RAID", "pairdisplay", "-g", "ghost"
    )
    assert "LDEV 00:70 (112) does not exist on the array" in causes
    causes = err(
        235, "pairdisplay: [EX_EVOLCE] Pair Volume combination error", "pairdisplay", "-g", "skew"
    )
    assert "MU#0 here but MU#1" in causes


# -- the instance --------------------------------------------------------------------------------


def test_instance_start_stop_and_partner_down(lab: Lab) -> None:
    again = lab.start(0)
    assert again.returncode == 1 and "has already been started" in again.stdout
    pid1 = int((lab.rundir / "horcm1.pid").read_text())
    stop = lab.run("horcmshutdown.sh", "1")
    assert stop.returncode == 0
    assert stop.stdout.splitlines() == ["inst 1:", "horcmshutdown inst 1 !!!"]
    assert not is_instance(pid1)
    assert not (lab.rundir / "horcm1.sock").exists() and not (lab.rundir / "horcm1.pid").exists()
    # Commands of the stopped instance cannot attach; its partner finds nobody to ask.
    proc = lab.run("pairdisplay", "-g", "oradb", inst=1)
    assert proc.returncode == 251 and "horcmstart.sh" in proc.stderr
    proc = lab.run("pairdisplay", "-g", "oradb", inst=0)
    assert proc.returncode == 242 and "did not answer within 1 s" in proc.stderr
    again = lab.run("horcmshutdown.sh", "1")
    assert again.returncode == 251 and "[EX_ATTHOR]" in again.stderr
    # A broken file, or no array to talk to: the instance does not start and says why.
    lab.conf(1).write_text(lab.horcm(1).replace("HORCM_INST", "HORCM_INSTX"))
    broken = lab.start(1)
    assert broken.returncode == 2 and "horcm1.conf:" in broken.stderr
    assert "unknown section keyword 'HORCM_INSTX'" in broken.stderr
    lab.conf(1).write_text(lab.horcm(1))
    no_array = lab.start(1, BLOCKEMU_ARRAY=f"unix:{lab.base}/nothing.sock")
    assert no_array.returncode == 2 and "cannot reach the array" in no_array.stderr
    assert lab.start(1).returncode == 0
    assert lab.code("pairdisplay", "-g", "oradb", inst=0) == 0
    # HORCMINST selects the instance when there is no -I.
    assert lab.run("pairvolchk", "-g", "oradb", HORCMINST="1").stdout.strip() == (
        "pairvolchk : Volstat is SMPL."
    )
    assert lab.code("horcmshutdown.sh", "0", "1") == 0
    assert lab.code("pairdisplay", "-g", "oradb", inst=0) == 251
