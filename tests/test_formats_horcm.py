"""formats.horcm: HORCM configuration files and ShadowImage pairs across two instances."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from formats import FormatError
from formats.horcm import (
    KEYWORDS,
    DevEntry,
    HorcmConfig,
    HorcmError,
    HorcmMon,
    InstEntry,
    LdevEntry,
    LdevgEntry,
    PairDef,
    load_horcm,
    match_pairs,
    parse_horcm,
    render_horcm,
)

DATA = Path(__file__).parent / "data"
PROBLEM_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")


def problems_of(text: str, path: str = "h.conf") -> list[str]:
    with pytest.raises(HorcmError) as info:
        parse_horcm(text, path=path)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def only_problem(text: str, path: str = "h.conf") -> tuple[str, int, int, str]:
    problems = problems_of(text, path)
    assert len(problems) == 1, problems
    m = PROBLEM_RE.match(problems[0])
    assert m, problems[0]
    return m["file"], int(m["line"]), int(m["col"]), m["message"]


# -- a realistic pair of instance files ------------------------------------------------------


def test_realistic_p_vol_side_file() -> None:
    """CRLF, tabs, trailing blanks, header comments, a trailing comment, three LDEV forms."""
    conf = load_horcm(DATA / "horcm0.conf")
    assert conf.path == str(DATA / "horcm0.conf")
    assert conf.mon == HorcmMon("localhost", "horcm0", 1000, 3000)
    assert conf.cmd == (r"\\.\CMD-412345:/dev/sd", r"\\.\IPCMD-192.0.2.10-31001")
    assert conf.devs == ()
    assert conf.ldevs == (
        LdevEntry("oradb", "oradev1", 412345, 0x1A, 0, 13),
        LdevEntry("oradb", "oradev2", 412345, 27, 0, 14),
        LdevEntry("oradb", "oradev3", 412345, 0x1C, None, 15),
        LdevEntry("backup", "bkdev1", 412345, 0x100, 1, 16),
    )
    assert [e.line for e in conf.ldevs] == [13, 14, 15, 16]
    assert conf.insts == (
        InstEntry("oradb", "localhost", "horcm1", None, 20, False),
        InstEntry("backup", "127.0.0.1", "11001", 1, 24, True),
    )
    assert list(conf.groups()) == ["oradb", "backup"]
    assert [e.name for e in conf.groups()["oradb"]] == ["oradev1", "oradev2", "oradev3"]


def test_realistic_s_vol_side_file() -> None:
    conf = load_horcm(DATA / "horcm1.conf")
    assert conf.mon == HorcmMon("NONE", "11001", None, 3000)  # poll -1: monitoring off
    assert [(e.name, e.ldev, e.mu) for e in conf.ldevs] == [
        ("oradev1", 0x2A, 0),
        ("oradev2", 43, None),
        ("oradev3", 0x2C, 0),
        ("bkdev1", 0x200, 1),
    ]
    assert conf.insts == (
        InstEntry("backup", "localhost", "horcm0", None, 19, True),
        InstEntry("oradb", "::1", "horcm0", None, 22, False),
    )


def test_realistic_files_match_into_pairs() -> None:
    pvol, svol = load_horcm(DATA / "horcm0.conf"), load_horcm(DATA / "horcm1.conf")
    assert match_pairs(pvol, svol) == [
        PairDef("oradb", "oradev1", 0x1A, 0x2A, 0, 412345),
        PairDef("oradb", "oradev2", 27, 43, 0, 412345),  # omitted MU# is MU#0
        PairDef("oradb", "oradev3", 0x1C, 0x2C, 0, 412345),
        PairDef("backup", "bkdev1", 0x100, 0x200, 1, 412345),
    ]
    # The caller says which side is the P-VOL: swapping the files swaps the roles.
    swapped = match_pairs(svol, pvol)
    assert [(p.pvol_ldev, p.svol_ldev) for p in swapped] == [
        (0x2A, 0x1A),
        (43, 27),
        (0x2C, 0x1C),
        (0x200, 0x100),
    ]


def test_line_endings_tabs_and_blank_lines() -> None:
    text = (
        "\ufeff# BOM, CRLF, tabs, blanks\r\n"
        "\r\n"
        "  \t \r\n"
        "HORCM_LDEV\t \r\n"
        "\tg\td1\t\t412345\t00:01\t0\t\r\n"
        "g  d2 412345 0x0002   # trailing comment\r\n"
        "  # indented comment\r\n"
        "g d3 412345 3#not-a-comment-inside-a-word\r\n"
    )
    problems = problems_of(text)
    assert problems == [
        "h.conf:8:14: '#' inside '3#not-a-comment-inside-a-word': a comment starts with '#' "
        "at the start of a line or after a space or tab; names cannot contain '#'"
    ]
    conf = parse_horcm(text.replace("3#", "3 #"))
    assert [(e.name, e.ldev, e.mu, e.line) for e in conf.ldevs] == [
        ("d1", 1, 0, 5),
        ("d2", 2, None, 6),
        ("d3", 3, None, 8),
    ]


def test_command_devices_several_per_line_and_lines() -> None:
    conf = parse_horcm(
        "HORCM_CMD\n/dev/sdb /dev/sdc\t/dev/sdd\n\\\\.\\CMD-30095-250-CL1-A-1:/dev/rdsk/\n"
    )
    assert conf.cmd == ("/dev/sdb", "/dev/sdc", "/dev/sdd", r"\\.\CMD-30095-250-CL1-A-1:/dev/rdsk/")


def test_horcm_dev_entries() -> None:
    conf = parse_horcm(
        "HORCM_DEV\n"
        "#dev_group dev_name port# TargetID LU# MU#\n"
        "devgroup1  pair1    CL1-A 0        1\n"
        "devgroup1  pair2    CL2-B-1 3      12  2\n"
        "HORCM_INST\n"
        "devgroup1 remotehost.example.com 11000\n"
    )
    assert conf.devs == (
        DevEntry("devgroup1", "pair1", "CL1-A", 0, 1, None, 3),
        DevEntry("devgroup1", "pair2", "CL2-B-1", 3, 12, 2, 4),
    )
    assert conf.insts[0].ip_address == "remotehost.example.com"


def test_ldev_number_forms() -> None:
    text = "HORCM_LDEV\n" + "".join(
        f"g d{i} 1 {form}\n"
        for i, form in enumerate(["3A:DB", "15067", "0x3ADB", "0X3adb", "3a:db"])
    )
    assert {e.ldev for e in parse_horcm(text).ldevs} == {0x3ADB}
    # Edges of the range.
    text = "HORCM_LDEV\ng a 1 0\ng b 1 65535\ng c 1 FF:FF\ng d 1 0xFFFF\n"
    assert [e.ldev for e in parse_horcm(text).ldevs] == [0, 0xFFFF, 0xFFFF, 0xFFFF]


def test_ldevg_section_is_its_own_keyword() -> None:
    conf = parse_horcm(
        "HORCM_LDEVG\n#copy_group device_group Serial#\ncg1 dg1 412345\n"
        "HORCM_INST\ncg1 localhost horcm1\n"
    )
    assert conf.ldevgs == (LdevgEntry("cg1", "dg1", 412345, 3),)
    assert conf.ldevs == ()


def test_empty_file_and_comments_only() -> None:
    assert parse_horcm("") == HorcmConfig("<horcm>", None, (), (), (), ())
    assert parse_horcm("# nothing\n\n   \n").mon is None


# -- HORCM_INST versus HORCM_INSTP -----------------------------------------------------------


def test_instp_is_not_inst_plus_garbage() -> None:
    """The salt parser's startswith('HORCM_INST') bug: HORCM_INSTP must be its own section."""
    conf = parse_horcm(
        "HORCM_LDEV\ng d 1 1\n"
        "HORCM_INSTP\ng host1 horcm1 3\ng host2 horcm1\n"
        "HORCM_INST\ng host3 horcm1\n"
    )
    assert conf.insts == (
        InstEntry("g", "host1", "horcm1", 3, 4, True),
        InstEntry("g", "host2", "horcm1", None, 5, True),
        InstEntry("g", "host3", "horcm1", None, 7, False),
    )


