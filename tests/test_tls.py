"""Modules on other machines: the TLS endpoint, and everyone it must refuse.

A ``tls:`` node serves modules over TLS 1.3 with the token exchange inside it; clients
pin its certificate by fingerprint, or check it against a CA. Refused, each with a typed
error while the node serves on: a wrong pin, no pin, a wrong token, a plain-TCP client,
stalled handshakes, a relay that terminates TLS with a certificate of its own. A relay
that only records the bytes sees neither the token nor a stream's payload (over ``tcp:``
it sees the payload: the control). Mutual TLS admits clients by certificate instead.
"""

from __future__ import annotations

import socket
import ssl
from functools import partial

import pytest
import trio

from logos_p2p import _auth, _tls
from logos_p2p.errors import AuthenticationFailed, StreamReset

from .conftest import eventually, node_status
from .support import certs
from .support import peer as p
from .support.modproc import start_module
from .support.relay import start_relay
from .test_security import auth_failures, host_port, info_with, token_of

PROTO = "/tls-test/1.0.0"
SECRET = b"the payload no relay may read " * 64


@pytest.fixture
def tls_node(node_factory, monkeypatch):
    """A node on tls:, its fingerprint and token where its clients (this process's and
    the module processes') look for them."""
    node = node_factory(rpc="tls:127.0.0.1:0")
    assert node.tls_fingerprint.startswith("sha256:") and node.token_file
    monkeypatch.setenv(_tls.FINGERPRINT_ENV, node.tls_fingerprint)
    monkeypatch.setenv(_auth.TOKEN_FILE_ENV, node.token_file)
    return node


# -- a module over TLS ----------------------------------------------------------------------------


@pytest.mark.parametrize("data_path", ["push", "pull"])  # a module on another machine has no data channel
async def test_a_module_over_tls_serves_and_opens_streams(tls_node, peer, modules, data_path):
    module = await modules(tls_node)
    assert await module.call("register_echo", "e", [PROTO]) == [PROTO]
    stream = await peer.open(tls_node.addr, [PROTO])
    await stream.write(SECRET)
    await stream.close_write()
    assert await p.read_all(stream) == SECRET
    peer.serve_echo("/echo/1.0.0")
    await module.call("open_stream", "s", peer.peer_id, ["/echo/1.0.0"], [peer.addr], 10)
    s = module.stream("s")
    await s.write(b"outbound over tls")
    await s.close_write()
    assert await s.read_all() == b"outbound over tls"
    [mod] = (await node_status(tls_node.rpc))["modules"]
    assert mod["bytesIn"] == len(SECRET) + 17 and mod["bytesOut"] == len(SECRET) + 17


@pytest.mark.parametrize("data_path", ["push"])
async def test_a_module_killed_or_dropping_a_stream_over_tls_is_a_reset_at_the_peer(tls_node, peer, modules, data_path):
    module = await modules(tls_node)
    incoming = peer.serve(PROTO)
    await module.call("open_stream", "o", peer.peer_id, [PROTO], [peer.addr], 10)
    dropped = await incoming.receive()
    await module.call("drop", "o")  # forgotten without a close: the capability is released
    with pytest.raises(StreamReset):
        await p.read_all(dropped)
    await module.call("register_holder", "h", [PROTO])
    held = await peer.open(tls_node.addr, [PROTO])
    await module.event("stream")
    module.kill()
    with pytest.raises(StreamReset):
        await p.read_all(held)


# -- who is refused ---------------------------------------------------------------------------------


async def test_wrong_and_missing_pins_and_tokens_are_refused_and_the_node_serves_on(tls_node, monkeypatch):
    rpc, token = tls_node.rpc, token_of(tls_node)
    with pytest.raises(AuthenticationFailed, match="not the pinned"):
        await info_with(rpc, fingerprint="sha256:" + "ab" * 32)
    with pytest.raises(AuthenticationFailed, match="refused this client's token"):
        await info_with(rpc, token="not-the-token-of-this-node")
    monkeypatch.delenv(_tls.FINGERPRINT_ENV)
    with pytest.raises(AuthenticationFailed, match="needs the node's certificate fingerprint"):
        await info_with(rpc, token=token)
    # the fingerprint as openssl prints it (colons, upper case) pins the same certificate
    openssl_style = ":".join(f"{b:02X}" for b in bytes.fromhex(tls_node.tls_fingerprint.removeprefix("sha256:")))
    assert await info_with(rpc, token=token, fingerprint=f"SHA256:{openssl_style}") == tls_node.peer_id
    monkeypatch.setenv(_tls.FINGERPRINT_ENV, tls_node.tls_fingerprint)
    # the wrong pin (the client hung up after the handshake) and the wrong token; a client
    # without a pin does not connect at all
    assert await auth_failures(tls_node) == 2


