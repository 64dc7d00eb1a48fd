"""Host groups (LUN masking) and host authentication.

Three layers: the sans-IO handshake (blockemu.auth), the hosts config parser
(formats.hosts_config), and a real `blockemu serve --hosts` process over
real unix and TCP sockets, from the client API and from the shell.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from blockemu import auth
from blockemu.address import Address, parse_address
from blockemu.client import open_client
from blockemu.errors import (
    AdminOnly,
    AuthenticationFailed,
    AuthenticationRequired,
    BadRequest,
    NoSuchVolume,
    VolumeMasked,
)
from formats.hosts_config import (
    MIN_KEY_SIZE,
    HostsConfigError,
    load_hosts_config,
    parse_hosts_config,
)
from formats.wire import Frame, FrameReader, Op, Status, encode_frame, encode_json

from .conftest import ArrayProcess

MiB = 1 << 20
KEY = b"k" * 16 + b"-node1-secret"
OTHER_KEY = b"o" * 16 + b"-node2-secret"


# -- the handshake, sans IO --------------------------------------------------------


def handshake(
    server_key: bytes | None, client_key: bytes, host: str = "node1"
) -> tuple[auth.ClientHandshake, auth.Challenge, dict[str, str]]:
    """Run HELLO and AUTH between the two halves; the array's AUTH answer (or Refused)."""
    client = auth.ClientHandshake(host, client_key, "tcp:array:7400")
    challenge = auth.Challenge.new(auth.parse_hello(client.hello()))
    body = client.auth(challenge.answer())
    return client, challenge, challenge.verify(server_key, body)


def test_good_key_authenticates_both_sides() -> None:
    client, challenge, answer = handshake(KEY, KEY)
    client.verify(answer)  # the array proved it knows the key too
    assert challenge.host == "node1"
    assert len(challenge.server_nonce) == auth.NONCE_SIZE != 0
    assert challenge.client_nonce == client.client_nonce != challenge.server_nonce


def test_the_key_never_travels() -> None:
    client = auth.ClientHandshake("node1", KEY, "a")
    challenge = auth.Challenge.new(auth.parse_hello(client.hello()))
    bodies = [client.hello(), challenge.answer(), client.auth(challenge.answer())]
    wire = b"".join(encode_json(b) for b in bodies)
    assert KEY not in wire and KEY.hex().encode() not in wire


def test_wrong_key_is_refused() -> None:
    with pytest.raises(auth.Refused, match="wrong key"):
        handshake(KEY, OTHER_KEY)


def test_unknown_host_is_refused() -> None:
    with pytest.raises(auth.Refused, match="unknown host"):
        handshake(None, KEY, host="stranger")


def test_another_hosts_key_is_refused() -> None:
    """node2's key does not make node2 node1: the host id is inside the MAC."""
    client = auth.ClientHandshake("node1", OTHER_KEY, "a")
    challenge = auth.Challenge.new(auth.parse_hello(client.hello()))
    with pytest.raises(auth.Refused, match="wrong key"):
        challenge.verify(KEY, client.auth(challenge.answer()))
    # and a MAC made for node2 does not pass as node1's
    mac = auth.client_mac(KEY, "node2", challenge.client_nonce, challenge.server_nonce)
    with pytest.raises(auth.Refused):
        challenge.verify(KEY, {"mac": mac.hex()})


def test_replay_from_another_session_fails_both_ways() -> None:
    # A recorded session...
    old_client, old_challenge, old_answer = handshake(KEY, KEY)
    old_auth = {"mac": auth.client_mac(KEY, "node1", old_client.client_nonce,
                                       old_challenge.server_nonce).hex()}  # fmt: skip
    # ...replayed to the array: same HELLO, but the array picks a fresh server nonce.
    new_challenge = auth.Challenge.new(auth.parse_hello(old_client.hello()))
    assert new_challenge.server_nonce != old_challenge.server_nonce
    with pytest.raises(auth.Refused, match="wrong key"):
        new_challenge.verify(KEY, old_auth)
    # ...replayed to a host by an impostor array: old server nonce and old answer.
    client = auth.ClientHandshake("node1", KEY, "tcp:impostor:7400")
    client.auth(old_challenge.answer())
    with pytest.raises(AuthenticationFailed, match="could not prove it knows host node1's key"):
        client.verify(old_answer)


