"""The C++ client's trust in its endpoint: tls: (clients/cpp/src/tls.cpp), TLS 1.3 with the
node's certificate pinned by fingerprint or checked against a CA, the token exchange inside
it, client certificates, each refusal typed and nothing readable on the path; and unix:,
where a socket served by another user is refused.

Programs: ``cpp-echo-module`` (the facade; trust from $LOGOS_P2P_FINGERPRINT and
$LOGOS_P2P_TOKEN_FILE, as a module on another machine would be started) and
``logos-p2p-tls-check`` (tests/support/cpp_tls: ``connect`` with explicit ConnectOptions).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from logos_p2p.errors import StreamReset
from logos_p2p.server import _libp2p

from .conftest import eventually, node_status
from .support import certs
from .support import peer as p
from .support.cpp_harness import Binaries, Driver, Lines, echo_through, peer_addr, sha
from .support.impostor import NOBODY, impostor_socket, needs_root
from .support.relay import start_relay
from .test_security import host_port, token_of

MIB = 1024 * 1024
ECHO = "/echo/1.0.0"


def tls_check(cpp: Binaries) -> Path:
    return cpp.driver.parent.parent / "cpp_tls" / "logos-p2p-tls-check"


async def check(processes: Any, cpp: Binaries, rpc: str, *args: str, env: dict[str, str] | None = None) -> str:
    """The tls check's first line, after it exited (0 for ok, 1 for failed)."""
    proc = await processes(tls_check(cpp), rpc, *args, env=env)
    line = await Lines(proc).line()
    with trio.fail_after(20):
        code = await proc.wait()
    assert code == (0 if line.startswith("ok ") else 1), (code, line)
    return line


@pytest.fixture
def tls_node(node_factory: Any) -> Any:
    node = node_factory(rpc="tls:127.0.0.1:0")
    assert node.tls_fingerprint.startswith("sha256:") and node.token_file
    return node


def trust_env(node: Any) -> dict[str, str]:
    return {"LOGOS_P2P_FINGERPRINT": node.tls_fingerprint, "LOGOS_P2P_TOKEN_FILE": node.token_file}


async def test_the_echo_module_over_tls_echoes_one_mebibyte_and_a_kill_is_a_reset(
    cpp, processes, tls_node, peer
) -> None:
    proc = await processes(cpp.module, tls_node.rpc, env=trust_env(tls_node))
    lines = Lines(proc)
    assert await lines.line() == f"ready {tls_node.peer_id}"
    data = os.urandom(MIB)
    stream = await peer.open(tls_node.addr, [ECHO])
    got = {"data": await echo_through(stream, data)}
    assert sha(got["data"]) == sha(data)
    assert await lines.line() == f"echoed {MIB} bytes"

    # a second stream, the module killed while it is open: the peer reads a reset
    held = await peer.open(tls_node.addr, [ECHO])
    await _libp2p.write(held, b"x")
    assert await p.read_exactly(held, 1) == b"x"
    proc.kill()
    with pytest.raises(StreamReset):
        await p.read_all(held, timeout=5)


async def test_an_outbound_echo_over_tls_with_explicit_options(cpp, processes, tls_node, peer) -> None:
    peer.serve_echo(ECHO)
    line = await check(
        processes,
        cpp,
        tls_node.rpc,
        "--fingerprint",
        tls_node.tls_fingerprint,
        "--token",
        token_of(tls_node).strip(),
        "--echo",
        peer_addr(peer),
        str(300_000),
    )
    assert line == f"ok {tls_node.peer_id}"


