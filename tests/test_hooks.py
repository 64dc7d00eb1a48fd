"""Application hooks run as real executables (shell scripts written to tmp dirs)."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest
import trio

from formats.node_config import HookConfig
from nodeagent.events import EventLog
from nodeagent.hooks import STOP_FAILURE_POLICY, Hook, HookOutcome, HookResult, Hooks


def script(path: Path, body: str, *, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hooks.d"
    d.mkdir()
    return d


def dir_hooks(hooks_dir: Path, **kw: object) -> Hooks:
    config = HookConfig(directory=hooks_dir, cwd=hooks_dir.parent)
    return Hooks(config, node_id="node1", **kw)  # type: ignore[arg-type]


def gone(pid: int) -> bool:
    """No such process, or only its zombie (our init may not reap orphans)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return data[data.rfind(b")") + 2 :].split()[0] in (b"Z", b"X")


# -- outcomes ------------------------------------------------------------------------------------


async def test_success_captures_output_and_argv(hooks_dir: Path) -> None:
    path = script(hooks_dir / "start", 'echo "out $1"; echo "err line" >&2; exit 0\n')
    result = await dir_hooks(hooks_dir).run(Hook.START)
    assert result.outcome is HookOutcome.SUCCESS and result.ok and not result.escalates
    assert result.exit_code == 0
    assert result.stdout_tail == "out start\n"
    assert result.stderr_tail == "err line\n"
    assert result.command == [str(path), "start"]
    assert 0 < result.duration < 5


async def test_exit_7_is_not_running(hooks_dir: Path) -> None:
    script(hooks_dir / "monitor", "exit 7\n")
    script(hooks_dir / "stop", "exit 7\n")
    hooks = dir_hooks(hooks_dir)
    monitor = await hooks.run(Hook.MONITOR)
    assert monitor.outcome is HookOutcome.NOT_RUNNING and monitor.exit_code == 7
    assert not monitor.ok  # the application is down
    stop = await hooks.run(Hook.STOP)
    assert stop.outcome is HookOutcome.NOT_RUNNING
    assert stop.ok and not stop.escalates  # stopped is what stop wants


async def test_other_exit_codes_fail_and_a_failing_stop_escalates(hooks_dir: Path) -> None:
    script(hooks_dir / "start", "echo 'cannot bind' >&2; exit 1\n")
    script(hooks_dir / "stop", "exit 3\n")
    script(hooks_dir / "monitor", "kill -KILL $$\n")
    hooks = dir_hooks(hooks_dir)
    start = await hooks.run(Hook.START)
    assert start.outcome is HookOutcome.FAILED and start.exit_code == 1 and not start.ok
    assert not start.escalates
    assert start.describe().endswith("cannot bind") and "(exit 1)" in start.describe()
    stop = await hooks.run(Hook.STOP)
    assert stop.outcome is HookOutcome.FAILED and stop.escalates
    monitor = await hooks.run(Hook.MONITOR)
    assert monitor.outcome is HookOutcome.FAILED and monitor.exit_code == -signal.SIGKILL
    assert "releases NOTHING" in STOP_FAILURE_POLICY


async def test_missing_hook_counts_as_success(hooks_dir: Path, tmp_path: Path) -> None:
    for hooks in (dir_hooks(hooks_dir), Hooks(HookConfig(cwd=tmp_path), node_id="n")):
        for hook in Hook:
            result = await hooks.run(hook)
            assert result.outcome is HookOutcome.MISSING, hook
            assert result.ok and result.command is None and result.exit_code is None


async def test_not_executable_or_a_directory_is_an_error(hooks_dir: Path) -> None:
    script(hooks_dir / "start", "exit 0\n", mode=0o644)
    (hooks_dir / "stop").mkdir()
    (hooks_dir / "monitor").symlink_to(hooks_dir / "nowhere")
    hooks = dir_hooks(hooks_dir)
    start = await hooks.run(Hook.START)
    assert start.outcome is HookOutcome.ERROR and not start.ok
    assert "not executable: chmod +x" in start.stderr_tail
    stop = await hooks.run(Hook.STOP)
    assert stop.outcome is HookOutcome.ERROR and "is a directory" in stop.stderr_tail
    assert stop.escalates
    monitor = await hooks.run(Hook.MONITOR)
    assert monitor.outcome is HookOutcome.ERROR and "dangling" in monitor.stderr_tail


