"""The Vagrant lab (vagrant/), checked without booting a VM.

VMs cannot boot usefully on the CI machines, so the Vagrant lab is kept honest
by what can run here, for real:

* `vagrant validate` reads the Vagrantfile offline, with and without the
  vagrant-libvirt plugin, with its settings and with a bad one;
* `shellcheck` on the provisioning scripts;
* `systemd-analyze verify` on the units (with this venv's path in ExecStart,
  as the provisioning installs them when the venv is elsewhere);
* the provisioning's config rendering (render-configs.sh, on this venv's
  `blockemu`) gives, VM by VM, exactly the files the namespace lab's
  generator writes for the same addresses (one generator, two labs);
* `nodeagent` and `blockemu serve` accept what it renders, and the array
  provisioning (volumes.sh) forms the lab's pairs on a real array, twice
  (idempotent), which each node then scans with its own key.

Missing tools (vagrant, shellcheck, systemd-analyze) skip a test, except in
CI (BLOCKEMU_REQUIRE_PRIVILEGED=1), where they fail it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockemu import lab, labconfig
from blockemu.labstate import ARRAY_GROUP, ARRAY_PORT, LabOptions, LabState
from blockemu.netns import DEFAULT_SUBNET
from formats.hosts_config import load_hosts_config
from formats.node_config import load_node_config
from nodeagent.agent import EXIT_LEFT

from .conftest import REQUIRE_PRIVILEGED, ArrayProcess

REPO = Path(__file__).resolve().parent.parent
VAGRANT = REPO / "vagrant"
PROVISION = VAGRANT / "provision"
UNITS = VAGRANT / "systemd"
VENV = Path(sys.prefix)
BIN = VENV / "bin"
#: The venv path the units and scripts name (the VM's); replaced by ours to run here.
VM_VENV = "/opt/blockemu/.venv"


def require_tool(tool: str, package: str) -> str:
    """The tool's path; a skip when it is missing, a failure in CI."""
    found = shutil.which(tool)
    if found:
        return found
    message = f"`{tool}` is not installed (apt install {package})"
    if REQUIRE_PRIVILEGED:
        pytest.fail(f"{message}; BLOCKEMU_REQUIRE_PRIVILEGED=1: CI must run this check "
                    "(scripts/setup.sh installs it)")  # fmt: skip
    pytest.skip(message)


def run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})  # fmt: skip


# -- vagrant validate --------------------------------------------------------------------------


@pytest.fixture
def vagrant_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Vagrant's state and home in tmp_path: nothing is written into the repository."""
    before = sorted(p.name for p in VAGRANT.iterdir())
    yield {"VAGRANT_HOME": str(tmp_path / "vagrant.d"),
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
           "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_NO_COLOR": "1"}  # fmt: skip
    assert sorted(p.name for p in VAGRANT.iterdir()) == before, "vagrant wrote into vagrant/"


def validate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run(["vagrant", "validate", *args], env=env, cwd=VAGRANT)


def test_vagrant_validate(vagrant_env: dict[str, str]) -> None:
    require_tool("vagrant", "vagrant")
    # Offline, no box, whatever providers this machine has (none need to work here).
    done = validate(vagrant_env, "--ignore-provider")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated successfully" in done.stdout
    # Without any plugin (the libvirt provider block is guarded by has_plugin?).
    done = validate({**vagrant_env, "VAGRANT_NO_PLUGINS": "1"}, "--ignore-provider")
    assert done.returncode == 0, done.stdout + done.stderr
    # Every setting, with other values.
    settings = {"BLOCKEMU_NODES": "3", "BLOCKEMU_CPUS": "4", "BLOCKEMU_MEMORY": "2048",
                "BLOCKEMU_BOX": "local/debian12", "BLOCKEMU_NET": "10.77.0",
                "BLOCKEMU_PAIRS": "2", "BLOCKEMU_REFLECTION": "off",
                "BLOCKEMU_VOLUME_SIZE": "512M", "BLOCKEMU_PAIR_MODE": "async",
                "BLOCKEMU_LIBVIRT_DRIVER": "qemu"}  # fmt: skip
    done = validate({**vagrant_env, **settings}, "--ignore-provider")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [f"==> {m}:" in done.stdout for m in ("array", "node1", "node2", "node3")] == [True] * 4
    # A bad setting is refused, by name.
    done = validate({**vagrant_env, "BLOCKEMU_NODES": "0"}, "--ignore-provider")
    assert done.returncode != 0
    assert "BLOCKEMU_NODES" in done.stdout + done.stderr


