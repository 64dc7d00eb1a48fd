"""The nodeagent node config: one TOML file per node (read with stdlib tomllib).

Example (every key; paths may be relative to the config file's directory)::

    id = "node1"                      # this node's name in the cluster
    priority = 100                    # higher wins a partition
    listen = "tcp:0.0.0.0:7410"       # where peers reach this agent
    cluster_key_file = "cluster.key"  # shared secret of the cluster's messages
    host_view = "/mnt/blockemu/node1" # FUSE mountpoint of this host's volumes
    buffer_file = "node1.buffer"      # persisted disk-info buffer
    state_file = "node1.state"        # persisted replica state flag
    event_log = "node1.events.jsonl"  # optional
    reflection = "eager"              # eager (default) | lazy | off

    [heartbeat]                       # optional
    interval = 0.5                    # seconds, 0.05-10
    misses = 3                        # 1-100

    [array]
    address = "tcp:127.0.0.1:7400"    # or unix:/run/blockemu.sock
    host_id = "node1"                 # the host the array sees (reservations)
    key_file = "array.key"            # optional

    [[peers]]
    id = "node2"
    address = "tcp:192.0.2.2:7410"

    [[replicas]]                      # HORCM instance files: P-VOL side, S-VOL side
    local = "horcm0.conf"
    remote = "horcm1.conf"

    [hooks]                           # either a directory of executables named after the hooks
    directory = "hooks.d"             # or commands: start = "...", stop = "...", ...

:func:`load_node_config` checks everything at once, including the HORCM files
the replicas name, and raises :class:`ConfigError` with every problem, each as
``FILE:LINE: key.path: message and fix``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FormatError
from .horcm import HorcmConfig, HorcmError, PairDef, load_horcm, match_pairs

REFLECTION_MODES = ("eager", "lazy", "off")
HOOK_NAMES = ("start", "stop", "monitor", "role_change", "svol_unusable", "svol_usable")

HEARTBEAT_INTERVAL_DEFAULT = 0.5
HEARTBEAT_INTERVAL_RANGE = (0.05, 10.0)
HEARTBEAT_MISSES_DEFAULT = 3
HEARTBEAT_MISSES_RANGE = (1, 100)
PRIORITY_RANGE = (0, 1_000_000)
#: Key files: the same rules as the array's hosts config (bytes, whitespace stripped).
MIN_KEY_SIZE = 16
MAX_KEY_FILE_SIZE = 64 << 10

#: Node ids travel in the 32-byte sender field of every peer frame.
NODE_ID_MAX = 32
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class PeerConfig:
    id: str
    address: str  # "tcp:HOST:PORT"


@dataclass(frozen=True)
class ArrayConfig:
    address: str  # "tcp:HOST:PORT" or "unix:/path"
    host_id: str
    key_file: Path | None


@dataclass(frozen=True)
class ReplicaFiles:
    """The P-VOL-side (``local``) and S-VOL-side (``remote``) HORCM instance files.

    ``pairs`` are the pairs they define, already matched (see
    :func:`formats.horcm.match_pairs`).
    """

    local: Path
    remote: Path
    pairs: tuple[PairDef, ...] = ()


@dataclass(frozen=True)
class HookConfig:
    """Application hooks: a directory of executables named after the hooks, or commands.

    With ``directory`` set, hook ``start`` is ``directory/start`` (if it exists).
    Otherwise ``commands`` maps hook names to shell command lines, which run
    in ``cwd`` (the config file's directory, so relative paths in them work).
    """

    directory: Path | None = None
    commands: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None

    def command(self, hook: str) -> str | None:
        """The command line for *hook*, or None when there is none."""
        if self.directory is not None:
            path = self.directory / hook
            try:
                runnable = path.is_file() and os.access(path, os.X_OK)
            except (OSError, ValueError):
                runnable = False
            return shlex.quote(str(path)) if runnable else None
        return self.commands.get(hook)


@dataclass(frozen=True)
class NodeConfig:
    """A checked node config.

    Every path is absolute (relative ones were resolved against the config
    file's directory); addresses are validated strings for
    ``blockemu.address.parse_address``.
    """

    path: Path
    id: str
    priority: int
    listen: str
    peers: tuple[PeerConfig, ...]
    cluster_key_file: Path
    array: ArrayConfig
    host_view: Path
    buffer_file: Path
    replicas: tuple[ReplicaFiles, ...]
    state_file: Path
    heartbeat_interval: float
    heartbeat_misses: int
    hooks: HookConfig
    event_log: Path | None
    reflection: str


class ConfigError(FormatError):
    """Problems in a node config, each ``FILE:LINE: key.path: message and fix``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# -- where keys are --------------------------------------------------------------------------

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\[\]#]+?)\s*\]\]?\s*(?:#.*)?$")
_BARE_KEY = r"[A-Za-z0-9_-]+"

Key = tuple[str | int, ...]


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)', text)
    return tuple(a or b or c for a, b, c in parts)


class _Locator:
    """Best-effort line numbers for key paths (tomllib keeps none).

    Tables are found by their ``[name]``/``[[name]]`` headers (the n-th
    ``[[peers]]`` is ``("peers", n)``); a key by a ``key =`` line inside its
    table; failing that, the table's header line.
    """

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.headers: dict[Key, int] = {}
        self.regions: list[tuple[Key, int, int]] = []  # (table, first line, last line)
        counts: dict[tuple[str, ...], int] = {}
        current: Key = ()
        start = 1
        for number, line in enumerate(self.lines, start=1):
            m = _HEADER_RE.match(line)
            if not m:
                continue
            self.regions.append((current, start, number - 1))
            name = _split_dotted(m.group(2))
            if m.group(1) == "[[":
                index = counts.get(name, 0)
                counts[name] = index + 1
                current = (*name, index)
            else:
                current = name
            self.headers.setdefault(current, number)
            start = number + 1
        self.regions.append((current, start, len(self.lines)))

    def _find_key(self, table: Key, key: str) -> int | None:
        pattern = re.compile(
            rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*[=.]"
        )
        for region, first, last in self.regions:
            if region != table:
                continue
            for number in range(first, last + 1):
                if pattern.match(self.lines[number - 1]):
                    return number
        return None

    def line(self, path: Key) -> int:
        # The longest prefix of *path* that is a table header, then the first key after it.
        for cut in range(len(path), -1, -1):
            table = path[:cut]
            if table and table not in self.headers:
                continue
            rest = path[cut:]
            if rest and isinstance(rest[0], str):
                found = self._find_key(table, rest[0])
                if found is not None:
                    return found
            if table:
                return self.headers[table]
        return 1


# -- validation ------------------------------------------------------------------------------


def _dotted(path: Key) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


class _Checker:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.base = Path(os.path.abspath(path)).parent
        self.locator = _Locator(text)
        self.problems: list[tuple[int, str]] = []

    def problem(self, key: Key, message: str) -> None:
        line = self.locator.line(key)
        self.problems.append((line, f"{self.path}:{line}: {_dotted(key)}: {message}"))

    def foreign(self, lines: Iterable[str]) -> None:
        """Problems found in other files (HORCM), already located; they sort last."""
        for text in lines:
            self.problems.append((1 << 30, text))

    # -- shapes -----------------------------------------------------------------------------

    def table(
        self,
        value: Any,
        key: Key,
        known: Iterable[str],
        required: Iterable[str] = (),
    ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.problem(key, f"expected a table, got {_kind(value)}")
            return None
        known = list(known)
        for name in value:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
                self.problem((*key, name), f"unknown key; {hint}")
        for name in required:
            if name not in value:
                self.problem((*key, name), f"missing: add {name} = ... (a required key)")
        return value

    def string(self, value: Any, key: Key) -> str | None:
        if not isinstance(value, str):
            self.problem(key, f"expected a string, got {_kind(value)}")
            return None
        if not value.strip():
            self.problem(key, "must not be empty")
            return None
        return value

    def integer(self, value: Any, key: Key, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"expected an integer {low}-{high}, got {_kind(value)}")
            return None
        if not low <= value <= high:
            self.problem(key, f"{value} is out of range: use {low}-{high}")
            return None
        return value

    def ident(self, value: Any, key: Key, what: str, *, limit: int = 64) -> str | None:
        text = self.string(value, key)
        if text is not None and (not _ID_RE.match(text) or len(text) > limit):
            self.problem(
                key,
                f"bad {what} {text!r}: use 1-{limit} letters, digits, '_', '.', '-', "
                "starting with a letter or digit",
            )
            return None
        return text

    def address(self, value: Any, key: Key, *, unix: bool) -> str | None:
        text = self.string(value, key)
        if text is None:
            return None
        kind, _, rest = text.partition(":")
        if unix and kind == "unix" and rest:
            return text
        if kind == "tcp":
            host, _, port = rest.rpartition(":")
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            if _host_ok(host) and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535:
                return text
        forms = "unix:/path/to/socket or tcp:HOST:PORT" if unix else "tcp:HOST:PORT"
        self.problem(key, f"bad address {text!r}: use {forms} (e.g. tcp:192.0.2.1:7410)")
        return None

    def path_value(self, value: Any, key: Key) -> Path | None:
        text = self.string(value, key)
        if text is None:
            return None
        if "\0" in text:
            self.problem(key, "a path cannot contain a NUL character")
            return None
        return Path(os.path.normpath(self.base / os.path.expanduser(text)))

    def key_file(self, value: Any, key: Key, what: str) -> Path | None:
        """A secret: the file's bytes, whitespace stripped, at least MIN_KEY_SIZE of them."""
        path = self.path_value(value, key)
        if path is None:
            return None
        hint = f"e.g. `head -c 32 /dev/urandom | base64 > {path.name}; chmod 600 {path.name}`"
        try:
            if not path.exists():
                self.problem(
                    key, f"{what} {path} does not exist: create it ({hint}) or fix the path"
                )
                return path
            if not path.is_file():
                self.problem(key, f"{what} {path} is not a regular file")
                return path
            with open(path, "rb") as f:
                data = f.read(MAX_KEY_FILE_SIZE + 1)
        except OSError as exc:
            self.problem(key, f"cannot read {what} {path}: {exc.strerror or exc}")
            return path
        if len(data) > MAX_KEY_FILE_SIZE:
            self.problem(
                key, f"{what} {path} is larger than {MAX_KEY_FILE_SIZE} bytes: not a key file"
            )
        elif len(data.strip()) < MIN_KEY_SIZE:
            self.problem(
                key,
                f"{what} {path} holds {len(data.strip())} bytes (whitespace stripped); a key "
                f"needs at least {MIN_KEY_SIZE}: write a longer random one ({hint})",
            )
        return path

    def writable_file(self, value: Any, key: Key, what: str) -> Path | None:
        """A file the agent creates or rewrites: its directory must exist."""
        path = self.path_value(value, key)
        if path is None:
            return None
        try:
            if path.is_dir():
                self.problem(key, f"{what} {path} is a directory: name a file inside it")
            elif not path.parent.is_dir():
                self.problem(
                    key, f"directory {path.parent} of the {what} does not exist: create it first"
                )
        except OSError as exc:
            self.problem(key, f"cannot check {what} {path}: {exc.strerror or exc}")
        return path


def _is(check: str, path: Path) -> bool:
    """``path.exists()``/``is_dir()``/``is_file()`` that says False instead of raising."""
    try:
        return bool(getattr(path, check)())
    except (OSError, ValueError):
        return False


def _kind(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"


def _host_ok(host: str) -> bool:
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return all(re.match(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$", lb) for lb in labels)


_TOP = (
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
)
_REQUIRED = (
    "id",
    "priority",
    "listen",
    "cluster_key_file",
    "array",
    "host_view",
    "buffer_file",
    "state_file",
)


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read, check and resolve a node config; raise :class:`ConfigError` listing every problem."""
    cfg_path = Path(path)
    try:
        text = cfg_path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(
            [f"{cfg_path}: cannot read the node config ({exc.strerror or exc}): check the path"]
        ) from None
    except UnicodeDecodeError as exc:
        line = cfg_path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [f"{cfg_path}:{line}: (file): not UTF-8 text: TOML files are UTF-8"]
        ) from None
    return parse_node_config(text, path=cfg_path)


def parse_node_config(text: str, *, path: str | os.PathLike[str]) -> NodeConfig:
    """Check and resolve the config *text* read from *path* (relative paths start there)."""
    cfg_path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = m.group(1) if m else "1"
        raise ConfigError(
            [f"{cfg_path}:{line}: (file): TOML syntax error: {exc}; fix the syntax"]
        ) from None
    c = _Checker(cfg_path, text)
    c.table(data, (), _TOP, _REQUIRED)

    node_id = c.ident(data["id"], ("id",), "node id", limit=NODE_ID_MAX) if "id" in data else None
    priority = (
        c.integer(data["priority"], ("priority",), *PRIORITY_RANGE) if "priority" in data else None
    )
    listen = c.address(data["listen"], ("listen",), unix=False) if "listen" in data else None

    peers = _peers(c, data.get("peers", []), node_id, listen)
    cluster_key = (
        c.key_file(data["cluster_key_file"], ("cluster_key_file",), "cluster key file")
        if "cluster_key_file" in data
        else None
    )
    array = _array(c, data["array"]) if "array" in data else None

    host_view = None
    if "host_view" in data:
        host_view = c.path_value(data["host_view"], ("host_view",))
        if host_view is not None and _is("exists", host_view) and not _is("is_dir", host_view):
            c.problem(("host_view",), f"{host_view} is not a directory: a mountpoint must be one")
    buffer_file = (
        c.writable_file(data["buffer_file"], ("buffer_file",), "buffer file")
        if "buffer_file" in data
        else None
    )
    state_file = (
        c.writable_file(data["state_file"], ("state_file",), "state file")
        if "state_file" in data
        else None
    )
    event_log = (
        c.writable_file(data["event_log"], ("event_log",), "event log")
        if "event_log" in data
        else None
    )
    for key, one in (("buffer_file", buffer_file), ("state_file", state_file)):
        for other_key, other in (("state_file", state_file), ("event_log", event_log)):
            if key != other_key and one is not None and one == other:
                c.problem((other_key,), f"same file as {key} ({one}): give each its own file")

    reflection = "eager"
    if "reflection" in data:
        value = c.string(data["reflection"], ("reflection",))
        if value is not None and value not in REFLECTION_MODES:
            close = difflib.get_close_matches(value, REFLECTION_MODES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            c.problem(
                ("reflection",),
                f"unknown mode {value!r}: use eager (refresh standbys during the split), "
                f"lazy (refresh at takeover) or off (no S-VOL consistency protocol){hint}",
            )
        elif value is not None:
            reflection = value

    interval, misses = _heartbeat(c, data.get("heartbeat", {}))
    hooks = _hooks(c, data.get("hooks", {}))
    replicas = _replicas(c, data.get("replicas", []))

    if c.problems:
        c.problems.sort(key=lambda p: p[0])
        raise ConfigError([problem for _, problem in c.problems])
    assert node_id is not None and priority is not None and listen is not None
    assert cluster_key is not None and array is not None and host_view is not None
    assert buffer_file is not None and state_file is not None
    return NodeConfig(
        path=Path(os.path.abspath(cfg_path)),
        id=node_id,
        priority=priority,
        listen=listen,
        peers=peers,
        cluster_key_file=cluster_key,
        array=array,
        host_view=host_view,
        buffer_file=buffer_file,
        replicas=replicas,
        state_file=state_file,
        heartbeat_interval=interval,
        heartbeat_misses=misses,
        hooks=hooks,
        event_log=event_log,
        reflection=reflection,
    )


def _peers(
    c: _Checker, value: Any, node_id: str | None, listen: str | None
) -> tuple[PeerConfig, ...]:
    if not isinstance(value, list):
        c.problem(("peers",), f"expected an array of tables ([[peers]]), got {_kind(value)}")
        return ()
    out: list[PeerConfig] = []
    ids: dict[str, int] = {}
    addresses: dict[str, int] = {}
    for i, item in enumerate(value):
        key: Key = ("peers", i)
        table = c.table(item, key, ("id", "address"), ("id", "address"))
        if table is None:
            continue
        peer_id = (
            c.ident(table["id"], (*key, "id"), "peer id", limit=NODE_ID_MAX)
            if "id" in table
            else None
        )
        address = (
            c.address(table["address"], (*key, "address"), unix=False)
            if "address" in table
            else None
        )
        if peer_id is not None:
            if peer_id == node_id:
                c.problem(
                    (*key, "id"),
                    f"peer {peer_id!r} has this node's own id: list only the other nodes",
                )
            elif peer_id in ids:
                c.problem(
                    (*key, "id"),
                    f"duplicate peer id {peer_id!r} (also peers[{ids[peer_id]}]): "
                    "each node appears once",
                )
            else:
                ids[peer_id] = i
        if address is not None:
            if address == listen:
                c.problem(
                    (*key, "address"),
                    f"{address} is this node's own listen address: give the peer's address",
                )
            elif address in addresses:
                c.problem(
                    (*key, "address"),
                    f"duplicate peer address {address} (also peers[{addresses[address]}])",
                )
            else:
                addresses[address] = i
        if peer_id is not None and address is not None:
            out.append(PeerConfig(peer_id, address))
    return tuple(out)


def _array(c: _Checker, value: Any) -> ArrayConfig | None:
    key: Key = ("array",)
    table = c.table(value, key, ("address", "host_id", "key_file"), ("address", "host_id"))
    if table is None:
        return None
    address = (
        c.address(table["address"], (*key, "address"), unix=True) if "address" in table else None
    )
    host_id = (
        c.ident(table["host_id"], (*key, "host_id"), "host id") if "host_id" in table else None
    )
    key_file = None
    if "key_file" in table:
        key_file = c.key_file(table["key_file"], (*key, "key_file"), "array key file")
    if address is None or host_id is None:
        return None
    return ArrayConfig(address, host_id, key_file)


def _heartbeat(c: _Checker, value: Any) -> tuple[float, int]:
    key: Key = ("heartbeat",)
    interval, misses = HEARTBEAT_INTERVAL_DEFAULT, HEARTBEAT_MISSES_DEFAULT
    table = c.table(value, key, ("interval", "misses"))
    if table is None:
        return interval, misses
    if "interval" in table:
        v = table["interval"]
        low, high = HEARTBEAT_INTERVAL_RANGE
        if isinstance(v, bool) or not isinstance(v, int | float):
            c.problem((*key, "interval"), f"expected seconds ({low}-{high}), got {_kind(v)}")
        elif not low <= v <= high:
            c.problem(
                (*key, "interval"), f"{v} s is out of range: use {low}-{high} seconds (e.g. 0.5)"
            )
        else:
            interval = float(v)
    if "misses" in table:
        got = c.integer(table["misses"], (*key, "misses"), *HEARTBEAT_MISSES_RANGE)
        if got is not None:
            misses = got
    return interval, misses


def _hooks(c: _Checker, value: Any) -> HookConfig:
    key: Key = ("hooks",)
    table = c.table(value, key, ("directory", *HOOK_NAMES))
    if table is None:
        return HookConfig()
    commands = {name: table[name] for name in HOOK_NAMES if name in table}
    if "directory" in table:
        if commands:
            names = ", ".join(commands)
            c.problem(
                (*key, "directory"),
                f"give either a hook directory or hook commands ({names}), not both",
            )
        directory = c.path_value(table["directory"], (*key, "directory"))
        if directory is not None and not _is("is_dir", directory):
            c.problem(
                (*key, "directory"),
                f"hook directory {directory} does not exist or is not a directory",
            )
        return HookConfig(directory=directory, cwd=c.base)
    good: dict[str, str] = {}
    for name, command in commands.items():
        text = c.string(command, (*key, name))
        if text is None:
            continue
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            c.problem((*key, name), f"cannot split the command line ({exc}): check the quotes")
            continue
        if argv and "/" in argv[0]:
            program = Path(os.path.normpath(c.base / os.path.expanduser(argv[0])))
            if not _is("is_file", program):
                c.problem((*key, name), f"hook program {program} does not exist")
                continue
            if not os.access(program, os.X_OK):
                c.problem((*key, name), f"hook program {program} is not executable: chmod +x it")
                continue
        good[name] = text
    return HookConfig(commands=good, cwd=c.base)


def _replicas(c: _Checker, value: Any) -> tuple[ReplicaFiles, ...]:
    if not isinstance(value, list):
        c.problem(("replicas",), f"expected an array of tables ([[replicas]]), got {_kind(value)}")
        return ()
    out: list[ReplicaFiles] = []
    group_owner: dict[str, int] = {}
    for i, item in enumerate(value):
        key: Key = ("replicas", i)
        table = c.table(item, key, ("local", "remote"), ("local", "remote"))
        if table is None:
            continue
        configs: list[HorcmConfig | None] = []
        paths: list[Path | None] = []
        for side in ("local", "remote"):
            if side not in table:
                configs.append(None)
                paths.append(None)
                continue
            p = c.path_value(table[side], (*key, side))
            paths.append(p)
            configs.append(_horcm(c, p, (*key, side)) if p is not None else None)
        local, remote = configs
        if paths[0] is not None and paths[0] == paths[1]:
            c.problem(
                (*key, "remote"),
                "same file as local: the S-VOL side needs its own instance file",
            )
            continue
        if local is None or remote is None or paths[0] is None or paths[1] is None:
            continue
        try:
            pairs = match_pairs(local, remote)
        except HorcmError as exc:
            c.foreign(exc.problems)
            continue
        for group in dict.fromkeys(p.group for p in pairs):
            if group in group_owner:
                c.problem(
                    (*key, "local"),
                    f"group {group!r} is also defined by replicas[{group_owner[group]}]: "
                    "define each group in one pair of files",
                )
            else:
                group_owner[group] = i
        out.append(ReplicaFiles(paths[0], paths[1], tuple(pairs)))
    return tuple(out)


def _horcm(c: _Checker, path: Path, key: Key) -> HorcmConfig | None:
    try:
        exists, regular = path.exists(), path.is_file()
    except OSError as exc:
        c.problem(key, f"cannot check HORCM file {path}: {exc.strerror or exc}")
        return None
    if not exists:
        c.problem(key, f"HORCM file {path} does not exist: create it or fix the path")
        return None
    if not regular:
        c.problem(key, f"HORCM file {path} is not a regular file")
        return None
    try:
        return load_horcm(path)
    except HorcmError as exc:
        c.foreign(exc.problems)
        return None
