"""The examples as a user runs them: `make demo`, whois, and chat in two real terminals (tmux)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import trio

from logos_p2p.client import StreamReset, connect
from logos_p2p.errors import Cause

from .conftest import run_aio
from .support.modproc import ROOT

EXAMPLES = ROOT / "examples"


def short(peer_id: str) -> str:
    """A peer id as the examples print it."""
    return f"{peer_id[:8]}..{peer_id[-4:]}"


def test_the_echo_demo_passes_and_says_what_went_where():
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "echo" / "demo.py")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("b'hello from node B' matches") == 3
    assert out.count("echo module on node A: echo: 17 bytes echoed to") == 3
    assert "node A: peer 12D3KooW" in out and "node B: peer 12D3KooW" in out
    assert out.rstrip().endswith("demo: OK: every echo matched")


def test_echo_ping_reports_a_peer_without_the_protocol(node_factory):
    a, b = node_factory(), node_factory()  # nobody serves /echo/1.0.0 on b
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "echo" / "echo.py"), "--rpc", a.rpc, "ping", b.addr],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ProtocolNotSupported" in result.stderr


async def test_echo_serve_and_ping_across_two_nodes(node_factory):
    a, b = node_factory(), node_factory()
    serve = await trio.lowlevel.open_process(
        [sys.executable, str(EXAMPLES / "echo" / "echo.py"), "--rpc", a.rpc, "serve"], stdout=subprocess.PIPE
    )
    try:
        assert serve.stdout is not None
        with trio.fail_after(20):
            assert b"echo: serving /echo/1.0.0" in await serve.stdout.receive_some(1000)
        ping = await trio.run_process(
            [
                sys.executable,
                str(EXAMPLES / "echo" / "echo.py"),
                "--rpc",
                b.rpc,
                "ping",
                a.addr,
                "--message",
                "x" * 100,
            ],
            capture_stdout=True,
            check=False,
        )
        assert ping.returncode == 0
        assert b"sent 100 bytes, got 100 back" in ping.stdout
    finally:
        os.kill(serve.pid, signal.SIGKILL)
        await serve.wait()


WHOIS = str(EXAMPLES / "whois" / "whois.py")
WHOIS_PROTOCOL = "/logos-p2p/whois/1.0.0"


async def read_until(stdout: trio.abc.ReceiveStream, text: bytes, count: int = 1, timeout: float = 20) -> bytes:
    """A process's output up to the ``count``-th ``text`` (its lines come in pieces)."""
    out = b""
    with trio.fail_after(timeout):
        while out.count(text) < count:
            chunk = await stdout.receive_some(4096)
            assert chunk, f"the output ended before {text!r} x{count}: {out!r}"
            out += chunk
    return out


