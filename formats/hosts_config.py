"""The array's host groups and host keys: ``blockemu serve --hosts hosts.toml``.

::

    [hosts.node1]
    key_file = "keys/node1.key"       # relative to this file; the key is its bytes
    ldevs = ["00:10", "00:20-00:2F"]  # the LDEVs node1 may see: single LDEVs, inclusive ranges

    [hosts.node2]
    key_file = "/etc/blockemu/node2.key"
    ldevs = ["00:11"]

A key is the key file's content with surrounding whitespace stripped, at
least :data:`MIN_KEY_SIZE` bytes (``head -c 32 /dev/urandom | base64 > node1.key``).
The same file is given to the host (``--key-file``); the key never travels.

:func:`load_hosts_config` reports every problem of the file at once, each
as ``FILE: KEY.PATH: what is wrong; what to do``, in one
:class:`HostsConfigError`.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FormatError
from .units import format_ldev, parse_ldev

#: Shortest key accepted, in bytes (after stripping whitespace).
MIN_KEY_SIZE = 16
#: A key file bigger than this is not a key file (someone named the wrong file).
MAX_KEY_FILE_SIZE = 64 << 10
#: What a host id may be: it travels in HELLO, shows in logs and reservations.
HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_HOST_KEYS = ("key_file", "ldevs", "replication")


def _key_hint(name: str = "HOST.key") -> str:
    return f"e.g. `head -c 32 /dev/urandom | base64 > {name}; chmod 600 {name}`"


@dataclass(frozen=True)
class HostEntry:
    """One host: its id, its key, and the LDEVs it may see (its host group)."""

    name: str
    key: bytes = field(repr=False)
    ldevs: frozenset[int]
    key_file: Path
    #: May run pair commands on pairs whose two volumes are both in its group
    #: (what a cluster node's agent needs for the patent's split and resync).
    replication: bool = False

    def describe_ldevs(self) -> str:
        """The host group as people write it: ``00:10, 00:20-00:2F`` (or ``none``)."""
        runs: list[list[int]] = []
        for ldev in sorted(self.ldevs):
            if runs and runs[-1][1] == ldev - 1:
                runs[-1][1] = ldev
            else:
                runs.append([ldev, ldev])
        return (
            ", ".join(
                format_ldev(a) if a == b else f"{format_ldev(a)}-{format_ldev(b)}" for a, b in runs
            )
            or "none"
        )


@dataclass(frozen=True)
class HostsConfig:
    path: Path
    hosts: tuple[HostEntry, ...]

    def host(self, name: str) -> HostEntry | None:
        """The entry of host *name* (exact match), or None."""
        return next((h for h in self.hosts if h.name == name), None)


class HostsConfigError(FormatError):
    """Everything wrong with a hosts config, one problem per entry of :attr:`problems`."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(
            f"hosts config {path} has {count}; fix them and start again:\n"
            + "\n".join(f"  {p}" for p in problems)
        )


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The key held in *path*: its bytes, whitespace stripped; FormatError says why not."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_SIZE + 1)
    except OSError as exc:
        raise FormatError(
            f"cannot read key file {path}: {exc.strerror or exc}; create it "
            f"({_key_hint(os.path.basename(path))}) "
            "or fix the path"
        ) from None
    if len(data) > MAX_KEY_FILE_SIZE:
        raise FormatError(
            f"key file {path} is larger than {MAX_KEY_FILE_SIZE} bytes: that is not a key file; "
            "name the file that holds the host's key"
        )
    key = data.strip()
    if len(key) < MIN_KEY_SIZE:
        raise FormatError(
            f"key file {path} holds {len(key)} bytes (whitespace stripped); a key needs at "
            f"least {MIN_KEY_SIZE}: write a longer random one ({_key_hint(os.path.basename(path))})"
        )
    return key


def parse_ldev_spec(text: str) -> range:
    """``"00:10"`` or ``"00:20-00:2F"`` (inclusive) as a range of LDEV numbers."""
    first, sep, last = text.partition("-")
    start = parse_ldev(first)
    end = parse_ldev(last) if sep else start
    if end < start:
        raise FormatError(
            f"LDEV range {text!r} ends before it starts; write it low to high "
            f"({format_ldev(end)}-{format_ldev(start)})"
        )
    return range(start, end + 1)


def load_hosts_config(path: str | os.PathLike[str]) -> HostsConfig:
    """Read and check the hosts config at *path*; key files are read too."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf8")
    except OSError as exc:
        raise HostsConfigError(
            path, [f"{path}: cannot read the hosts config: {exc.strerror or exc}; fix --hosts"]
        ) from None
    except UnicodeDecodeError as exc:
        problem = f"{path}: not UTF-8 text ({exc}); save it as UTF-8"
        raise HostsConfigError(path, [problem]) from None
    return parse_hosts_config(text, path)


def parse_hosts_config(text: str, path: Path) -> HostsConfig:
    """Parse *text* as the hosts config at *path* (relative key files are next to it)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        dup = re.search(r"Cannot declare \('hosts', '([^']*)'\) twice", str(exc))
        if dup:
            problem = (
                f"{path}: hosts.{dup.group(1)}: duplicate host ({exc}); "
                "declare each [hosts.ID] table once and merge the two"
            )
        else:
            problem = f"{path}: not valid TOML: {exc}; fix the syntax there"
        raise HostsConfigError(path, [problem]) from None
    return _Checker(path).check(raw)