def test_inst_does_not_take_a_path_id() -> None:
    file, line, col, message = only_problem("HORCM_LDEV\ng d 1 1\nHORCM_INST\ng host1 horcm1 3\n")
    assert (file, line, col) == ("h.conf", 4, 16)
    assert message == (
        "HORCM_INST line has 4 columns, expected at most 3 (dev_group ip_address service): "
        "'3' is extra (start a comment with '#')"
    )


@pytest.mark.parametrize(
    ("keyword", "suggestion"),
    [("HORCM_INSTPX", "HORCM_INSTP"), ("HORCM_LDEVGG", "HORCM_LDEVG"), ("horcm_dev", "HORCM_DEV")],
)
def test_near_keywords_are_unknown(keyword: str, suggestion: str) -> None:
    file, line, col, message = only_problem(f"# x\n  {keyword}\ng d 1 1\n")
    assert (file, line, col) == ("h.conf", 2, 3)
    assert message.startswith(f"unknown section keyword {keyword!r}: expected one of HORCM_MON")
    assert message.endswith(f"did you mean {suggestion}?")


def test_keyword_with_words_after_it() -> None:
    file, line, col, message = only_problem("HORCM_INST P\n")
    assert (file, line, col) == ("h.conf", 1, 12)
    assert message == (
        "section keyword HORCM_INST must be alone on its line; found 'P' after it "
        "(start a comment with '#')"
    )
    # A trailing comment after a keyword is fine.
    parse_horcm("HORCM_INSTP   # partner instances\n")