async def test_wrong_and_missing_pins_and_tokens_are_refused_and_counted(cpp, processes, tls_node, monkeypatch) -> None:
    monkeypatch.setenv("LOGOS_P2P_FINGERPRINT", tls_node.tls_fingerprint)  # this process's status probe
    monkeypatch.setenv("LOGOS_P2P_TOKEN_FILE", tls_node.token_file)
    token = token_of(tls_node).strip()
    none = {"LOGOS_P2P_FINGERPRINT": "", "LOGOS_P2P_TLS_CA": "", "LOGOS_P2P_TOKEN_FILE": tls_node.token_file}
    wrong_pin = await check(processes, cpp, tls_node.rpc, "--fingerprint", "sha256:" + "ab" * 32, env=none)
    assert wrong_pin.startswith("failed authenticationFailed ") and "not the pinned" in wrong_pin, wrong_pin
    assert tls_node.tls_fingerprint in wrong_pin  # it names the certificate it saw
    missing = await check(processes, cpp, tls_node.rpc, env=none)
    assert missing.startswith("failed authenticationFailed ") and "fingerprint" in missing, missing
    malformed = await check(processes, cpp, tls_node.rpc, "--fingerprint", "sha256:abc", env=none)
    assert malformed.startswith("failed invalidArgument "), malformed
    # the fingerprint as openssl prints it (colons, upper case) pins the same certificate
    hexpin = tls_node.tls_fingerprint.removeprefix("sha256:")
    openssl_style = "SHA256:" + ":".join(hexpin[i : i + 2].upper() for i in range(0, 64, 2))
    assert await check(processes, cpp, tls_node.rpc, "--fingerprint", openssl_style, env=none) == (
        f"ok {tls_node.peer_id}"
    )
    bad_token = {**none, "LOGOS_P2P_TOKEN_FILE": "", "LOGOS_P2P_TOKEN": "not-the-token-0123456789"}
    refused = await check(processes, cpp, tls_node.rpc, "--fingerprint", tls_node.tls_fingerprint, env=bad_token)
    assert refused.startswith("failed authenticationFailed "), refused
    assert await check(processes, cpp, tls_node.rpc, "--fingerprint", tls_node.tls_fingerprint, "--token", token) == (
        f"ok {tls_node.peer_id}"
    )

    async def one_token_refusal() -> bool:
        return (await node_status(tls_node.rpc))["authFailures"] >= 1

    await eventually(one_token_refusal)


async def test_tls_against_a_tcp_endpoint_and_tcp_against_a_tls_endpoint_are_refused(
    cpp, processes, tls_node, node_factory
) -> None:
    plain = node_factory(rpc="tcp:127.0.0.1:0")
    host, port = host_port(plain.rpc)
    env = {"LOGOS_P2P_TOKEN_FILE": plain.token_file}
    line = await check(processes, cpp, f"tls:{host}:{port}", "--fingerprint", "sha256:" + "00" * 32, env=env)
    assert line.startswith("failed authenticationFailed ") and "is it a tls: endpoint" in line, line
    host, port = host_port(tls_node.rpc)
    line = await check(processes, cpp, f"tcp:{host}:{port}", env={"LOGOS_P2P_TOKEN_FILE": tls_node.token_file})
    assert line.startswith("failed authenticationFailed ") and "connect with tls:HOST:PORT" in line, line


async def test_a_node_that_admits_clients_by_certificate_needs_no_token(cpp, processes, node_factory, tmp_path) -> None:
    alice, mallory = certs.self_signed(tmp_path, "alice"), certs.self_signed(tmp_path, "mallory")
    allowed = tmp_path / "clients.pem"
    allowed.write_text(alice.cert.read_text())
    node = node_factory("--tls-client-certs", str(allowed), rpc="tls:127.0.0.1:0")
    env = {"LOGOS_P2P_FINGERPRINT": node.tls_fingerprint, "LOGOS_P2P_TOKEN": "", "XDG_RUNTIME_DIR": str(tmp_path)}
    ok = await check(processes, cpp, node.rpc, "--cert", str(alice.cert), "--key", str(alice.key), env=env)
    assert ok == f"ok {node.peer_id}"
    for who in ([], ["--cert", str(mallory.cert), "--key", str(mallory.key)]):
        line = await check(processes, cpp, node.rpc, *who, env=env)
        assert line.startswith("failed authenticationFailed "), (who, line)


