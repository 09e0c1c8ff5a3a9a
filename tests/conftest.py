"""Fixtures: a node process, in-process peers, module processes, a client on trio-asyncio."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio

from logos_p2p.client import connect

from .support.cpp_harness import cpp, driver, driver_factory, processes  # noqa: F401  (fixtures)
from .support.modproc import ModuleProcess, start_module
from .support.nodeproc import NodeProcess, spawn_node, wait_ready
from .support.peer import Peer, open_peer
from .support.zygote import close_zygote


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Default sockets and TCP tokens of this run's nodes and modules live in a directory
    of its own (``$XDG_RUNTIME_DIR``, inherited by every process a test starts)."""
    runtime = tmp_path_factory.mktemp("runtime")
    runtime.chmod(0o700)
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        yield runtime
    finally:
        if old is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def node_zygote() -> Iterator[None]:
    """The process test nodes fork from (support/zygote.py), killed by its PID at the end."""
    try:
        yield
    finally:
        close_zygote()


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


@pytest.fixture
def node_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Nodes for one test, killed by PID afterwards; if the test failed, each live node
    first writes its state snapshot (SIGUSR1) into the log shown with the failure."""
    nodes: list[NodeProcess] = []
    counter = iter(range(100))

    def make(*args: str, rpc: str | None = None, nofile: int | None = None, wait: bool = True) -> NodeProcess:
        """A started node; with ``wait=False`` only spawned (``wait_ready`` it before use)."""
        node = spawn_node(tmp_path / f"node{next(counter)}", *args, rpc=rpc, nofile=nofile)
        nodes.append(node)
        return wait_ready(node) if wait else node

    try:
        yield make
    finally:
        failed = request.node.stash.get(FAILED, False)
        for node in nodes:
            if failed and (snap := node.snapshot()):
                print(f"--- node {node.pid} at the failure ---\n{snap}")
            node.kill()


@pytest.fixture
def node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    return node_factory()


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    async with open_peer() as p:
        yield p


@pytest.fixture(params=["socket", "push", "pull"])
def data_path(request: pytest.FixtureRequest) -> str:
    """The module's data path: every test that starts modules runs on each."""
    return str(request.param)


@pytest.fixture
async def modules(nursery: trio.Nursery, data_path: str) -> AsyncIterator[Callable[..., Awaitable[ModuleProcess]]]:
    started: list[ModuleProcess] = []
    default_path = data_path

    async def make(node: NodeProcess, data_path: str = default_path, name: str = "test-module") -> ModuleProcess:
        module = await start_module(nursery, node.rpc, data_path, name)
        started.append(module)
        return module

    try:
        yield make
    finally:
        for module in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(module.pid, signal.SIGKILL)
            with trio.move_on_after(5):
                await module.proc.wait()


@pytest.fixture
async def aio() -> AsyncIterator[Any]:
    """An asyncio loop inside the test's trio loop (for client calls from the test)."""
    async with trio_asyncio.open_loop() as loop:
        yield loop


async def run_aio(fn: Callable[[], Awaitable[Any]]) -> Any:
    """From a trio test: run the asyncio function ``fn`` on a loop of its own.

    Its error comes out as itself, not inside trio-asyncio's exception groups.
    """
    try:
        async with trio_asyncio.open_loop():
            return await trio_asyncio.aio_as_trio(fn)()
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        raise leaf from None


async def node_status(rpc: str) -> dict[str, Any]:
    """The node's status, asked over a fresh connection named "probe" (left out of modules)."""

    async def ask() -> dict[str, Any]:
        async with connect(rpc, name="probe") as n:
            return await n.status()

    status = await run_aio(ask)
    status["modules"] = [m for m in status["modules"] if m["name"] != "probe"]
    return status


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = "") -> None:
    """Wait until ``check()`` is true; fail after ``timeout``.

    For state in another process (the node's status over RPC), where there is
    no event to wait on: re-ask until it holds, within a hard deadline.
    """
    with trio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - the condition lives in another process
            await trio.sleep(0.02)