# -- every error kind: message, file, line, column -------------------------------------------

LDEV_HEAD = "HORCM_LDEV\n"
LDEV_FORMS = "expected CU:LDEV in hex (e.g. 00:1A), a decimal number 0-65535, or hex 0x001A"
IP_FORMS = "expected IPv4 (192.0.2.1), IPv6 (2001:db8::1), localhost or a host name"
SERVICE_FORMS = (
    "expected a UDP port number 1-65535 or a service name from /etc/services such as "
    "horcm0 (lower-case letters, digits, '-')"
)
MU_SI = "a ShadowImage mirror unit is 0, 1 or 2 (leave the column out for MU#0)"


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        pytest.param(
            "HORCM_MON\nlocalhost horcm0 1000 3000\nHORCM_FOO\nx y\n",
            3,
            1,
            "unknown section keyword 'HORCM_FOO': expected one of HORCM_MON, HORCM_CMD, "
            "HORCM_DEV, HORCM_LDEV, HORCM_LDEVG, HORCM_INST, HORCM_INSTP",
            id="unknown-keyword",
        ),
        pytest.param(
            "# header\n  oradb oradev1 1 00:1A\nHORCM_LDEV\n",
            2,
            3,
            "data line before any section keyword: start the section with a line holding only "
            "its keyword (e.g. HORCM_LDEV) above 'oradb'",
            id="data-before-section",
        ),
        pytest.param(
            LDEV_HEAD + "g d 412345\n",
            2,
            11,
            "HORCM_LDEV line has 3 column(s), expected 4-5 "
            "(dev_group dev_name Serial# CU:LDEV(LDEV#) [MU#]): CU:LDEV(LDEV#) is missing",
            id="ldev-too-few",
        ),
        pytest.param(
            LDEV_HEAD + "g d 412345 00:1A 0 extra # c\n",
            2,
            20,
            "HORCM_LDEV line has 6 columns, expected at most 5 "
            "(dev_group dev_name Serial# CU:LDEV(LDEV#) [MU#]): 'extra' is extra "
            "(start a comment with '#')",
            id="ldev-too-many",
        ),
        pytest.param(
            "HORCM_DEV\ng d CL1-A 0\n",
            2,
            12,
            "HORCM_DEV line has 4 column(s), expected 5-6 "
            "(dev_group dev_name port# TargetID LU# [MU#]): LU# is missing",
            id="dev-too-few",
        ),
        pytest.param(
            "HORCM_MON\nlocalhost horcm0 1000\n",
            2,
            22,
            "HORCM_MON line has 3 column(s), expected 4 "
            "(ip_address service poll(10ms) timeout(10ms)): timeout(10ms) is missing",
            id="mon-too-few",
        ),
        pytest.param(
            "HORCM_INSTP\ng h s 1 2\n",
            2,
            9,
            "HORCM_INSTP line has 5 columns, expected at most 4 "
            "(dev_group ip_address service [pathID]): '2' is extra (start a comment with '#')",
            id="instp-too-many",
        ),
        pytest.param(
            "HORCM_DEV\ng d CL1-A 0 1\nHORCM_LDEV\ng  d 1 1\n",
            4,
            4,
            "dev_name 'd' is defined twice in group 'g' (first at line 2); "
            "within a dev_group each dev_name names one volume",
            id="duplicate-dev-name-dev-and-ldev",
        ),
        pytest.param(
            LDEV_HEAD + "g d 1 1\ng d 1 2\n",
            3,
            3,
            "dev_name 'd' is defined twice in group 'g' (first at line 2); "
            "within a dev_group each dev_name names one volume",
            id="duplicate-dev-name-ldev",
        ),
        pytest.param(
            LDEV_HEAD + "g d 1 1A\n",
            2,
            7,
            f"bad LDEV '1A': {LDEV_FORMS} (at most 0xFFFF)",
            id="ldev-hex-without-prefix",
        ),
        pytest.param(
            LDEV_HEAD + "g d 1 0x10000\n",
            2,
            7,
            f"bad LDEV '0x10000': {LDEV_FORMS} (at most 0xFFFF)",
            id="ldev-too-big-hex",
        ),
        pytest.param(
            LDEV_HEAD + "g d 1 65536\n",
            2,
            7,
            f"bad LDEV '65536': {LDEV_FORMS} (at most 0xFFFF)",
            id="ldev-too-big-decimal",
        ),
        pytest.param(
            LDEV_HEAD + "g d 1 100:01\n",
            2,
            7,
            f"bad LDEV '100:01': {LDEV_FORMS} (at most 0xFFFF)",
            id="ldev-cu-too-big",
        ),
        pytest.param(
            LDEV_HEAD + "g d 1 -5\n",
            2,
            7,
            f"bad LDEV '-5': {LDEV_FORMS} (at most 0xFFFF)",
            id="ldev-negative",
        ),
        pytest.param(
            LDEV_HEAD + "g d 1 1 3\n", 2, 9, f"bad MU# '3': {MU_SI}", id="mu-out-of-range"
        ),
        pytest.param(
            "HORCM_DEV\ng d CL1-A 0 1 -1\n", 2, 15, f"bad MU# '-1': {MU_SI}", id="dev-mu-negative"
        ),
        pytest.param(
            LDEV_HEAD + "g d 1 1 h1\n",
            2,
            9,
            "MU# 'h1' is a TrueCopy/Universal Replicator mirror ID; "
            "blockemu pairs are ShadowImage pairs, whose MU# is 0, 1 or 2",
            id="mu-ur-mirror-id",
        ),
        pytest.param(
            "HORCM_MON\nlocalhost 0 1000 3000\n",
            2,
            11,
            f"bad service '0': {SERVICE_FORMS}",
            id="service-zero",
        ),
        pytest.param(
            "HORCM_MON\nlocalhost 65536 1000 3000\n",
            2,
            11,
            f"bad service '65536': {SERVICE_FORMS}",
            id="service-too-big",
        ),
        pytest.param(
            LDEV_HEAD + "g d 1 1\nHORCM_INST\ng localhost Horcm_1\n",
            4,
            13,
            f"bad service 'Horcm_1': {SERVICE_FORMS}",
            id="service-bad-name",
        ),
        pytest.param(
            "HORCM_MON\n300.1.2.3 horcm0 1000 3000\n",
            2,
            1,
            f"bad IP address or host name '300.1.2.3': {IP_FORMS}, "
            "or NONE/NONE6 to listen on every address",
            id="ip-bad-ipv4",
        ),
        pytest.param(
            LDEV_HEAD + "g d 1 1\nHORCM_INST\ng bad_host! horcm1\n",
            4,
            3,
            f"bad IP address or host name 'bad_host!': {IP_FORMS}",
            id="ip-bad-host",
        ),
        pytest.param(
            LDEV_HEAD + "g d 1 1\nHORCM_INST\ng NONE horcm1\n",
            4,
            3,
            "NONE (listen on every address) is only meaningful in HORCM_MON; "
            "here give the partner instance's IP address or host name",
            id="ip-none-in-inst",
        ),
        pytest.param(
            LDEV_HEAD + "oradb d 1 1\nHORCM_INST\n  oradbx localhost horcm1\n",
            4,
            3,
            "HORCM_INST names group 'oradbx', which no HORCM_DEV or HORCM_LDEV line defines; "
            "did you mean 'oradb'?",
            id="inst-group-undefined",
        ),
        pytest.param(
            "HORCM_INSTP\nzzz localhost horcm1 1\n",
            2,
            1,
            "HORCM_INSTP names group 'zzz', which no HORCM_DEV or HORCM_LDEV line defines",
            id="instp-group-undefined",
        ),
        pytest.param(
            "HORCM_MON\nlocalhost horcm0 1000 3000\nNONE horcm0 1000 3000\n",
            3,
            1,
            "second HORCM_MON line (the first is at line 2): "
            "an instance listens on one address and service",
            id="mon-twice",
        ),
        pytest.param(
            "HORCM_MON\nlocalhost horcm0 0 3000\n",
            2,
            18,
            "bad poll(10ms) '0': give the poll interval in 10 ms units (e.g. 1000) "
            "or -1 to turn monitoring off",
            id="mon-poll-zero",
        ),
        pytest.param(
            "HORCM_MON\nlocalhost horcm0 1000 0\n",
            2,
            23,
            "bad timeout(10ms) '0': expected a decimal number 1-2147483647",
            id="mon-timeout-zero",
        ),
        pytest.param(
            "HORCM_DEV\ng d PORT1 0 1\n",
            2,
            5,
            "bad port# 'PORT1': expected CLn-X, optionally with a host group number "
            "(e.g. CL1-A, CL2-B-1)",
            id="dev-bad-port",
        ),
        pytest.param(
            "HORCM_DEV\ng d CL1-A x 1\n",
            2,
            11,
            "bad TargetID 'x': expected a decimal number 0-65535",
            id="dev-bad-target-id",
        ),
        pytest.param(
            LDEV_HEAD + "g d 0 1\n", 2, 5, "bad Serial# '0': expected a decimal number 1-4294967295"
        ),
        pytest.param(
            LDEV_HEAD + "g d 1 1\nHORCM_INSTP\ng localhost horcm1 256\n",
            4,
            20,
            "bad pathID '256': expected a decimal number 0-255",
            id="instp-bad-path-id",
        ),
        pytest.param(
            LDEV_HEAD + "g " + "n" * 32 + " 1 1\n",
            2,
            3,
            "dev_name '" + "n" * 32 + "' is 32 characters long; CCI allows at most 31",
            id="name-too-long",
        ),
        pytest.param(
            LDEV_HEAD + "gr\u00fcn d 1 1\n",
            2,
            1,
            "bad dev_group 'gr\u00fcn': use printable ASCII characters without spaces",
            id="name-not-ascii",
        ),
    ],
)
def test_error_kinds(text: str, line: int, col: int, message: str) -> None:
    assert only_problem(text, "/etc/horcm7.conf") == ("/etc/horcm7.conf", line, col, message)


