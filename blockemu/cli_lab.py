"""`blockemu lab ...`: an array and a cluster of nodes in network namespaces, on one machine.

Every subcommand takes --dir (default $BLOCKEMU_LAB_DIR, else
/var/tmp/blockemu-lab): the lab's directory holds its state (lab.json), the
array's volumes and unix socket, and one directory per node (config, keys,
buffer, event log, host view mount).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from formats.node_config import REFLECTION_MODES
from formats.units import format_size

from . import lab, labconfig, labnode, labstate, netns
from .address import parse_address
from .cliutil import EXIT_CODES, emit_json, err_console, out_console, size_arg

LAB_EPILOG = """\
examples:
  blockemu lab up --nodes 2                       # array + node1 (active) + node2 (standby)
  blockemu lab status                              # pairs, roles, flags, buffers, mounts
  blockemu lab exec node1 -- blockemu host show --host node1
  blockemu lab exec node1 -- bash                  # a shell on node1's network
  blockemu lab kill node1                          # crash node1; node2 takes over
  blockemu lab start node1                         # node1 rejoins as a standby
  blockemu lab partition node2                     # node2 loses node1 (both still see the array)
  blockemu lab partition node1 --from-array        # node1 loses everyone, the array too
  blockemu lab heal
  blockemu lab down                                # nothing left behind