def test_vagrant_validate_libvirt_provider(vagrant_env: dict[str, str]) -> None:
    """With the vagrant-libvirt plugin (Debian's vagrant-libvirt), the provider's settings
    are validated too; no libvirtd is needed for that."""
    require_tool("vagrant", "vagrant")
    plugins = run(["vagrant", "plugin", "list"], env=vagrant_env, cwd=VAGRANT)
    if "vagrant-libvirt" not in plugins.stdout:
        message = "the vagrant-libvirt plugin is not installed (apt install vagrant-libvirt)"
        if REQUIRE_PRIVILEGED:
            pytest.fail(f"{message}; BLOCKEMU_REQUIRE_PRIVILEGED=1: CI must run this check")
        pytest.skip(message)
    done = validate({**vagrant_env, "VAGRANT_DEFAULT_PROVIDER": "libvirt"})
    assert done.returncode == 0, done.stdout + done.stderr


#: Loads the Vagrantfile with a stand-in for Vagrant that records every configuration call
#: (machines, networks, provisioners) and keeps the triggers' ruby blocks, then runs the
#: key trigger twice (as two machines' `vagrant up` would) and prints what it saw as JSON.
VAGRANT_STUB = r"""
require "json"
$calls = []
$triggers = []
class Recorder
  def initialize(path) = @path = path
  def method_missing(name, *args, **kw, &blk)
    $calls << {path: @path, name: name, args: args, kw: kw}
    child = Recorder.new(@path + [name.to_s, *args.grep(String)])
    if name == :ruby then $triggers << blk
    elsif blk then blk.call(child)
    end
    child
  end
  def respond_to_missing?(*) = true
end
module Vagrant
  def self.require_version(*) = nil
  def self.has_plugin?(name) = ENV["STUB_PLUGINS"].to_s.split.include?(name)
  def self.configure(version) = yield(Recorder.new(["config"]))
end
load ARGV[0]
2.times { $triggers.each { |t| t.call(nil, nil) } }
puts JSON.generate({calls: $calls, lab_env: LAB_ENV, node_ips: NODE_IPS, array_ip: ARRAY_IP})
"""