def test_horcm_error_is_a_format_error() -> None:
    with pytest.raises(FormatError):
        parse_horcm("HORCM_FOO\n")


def test_all_problems_reported_at_once_in_line_order() -> None:
    text = (
        "stray line\n"  # 1: before any section
        "HORCM_MON\n"
        "999.1.1.1 horcm0 1000 3000\n"  # 3: bad IP
        "HORCM_LDEV\n"
        "g d1 412345 0x1FFFF 0\n"  # 5: bad LDEV
        "g d2 412345 00:02 5\n"  # 6: bad MU#
        "g d1 412345 00:03\n"  # 7: duplicate dev_name
        "g d4 412345\n"  # 8: too few columns
        "HORCM_BAR\n"  # 9: unknown keyword; its lines are skipped
        "anything at all here\n"
        "HORCM_INST\n"
        "nogroup localhost horcm1\n"  # 12: undefined group
        "g localhost 99999\n"  # 13: bad service
    )
    problems = problems_of(text, "x.conf")
    located = [(int(m["line"]), int(m["col"])) for m in map(PROBLEM_RE.match, problems) if m]
    assert located == [(1, 1), (3, 1), (5, 13), (6, 19), (7, 3), (8, 12), (9, 1), (12, 1), (13, 13)]
    assert all(p.startswith("x.conf:") for p in problems)


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "horcm9.conf"
    with pytest.raises(HorcmError) as info:
        load_horcm(path)
    assert info.value.problems == [
        f"{path}: cannot read the HORCM file (No such file or directory): check the path"
    ]