async def test_plain_tcp_clients_and_stalled_handshakes_are_cut_while_others_are_served(node_factory, monkeypatch):
    node = node_factory("--max-handshakes-per-ip", "32", rpc="tls:127.0.0.1:0")
    monkeypatch.setenv(_tls.FINGERPRINT_ENV, node.tls_fingerprint)
    monkeypatch.setenv(_auth.TOKEN_FILE_ENV, node.token_file)
    host, port = host_port(node.rpc)
    silent = [socket.create_connection((host, port)) for _ in range(10)]  # not a byte of TLS
    half = [socket.create_connection((host, port)) for _ in range(5)]
    for sock in half:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
    try:
        started = trio.current_time()
        with pytest.raises(AuthenticationFailed, match="connect with tls:"):  # it waits for a hello
            await info_with(f"tcp:{host}:{port}", timeout=1)
        assert await info_with(node.rpc) == node.peer_id  # served while they stall
        with trio.fail_after(_auth.AUTH_TIMEOUT + 3):
            for sock in silent + half:
                sock.setblocking(False)
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    try:
                        if not sock.recv(4096):
                            break
                    except ConnectionResetError:
                        break
        assert trio.current_time() - started < _auth.AUTH_TIMEOUT + 2
    finally:
        for sock in silent + half:
            sock.close()

    async def all_counted() -> bool:
        return await auth_failures(node) >= 16  # the silent, the half-open and the tcp: client

    await eventually(all_counted)


async def test_a_relay_with_a_certificate_of_its_own_is_refused(tls_node, nursery, tmp_path):
    """A man in the middle that terminates TLS (its own certificate) and speaks TLS to the node."""
    relay_cert = certs.self_signed(tmp_path, "relay")
    relay_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    relay_ctx.load_cert_chain(relay_cert.cert, relay_cert.key)
    to_node = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    to_node.check_hostname, to_node.verify_mode = False, ssl.CERT_NONE
    host, port = host_port(tls_node.rpc)
    heard = bytearray()  # what the client sent the relay, decrypted

    async def server_side(client: trio.SocketStream) -> trio.abc.Stream:
        tls = trio.SSLStream(client, relay_ctx, server_side=True)
        await tls.do_handshake()
        return tls

    async def client_side() -> trio.abc.Stream:
        tcp = await trio.open_tcp_stream(host, port)
        return trio.SSLStream(tcp, to_node, server_hostname=None)

    relay_port = await start_relay(nursery, client_side, accept=server_side, sent=heard)
    before = await auth_failures(tls_node)
    with pytest.raises(AuthenticationFailed, match="not the pinned"):
        await info_with(f"tls:127.0.0.1:{relay_port}")
    assert bytes(heard) == b""  # the client stopped at the certificate: not even a token proof
    status = await node_status(tls_node.rpc)
    # no module got in; the relay's own connection to the node proved nothing (counted once
    # if it got as far as the node before the client hung up)
    assert status["modules"] == [] and status["authFailures"] - before in (0, 1)


@pytest.mark.parametrize(("kind", "readable"), [("tls", False), ("tcp", True)])
async def test_a_recording_relay_sees_neither_token_nor_payload(
    node_factory, peer, nursery, monkeypatch, kind, readable
):
    node = node_factory(rpc=f"{kind}:127.0.0.1:0")
    if kind == "tls":
        monkeypatch.setenv(_tls.FINGERPRINT_ENV, node.tls_fingerprint)
    monkeypatch.setenv(_auth.TOKEN_FILE_ENV, node.token_file)
    host, port = host_port(node.rpc)
    captured = bytearray()
    relay_port = await start_relay(nursery, partial(trio.open_tcp_stream, host, port), sent=captured, received=captured)
    module = await start_module(nursery, f"{kind}:127.0.0.1:{relay_port}", "push", "relayed")
    try:
        await module.call("register_echo", "e", [PROTO])
        stream = await peer.open(node.addr, [PROTO])
        await stream.write(SECRET)
        await stream.close_write()
        assert await p.read_all(stream) == SECRET
    finally:
        module.kill()
    assert len(captured) > len(SECRET)  # the relay carried the module's whole session
    assert (SECRET[:64] in captured) is readable
    assert token_of(node).strip().encode() not in captured
    assert ("is not encrypted" in node.log()) is readable  # the node warns about tcp: at start


async def test_a_cut_tls_connection_resets_the_modules_streams(tls_node, peer, nursery):
    host, port = host_port(tls_node.rpc)
    cut = trio.Event()
    relay_port = await start_relay(nursery, partial(trio.open_tcp_stream, host, port), cut=cut)
    module = await start_module(nursery, f"tls:127.0.0.1:{relay_port}", "push", "cut-off")
    try:
        await module.call("register_holder", "h", [PROTO])
        held = await peer.open(tls_node.addr, [PROTO])
        await module.event("stream")
        await held.write(b"before the cut")
        cut.set()  # the module's connection dies on the way: a network failure, not a close
        with pytest.raises(StreamReset):
            await p.read_all(held)
    finally:
        module.kill()

    async def gone() -> bool:
        status = await node_status(tls_node.rpc)
        return status["modules"] == [] and status["streams"] == 0

    await eventually(gone)