def test_vagrantfile_plan_renders(tmp_path: Path) -> None:
    """The Vagrantfile's machines, IP plan, key trigger and provisioners, evaluated (with a
    stand-in for Vagrant), and render-configs.sh run with exactly what it passes."""
    ruby = require_tool("ruby", "ruby")
    vagrantfile = tmp_path / "vagrant" / "Vagrantfile"  # its key trigger writes next to it
    vagrantfile.parent.mkdir()
    shutil.copy(VAGRANT / "Vagrantfile", vagrantfile)
    (tmp_path / "stub.rb").write_text(VAGRANT_STUB)
    done = run([ruby, str(tmp_path / "stub.rb"), str(vagrantfile)],
               env={"BLOCKEMU_NODES": "3", "STUB_PLUGINS": "vagrant-libvirt"})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(done.stdout)
    calls = seen["calls"]
    assert seen["array_ip"] == "192.168.56.10"
    assert seen["node_ips"] == {f"node{i}": f"192.168.56.{10 + i}" for i in (1, 2, 3)}
    machines = {c["args"][0] for c in calls if c["name"] == "define"}
    assert machines == {"array", "node1", "node2", "node3"}
    ips = {c["path"][3]: c["kw"]["ip"] for c in calls
           if c["name"] == "network" and c["args"] == ["private_network"]}  # fmt: skip
    assert ips == {"array": seen["array_ip"], **seen["node_ips"]}
    assert {c["path"][3]: c["args"][0] for c in calls if c["name"] == "hostname="} == {
        m: m for m in machines}  # fmt: skip
    synced = [c for c in calls if c["name"] == "synced_folder" and c["args"][0] == ".."]
    assert synced[0]["args"][1] == seen["lab_env"]["BLOCKEMU_SRC"]
    assert synced[0]["kw"]["type"] == "rsync" and ".venv/" in synced[0]["kw"]["rsync__exclude"]
    providers = {c["args"][0] for c in calls if c["name"] == "provider"}
    assert providers == {"virtualbox", "libvirt"}
    # Provisioners: the scripts exist, run in this order, with the lab's environment.
    for machine in machines:
        steps = [c for c in calls if c["name"] == "provision" and c["path"][3] == machine]
        scripts = [c["kw"]["inline"].split("/provision/")[1].split() for c in steps]
        last = "array.sh" if machine == "array" else "node.sh"
        assert scripts == [["common.sh", machine], ["render-configs.sh", machine],
                           [last, machine]]  # fmt: skip
        assert all(c["kw"]["env"] == seen["lab_env"] for c in steps)
        assert all(os.access(PROVISION / s, os.X_OK) for s, _ in scripts)
    # Every input the scripts require is passed; everything passed is read.
    texts = {p.name: p.read_text() for p in PROVISION.glob("*.sh")}
    required = {v for t in texts.values() for v in re.findall(r"\$\{(BLOCKEMU_\w+):\?", t)}
    defaulted = set(re.findall(r"^(BLOCKEMU_\w+)=\$\{\1:-", texts["lib.sh"], re.M))
    passed = set(seen["lab_env"])
    assert required <= passed <= required | defaulted
    # The trigger's keys: made once (the second run kept them), private, in the format of
    # blockemu's generator, and what every VM's render reads.
    keys = vagrantfile.parent / ".lab" / "keys"
    assert sorted(p.name for p in keys.iterdir()) == [
        "cluster.key", "node1.key", "node2.key", "node3.key"]  # fmt: skip
    assert all(re.fullmatch(rb"[0-9a-f]{64}", p.read_bytes()) for p in keys.iterdir())
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    here = {"BLOCKEMU_VENV": str(VENV), "BLOCKEMU_BIN": str(BIN), "BLOCKEMU_SRC": str(REPO),
            "BLOCKEMU_KEYS": str(keys)}  # fmt: skip
    for member in sorted(machines):  # each VM, its own machine
        vm = {"BLOCKEMU_LAB_DIR": str(tmp_path / member / "lab"),
              "BLOCKEMU_ETC": str(tmp_path / member / "etc")}  # fmt: skip
        done = render_configs(member, {**seen["lab_env"], **here, **vm})
        assert done.returncode == 0, done.stdout + done.stderr
    config = load_node_config(tmp_path / "node2" / "lab" / "node2" / "node.toml")
    assert config.listen == "tcp:192.168.56.12:7500"
    assert config.array.address == f"tcp:192.168.56.10:{ARRAY_PORT}"
    assert [(p.id, p.address) for p in config.peers] == [
        ("node1", "tcp:192.168.56.11:7500"), ("node3", "tcp:192.168.56.13:7500")]  # fmt: skip
    node3 = load_node_config(tmp_path / "node3" / "lab" / "node3" / "node.toml")
    assert config.priority > node3.priority
    hosts = load_hosts_config(tmp_path / "array" / "lab" / "hosts.toml")
    array_env = read_env_file(tmp_path / "array" / "etc" / "lab.env")
    assert array_env["BLOCKEMU_ARRAY_LISTEN"] == config.array.address
    assert [h.name for h in hosts.hosts] == [
        "node1", "node2", "node3"]  # fmt: skip


# -- shellcheck, systemd-analyze ---------------------------------------------------------------


def test_shellcheck_provisioning_scripts() -> None:
    shellcheck = require_tool("shellcheck", "shellcheck")
    scripts = sorted(str(p) for p in PROVISION.glob("*.sh"))
    assert len(scripts) >= 5
    done = run([shellcheck, "--external-sources", "--source-path=SCRIPTDIR",
                "--severity=style", *scripts])  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for script in scripts:
        if not script.endswith("lib.sh"):
            text = Path(script).read_text()
            assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text


def units_here(directory: Path) -> list[Path]:
    """The units as provisioning installs them where the venv is not /opt/blockemu/.venv."""
    directory.mkdir()
    out = []
    for unit in sorted(UNITS.glob("*.service")):
        path = directory / unit.name
        path.write_text(unit.read_text().replace(VM_VENV, str(VENV)))
        out.append(path)
    return out


