"""formats.node_config: the nodeagent node config (TOML), checked all at once."""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formats import FormatError
from formats.horcm import PairDef
from formats.node_config import (
    ArrayConfig,
    ConfigError,
    HookConfig,
    NodeConfig,
    PeerConfig,
    ReplicaFiles,
    load_node_config,
    parse_node_config,
)

DATA = Path(__file__).parent / "data"

GOOD = """\
# node1 of the two-node lab
id = "node1"
priority = 100
listen = "tcp:0.0.0.0:7410"
cluster_key_file = "keys/cluster.key"
host_view = "/mnt/blockemu/node1"
buffer_file = "run/node1.buffer"
state_file = "run/node1.state"
event_log = "run/node1.events.jsonl"
reflection = "lazy"

[heartbeat]
interval = 0.25
misses = 5

[array]
address = "unix:/run/blockemu.sock"
host_id = "node1"
key_file = "keys/array.key"

[[peers]]
id = "node2"
address = "tcp:192.0.2.2:7410"

[[peers]]
id = "node3"
address = "tcp:[2001:db8::3]:7410"

[[replicas]]
local = "horcm0.conf"
remote = "horcm1.conf"

[hooks]
start = "hooks/app-start --fast"
stop = "systemctl stop app"
monitor = "true"
"""

PAIRS = (
    PairDef("oradb", "oradev1", 0x1A, 0x2A, 0, 412345),
    PairDef("oradb", "oradev2", 27, 43, 0, 412345),
    PairDef("oradb", "oradev3", 0x1C, 0x2C, 0, 412345),
    PairDef("backup", "bkdev1", 0x100, 0x200, 1, 412345),
)

PROBLEM_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<key>\S+): (?P<message>.+)$")


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    """A node directory holding everything GOOD refers to."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "cluster.key").write_text("0123456789abcdef\n")
    (tmp_path / "keys" / "array.key").write_text("fedcba9876543210\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "hooks").mkdir()
    start = tmp_path / "hooks" / "app-start"
    start.write_text("#!/bin/sh\nexit 0\n")
    start.chmod(0o755)
    for name in ("horcm0.conf", "horcm1.conf"):
        shutil.copy(DATA / name, tmp_path / name)
    return tmp_path


def write(lab: Path, text: str, name: str = "node1.toml") -> Path:
    path = lab / name
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def line_of(text: str, fragment: str) -> int:
    """The 1-based line of the only line of *text* containing *fragment*."""
    hits = [i for i, line in enumerate(text.split("\n"), start=1) if fragment in line]
    assert len(hits) == 1, (fragment, hits)
    return hits[0]


# -- good configs ----------------------------------------------------------------------------


def test_good_config_loads_with_resolved_paths(lab: Path) -> None:
    config = load_node_config(write(lab, GOOD))
    assert config == NodeConfig(
        path=lab / "node1.toml",
        id="node1",
        priority=100,
        listen="tcp:0.0.0.0:7410",
        peers=(
            PeerConfig("node2", "tcp:192.0.2.2:7410"),
            PeerConfig("node3", "tcp:[2001:db8::3]:7410"),
        ),
        cluster_key_file=lab / "keys" / "cluster.key",
        array=ArrayConfig("unix:/run/blockemu.sock", "node1", lab / "keys" / "array.key"),
        host_view=Path("/mnt/blockemu/node1"),
        buffer_file=lab / "run" / "node1.buffer",
        replicas=(ReplicaFiles(lab / "horcm0.conf", lab / "horcm1.conf", PAIRS),),
        state_file=lab / "run" / "node1.state",
        heartbeat_interval=0.25,
        heartbeat_misses=5,
        hooks=HookConfig(
            commands={
                "start": "hooks/app-start --fast",
                "stop": "systemctl stop app",
                "monitor": "true",
            },
            cwd=lab,
        ),
        event_log=lab / "run" / "node1.events.jsonl",
        reflection="lazy",
    )
    assert config.hooks.command("start") == "hooks/app-start --fast"
    assert config.hooks.command("svol_usable") is None


def test_minimal_config_takes_defaults(lab: Path) -> None:
    text = """\