@given(index=st.integers(0, auth.MAC_SIZE - 1), bit=st.integers(0, 7))
def test_any_tampered_mac_fails(index: int, bit: int) -> None:
    client = auth.ClientHandshake("node1", KEY, "tcp:array:7400")
    challenge = auth.Challenge.new(auth.parse_hello(client.hello()))
    body = client.auth(challenge.answer())
    answer = challenge.verify(KEY, body)

    def flip(hex_mac: str) -> dict[str, str]:
        mac = bytearray.fromhex(hex_mac)
        mac[index] ^= 1 << bit
        return {"mac": mac.hex()}

    with pytest.raises(auth.Refused, match="wrong key"):
        challenge.verify(KEY, flip(body["mac"]))
    with pytest.raises(AuthenticationFailed, match="its answer does not match"):
        client.verify(flip(answer["mac"]))


def test_client_and_server_macs_differ() -> None:
    """The labels keep the array's proof from passing as the host's, and back."""
    cn, sn = os.urandom(32), os.urandom(32)
    assert auth.client_mac(KEY, "h", cn, sn) != auth.server_mac(KEY, "h", cn, sn)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "HELLO needs a host id"),
        ({"host": "x" * 65}, "at most 64"),
        ({"host": "h", "client_nonce": "zz"}, "client_nonce is not hex"),
        ({"host": "h", "client_nonce": "00" * 8}, "must be 32 bytes, not 8"),
    ],
)
def test_malformed_hello(body: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        auth.parse_hello(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [(None, "mac is missing"), ({"mac": "xyz"}, "not hex"), ({"mac": "00"}, "must be 32 bytes")],
)
def test_malformed_auth_is_refused(body: object, reason: str) -> None:
    challenge = auth.Challenge.new(auth.Hello("node1", os.urandom(32)))
    with pytest.raises(auth.Refused, match=reason):
        challenge.verify(KEY, body)


def test_client_refuses_an_array_that_does_not_authenticate() -> None:
    client = auth.ClientHandshake("node1", KEY, "unix:/run/a.sock")
    with pytest.raises(AuthenticationFailed, match="runs without --hosts"):
        client.auth(None)  # an array without a hosts config answers HELLO with nothing


# -- the hosts config ----------------------------------------------------------------


def write_keys(directory: Path, **keys: bytes) -> None:
    (directory / "keys").mkdir(exist_ok=True)
    for name, key in keys.items():
        (directory / "keys" / f"{name}.key").write_bytes(key)


def test_good_config(tmp_path: Path) -> None:
    write_keys(tmp_path, node1=b"  " + KEY + b"\n")
    absolute = tmp_path / "elsewhere.key"
    absolute.write_bytes(OTHER_KEY)
    (tmp_path / "hosts.toml").write_text(
        f"""
[hosts.node1]
key_file = "keys/node1.key"
ldevs = ["00:10", "00:20-00:2F", "01:00-01:00"]

[hosts.node-2]
key_file = "{absolute}"
ldevs = []
"""
    )
    config = load_hosts_config(tmp_path / "hosts.toml")
    node1 = config.host("node1")
    assert node1 is not None
    assert node1.key == KEY  # whitespace stripped
    assert node1.key_file == tmp_path / "keys" / "node1.key"  # relative to the config file
    assert node1.ldevs == {0x10, 0x100} | set(range(0x20, 0x30))
    assert node1.describe_ldevs() == "00:10, 00:20-00:2F, 01:00"
    node2 = config.host("node-2")
    assert node2 is not None and node2.key == OTHER_KEY and node2.ldevs == frozenset()
    assert node2.describe_ldevs() == "none"
    assert config.host("NODE1") is None  # ids are exact
    assert KEY.decode() not in repr(config)  # keys stay out of logs and tracebacks


GOOD_HOST = '[hosts.ok]\nkey_file = "keys/ok.key"\nldevs = ["00:01"]\n'


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("colour = 1\n" + GOOD_HOST, "colour: ", "unknown key"),
        (GOOD_HOST + "ldev = 1\n", "hosts.ok.ldev: ", "did you mean 'ldevs'?"),
        ('[hosts.a]\nldevs = ["00:01"]\n', "hosts.a: ", "key_file is missing"),
        ('[hosts.a]\nkey_file = "keys/none.key"\nldevs = []\n', "hosts.a.key_file: ",
         "No such file or directory"),
        ('[hosts.a]\nkey_file = "keys"\nldevs = []\n', "hosts.a.key_file: ", "cannot read"),
        ('[hosts.a]\nkey_file = "keys/short.key"\nldevs = []\n', "hosts.a.key_file: ",
         f"holds 5 bytes (whitespace stripped); a key needs at least {MIN_KEY_SIZE}"),
        ('[hosts.a]\nkey_file = "keys/ok.key"\n', "hosts.a: ", "ldevs is missing"),
        ('[hosts.a]\nkey_file = "keys/ok.key"\nldevs = "00:01"\n', "hosts.a.ldevs: ",
         "must be a list"),
        ('[hosts.a]\nkey_file = "keys/ok.key"\nldevs = ["00:01", "0G:00"]\n',
         "hosts.a.ldevs[1]: ", "bad LDEV '0G:00'"),
        ('[hosts.a]\nkey_file = "keys/ok.key"\nldevs = ["00:2F-00:20"]\n', "hosts.a.ldevs[0]: ",
         "ends before it starts; write it low to high (00:20-00:2F)"),
        ('[hosts.a]\nkey_file = "keys/ok.key"\nldevs = [16]\n', "hosts.a.ldevs[0]: ",
         "not a string"),
        (GOOD_HOST + GOOD_HOST, "hosts.ok: ", "duplicate host"),
        (GOOD_HOST + GOOD_HOST.replace("ok]", "OK]").replace("ok.key", "ok2.key"),
         "hosts.OK: ", "duplicate host: 'OK' and 'ok' differ only in case"),
        (GOOD_HOST + GOOD_HOST.replace("ok]", "twin]"), "hosts.twin.key_file: ",
         "same key as host 'ok'"),
        (GOOD_HOST.replace("ok]", '"bad id"]'), 'hosts.bad id: ', "bad host id"),
        ("[hosts.a]\n", "hosts.a: ", "key_file is missing"),
        ("hosts = 3\n", "hosts: ", "no hosts defined"),
        ("", "hosts: ", "no hosts defined"),
        ("[hosts.a\n", "not valid TOML", "line 1"),
    ],
)  # fmt: skip
def test_each_config_error(tmp_path: Path, text: str, where: str, message: str) -> None:
    write_keys(tmp_path, ok=KEY, ok2=OTHER_KEY, short=b" short \n")
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    with pytest.raises(HostsConfigError) as info:
        load_hosts_config(path)
    problem = next(p for p in info.value.problems if message in p)
    assert problem.startswith(f"{path}: {where}")  # the file and the key path
    assert problem in str(info.value)


