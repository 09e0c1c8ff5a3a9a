"""A node, a py-libp2p peer and one module process per data path, shared by many tests.

pytest-trio gives every test a trio loop of its own, so processes driven from trio
cannot outlive a test; starting a node and three modules per cell would cost more
than the cells. The harness runs one trio loop in a thread of its own for a whole
test module: the tests are plain functions that hand it one cell at a time
(:meth:`Harness.run`) and get the cell's result, or its exception, back.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from logos_p2p.client import connect

from . import peer as p
from .modproc import ModuleProcess, start_module
from .nodeproc import NodeProcess, start_node

PATHS = ("socket", "push", "pull")
MAX_TIMEOUTS = 3  # a wedged data path makes every later cell wait its whole timeout: stop there
KINDS = tuple(f"{direction}-{path}" for direction in ("inbound", "outbound") for path in PATHS)


@dataclass
class Pair:
    """One stream: the peer's end (a py-libp2p stream) and the module's (a key in its process)."""

    kind: str
    peer: Any
    module: ModuleProcess
    key: str


class Harness:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.node: NodeProcess | None = None
        self.peer: p.Peer | None = None
        self.modules: dict[str, ModuleProcess] = {}
        self._incoming: dict[str, trio.MemoryReceiveChannel[Any]] = {}
        self._opened = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._probe: Any = None
        self.timeouts = 0  # cells that ran out of time
        self._jobs, self._receive_jobs = trio.open_memory_channel[Any](1)
        self._thread = threading.Thread(target=self._thread_main, name="conformance-harness", daemon=True)

    # -- lifetime (main thread) -------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the harness did not start")
        if self._error is not None:
            raise RuntimeError("the harness did not start") from self._error

    def close(self) -> None:
        try:
            if self._token is not None and self._stop is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join(30)
        finally:
            for module in self.modules.values():
                module.kill()
            if self.node is not None:
                self.node.kill()

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float = 60) -> Any:
        """Run ``await fn(self, *args)`` on the harness loop; its result, or its exception."""
        if self._token is None:
            raise RuntimeError("the harness is not running")
        if self.timeouts >= MAX_TIMEOUTS:
            raise RuntimeError(f"{self.timeouts} cells timed out already: the rest would only wait as long")

        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        trio.from_thread.run(self._jobs.send, (done, partial(fn, self, *args), timeout), trio_token=self._token)
        return done.result()

    # -- the loop (harness thread) --------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._stop = trio.Event()
        self.node = start_node(self.workdir / "node")
        async with p.open_peer() as peer, trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            self.peer = peer
            for path in PATHS:
                module = await start_module(nursery, self.node.rpc, path, f"conformance-{path}")
                self.modules[path] = module
                await module.call("register_holder", "in", [self.protocol("inbound", path)])
                self._incoming[path] = peer.serve(self.protocol("outbound", path), buffer=1)
            async with trio_asyncio.aio_as_trio(connect(self.node.rpc, name="probe")) as probe:
                self._probe = probe
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set()
                async with trio.open_nursery() as jobs:
                    jobs.start_soon(self._run_jobs)
                    await self._stop.wait()
                    jobs.cancel_scope.cancel()
            nursery.cancel_scope.cancel()

    async def _run_jobs(self) -> None:
        """Run the cells the tests send, one at a time, inside the harness's loops (a cell
        uses the peer, the modules and the asyncio loop that trio-asyncio runs here)."""
        async for done, job, timeout in self._receive_jobs:
            try:
                with trio.fail_after(timeout):
                    result = await job()
            except BaseException as exc:  # the test raises it
                if isinstance(exc, trio.TooSlowError):
                    self.timeouts += 1
                done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                done.set_result(result)

    # -- helpers for cells (harness thread) ---------------------------------------------------------

    @staticmethod
    def protocol(direction: str, path: str) -> str:
        return f"/conformance/{direction}/{path}/1.0.0"

    async def open(self, kind: str) -> Pair:
        """A fresh stream of ``kind`` ("inbound-push", ...)."""
        direction, path = kind.split("-")
        module, peer, node = self.modules[path], self.peer, self.node
        assert peer is not None and node is not None
        if direction == "inbound":
            stream = await peer.open(node.addr, [self.protocol(direction, path)])
            key = (await module.event("stream"))["key"]
        else:
            self._opened += 1
            key = f"out-{self._opened}"
            await module.call("open_stream", key, peer.peer_id, [self.protocol(direction, path)], [peer.addr], 10)
            stream = await self._incoming[path].receive()
        return Pair(kind, stream, module, key)

    async def finish(self, pair: Pair) -> None:
        """After a cell: reset what is left of the stream, let the handler go."""
        with contextlib.suppress(Exception):
            await pair.peer.reset()
        await pair.module.call("forget_stream", pair.key)
        if pair.kind.startswith("inbound"):
            pair.module.signal(f"release:{pair.key}")

    async def node_streams(self) -> tuple[int, int]:
        """(streams, tasks) the node holds for the modules (the probe's own are none)."""
        status = await trio_asyncio.aio_as_trio(self._probe.status)()
        return status["streams"], status["tasks"]

    async def nothing_left(self, timeout: float = 5) -> None:
        """Wait until the node holds no stream and runs no stream task."""
        with trio.fail_after(timeout):
            while await self.node_streams() != (0, 0):  # noqa: ASYNC110 - state in another process
                await trio.sleep(0.01)


def start_harness(workdir: Path) -> Harness:
    harness = Harness(workdir)
    try:
        harness.start()
    except BaseException:
        harness.close()
        raise
    return harness


async def peer_write(stream: Any, data: bytes, how: str) -> None:
    """Write ``data`` the way ``how`` says: whole (one call), pieces (4093-byte calls), or
    slow (32 KiB calls, pausing 2 ms between: slower than the module reads)."""
    from logos_p2p.server import _libp2p

    if how == "whole":
        await _libp2p.write(stream, data)
        return
    step = 4093 if how == "pieces" else 32 * 1024
    for i in range(0, len(data), step):
        await _libp2p.write(stream, data[i : i + step])
        if how == "slow":
            await trio.sleep(0.002)
