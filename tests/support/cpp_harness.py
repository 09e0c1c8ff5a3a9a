"""The C++ client's test harness: the CMake build (once per session), its processes and the
facade driver's line protocol. The fixtures are registered in tests/conftest.py."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from . import peer as p
from .modproc import ROOT

DEBIAN_PACKAGES = "capnproto libcapnp-dev cmake g++"


# -- the build -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binaries:
    module: Path
    dial: Path
    driver: Path
    unary: Path
    seconds: float  # the clean build's wall time


@pytest.fixture(scope="session")
def cpp(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    missing = [tool for tool in ("capnp", "capnpc-c++", "cmake", "g++") if shutil.which(tool) is None]
    if not Path("/usr/include/capnp/rpc-twoparty.h").exists():
        missing.append("capnp headers")
    if missing:
        pytest.skip(f"the C++ client needs {', '.join(missing)}: apt-get install {DEBIAN_PACKAGES}")
    build = tmp_path_factory.mktemp("cpp-build")
    started = time.monotonic()
    for argv in (
        ["cmake", "-S", str(ROOT / "clients" / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=RelWithDebInfo"],
        ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return Binaries(
        module=build / "examples" / "cpp-echo" / "cpp-echo-module",
        dial=build / "examples" / "cpp-echo" / "cpp-echo-dial",
        driver=build / "tests" / "support" / "cpp" / "logos-p2p-facade-driver",
        unary=build / "tests" / "support" / "cpp" / "logos-p2p-unary-check",
        seconds=time.monotonic() - started,
    )


# -- processes -----------------------------------------------------------------------------------


class Lines:
    """A process's stdout, line by line."""

    def __init__(self, proc: trio.Process) -> None:
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._buf = b""

    async def line(self, timeout: float = 20) -> str:
        with trio.fail_after(timeout):
            while b"\n" not in self._buf:
                chunk = await self._stdout.receive_some(1 << 20)
                if not chunk:
                    raise EOFError(f"the process's output ended: {self._buf!r}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Any]:
    """Start processes (stdout piped, stderr to a file); each is killed by its PID afterwards."""
    started: list[trio.Process] = []

    async def start(*argv: str | Path, stdin: bool = False, env: dict[str, str] | None = None) -> trio.Process:
        with (tmp_path / f"proc{len(started)}.log").open("wb") as log:
            proc = await trio.lowlevel.open_process(
                [str(a) for a in argv],
                stdout=subprocess.PIPE,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, **(env or {})},
            )
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            with trio.move_on_after(5):
                await proc.wait()


class CppError(Exception):
    def __init__(self, code: str, cause: str, message: str) -> None:
        super().__init__(f"{code} ({cause}): {message}")
        self.code = code
        self.cause = cause


class Driver:
    """The facade driver: ``await call("read", id, 10, 1000)``, or ``start(...)`` for a call
    that blocks while others go on."""

    def __init__(self, proc: trio.Process, lines: Lines, nursery: trio.Nursery) -> None:
        self.proc = proc
        self._lines = lines
        self._tags = itertools.count()
        self._pending: dict[str, trio.MemorySendChannel[str]] = {}
        self._outbox: list[bytes] = []
        self._wake = trio.Event()
        self.closed = trio.Event()
        nursery.start_soon(self._reader)
        nursery.start_soon(self._writer)

    async def _reader(self) -> None:
        try:
            while True:
                line = await self._lines.line(timeout=3600)
                tag, _, rest = line.partition(" ")
                channel = self._pending.pop(tag, None)
                if channel is not None:
                    channel.send_nowait(rest)
        except EOFError:
            pass
        finally:
            self.closed.set()
            for channel in self._pending.values():
                channel.send_nowait("err exited protocolError the driver exited")

    def start(self, *args: Any) -> trio.MemoryReceiveChannel[str]:
        tag = f"t{next(self._tags)}"
        send, receive = trio.open_memory_channel[str](1)
        self._pending[tag] = send
        self._stdin_line(f"{tag} {' '.join(str(a) for a in args)}\n")
        return receive

    def _stdin_line(self, line: str) -> None:
        self._outbox.append(line.encode())
        self._wake.set()

    async def _writer(self) -> None:
        assert self.proc.stdin is not None
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._outbox:
                await self.proc.stdin.send_all(self._outbox.pop(0))

    @staticmethod
    async def result(pending: trio.MemoryReceiveChannel[str], timeout: float = 20) -> list[str]:
        with trio.fail_after(timeout):
            answer = await pending.receive()
        status, _, rest = answer.partition(" ")
        if status == "err":
            code, cause, message = [*rest.split(" ", 2), "", ""][:3]
            raise CppError(code, cause, message)
        return rest.split(" ") if rest else []

    async def call(self, *args: Any, timeout: float = 20) -> list[str]:
        return await self.result(self.start(*args), timeout)

    async def event(self, timeout_ms: int = 10000) -> list[str]:
        return await self.call("event", timeout_ms, timeout=timeout_ms / 1000 + 10)

    async def accept(self, proto: str) -> int:
        """The next event is a protocolStream of ``proto``: its stream id."""
        event = await self.event()
        assert event[0] == "protocolStream" and event[2] == proto, event
        return int(event[1])


@pytest.fixture
async def driver_factory(cpp: Binaries, processes: Any, nursery: trio.Nursery) -> Any:
    async def make(node: Any) -> Driver:
        proc = await processes(cpp.driver, node.rpc, stdin=True)
        lines = Lines(proc)
        ready = await lines.line()
        assert ready == f"ready {node.peer_id}", ready
        return Driver(proc, lines, nursery)

    return make


@pytest.fixture
async def driver(driver_factory: Any, node: Any) -> Driver:
    return await driver_factory(node)


async def echo_module(cpp: Binaries, processes: Any, node: Any) -> tuple[trio.Process, Lines]:
    proc = await processes(cpp.module, node.rpc)
    lines = Lines(proc)
    assert await lines.line() == f"ready {node.peer_id}"
    return proc, lines


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def peer_addr(peer: p.Peer) -> str:
    return peer.addr if "/p2p/" in peer.addr else f"{peer.addr}/p2p/{peer.peer_id}"


async def read_frame(stream: Any) -> bytes:
    """One uvarint length-prefixed frame, read by the peer."""
    size, shift = 0, 0
    while True:
        byte = (await p.read_exactly(stream, 1))[0]
        size |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return await p.read_exactly(stream, size) if size else b""
