"""The engine of the blocking client (:mod:`.blocking`): the asyncio client on a loop thread
of its own, a pool of handler threads, how a call crosses from a thread to that loop and
back, and the loop's side of peer events."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import InvalidArgument, NodeUnavailable, Timeout
from . import Node as AioNode
from . import PeerEvent
from . import connect as aio_connect
from ._args import OPEN_ANSWER_GRACE

log = logging.getLogger("logos_p2p.client")
T = TypeVar("T")
Seconds = float | None
Bytes = bytes | bytearray | memoryview

CALL = 30.0  # the default wait of a call that has no timeout of its own
MARGIN = OPEN_ANSWER_GRACE + 1.0  # the wait beyond a call's own timeout
STOP_WAIT = 5.0  # how long a call that timed out may take to stop


def _detached(exc: BaseException) -> BaseException:
    """``exc`` and its chain without tracebacks, whose frames hold capnp objects: they die
    here, on the loop thread, not in the thread that the error is raised in."""
    todo, seen = [exc], set()
    while todo:
        if id(e := todo.pop()) not in seen:
            seen.add(id(e))
            e.__traceback__ = None
            todo += [c for c in (e.__cause__, e.__context__) if c is not None]
            todo += list(e.exceptions) if isinstance(e, BaseExceptionGroup) else []
    return exc


async def _now(fn: Callable[[], T]) -> T:
    return fn()


class _Cancelled(Exception):
    """A call's outcome until it has another: its task was cancelled."""


