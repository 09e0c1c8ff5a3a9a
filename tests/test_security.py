"""Security: who may reach the node's capabilities, and what a module's capabilities reach.

* the TCP endpoint refuses every client that cannot prove the operator's token
  (wrong token, no token, silent client, another connection's bytes replayed);
* a unix endpoint is a 0600 socket in a 0700 directory (test_cli.py checks the default);
* a module reaches only what it holds: another module's protocol ids, streams
  and data channel are out of its reach.
"""

from __future__ import annotations

import os
import socket
import stat
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from logos_p2p import _auth
from logos_p2p.client import connect
from logos_p2p.errors import AuthenticationFailed, ProtocolInUse

from .conftest import eventually, node_status, run_aio
from .support import peer as p
from .support.impostor import NOBODY, impostor_socket, needs_root
from .support.nodeproc import start_node
from .support.relay import start_relay

PROTO = "/sec/1.0.0"


async def info_with(rpc: str, **kwargs: Any) -> str:
    async def ask() -> str:
        async with connect(rpc, name="sec-probe", **kwargs) as n:
            return (await n.info()).peer_id

    return await run_aio(ask)


async def auth_failures(node: Any) -> int:
    return int((await node_status(node.rpc))["authFailures"])


@pytest.fixture
def tcp_node(node_factory):
    node = node_factory(rpc="tcp:127.0.0.1:0")
    assert node.token_file
    return node


def token_of(node: Any) -> str:
    return Path(node.token_file).read_text()


def modes(path: str) -> tuple[int, int, int]:
    """(file mode, its owner, its directory's mode)"""
    info = Path(path).stat()
    return stat.S_IMODE(info.st_mode), info.st_uid, stat.S_IMODE(Path(path).parent.stat().st_mode)


def host_port(rpc: str) -> tuple[str, int]:
    """(host, port) of a tcp: or tls: address."""
    host, _, port = rpc.partition(":")[2].rpartition(":")
    return host, int(port)


# -- the TCP endpoint -----------------------------------------------------------------------------------


async def test_the_tcp_token_is_a_private_file_and_the_right_token_gets_in(tcp_node):
    assert modes(tcp_node.token_file) == (0o600, os.getuid(), 0o700)
    token = token_of(tcp_node).strip()
    assert len(token) == 64  # 32 random bytes, hex
    assert await info_with(tcp_node.rpc, token=token) == tcp_node.peer_id
    assert await auth_failures(tcp_node) == 0


async def test_wrong_and_missing_tokens_are_refused_before_any_capability(tcp_node, monkeypatch, tmp_path):
    with pytest.raises(AuthenticationFailed, match="refused"):
        await info_with(tcp_node.rpc, token="not-the-token-of-this-node")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # no default token file to find
    monkeypatch.delenv(_auth.TOKEN_ENV, raising=False)
    with pytest.raises(AuthenticationFailed, match="needs its token"):
        await info_with(tcp_node.rpc)
    monkeypatch.undo()
    assert await auth_failures(tcp_node) == 2  # the second: no answer at all, cut at once by the client
    [line] = [ln for ln in tcp_node.log().splitlines() if "wrong token proof" in ln]
    assert "refused an RPC client from 127.0.0.1" in line


