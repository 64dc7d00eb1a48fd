"""The pure parts of the CCI commands: states, display columns, options, group resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockemu.pairstate import Command, decide
from cci import display, states
from cci.actions import in_cci_terms
from cci.exitcodes import CODES, CciError, message
from cci.groups import find_group, partner, resolve
from cci.main import LINKS, install_links, main
from cci.model import Dev, PairState, Volume
from cci.options import Selector, parse
from formats.horcm import parse_horcm
from formats.volume_header import PairStatus

# -- exit codes ------------------------------------------------------------------------------------


def test_exit_codes_are_cci_numbers() -> None:
    wanted = {
        "EX_ENOGRP": 239,
        "EX_INVARG": 253,
        "EX_ATTHOR": 251,
        "EX_CMDRJE": 221,
        "EX_ENLDEV": 227,
        "EX_EWSTOT": 233,
        "EX_ENORMT": 242,
        "EX_UNWOPT": 252,
        "EX_REQARG": 254,
        "EX_COMERR": 255,
    }
    assert {name: CODES[name].code for name in wanted} == wanted
    assert all(128 <= e.code <= 255 for e in CODES.values())  # 0-127 mean success to Cinder


def test_message_is_cci_style_with_causes() -> None:
    exc = CciError(CODES["EX_ENOGRP"], "group 'x' is not in /etc/horcm0.conf")
    assert message("pairsplit", exc).splitlines() == [
        "pairsplit: [EX_ENOGRP] No such group",
        "CAUSE : group 'x' is not in /etc/horcm0.conf",
    ]
    assert CciError.from_json(exc.to_json()).error is exc.error


def test_refusals_name_cci_commands() -> None:
    reason = decide(PairStatus.SMPL, Command.SPLIT).reason
    assert "blockemu pair" in reason
    assert "blockemu" not in in_cci_terms(reason)
    assert "paircreate -split" in in_cci_terms(reason)


# -- states ----------------------------------------------------------------------------------------


def test_every_blockemu_state_has_a_cci_display() -> None:
    assert set(states.DISPLAY) == {s.name for s in PairStatus} | {states.PSUS_SP}
    for pvol, svol in states.DISPLAY.values():
        assert pvol in states.STATUS_NUMBER and svol in states.STATUS_NUMBER


@pytest.mark.parametrize(
    ("status", "percent", "pvol", "svol"),
    [
        ("COPY", 40, "COPY", "COPY"),
        ("PAIR", 100, "PAIR", "PAIR"),
        ("COPY_SP", 90, "COPY", "COPY"),
        ("PSUS", 100, "PSUS", "SSUS"),
        ("PSUS", 30, "PSUS", "COPY"),  # quick split still copying: PSUS(SP)
        ("COPY_RS", 50, "COPY", "COPY"),
        ("COPY_RS_R", 50, "RCPY", "RCPY"),
        ("PSUE", 100, "PSUE", "PSUE"),
    ],
)
def test_state_mapping(status: str, percent: int, pvol: str, svol: str) -> None:
    assert states.shown(status, percent, states.PVOL) == pvol
    assert states.shown(status, percent, states.SVOL) == svol


def test_nowait_and_volchk_numbers() -> None:
    assert [states.number(s) for s in ("SMPL", "COPY", "RCPY", "PAIR", "PSUS", "SSUS", "PSUE")] == [
        1,
        2,
        2,
        3,
        4,
        4,
        5,
    ]
    assert states.volchk_code(states.SIMPLEX, 1, with_status=True) == 11
    assert states.volchk_code(states.PVOL, 2, with_status=True) == 22
    assert states.volchk_code(states.SVOL, 4, with_status=True) == 34
    assert states.volchk_code(states.SVOL, 5, with_status=False) == 3
    assert states.volchk_code(states.SIMPLEX, 1, with_status=False) == 1


PAIRED = st.sampled_from(["COPY", "RCPY", "PAIR", "PSUS", "SSUS", "PSUE"])


@given(st.lists(PAIRED, min_size=1))
def test_group_fold_priority(statuses: list[str]) -> None:
    folded = states.fold(statuses)
    present = {states.number(s) for s in statuses}
    expected = next(n for n in (2, 5, 4, 3) if n in present)  # COPY > PSUE > PSUS > PAIR
    assert folded == expected
    assert states.fold(reversed(statuses)) == folded


def test_fold_of_smpl() -> None:
    assert states.fold(["SMPL", "SMPL"]) == 1
    with pytest.raises(ValueError):
        states.fold(["SMPL", "PAIR"])
    with pytest.raises(ValueError):
        states.fold([])


# -- display ---------------------------------------------------------------------------------------

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789_-:", min_size=1, max_size=31)
BLOCKEMU_STATES = st.sampled_from([s.name for s in PairStatus if s is not PairStatus.SMPL])


@st.composite
def devs(draw: st.DrawFn) -> Dev:
    local, remote = draw(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2, unique=True))
    serial = draw(st.integers(1, 999999))
    pair = None
    if draw(st.booleans()):
        pvol, svol = (local, remote) if draw(st.booleans()) else (remote, local)
        pair = PairState(
            pvol,
            svol,
            draw(BLOCKEMU_STATES),
            draw(st.integers(0, 100)),
            draw(st.none() | st.integers(0, 255)),
        )
    return Dev(
        draw(NAMES),
        draw(NAMES),
        draw(st.integers(0, 2)),
        Volume(serial, local),
        Volume(serial, remote),
        pair,
    )


@given(st.lists(devs(), min_size=1, max_size=4), st.booleans(), st.booleans())
def test_cli_columns_where_cinder_reads_them(
    group: list[Dev], percent: bool, hex_ldev: bool
) -> None:
    text = display.render_cli(display.rows(group), percent=percent, hex_ldev=hex_ldev)
    header, *lines = text.splitlines()
    assert header.split()[:10] == [
        "Group",
        "PairVol",
        "L/R",
        "Port#",
        "TID",
        "LU-M",
        "Seq#",
        "LDEV#",
        "P/S",
        "Status",
    ]
    assert len(header.split()) == 13 and header.split()[10] == ("%" if percent else "Seq#")
    assert len(lines) == 2 * len(group)
    for dev, (left, right) in zip(group, zip(lines[::2], lines[1::2], strict=True), strict=True):
        for line, remote in ((left, False), (right, True)):
            tokens = line.split()
            assert len(tokens) == 14
            vol = dev.side(remote)
            assert tokens[0] == dev.group and tokens[1] == dev.name
            assert tokens[2] == ("R" if remote else "L")
            assert tokens[6] == str(dev.mu) and tokens[7] == str(vol.serial)
            ldev = int(tokens[8], 16) if hex_ldev else int(tokens[8])
            assert ldev == vol.ldev
            assert tokens[9] == dev.role(remote)
            if dev.pair is None:
                assert tokens[9:] == ["SMPL", "-", "-", "-", "-"]
                continue
            assert tokens[10] == dev.status(remote)
            other = dev.pair.svol if tokens[9] == "P-VOL" else dev.pair.pvol
            assert (int(tokens[12], 16) if hex_ldev else int(tokens[12])) == other
            if percent:
                assert tokens[11] == str(dev.pair.copy_percent)
            else:
                assert tokens[11] == (str(vol.serial) if tokens[9] == "P-VOL" else "-")
            assert tokens[13] == ("W" if tokens[9:11] == ["P-VOL", "PSUS"] else "-")


@given(st.lists(devs(), min_size=1, max_size=4), st.booleans(), st.booleans())
def test_classic_layout_tokens(group: list[Dev], percent: bool, hex_ldev: bool) -> None:
    text = display.render_classic(display.rows(group), percent=percent, hex_ldev=hex_ldev)
    header, *lines = text.splitlines()
    squeezed = "".join(header.split())
    middle = "%" if percent else "Seq#"
    assert squeezed == f"GroupPairVol(L/R)(Port#,TID,LU-M),Seq#,LDEV#.P/S,Status,{middle},P-LDEV#M"
    for dev, line in zip([d for d in group for _ in (0, 1)], lines, strict=True):
        tokens = line.split()
        assert tokens[0] == dev.group and tokens[1].startswith(dev.name + "(")
        assert tokens[-1] in ("W", "-")
        ps = tokens[6].split(".")[-1]  # "404b.S-VOL", "  18..P-VOL"
        assert ps in ("P-VOL", "S-VOL", "SMPL")


def test_classic_matches_a_real_pairdisplay_fcx() -> None:
    dev = Dev(
        "vgdbRPS",
        "dev1",
        0,
        Volume(85827, 0x404B),
        Volume(85827, 0x4006),
        PairState(0x4006, 0x404B, "PSUS", 100),
    )
    text = display.render_classic(display.rows([dev]), percent=True, hex_ldev=True)
    # pairdisplay -IBC6 -g vgdbRPS -fcx on the S-VOL host, as BC-exec logged it:
    # vgdbRPS 40:06_40:4b(L) (CL1-A-3, 3,   7-0 )85827  404b.S-VOL SSUS,  100    4006 -
    # vgdbRPS 40:06_40:4b(R) (CL1-A-1, 0,   4-0 )85827  4006.P-VOL PSUS,  100    404b W
    left, right = text.splitlines()[1:]
    assert left.split()[5:] == [")85827", "404b.S-VOL", "SSUS,", "100", "4006", "-"]
    assert right.split()[5:] == [")85827", "4006.P-VOL", "PSUS,", "100", "404b", "W"]
    assert left.split()[1] == "dev1(L)" and left.split()[2:4] == ["(CL1-A-0,", "0,"]


def test_local_only_rows() -> None:
    dev = Dev("g", "d", 0, Volume(1, 16), Volume(1, 17))
    assert [r.side for r in display.rows([dev], local_only=True)] == ["L"]


# -- options ---------------------------------------------------------------------------------------


def test_instance_options_and_horcminst() -> None:
    assert parse("pairdisplay", ["-g", "G", "-IM1"], {}).instance == "1"
    assert parse("pairdisplay", ["-g", "G", "-IBC6"], {}).instance == "6"
    assert parse("pairdisplay", ["-g", "G", "-ISI02"], {}).instance == "2"
    assert parse("pairdisplay", ["-g", "G"], {"HORCMINST": "3"}).instance == "3"
    assert parse("pairdisplay", ["-g", "G", "-I4"], {"HORCMINST": "3"}).instance == "4"
    assert parse("pairdisplay", ["-g", "G", "-IM"], {"HORCMINST": "3"}).instance == "3"
    assert parse("pairdisplay", ["-g", "G"], {}).instance == ""
    for bad, code in ((["-IH1"], 241), (["-ITC1"], 241), (["-I9999"], 253)):
        with pytest.raises(CciError) as info:
            parse("pairdisplay", ["-g", "G", *bad], {})
        assert info.value.error.code == code


def test_option_values() -> None:
    opts = parse(
        "pairevtwait", ["-g", "G", "-s", "psus", "copy", "-ss", "ssus", "-t", "60", "5"], {}
    )
    assert opts.values == {"-g": ["G"], "-s": ["psus", "copy"], "-ss": ["ssus"], "-t": ["60", "5"]}
    opts = parse("pairdisplay", ["-g", "G", "-fcx", "-CLI"], {})
    assert opts.formats == {"c", "x"} and opts.has("-CLI")
    assert parse("pairdisplay", ["-d", "412345", "00:10", "0"], {}).selector() == Selector(
        None, None, (412345, 16, 0)
    )
    assert parse("pairsplit", ["-g", "G", "-d", "dev1"], {}).selector() == Selector("G", "dev1")


@pytest.mark.parametrize(
    ("command", "argv", "code"),
    [
        ("pairsplit", ["-g", "G", "-x"], 252),  # unknown option
        ("pairdisplay", ["-g", "G", "-fq"], 252),
        ("pairsplit", ["-g"], 254),  # value missing
        ("pairsplit", ["-g", "G", "extra"], 253),
        ("pairsplit", ["-d", "1", "x"], 253),
    ],
)
def test_bad_command_lines(command: str, argv: list[str], code: int) -> None:
    with pytest.raises(CciError) as info:
        parse(command, argv, {}).selector()
    assert info.value.error.code == code


def test_selector_needs_a_group_or_device() -> None:
    with pytest.raises(CciError) as info:
        parse("pairdisplay", ["-CLI"], {}).selector()
    assert info.value.error.name == "EX_REQARG"


# -- groups ----------------------------------------------------------------------------------------


def _conf(path: str, ldevs: list[str], inst: str = "G localhost 11001") -> str:
    return "\n".join(
        ["HORCM_MON", "localhost 11000 1000 3000", "HORCM_LDEV", *ldevs, "HORCM_INST", inst, ""]
    )


LOCAL = parse_horcm(_conf("l", ["G d1 412345 00:10 0", "G d2 412345 00:12 0"]), path="h0.conf")
REMOTE = parse_horcm(_conf("r", ["G d1 412345 00:11 0", "G d2 412345 00:13 0"]), path="h1.conf")


def test_resolve_a_group_and_a_device() -> None:
    devs = resolve(LOCAL, REMOTE, "G", Selector("G"))
    assert [(d.name, d.local.ldev, d.remote.ldev) for d in devs] == [("d1", 16, 17), ("d2", 18, 19)]
    assert [d.name for d in resolve(LOCAL, REMOTE, "G", Selector("G", "d2"))] == ["d2"]
    by_ldev = Selector(None, None, (412345, 0x12, None))
    assert find_group(LOCAL, by_ldev) == "G"
    assert [d.name for d in resolve(LOCAL, REMOTE, "G", by_ldev)] == ["d2"]
    assert partner(LOCAL, "G").service == "11001"


def _code(fn: object, *args: object) -> str:
    with pytest.raises(CciError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.error.name


def test_resolution_errors() -> None:
    assert _code(find_group, LOCAL, Selector("H")) == "EX_ENOGRP"
    assert _code(find_group, LOCAL, Selector(None, None, (412345, 0x99, None))) == "EX_ENOENT"
    assert _code(resolve, LOCAL, REMOTE, "G", Selector("G", "d9")) == "EX_ENODEV"
    other = parse_horcm(_conf("r", ["H d1 412345 00:11 0"], "H localhost 11000"), path="h1.conf")
    assert _code(resolve, LOCAL, other, "G", Selector("G")) == "EX_ENOGRP"
    mu = parse_horcm(_conf("r", ["G d1 412345 00:11 1", "G d2 412345 00:13 0"]), path="h1.conf")
    assert _code(resolve, LOCAL, mu, "G", Selector("G")) == "EX_EVOLCE"
    no_inst = parse_horcm("HORCM_LDEV\nG d1 412345 00:10 0\n", path="h2.conf")
    assert _code(partner, no_inst, "G") == "EX_ENOGRP"


# -- the console script --------------------------------------------------------------------------


def test_install_links_and_dispatch_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert install_links(str(tmp_path / "bin"), "/usr/local/bin/blockemu-cci") == 0
    for name in LINKS:
        assert os.readlink(tmp_path / "bin" / name) == "/usr/local/bin/blockemu-cci"
    (tmp_path / "bin" / "pairdisplay").unlink()
    (tmp_path / "bin" / "pairdisplay").write_text("a real file")
    assert install_links(str(tmp_path / "bin"), "/usr/local/bin/blockemu-cci") == 1
    capsys.readouterr()
    assert main([str(tmp_path / "bin" / "pairvolchk"), "-h"]) == 0
    assert capsys.readouterr().out.startswith("Usage: pairvolchk")
    assert main(["blockemu-cci", "pairsplit", "-h"]) == 0
    assert main(["blockemu-cci", "nosuch"]) == 2