def test_all_config_errors_are_reported_together(tmp_path: Path) -> None:
    write_keys(tmp_path, short=b"tiny")
    text = """
typo = true
[hosts.node1]
key_file = "keys/short.key"
ldevs = ["00:10", "nope"]
[hosts.node2]
ldevs = ["00:30-00:20"]
colour = "red"
"""
    with pytest.raises(HostsConfigError) as info:
        parse_hosts_config(text, tmp_path / "hosts.toml")
    problems = info.value.problems
    assert [p.split(": ")[1] for p in problems] == [
        "typo",
        "hosts.node1.key_file",
        "hosts.node1.ldevs[1]",
        "hosts.node2.colour",
        "hosts.node2",
        "hosts.node2.ldevs[0]",
    ]
    assert str(info.value).startswith(f"hosts config {tmp_path / 'hosts.toml'} has 6 problems")


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(HostsConfigError, match="cannot read the hosts config"):
        load_hosts_config(tmp_path / "missing.toml")


# -- a real array with a hosts config -------------------------------------------------


@dataclass
class Secured:
    array: ArrayProcess
    config: Path
    key_files: dict[str, Path]

    @property
    def tcp(self) -> Address:
        assert self.array.tcp is not None
        return self.array.tcp

    def key(self, host: str) -> bytes:
        return self.key_files[host].read_bytes().strip()

    def log(self) -> str:
        return self.array.log.read_text()


