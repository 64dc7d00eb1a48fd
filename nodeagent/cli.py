"""`nodeagent`: run a node's cluster agent, and talk to a running one.

nodeagent run --config node.toml          the agent (foreground; stop with SIGTERM)
nodeagent status --config node.toml       role, epoch, flags, peers, protected volumes
nodeagent switchover --config node.toml   hand the active role to a standby
nodeagent partition --config node.toml N  fault injection: ignore peers N... (none: heal)
nodeagent split GROUP [--quick] [--no-wait] split a replica group (ask the active)
nodeagent resync GROUP [--no-wait]        re-form a split replica group (S-VOL <- P-VOL)
nodeagent restore GROUP [--no-wait]       restore the P-VOL from the S-VOL
nodeagent reflect GROUP [--no-wait]       re-read a group changed on the array directly
nodeagent pause-at POINT...               fault injection: SIGSTOP at a protocol point
nodeagent state FILE                      decode a persisted state file
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from formats.errors import FormatError
from formats.node_config import ConfigError, NodeConfig, load_node_config
from formats.state_file import decode_state

EXIT_CODES = {"ok": 0, "error": 1, "usage": 2, "unreachable": 3, "no-such-file": 4,
              "corrupt": 7, "left": 75}  # fmt: skip
EPILOG = "exit codes: " + ", ".join(f"{v} {k}" for k, v in EXIT_CODES.items())


def die(message: str, code: str) -> None:
    print(f"nodeagent: {message}", file=sys.stderr)
    sys.exit(EXIT_CODES[code])


def load(args: argparse.Namespace) -> NodeConfig:
    try:
        return load_node_config(args.config)
    except ConfigError as exc:
        print(f"nodeagent: {len(exc.problems)} problem(s) in the configuration; not starting:",
              file=sys.stderr)  # fmt: skip
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        sys.exit(EXIT_CODES["usage"])
    except OSError as exc:
        die(f"cannot read {args.config}: {exc}", "usage")
        raise  # unreachable


def cmd_run(args: argparse.Namespace) -> None:
    from .agent import Agent, Left

    config = load(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {config.id} %(name)s %(levelname)s %(message)s",
    )
    agent = Agent(config)
    try:
        trio.run(agent.run)
    except Left as exc:
        die(f"left the cluster: {exc}", "left")
    if agent.membership.role.value == "left":
        sys.exit(EXIT_CODES["left"])


def ask(
    args: argparse.Namespace,
    request: dict[str, Any],
    *,
    seconds: float = 5.0,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from .agent import control_path, control_request

    config = load(args)
    try:
        return trio.run(
            partial(control_request, config, request, seconds=seconds, on_progress=on_progress)
        )
    except (OSError, trio.TooSlowError) as exc:
        die(f"no agent answers on {control_path(config)} ({exc}); is `nodeagent run` running?",
            "unreachable")  # fmt: skip
        raise  # unreachable


def cmd_status(args: argparse.Namespace) -> None:
    answer = ask(args, {"cmd": "status"})
    status = answer["status"]
    if args.json:
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        print()
        return
    print(f"node {status['node']}: {status['role']} (epoch {status['epoch']}, priority "
          f"{status['priority']}, flag {status['flag']}, array "
          f"{'connected' if status['array_connected'] else 'unreachable'})")  # fmt: skip
    for name, peer in status["peers"].items():
        age = peer["last_heartbeat_age"]
        print(f"  peer {name}: {peer['role']} epoch {peer['epoch']} "
              f"{'alive' if peer['alive'] else 'DOWN'}"
              f"{'' if age is None else f', heard {age:.2f}s ago'}")  # fmt: skip
    print(f"  protected volumes: {', '.join(status['protected']) or 'none'}")


def cmd_switchover(args: argparse.Namespace) -> None:
    answer = ask(args, {"cmd": "switchover", "to": args.to})
    if not answer.get("ok"):
        die(answer.get("error", "switchover refused"), "error")
    print(f"switching over to {answer['to']}")


def cmd_partition(args: argparse.Namespace) -> None:
    answer = ask(args, {"cmd": "partition", "peers": args.peers})
    print(f"ignoring peers: {', '.join(answer['blocked']) or 'none (healed)'}")


#: How long `nodeagent split` etc. wait for the round (a steady split may take long).
REPLICA_WAIT = 900.0


def cmd_replica(args: argparse.Namespace) -> None:
    op = "quick-split" if args.command == "split" and args.quick else args.command
    request = {"cmd": "replica", "op": op, "group": args.group, "wait": not args.no_wait,
               "progress": not args.quiet}  # fmt: skip
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - started:7.3f}s] {line}", flush=True)

    answer = ask(args, request, seconds=REPLICA_WAIT if not args.no_wait else 5.0,
                 on_progress=progress)  # fmt: skip
    if not answer.get("ok"):
        die(answer.get("error") or answer.get("detail") or f"{op} refused", "error")
    print(answer.get("detail", f"{op} of {args.group} done"))


def cmd_pause_at(args: argparse.Namespace) -> None:
    answer = ask(args, {"cmd": "pause-at", "points": args.points})
    print(f"armed: {', '.join(answer['armed'])} (the agent SIGSTOPs itself at the first hit)")


def cmd_state(args: argparse.Namespace) -> None:
    path = Path(args.file)
    try:
        state = decode_state(path.read_bytes(), name=str(path))
    except FileNotFoundError:
        die(f"{path}: no such state file (a node without one starts at flag 0)", "no-such-file")
        return
    except FormatError as exc:
        die(str(exc), "corrupt")
        return
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
        description="Cluster agent of one node: heartbeats, failover with array-enforced "
        "fencing, application hooks.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_opt = argparse.ArgumentParser(add_help=False)
    config_opt.add_argument("--config", required=True, metavar="FILE", help="the node's TOML")

    run = sub.add_parser("run", parents=[config_opt], help="run the agent", epilog=EPILOG)
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", parents=[config_opt], help="ask a running agent",
                            epilog=EPILOG)  # fmt: skip
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    sw = sub.add_parser("switchover", parents=[config_opt], epilog=EPILOG,
                        help="move the active role to a standby (run on the active)")  # fmt: skip
    sw.add_argument("--to", metavar="NODE", help="the standby to hand over to (default: best)")
    sw.set_defaults(func=cmd_switchover)
    part = sub.add_parser("partition", parents=[config_opt], epilog=EPILOG,
                          help="fault injection: ignore these peers (none: heal)")  # fmt: skip
    part.add_argument("peers", nargs="*", metavar="NODE")
    part.set_defaults(func=cmd_partition)
    for name, what in (("split", "split a replica group (S-VOL becomes usable)"),
                       ("resync", "re-form a split group (S-VOL hidden, copied from P-VOL)"),
                       ("restore", "restore the P-VOL from the S-VOL"),
                       ("reflect", "re-read the group's S-VOLs on every node (after a "
                        "change made on the array directly; the active notices those too)"),
                       ):  # fmt: skip
        rep = sub.add_parser(name, parents=[config_opt], epilog=EPILOG,
                             help=f"{what}; run by the active, every node's view kept "
                             "consistent")  # fmt: skip
        rep.add_argument("group", help="replica group (dev_group of the HORCM files)")
        if name == "split":
            rep.add_argument("--quick", action="store_true", help="quick split (no copy wait)")
        rep.add_argument("--no-wait", action="store_true", help="return once submitted")
        rep.add_argument("--quiet", "-q", action="store_true",
                         help="no progress line per stage; only the outcome")  # fmt: skip
        rep.set_defaults(func=cmd_replica)
    pause = sub.add_parser("pause-at", parents=[config_opt], epilog=EPILOG,
                           help="fault injection (tests): stop the agent with SIGSTOP at a "
                           "named protocol point, e.g. active:request:persist:A1")  # fmt: skip
    pause.add_argument("points", nargs="+", metavar="POINT",
                       help="ROLE[:KIND]:WHAT; see nodeagent/driver.py")  # fmt: skip
    pause.set_defaults(func=cmd_pause_at)
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