id = "solo"
priority = 0
listen = "tcp:127.0.0.1:7410"
cluster_key_file = "keys/cluster.key"
host_view = "view"
buffer_file = "buffer"
state_file = "state"
array = { address = "tcp:127.0.0.1:7400", host_id = "solo" }
"""
    config = load_node_config(write(lab, text))
    assert config.peers == ()
    assert config.replicas == ()
    assert config.heartbeat_interval == 0.5
    assert config.heartbeat_misses == 3
    assert config.reflection == "eager"
    assert config.event_log is None
    assert config.array == ArrayConfig("tcp:127.0.0.1:7400", "solo", None)
    assert config.hooks.command("start") is None
    assert config.host_view == lab / "view"


def test_relative_config_path_gives_absolute_paths(
    lab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(lab, GOOD)
    monkeypatch.chdir(lab / "run")
    config = load_node_config(Path("..") / "node1.toml")
    assert config.state_file.is_absolute()
    assert os.path.samefile(config.state_file.parent, lab / "run")
    assert os.path.samefile(config.replicas[0].local, lab / "horcm0.conf")


def test_hook_directory(lab: Path) -> None:
    hooks = lab / "hooks.d"
    hooks.mkdir()
    (hooks / "start").write_text("#!/bin/sh\n")
    (hooks / "start").chmod(0o755)
    (hooks / "stop").write_text("#!/bin/sh\n")  # not executable: not a hook
    text = GOOD.split("[hooks]")[0] + '[hooks]\ndirectory = "hooks.d"\n'
    config = load_node_config(write(lab, text))
    assert config.hooks == HookConfig(directory=hooks, cwd=lab)
    assert config.hooks.command("start") == str(hooks / "start")
    assert config.hooks.command("stop") is None
    assert config.hooks.command("monitor") is None


def test_reflection_off_and_dotted_keys(lab: Path) -> None:
    text = GOOD.replace('reflection = "lazy"', 'reflection = "off"\nheartbeat.misses = 1')
    text = text.replace("[heartbeat]\ninterval = 0.25\nmisses = 5\n", "")
    config = load_node_config(write(lab, text))
    assert config.reflection == "off"
    assert config.heartbeat_misses == 1


# -- every error kind: message and line ------------------------------------------------------

CASES = [
    # (id, old text, new text, marker of the reported line, key path, message)
    (
        "missing-required",
        "priority = 100\n",
        "",
        None,
        "priority",
        "missing: add priority = ... (a required key)",
    ),
    (
        "unknown-top-key",
        "priority = 100\n",
        "priority = 100\nprioritty = 5\n",
        "prioritty",
        "prioritty",
        "unknown key; did you mean 'priority'?",
    ),
    (
        "unknown-table-key",
        "misses = 5",
        "misses = 5\nintervall = 1",
        "intervall",
        "heartbeat.intervall",
        "unknown key; did you mean 'interval'?",
    ),
    (
        "unknown-key-no-match",
        "misses = 5",
        "misses = 5\nzzz = 1",
        "zzz",
        "heartbeat.zzz",
        "unknown key; known keys: interval, misses",
    ),
    (
        "wrong-type",
        "priority = 100",
        'priority = "100"',
        "priority",
        "priority",
        "expected an integer 0-1000000, got a string ('100')",
    ),
    (
        "priority-range",
        "priority = 100",
        "priority = -1",
        "priority",
        "priority",
        "-1 is out of range: use 0-1000000",
    ),
    (
        "bad-id",
        'id = "node1"',
        'id = "node 1"',
        "id =",
        "id",
        "bad node id 'node 1': use 1-32 letters, digits, '_', '.', '-', "
        "starting with a letter or digit",
    ),
    (
        "bad-listen",
        'listen = "tcp:0.0.0.0:7410"',
        'listen = "unix:/run/node.sock"',
        "listen",
        "listen",
        "bad address 'unix:/run/node.sock': use tcp:HOST:PORT (e.g. tcp:192.0.2.1:7410)",
    ),
    (
        "bad-port",
        'listen = "tcp:0.0.0.0:7410"',
        'listen = "tcp:0.0.0.0:0"',
        "listen",
        "listen",
        "bad address 'tcp:0.0.0.0:0': use tcp:HOST:PORT (e.g. tcp:192.0.2.1:7410)",
    ),
    (
        "bad-array-address",
        'address = "unix:/run/blockemu.sock"',
        'address = "http://array:80"',
        "http://",
        "array.address",
        "bad address 'http://array:80': use unix:/path/to/socket or tcp:HOST:PORT "
        "(e.g. tcp:192.0.2.1:7410)",
    ),
    (
        "array-host-id-too-long",
        'host_id = "node1"',
        f'host_id = "{"h" * 65}"',
        "host_id =",
        "array.host_id",
        f"bad host id '{'h' * 65}': use 1-64 letters, digits, '_', '.', '-', "
        "starting with a letter or digit",
    ),
    (
        "missing-cluster-key",
        'cluster_key_file = "keys/cluster.key"',
        'cluster_key_file = "keys/nope.key"',
        "cluster_key_file",
        "cluster_key_file",
        "cluster key file {lab}/keys/nope.key does not exist: create it "
        "(e.g. `head -c 32 /dev/urandom | base64 > nope.key; chmod 600 nope.key`) "
        "or fix the path",
    ),
    (
        "cluster-key-is-dir",
        'cluster_key_file = "keys/cluster.key"',
        'cluster_key_file = "keys"',
        "cluster_key_file",
        "cluster_key_file",
        "cluster key file {lab}/keys is not a regular file",
    ),
    (
        "missing-array-key",
        'key_file = "keys/array.key"',
        'key_file = "/nonexistent/array.key"',
        'key_file = "/non',
        "array.key_file",
        "array key file /nonexistent/array.key does not exist: create it "
        "(e.g. `head -c 32 /dev/urandom | base64 > array.key; chmod 600 array.key`) "
        "or fix the path",
    ),
    (
        "duplicate-peer-id",
        'id = "node3"',
        'id = "node2"',
        'id = "node2"\naddress = "tcp:[',
        "peers[1].id",
        "duplicate peer id 'node2' (also peers[0]): each node appears once",
    ),
    (
        "peer-is-self",
        'id = "node2"',
        'id = "node1"',
        'id = "node1"\naddress = "tcp:192',
        "peers[0].id",
        "peer 'node1' has this node's own id: list only the other nodes",
    ),
    (
        "peer-address-is-own",
        'address = "tcp:192.0.2.2:7410"',
        'address = "tcp:0.0.0.0:7410"',
        'address = "tcp:0.0.0.0:7410"',
        "peers[0].address",
        "tcp:0.0.0.0:7410 is this node's own listen address: give the peer's address",
    ),
    (
        "peer-missing-address",
        'address = "tcp:192.0.2.2:7410"\n',
        "",
        "[[peers]]",
        "peers[0].address",
        "missing: add address = ... (a required key)",
    ),
    (
        "interval-too-small",
        "interval = 0.25",
        "interval = 0.01",
        "interval",
        "heartbeat.interval",
        "0.01 s is out of range: use 0.05-10.0 seconds (e.g. 0.5)",
    ),
    (
        "interval-too-big",
        "interval = 0.25",
        "interval = 11",
        "interval",
        "heartbeat.interval",
        "11 s is out of range: use 0.05-10.0 seconds (e.g. 0.5)",
    ),
    (
        "interval-type",
        "interval = 0.25",
        'interval = "fast"',
        "interval",
        "heartbeat.interval",
        "expected seconds (0.05-10.0), got a string ('fast')",
    ),
    (
        "misses-zero",
        "misses = 5",
        "misses = 0",
        "misses",
        "heartbeat.misses",
        "0 is out of range: use 1-100",
    ),
    (
        "misses-too-many",
        "misses = 5",
        "misses = 101",
        "misses",
        "heartbeat.misses",
        "101 is out of range: use 1-100",
    ),
    (
        "misses-bool",
        "misses = 5",
        "misses = true",
        "misses",
        "heartbeat.misses",
        "expected an integer 1-100, got a boolean (True)",
    ),
    (
        "reflection-mode",
        'reflection = "lazy"',
        'reflection = "eagr"',
        "reflection",
        "reflection",
        "unknown mode 'eagr': use eager (refresh standbys during the split), lazy (refresh at "
        "takeover) or off (no S-VOL consistency protocol); did you mean 'eager'?",
    ),
    (
        "buffer-dir-missing",
        'buffer_file = "run/node1.buffer"',
        'buffer_file = "nodir/node1.buffer"',
        "buffer_file",
        "buffer_file",
        "directory {lab}/nodir of the buffer file does not exist: create it first",
    ),
    (
        "state-file-is-dir",
        'state_file = "run/node1.state"',
        'state_file = "run"',
        "state_file",
        "state_file",
        "state file {lab}/run is a directory: name a file inside it",
    ),
    (
        "state-same-as-buffer",
        'state_file = "run/node1.state"',
        'state_file = "run/../run/node1.buffer"',
        "state_file",
        "state_file",
        "same file as buffer_file ({lab}/run/node1.buffer): give each its own file",
    ),
    (
        "host-view-is-file",
        'host_view = "/mnt/blockemu/node1"',
        'host_view = "keys/cluster.key"',
        "host_view",
        "host_view",
        "{lab}/keys/cluster.key is not a directory: a mountpoint must be one",
    ),
    (
        "hooks-both-forms",
        "[hooks]\n",
        '[hooks]\ndirectory = "hooks"\n',
        "directory",
        "hooks.directory",
        "give either a hook directory or hook commands (start, stop, monitor), not both",
    ),
    (
        "hook-unknown-name",
        'monitor = "true"',
        'monitr = "true"',
        "monitr",
        "hooks.monitr",
        "unknown key; did you mean 'monitor'?",
    ),
    (
        "hook-program-missing",
        'start = "hooks/app-start --fast"',
        'start = "hooks/app-begin --fast"',
        "start =",
        "hooks.start",
        "hook program {lab}/hooks/app-begin does not exist",
    ),
    (
        "hook-program-not-executable",
        'start = "hooks/app-start --fast"',
        'start = "./horcm0.conf"',
        "start =",
        "hooks.start",
        "hook program {lab}/horcm0.conf is not executable: chmod +x it",
    ),
    (
        "hook-bad-quotes",
        'stop = "systemctl stop app"',
        'stop = "systemctl stop \'app"',
        "stop =",
        "hooks.stop",
        "cannot split the command line (No closing quotation): check the quotes",
    ),
    (
        "hook-empty",
        'stop = "systemctl stop app"',
        'stop = "  "',
        "stop =",
        "hooks.stop",
        "must not be empty",
    ),
    (
        "replica-file-missing",
        'remote = "horcm1.conf"',
        'remote = "horcm9.conf"',
        "remote",
        "replicas[0].remote",
        "HORCM file {lab}/horcm9.conf does not exist: create it or fix the path",
    ),
    (
        "replica-same-file",
        'remote = "horcm1.conf"',
        'remote = "./horcm0.conf"',
        "remote",
        "replicas[0].remote",
        "same file as local: the S-VOL side needs its own instance file",
    ),
    (
        "replica-missing-side",
        'remote = "horcm1.conf"\n',
        "",
        "[[replicas]]",
        "replicas[0].remote",
        "missing: add remote = ... (a required key)",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "marker", "key", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_error_kinds(
    lab: Path, old: str, new: str, marker: str | None, key: str, message: str
) -> None:
    """GOOD with one edit has exactly one problem, on the right line."""
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    path = write(lab, text)
    problems = problems_of(path)
    # The line where *marker* first appears (a missing top-level key is reported at line 1).
    line = 1 if marker is None else text[: text.index(marker)].count("\n") + 1
    expected = f"{path}:{line}: {key}: {message.format(lab=lab)}"
    assert problems == [expected]


def test_short_and_oversized_key_files(lab: Path) -> None:
    (lab / "keys" / "cluster.key").write_text("  short\n\n")
    (lab / "keys" / "array.key").write_bytes(b"k" * (64 * 1024 + 1))
    path = write(lab, GOOD)
    assert problems_of(path) == [
        f"{path}:5: cluster_key_file: cluster key file {lab}/keys/cluster.key holds 5 bytes "
        "(whitespace stripped); a key needs at least 16: write a longer random one "
        "(e.g. `head -c 32 /dev/urandom | base64 > cluster.key; chmod 600 cluster.key`)",
        f"{path}:19: array.key_file: array key file {lab}/keys/array.key is larger than 65536 "
        "bytes: not a key file",
    ]


def test_peers_must_be_an_array_of_tables(lab: Path) -> None:
    head, _, tail = GOOD.partition("[[peers]]")
    tail = tail[tail.index("[[replicas]]") :]
    text = head + tail.replace("[[replicas]]", "[[replicas]]", 1)
    text = text.replace('reflection = "lazy"', 'reflection = "lazy"\npeers = "node2"')
    path = write(lab, text)
    assert problems_of(path) == [
        f"{path}:{line_of(text, 'peers =')}: peers: "
        "expected an array of tables ([[peers]]), got a string ('node2')"
    ]


def test_inline_table_problem_points_at_its_line(lab: Path) -> None:
    head, _, rest = GOOD.partition("[array]\n")
    rest = rest.split("\n\n", 1)[1]
    text = (
        head.replace(
            'reflection = "lazy"\n',
            'reflection = "lazy"\narray = { address = "tcp:nohost", host_id = "node1" }\n',
        )
        + rest
    )
    path = write(lab, text)
    assert problems_of(path) == [
        f"{path}:{line_of(text, 'array =')}: array.address: bad address 'tcp:nohost': use "
        "unix:/path/to/socket or tcp:HOST:PORT (e.g. tcp:192.0.2.1:7410)"
    ]


def test_horcm_problems_are_included(lab: Path) -> None:
    (lab / "horcm1.conf").write_text(
        "HORCM_LDEV\noradb oradev1 412345 00:2A 0\noradb oradev2 412345 0x10000\n"
        "HORCM_INST\noradb localhost 0\n"
    )
    problems = problems_of(write(lab, GOOD))
    assert problems == [
        f"{lab}/horcm1.conf:3:22: bad LDEV '0x10000': expected CU:LDEV in hex (e.g. 00:1A), "
        "a decimal number 0-65535, or hex 0x001A (at most 0xFFFF)",
        f"{lab}/horcm1.conf:5:17: bad service '0': expected a UDP port number 1-65535 or a "
        "service name from /etc/services such as horcm0 (lower-case letters, digits, '-')",
    ]


def test_pairing_problems_are_included(lab: Path) -> None:
    (lab / "horcm1.conf").write_text(
        "HORCM_LDEV\noradb oradev1 412345 00:2A 0\noradb oradev2 412345 00:2B 0\n"
        "oradb oradev3 412345 00:2C 2\n"
    )
    problems = problems_of(write(lab, GOOD))
    assert problems == [
        f"{lab}/horcm0.conf:16:1: group 'backup' (P-VOL side) has no partner group in "
        f"{lab}/horcm1.conf (S-VOL side): define the same dev_group and dev_names there",
        f"{lab}/horcm0.conf:15:1: 'oradb'/'oradev3': MU#0 here but MU#2 at "
        f"{lab}/horcm1.conf:4:1: both instance files must give the same MU#",
    ]


def test_group_in_two_replica_definitions(lab: Path) -> None:
    shutil.copy(lab / "horcm0.conf", lab / "horcm2.conf")
    shutil.copy(lab / "horcm1.conf", lab / "horcm3.conf")
    text = GOOD.replace(
        "[hooks]", '[[replicas]]\nlocal = "horcm2.conf"\nremote = "horcm3.conf"\n\n[hooks]'
    )
    path = write(lab, text)
    line = line_of(text, 'local = "horcm2.conf"')
    assert problems_of(path) == [
        f"{path}:{line}: replicas[1].local: group 'oradb' is also defined by replicas[0]: "
        "define each group in one pair of files",
        f"{path}:{line}: replicas[1].local: group 'backup' is also defined by replicas[0]: "
        "define each group in one pair of files",
    ]


def test_all_problems_at_once_in_line_order(lab: Path) -> None:
    text = (
        GOOD.replace("priority = 100", "priorty = 100")
        .replace('listen = "tcp:0.0.0.0:7410"', 'listen = "tcp::7410"')
        .replace("misses = 5", "misses = 0")
        .replace('id = "node3"', 'id = "node2"')
        .replace('remote = "horcm1.conf"', 'remote = "missing.conf"')
        .replace('monitor = "true"', 'monitr = "true"')
    )
    (lab / "keys" / "array.key").unlink()
    path = write(lab, text)
    problems = problems_of(path)
    parsed = [PROBLEM_RE.match(p) for p in problems]
    assert all(parsed), problems
    summary = [(int(m["line"]), m["key"]) for m in parsed if m]
    assert summary == [
        (1, "priority"),
        (3, "priorty"),
        (4, "listen"),
        (14, "heartbeat.misses"),
        (19, "array.key_file"),
        (26, "peers[1].id"),
        (31, "replicas[0].remote"),
        (36, "hooks.monitr"),
    ]
    assert "did you mean 'priority'?" in problems[1]
    assert "did you mean 'monitor'?" in problems[-1]


def test_toml_syntax_error_names_its_line(lab: Path) -> None:
    text = GOOD.replace("misses = 5", "misses = = 5")
    path = write(lab, text)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(text, 'misses')}: (file): TOML syntax error: ")
    assert problem.endswith("; fix the syntax")


def test_unreadable_and_non_utf8_files(lab: Path) -> None:
    missing = lab / "nope.toml"
    assert problems_of(missing) == [
        f"{missing}: cannot read the node config (No such file or directory): check the path"
    ]
    bad = lab / "bad.toml"
    bad.write_bytes(b'id = "node1"\n# caf\xe9\n')
    assert problems_of(bad) == [f"{bad}:2: (file): not UTF-8 text: TOML files are UTF-8"]


def test_config_error_is_a_format_error(lab: Path) -> None:
    with pytest.raises(FormatError):
        load_node_config(write(lab, "id = 1\n"))


def test_dotted_key_problem_points_at_its_line(lab: Path) -> None:
    text = GOOD.replace("[heartbeat]\ninterval = 0.25\nmisses = 5\n", "").replace(
        'reflection = "lazy"', 'reflection = "lazy"\nheartbeat.misses = 0'
    )
    path = write(lab, text)
    assert problems_of(path) == [
        f"{path}:{line_of(text, 'heartbeat.misses')}: heartbeat.misses: 0 is out of range: "
        "use 1-100"
    ]


# -- robustness: any TOML document gives a NodeConfig or a ConfigError -----------------------

scalars = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.text(max_size=20)
    | st.sampled_from(["tcp:127.0.0.1:7410", "unix:/x", "keys/cluster.key", "horcm0.conf", "."])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["id", "address", "host_id", "local", "remote", "start", "x"]),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)
KNOWN = [
    "id",
    "priority",
    "listen",
    "peers",
    "cluster_key_file",
    "array",
    "host_view",
    "buffer_file",
    "replicas",
    "state_file",
    "heartbeat",
    "hooks",
    "event_log",
    "reflection",
    "bogus",
]


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's; TOML wants DEL escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KNOWN), values, max_size=10))
def test_any_toml_document_gives_config_or_config_error(document: dict[str, object]) -> None:
    text = "".join(f"{key} = {toml_value(value)}\n" for key, value in document.items())
    assert tomllib.loads(text) == document
    try:
        parse_node_config(text, path=DATA / "fuzz.toml")
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.startswith(str(DATA)), problem