HOSTS_TOML = """
[hosts.node1]
key_file = "keys/node1.key"
ldevs = ["00:10", "00:20-00:2F"]

[hosts.node2]
key_file = "keys/node2.key"
ldevs = ["00:11"]
"""


@pytest.fixture
def secured(tmp_path: Path, short_dir: Path) -> Iterator[Secured]:
    write_keys(tmp_path, node1=os.urandom(24).hex().encode() + b"\n", node2=os.urandom(32))
    config = tmp_path / "hosts.toml"
    config.write_text(HOSTS_TOML)
    proc = ArrayProcess(
        tmp_path / "secured-root", short_dir / "s.sock", tmp_path / "secured.log",
        extra_args=["--hosts", str(config)],
    )  # fmt: skip
    proc.start()
    try:
        yield Secured(proc, config, {h: tmp_path / "keys" / f"{h}.key" for h in ("node1", "node2")})
    finally:
        proc.stop()


async def make_volumes(secured: Secured) -> dict[int, bytes]:
    """As the administrator (unix socket, no HELLO): volumes in and out of node1's group."""
    async with open_client(secured.array.unix) as admin:
        return {ldev: (await admin.create(ldev, MiB)).pvid for ldev in (0x10, 0x11, 0x20)}


async def test_tcp_without_authentication_is_refused(secured: Secured) -> None:
    await make_volumes(secured)
    async with open_client(secured.tcp) as client:
        with pytest.raises(AuthenticationRequired, match="--host ID --key-file FILE"):
            await client.list_volumes()
        with pytest.raises(AuthenticationRequired):
            await client.request(Frame(99, 0))  # even unknown ops: nothing is answered
        with pytest.raises(AuthenticationRequired):
            await client.flush(0x10, bytes(16))
        # naming a host is not proving it
        with pytest.raises(AuthenticationRequired):
            await client.hello("node1")
    with pytest.raises(AuthenticationRequired):
        async with open_client(secured.tcp, host="node1"):
            pass


def raw_handshake(addr: Address, host: str, mac: bytes | None) -> tuple[list[Frame], bool]:
    """HELLO then AUTH with *mac* (None: the right one is unknowable, send garbage) over a
    bare socket; the frames answered, and whether the array closed the connection."""
    s = socket.create_connection((addr.host, addr.port), timeout=5)
    reader = FrameReader()
    frames: list[Frame] = []

    def receive(until: int) -> bool:
        while len(frames) < until:
            chunk = s.recv(65536)
            if not chunk:
                return True
            reader.feed(chunk)
            while (f := reader.next_frame()) is not None:
                frames.append(f)
        return False

    try:
        hello = {"host": host, "client_nonce": os.urandom(32).hex()}
        s.sendall(encode_frame(Frame(Op.HELLO, 1, payload=encode_json(hello))))
        receive(1)
        auth_body = {"mac": (mac or os.urandom(32)).hex()}
        s.sendall(encode_frame(Frame(Op.AUTH, 2, payload=encode_json(auth_body))))
        closed = receive(99)  # until EOF; a timeout means the array kept it open
    except TimeoutError:
        closed = False
    finally:
        s.close()
    return frames, closed


async def test_refused_hosts_are_logged_and_disconnected(secured: Secured) -> None:
    pvids = await make_volumes(secured)
    # unknown host: answered AUTH_FAILED, then the array hangs up
    frames, closed = await trio.to_thread.run_sync(raw_handshake, secured.tcp, "mallory", None)
    assert [f.status for f in frames] == [Status.OK, Status.AUTH_FAILED]
    assert "'mallory' could not be authenticated" in frames[1].message()
    assert closed
    # known host, wrong key: the same answer (the prober learns nothing), the same hang-up
    frames, closed = await trio.to_thread.run_sync(raw_handshake, secured.tcp, "node1", None)
    assert [f.status for f in frames] == [Status.OK, Status.AUTH_FAILED] and closed
    with pytest.raises(AuthenticationFailed, match="'node1' could not be authenticated"):
        async with open_client(secured.tcp, host="node1", key=secured.key("node2")):
            pass
    # the log names the peer, the claimed host and the reason
    log = secured.log()
    assert "authentication as host 'mallory' refused: unknown host" in log
    assert "authentication as host 'node1' refused: wrong key" in log
    assert "tcp:127.0.0.1:" in log
    # ...and the array keeps serving everybody else
    async with open_client(secured.tcp, host="node1", key=secured.key("node1")) as node1:
        assert await node1.read(0x10, pvids[0x10], 0, 4) == bytes(4)
    async with open_client(secured.array.unix) as admin:
        assert len((await admin.list_volumes())[0]) == 3