def test_load_undecodable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "horcm0.conf"
    path.write_bytes(b"# caf\xe9 comment in latin-1 is fine\nHORCM_LDEV\ng d\xff 1 1\n")
    with pytest.raises(HorcmError) as info:
        load_horcm(path)
    assert info.value.problems == [
        f"{path}:3:3: bad dev_name 'd\ufffd': use printable ASCII characters without spaces"
    ]


# -- matching the two instance files ---------------------------------------------------------

P_SIDE = """\
HORCM_LDEV
oradb  dev1  412345  00:10  0
oradb  dev2  412345  00:11  0
"""
S_SIDE = """\
HORCM_LDEV
oradb  dev1  412345  00:20  0
oradb  dev2  412345  00:21
"""


def match_problems(local: str, remote: str) -> list[str]:
    with pytest.raises(HorcmError) as info:
        match_pairs(parse_horcm(local, path="p.conf"), parse_horcm(remote, path="s.conf"))
    return info.value.problems


def test_match_simple() -> None:
    pairs = match_pairs(parse_horcm(P_SIDE), parse_horcm(S_SIDE))
    assert pairs == [
        PairDef("oradb", "dev1", 0x10, 0x20, 0, 412345),
        PairDef("oradb", "dev2", 0x11, 0x21, 0, 412345),
    ]