class _Call:
    """One call handed to the loop: its task there, its outcome for the thread that waits."""

    __slots__ = ("done", "error", "task", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.task: asyncio.Task[None] | None = None
        self.value: Any = None
        self.error: BaseException | None = _Cancelled()


class _Loop:
    """The engine under :class:`Node`: the asyncio client on a loop thread of its own, a pool
    of handler threads, and the way a call crosses from a thread to the loop and back.

    The asyncio objects it wraps stay in ``held`` (touched on the loop thread only), by
    token; a wrapper dying in any thread sends its token to the loop, where they go.
    """

    def __init__(self, address: str | None, timeout: float, handler_threads: int, kwargs: dict[str, Any]) -> None:
        if isinstance(handler_threads, bool) or not isinstance(handler_threads, int) or handler_threads < 1:
            raise InvalidArgument("handler_threads must be a positive number")
        self.address, self.data_path, self.disconnected = address or "", "", threading.Event()
        self.closing = False  # close() began (under _lock)
        self._lock = threading.Lock()
        self._accepting = False  # calls may go to the loop (under _lock)
        self._ready, self._closed = threading.Event(), threading.Event()
        self._error: BaseException | None = None
        self.held: dict[int, Any] = {}
        self._tokens = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._workers: set[threading.Thread] = set()
        self._pool = ThreadPoolExecutor(
            handler_threads, "logos-p2p-handler", initializer=_enrol, initargs=(self._workers,)
        )
        self._runner = asyncio.Runner(loop_factory=asyncio.SelectorEventLoop)  # plain, whatever the policy
        self.loop = self._runner.get_loop()  # made here; run, and touched, on the loop thread only
        self._stop = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self.anode: AioNode
        name = f"logos-p2p-loop {address or 'default'}"
        self.thread = threading.Thread(target=self._serve, args=(address, timeout, kwargs), name=name, daemon=True)
        self.thread.start()
        if not self._ready.wait(timeout + MARGIN):  # a backstop: the asyncio connect has its timeout
            self._error = Timeout(f"connecting took longer than {timeout + MARGIN:g}s")
            self.loop.call_soon_threadsafe(self._abort)
        if self._error is not None:
            self.thread.join()
            self._pool.shutdown()
            raise self._error

    # -- on the loop thread ----------------------------------------------------------------------

    def _serve(self, address: str | None, timeout: float, kwargs: dict[str, Any]) -> None:
        with self._runner:  # closing it cancels what is left, then closes the loop
            self._runner.run(self._run_node(address, timeout, kwargs))
        vars(self).pop("anode", None)
        gc.collect()  # the connection's capnp objects in reference cycles go here, not in another thread

    async def _run_node(self, address: str | None, timeout: float, kwargs: dict[str, Any]) -> None:
        self._main = asyncio.current_task()
        try:
            async with aio_connect(address, timeout=timeout, **kwargs) as anode:
                self.anode, self.address, self.data_path = anode, anode.address, anode.data_path
                self.spawn(self._watch(anode.disconnected))
                with self._lock:
                    self._accepting = True
                self._ready.set()
                try:
                    await self._stop.wait()
                finally:
                    await anode.aclose()  # handlers are cancelled, their streams reset
                    await self._teardown()
        except BaseException as exc:
            if self._ready.is_set():
                raise
            self._error = self._error or _detached(exc)
        finally:
            with self._lock:
                self._accepting = False
            self.disconnected.set()
            self._ready.set()

    def _abort(self) -> None:
        if self._ready.is_set():
            self._stop.set()
        elif self._main is not None:
            self._main.cancel()

    async def _watch(self, disconnected: asyncio.Event) -> None:
        await disconnected.wait()
        self.disconnected.set()

    async def _teardown(self) -> None:
        with self._lock:
            self._accepting = False
        marker = self.loop.create_future()
        self.loop.call_soon(marker.set_result, None)
        await marker  # every call handed over before now has been refused
        for task in (tasks := list(self._tasks)):
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self.held.clear()  # released here, inside the KJ loop

    def spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start(self, call: _Call, fn: Callable[[], Awaitable[Any]]) -> None:
        if not self._accepting:
            call.error = NodeUnavailable("this blocking node is closed")
            call.done.set()
            return
        call.task = self.spawn(self._step(call, fn))
        call.task.add_done_callback(lambda _: call.done.set())  # also if cancelled before it ran

    @staticmethod
    async def _step(call: _Call, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            call.value = await fn()
            call.error = None
        except asyncio.CancelledError:
            pass  # the outcome stays _Cancelled
        except BaseException as exc:
            call.error = _detached(exc)

    def hold(self, obj: Any) -> int:
        self.held[token := next(self._tokens)] = obj
        return token

    def release(self, token: int) -> None:
        """A wrapper died, in any thread: its asyncio object goes, on the loop thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the object went with it
            self.loop.call_soon_threadsafe(self._drop, token)

    def _drop(self, token: int) -> None:
        if isinstance(obj := self.held.pop(token, None), _Events):
            self.spawn(obj.aclose())

    async def in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.loop.run_in_executor(self._pool, fn, *args)

    # -- in the calling thread ---------------------------------------------------------------

    def run(self, fn: Callable[[], Awaitable[T]], timeout: Seconds) -> T:
        """``fn()`` awaited on the loop; its result, or its error raised here."""
        if threading.get_ident() == self.thread.ident:
            raise RuntimeError("a blocking call on its node's own loop thread would deadlock: use the asyncio API")
        call = _Call()
        with self._lock:
            if not self._accepting:
                raise NodeUnavailable("this blocking node is closed")
            self.loop.call_soon_threadsafe(self._start, call, fn)
        try:
            done = call.done.wait(timeout)
        finally:
            if not call.done.is_set():  # a timeout, or KeyboardInterrupt
                with self._lock:
                    if self._accepting:  # else the teardown cancels it
                        self.loop.call_soon_threadsafe(lambda: call.task and call.task.cancel())
        if not done and (not call.done.wait(STOP_WAIT) or isinstance(call.error, _Cancelled)):
            raise Timeout(f"not done within {timeout:g}s")
        if isinstance(call.error, _Cancelled):
            raise NodeUnavailable("the blocking node closed during the call")
        if (error := call.error) is not None:
            try:
                raise error
            finally:  # no cycle through this frame: what the error holds goes when it goes
                del call, error
        return call.value  # type: ignore[no-any-return]

    def close(self, timeout: Seconds) -> None:
        if threading.get_ident() == self.thread.ident:
            raise RuntimeError("close() on the node's own loop thread would deadlock")
        with self._lock:
            first, self.closing = not self.closing, True
            if first and self._accepting:
                self.loop.call_soon_threadsafe(self._stop.set)
        if not first:
            self._closed.wait(timeout)
            return
        end = None if timeout is None else time.monotonic() + timeout
        try:
            _join(self.thread, end)
            self._pool.shutdown(wait=False, cancel_futures=True)
            for worker in list(self._workers):
                if worker is not threading.current_thread() and not _join(worker, end):
                    log.warning("a handler thread of %r still runs after close()", self)
        finally:
            self._closed.set()


def _enrol(workers: set[threading.Thread]) -> None:  # not a method: the pool would hold the _Loop
    workers.add(threading.current_thread())


def _join(thread: threading.Thread, end: float | None) -> bool:
    thread.join(None if end is None else max(0.0, end - time.monotonic()))
    return not thread.is_alive()


class _Events:
    """The loop's side of peer events: a task over an asyncio ``PeerEvents`` that fills a
    queue of one (the bound stays the node's ``queue_size``), or runs a callback per event."""

    END = object()

    def __init__(self, engine: _Loop, events: Any, callback: Callable[[PeerEvent], object] | None) -> None:
        self.events, self.queue = events, asyncio.Queue[Any](1)
        self.task = engine.spawn(self._pump() if callback is None else self._feed(engine, callback))

    async def _pump(self) -> None:
        end: Any = self.END
        with contextlib.suppress(asyncio.CancelledError):  # kept, it would hold this frame
            try:
                async for event in self.events:
                    await self.queue.put(event)
            except Exception as exc:  # for the next get; the gets after it see the end
                end = _detached(exc)
            await self.queue.put(end)

    async def _feed(self, engine: _Loop, callback: Callable[[PeerEvent], object]) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            async for event in self.events:
                try:
                    await engine.in_pool(callback, event)
                except Exception:
                    log.exception("the peer event callback %r raised", callback)

    async def get(self) -> Any:
        item = await self.queue.get()  # cancel-safe: a cancelled get takes nothing
        if item is self.END or isinstance(item, BaseException):
            self.queue.put_nowait(self.END)
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        self.task.cancel()
        await asyncio.wait([self.task])
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(self.END)  # a get still waiting ends
        await self.events.aclose()


async def _closing(events: _Events | None) -> None:
    if events is not None:
        await events.aclose()