@contextlib.asynccontextmanager
async def whois_serving(node, name: str):
    """``whois.py serve --name NAME`` on ``node``, ready; its stdout; killed by PID afterwards."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, WHOIS, "--rpc", node.rpc, "serve", "--name", name], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        ready = await read_until(proc.stdout, b"\n")
        assert ready == f"whois: {name} serving {WHOIS_PROTOCOL} on node {short(node.peer_id)}\n".encode()
        yield proc.stdout
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()


async def whois(node, *args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, WHOIS, "--rpc", node.rpc, *args], capture_stdout=True, capture_stderr=True, check=False
        )


def test_the_whois_demo_passes_and_says_what_went_where():
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "whois" / "demo.py")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "demo:   name:      alice\n" in out
    assert "demo:   serves:    /echo/1.0.0 /logos-p2p/whois/1.0.0\n" in out
    assert out.count("demo: whois module on node A: whois: told bob (12D3KooW..") == 1
    assert "does not serve /logos-p2p/whois/1.0.0\ndemo:   exit code 1\n" in out
    assert out.rstrip().endswith("demo: OK: node A said who it is; node B said it does not speak whois")


async def test_whois_ask_prints_who_answered_and_who_it_saw(node_factory):
    a, b = node_factory(), node_factory()
    async with whois_serving(a, "alice") as served:
        asked = await whois(b, "ask", a.addr, "--name", "bob")
        assert (asked.returncode, asked.stderr) == (0, b"")
        assert asked.stdout.decode() == (
            f"name:      alice\npeer id:   {a.peer_id}\nserves:    {WHOIS_PROTOCOL}\nsees you:  {b.peer_id}\n"
        )

        raw = await whois(b, "ask", a.addr, "--json")  # the reply as it came: the protocol's bytes
        assert (raw.returncode, raw.stderr) == (0, b"")
        reply = {"name": "alice", "peer_id": a.peer_id, "protocols": [WHOIS_PROTOCOL], "you": b.peer_id}
        assert raw.stdout == json.dumps(reply).encode() + b"\n"

        log = await read_until(served, b" who we are\n", count=2)
        assert (
            log
            == (
                f"whois: told bob ({short(b.peer_id)}) who we are\n"
                f"whois: told someone ({short(b.peer_id)}) who we are\n"
            ).encode()
        )


async def test_whois_ask_a_peer_that_does_not_serve_it(node_factory):
    a, b = node_factory(), node_factory()  # nobody serves whois on b
    asked = await whois(a, "ask", b.addr)
    assert asked.returncode == 1
    assert asked.stdout == b""
    assert asked.stderr == (
        f"whois: ProtocolNotSupported: {short(b.peer_id)} does not serve {WHOIS_PROTOCOL}\n".encode()
    )


async def test_whois_ask_a_peer_that_is_gone(node_factory):
    a, c = node_factory(), node_factory()
    c.kill()  # nothing listens at its address any more
    asked = await whois(a, "ask", c.addr, "--timeout", "5")
    assert asked.returncode == 1
    assert asked.stdout == b""
    assert asked.stderr.startswith(f"whois: PeerUnreachable: cannot reach {short(c.peer_id)}: ".encode())
    assert asked.stderr.count(b"\n") == 1


async def test_whois_serve_resets_a_bad_question_and_answers_the_next(node_factory):
    a, b = node_factory(), node_factory()
    async with whois_serving(a, "alice"):

        async def ask_twice() -> tuple[BaseException | None, bytes]:
            async with connect(b.rpc, name="asker") as node:
                try:
                    await node.request(a.peer_id, [WHOIS_PROTOCOL], b"who are you?", addrs=[a.addr], timeout=10)
                    error = None
                except StreamReset as exc:
                    error = exc
                good = await node.request(a.peer_id, [WHOIS_PROTOCOL], b'{"name": "carol"}', timeout=10)
                return error, good

        error, good = await run_aio(ask_twice)
        assert isinstance(error, StreamReset) and error.cause is Cause.REMOTE_RESET
        assert json.loads(good) == {
            "name": "alice",
            "peer_id": a.peer_id,
            "protocols": [WHOIS_PROTOCOL],
            "you": b.peer_id,
        }


class Tmux:
    """A private tmux server: one window per chat, screens read with capture-pane."""

    def __init__(self) -> None:
        self.socket = f"logos-p2p-test-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True, check=True
        ).stdout

    def start(self, window: str, command: list[str]) -> None:
        line = " ".join(command)
        if not self.windows():
            self.run("new-session", "-d", "-s", "t", "-x", "200", "-y", "50", "-n", window, line)
            self.run("set-option", "-g", "remain-on-exit", "on")
            self.run("set-option", "-g", "history-limit", "5000")
        else:
            self.run("new-window", "-t", "t", "-n", window, line)

    def windows(self) -> list[str]:
        try:
            return self.run("list-windows", "-t", "t", "-F", "#{window_name}").split()
        except subprocess.CalledProcessError:
            return []

    def keys(self, window: str, text: str) -> None:
        self.run("send-keys", "-t", f"t:{window}", "-l", text)
        self.run("send-keys", "-t", f"t:{window}", "Enter")

    def screen(self, window: str) -> str:
        return self.run("capture-pane", "-p", "-J", "-S", "-", "-t", f"t:{window}")

    def pid(self, window: str) -> int:
        return int(self.run("display-message", "-p", "-t", f"t:{window}", "#{pane_pid}").strip())

    async def shows(self, window: str, text: str, count: int = 1, timeout: float = 15) -> str:
        """Wait until ``text`` appears ``count`` times on the window's screen."""
        try:
            with trio.fail_after(timeout):
                while (screen := self.screen(window)).count(text) < count:  # noqa: ASYNC110 - another process's screen
                    await trio.sleep(0.05)
        except trio.TooSlowError:
            raise AssertionError(f"{window}'s screen never showed {text!r} x{count}:\n{self.screen(window)}") from None
        return screen

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (make test installs it)")
    server = Tmux()
    try:
        yield server
    finally:
        for window in server.windows():
            with contextlib.suppress(ProcessLookupError, subprocess.CalledProcessError, ValueError):
                os.kill(server.pid(window), signal.SIGKILL)
        server.kill()


