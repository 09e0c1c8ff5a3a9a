"""The blocking client (``logos_p2p.client.blocking``): threads instead of coroutines.

Plain (sync) tests: the blocking calls run on the test's thread and on threads the tests
start, never on a trio loop. Nodes are real processes (``node_factory``); the peers are
blocking clients of other nodes, or a program with no asyncio in it in its own process.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import contextlib
import gc
import json
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from logos_p2p import client as aio
from logos_p2p.client import PeerConnected, PeerDisconnected, RequestInfo
from logos_p2p.client.blocking import Node, Stream, connect
from logos_p2p.errors import (
    Cause,
    InvalidArgument,
    LogosP2PError,
    NodeShutdown,
    NodeUnavailable,
    ProtocolNotSupported,
    StreamReset,
    Timeout,
)

from .support.modproc import ROOT
from .support.nodeproc import NodeProcess, wait_ready

ECHO, HOLD = "/test/echo/1.0.0", "/test/hold/1.0.0"
PROGRAM = ROOT / "tests" / "support" / "blocking_program.py"
T = TypeVar("T")


@pytest.fixture
def two(node_factory: Callable[..., NodeProcess]) -> tuple[NodeProcess, NodeProcess]:
    """Two nodes, started side by side."""
    first, second = node_factory(wait=False), node_factory(wait=False)
    return wait_ready(first), wait_ready(second)


def echo(stream: Stream) -> None:
    for chunk in stream:
        stream.write(chunk)


def open_to(node: Node, target: NodeProcess, protocol: str) -> Stream:
    return node.open_stream(target.peer_id, [protocol], addrs=[target.addr], timeout=10)


def wait_until(check: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """For state with nothing to wait on (another process, the loop's tasks): re-check until
    it holds, within a hard deadline (as conftest's ``eventually``)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.01)


def calls_in_flight(node: Node) -> int:
    """Blocking calls whose coroutine is running on ``node``'s loop (its own watcher aside)."""
    return len(node._l._tasks) - 1


def thread_names() -> list[str]:
    return sorted(f"{t.name}:{t.ident}" for t in threading.enumerate())


# -- a program with no asyncio, in its own process ---------------------------------------------------


class Program:
    """tests/support/blocking_program.py, killed by its PID when the test ends."""

    def __init__(self, rpc: str, peer: NodeProcess) -> None:
        argv = [sys.executable, str(PROGRAM), "--rpc", rpc, "--peer", peer.peer_id, "--addr", peer.addr]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(ROOT))
        self._buf = b""

    def line(self, timeout: float = 20.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                assert left > 0 and sel.select(left), f"no line from the program within {timeout}s"
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"the program exited ({self.proc.wait()}) before a line"
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        out: dict[str, Any] = json.loads(line)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def program(rpc: str, peer: NodeProcess) -> Iterator[Program]:
    prog = Program(rpc, peer)
    try:
        yield prog
    finally:
        prog.kill()


def test_the_program_has_no_async_in_it():
    tree = ast.parse(PROGRAM.read_text())
    asynchronous = (ast.AsyncFunctionDef, ast.Await, ast.AsyncFor, ast.AsyncWith)
    assert [type(n).__name__ for n in ast.walk(tree) if isinstance(n, asynchronous)] == []
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "asyncio" not in imported and "logos_p2p.client.blocking" in imported


def test_a_program_without_asyncio_serves_opens_resets_and_exits_cleanly(two):
    n1, n2 = two
    resets: queue.Queue[BaseException] = queue.Queue()

    def remote_echo(stream: Stream) -> None:
        try:
            echo(stream)
        except StreamReset as exc:
            resets.put(exc)
            raise

    with connect(n2.rpc, name="remote") as remote, remote.handle([ECHO], remote_echo):
        with program(n1.rpc, n2) as prog:
            ready = prog.line()
            assert ready["ready"] and ready["peer_id"] == n1.peer_id and len(ready["loop_threads"]) == 1
            assert ready["back"] == ready["sent"]  # 200 kB there and back, byte for byte
            assert (ready["doomed_echo"], ready["doomed_state"]) == ("doomed", "RESET")
            assert resets.get(timeout=5).cause is Cause.REMOTE_RESET  # the program's reset, at the peer
            payload = bytes(range(256)) * 300
            with open_to(remote, n1, "/bprog/echo/1.0.0") as stream:  # the program's own handler
                stream.write(payload)
                stream.close_write()
                assert stream.read_all(timeout=10) == payload

            assert prog.proc.stdin is not None
            prog.proc.stdin.write(b"quit\n")
            prog.proc.stdin.flush()
            done = prog.line()
            assert prog.proc.wait(timeout=15) == 0
            assert done["threads_before"] == done["threads_after"] == ["MainThread"]
        assert resets.empty()


def test_a_blocking_client_sigkilled_mid_stream_is_a_reset_at_the_peer(two):
    n1, n2 = two
    with connect(n2.rpc, name="remote") as remote, remote.handle([ECHO], echo), program(n1.rpc, n2) as prog:
        assert prog.line()["ready"]
        stream = open_to(remote, n1, "/bprog/hold/1.0.0")
        stream.write(b"ping")
        assert stream.read_exactly(4, timeout=10) == b"held"  # the program is mid-stream, reading
        os.kill(prog.proc.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(StreamReset) as info:
            stream.read(timeout=5)
        assert time.monotonic() - started < 2.0
        assert info.value.cause is Cause.REMOTE_RESET
        assert prog.proc.wait(timeout=5) == -signal.SIGKILL


# -- errors and timeouts, in the calling thread ------------------------------------------------------


def test_a_remote_reset_raises_stream_reset_in_the_reading_thread(two):
    n1, n2 = two
    go = threading.Event()

    def resetter(stream: Stream) -> None:
        stream.read_exactly(1, timeout=10)
        assert go.wait(10)
        stream.reset()

    with connect(n1.rpc) as a, connect(n2.rpc) as b, a.handle([HOLD], resetter):
        stream = open_to(b, n1, HOLD)
        stream.write(b"x")
        outcome: list[tuple[BaseException, int]] = []

        def reader() -> None:
            try:
                stream.read(timeout=10)
            except BaseException as exc:
                outcome.append((exc, threading.get_ident()))

        thread = threading.Thread(target=reader)
        thread.start()
        wait_until(lambda: calls_in_flight(b) == 1, what="the read is pending on the loop")
        go.set()
        thread.join(10)
        [(exc, where)] = outcome
        assert isinstance(exc, StreamReset) and exc.cause is Cause.REMOTE_RESET
        assert where == thread.ident != b._l.thread.ident
        with pytest.raises(StreamReset):
            stream.write(b"more")


@pytest.mark.parametrize("path", ["socket", "push", "pull"])
def test_a_read_that_times_out_loses_nothing_and_the_stream_goes_on(two, path):
    n1, n2 = two
    go = threading.Event()
    received: queue.Queue[bytes] = queue.Queue()

    def drip(stream: Stream) -> None:
        stream.write(b"abc")
        assert go.wait(10)
        stream.write(b"de")
        received.put(stream.read_all(timeout=10))

    with connect(n1.rpc, data_path=path) as a, connect(n2.rpc) as b, b.handle(["/drip/1"], drip):
        assert a.data_path == path
        stream = open_to(a, n2, "/drip/1")
        started = time.monotonic()
        with pytest.raises(Timeout):
            stream.read_exactly(5, timeout=0.2)  # only 3 of the 5 were sent: those stay buffered
        assert 0.19 < time.monotonic() - started < 1.5
        assert calls_in_flight(a) == 0  # the read's coroutine was cancelled, not left behind
        go.set()
        assert stream.read_exactly(5, timeout=5) == b"abcde"
        with pytest.raises(Timeout):
            stream.read(timeout=0.2)
        stream.write(b"ok")
        stream.close_write()
        assert received.get(timeout=5) == b"ok"
        assert stream.read(timeout=5) == b""  # the handler returned: end of stream


def test_a_blocking_call_on_the_loop_thread_raises_runtime_error(two):
    n1, n2 = two
    with connect(n1.rpc) as a, connect(n2.rpc) as b, b.handle([ECHO], echo):
        stream = open_to(a, n2, ECHO)
        attempts: Any = {
            "info": a.info,
            "read": lambda: stream.read(timeout=1),
            "open_stream": lambda: open_to(a, n2, ECHO),
            "peer_events": a.peer_events,
            "close": a.close,
        }
        answered: concurrent.futures.Future[dict[str, BaseException | None]] = concurrent.futures.Future()

        def on_the_loop() -> None:
            errors: dict[str, BaseException | None] = {}
            for name, attempt in attempts.items():
                try:
                    attempt()
                    errors[name] = None
                except BaseException as exc:
                    errors[name] = exc
            answered.set_result(errors)

        a.loop.call_soon_threadsafe(on_the_loop)
        errors = answered.result(timeout=5)
        assert {name: type(exc) for name, exc in errors.items()} == dict.fromkeys(attempts, RuntimeError)
        assert all("loop thread" in str(exc) for exc in errors.values())
        assert a.info().peer_id == n1.peer_id  # and from here all is well
        stream.write(b"still")
        stream.close_write()
        assert stream.read_all(timeout=5) == b"still"


def test_a_node_shutting_down_fails_a_pending_read_with_node_shutdown_and_close_still_stops_all(two):
    n1, n2 = two
    before = thread_names()
    with connect(n2.rpc) as b, b.handle([HOLD], lambda stream: stream.read_all(timeout=10)):
        a = connect(n1.rpc)
        stream = open_to(a, n2, HOLD)
        outcome: queue.Queue[BaseException] = queue.Queue()

        def reader() -> None:
            try:
                stream.read(timeout=10)
            except BaseException as exc:
                outcome.put(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        wait_until(lambda: calls_in_flight(a) == 1, what="the read is pending on the loop")
        n1.terminate()
        assert isinstance(outcome.get(timeout=5), NodeShutdown)
        thread.join(5)
        assert a.disconnected.wait(5)
        with pytest.raises(NodeShutdown):
            a.info()
        a.close()
        assert n1.proc.wait(timeout=5) == 0
    assert thread_names() == before


def test_connecting_to_nothing_is_node_unavailable_and_leaves_no_thread(tmp_path):
    before = thread_names()
    with pytest.raises(NodeUnavailable):
        connect(f"unix:{tmp_path / 'absent.sock'}")
    with pytest.raises(InvalidArgument):
        connect(f"unix:{tmp_path / 'absent.sock'}", handler_threads=0)
    assert thread_names() == before


# -- threads --------------------------------------------------------------------------------------------


def test_close_stops_every_thread_it_started_even_with_handlers_in_flight(two):
    n1, n2 = two
    first = thread_names()
    entered = threading.Semaphore(0)
    ended: queue.Queue[BaseException | None] = queue.Queue()

    def holder(stream: Stream) -> None:
        stream.read_exactly(1, timeout=10)
        entered.release()
        try:
            stream.read()
        except LogosP2PError as exc:
            ended.put(exc)
            raise
        ended.put(None)

    b = connect(n2.rpc, name="opener")
    try:
        before = thread_names()
        a = connect(n1.rpc, name="holder", handler_threads=2)
        registration = a.register([HOLD], holder)
        streams = [open_to(b, n1, HOLD) for _ in range(3)]
        for stream in streams:
            stream.write(b"x")
        assert entered.acquire(timeout=10) and entered.acquire(timeout=10)  # the third waits for a thread
        assert len([t for t in threading.enumerate() if t.name.startswith("logos-p2p-handler")]) == 2
        a.close()
        assert thread_names() == before
        a.close()  # idempotent
        with pytest.raises(NodeUnavailable):
            a.info()
        with pytest.raises(NodeUnavailable):
            registration.unregister()
        outcomes = [ended.get(timeout=5) for _ in range(2)]
        assert [(type(e), e.cause) for e in outcomes if isinstance(e, StreamReset)] == [
            (StreamReset, Cause.LOCAL_RESET)
        ] * 2  # the node's close reset them under their handlers
        assert ended.empty()  # the third handler never ran
        for stream in streams:
            with pytest.raises(StreamReset):
                stream.read(timeout=5)
    finally:
        b.close()
    assert thread_names() == first


def test_two_blocking_nodes_to_two_nodes_used_from_many_threads_at_once(two):
    n1, n2 = two
    served = {"a": 0, "b": 0}
    lock = threading.Lock()

    def counted(name: str) -> Callable[[Stream], None]:
        def handler(stream: Stream) -> None:
            with lock:
                served[name] += 1
            echo(stream)

        return handler

    with connect(n1.rpc, name="a") as a, connect(n2.rpc, name="b") as b:
        assert a.loop is not b.loop
        loops = {t.ident for t in threading.enumerate() if t.name.startswith("logos-p2p-loop")}
        assert len(loops) == 2
        with a.handle([ECHO], counted("a")), b.handle([ECHO], counted("b")):

            def worker(i: int) -> list[bool]:
                results = []
                for round_ in range(3):
                    node, target = (a, n2) if (i + round_) % 2 else (b, n1)
                    payload = f"thread {i} round {round_} ".encode() * (100 + i)
                    with open_to(node, target, ECHO) as stream:
                        stream.write(payload)
                        stream.close_write()
                        results.append(stream.read_all(timeout=10) == payload)
                    results.append(node.info().peer_id == (n1 if node is a else n2).peer_id)
                return results

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                outcomes = list(pool.map(worker, range(8)))
        assert outcomes == [[True] * 6] * 8
        assert served == {"a": 12, "b": 12}


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # the asyncio Stream's, for the one dropped unclosed
def test_a_handler_returning_closes_raising_resets_and_dropped_wrappers_release(two):
    n1, n2 = two
    ended: queue.Queue[BaseException | bytes] = queue.Queue()

    def fails(stream: Stream) -> None:
        stream.read_exactly(1, timeout=10)
        raise ValueError("the handler fails")

    def replies(stream: Stream) -> None:
        stream.write(b"bye")

    def reads(stream: Stream) -> None:
        try:
            ended.put(stream.read_all(timeout=10))
        except StreamReset as exc:
            ended.put(exc)

    with connect(n1.rpc) as a, connect(n2.rpc) as b:
        failing, replying = a.register(["/fails/1"], fails), a.register(["/replies/1"], replies)
        reading = a.register(["/reads/1"], reads)
        with open_to(b, n1, "/replies/1") as stream:
            assert stream.read_all(timeout=5) == b"bye"  # then end of stream: closed
        stream = open_to(b, n1, "/fails/1")
        stream.write(b"x")
        with pytest.raises(StreamReset):
            stream.read(timeout=5)
        assert failing.protocols == ("/fails/1",) and a.status()["registrations"] == 3

        dropped = open_to(b, n1, "/reads/1")
        dropped.write(b"x")
        del dropped  # dropped in this thread: reset, from the loop thread
        gc.collect()
        exc = ended.get(timeout=5)
        assert isinstance(exc, StreamReset) and exc.cause is Cause.REMOTE_RESET

        del failing, replying  # likewise: they unregister
        gc.collect()
        wait_until(lambda: a.status()["registrations"] == 1, what="the dropped registrations unregistered")
        with pytest.raises(ProtocolNotSupported):
            open_to(b, n1, "/replies/1")
        assert reading.protocols == ("/reads/1",)


# -- the asyncio client has no globals either ------------------------------------------------------------


def plain_run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a plain asyncio loop (importing trio_asyncio, as the test suite
    does, makes ``asyncio.new_event_loop`` return trio-asyncio's loops)."""

    async def checked() -> T:
        assert type(asyncio.get_running_loop()) is asyncio.SelectorEventLoop
        return await coro

    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        return runner.run(checked())


def test_two_asyncio_clients_to_two_nodes_on_one_loop(two):
    n1, n2 = two

    async def echo_async(stream: aio.Stream) -> None:
        async for chunk in stream:
            await stream.write(chunk)

    async def roundtrip(node: aio.Node, target: NodeProcess, payload: bytes) -> bytes:
        async with await node.open_stream(target.peer_id, [ECHO], addrs=[target.addr], timeout=10) as stream:
            await stream.write(payload)
            await stream.close_write()
            return await stream.read_all()

    async def main() -> list[bytes]:
        async with (
            aio.connect(n1.rpc, name="a") as a,
            aio.connect(n2.rpc, name="b") as b,
            a.handle([ECHO], echo_async),
            b.handle([ECHO], echo_async),
        ):
            return list(await asyncio.gather(roundtrip(a, n2, b"a->b" * 999), roundtrip(b, n1, b"b->a" * 777)))

    assert plain_run(main()) == [b"a->b" * 999, b"b->a" * 777]


def test_the_asyncio_client_inside_a_host_loop_with_tasks_of_its_own(two):
    """A host that already runs asyncio: its own server and task go on beside the client,
    the client leaves no task behind, and the loop never reports an error."""
    n1, n2 = two
    trouble: list[dict[str, Any]] = []

    async def host_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    async def host_ask(port: int, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        try:
            return await reader.read()
        finally:
            writer.close()

    async def host_task(ping: asyncio.Queue[int], pong: asyncio.Queue[int]) -> None:
        while True:
            pong.put_nowait(await ping.get() + 1)

    async def hello(stream: aio.Stream) -> None:
        await stream.write(b"from b")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: trouble.append(context))
        server = await asyncio.start_server(host_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ping, pong = asyncio.Queue[int](), asyncio.Queue[int]()
        ticker = asyncio.create_task(host_task(ping, pong))
        host_tasks = asyncio.all_tasks()
        try:
            async with (
                aio.connect(n1.rpc, name="hosted") as a,
                aio.connect(n2.rpc, name="other") as b,
                b.handle(["/hello/1"], hello),
            ):
                stream = await a.open_stream(n2.peer_id, ["/hello/1"], addrs=[n2.addr], timeout=10)
                assert await host_ask(port, b"host") == b"host"  # the host's server, meanwhile
                assert await stream.read_all() == b"from b"
                await stream.close()
            assert await host_ask(port, b"after") == b"after"
            ping.put_nowait(1)
            assert await pong.get() == 2  # the host's own task still runs
            left = {t for t in asyncio.all_tasks() - host_tasks if t.get_coro().__name__ != "host_echo"}
            assert left == set()
        finally:
            ticker.cancel()
            server.close()
            await server.wait_closed()

    plain_run(main())
    assert trouble == []


# -- request/response and peer events ------------------------------------------------------------------------


def test_serve_and_request_between_two_blocking_nodes(two):
    n1, n2 = two
    seen: queue.Queue[tuple[RequestInfo, str]] = queue.Queue()

    def upper(request: bytes, info: RequestInfo) -> bytes:
        seen.put((info, threading.current_thread().name))
        if request == b"boom":
            raise ValueError("no")
        return request.upper()

    with connect(n1.rpc) as a, connect(n2.rpc) as b:
        registration = a.serve(["/upper/1"], upper)
        assert b.request(n1.peer_id, ["/upper/1"], b"hello", addrs=[n1.addr]) == b"HELLO"
        info, thread = seen.get(timeout=5)
        assert (info.protocol, info.remote_peer_id) == ("/upper/1", n2.peer_id)
        assert thread.startswith("logos-p2p-handler")  # a handler thread, not the loop's
        with pytest.raises(StreamReset) as info:
            b.request(n1.peer_id, ["/upper/1"], b"boom")  # the responder raised
        assert info.value.cause is Cause.REMOTE_RESET
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda i: b.request(n1.peer_id, ["/upper/1"], b"r%d" % i), range(8)))
        assert replies == [b"R%d" % i for i in range(8)]
        registration.unregister()
        with pytest.raises(ProtocolNotSupported):
            b.request(n1.peer_id, ["/upper/1"], b"late")


def test_peer_events_block_and_callbacks_run_in_order_one_at_a_time(two):
    n1, n2 = two
    delivered: queue.Queue[tuple[object, str]] = queue.Queue()
    running, most = [0], [0]
    lock = threading.Lock()

    def callback(event: object) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        delivered.put((event, threading.current_thread().name))
        with lock:
            running[0] -= 1

    with connect(n1.rpc) as a, connect(n2.rpc) as b:
        quiet = a.peer_events()
        waited: queue.Queue[BaseException] = queue.Queue()

        def waiter() -> None:
            try:
                quiet.get(timeout=10)
            except BaseException as exc:
                waited.put(exc)

        threading.Thread(target=waiter).start()
        wait_until(lambda: calls_in_flight(a) == 2, what="the get is pending (beside the events' own task)")
        quiet.close()  # ends the get waiting in the other thread
        assert isinstance(waited.get(timeout=5), StopIteration)

        with a.peer_events() as events:
            subscription = a.on_peer_event(callback)
            with pytest.raises(Timeout):
                events.get(timeout=0.2)  # nothing yet, and the wait goes on afterwards
            b.connect_peer(n1.addr, timeout=10)
            connected = events.get(timeout=5)
            assert connected == PeerConnected(n2.peer_id, getattr(connected, "remote_addr", ""), "inbound")
            b.disconnect_peer(n1.peer_id)
            while not isinstance(gone := events.get(timeout=5), PeerDisconnected):
                pass
            assert gone.peer_id == n2.peer_id

            kinds: list[str] = []
            while not kinds or kinds[-1] != "PeerDisconnected":
                event, thread = delivered.get(timeout=5)
                assert thread.startswith("logos-p2p-handler")
                kinds.append(type(event).__name__)
            assert kinds[0] == "PeerConnected" and most[0] == 1
            subscription.close()
            subscription.close()
            b.connect_peer(n1.addr, timeout=10)
            assert isinstance(events.get(timeout=5), PeerConnected)  # the iterator goes on
            assert delivered.empty()  # the closed subscription does not
        with pytest.raises(NodeUnavailable):
            events.get(timeout=1)  # closed