def unit_settings(path: Path) -> dict[str, list[str]]:
    """KEY -> values (in order) of a unit file, continuation lines joined."""
    text = re.sub(r"\\\n\s*", "", path.read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    for tool in ("blockemu", "nodeagent"):
        assert (BIN / tool).exists(), f"{BIN / tool} is missing: pip install -e . first"
    units = units_here(tmp_path / "units")
    assert [u.name for u in units] == ["blockemu-array.service", "blockemu-attach.service",
                                       "nodeagent.service"]  # fmt: skip
    done = run([analyze, "verify", *map(str, units)],
               env={"SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_LOG_TARGET": "console"})  # fmt: skip
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
        done.stdout + done.stderr
    )


def test_systemd_unit_policies() -> None:
    names = ("blockemu-array", "blockemu-attach", "nodeagent")
    array, attach, agent = (unit_settings(UNITS / f"{n}.service") for n in names)
    for unit in (array, attach, agent):
        assert unit["Wants"] == unit["After"] == ["network-online.target"]
        assert unit["Restart"] == ["on-failure"]
        assert unit["KillMode"] == ["mixed"]  # SIGTERM to the main process only: clean unmounts
        assert unit["EnvironmentFile"] == ["/etc/blockemu/lab.env"]
        assert unit["WantedBy"] == ["multi-user.target"]
    # A node that left the cluster (fenced) stays down until an operator looks.
    assert str(EXIT_LEFT) in agent["RestartPreventExitStatus"][0].split()
    # nodeagent runs its own `blockemu attach` on the same view: never both.
    assert agent["Conflicts"] == ["blockemu-attach.service"]
    assert attach["Conflicts"] == ["nodeagent.service"]
    assert agent["ExecStart"][0].startswith(f"{VM_VENV}/bin/nodeagent run --config ")
    assert attach["ExecStart"][0].startswith(f"{VM_VENV}/bin/blockemu attach ")
    assert "--foreground" in attach["ExecStart"][0]
    serve = array["ExecStart"][0]
    assert serve.startswith(f"{VM_VENV}/bin/blockemu serve ") and "--hosts " in serve


# -- the config rendering: one generator, two labs ---------------------------------------------


@dataclass(frozen=True)
class Inputs:
    nodes: int = 2
    pairs: int = 1
    reflection: str = "eager"
    heartbeat_interval: float = 0.5
    heartbeat_misses: int = 3


Files = dict[str, tuple[bytes, int]]


