"""The trio <-> asyncio hand-off, in one place.

The node runs py-libp2p on trio and pycapnp on asyncio, both on one thread:
trio-asyncio runs the asyncio loop inside trio. Because they share a thread,
plain synchronous calls cross freely -- setting a trio Event from asyncio
code, resolving an asyncio future from trio code -- at a fraction of the
cost of ``trio_as_aio``/``aio_as_trio``, which also start a task per call
(which would reorder pipelined writes; bench/README.md has the figures).

So the bridge keeps its state in plain Python and uses:

* :class:`Wakeup` -- "something changed": either side notifies, either side
  waits and then re-checks its own condition;
* :class:`Loops` -- the running loops: spawn asyncio tasks from trio code,
  start trio tasks from asyncio code, await a trio function from asyncio code
  (:meth:`Loops.to_trio`, for control operations: dialing, opening streams)
  and an asyncio one from trio code (:meth:`Loops.to_aio`), and schedule a
  callback into trio from *any* context, including ``__del__`` during
  garbage collection;
* :class:`Calls` -- the control calls in flight in asyncio, which shutdown cancels.

Swap this module (e.g. for asyncio in its own thread) and only it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import trio_asyncio

from .._kj import kj_loop
from .._waiters import AioWaiters
from .._wire import RemoteError
from ..errors import NodeShutdown

T = TypeVar("T")
log = logging.getLogger("logos_p2p.node")


class Wakeup:
    """Wakes every current waiter, trio or asyncio, on :meth:`notify`.

    Level-free on purpose: a waiter checks its condition, waits, and checks
    again. Cancelling one waiter never disturbs another.
    """

    __slots__ = ("_aio", "_trio")

    def __init__(self) -> None:
        self._trio: trio.Event | None = None
        self._aio = AioWaiters()

    def notify(self) -> None:
        if self._trio is not None:
            event, self._trio = self._trio, None
            event.set()
        self._aio.notify()

    async def wait_trio(self) -> None:
        if self._trio is None:
            self._trio = trio.Event()
        await self._trio.wait()

    async def wait_aio(self) -> None:
        await self._aio.wait()

    def future_aio(self) -> asyncio.Future[None]:
        """Completed by the next :meth:`notify` (registered now; cancel it when done)."""
        return self._aio.future()


class Loops:
    """Both loops of the node, usable from either side."""

    def __init__(self, nursery: trio.Nursery, aio_loop: asyncio.AbstractEventLoop) -> None:
        self.nursery = nursery
        self.aio = aio_loop
        self.token = trio.lowlevel.current_trio_token()
        self._aio_tasks: set[asyncio.Task[Any]] = set()

    def spawn_aio(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start an asyncio task (from trio or asyncio code); kept referenced until done."""
        task = self.aio.create_task(coro)
        self._aio_tasks.add(task)
        task.add_done_callback(self._aio_done)
        return task

    def _aio_done(self, task: asyncio.Task[Any]) -> None:
        self._aio_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Not loop.call_exception_handler: under trio-asyncio that re-raises
            # into trio and would stop the whole node for one failed task.
            log.error("a node task failed", exc_info=task.exception())

    def spawn_trio(self, fn: Callable[[], Awaitable[Any]]) -> None:
        """Start a trio task in the node's nursery (from trio or asyncio code).

        Once the node is stopping (its nursery closed), this does nothing.
        """
        try:
            self.nursery.start_soon(fn)
        except RuntimeError:  # "Nursery is closed to new arrivals"
            log.debug("the node is stopping; %r not started", fn)

    async def to_trio(self, fn: Callable[[], Awaitable[T]], orphan: Callable[[T], Any] | None = None) -> T:
        """From asyncio: run the trio function ``fn`` in the node's nursery and await it.

        Cancelling the caller cancels ``fn``. If ``fn`` still produced a result
        the caller can no longer take (it was cancelled at that moment), the
        result goes to ``orphan`` -- so a stream opened for a caller that gave
        up is reset, not leaked. If the trio side stops (node shutdown), the
        caller gets :class:`~logos_p2p.errors.NodeShutdown`.
        """
        fut: asyncio.Future[T] = self.aio.create_future()
        scope = trio.CancelScope()

        async def runner() -> None:
            try:
                with scope:
                    try:
                        result = await fn()
                    except Exception as exc:
                        if not fut.done():
                            fut.set_exception(exc)
                        return
                    if fut.done():
                        if orphan is not None:
                            orphan(result)
                    else:
                        fut.set_result(result)
            finally:
                if not fut.done():
                    fut.set_exception(NodeShutdown())

        self.nursery.start_soon(runner)
        try:
            return await fut
        except asyncio.CancelledError:
            scope.cancel()
            if orphan is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
                orphan(fut.result())
            raise

    async def to_aio(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """From trio (any task, even outside ``open_loops``): await the asyncio coroutine function ``fn``."""
        return await self.aio.run_aio_coroutine(fn())  # type: ignore[attr-defined,no-any-return]

    def soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in trio at the next turn. Safe from any context (GC, other threads).

        ``fn`` runs as a trio system callback, where an exception would be a
        TrioInternalError ending the whole node: its errors are logged instead.
        """

        def guarded() -> None:
            try:
                fn()
            except Exception:
                log.exception("a deferred node callback failed")

        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(guarded)

    @property
    def aio_tasks(self) -> int:
        return len(self._aio_tasks)


class Calls:
    """Control calls in flight in asyncio (dials, opens, disconnects): once :meth:`close`
    is called new ones fail with NodeShutdown, and :meth:`cancel` makes those in flight
    fail with it too."""

    def __init__(self) -> None:
        self.closed = False
        self.tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self.tasks)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.closed:
            coro.close()
            raise NodeShutdown()
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            return await coro
        except asyncio.CancelledError:
            if self.closed:
                task.uncancel()  # this cancellation is handled: it becomes NodeShutdown
                raise NodeShutdown() from None
            raise
        finally:
            self.tasks.discard(task)

    def close(self) -> None:
        self.closed = True

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()


def _log_asyncio_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    message = str(context.get("message", "error"))
    exc = context.get("exception")
    if message.startswith("Cancelled server method") and isinstance(exc, RemoteError):
        # pycapnp: the call ended with our answer just before the module cancelled it.
        # Expected, and the answer is moot; keep the traceback (and its frames) out of logs.
        log.debug("asyncio: %s: %s", message, exc)
        return
    log.warning("asyncio: %s", message, exc_info=exc)


@asynccontextmanager
async def open_loops() -> AsyncIterator[Loops]:
    """From trio: run an asyncio loop (trio-asyncio) with pycapnp's KJ loop on it.

    The yielded :class:`Loops` has a nursery for the node's tasks; it is
    cancelled on exit, before the KJ loop stops.
    """
    async with trio_asyncio.open_loop() as aio_loop, trio.open_nursery() as outer:
        # trio-asyncio's default handler re-raises asyncio errors into trio, which
        # would stop the node; pycapnp reports e.g. a cancelled call that raised there.
        aio_loop.set_exception_handler(_log_asyncio_error)
        entered = trio.Event()
        release = trio.Event()

        async def hold_kj() -> None:
            async with kj_loop():
                entered.set()
                await trio_asyncio.trio_as_aio(release.wait)()

        outer.start_soon(trio_asyncio.aio_as_trio(hold_kj))
        await entered.wait()
        try:
            async with trio.open_nursery() as inner:
                try:
                    yield Loops(inner, aio_loop)
                finally:
                    inner.cancel_scope.cancel()
        except BaseException as exc:
            # The caller reports the error; the whole tree is for debugging (were the
            # teardown below ever to hang, this is the only place it would show).
            log.debug("the node's loops are stopping on an error", exc_info=exc)
            raise
        finally:
            release.set()