async def test_command_errors(tmp_path: Path) -> None:
    config = HookConfig(
        commands={
            "start": "no-such-program-blockemu --x",
            "stop": "echo 'unbalanced",
            "monitor": "./nothing-here.sh",
        },
        cwd=tmp_path,
    )
    hooks = Hooks(config, node_id="n")
    start = await hooks.run(Hook.START)
    assert start.outcome is HookOutcome.ERROR
    assert "no-such-program-blockemu" in start.stderr_tail
    assert start.command == ["no-such-program-blockemu", "--x", "start"]
    stop = await hooks.run(Hook.STOP)
    assert stop.outcome is HookOutcome.ERROR and "cannot split" in stop.stderr_tail
    monitor = await hooks.run(Hook.MONITOR)
    assert monitor.outcome is HookOutcome.ERROR
    assert monitor.command == [str(tmp_path / "nothing-here.sh"), "monitor"]


async def test_script_without_shebang_is_an_error(hooks_dir: Path) -> None:
    path = hooks_dir / "start"
    path.write_bytes(b"\x7fELF garbage")
    path.chmod(0o755)
    result = await dir_hooks(hooks_dir).run(Hook.START)
    assert result.outcome is HookOutcome.ERROR and "cannot run" in result.stderr_tail


# -- timeouts ------------------------------------------------------------------------------------