def snapshot(directory: Path) -> Files:
    return {str(p.relative_to(directory)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


def namespace_lab_configs(directory: Path, inputs: Inputs) -> tuple[LabState, Files]:
    """What `blockemu lab up` writes in its "configs" step, for these inputs."""
    opts = LabOptions(directory=directory, nodes=inputs.nodes, pairs=inputs.pairs,
                      reflection=inputs.reflection, heartbeat_interval=inputs.heartbeat_interval,
                      heartbeat_misses=inputs.heartbeat_misses)  # fmt: skip
    state = LabState("lab", directory, DEFAULT_SUBNET, labconfig.lab_node_ids(inputs.nodes))
    labconfig.write_layout(lab._layout(state, opts))
    return state, snapshot(directory)


def script_env(root: Path, state: LabState, inputs: Inputs, keys: Path) -> dict[str, str]:
    """The environment the Vagrantfile gives the scripts, for the namespace lab's addresses,
    with this machine's paths."""
    topo = state.topology()
    return {
        "BLOCKEMU_SRC": str(REPO),
        "BLOCKEMU_VENV": str(VENV),
        "BLOCKEMU_BIN": str(BIN),
        "BLOCKEMU_KEYS": str(keys),
        "BLOCKEMU_LAB_DIR": str(state.directory),
        "BLOCKEMU_ETC": str(root / "etc"),
        "BLOCKEMU_ARRAY_ROOT": str(root / "array-root"),
        "BLOCKEMU_ADMIN_SOCK": str(root / "admin.sock"),
        "BLOCKEMU_ARRAY_IP": str(topo.ip("array")),
        "BLOCKEMU_NODE_PLAN": " ".join(f"{n}={topo.ip(n)}" for n in topo.nodes),
        "BLOCKEMU_PAIRS": str(inputs.pairs),
        "BLOCKEMU_REFLECTION": inputs.reflection,
        "BLOCKEMU_HEARTBEAT_INTERVAL": str(inputs.heartbeat_interval),
        "BLOCKEMU_HEARTBEAT_MISSES": str(inputs.heartbeat_misses),
    }


def render_configs(member: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run(["bash", str(PROVISION / "render-configs.sh"), member], env=env)


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))  # fmt: skip


@dataclass
class Rendered:
    state: LabState
    expected: Files
    keys: Path
    env: dict[str, str]
    members: dict[str, Files]
    env_files: dict[str, dict[str, str]]
    kept: Path  # one member's render, kept for the checks that use the files


def render_every_member(root: Path, inputs: Inputs, keep: str = "") -> Rendered:
    """Each VM's render-configs.sh run, one after the other in the same directory (the
    path the namespace lab wrote to: its hooks name their log by absolute path)."""
    lab_dir = root / "lab"
    state, expected = namespace_lab_configs(lab_dir, inputs)
    lab_dir.rename(root / "expected")
    keys = root / "expected" / "keys"  # the same keys, as the Vagrant host shares them
    env = script_env(root, state, inputs, keys)
    members, env_files = {}, {}
    kept = root / "kept"
    for member in ["array", *state.nodes]:
        done = render_configs(member, env)
        assert done.returncode == 0, done.stdout + done.stderr
        members[member] = snapshot(lab_dir)
        env_files[member] = read_env_file(root / "etc" / "lab.env")
        if member == keep:
            lab_dir.rename(kept)
        else:
            shutil.rmtree(lab_dir)
    return Rendered(state, expected, keys, env, members, env_files, kept)


@pytest.mark.parametrize("inputs", [Inputs(), Inputs(nodes=3, pairs=2, reflection="off",
                                                     heartbeat_interval=0.2, heartbeat_misses=5)],
                         ids=["defaults", "3-nodes-2-pairs-off"])  # fmt: skip
def test_render_configs_is_the_namespace_labs_generator(tmp_path: Path, inputs: Inputs) -> None:
    r = render_every_member(tmp_path.resolve(), inputs)
    union: Files = {}
    for member, files in r.members.items():
        # Each VM gets its own part: exactly the member's files, nothing of the others'.
        assert sorted(files) == sorted(str(p) for p in labconfig.member_files(
            labconfig.standard_layout(r.state.directory, array_address="tcp:x:1",
                                      node_listen={n: "tcp:x:1" for n in r.state.nodes}),
            member))  # fmt: skip
        for name, content in files.items():
            assert union.setdefault(name, content) == content, f"{name} differs between VMs"
    # Together: byte for byte (keys included: they come from one place) and mode for mode,
    # what the namespace lab writes.
    assert sorted(union) == sorted(r.expected)
    for name in r.expected:
        assert union[name] == r.expected[name], name
    # The environment file the units read: every ${VAR} they use is set for their member.
    for unit, member in (("blockemu-array", "array"), ("nodeagent", "node1"),
                         ("blockemu-attach", "node1")):  # fmt: skip
        used = set(re.findall(r"\$\{(\w+)\}", (UNITS / f"{unit}.service").read_text()))
        assert used <= set(r.env_files[member]), f"{unit}: {used - set(r.env_files[member])}"
    node1 = r.env_files["node1"]
    assert node1["BLOCKEMU_ARRAY"] == f"tcp:{r.env['BLOCKEMU_ARRAY_IP']}:{ARRAY_PORT}"
    assert node1["BLOCKEMU_NODE_CONFIG"] == str(r.state.node_config("node1"))
    assert r.env_files["array"]["BLOCKEMU_ARRAY_LISTEN"] == node1["BLOCKEMU_ARRAY"]


def test_render_configs_rerun_keeps_runtime_files(tmp_path: Path) -> None:
    r = render_every_member(tmp_path.resolve(), Inputs(), keep="node2")
    lab_dir = r.state.directory
    r.kept.rename(lab_dir)
    runtime = {"node2/buffer": b"buffer", "node2/state": b"state", "node2/events.jsonl": b"{}\n"}
    for name, data in runtime.items():
        (lab_dir / name).write_bytes(data)
    (lab_dir / "node2" / "node.toml").write_text("edited by hand\n")
    done = render_configs("node2", r.env)
    assert done.returncode == 0, done.stdout + done.stderr
    again = snapshot(lab_dir)
    assert {k: again[k][0] for k in runtime} == runtime
    assert {k: v for k, v in again.items() if k not in runtime} == r.members["node2"]
    assert "wrote" not in done.stdout  # the environment file was already right


def test_render_configs_needs_the_shared_keys(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    state, _ = namespace_lab_configs(root / "lab", Inputs())
    shutil.rmtree(root / "lab")
    (root / "keys").mkdir()
    env = script_env(root, state, Inputs(), root / "keys")
    done = render_configs("node1", env)
    assert done.returncode == 1
    assert "cluster.key" in done.stderr and "node1.key" in done.stderr
    assert not (root / "lab" / "node1" / "node.toml").exists()  # nothing half-rendered
    done = render_configs("node9", {**env, "BLOCKEMU_KEYS": str(root)})
    assert done.returncode == 2 and "no member 'node9'" in done.stderr


def blockemu(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "blockemu"), *args], env=env)


