"""`nodeagent`: the cluster program of a node.

The cluster runtime and the S-VOL protocol land in later issues; for now it
can inspect a node's state file, the one piece of it declared already.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from formats.errors import FormatError
from formats.state_file import decode_state


def cmd_state(args: argparse.Namespace) -> None:
    path = Path(args.file)
    try:
        state = decode_state(path.read_bytes(), name=str(path))
    except FileNotFoundError:
        print(
            f"nodeagent: {path}: no such state file (a node without one starts at flag 0)",
            file=sys.stderr,
        )
        sys.exit(4)
    except FormatError as exc:
        print(f"nodeagent: {exc}", file=sys.stderr)
        sys.exit(7)
    view = {
        "flag": state.flag.name if state.flag else "0",
        "role": state.role.name,
        "epoch": state.epoch,
        "op": state.op.name,
        "group": state.group,
        "updated_ns": state.updated,
    }
    if args.json:
        json.dump(view, sys.stdout, indent=2)
        print()
    else:
        for key, value in view.items():
            print(f"{key:10} {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodeagent",
        description="Cluster agent of one node. So far: inspect a node's persisted state file.",
        epilog="exit codes: 0 ok, 2 usage, 4 no such file, 7 corrupt state file",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    state = sub.add_parser("state", help="show a node's persisted replica state file")
    state.add_argument("file", help="path of the state file")
    state.add_argument("--json", action="store_true")
    state.set_defaults(func=cmd_state)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