def test_match_group_without_partner_on_either_side() -> None:
    local = P_SIDE + "extra  e1  412345  00:30  0\n"
    remote = S_SIDE + "HORCM_LDEV\nlonely  l1  412345  00:40\n"
    assert match_problems(local, remote) == [
        "p.conf:4:1: group 'extra' (P-VOL side) has no partner group in s.conf (S-VOL side): "
        "define the same dev_group and dev_names there",
        "s.conf:5:1: group 'lonely' (S-VOL side) has no partner group in p.conf (P-VOL side): "
        "define the same dev_group and dev_names there",
    ]


def test_match_dev_name_missing_on_either_side() -> None:
    local = P_SIDE + "oradb  dev3  412345  00:12  0\n"
    remote = S_SIDE + "oradb  dev9  412345  00:29  0\n"
    assert match_problems(local, remote) == [
        "p.conf:4:1: dev_name 'dev3' of group 'oradb' (P-VOL side) is missing from s.conf "
        "(the group is at s.conf:2): add it there or remove it here",
        "s.conf:4:1: dev_name 'dev9' of group 'oradb' (S-VOL side) is missing from p.conf "
        "(the group is at p.conf:2): add it there or remove it here",
    ]


def test_match_mu_mismatch() -> None:
    remote = S_SIDE.replace("00:20  0", "00:20  1")
    assert match_problems(P_SIDE, remote) == [
        "p.conf:2:1: 'oradb'/'dev1': MU#0 here but MU#1 at s.conf:2:1: "
        "both instance files must give the same MU#"
    ]