exit codes: 0 ok, 1 the lab command failed (the message says why), 2 usage;
`lab exec` exits with the command's own code.
"""


def _dir(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else labstate.default_dir()


def cmd_up(args: argparse.Namespace) -> None:
    opts = labstate.LabOptions(
        directory=_dir(args), name=args.name, nodes=args.nodes, subnet=args.subnet,
        reflection=args.reflection, pairs=args.pairs, size=args.size, mode=args.mode,
        heartbeat_interval=args.heartbeat_interval, heartbeat_misses=args.heartbeat_misses,
        timeout=args.timeout, initial_split=args.initial_split,
    )  # fmt: skip
    state = lab.up(opts, out=lambda line: print(line, flush=True))
    print_where(lab.status(state.directory))


def print_where(view: dict[str, Any]) -> None:
    """After `up`: where everything is, and how to get in."""
    d = view["dir"]
    table = Table(title=f"lab {view['name']!r}: where everything is", title_justify="left",
                  show_header=False, box=None)  # fmt: skip
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    a = view["array"]
    table.add_row("directory", f"{d} (state {d}/lab.json)")
    table.add_row("network", f"{view['subnet']} inside the lab's namespaces only; bridge in "
                  f"{view['bridge_ns']}")  # fmt: skip
    table.add_row("array", f"pid {a['pid']} in {a['ns']} at {a['tcp']}; admin socket {a['unix']}; "
                  f"log {a['log']}")  # fmt: skip
    for row in a["pairs"]:
        table.add_row("pair", f"{row['pvol']} -> {row['svol']} {row['status']} "
                      f"(group {row['group']}, {row['mode']})")  # fmt: skip
    for name, n in view["nodes"].items():
        devices = ", ".join(f"{e.get('device')}={e.get('ldev')}" for e in n["buffer"]) or "none"
        table.add_row(name, f"{n['role']} in {n['ns']} at {n['ip']}; agent pid {n['agent_pid']}, "
                      f"attach pid {n['attach_pid']}; view {n['view']} ({devices}); "
                      f"config {n['config']}")  # fmt: skip
    out_console().print(table, highlight=False)
    first = next(iter(view["nodes"]))
    print(f"enter a node:  blockemu lab exec {first} --dir {d} -- bash   "
          f"(or: nsenter --net=/run/netns/{view['nodes'][first]['ns']} bash)")  # fmt: skip
    print(f"status:        blockemu lab status --dir {d}")
    print(f"tear down:     blockemu lab down --dir {d}")


def cmd_status(args: argparse.Namespace) -> None:
    view = lab.status(_dir(args))
    if args.json:
        emit_json(view)
        return
    console = out_console()
    a = view["array"]
    part = view["partition"]
    cut = "none"
    if part:
        cut = f"{', '.join(part['nodes'])} cut off" + (" (also from the array)"
                                                       if part["from_array"] else "")  # fmt: skip
    console.print(f"lab {view['name']!r} in {view['dir']}: {view['status']}, subnet "
                  f"{view['subnet']}, partition: {cut}", highlight=False)  # fmt: skip
    if view.get("error"):
        console.print(f"  last error: {view['error']}", highlight=False)
    alive = "running" if a["alive"] else "NOT RUNNING"
    console.print(f"array: pid {a['pid']} {alive}, {a['tcp']}, {a['unix']}", highlight=False)
    pairs = Table(title="pairs", title_justify="left")
    for col in ("GROUP", "P-VOL", "S-VOL", "STATUS", "%", "MODE"):
        pairs.add_column(col, no_wrap=True)
    for r in a["pairs"]:
        pairs.add_row(str(r["group"]), r["pvol"], r["svol"], r["status"],
                      str(r["copy_percent"]), r["mode"])  # fmt: skip
    if a.get("pairs_error"):
        console.print(f"  pairs: {a['pairs_error']}", highlight=False)
    else:
        console.print(pairs)
    nodes = Table(title="nodes", title_justify="left")
    for col in ("NODE", "ROLE", "EPOCH", "FLAG", "PEERS", "ARRAY", "BUFFER", "VIEW", "PIDS", "IP"):
        nodes.add_column(col)
    for name, n in view["nodes"].items():
        peers = ", ".join(f"{p} {'up' if ok else 'DOWN'}" for p, ok in n["peers"].items())
        buffer = ", ".join(f"{e.get('device')}={e.get('ldev')}" for e in n["buffer"]) or "-"
        pids = f"agent {n['agent_pid']}{'' if n['agent_alive'] else ' (dead)'}"
        if n["attach_pid"]:
            pids += f", attach {n['attach_pid']}"
        connected = {True: "ok", False: "LOST", None: "-"}[n["array_connected"]]
        role = n["role"] if not n["error"] else f"{n['role']} ({n['error']})"
        view_text = "mounted" if n["mounted"] else "-"
        nodes.add_row(name, role, str(n["epoch"] or "-"), str(n["flag"] or "-"), peers or "-",
                      connected, buffer, view_text, pids, n["ip"])  # fmt: skip
    console.print(nodes)


def cmd_exec(args: argparse.Namespace) -> None:
    command = list(args.command)
    if "--" in command:  # options between NODE and -- are ours (argparse leaves them here)
        cut = command.index("--")
        ours, command = command[:cut], command[cut + 1 :]
        mini = argparse.ArgumentParser(prog="blockemu lab exec", add_help=False)
        mini.add_argument("--dir")
        parsed, unknown = mini.parse_known_args(ours)
        if unknown:
            raise ValueError(f"unknown option(s) before --: {' '.join(unknown)}")
        args.dir = parsed.dir or args.dir
    argv, env = labnode.exec_argv(_dir(args), args.member, command)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


def cmd_kill(args: argparse.Namespace) -> None:
    labnode.kill_node(_dir(args), args.node)


def cmd_stop_agent(args: argparse.Namespace) -> None:
    labnode.stop_agent(_dir(args), args.node)


def cmd_start(args: argparse.Namespace) -> None:
    labnode.start_node(_dir(args), args.node, timeout=args.timeout)


def cmd_partition(args: argparse.Namespace) -> None:
    labnode.partition(_dir(args), args.nodes, from_array=args.from_array)


def cmd_heal(args: argparse.Namespace) -> None:
    labnode.heal(_dir(args))


def cmd_down(args: argparse.Namespace) -> None:
    lab.down(_dir(args))


def _tcp(text: str, port: int) -> str:
    """``HOST`` (the lab's default *port*) or ``tcp:HOST:PORT``, checked."""
    if not text.startswith("tcp:") and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", text):
        raise ValueError(f"{text!r} is not an IPv4 address or host name (or tcp:HOST:PORT)")
    address = text if text.startswith("tcp:") else f"tcp:{text}:{port}"
    parse_address(address)  # ValueError: exit 2, with the reason
    return address


def cmd_render(args: argparse.Namespace) -> None:
    """Write a lab's configs with the generator the namespace lab uses (one generator, two
    labs): the Vagrant lab's provisioning runs this on every VM."""
    node_listen: dict[str, str] = {}
    for item in args.node:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise ValueError(f"--node {item!r}: write NAME=IP or NAME=tcp:HOST:PORT")
        if name in node_listen:
            raise ValueError(f"--node {name} given twice")
        node_listen[name] = _tcp(where, labstate.PEER_PORT)
    out = Path(args.out).resolve()  # the hooks log to an absolute path
    layout = labconfig.standard_layout(
        out,
        array_address=_tcp(args.array_address, labstate.ARRAY_PORT),
        node_listen=node_listen,
        pairs=args.pairs,
        reflection=args.reflection,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_misses=args.heartbeat_misses,
    )
    if args.member is not None:
        labconfig.member_files(layout, args.member)  # an unknown member: before writing
    if args.keys_from:
        try:
            keys = labconfig.read_keys(Path(args.keys_from), labconfig.lab_key_names(layout))
        except ValueError as exc:
            raise labstate.LabError(str(exc)) from None
        labconfig.write_layout_keys(layout, keys)
    else:
        labconfig.write_layout(layout)
    if args.member is not None:
        labconfig.prune_to_member(layout, args.member)
    files = labconfig.member_files(layout, args.member) if args.member else (
        labconfig.all_files(layout))  # fmt: skip
    print(f"rendered {len(files)} file(s) of {args.member or 'the whole lab'} in {out}: "
          f"array {layout.array_address}, "
          f"{', '.join(f'{n.id} {n.listen}' for n in layout.nodes)}, "
          f"{len(layout.pairs)} pair(s), reflection {layout.reflection}")  # fmt: skip


def cmd_demo(args: argparse.Namespace) -> None:
    from . import labdemo

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    bad = [p for p in policies if p not in REFLECTION_MODES]
    if bad or not policies:
        raise ValueError(f"--policies takes {', '.join(REFLECTION_MODES)}, not {args.policies!r}")
    try:
        databases = labdemo.choose_databases(args.db)
    except RuntimeError as exc:
        raise labstate.LabError(str(exc)) from None
    base = Path(args.dir) if args.dir else labstate.default_dir().with_name("blockemu-demo")
    results = labdemo.run_demo(base, policies, databases, out=lambda line: print(line, flush=True))
    table = Table(title="blockemu lab demo: takeover after a crash, with a backup split")
    for column in ("database", "reflection", "takeover", "DB answering", "S-VOL on node2",
                   "backup check", "P-VOL check", "as expected"):  # fmt: skip
        table.add_column(column)
    for r in results:
        table.add_row(
            r.db, r.policy,
            f"{r.takeover:.2f}s" if r.takeover is not None else "-",
            f"{r.answering:.2f}s" if r.answering is not None else "-",
            r.svol,
            (r.backup.detail if r.backup else "-"),
            (r.primary.detail if r.primary else "-"),
            "yes" if r.ok else "NO: " + "; ".join(r.failures),
        )  # fmt: skip
    out_console().print(table, highlight=False)
    for r in results:
        if r.timeline is not None:
            print(f"timeline ({r.db}, {r.policy}): {r.timeline}")
    if not all(r.ok for r in results):
        sys.exit(EXIT_CODES["error"])


def run(args: argparse.Namespace) -> None:
    """Run a lab subcommand; lab errors are one clear line and exit code 1."""
    try:
        args.lab_func(args)
    except (labstate.LabError, netns.NetnsError) as exc:
        err_console.print(f"[bold red]blockemu lab:[/] {exc}", highlight=False)
        sys.exit(EXIT_CODES["error"])
    except ValueError as exc:
        err_console.print(f"[bold red]blockemu lab:[/] {exc}", highlight=False)
        sys.exit(EXIT_CODES["usage"])


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    return parse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", metavar="DIR",
                        help=f"the lab's directory (default ${labstate.DIR_ENV}, else "
                        f"{labstate.DEFAULT_DIR})")  # fmt: skip
    fmt = argparse.RawDescriptionHelpFormatter
    labp = sub.add_parser(
        "lab",
        help="a whole lab on this machine: array + cluster nodes in network namespaces",
        description="An array and N cluster nodes (nodeagent + host view), each in its own "
        "network namespace, linked by a bridge on a private subnet that exists only inside "
        "the lab. Real TCP between real processes; the nodes' FUSE mounts are visible on the "
        "host. Needs root.",
        epilog=LAB_EPILOG,
        formatter_class=fmt,
    )
    lsub = labp.add_subparsers(dest="lab_command", required=True, metavar="ACTION")

    def add(name: str, func: Any, help_text: str, description: str) -> argparse.ArgumentParser:
        p = lsub.add_parser(name, parents=[common], help=help_text, description=description,
                            epilog=LAB_EPILOG, formatter_class=fmt)  # fmt: skip
        p.set_defaults(func=run, lab_func=func)
        return p

    up = add("up", cmd_up, "create and start a lab",
             "Create the namespaces and the bridge, write the configs, start the array, create "
             "the volumes and form the pairs, scan each node's buffer, start each node's agent "
             "(which mounts its host view), and wait until one node is active and the others "
             "standby. Prints one line per step with timings, then where everything is. A "
             "failure undoes everything.")  # fmt: skip
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    up.add_argument("--name", default="lab",
                    help="lab name, part of the namespace names be-NAME-* (default lab); two "
                    "labs side by side need different names, dirs and subnets")  # fmt: skip
    up.add_argument("--subnet", default=netns.DEFAULT_SUBNET,
                    help=f"private IPv4 subnet inside the lab (default {netns.DEFAULT_SUBNET}); "
                    "the array is .1, node i is .10+i")  # fmt: skip
    up.add_argument("--reflection", choices=REFLECTION_MODES, default="eager",
                    help="the nodes' S-VOL consistency protocol: eager (default), lazy (at "
                    "takeover) or off (standbys stay stale: the patent's failure)")  # fmt: skip
    up.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="pairs in the replica group labvg (P-VOLs 00:10.., S-VOLs 00:20..)",
    )
    up.add_argument(
        "--size",
        type=size_arg,
        default=256 << 20,
        help=f"size of each volume, sparse (default {format_size(256 << 20)})",
    )
    up.add_argument(
        "--mode",
        choices=["sync", "async", "deferred"],
        default="sync",
        help="pair mirroring mode (default sync)",
    )
    up.add_argument(
        "--heartbeat-interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="nodeagent heartbeat interval (default 0.5; nodeagent checks it)",
    )
    up.add_argument(
        "--heartbeat-misses",
        type=int,
        default=3,
        metavar="N",
        help="missed heartbeats before a peer is down (default 3)",
    )
    up.add_argument(
        "--timeout",
        type=_positive(float),
        default=60.0,
        metavar="SECONDS",
        help="how long each step may wait (default 60)",
    )
    st = add("status", cmd_status, "pairs, each node's role/epoch/flag/peers/buffer, mounts, PIDs",
             "Ask the array (over DIR/array.sock) for its pairs and each node's agent "
             "(`nodeagent status --json`, over its control socket) for its role, epoch, flag and "
             "peers; read each node's disk-info buffer.")  # fmt: skip
    st.add_argument("--json", action="store_true", help="machine-readable output")
    ex = add("exec", cmd_exec, "run a command inside a node's (or the array's) network",
             "Run COMMAND in the network namespace of NODE (or 'array') with nsenter --net, "
             "so mounts stay shared with the host. BLOCKEMU_ARRAY is set to the array's lab "
             "address; for a node also BLOCKEMU_HOST_BUFFER, BLOCKEMU_LAB_HOST and "
             "BLOCKEMU_LAB_KEY_FILE.")  # fmt: skip
    ex.add_argument("member", metavar="NODE", help="node1, node2, ... or array")
    ex.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                    help="the command and its arguments, after --")  # fmt: skip
    kl = add(
        "kill",
        cmd_kill,
        "crash a node: SIGKILL every process of it",
        "SIGKILL the node's agent, its host view (attach) and everything else in its "
        "network namespace, then release its dead FUSE mount (and loop devices on it).",
    )
    kl.add_argument("node")
    sa = add(
        "stop-agent",
        cmd_stop_agent,
        "stop a node's agent cleanly (SIGTERM)",
        "SIGTERM the agent: an active runs its stop hook; the host view is unmounted.",
    )
    sa.add_argument("node")
    sn = add(
        "start",
        cmd_start,
        "start a node's agent again (after kill or stop-agent)",
        "Start the node's agent; it rejoins as a standby if another node is active.",
    )
    sn.add_argument("node")
    sn.add_argument("--timeout", type=_positive(float), default=60.0, metavar="SECONDS")
    pt = add("partition", cmd_partition, "cut nodes off from the other nodes",
             "Cut NODE... off from the other nodes, both ways, in the lab's switch: packets "
             "between the two sides are silently dropped (connections time out). The cut nodes "
             "still see each other and, unless --from-array, the array. Replaces any earlier "
             "partition; `lab heal` removes it.")  # fmt: skip
    pt.add_argument("nodes", nargs="+", metavar="NODE")
    pt.add_argument(
        "--from-array",
        action="store_true",
        help="cut them off from the array too (a node losing its whole network)",
    )
    up.add_argument("--initial-split", action="store_true",
                    help="split the pairs before the hosts scan (a backup exists)")  # fmt: skip
    dm = add("demo", cmd_demo, "the story: a backup split, a crash, a takeover, per policy",
             "For each reflection policy, on a fresh 2-node lab: node1 runs a database on "
             "ext4 on its P-VOL(s), splits the group for a backup through nodeagent (Stage "
             "X/Y/Z shown), crashes (SIGKILL); node2 takes over, mounts the backup S-VOL and "
             "checks it, mounts the P-VOL, checks and resumes the database. With eager the "
             "backup works; with off node2 gets EIO on it (the patent's Fig. 2). Ends with a "
             "summary table and an SVG timeline per run; exits 1 if a run did not end as its "
             "policy predicts. Default --dir /var/tmp/blockemu-demo.")  # fmt: skip
    dm.add_argument("--policies", default="eager,off",
                    help="comma-separated reflection policies to run (default eager,off; "
                    "lazy is the third)")  # fmt: skip
    dm.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both",
                    help="database(s) to run (default both; postgres where installed)")  # fmt: skip
    add("heal", cmd_heal, "undo the partition", "Remove every partition filter.")
    add(
        "down",
        cmd_down,
        "stop and remove the lab; nothing left behind",
        "Stop every process of the lab by PID (agents first, gracefully, then the rest), "
        "unmount its mounts, detach loop devices backed by files under DIR, delete its "
        "namespaces and its registry entry. Idempotent; also cleans a half-built lab. Files "
        "in DIR are kept (logs, volumes); the next `lab up` on DIR replaces them.",
    )
    rd = lsub.add_parser(
        "render",
        help="write a lab's configs only (keys, hosts.toml, node.toml, HORCM, hooks)",
        description="Write the files `lab up` writes -- keys, the array's hosts.toml, each "
        "node's node.toml, HORCM files and hooks -- for the addresses given, with the same "
        "generator, and start nothing. The Vagrant lab (vagrant/) runs this on every VM with "
        "--keys-from (keys made once, shared) and --member (only that machine's files). "
        "Re-rendering rewrites the configs and keeps a node's buffer, state and event log.",
        epilog="example:\n  blockemu lab render --out /var/lib/blockemu/lab --array-address "
        "192.168.56.10 \\\n      --node node1=192.168.56.11 --node node2=192.168.56.12 "
        "--keys-from keys/ --member node1\n\nexit codes: 0 ok, 1 unusable keys, 2 usage",
        formatter_class=fmt,
    )
    rd.set_defaults(func=run, lab_func=cmd_render)
    rd.add_argument("--out", required=True, metavar="DIR", help="where to write (created)")
    rd.add_argument("--array-address", required=True, metavar="ADDR",
                    help=f"where the nodes reach the array: IP (port {labstate.ARRAY_PORT}) "
                    "or tcp:HOST:PORT")  # fmt: skip
    rd.add_argument("--node", action="append", required=True, metavar="NAME=ADDR",
                    help=f"a node and where its peers reach it: IP (port {labstate.PEER_PORT}) "
                    "or tcp:HOST:PORT; repeat in priority order (the first is preferred "
                    "as the active)")  # fmt: skip
    rd.add_argument("--pairs", type=int, default=1,
                    help="pairs in the replica group labvg (default 1)")  # fmt: skip
    rd.add_argument("--reflection", choices=REFLECTION_MODES, default="eager",
                    help="the nodes' S-VOL consistency protocol (default eager)")  # fmt: skip
    rd.add_argument("--heartbeat-interval", type=float, default=0.5, metavar="SECONDS",
                    help="default 0.5, as `lab up`")  # fmt: skip
    rd.add_argument("--heartbeat-misses", type=int, default=3, metavar="N",
                    help="default 3, as `lab up`")  # fmt: skip
    rd.add_argument("--keys-from", metavar="DIR",
                    help="use the keys DIR/cluster.key and DIR/NODE.key (all must exist) "
                    "instead of making new ones")  # fmt: skip
    rd.add_argument("--member", metavar="NAME",
                    help="keep only the files this machine needs: 'array' (hosts.toml, "
                    "the nodes' keys) or a node (its directory, its key, the cluster "
                    "key)")  # fmt: skip