class _Checker:
    """Walks the parsed TOML, collecting every problem instead of stopping at the first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.path}: {where + ': ' if where else ''}{message}")

    def unknown_keys(self, where: str, table: dict[str, Any], known: tuple[str, ...]) -> None:
        for key in table:
            if key in known:
                continue
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            prefix = f"{where}.{key}" if where else key
            self.problem(prefix, f"unknown key; {hint}allowed here: {', '.join(known)}")

    def check(self, raw: dict[str, Any]) -> HostsConfig:
        self.unknown_keys("", raw, ("hosts",))
        hosts = raw.get("hosts")
        entries: list[HostEntry] = []
        if not isinstance(hosts, dict) or not hosts:
            self.problem(
                "hosts",
                "no hosts defined; add a [hosts.ID] table with key_file and ldevs per host "
                "(or start the array without --hosts to leave it open)",
            )
        else:
            for name, table in hosts.items():
                entry = self.host(name, table)
                if entry is not None:
                    entries.append(entry)
            self.duplicates(list(hosts), entries)
        if self.problems:
            raise HostsConfigError(self.path, self.problems)
        return HostsConfig(self.path, tuple(entries))

    def host(self, name: str, table: Any) -> HostEntry | None:
        where = f"hosts.{name}"
        ok = True
        if not HOST_ID_RE.match(name):
            self.problem(
                where,
                f"bad host id {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
            )
            ok = False
        if not isinstance(table, dict):
            self.problem(where, f"must be a table, e.g. [{where}] with key_file and ldevs")
            return None
        self.unknown_keys(where, table, _HOST_KEYS)
        key, key_file = self.key(where, table)
        ldevs = self.ldevs(where, table)
        replication = table.get("replication", False)
        if not isinstance(replication, bool):
            self.problem(f"{where}.replication", "must be true or false")
            ok = False
        if not ok or key is None or key_file is None or ldevs is None:
            return None
        return HostEntry(name, key, ldevs, key_file, replication)

    def key(self, where: str, table: dict[str, Any]) -> tuple[bytes | None, Path | None]:
        value = table.get("key_file")
        if value is None:
            name = f"{where.split('.', 1)[1]}.key"
            self.problem(
                where,
                f'key_file is missing; add key_file = "keys/{name}", a file holding the '
                f"host's secret key ({_key_hint(name)})",
            )
            return None, None
        if not isinstance(value, str) or not value:
            self.problem(f"{where}.key_file", "must be a file name in quotes")
            return None, None
        key_file = self.path.parent / value  # an absolute value replaces the directory
        try:
            return read_key_file(key_file), key_file
        except FormatError as exc:
            relative = not os.path.isabs(value) and not key_file.exists()
            hint = " (relative key_file paths start at the config's directory)" if relative else ""
            self.problem(f"{where}.key_file", f"{exc}{hint}")
            return None, None

    def ldevs(self, where: str, table: dict[str, Any]) -> frozenset[int] | None:
        value = table.get("ldevs")
        if value is None:
            self.problem(
                where,
                'ldevs is missing; list the LDEVs this host may see, e.g. ldevs = ["00:10", '
                '"00:20-00:2F"] (or ldevs = [] for none)',
            )
            return None
        if not isinstance(value, list):
            self.problem(
                f"{where}.ldevs",
                'must be a list of LDEVs and ranges, e.g. ["00:10", "00:20-00:2F"]',
            )
            return None
        found: set[int] = set()
        ok = True
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.problem(
                    f"{where}.ldevs[{i}]",
                    f'{item!r} is not a string; quote LDEVs, e.g. "00:10" or "00:20-00:2F"',
                )
                ok = False
                continue
            try:
                found.update(parse_ldev_spec(item))
            except FormatError as exc:
                self.problem(f"{where}.ldevs[{i}]", str(exc))
                ok = False
        return frozenset(found) if ok else None

    def duplicates(self, names: list[str], entries: list[HostEntry]) -> None:
        """Hosts whose ids differ only in case, and hosts that share a key.

        (The same id twice is a TOML error, reported by :func:`parse_hosts_config`.)
        """
        by_folded: dict[str, str] = {}
        for name in names:
            other_name = by_folded.setdefault(name.casefold(), name)
            if other_name != name:
                self.problem(
                    f"hosts.{name}",
                    f"duplicate host: {name!r} and {other_name!r} differ only in case; "
                    "merge them into one table or rename one",
                )
        by_key: dict[bytes, HostEntry] = {}
        for entry in entries:
            other = by_key.setdefault(entry.key, entry)
            if other is not entry:
                self.problem(
                    f"hosts.{entry.name}.key_file",
                    f"host {entry.name!r} has the same key as host {other.name!r}, so either "
                    "could act as the other; give every host its own key",
                )