def test_match_horcm_dev_cannot_be_resolved() -> None:
    local = "HORCM_DEV\noradb dev1 CL1-A 0 1 0\nHORCM_LDEV\noradb dev2 412345 00:11 0\n"
    remote = "HORCM_DEV\noradb dev1 CL1-A 0 2 0\noradb dev2 CL1-A 0 3 0\n"
    fix = (
        "HORCM_DEV needs a port/LU to LDEV map; "
        "use HORCM_LDEV (dev_group dev_name Serial# CU:LDEV MU#)"
    )
    assert match_problems(local, remote) == [
        f"p.conf:2:1: 'oradb'/'dev1': {fix}",
        f"s.conf:2:1: 'oradb'/'dev1': {fix}",
        f"s.conf:3:1: 'oradb'/'dev2': {fix}",
    ]


def test_match_serial_mismatch_self_pair_and_reuse() -> None:
    local = (
        "HORCM_LDEV\n"
        "g a 412345 00:10\n"
        "g b 412345 00:11\n"
        "g c 412345 00:12\n"
        "g d 412345 00:13 1\n"
        "g e 412345 00:13 1\n"
    )
    remote = (
        "HORCM_LDEV\n"
        "g a 999999 00:20\n"
        "g b 412345 00:11\n"
        "g c 412345 00:22\n"
        "g d 412345 00:22 1\n"
        "g e 412345 00:24 1\n"
    )
    assert match_problems(local, remote) == [
        "p.conf:2:1: 'g'/'a': array serial 412345 here but 999999 at s.conf:2:1: "
        "a ShadowImage pair lives inside one array",
        "p.conf:3:1: 'g'/'b': P-VOL and S-VOL are both LDEV 00:11 (see s.conf:3:1): "
        "a volume cannot be paired with itself",
        "s.conf:5:1: S-VOL LDEV 00:22 of 'g'/'d' is already the S-VOL of 'g'/'c' (line 4): "
        "an S-VOL belongs to one pair",
        "p.conf:6:1: P-VOL LDEV 00:13 MU#1 of 'g'/'e' is already used by 'g'/'d' (line 5): "
        "give each pair of a P-VOL its own MU# (0-2)",
    ]


def test_match_ldevg_is_reported() -> None:
    local = P_SIDE + "HORCM_LDEVG\ncg dg 412345\n"
    assert match_problems(local, S_SIDE) == [
        "p.conf:5:1: HORCM_LDEVG copy group 'cg' is defined inside the array (raidcom), which "
        "blockemu cannot see; list its volumes in HORCM_LDEV instead"
    ]


def test_match_reports_everything_at_once() -> None:
    local = P_SIDE + "oradb dev3 412345 00:12 2\nsolo s 412345 00:50\n"
    remote = S_SIDE.replace("00:20  0", "00:20  2") + "oradb dev3 412345 00:22 0\n"
    problems = match_problems(local, remote)
    assert len(problems) == 3
    assert [p.split(":")[0] for p in problems] == ["p.conf", "p.conf", "p.conf"]
    assert "group 'solo'" in problems[0]
    assert "MU#0 here but MU#2" in problems[1]
    assert "MU#2 here but MU#0" in problems[2]


# -- render / parse round trip ---------------------------------------------------------------

NAME_CHARS = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")
names = st.text(NAME_CHARS, min_size=1, max_size=31).filter(
    lambda s: not s.upper().startswith("HORCM_")
)
mus = st.none() | st.integers(0, 2)
hosts = st.sampled_from(["localhost", "127.0.0.1", "::1", "node-2.example.com", "192.0.2.7"])
services = st.sampled_from(["horcm0", "horcm1", "11000", "1", "65535", "my-svc"])
ldev_entries = st.builds(
    LdevEntry,
    group=names,
    name=names,
    serial=st.integers(1, 0xFFFFFFFF),
    ldev=st.integers(0, 0xFFFF),
    mu=mus,
    line=st.just(0),
)
dev_entries = st.builds(
    DevEntry,
    group=names,
    name=names,
    port=st.sampled_from(["CL1-A", "CL2-B", "CL1-A-1", "CLG-AB-12"]),
    target_id=st.integers(0, 65535),
    lun=st.integers(0, 65535),
    mu=mus,
    line=st.just(0),
)
cmd_devices = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"),
    min_size=1,
    max_size=40,
).filter(lambda s: not s.upper().startswith("HORCM_"))