async def test_a_token_in_the_environment_or_a_token_file_is_found(tcp_node, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv(_auth.TOKEN_ENV, token_of(tcp_node))
    assert await info_with(tcp_node.rpc) == tcp_node.peer_id
    monkeypatch.delenv(_auth.TOKEN_ENV)
    monkeypatch.setenv(_auth.TOKEN_FILE_ENV, tcp_node.token_file)
    assert await info_with(tcp_node.rpc) == tcp_node.peer_id


async def test_replaying_another_connections_bytes_gets_nothing(tcp_node, nursery):
    """A recorded, successful session replayed byte for byte is refused: the node's nonce differs."""
    host, port = host_port(tcp_node.rpc)
    record, done = bytearray(), trio.Event()
    relay_port = await start_relay(nursery, partial(trio.open_tcp_stream, host, port), sent=record, ended=done)
    assert await info_with(f"tcp:127.0.0.1:{relay_port}") == tcp_node.peer_id  # the genuine session
    with trio.fail_after(5):
        await done.wait()
    assert len(record) > 64  # the proof and then Cap'n Proto messages

    replay = await trio.open_tcp_stream(host, port)
    await replay.send_all(bytes(record))
    answer = bytearray()
    with trio.fail_after(_auth.AUTH_TIMEOUT + 2):
        try:
            while data := await replay.receive_some(65536):
                answer += data
        except trio.BrokenResourceError:  # a reset: the node closed with our bytes unread
            pass
    await replay.aclose()
    assert bytes(answer[: len(_auth.MAGIC)]) == _auth.MAGIC
    assert len(answer) == _auth.HELLO_SIZE  # the hello, then the door shut: no proof, no capability
    assert await auth_failures(tcp_node) == 1


async def test_a_client_that_never_speaks_is_cut_and_others_are_served_meanwhile(node_factory):
    # 20 silent clients and the served one share 127.0.0.1: above the default per-address cap
    tcp_node = node_factory("--max-handshakes-per-ip", "32", rpc="tcp:127.0.0.1:0")
    host, port = host_port(tcp_node.rpc)
    silent = [socket.create_connection((host, port)) for _ in range(20)]
    try:
        token = token_of(tcp_node)
        assert await info_with(tcp_node.rpc, token=token) == tcp_node.peer_id
        started = trio.current_time()
        for sock in silent:
            sock.setblocking(False)
        with trio.fail_after(_auth.AUTH_TIMEOUT + 3):
            for sock in silent:
                hello = b""
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    try:
                        data = sock.recv(4096)
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        break
                    hello += data
                assert len(hello) == _auth.HELLO_SIZE
        assert trio.current_time() - started < _auth.AUTH_TIMEOUT + 2
    finally:
        for sock in silent:
            sock.close()

    async def all_counted() -> bool:
        return await auth_failures(tcp_node) == 20

    await eventually(all_counted)


def test_a_token_file_others_can_read_is_refused(tmp_path):
    token = tmp_path / "token"
    token.write_text("a" * 64)
    token.chmod(0o644)
    with pytest.raises(RuntimeError) as info:
        start_node(tmp_path / "n", "--token-file", str(token), rpc="tcp:127.0.0.1:0")
    assert "chmod 600" in str(info.value)


def test_status_over_tcp_needs_the_token_file(tcp_node, monkeypatch, tmp_path):
    from .test_cli import run_cli

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    refused = run_cli("status", "--rpc", tcp_node.rpc)
    assert refused.returncode == 1 and "needs its token" in refused.stderr
    assert "Traceback" not in refused.stderr
    ok = run_cli("status", "--rpc", tcp_node.rpc, "--token-file", tcp_node.token_file)
    assert ok.returncode == 0 and f'"peerId": "{tcp_node.peer_id}"' in ok.stdout


# -- capabilities are the authority ---------------------------------------------------------------------


async def test_a_module_cannot_take_or_touch_another_modules_protocols_or_streams(node, peer, modules):
    a = await modules(node, data_path="socket", name="a")
    b = await modules(node, name="b")
    await b.call("register_holder", "h", [PROTO])
    with pytest.raises(ProtocolInUse):
        await a.call("register_holder", "h", [PROTO])
    with pytest.raises(ProtocolInUse):  # sharing needs both to share
        await a.call("register_holder", "h", [PROTO], True)

    stream = await peer.open(node.addr, [PROTO])
    key = (await b.event("stream"))["key"]
    victim = await b.stream(key).attr("id")
    assert await a.call("forge_channel_reset", victim) is True  # a stream id is not authority

    await stream.write(b"still mine")
    assert await b.stream(key).read_exactly(10) == b"still mine"
    await b.stream(key).write(b"yes")
    assert await p.read_exactly(stream, 3) == b"yes"
    status = await node_status(node.rpc)
    assert status["resets"] == []
    [mod_b] = [m for m in status["modules"] if m["name"] == "b"]
    assert (mod_b["registrations"], mod_b["inboundStreams"]) == (1, 1)


async def test_a_data_channel_token_works_once(node):
    """The token Node.dataChannel returns opens one channel; a second use is shut out."""
    from logos_p2p._schema import load

    rpc = load()

    def channel(path: str, token: bytes) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(5)
        sock.connect(path)
        sock.send(rpc.ChannelMessage.new_message(hello=token).to_bytes())
        return sock

    async def scenario() -> tuple[str, bytes]:
        async with connect(node.rpc, name="tok", data_path="push") as n:
            offer = await n._cap.dataChannel()
            path, token = offer.path, bytes(offer.token)
            first = channel(path, token)
            # prove the first channel is open: an open request with a bad protocol id is answered on it
            ask = {"request": 7, "peerId": node.peer_id, "protocols": ["no-slash"], "addrs": [], "timeoutMs": 1000}
            first.send(rpc.ChannelMessage.new_message(open=ask).to_bytes())
            with rpc.ChannelMessage.from_bytes(first.recv(65536)) as answer:
                failed = f"{answer.which()} {answer.openFailed.request} {answer.openFailed.error}"
            second = channel(path, token)
            try:
                return failed, second.recv(1)
            finally:
                first.close()
                second.close()

    failed, second_read = await run_aio(scenario)
    assert failed.startswith("openFailed 7 ") and "[logos-p2p:invalidArgument]" in failed
    assert second_read == b""  # the node hung up on the replayed token


# -- the local endpoint: nobody can squat or impersonate the node -------------------------------------


@needs_root
async def test_a_socket_served_by_another_user_is_refused_by_the_client(tmp_path):
    """Another user made the socket directory first and listens in the node's place."""
    async with impostor_socket() as path:
        with pytest.raises(AuthenticationFailed, match=f"runs as uid {NOBODY}"):
            await info_with(f"unix:{path}")
        with pytest.raises(AuthenticationFailed, match=f"runs as uid {NOBODY}"):  # trusting another uid instead
            await info_with(f"unix:{path}", node_uid=4242)


def test_the_node_refuses_symlinked_socket_directories_and_token_files(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(RuntimeError, match="symlink"):
        start_node(tmp_path / "n1", rpc=f"unix:{tmp_path / 'link'}/node.sock")
    # the default directory, planted as a symlink to a directory the user owns
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    (runtime / "logos-p2p").symlink_to(real)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with pytest.raises(RuntimeError, match="symlink"):
        start_node(tmp_path / "n2", rpc=f"unix:{runtime / 'logos-p2p'}/node.sock")
    token = tmp_path / "token-real"
    token.write_text("b" * 64)
    token.chmod(0o600)
    (tmp_path / "token").symlink_to(token)
    with pytest.raises(RuntimeError, match="symlink"):
        start_node(tmp_path / "n3", "--token-file", str(tmp_path / "token"), rpc="tcp:127.0.0.1:0")


def test_a_stale_socket_is_taken_over_and_another_users_is_not(node_factory, tmp_path):
    place = tmp_path / "place"
    place.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(place / "node.sock"))
    stale.close()  # the file stays; nobody listens (a node that was killed)
    node = node_factory(rpc=f"unix:{place / 'node.sock'}")
    assert node.rpc == f"unix:{place / 'node.sock'}"
    node.kill()
    if os.getuid() == 0:
        os.chown(place / "node.sock", NOBODY, NOBODY)
        with pytest.raises(RuntimeError, match=f"belongs to uid {NOBODY}"):
            start_node(tmp_path / "n2", rpc=f"unix:{place / 'node.sock'}")


def test_a_new_token_file_is_whole_and_private_at_once(tmp_path):
    path = tmp_path / "token"
    token = _auth.node_token(path)
    assert len(token) == 64 and stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert _auth.node_token(path) == token  # kept, not rewritten
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no temporary file left behind