def test_rendered_configs_run(tmp_path: Path, short_dir: Path) -> None:
    """nodeagent and `blockemu serve` accept what each VM renders; volumes.sh forms the
    lab's pairs on a real array (twice: nothing changes); every node scans them with its
    own key, and only its own key works."""
    r = render_every_member(tmp_path.resolve(), Inputs(pairs=2), keep="array")
    array_dir = r.kept
    for node in r.state.nodes:
        node_dir = tmp_path / f"vm-{node}"
        node_dir.mkdir()
        for name, (data, mode) in r.members[node].items():
            path = node_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(mode)
        config = load_node_config(node_dir / node / "node.toml")  # every problem at once
        assert config.id == node and config.reflection == "eager"
        assert config.array.address == r.env_files[node]["BLOCKEMU_ARRAY"]
        assert [p.id for p in config.peers] == [n for n in r.state.nodes if n != node]
    # The nodeagent command itself: the config passes (exit 2 would be a config problem);
    # no agent runs, so it is unreachable.
    done = run([str(BIN / "nodeagent"), "status", "--config",
                str(tmp_path / "vm-node1" / "node1" / "node.toml")])  # fmt: skip
    assert done.returncode == 3, done.stderr
    hosts = load_hosts_config(array_dir / "hosts.toml")
    assert [h.name for h in hosts.hosts] == r.state.nodes
    assert all(h.ldevs == {0x10, 0x11, 0x20, 0x21} and h.replication for h in hosts.hosts)

    served = ArrayProcess(tmp_path / "root", short_dir / "a.sock", tmp_path / "array.log",
                          extra_args=["--hosts", str(array_dir / "hosts.toml")])  # fmt: skip
    served.start()
    try:
        env = {**r.env, "BLOCKEMU_ARRAY": str(served.unix), "BLOCKEMU_VOLUME_SIZE": "16M"}
        for attempt in range(2):
            done = run(["bash", str(PROVISION / "volumes.sh")], env=env)
            assert done.returncode == 0, done.stdout + done.stderr
            assert ("exists: kept" in done.stdout) == (attempt == 1), done.stdout
        shown = blockemu("pair", "display", "--group", str(ARRAY_GROUP), "--json",
                         "--array", str(served.unix))  # fmt: skip
        pairs = json.loads(shown.stdout)["pairs"]
        assert [(p["pvol"], p["svol"], p["status"]) for p in pairs] == [
            ("00:10", "00:20", "PAIR"), ("00:11", "00:21", "PAIR")]  # fmt: skip
        for node in r.state.nodes:
            key = tmp_path / f"vm-{node}" / "keys" / f"{node}.key"
            done = blockemu("host", "scan", "--array", str(served.tcp), "--host", node,
                            "--key-file", str(key), "--buffer", str(tmp_path / f"{node}.buf"),
                            "--json")  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert [d["ldev"] for d in json.loads(done.stdout)["devices"]] == ["00:10", "00:11"]
        wrong = tmp_path / "vm-node1" / "keys" / "node1.key"
        done = blockemu("vol", "list", "--array", str(served.tcp), "--host", "node2",
                        "--key-file", str(wrong))  # fmt: skip
        assert done.returncode == 13, done.stderr
    finally:
        served.stop()
