"""The C++ client's test harness: the CMake build (once per session), its processes and the
facade driver's line protocol. The fixtures are registered in tests/conftest.py."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
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


TSAN_CELL = "thread_sanitizer"  # in the name of the cell that needs the TSan build


@dataclass
class TsanBuild:
    """The TSan build of the facade driver, run in the background (niced) from the end of the
    main build, so it overlaps the other cells instead of adding its time to theirs."""

    proc: subprocess.Popen[bytes]
    log: Path
    driver: Path
    started: float


_tsan: list[TsanBuild] = []


def _start_tsan_build(build: Path) -> TsanBuild:
    configure = [
        "cmake", "-S", str(ROOT / "clients" / "cpp"), "-B", str(build),
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DLOGOS_P2P_SANITIZE=thread",
    ]  # fmt: skip
    compile_ = ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", "logos-p2p-facade-driver"]
    script = f"{shlex.join(configure)} && {shlex.join(compile_)}"
    log = build.parent / f"{build.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["nice", "-n", "19", "sh", "-c", script], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    driver = build / "tests" / "support" / "cpp" / "logos-p2p-facade-driver"
    return TsanBuild(proc, log, driver, time.monotonic())


@pytest.fixture(scope="session")
def cpp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Binaries]:
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
    binaries = Binaries(
        module=build / "examples" / "cpp-echo" / "cpp-echo-module",
        dial=build / "examples" / "cpp-echo" / "cpp-echo-dial",
        driver=build / "tests" / "support" / "cpp" / "logos-p2p-facade-driver",
        unary=build / "tests" / "support" / "cpp" / "logos-p2p-unary-check",
        seconds=time.monotonic() - started,
    )
    if any(TSAN_CELL in item.name for item in request.session.items):
        _tsan.append(_start_tsan_build(tmp_path_factory.mktemp("cpp-tsan-build")))
    try:
        yield binaries
    finally:
        for job in _tsan:  # killed by its id (its own process group: sh, cmake, make, the compilers)
            if job.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.proc.pid, signal.SIGKILL)
            job.proc.wait(timeout=10)


TSAN_SUPPRESSIONS = Path(__file__).parent / "cpp" / "tsan.supp"


@pytest.fixture(scope="session")
def tsan_driver(cpp: Binaries) -> Path:
    """The facade driver and the library built with -fsanitize=thread (LOGOS_P2P_SANITIZE)."""
    if not _tsan:
        pytest.skip(f"the TSan build starts only for a cell named *{TSAN_CELL}*")
    job = _tsan[0]
    code = job.proc.wait(timeout=600)
    assert code == 0, f"the TSan build failed:\n{job.log.read_text()[-4000:]}"
    print(f"TSan build of the facade driver (in the background): {time.monotonic() - job.started:.1f} s")
    return job.driver


def tsan_env(log: Path) -> dict[str, str]:
    """TSAN_OPTIONS: every report goes to `log` (.PID appended) and fails the exit code."""
    options = f"suppressions={TSAN_SUPPRESSIONS} halt_on_error=0 exitcode=66 log_path={log}"
    return {"TSAN_OPTIONS": options}


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
        self.message = message


class Driver:
    """The facade driver: ``await call("read", id, 10, 1000)``, or ``start(...)`` for a call
    that blocks while others go on; ``await note()`` for its next "note" line (the responder's)."""

    def __init__(self, proc: trio.Process, lines: Lines, nursery: trio.Nursery) -> None:
        self.proc = proc
        self._lines = lines
        self._tags = itertools.count()
        self._pending: dict[str, trio.MemorySendChannel[str]] = {}
        self._notes_in, self._notes = trio.open_memory_channel[str](1000)
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
                if tag == "note":
                    self._notes_in.send_nowait(rest)
                    continue
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

    async def note(self, timeout: float = 20) -> str:
        with trio.fail_after(timeout):
            return await self._notes.receive()

    async def status(self) -> dict[str, str]:
        """The node's status through the facade (the driver's ``status``), as key -> value."""
        return dict(item.split("=", 1) for item in await self.call("status"))

    async def event(self, timeout_ms: int = 10000) -> list[str]:
        return await self.call("event", timeout_ms, timeout=timeout_ms / 1000 + 10)

    async def accept(self, proto: str) -> int:
        """The next event is a protocolStream of ``proto``: its stream id."""
        event = await self.event()
        assert event[0] == "protocolStream" and event[2] == proto, event
        return int(event[1])


@pytest.fixture
async def driver_factory(cpp: Binaries, processes: Any, nursery: trio.Nursery) -> Any:
    async def make(node: Any, binary: Path | None = None, env: dict[str, str] | None = None) -> Driver:
        proc = await processes(binary or cpp.driver, node.rpc, stdin=True, env=env)
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


@contextlib.asynccontextmanager
async def two_reads(driver: Driver, sid: int, timeout: float = 20) -> AsyncIterator[list[tuple[str, Any]]]:
    """Two reads of ``sid`` at once, from two driver threads (no timeout of the facade's);
    yields their outcomes once the first answered: the one that reached the loop second is
    busy, so the other is blocked inside the facade. Waits for the second on exit. An
    outcome is ("ok", the answer's fields) or (code, cause)."""
    outcomes: list[tuple[str, Any]] = []
    first_answer = trio.Event()

    async def read_one() -> None:
        try:
            outcomes.append(("ok", await driver.call("read", sid, 100, 0, timeout=timeout)))
        except CppError as exc:
            outcomes.append((exc.code, exc.cause))
        first_answer.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_one)
        nursery.start_soon(read_one)
        with trio.fail_after(10):
            await first_answer.wait()
        yield outcomes


async def echo_through(stream: Any, data: bytes, timeout: float = 30) -> bytes:
    """Write ``data`` in 64 KiB writes, then half-close, while reading back all the echo."""
    from logos_p2p.server import _libp2p

    got: dict[str, bytes] = {}

    async def send() -> None:
        for off in range(0, len(data), 65536):
            await _libp2p.write(stream, data[off : off + 65536])
        await _libp2p.close_write(stream)

    async def receive() -> None:
        got["data"] = await p.read_all(stream, timeout=timeout)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(receive)
    return got["data"]


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
