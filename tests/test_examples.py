"""The examples as a user runs them: `make demo`, and chat in two real terminals (tmux)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import trio

from .support.modproc import ROOT

EXAMPLES = ROOT / "examples"


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

    # alice starts the conversation by bob's address; both see the other join
    tmux.keys("alice", f"/connect {b.addr}")
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

    tmux.keys("alice", "/who")
    await tmux.shows("alice", "* talking with: nobody")
    tmux.keys("alice", "are you there?")
    await tmux.shows("alice", "* nobody is listening")
    tmux.keys("alice", "/quit")
    screen = await tmux.shows("alice", "chat: bye")
    print(f"--- alice's terminal ---\n{screen}")  # shown by `pytest -rP`: the transcript
