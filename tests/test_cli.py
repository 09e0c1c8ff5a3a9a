"""`logos-p2p serve` and `logos-p2p status` as an operator uses them."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest
import trio

from .conftest import eventually, node_status
from .support import peer as p
from .support.nodeproc import start_node


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logos_p2p", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_serve_prints_exactly_one_json_line_and_exits_0_on_sigterm(node_factory):
    node = node_factory()
    assert set(json.loads(json.dumps({"peer_id": node.peer_id, "addrs": node.addrs, "rpc": node.rpc}))) == {
        "peer_id",
        "addrs",
        "rpc",
    }
    assert node.peer_id.startswith("12D3KooW")
    assert all(a.startswith("/ip4/127.0.0.1/tcp/") and a.endswith(f"/p2p/{node.peer_id}") for a in node.addrs)
    node.terminate()
    assert node.proc.wait(timeout=5) == 0
    assert node.proc.stdout is not None
    assert node.proc.stdout.read() == b""  # nothing after the ready line


def test_identity_persists_across_restarts(node_factory, tmp_path):
    key = tmp_path / "keys" / "node.key"
    first = node_factory("--identity", str(key))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first.terminate()
    assert first.proc.wait(timeout=5) == 0
    second = node_factory("--identity", str(key))
    assert second.peer_id == first.peer_id
    other = node_factory()
    assert other.peer_id != first.peer_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_listen_is_repeatable(node_factory):
    first, second = free_port(), free_port()
    node = node_factory("--listen", f"/ip4/127.0.0.1/tcp/{first}", "--listen", f"/ip4/127.0.0.1/tcp/{second}")
    assert sorted(int(a.split("/")[4]) for a in node.addrs) == sorted([first, second])


def test_default_rpc_socket_is_private(tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    env.pop("LOGOS_P2P_RPC", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "logos_p2p", "serve", "--listen", "/ip4/127.0.0.1/tcp/0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        sock = runtime / "logos-p2p" / "node.sock"
        assert ready["rpc"] == f"unix:{sock}"
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
        status = run_cli("status", env=env)  # finds the default socket too
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["peerId"] == ready["peer_id"]
        assert json.loads(status.stdout)["modules"] == []  # it does not list itself
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        assert not sock.exists()  # removed on the way out
    finally:
        proc.kill()
        proc.wait()


def test_a_second_node_on_a_live_socket_refuses_to_start(node, tmp_path):
    second = run_cli("serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--rpc", node.rpc)
    assert second.returncode == 1
    assert "another node is listening" in second.stderr
    assert "Traceback" not in second.stderr
    assert run_cli("status", "--rpc", node.rpc).returncode == 0  # the first one is untouched


@pytest.mark.parametrize("data_path", ["auto"])  # over TCP "auto" is push: once is enough
async def test_tcp_rpc_endpoint(node_factory, peer, modules):
    node = node_factory(rpc="tcp:127.0.0.1:0")
    assert node.rpc.startswith("tcp:127.0.0.1:") and not node.rpc.endswith(":0")
    module = await modules(node, data_path="auto")  # no data channel over TCP: bytes go over RPC
    await module.call("register_echo", "e", ["/echo/1.0.0"])
    stream = await peer.open(node.addr, ["/echo/1.0.0"])
    await stream.write(b"over tcp")
    await stream.close_write()
    assert await p.read_all(stream) == b"over tcp"
    [mod] = (await node_status(node.rpc))["modules"]
    assert mod["name"] == "test-module" and mod["bytesIn"] == 8


async def test_status_command_reports_modules(node, peer, modules):
    module = await modules(node, name="chatty")
    await module.call("register_holder", "h", ["/a/1", "/b/1"])
    await peer.open(node.addr, ["/b/1"])
    await module.event("stream")
    result = await trio.to_thread.run_sync(lambda: run_cli("status", "--rpc", node.rpc))
    status = json.loads(result.stdout)
    [mod] = [m for m in status["modules"] if m["name"] == "chatty"]
    assert mod["protocols"] == ["/a/1", "/b/1"]
    assert (mod["registrations"], mod["inboundStreams"], mod["outboundStreams"]) == (1, 1, 0)
    assert status["streams"] == 1 and status["registrations"] == 1


async def test_sigusr1_writes_a_snapshot_to_the_log_and_the_node_keeps_serving(node, peer, modules):
    module = await modules(node, name="inspected")
    await module.call("register_holder", "h", ["/held/1"])
    stream = await peer.open(node.addr, ["/held/1"])
    await module.event("stream")
    os.kill(node.pid, signal.SIGUSR1)

    async def written() -> bool:
        return "descriptors" in node.log().partition("state snapshot (SIGUSR1)")[2]

    await eventually(written)
    snap = node.log().partition("state snapshot (SIGUSR1)")[2]
    assert "NodeService.run" in snap  # the trio task tree, with where each task waits
    assert "_accept_loop" in snap  # the asyncio tasks
    assert "(inspected): 1 registrations, 1 streams" in snap
    assert "inbound /held/1" in snap
    assert "anon_inode:[eventpoll]" in snap and "tfd:" in snap
    await stream.write(b"still here")  # and it serves on
    await stream.close_write()
    assert await node_status(node.rpc)
    assert node.proc.poll() is None


def test_node_fixture_starts_with_debug_logs(node):
    assert "ready" in node.log()


@pytest.mark.parametrize(
    "bad", [["--rpc", "ftp:nope"], ["--listen", "not-a-multiaddr"], ["--tls-client-certs", "clients.pem"]]
)
def test_bad_arguments_fail_cleanly(bad, tmp_path):
    args = ["serve", "--rpc", f"unix:{tmp_path / 's'}", "--listen", "/ip4/127.0.0.1/tcp/0", *bad]
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("logos-p2p serve: ")


def test_start_node_helper_reports_a_dead_node(tmp_path):
    with pytest.raises(RuntimeError, match="did not start"):
        start_node(tmp_path, "--listen", "garbage")
