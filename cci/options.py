"""CCI-style command lines: single-dash words, some with several values.

CCI does not parse like getopt: options are whole words (``-vl``, ``-CLI``,
``-nowaits``), some take a variable number of values (``-s psus ssus``,
``-d 412345 16 0``, ``-t 60 5``), format letters combine (``-fcx``), and
the instance rides on ``-I``: ``-I1``, ``-IM1``, ``-ISI1``, ``-IBC6``. This
module turns such a line into an :class:`Options` and fails with CCI's
codes: EX_UNWOPT for an unknown option, EX_REQARG for a missing value,
EX_INVARG for a bad one, EX_INVMOD for a TrueCopy instance mode (blockemu's
pairs are in-array ShadowImage pairs). Pure: the environment is passed in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from formats.errors import FormatError
from formats.units import parse_ldev

from .exitcodes import EX_INVARG, EX_INVMOD, EX_REQARG, EX_UNWOPT, CciError

#: Options of each command: name -> (fewest values, most values); None = no limit.
SPECS: dict[str, dict[str, tuple[int, int | None]]] = {
    "paircreate": {
        "-g": (1, 1),
        "-d": (1, 3),
        "-vl": (0, 0),
        "-vr": (0, 0),
        "-c": (1, 1),
        "-split": (0, 0),
        "-fq": (1, 1),
        "-m": (1, 2),
    },
    "pairsplit": {
        "-g": (1, 1),
        "-d": (1, 3),
        "-S": (0, 0),
        "-E": (0, 0),
        "-r": (0, 0),
        "-rw": (0, 0),
        "-fq": (1, 1),
    },
    "pairresync": {"-g": (1, 1), "-d": (1, 3), "-c": (1, 1), "-restore": (0, 0)},
    "pairdisplay": {"-g": (1, 1), "-d": (1, 3), "-CLI": (0, 0), "-l": (0, 0)},
    "pairevtwait": {
        "-g": (1, 1),
        "-d": (1, 3),
        "-s": (1, None),
        "-ss": (1, None),
        "-t": (1, 2),
        "-nowait": (0, 0),
        "-nowaits": (0, 0),
        "-l": (0, 0),
    },
    "pairvolchk": {"-g": (1, 1), "-d": (1, 3), "-c": (0, 0), "-ss": (0, 0)},
}
_COMMON: dict[str, tuple[int, int | None]] = {"-nomsg": (0, 0), "-h": (0, 0)}
#: Commands that take -f[c][x] (pairdisplay's format letters).
_FORMAT_LETTERS = {"pairdisplay": "cx"}

_INSTANCE_RE = re.compile(r"^-I(M|SI|BC|H|TC|CA)?([0-9]*)$")
_TRUECOPY_MODES = frozenset({"H", "TC", "CA"})
_INSTANCE_MAX = 2047  # CCI's instance numbers: 0-2047


@dataclass(frozen=True)
class Selector:
    """What a command acts on: a group, a dev_name in it, or a volume by serial and LDEV."""

    group: str | None = None
    dev: str | None = None
    volume: tuple[int, int, int | None] | None = None  # (serial, LDEV, MU# or None)

    def to_json(self) -> dict[str, object]:
        return {
            "group": self.group,
            "dev": self.dev,
            "volume": None if self.volume is None else list(self.volume),
        }


@dataclass(frozen=True)
class Options:
    """One parsed command line. ``values`` maps each option given to its values."""

    command: str
    instance: str  # "" is the default instance (/etc/horcm.conf)
    values: dict[str, list[str]] = field(default_factory=dict)
    formats: frozenset[str] = frozenset()

    def has(self, name: str) -> bool:
        return name in self.values

    def one(self, name: str) -> str | None:
        got = self.values.get(name)
        return got[0] if got else None

    def selector(self) -> Selector:
        """-g and -d as a :class:`Selector` (EX_REQARG when neither is given)."""
        group, dev = self.one("-g"), None
        volume: tuple[int, int, int | None] | None = None
        dvalues = self.values.get("-d")
        if dvalues is not None:
            if len(dvalues) == 1:
                dev = dvalues[0]
            else:
                volume = _volume(dvalues)
        if group is None and dev is None and volume is None:
            raise CciError(
                EX_REQARG,
                "name the volumes: -g <group> [-d <dev_name>], or -d <Seq#> <LDEV#> [MU#]",
            )
        return Selector(group, dev, volume)

    def integer(self, name: str, low: int, high: int, default: int) -> int:
        """The value of *name* as an integer in [low, high] (EX_INVARG otherwise)."""
        text = self.one(name)
        if text is None:
            return default
        if not text.isdigit() or not low <= int(text) <= high:
            raise CciError(EX_INVARG, f"{name} {text!r}: expected a number {low}-{high}")
        return int(text)


def _volume(values: Sequence[str]) -> tuple[int, int, int | None]:
    serial, ldev_text, *rest = values
    try:
        ldev = parse_ldev(ldev_text)
    except FormatError:
        ldev = -1
    mu = rest[0] if rest else None
    if not serial.isdigit() or ldev < 0 or (mu is not None and mu not in ("0", "1", "2")):
        raise CciError(
            EX_INVARG,
            "-d " + " ".join(values) + ": expected -d <dev_name> or "
            "-d <Seq#> <LDEV#> [MU#] (LDEV# decimal, CU:LDEV or 0x..., MU# 0-2)",
        )
    return int(serial), ldev, None if mu is None else int(mu)


def _instance(token: str) -> str | None:
    """The instance number an -I option names (None: mode only); raises for TrueCopy modes."""
    m = _INSTANCE_RE.match(token)
    assert m is not None
    mode, digits = m.group(1), m.group(2)
    if mode in _TRUECOPY_MODES:
        raise CciError(
            EX_INVMOD,
            f"{token}: HORC (TrueCopy) mode; blockemu's pairs are "
            "in-array ShadowImage pairs: use -I<n>, -IM<n>, -ISI<n> or -IBC<n>",
        )
    if digits and int(digits) > _INSTANCE_MAX:
        raise CciError(EX_INVARG, f"{token}: instance numbers are 0-{_INSTANCE_MAX}")
    return str(int(digits)) if digits else None


def instance_from_env(env: Mapping[str, str]) -> str:
    """HORCMINST, or "" (the default instance) when unset or empty."""
    value = env.get("HORCMINST", "").strip()
    if value and (not value.isdigit() or int(value) > _INSTANCE_MAX):
        raise CciError(
            EX_INVARG, f"HORCMINST={value!r}: expected an instance number 0-{_INSTANCE_MAX}"
        )
    return str(int(value)) if value else ""


def parse(command: str, argv: Sequence[str], env: Mapping[str, str]) -> Options:
    """Parse *argv* (without the command name) for *command*."""
    spec = {**SPECS[command], **_COMMON}
    letters = _FORMAT_LETTERS.get(command, "")
    values: dict[str, list[str]] = {}
    formats: set[str] = set()
    instance: str | None = None
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if _INSTANCE_RE.match(token):
            instance = _instance(token) or instance
            continue
        if letters and token.startswith("-f") and token not in spec:
            wanted = set(token[2:])
            if not wanted or not wanted <= set(letters):
                raise CciError(
                    EX_UNWOPT,
                    f"{token}: {command} takes -f with the letters "
                    f"{', '.join(letters)} (e.g. -fcx)",
                )
            formats |= wanted
            continue
        if token not in spec:
            if not token.startswith("-"):
                raise CciError(EX_INVARG, f"unexpected argument {token!r}")
            known = " ".join(sorted(spec))
            raise CciError(EX_UNWOPT, f"{command} has no option {token}; it takes {known}, -I<n>")
        low, high = spec[token]
        got: list[str] = []
        while i < len(argv) and (high is None or len(got) < high):
            nxt = argv[i]
            if nxt.startswith("-"):
                break
            got.append(nxt)
            i += 1
        if len(got) < low:
            raise CciError(EX_REQARG, f"{token} needs a value")
        values[token] = got
    if instance is None:
        instance = instance_from_env(env)
    return Options(command, instance, values, frozenset(formats))
