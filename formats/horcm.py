"""HORCM configuration files (``/etc/horcmN.conf``), as Hitachi CCI reads them.

blockemu's replica definition file *is* a HORCM file: the P-VOL-side instance
file and the S-VOL-side instance file name the same ``dev_group``/``dev_name``
pairs, each with its own LDEV (DESIGN.md section 2; the research note
``replica-anchors.md`` section 2 has the format and a parser checklist).

Lexical rules, as real files and CCI's own generators use them:

* a line whose only word is a section keyword starts that section; keywords
  match exactly (``HORCM_INSTP`` is not ``HORCM_INST`` plus garbage,
  ``HORCM_LDEVG`` is not ``HORCM_LDEV``);
* ``#`` at the start of a line or of a word starts a comment running to the
  end of the line (header comments such as ``#dev_group dev_name ...`` are
  only comments: the column order is authoritative, not the header);
* columns are separated by runs of spaces or tabs; blank lines, trailing
  whitespace and CRLF line ends are ignored.

Every problem is collected and reported at once in a :class:`HorcmError` whose
``problems`` are ``FILE:LINE:COL: message`` strings (columns count characters
from 1; a tab counts as one).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import FormatError
from .units import format_ldev, parse_ldev

KEYWORDS = (
    "HORCM_MON",
    "HORCM_CMD",
    "HORCM_DEV",
    "HORCM_LDEV",
    "HORCM_LDEVG",
    "HORCM_INST",
    "HORCM_INSTP",
)

#: CCI's limit on dev_group and dev_name.
NAME_MAX = 31

_TOKEN_RE = re.compile(r"[^ \t]+")
_NAME_RE = re.compile(r"^[!-~]+$")  # printable ASCII, no space
_SERVICE_NAME_RE = re.compile(r"^[a-z0-9-]+$")
_HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_PORT_RE = re.compile(r"^CL[0-9A-Z]{1,2}-[A-Z]{1,2}(?:-[0-9]{1,3})?$", re.IGNORECASE)
_LDEV_SYNTAX_RE = re.compile(r"^(?:[0-9]+|0[xX][0-9A-Fa-f]+|[0-9A-Fa-f]{1,2}:[0-9A-Fa-f]{1,2})$")
_DECIMAL_RE = re.compile(r"^[0-9]+$")
_INT_RE = re.compile(r"^-?[0-9]+$")
_MU_TC_RE = re.compile(r"^[hH][0-3]$")

SERIAL_MAX = 0xFFFFFFFF
PATH_ID_MAX = 255


# -- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HorcmMon:
    """The HORCM_MON line: where this instance listens.

    ``poll_ms10`` and ``timeout_ms10`` are in units of 10 ms, as written.
    ``poll_ms10`` is None when the file says ``-1`` (monitoring off).
    """

    ip_address: str
    service: str
    poll_ms10: int | None
    timeout_ms10: int


@dataclass(frozen=True)
class DevEntry:
    """A HORCM_DEV line: a volume named by host port, target ID and LUN.

    ``line`` is where it was read; it takes no part in ``==``.
    """

    group: str
    name: str
    port: str
    target_id: int
    lun: int
    mu: int | None
    line: int = field(compare=False)


@dataclass(frozen=True)
class LdevEntry:
    """A HORCM_LDEV line: a volume named by array serial and LDEV number.

    ``mu`` None means the column was left out (CCI then uses MU#0).
    """

    group: str
    name: str
    serial: int
    ldev: int
    mu: int | None
    line: int = field(compare=False)


@dataclass(frozen=True)
class LdevgEntry:
    """A HORCM_LDEVG line: a copy group defined inside the array (raidcom)."""

    copy_group: str
    device_group: str
    serial: int
    line: int = field(compare=False)


@dataclass(frozen=True)
class InstEntry:
    """A HORCM_INST (``with_path`` False) or HORCM_INSTP line.

    It says where the *partner* instance of ``group`` listens. ``path_id`` is
    the optional fourth HORCM_INSTP column (always None for HORCM_INST).
    """

    group: str
    ip_address: str
    service: str
    path_id: int | None
    line: int = field(compare=False)
    with_path: bool = False


@dataclass(frozen=True)
class HorcmConfig:
    """One parsed HORCM file. Entries keep file order."""

    path: str
    mon: HorcmMon | None
    cmd: tuple[str, ...]
    devs: tuple[DevEntry, ...]
    ldevs: tuple[LdevEntry, ...]
    insts: tuple[InstEntry, ...]
    ldevgs: tuple[LdevgEntry, ...] = ()

    def groups(self) -> dict[str, list[DevEntry | LdevEntry]]:
        """The dev_name entries (HORCM_DEV and HORCM_LDEV) of each dev_group, in file order.

        Groups come in the order of their first line.
        """
        entries: list[DevEntry | LdevEntry] = [*self.devs, *self.ldevs]
        entries.sort(key=lambda e: e.line)
        out: dict[str, list[DevEntry | LdevEntry]] = {}
        for entry in entries:
            out.setdefault(entry.group, []).append(entry)
        return out


class HorcmError(FormatError):
    """One or more problems in HORCM files, each ``FILE:LINE:COL: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class PairDef:
    """One ShadowImage pair, as two instance files define it."""

    group: str
    name: str
    pvol_ldev: int
    svol_ldev: int
    mu: int
    serial: int


# -- parsing -----------------------------------------------------------------------------------


@dataclass
class _Token:
    text: str
    col: int


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[tuple[int, int, str]] = []
        self.mon: HorcmMon | None = None
        self.mon_line = 0
        self.cmd: list[str] = []
        self.devs: list[DevEntry] = []
        self.ldevs: list[LdevEntry] = []
        self.ldevgs: list[LdevgEntry] = []
        self.insts: list[tuple[InstEntry, int]] = []
        # (group, dev_name) -> line of its first definition
        self.names: dict[tuple[str, str], int] = {}

    def problem(self, line: int, col: int, message: str) -> None:
        self.problems.append((line, col, message))

    # -- lines ----------------------------------------------------------------------------------

    def tokens(self, lineno: int, line: str) -> list[_Token] | None:
        """The words of *line* before any comment; None if the line is unusable."""
        out: list[_Token] = []
        for m in _TOKEN_RE.finditer(line):
            text = m.group()
            if text.startswith("#"):
                break
            if "#" in text:
                col = m.start() + text.index("#") + 1
                self.problem(
                    lineno,
                    col,
                    f"'#' inside {text!r}: a comment starts with '#' at the start of a line "
                    "or after a space or tab; names cannot contain '#'",
                )
                return None
            out.append(_Token(text, m.start() + 1))
        return out

    def run(self, text: str) -> None:
        if text.startswith("\ufeff"):
            text = text[1:]
        section: str | None = None
        skipping = False  # after an unknown section keyword: its lines are not checked
        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw[:-1] if raw.endswith("\r") else raw
            toks = self.tokens(lineno, line)
            if not toks:
                continue
            first = toks[0]
            if first.text.upper().startswith("HORCM_"):
                if first.text in KEYWORDS:
                    section, skipping = first.text, False
                    if len(toks) > 1:
                        self.problem(
                            lineno,
                            toks[1].col,
                            f"section keyword {first.text} must be alone on its line; "
                            f"found {toks[1].text!r} after it (start a comment with '#')",
                        )
                else:
                    upper = first.text.upper()
                    close = difflib.get_close_matches(upper, KEYWORDS, n=1, cutoff=0.85)
                    hint = f"; did you mean {close[0]}?" if close else ""
                    self.problem(
                        lineno,
                        first.col,
                        f"unknown section keyword {first.text!r}: expected one of "
                        f"{', '.join(KEYWORDS)}{hint}",
                    )
                    section, skipping = None, True
                continue
            if skipping:
                continue
            if section is None:
                self.problem(
                    lineno,
                    first.col,
                    f"data line before any section keyword: start the section with a line "
                    f"holding only its keyword (e.g. HORCM_LDEV) above {first.text!r}",
                )
                continue
            handler = _HANDLERS[section]
            handler(self, lineno, line, toks)
        self.check_insts()

    def check_insts(self) -> None:
        defined = {e.group for e in self.devs} | {e.group for e in self.ldevs}
        defined |= {e.copy_group for e in self.ldevgs}
        for entry, col in self.insts:
            if entry.group not in defined:
                keyword = "HORCM_INSTP" if entry.with_path else "HORCM_INST"
                close = difflib.get_close_matches(entry.group, sorted(defined), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(
                    entry.line,
                    col,
                    f"{keyword} names group {entry.group!r}, which no HORCM_DEV or HORCM_LDEV "
                    f"line defines{hint}",
                )

    # -- columns --------------------------------------------------------------------------------

    def count(
        self, lineno: int, line: str, toks: list[_Token], section: str, names: Iterable[str]
    ) -> bool:
        """Check the number of columns against *names* (optional ones in brackets)."""
        names = list(names)
        required = sum(1 for n in names if not n.startswith("["))
        if required <= len(toks) <= len(names):
            return True
        layout = " ".join(names)
        if len(toks) < required:
            missing = names[len(toks)]
            last = toks[-1]
            self.problem(
                lineno,
                last.col + len(last.text),
                f"{section} line has {len(toks)} column(s), expected {required}"
                + (f"-{len(names)}" if len(names) > required else "")
                + f" ({layout}): {missing} is missing",
            )
        else:
            extra = toks[len(names)]
            self.problem(
                lineno,
                extra.col,
                f"{section} line has {len(toks)} columns, expected at most {len(names)} "
                f"({layout}): {extra.text!r} is extra (start a comment with '#')",
            )
        return False

    def name(self, lineno: int, tok: _Token, what: str) -> bool:
        if not _NAME_RE.match(tok.text):
            self.problem(
                lineno,
                tok.col,
                f"bad {what} {tok.text!r}: use printable ASCII characters without spaces",
            )
            return False
        if len(tok.text) > NAME_MAX:
            self.problem(
                lineno,
                tok.col,
                f"{what} {tok.text!r} is {len(tok.text)} characters long; "
                f"CCI allows at most {NAME_MAX}",
            )
            return False
        return True

    def number(
        self, lineno: int, tok: _Token, what: str, low: int, high: int, *, signed: bool = False
    ) -> int | None:
        pattern = _INT_RE if signed else _DECIMAL_RE
        text = tok.text
        value = int(text) if len(text) <= 12 and pattern.match(text) else None
        if value is None or not low <= value <= high:
            self.problem(
                lineno, tok.col, f"bad {what} {tok.text!r}: expected a decimal number {low}-{high}"
            )
            return None
        return value

    def mu(self, lineno: int, tok: _Token | None) -> tuple[bool, int | None]:
        if tok is None:
            return True, None
        if tok.text in ("0", "1", "2"):
            return True, int(tok.text)
        if _MU_TC_RE.match(tok.text):
            self.problem(
                lineno,
                tok.col,
                f"MU# {tok.text!r} is a TrueCopy/Universal Replicator mirror ID; "
                "blockemu pairs are ShadowImage pairs, whose MU# is 0, 1 or 2",
            )
        else:
            self.problem(
                lineno,
                tok.col,
                f"bad MU# {tok.text!r}: a ShadowImage mirror unit is 0, 1 or 2 "
                "(leave the column out for MU#0)",
            )
        return False, None

    def ldev(self, lineno: int, tok: _Token) -> int | None:
        value: int | None = None
        if _LDEV_SYNTAX_RE.match(tok.text):
            try:
                value = parse_ldev(tok.text)
            except FormatError:
                value = None
        if value is None:
            self.problem(
                lineno,
                tok.col,
                f"bad LDEV {tok.text!r}: expected CU:LDEV in hex (e.g. 00:1A), "
                "a decimal number 0-65535, or hex 0x001A (at most 0xFFFF)",
            )
        return value

    def service(self, lineno: int, tok: _Token) -> bool:
        text = tok.text
        if _DECIMAL_RE.match(text):
            if len(text) <= 6 and 1 <= int(text) <= 65535:
                return True
        elif _SERVICE_NAME_RE.match(text):
            return True
        self.problem(
            lineno,
            tok.col,
            f"bad service {text!r}: expected a UDP port number 1-65535 or a service name "
            "from /etc/services such as horcm0 (lower-case letters, digits, '-')",
        )
        return False

    def address(self, lineno: int, tok: _Token, *, listen: bool) -> bool:
        text = tok.text
        if text in ("NONE", "NONE6"):
            if listen:
                return True
            self.problem(
                lineno,
                tok.col,
                f"{text} (listen on every address) is only meaningful in HORCM_MON; "
                "here give the partner instance's IP address or host name",
            )
            return False
        if _valid_host(text):
            return True
        extra = ", or NONE/NONE6 to listen on every address" if listen else ""
        self.problem(
            lineno,
            tok.col,
            f"bad IP address or host name {text!r}: expected IPv4 (192.0.2.1), "
            f"IPv6 (2001:db8::1), localhost or a host name{extra}",
        )
        return False

    def unique(self, lineno: int, group: str, name: _Token) -> bool:
        key = (group, name.text)
        first = self.names.get(key)
        if first is not None:
            self.problem(
                lineno,
                name.col,
                f"dev_name {name.text!r} is defined twice in group {group!r} (first at line "
                f"{first}); within a dev_group each dev_name names one volume",
            )
            return False
        self.names[key] = lineno
        return True

    # -- sections -------------------------------------------------------------------------------

    def on_mon(self, lineno: int, line: str, toks: list[_Token]) -> None:
        cols = ("ip_address", "service", "poll(10ms)", "timeout(10ms)")
        if not self.count(lineno, line, toks, "HORCM_MON", cols):
            return
        if self.mon_line:
            self.problem(
                lineno,
                toks[0].col,
                f"second HORCM_MON line (the first is at line {self.mon_line}): "
                "an instance listens on one address and service",
            )
            return
        self.mon_line = lineno
        ok = self.address(lineno, toks[0], listen=True)
        ok = self.service(lineno, toks[1]) and ok
        poll = self.number(lineno, toks[2], "poll(10ms)", -1, 2**31 - 1, signed=True)
        if poll == 0:
            self.problem(
                lineno,
                toks[2].col,
                "bad poll(10ms) '0': give the poll interval in 10 ms units "
                "(e.g. 1000) or -1 to turn monitoring off",
            )
            poll = None
            ok = False
        timeout = self.number(lineno, toks[3], "timeout(10ms)", 1, 2**31 - 1)
        if ok and timeout is not None and poll is not None:
            self.mon = HorcmMon(toks[0].text, toks[1].text, None if poll == -1 else poll, timeout)

    def on_cmd(self, lineno: int, line: str, toks: list[_Token]) -> None:
        for tok in toks:
            if not tok.text.isprintable():
                self.problem(
                    lineno, tok.col, f"bad command device {tok.text!r}: unprintable characters"
                )
            else:
                self.cmd.append(tok.text)

    def on_dev(self, lineno: int, line: str, toks: list[_Token]) -> None:
        cols = ("dev_group", "dev_name", "port#", "TargetID", "LU#", "[MU#]")
        if not self.count(lineno, line, toks, "HORCM_DEV", cols):
            return
        ok = self.name(lineno, toks[0], "dev_group")
        ok = self.name(lineno, toks[1], "dev_name") and ok
        if not _PORT_RE.match(toks[2].text):
            self.problem(
                lineno,
                toks[2].col,
                f"bad port# {toks[2].text!r}: expected CLn-X, optionally with a host group "
                "number (e.g. CL1-A, CL2-B-1)",
            )
            ok = False
        tid = self.number(lineno, toks[3], "TargetID", 0, 65535)
        lun = self.number(lineno, toks[4], "LU#", 0, 65535)
        mu_ok, mu = self.mu(lineno, toks[5] if len(toks) > 5 else None)
        unique = ok and self.unique(lineno, toks[0].text, toks[1])
        if unique and mu_ok and tid is not None and lun is not None:
            self.devs.append(
                DevEntry(toks[0].text, toks[1].text, toks[2].text, tid, lun, mu, lineno)
            )

    def on_ldev(self, lineno: int, line: str, toks: list[_Token]) -> None:
        cols = ("dev_group", "dev_name", "Serial#", "CU:LDEV(LDEV#)", "[MU#]")
        if not self.count(lineno, line, toks, "HORCM_LDEV", cols):
            return
        ok = self.name(lineno, toks[0], "dev_group")
        ok = self.name(lineno, toks[1], "dev_name") and ok
        serial = self.number(lineno, toks[2], "Serial#", 1, SERIAL_MAX)
        ldev = self.ldev(lineno, toks[3])
        mu_ok, mu = self.mu(lineno, toks[4] if len(toks) > 4 else None)
        unique = ok and self.unique(lineno, toks[0].text, toks[1])
        if unique and mu_ok and serial is not None and ldev is not None:
            self.ldevs.append(LdevEntry(toks[0].text, toks[1].text, serial, ldev, mu, lineno))

    def on_ldevg(self, lineno: int, line: str, toks: list[_Token]) -> None:
        cols = ("copy_group", "device_group", "Serial#")
        if not self.count(lineno, line, toks, "HORCM_LDEVG", cols):
            return
        ok = self.name(lineno, toks[0], "copy_group")
        ok = self.name(lineno, toks[1], "device_group") and ok
        serial = self.number(lineno, toks[2], "Serial#", 1, SERIAL_MAX)
        if ok and serial is not None:
            self.ldevgs.append(LdevgEntry(toks[0].text, toks[1].text, serial, lineno))

    def on_inst(self, lineno: int, line: str, toks: list[_Token]) -> None:
        self._inst(lineno, line, toks, with_path=False)

    def on_instp(self, lineno: int, line: str, toks: list[_Token]) -> None:
        self._inst(lineno, line, toks, with_path=True)

    def _inst(self, lineno: int, line: str, toks: list[_Token], *, with_path: bool) -> None:
        cols = ["dev_group", "ip_address", "service"]
        if with_path:
            cols.append("[pathID]")
        keyword = "HORCM_INSTP" if with_path else "HORCM_INST"
        if not self.count(lineno, line, toks, keyword, cols):
            return
        ok = self.name(lineno, toks[0], "dev_group")
        ok = self.address(lineno, toks[1], listen=False) and ok
        ok = self.service(lineno, toks[2]) and ok
        path_id: int | None = None
        if len(toks) > 3:
            path_id = self.number(lineno, toks[3], "pathID", 0, PATH_ID_MAX)
            ok = ok and path_id is not None
        if ok:
            entry = InstEntry(toks[0].text, toks[1].text, toks[2].text, path_id, lineno, with_path)
            self.insts.append((entry, toks[0].col))

    def result(self) -> HorcmConfig:
        if self.problems:
            self.problems.sort(key=lambda p: (p[0], p[1]))
            raise HorcmError([f"{self.path}:{ln}:{col}: {msg}" for ln, col, msg in self.problems])
        return HorcmConfig(
            path=self.path,
            mon=self.mon,
            cmd=tuple(self.cmd),
            devs=tuple(self.devs),
            ldevs=tuple(self.ldevs),
            insts=tuple(e for e, _ in self.insts),
            ldevgs=tuple(self.ldevgs),
        )


_HANDLERS = {
    "HORCM_MON": _Parser.on_mon,
    "HORCM_CMD": _Parser.on_cmd,
    "HORCM_DEV": _Parser.on_dev,
    "HORCM_LDEV": _Parser.on_ldev,
    "HORCM_LDEVG": _Parser.on_ldevg,
    "HORCM_INST": _Parser.on_inst,
    "HORCM_INSTP": _Parser.on_instp,
}


def _valid_host(text: str) -> bool:
    """An IPv4/IPv6 address (a zone index allowed), ``localhost`` or a DNS host name."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    if len(text) > 253:
        return False
    labels = text.rstrip(".").split(".")
    if not all(_HOST_LABEL_RE.match(label) for label in labels):
        return False
    # A dotted-quad look-alike such as 300.1.1.1 is a bad address, not a host name.
    return not labels[-1].isdigit()


def parse_horcm(text: str, *, path: str = "<horcm>") -> HorcmConfig:
    """Parse a HORCM file; raise :class:`HorcmError` listing every problem found."""
    parser = _Parser(path)
    parser.run(text)
    return parser.result()


def load_horcm(path: str | os.PathLike[str]) -> HorcmConfig:
    """Read and parse the HORCM file at *path*.

    A file that cannot be read is one problem, ``FILE: cannot read ...``
    (there is no line to name). Bytes that are not UTF-8 are replaced, which
    is harmless in comments and reported where they sit in a name.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise HorcmError(
            [f"{name}: cannot read the HORCM file ({reason}): check the path"]
        ) from None
    return parse_horcm(data.decode("utf-8", errors="replace"), path=name)


# -- pairing two instance files ----------------------------------------------------------------


def match_pairs(local: HorcmConfig, remote: HorcmConfig) -> list[PairDef]:
    """The ShadowImage pairs two instance files define together.

    *local* is the P-VOL-side instance file, *remote* the S-VOL side. Pairs are
    matched by dev_group and dev_name and come in *local*'s file order. An
    omitted MU# counts as MU#0, as in CCI. Every mismatch is collected and
    raised as one :class:`HorcmError` naming both files and lines.
    """
    problems: list[str] = []
    for config in (local, remote):
        for group_entry in config.ldevgs:
            problems.append(
                f"{_at(config, group_entry.line)}: HORCM_LDEVG copy group "
                f"{group_entry.copy_group!r} is defined inside the array (raidcom), which "
                "blockemu cannot see; list its volumes in HORCM_LDEV instead"
            )
    lgroups, rgroups = local.groups(), remote.groups()
    problems += _unpartnered(local, lgroups, remote, rgroups, "P-VOL", "S-VOL")
    problems += _unpartnered(remote, rgroups, local, lgroups, "S-VOL", "P-VOL")
    pairs: list[PairDef] = []
    for group, lentries in lgroups.items():
        rentries = rgroups.get(group)
        if rentries is None:
            continue
        problems += _missing_names(group, local, lentries, remote, rentries, "P-VOL")
        problems += _missing_names(group, remote, rentries, local, lentries, "S-VOL")
        rnames = {e.name: e for e in rentries}
        for lentry in lentries:
            rentry = rnames.get(lentry.name)
            if rentry is not None:
                pair = _pair(group, local, lentry, remote, rentry, problems)
                if pair is not None:
                    pairs.append(pair)
    problems += _pair_conflicts(pairs, local, remote)
    if problems:
        raise HorcmError(problems)
    return pairs


def _at(config: HorcmConfig, line: int) -> str:
    return f"{config.path}:{line}:1"


Entries = dict[str, list[DevEntry | LdevEntry]]


def _unpartnered(
    config: HorcmConfig, mine: Entries, other: HorcmConfig, theirs: Entries, role: str, orole: str
) -> list[str]:
    return [
        f"{_at(config, entries[0].line)}: group {group!r} ({role} side) has no partner group "
        f"in {other.path} ({orole} side): define the same dev_group and dev_names there"
        for group, entries in mine.items()
        if group not in theirs
    ]


def _missing_names(
    group: str,
    config: HorcmConfig,
    mine: list[DevEntry | LdevEntry],
    other: HorcmConfig,
    theirs: list[DevEntry | LdevEntry],
    role: str,
) -> list[str]:
    names = {e.name for e in theirs}
    return [
        f"{_at(config, entry.line)}: dev_name {entry.name!r} of group {group!r} ({role} side) "
        f"is missing from {other.path} (the group is at {other.path}:{theirs[0].line}): "
        "add it there or remove it here"
        for entry in mine
        if entry.name not in names
    ]


def _pair(
    group: str,
    local: HorcmConfig,
    lentry: DevEntry | LdevEntry,
    remote: HorcmConfig,
    rentry: DevEntry | LdevEntry,
    problems: list[str],
) -> PairDef | None:
    label = f"{group!r}/{lentry.name!r}"
    sides: tuple[tuple[HorcmConfig, DevEntry | LdevEntry], ...] = (
        (local, lentry),
        (remote, rentry),
    )
    for config, entry in sides:
        if isinstance(entry, DevEntry):
            problems.append(
                f"{_at(config, entry.line)}: {label}: HORCM_DEV needs a port/LU to LDEV map; "
                "use HORCM_LDEV (dev_group dev_name Serial# CU:LDEV MU#)"
            )
    if not isinstance(lentry, LdevEntry) or not isinstance(rentry, LdevEntry):
        return None
    here, there = _at(local, lentry.line), _at(remote, rentry.line)
    lmu, rmu = lentry.mu or 0, rentry.mu or 0
    if lmu != rmu:
        problems.append(
            f"{here}: {label}: MU#{lmu} here but MU#{rmu} at {there}: "
            "both instance files must give the same MU#"
        )
    elif lentry.serial != rentry.serial:
        problems.append(
            f"{here}: {label}: array serial {lentry.serial} here but {rentry.serial} at "
            f"{there}: a ShadowImage pair lives inside one array"
        )
    elif lentry.ldev == rentry.ldev:
        problems.append(
            f"{here}: {label}: P-VOL and S-VOL are both LDEV {format_ldev(lentry.ldev)} "
            f"(see {there}): a volume cannot be paired with itself"
        )
    else:
        return PairDef(group, lentry.name, lentry.ldev, rentry.ldev, lmu, lentry.serial)
    return None


def _pair_conflicts(pairs: list[PairDef], local: HorcmConfig, remote: HorcmConfig) -> list[str]:
    """An S-VOL in two pairs, or two pairs on one P-VOL mirror unit."""
    problems: list[str] = []
    lines = {(e.group, e.name): e.line for e in local.ldevs}
    rlines = {(e.group, e.name): e.line for e in remote.ldevs}
    svols: dict[tuple[int, int], PairDef] = {}
    mirrors: dict[tuple[int, int, int], PairDef] = {}
    for pair in pairs:
        key = (pair.serial, pair.svol_ldev)
        seen = svols.setdefault(key, pair)
        if seen is not pair:
            problems.append(
                f"{remote.path}:{rlines[(pair.group, pair.name)]}:1: S-VOL LDEV "
                f"{format_ldev(pair.svol_ldev)} of {pair.group!r}/{pair.name!r} is already the "
                f"S-VOL of {seen.group!r}/{seen.name!r} (line {rlines[(seen.group, seen.name)]}): "
                "an S-VOL belongs to one pair"
            )
        mkey = (pair.serial, pair.pvol_ldev, pair.mu)
        seen = mirrors.setdefault(mkey, pair)
        if seen is not pair:
            problems.append(
                f"{local.path}:{lines[(pair.group, pair.name)]}:1: P-VOL LDEV "
                f"{format_ldev(pair.pvol_ldev)} MU#{pair.mu} of {pair.group!r}/{pair.name!r} is "
                f"already used by {seen.group!r}/{seen.name!r} (line "
                f"{lines[(seen.group, seen.name)]}): give each pair of a P-VOL its own MU# (0-2)"
            )
    return problems


# -- rendering ---------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    widths[0] += 1  # room for the '#' of the header comment

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    return [fmt(["#" + header[0], *header[1:]]), *(fmt(r) for r in rows)]


def render_horcm(config: HorcmConfig) -> str:
    """A canonical HORCM file for *config*.

    LDEVs are written as CU:LDEV, MU# only where the entry has one, and each
    section with an aligned header comment. ``parse_horcm(render_horcm(c),
    path=c.path) == c`` for any valid *c* (line numbers take no part in ``==``).
    """
    out = ["# HORCM configuration (canonical form written by blockemu)"]

    def section(keyword: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
        out.extend(["", keyword, *_table(header, list(rows))])

    if config.mon is not None:
        m = config.mon
        poll = "-1" if m.poll_ms10 is None else str(m.poll_ms10)
        section(
            "HORCM_MON",
            ("ip_address", "service", "poll(10ms)", "timeout(10ms)"),
            [(m.ip_address, m.service, poll, str(m.timeout_ms10))],
        )
    if config.cmd:
        out.extend(["", "HORCM_CMD", "#dev_name", " ".join(config.cmd)])
    if config.devs:
        section(
            "HORCM_DEV",
            ("dev_group", "dev_name", "port#", "TargetID", "LU#", "MU#"),
            (
                (d.group, d.name, d.port, str(d.target_id), str(d.lun), _mu(d.mu))
                for d in config.devs
            ),
        )
    if config.ldevs:
        section(
            "HORCM_LDEV",
            ("dev_group", "dev_name", "Serial#", "CU:LDEV(LDEV#)", "MU#"),
            (
                (e.group, e.name, str(e.serial), format_ldev(e.ldev), _mu(e.mu))
                for e in config.ldevs
            ),
        )
    if config.ldevgs:
        section(
            "HORCM_LDEVG",
            ("copy_group", "device_group", "Serial#"),
            ((g.copy_group, g.device_group, str(g.serial)) for g in config.ldevgs),
        )
    # Consecutive runs, so that the order of INST and INSTP entries survives a round trip.
    runs: list[list[InstEntry]] = []
    for inst in config.insts:
        if runs and runs[-1][0].with_path == inst.with_path:
            runs[-1].append(inst)
        else:
            runs.append([inst])
    for run in runs:
        if run[0].with_path:
            section(
                "HORCM_INSTP",
                ("dev_group", "ip_address", "service", "pathID"),
                ((i.group, i.ip_address, i.service, _mu(i.path_id)) for i in run),
            )
        else:
            section(
                "HORCM_INST",
                ("dev_group", "ip_address", "service"),
                ((i.group, i.ip_address, i.service) for i in run),
            )
    return "\n".join(out) + "\n"


def _mu(value: int | None) -> str:
    """An optional number column: empty when absent."""
    return "" if value is None else str(value)