def chat(node, nick: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / "chat" / "chat.py"), "--rpc", node.rpc, "--nick", nick]


async def test_chat_between_two_terminals(node_factory, tmux):
    a, b = node_factory(), node_factory()
    tmux.start("alice", chat(a, "alice"))
    tmux.start("bob", chat(b, "bob"))
    await tmux.shows("alice", "chat: alice ready on /ip4/127.0.0.1/")
    await tmux.shows("bob", "chat: bob ready on /ip4/127.0.0.1/")

    # alice starts the conversation by bob's address: both see the nodes connect (peer events),
    # and the other join
    tmux.keys("alice", f"/connect {b.addr}")
    await tmux.shows("alice", f"* {short(b.peer_id)} connected\n")
    await tmux.shows("bob", f"* {short(a.peer_id)} connected\n")
    await tmux.shows("bob", "* alice joined")
    await tmux.shows("alice", "* bob joined")
    tmux.keys("alice", "hello bob")
    await tmux.shows("bob", "<alice> hello bob")
    tmux.keys("bob", "hi alice, ça va?")
    await tmux.shows("alice", "<bob> hi alice, ça va?")

    # bob quits cleanly: alice reads a plain "left"
    tmux.keys("bob", "/quit")
    await tmux.shows("bob", "chat: bye")
    screen = await tmux.shows("alice", "* bob left\n")
    assert "* bob left:" not in screen

    # bob comes back (a fresh window: no stale screen) and starts the conversation; his module is killed
    tmux.start("bob2", chat(b, "bob"))
    await tmux.shows("bob2", "chat: bob ready")
    tmux.keys("bob2", f"/connect {a.addr}")
    await tmux.shows("alice", "* bob joined", count=2)
    await tmux.shows("bob2", "* alice joined")
    os.kill(tmux.pid("bob2"), signal.SIGKILL)
    await tmux.shows("alice", "* bob left: the stream was reset")

    # alice is still usable: bob again, and this time his node stops
    tmux.start("bob3", chat(b, "bob"))
    await tmux.shows("bob3", "chat: bob ready")
    tmux.keys("bob3", f"/connect {a.addr}")
    await tmux.shows("alice", "* bob joined", count=3)
    b.terminate()
    screen = await tmux.shows("alice", "* bob left: ", count=2)
    assert screen.count("* bob left: the stream was reset") + screen.count("* bob left: the connection was lost") == 2
    await tmux.shows("bob3", "* our node went away")
    screen = await tmux.shows("alice", "* bob disconnected (")  # the connection, named after the conversations on it
    assert screen.count("* bob disconnected (closedByPeer)\n") + screen.count("* bob disconnected (error)\n") == 1
    # the nodes connected once: bob's chats came and went on the same connection
    assert screen.count(" connected\n") == 1

    tmux.keys("alice", "/who")
    await tmux.shows("alice", "* talking with: nobody")
    tmux.keys("alice", "are you there?")
    await tmux.shows("alice", "* nobody is listening")
    tmux.keys("alice", "/quit")
    screen = await tmux.shows("alice", "chat: bye")
    print(f"--- alice's terminal ---\n{screen}")  # shown by `pytest -rP`: the transcript