async def test_timeout_kills_the_hook_and_its_children(hooks_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script(hooks_dir / "start", f"sleep 60 &\necho $! > {pidfile}\necho started\nwait\n")
    hooks = dir_hooks(hooks_dir, timeouts={Hook.START: 0.5})
    t0 = time.monotonic()
    result = await hooks.run(Hook.START)
    assert result.outcome is HookOutcome.TIMEOUT and not result.ok
    assert result.exit_code is None
    assert result.stdout_tail == "started\n"
    assert 0.5 <= result.duration < 2.0  # SIGTERM was enough
    assert time.monotonic() - t0 < 2.0
    child = int(pidfile.read_text())
    assert gone(child), f"child {child} of the timed-out hook survived"


async def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(
    hooks_dir: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child.pid"
    # The ignored SIGTERM is inherited by the child, so both need the SIGKILL.
    script(
        hooks_dir / "stop",
        f"trap '' TERM\nsleep 60 &\necho $! > {pidfile}\nwhile :; do sleep 0.05; done\n",
    )
    result = await dir_hooks(hooks_dir, timeouts={Hook.STOP: 0.3}).run(Hook.STOP)
    assert result.outcome is HookOutcome.TIMEOUT and result.escalates
    assert 2.3 <= result.duration < 4.0  # timeout + KILL_GRACE
    child = int(pidfile.read_text())
    with trio.fail_after(2):
        while not gone(child):
            await trio.sleep(0.02)


async def test_children_that_outlive_sigterm_get_sigkill(hooks_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # The hook itself dies on SIGTERM; its child ignores it.
    script(hooks_dir / "start", f"(trap '' TERM; exec sleep 60) &\necho $! > {pidfile}\nwait\n")
    result = await dir_hooks(hooks_dir, timeouts={Hook.START: 0.3}).run(Hook.START)
    assert result.outcome is HookOutcome.TIMEOUT
    assert 2.3 <= result.duration < 4.0
    child = int(pidfile.read_text())
    with trio.fail_after(2):
        while not gone(child):
            await trio.sleep(0.02)


async def test_cancelling_the_caller_kills_the_hook_too(hooks_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script(hooks_dir / "monitor", f"sleep 60 &\necho $! > {pidfile}\nwait\n")
    hooks = dir_hooks(hooks_dir)
    with trio.move_on_after(0.5) as scope:
        await hooks.run(Hook.MONITOR)
    assert scope.cancelled_caught
    child = int(pidfile.read_text())
    with trio.fail_after(3):
        while not gone(child):
            await trio.sleep(0.02)


async def test_a_daemon_started_by_a_hook_survives_and_does_not_block(
    hooks_dir: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "daemon.pid"
    # Badly behaved: the daemon keeps the hook's stdout and stderr open.
    script(hooks_dir / "start", f"sleep 60 &\necho $! > {pidfile}\necho up\nexit 0\n")
    result = await dir_hooks(hooks_dir).run(Hook.START)
    daemon = int(pidfile.read_text())
    try:
        assert result.outcome is HookOutcome.SUCCESS and result.stdout_tail == "up\n"
        assert result.duration < 1.5  # not held up by the open pipes
        await trio.sleep(0.1)
        assert not gone(daemon), "a hook that exited in time must not have its children killed"
    finally:
        os.kill(daemon, signal.SIGKILL)


async def test_output_tail_is_bounded(hooks_dir: Path) -> None:
    script(hooks_dir / "start", "i=0\nwhile [ $i -lt 3000 ]; do echo line$i; i=$((i+1)); done\n")
    result = await dir_hooks(hooks_dir).run(Hook.START)
    assert result.outcome is HookOutcome.SUCCESS
    assert len(result.stdout_tail.encode()) == 4096
    assert result.stdout_tail.endswith("line2999\n")


def test_bad_timeouts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="monitor must be > 0"):
        Hooks(HookConfig(), node_id="n", timeouts={Hook.MONITOR: 0})


# -- calling convention --------------------------------------------------------------------------


async def test_argv_environment_and_cwd(
    hooks_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = tmp_path / "dump"
    script(
        hooks_dir / "role-change",
        f'{{ printf "%s\\n" "$@"; echo "--"; pwd; echo "--"; env; }} > {dump}\n',
    )
    monkeypatch.setenv("BLOCKEMU_TEST_INHERITED", "yes")
    monkeypatch.setenv("OCF_ROOT", "/opt/ocf")
    hooks = dir_hooks(hooks_dir, env={"EXTRA": "from Hooks(env=)"})
    result = await hooks.run(
        Hook.ROLE_CHANGE, role="active", epoch=4, group="G1", svols=["00:1A", "00:1B"]
    )
    assert result.outcome is HookOutcome.SUCCESS
    argv, cwd, env_text = dump.read_text().split("--\n")
    assert argv.splitlines() == ["role-change"]
    assert cwd.strip() == str(tmp_path)
    env = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line)
    assert env["BLOCKEMU_HOOK"] == "role-change"
    assert env["BLOCKEMU_NODE"] == "node1"
    assert env["BLOCKEMU_ROLE"] == "active"
    assert env["BLOCKEMU_EPOCH"] == "4"
    assert env["BLOCKEMU_GROUP"] == "G1"
    assert env["BLOCKEMU_SVOLS"] == "00:1A 00:1B"
    assert env["OCF_RESKEY_role"] == "active"
    assert env["OCF_RESKEY_epoch"] == "4"
    assert env["OCF_RESKEY_svols"] == "00:1A 00:1B"
    assert env["OCF_ROOT"] == "/opt/ocf"
    assert env["BLOCKEMU_TEST_INHERITED"] == "yes"
    assert env["EXTRA"] == "from Hooks(env=)"


async def test_hook_file_spellings(hooks_dir: Path) -> None:
    script(hooks_dir / "on_svol_usable", 'echo "$1"\n')
    script(hooks_dir / "svol_unusable", 'echo "$1"\n')
    hooks = dir_hooks(hooks_dir)
    usable = await hooks.run(Hook.SVOL_USABLE, group="G1")
    assert usable.outcome is HookOutcome.SUCCESS and usable.stdout_tail == "svol-usable\n"
    unusable = await hooks.run(Hook.SVOL_UNUSABLE, group="G1")
    assert unusable.outcome is HookOutcome.SUCCESS and unusable.stdout_tail == "svol-unusable\n"


async def test_commands_split_without_a_shell_relative_to_cwd(tmp_path: Path) -> None:
    prog = script(tmp_path / "bin" / "app.sh", 'printf "[%s]" "$@"\n')
    config = HookConfig(
        commands={"start": "bin/app.sh --name 'a b' $HOME", "on_role_change": "bin/app.sh"},
        cwd=tmp_path,
    )
    hooks = Hooks(config, node_id="n")
    start = await hooks.run(Hook.START)
    assert start.command == [str(prog), "--name", "a b", "$HOME", "start"]
    assert start.stdout_tail == "[--name][a b][$HOME][start]"
    role = await hooks.run(Hook.ROLE_CHANGE, role="standby")
    assert role.stdout_tail == "[role-change]"


async def test_hooks_run_one_at_a_time(hooks_dir: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    script(hooks_dir / "monitor", f'echo "in $1" >> {trace}; sleep 0.2; echo "out $1" >> {trace}\n')
    script(hooks_dir / "stop", f'echo "in $1" >> {trace}; echo "out $1" >> {trace}\n')
    hooks = dir_hooks(hooks_dir)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hooks.run, Hook.MONITOR)
        await trio.sleep(0.05)
        nursery.start_soon(hooks.run, Hook.STOP)
    assert trace.read_text().splitlines() == ["in monitor", "out monitor", "in stop", "out stop"]


async def test_hook_calls_go_to_the_event_log(hooks_dir: Path) -> None:
    script(hooks_dir / "start", "exit 0\n")
    events = EventLog(None, node_id="node1")
    hooks = dir_hooks(hooks_dir, events=events)
    await hooks.run(Hook.START)
    await hooks.run(Hook.STOP)  # MISSING: not logged
    [event] = events.recent()
    assert event["kind"] == "hook_call"
    assert (event["hook"], event["outcome"], event["exit_code"]) == ("start", "SUCCESS", 0)


async def test_bad_context(hooks_dir: Path) -> None:
    script(hooks_dir / "start", "exit 0\n")
    hooks = dir_hooks(hooks_dir)
    with pytest.raises(ValueError, match="identifier"):  # a programming error
        await hooks.run(Hook.START, **{"no-dash": "x"})
    result = await hooks.run(Hook.START, group="G\0")  # cannot be put in the environment
    assert result.outcome is HookOutcome.ERROR and "null" in result.stderr_tail


# -- an OCF resource agent, wrapped unchanged ----------------------------------------------------

OCF_DUMMY = r"""#!/bin/sh
# A minimal OCF resource agent in the style of ocf:heartbeat:Dummy.
: "${OCF_RESKEY_state:=${HA_RSCTMP:-/run/resource-agents}/Dummy.state}"
OCF_SUCCESS=0; OCF_ERR_GENERIC=1; OCF_ERR_UNIMPLEMENTED=3; OCF_NOT_RUNNING=7

meta_data() {
    cat <<END
<?xml version="1.0"?>
<resource-agent name="Dummy" version="1.0"><version>1.1</version>
<parameters><parameter name="state"><content type="string"/></parameter></parameters>
<actions><action name="start" timeout="20s"/><action name="stop" timeout="20s"/>
<action name="monitor" timeout="20s" interval="10s"/><action name="meta-data" timeout="5s"/>
</actions></resource-agent>
END
}
dummy_monitor() {
    [ -f "$OCF_RESKEY_state" ] && return $OCF_SUCCESS
    return $OCF_NOT_RUNNING
}
dummy_start() {
    dummy_monitor && return $OCF_SUCCESS
    touch "$OCF_RESKEY_state" || return $OCF_ERR_GENERIC
    echo "start by $BLOCKEMU_NODE" >> "$OCF_RESKEY_state.log"
    return $OCF_SUCCESS
}
dummy_stop() {
    dummy_monitor || return $OCF_SUCCESS
    rm -f "$OCF_RESKEY_state" || return $OCF_ERR_GENERIC
    return $OCF_SUCCESS
}
case $1 in
    meta-data) meta_data; exit $OCF_SUCCESS;;
    start) dummy_start;;
    stop) dummy_stop;;
    monitor) dummy_monitor;;
    *) exit $OCF_ERR_UNIMPLEMENTED;;
esac
exit $?
"""


async def test_an_ocf_agent_is_wrapped_unchanged(tmp_path: Path) -> None:
    agent = tmp_path / "resource.d" / "Dummy"
    agent.parent.mkdir()
    agent.write_text(OCF_DUMMY)
    agent.chmod(agent.stat().st_mode | stat.S_IXUSR)
    state = tmp_path / "dummy.state"
    line = f"env OCF_RESKEY_state={state} {agent}"
    config = HookConfig(
        commands={"start": line, "stop": line, "monitor": line, "role_change": line},
        cwd=tmp_path,
    )
    hooks = Hooks(config, node_id="node1")

    async def outcome(hook: Hook) -> HookOutcome:
        result: HookResult = await hooks.run(hook, role="active", epoch=1)
        return result.outcome

    assert await outcome(Hook.MONITOR) is HookOutcome.NOT_RUNNING
    assert await outcome(Hook.STOP) is HookOutcome.SUCCESS  # stop on stopped succeeds
    assert await outcome(Hook.START) is HookOutcome.SUCCESS
    assert await outcome(Hook.START) is HookOutcome.SUCCESS  # idempotent
    assert state.exists()
    assert await outcome(Hook.MONITOR) is HookOutcome.SUCCESS
    assert await outcome(Hook.STOP) is HookOutcome.SUCCESS
    assert await outcome(Hook.STOP) is HookOutcome.SUCCESS
    assert await outcome(Hook.MONITOR) is HookOutcome.NOT_RUNNING
    assert not state.exists()
    assert (tmp_path / "dummy.state.log").read_text() == "start by node1\n"
    # An action the agent does not implement: OCF_ERR_UNIMPLEMENTED (3) is a failure.
    assert await outcome(Hook.ROLE_CHANGE) is HookOutcome.FAILED