async def test_a_node_that_admits_clients_by_certificate_needs_no_token(node_factory, tmp_path, monkeypatch):
    alice, mallory = certs.self_signed(tmp_path, "alice"), certs.self_signed(tmp_path, "mallory")
    allowed = tmp_path / "clients.pem"
    allowed.write_text(alice.cert.read_text())
    node = node_factory("--tls-client-certs", str(allowed), rpc="tls:127.0.0.1:0")
    monkeypatch.setenv(_tls.FINGERPRINT_ENV, node.tls_fingerprint)
    monkeypatch.setenv(_auth.TOKEN_ENV, "")  # no token anywhere
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert await info_with(node.rpc, tls_cert=alice.cert, tls_key=alice.key) == node.peer_id
    for who in ({}, {"tls_cert": mallory.cert, "tls_key": mallory.key}):
        with pytest.raises(AuthenticationFailed):
            await info_with(node.rpc, **who)


async def test_a_ca_signed_certificate_is_checked_with_its_hostname(node_factory, tmp_path, monkeypatch):
    ca, leaf = certs.ca_and_leaf(tmp_path, "node")
    other_ca, _ = certs.ca_and_leaf(tmp_path / "other", "other")
    node = node_factory("--tls-cert", str(leaf.cert), "--tls-key", str(leaf.key), rpc="tls:127.0.0.1:0")
    monkeypatch.delenv(_tls.FINGERPRINT_ENV, raising=False)
    monkeypatch.setenv(_auth.TOKEN_FILE_ENV, node.token_file)
    _, port = host_port(node.rpc)
    assert await info_with(f"tls:localhost:{port}", tls_ca=ca.cert) == node.peer_id
    with pytest.raises(AuthenticationFailed, match="did not verify"):
        await info_with(f"tls:localhost:{port}", tls_ca=other_ca.cert)
    monkeypatch.setenv(_tls.CA_ENV, str(ca.cert))
    assert await info_with(f"tls:127.0.0.1:{port}") == node.peer_id  # an IP address in the certificate too


def test_status_and_info_over_tls(tls_node, monkeypatch, tmp_path):
    from .test_cli import run_cli

    monkeypatch.delenv(_tls.FINGERPRINT_ENV)
    monkeypatch.delenv(_auth.TOKEN_FILE_ENV)
    refused = run_cli("status", "--rpc", tls_node.rpc, "--token-file", tls_node.token_file)
    assert refused.returncode == 1 and "fingerprint" in refused.stderr and "Traceback" not in refused.stderr
    ok = run_cli(
        "status", "--rpc", tls_node.rpc, "--token-file", tls_node.token_file, "--fingerprint", tls_node.tls_fingerprint
    )
    assert ok.returncode == 0 and f'"peerId": "{tls_node.peer_id}"' in ok.stdout
    info = run_cli("info")  # the node's files in its default state directory
    assert info.returncode == 0 and f'"tls_fingerprint": "{tls_node.tls_fingerprint}"' in info.stdout


def test_the_self_signed_certificate_is_made_in_a_state_directory_that_did_not_exist(
    node_factory, tmp_path, monkeypatch
):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))  # no logos-p2p directory in it yet
    node = node_factory("--token-file", str(tmp_path / "token"), rpc="tls:127.0.0.1:0")
    state = runtime / "logos-p2p"
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    assert _tls.file_fingerprint(state / "tls-cert.pem") == node.tls_fingerprint
    assert oct((state / "tls-key.pem").stat().st_mode & 0o777) == "0o600"


async def test_a_client_that_sends_before_the_exchange_ends_is_refused(tls_node):
    """A right proof with bytes behind it (RPC sent before the node proved the token back):
    those bytes would reach Cap'n Proto unchecked, so the node refuses the connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    host, port = host_port(tls_node.rpc)
    before = await auth_failures(tls_node)
    tls = trio.SSLStream(await trio.open_tcp_stream(host, port), ctx, server_hostname=None)
    hello = b""
    while len(hello) < _auth.HELLO_SIZE:
        hello += await tls.receive_some(_auth.HELLO_SIZE - len(hello))
    node_nonce, client_nonce = hello[len(_auth.MAGIC) + 1 :], b"\x01" * _auth.NONCE
    token = token_of(tls_node).strip().encode()
    await tls.send_all(client_nonce + _auth.client_proof(token, node_nonce, client_nonce) + b"early capnp bytes")
    answer = b""
    with trio.fail_after(_auth.AUTH_TIMEOUT + 2):
        try:
            while data := await tls.receive_some(4096):
                answer += data
        except trio.BrokenResourceError:
            pass
    assert answer == b""  # no proof back, no capability
    assert await auth_failures(tls_node) == before + 1
    assert await info_with(tls_node.rpc) == tls_node.peer_id  # and the node serves on