async def test_a_ca_signed_certificate_is_checked_with_its_host_name(cpp, processes, node_factory, tmp_path) -> None:
    ca, leaf = certs.ca_and_leaf(tmp_path, "node")
    other_ca, _ = certs.ca_and_leaf(tmp_path / "other", "other")
    node = node_factory("--tls-cert", str(leaf.cert), "--tls-key", str(leaf.key), rpc="tls:127.0.0.1:0")
    _, port = host_port(node.rpc)
    env = {"LOGOS_P2P_FINGERPRINT": "", "LOGOS_P2P_TOKEN_FILE": node.token_file}
    assert await check(processes, cpp, f"tls:localhost:{port}", "--ca", str(ca.cert), env=env) == f"ok {node.peer_id}"
    line = await check(processes, cpp, f"tls:localhost:{port}", "--ca", str(other_ca.cert), env=env)
    assert line.startswith("failed authenticationFailed ") and "did not verify" in line, line
    # an IP address in the certificate too, the CA from the environment
    line = await check(processes, cpp, f"tls:127.0.0.1:{port}", env={**env, "LOGOS_P2P_TLS_CA": str(ca.cert)})
    assert line == f"ok {node.peer_id}"
    # a name the certificate does not carry
    line = await check(processes, cpp, f"tls:127.0.0.2:{port}", "--ca", str(ca.cert), env=env)
    assert line.startswith("failed "), line


SECRET = b"the payload no relay may read " * 64


async def test_a_recording_relay_sees_neither_token_nor_payload(cpp, processes, tls_node, peer, nursery) -> None:
    host, port = host_port(tls_node.rpc)
    captured = bytearray()
    relay_port = await start_relay(nursery, partial(trio.open_tcp_stream, host, port), sent=captured, received=captured)
    proc = await processes(cpp.module, f"tls:127.0.0.1:{relay_port}", env=trust_env(tls_node))
    lines = Lines(proc)
    assert await lines.line() == f"ready {tls_node.peer_id}"
    stream = await peer.open(tls_node.addr, [ECHO])
    await _libp2p.write(stream, SECRET)
    await _libp2p.close_write(stream)
    assert await p.read_all(stream) == SECRET
    assert len(captured) > len(SECRET)  # the relay carried the module's whole session
    assert SECRET[:64] not in captured
    assert token_of(tls_node).strip().encode() not in captured


@needs_root
async def test_a_unix_socket_served_by_another_user_is_refused(cpp, processes) -> None:
    """As Python's client: another user listens in the node's place."""
    async with impostor_socket() as path:
        line = await check(processes, cpp, f"unix:{path}", env={"LOGOS_P2P_NODE_UID": "4242"})
        assert line.startswith("failed authenticationFailed ") and f"runs as uid {NOBODY}" in line, line


async def test_the_c_abi_connects_over_tls_with_explicit_options(cpp, processes, tls_node, peer, nursery) -> None:
    """logos_p2p_facade_connect: the pin and token as options, nothing in the environment;
    a wrong pin is LOGOS_P2P_AUTHENTICATION_FAILED; with the right one the facade works."""
    none = {"LOGOS_P2P_FINGERPRINT": "", "LOGOS_P2P_TLS_CA": "", "LOGOS_P2P_TOKEN_FILE": "", "LOGOS_P2P_TOKEN": ""}
    token = f"token={token_of(tls_node).strip()}"
    wrong = await processes(cpp.driver, tls_node.rpc, token, "fingerprint=sha256:" + "cd" * 32, env=none)
    line = await Lines(wrong).line()
    assert line.startswith("failed authenticationFailed ") and "not the pinned" in line, line
    with trio.fail_after(10):
        assert await wrong.wait() == 1
    proc = await processes(
        cpp.driver, tls_node.rpc, token, f"fingerprint={tls_node.tls_fingerprint}", stdin=True, env=none
    )
    lines = Lines(proc)
    assert await lines.line() == f"ready {tls_node.peer_id}"
    driver = Driver(proc, lines, nursery)
    await driver.call("mount", ECHO)
    stream = await peer.open(tls_node.addr, [ECHO])
    sid = await driver.accept(ECHO)
    payload = os.urandom(200_000)
    await _libp2p.write(stream, payload)
    await _libp2p.close_write(stream)
    [got] = await driver.call("readall", sid, 10000)
    assert sha(bytes.fromhex(got)) == sha(payload)