async def test_authenticated_host_sees_its_group_only(secured: Secured) -> None:
    pvids = await make_volumes(secured)
    async with open_client(secured.tcp, host="node1", key=secured.key("node1")) as node1:
        # I/O on its own LDEV
        await node1.write(0x10, pvids[0x10], 0, b"mine", fua=True)
        await node1.flush(0x10, pvids[0x10])
        assert await node1.read(0x10, pvids[0x10], 0, 4) == b"mine"
        assert (await node1.show(0x20)).pvid == pvids[0x20]
        assert await node1.read_pvid(0x20) == pvids[0x20]
        await node1.reserve(0x10)
        assert await node1.preempt(0x10) == "node1"
        await node1.release(0x10)
        with pytest.raises(NoSuchVolume):  # in its group, not created
            await node1.show(0x21)
        # LIST shows its LDEVs only
        headers, broken = await node1.list_volumes()
        assert sorted(h.ldev for h in headers) == [0x10, 0x20] and broken == {}
        # everything on another host's LDEV is masked, existing or not
        masked = [
            partial(node1.read, 0x11, pvids[0x11], 0, 4),
            partial(node1.write, 0x11, pvids[0x11], 0, b"x"),
            partial(node1.flush, 0x11, pvids[0x11]),
            partial(node1.discard, 0x11, pvids[0x11], 0, 512),
            partial(node1.show, 0x11),
            partial(node1.read_pvid, 0x11),
            partial(node1.reserve, 0x11),
            partial(node1.release, 0x11),
            partial(node1.preempt, 0x11),
            partial(node1.show, 0x99),  # does not exist: MASKED too, so hosts cannot probe
        ]
        for call in masked:
            with pytest.raises(VolumeMasked, match=r"LDEV 00:(11|99) is masked from host 'node1'"):
                await call()
        # management is the administrator's
        admin_only = [
            partial(node1.create, 0x21, MiB),
            partial(node1.delete, 0x20),
            partial(node1.pair_create, "00:10", "00:20"),
            partial(node1.pair_display),
        ]
        for call in admin_only:
            with pytest.raises(AdminOnly, match="for the array administrator"):
                await call()
        with pytest.raises(BadRequest, match="already authenticated"):
            await node1.hello("node2")
        assert await node1.read(0x10, pvids[0x10], 0, 4) == b"mine"  # still fine
    log = secured.log()
    assert "authenticated as host 'node1' (LDEVs 00:10, 00:20-00:2F)" in log
    # masked access is logged once per connection and LDEV
    assert log.count("host 'node1' refused READ on LDEV 00:11: not in its host group") == 1
    assert log.count("on LDEV 00:11: not in its host group") == 1
    assert log.count("on LDEV 00:99: not in its host group") == 1
    async with open_client(secured.tcp, host="node2", key=secured.key("node2")) as node2:
        assert [h.ldev for h in (await node2.list_volumes())[0]] == [0x11]
        assert await node2.read(0x11, pvids[0x11], 0, 1) == b"\0"


async def test_unix_administrator_manages_everything(secured: Secured) -> None:
    pvids = await make_volumes(secured)
    async with open_client(secured.array.unix) as admin:
        await admin.create(0x12, MiB)
        rows = await admin.pair_create("00:10", "00:12", split="steady")
        assert rows[0]["pvol"] == "00:10"
        assert len(await admin.pair_display()) == 1
        await admin.pair_command(Op.PAIR_DELETE, {"pvol": "00:10"})
        await admin.write(0x11, pvids[0x11], 0, b"adm")
        await admin.delete(0x12)
    # the administrator may name a host (reservations) without a key on the unix socket
    async with open_client(secured.array.unix, host="node2") as as_node2:
        await as_node2.reserve(0x20)  # not node2's group, but this is the administrator
        await as_node2.release(0x20)
    # a unix client that authenticates is that host, masked like on TCP
    async with open_client(secured.array.unix, host="node2", key=secured.key("node2")) as node2:
        assert [h.ldev for h in (await node2.list_volumes())[0]] == [0x11]
        with pytest.raises(VolumeMasked):
            await node2.read(0x10, pvids[0x10], 0, 1)
        with pytest.raises(AdminOnly):
            await node2.delete(0x11)


