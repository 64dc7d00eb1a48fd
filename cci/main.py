"""``blockemu-cci``: one console script for every CCI command, busybox-style.

Installing ``paircreate`` & co. as console scripts would put them on every
PATH the package's bin directory is on, shadowing a real CCI install (and a
real ``horcmstart.sh``) by accident. So there is one script, and the CCI
names exist only where someone asks for them::

    blockemu-cci pairdisplay -g oradb -IM0     # explicit
    blockemu-cci install-links ~/cci-lab       # symlinks named like CCI's commands
    PATH=~/cci-lab:$PATH pairdisplay -g oradb  # ... then scripts run unchanged

The command is chosen by the name the program was started as (the symlink),
or else by the first argument.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import commands

#: Every command name install-links creates.
LINKS = (
    "horcmstart.sh",
    "horcmshutdown.sh",
    "paircreate",
    "pairsplit",
    "pairresync",
    "pairdisplay",
    "pairevtwait",
    "pairvolchk",
)

USAGE = f"""usage: blockemu-cci COMMAND [ARGS...]
       blockemu-cci install-links DIR   (symlinks {", ".join(LINKS)} in DIR)

CCI (RAID Manager) commands driving blockemu's in-array pairs; see cci/README.md.
"""


def install_links(directory: str, program: str) -> int:
    """Create DIR/<name> -> blockemu-cci for each CCI command name; replaces old links only."""
    target = shutil.which(program) or os.path.abspath(program)
    where = Path(directory)
    where.mkdir(parents=True, exist_ok=True)
    for name in LINKS:
        link = where / name
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            print(f"blockemu-cci: {link} exists and is not a symlink; left alone", file=sys.stderr)
            return 1
        link.symlink_to(target)
    print(f"linked {len(LINKS)} CCI commands in {where} -> {target}")
    return 0


def dispatch(name: str, argv: Sequence[str], env: Mapping[str, str]) -> int:
    if name in ("horcmstart.sh", "horcmshutdown.sh"):
        from . import instance  # trio and the array client: only the daemon side needs them

        return (instance.horcmstart if name == "horcmstart.sh" else instance.horcmshutdown)(
            argv, env
        )
    if name in commands.HANDLERS:
        return commands.run(name, argv, env)
    raise KeyError(name)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv if argv is None else argv)
    program, rest = args[0], args[1:]
    name = os.path.basename(program)
    env = dict(os.environ)
    if name in LINKS:
        return dispatch(name, rest, env)
    if not rest or rest[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if rest else 2
    if rest[0] == "install-links":
        if len(rest) != 2:
            print("usage: blockemu-cci install-links DIR", file=sys.stderr)
            return 2
        return install_links(rest[1], program)
    try:
        return dispatch(rest[0], rest[1:], env)
    except KeyError:
        print(f"blockemu-cci: unknown command {rest[0]!r}\n{USAGE}", file=sys.stderr, end="")
        return 2


def entry() -> None:
    """The console script."""
    sys.exit(main())