@st.composite
def configs(draw: st.DrawFn) -> HorcmConfig:
    mon = draw(
        st.none()
        | st.builds(
            HorcmMon,
            ip_address=hosts | st.sampled_from(["NONE", "NONE6"]),
            service=services,
            poll_ms10=st.none() | st.integers(1, 2**31 - 1),
            timeout_ms10=st.integers(1, 2**31 - 1),
        )
    )
    entries = draw(st.lists(dev_entries | ldev_entries, max_size=8))
    seen: set[tuple[str, str]] = set()
    unique = []
    for e in entries:
        if (e.group, e.name) not in seen:
            seen.add((e.group, e.name))
            unique.append(e)
    ldevgs = draw(
        st.lists(
            st.builds(
                LdevgEntry,
                copy_group=names,
                device_group=names,
                serial=st.integers(1, 0xFFFFFFFF),
                line=st.just(0),
            ),
            max_size=2,
        )
    )
    groups = sorted({e.group for e in unique} | {g.copy_group for g in ldevgs})
    insts: list[InstEntry] = []
    if groups:
        insts = draw(
            st.lists(
                st.builds(
                    InstEntry,
                    group=st.sampled_from(groups),
                    ip_address=hosts,
                    service=services,
                    path_id=st.none() | st.integers(0, 255),
                    line=st.just(0),
                    with_path=st.booleans(),
                ).map(lambda i: i if i.with_path else dataclasses.replace(i, path_id=None)),
                max_size=5,
            )
        )
    return HorcmConfig(
        path="gen.conf",
        mon=mon,
        cmd=tuple(draw(st.lists(cmd_devices, max_size=3))),
        devs=tuple(e for e in unique if isinstance(e, DevEntry)),
        ldevs=tuple(e for e in unique if isinstance(e, LdevEntry)),
        insts=tuple(insts),
        ldevgs=tuple(ldevgs),
    )


@settings(max_examples=300, deadline=None)
@given(configs())
def test_render_parse_round_trip(config: HorcmConfig) -> None:
    text = render_horcm(config)
    again = parse_horcm(text, path=config.path)
    assert again == config
    assert render_horcm(again) == text  # canonical: a fixed point


def test_render_example() -> None:
    conf = parse_horcm(
        "HORCM_MON\nlocalhost horcm0 1000 3000\nHORCM_LDEV\noradb oradev1 412345 26 0\n"
        "oradb oradev2 412345 0x1B\nHORCM_INST\noradb localhost horcm1\n"
    )
    assert render_horcm(conf) == (
        "# HORCM configuration (canonical form written by blockemu)\n"
        "\n"
        "HORCM_MON\n"
        "#ip_address  service  poll(10ms)  timeout(10ms)\n"
        "localhost    horcm0   1000        3000\n"
        "\n"
        "HORCM_LDEV\n"
        "#dev_group  dev_name  Serial#  CU:LDEV(LDEV#)  MU#\n"
        "oradb       oradev1   412345   00:1A           0\n"
        "oradb       oradev2   412345   00:1B\n"
        "\n"
        "HORCM_INST\n"
        "#dev_group  ip_address  service\n"
        "oradb       localhost   horcm1\n"
    )


# -- robustness ------------------------------------------------------------------------------


def assert_only_horcm_error(text: str) -> None:
    try:
        parse_horcm(text)
    except HorcmError as exc:
        assert exc.problems
        for problem in exc.problems:
            m = PROBLEM_RE.match(problem)
            assert m and m["file"] == "<horcm>" and int(m["line"]) >= 1 and int(m["col"]) >= 1


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_random_text_raises_only_horcm_error(text: str) -> None:
    assert_only_horcm_error(text)


words = st.sampled_from(
    [*KEYWORDS, "HORCM_X", "#", "# c", "g", "d", "localhost", "NONE", "::1", "horcm0", "0", "1",
     "2", "3", "h1", "-1", "00:1A", "0x1FFFF", "99999", "CL1-A", "1" * 5000, "\t", "  ", "\r",
     "\u00e9", "a#b"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(words, max_size=7).map(" ".join), max_size=15).map("\n".join))
def test_structured_random_text_raises_only_horcm_error(text: str) -> None:
    assert_only_horcm_error(text)