async def test_client_refuses_an_array_that_cannot_prove_the_key(
    array: ArrayProcess, secured: Secured
) -> None:
    # An array without --hosts answers HELLO without a challenge.
    assert array.tcp is not None
    with pytest.raises(AuthenticationFailed, match=r"does not authenticate hosts"):
        async with open_client(array.tcp, host="node1", key=KEY):
            pass
    # The right array, the wrong key on the host's side: the array refuses first.
    with pytest.raises(AuthenticationFailed):
        async with open_client(secured.tcp, host="node1", key=OTHER_KEY):
            pass

    # An impostor that challenges properly but does not know the key.
    async def impostor(stream: trio.SocketStream) -> None:
        reader = FrameReader()
        while data := await stream.receive_some(65536):
            reader.feed(data)
            while (f := reader.next_frame()) is not None:
                body = {"server_nonce": os.urandom(32).hex(), "mac": os.urandom(32).hex()}
                await stream.send_all(encode_frame(Frame(f.op, f.tag, payload=encode_json(body))))

    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_tcp, impostor, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        addr = parse_address(f"tcp:127.0.0.1:{port}")
        with pytest.raises(
            AuthenticationFailed,
            match=rf"the array at {addr} could not prove it knows host node1's key",
        ):
            async with open_client(addr, host="node1", key=KEY):
                pass
        nursery.cancel_scope.cancel()


# -- from the shell ---------------------------------------------------------------------


def blockemu(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BLOCKEMU_ARRAY"}
    return subprocess.run(
        [sys.executable, "-m", "blockemu", *args], capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip


async def test_cli_host_options_and_exit_codes(secured: Secured) -> None:
    await make_volumes(secured)
    tcp = ["--array", str(secured.tcp)]
    node1 = [*tcp, "--host", "node1", "--key-file", str(secured.key_files["node1"])]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return blockemu(*args)

    listed = await trio.to_thread.run_sync(run, "vol", "list", "--json", *node1)
    assert listed.returncode == 0, listed.stderr
    assert '"00:10"' in listed.stdout and '"00:11"' not in listed.stdout
    cases = [
        (("vol", "list", *tcp), 13, "authenticates hosts"),
        (("vol", "list", *tcp, "--host", "node1",
          "--key-file", str(secured.key_files["node2"])), 13, "could not be authenticated"),
        (("vol", "show", "00:11", *node1), 14, "masked from host 'node1'"),
        (("vol", "delete", "00:10", *node1), 13, "for the array administrator"),
        (("vol", "list", *tcp, "--key-file", str(secured.key_files["node1"])), 2,
         "--key-file needs --host"),
        (("vol", "list", *tcp, "--host", "node1", "--key-file", str(secured.config.parent)), 2,
         "cannot read key file"),
    ]  # fmt: skip
    for args, code, message in cases:
        done = await trio.to_thread.run_sync(run, *args)
        assert (done.returncode, message in done.stderr) == (code, True), (args, done.stderr)


def test_serve_refuses_a_bad_hosts_config(tmp_path: Path) -> None:
    (tmp_path / "hosts.toml").write_text(
        '[hosts.node1]\nkey_file = "keys/none.key"\nldevs = ["00:10", "bad"]\nextra = 1\n'
    )
    done = blockemu(
        "serve", "--root", str(tmp_path / "root"), "--listen", f"unix:{tmp_path}/s.sock",
        "--hosts", str(tmp_path / "hosts.toml"),
    )  # fmt: skip
    assert done.returncode == 2
    for part in ("3 problems", "hosts.node1.extra", "hosts.node1.key_file", "hosts.node1.ldevs[1]"):
        assert part in done.stderr
    assert not (tmp_path / "root").exists()  # refused before touching anything
