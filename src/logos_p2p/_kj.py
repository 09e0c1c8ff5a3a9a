"""pycapnp's KJ event loop on the running asyncio loop, shared by all users.

``capnp.kj_loop()`` must be active on an asyncio loop before any RPC. The
client library and the node both need it, possibly at the same time in one
process (tests, or a module embedded in the node's process), and pycapnp
allows one per loop -- so :func:`kj_loop` counts its users per loop and
enters/exits pycapnp's loop once. If something else already runs pycapnp's
loop (``capnp.run(...)``), it is used as is.

``capnp.kj_loop()`` is a Cython async generator; trio-asyncio's asyncgen
``firstiter`` hook fails on it (``'async_generator' object has no attribute
'ag_frame'``), so the hook is set to None while it is entered. This works on
plain asyncio too, and needs no import of trio-asyncio.

On a trio-asyncio loop (the node's, or a module author's on trio) the KJ loop
also gets :class:`_GcSafeQueue`: pycapnp queues asyncio callbacks from
garbage-collection finalizers, which trio-asyncio's queue cannot take.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import capnp


class _GcSafeQueue:
    """Keeps trio-asyncio's callback queue out of garbage-collection finalizers.

    trio-asyncio queues every asyncio callback (``call_soon``, a future's done
    callbacks, ``create_task``) on a trio memory channel, whose ``send_nowait``
    and ``receive`` are not reentrant. pycapnp calls ``loop.call_soon`` whenever
    its KJ loop becomes runnable -- also from the finalizer of a capnp object
    the cyclic garbage collector frees, and a collection can start at any
    allocation, e.g. inside the loop's own ``receive`` between "queue empty" and
    "now waiting". The callback then lands in the buffer of a queue whose reader
    sleeps (every RPC connection stops answering) and the next ``call_soon``
    fails trio's ``assert not data`` (on the node, in a trio task, that ended it).

    While a collection runs, callbacks go through trio's ``run_sync_soon`` (as
    trio-asyncio's own ``call_soon_threadsafe`` does), which is safe from
    signal handlers and so from finalizers; they reach the queue at the next
    scheduler turn. Only the loop's attributes are used: no trio import here.
    """

    collecting = False
    _installed = 0

    @staticmethod
    def applies(loop: asyncio.AbstractEventLoop) -> bool:
        return all(hasattr(loop, name) for name in ("_queue_handle", "_q_send", "_token"))

    @classmethod
    def on_gc(cls, phase: str, info: dict[str, Any]) -> None:
        cls.collecting = phase == "start"

    @classmethod
    def install(cls, loop: Any) -> Callable[[], None]:
        """Route ``loop``'s queueing around collections; returns the undo."""
        queue_now = loop._queue_handle
        send, token = loop._q_send.send_nowait, loop._token

        def queue_handle(handle: Any) -> Any:
            if cls.collecting:
                loop._check_closed()
                token.run_sync_soon(send, handle)
                return handle
            return queue_now(handle)

        loop._queue_handle = queue_handle
        cls._installed += 1
        if cls._installed == 1:
            gc.callbacks.append(cls.on_gc)

        def undo() -> None:
            loop._queue_handle = queue_now
            cls._installed -= 1
            if cls._installed == 0:
                gc.callbacks.remove(cls.on_gc)
                cls.collecting = False

        return undo


class _Users:
    __slots__ = ("cm", "count", "undo")

    def __init__(self, cm: AbstractAsyncContextManager[None], undo: Callable[[], None]) -> None:
        self.cm = cm
        self.count = 0
        self.undo = undo


_users: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Users] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def kj_loop() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    users = _users.get(loop)
    if users is None:
        if hasattr(loop, "_kj_loop"):  # started by someone else: borrow it
            yield
            return
        cm = capnp.kj_loop()
        hooks = sys.get_asyncgen_hooks()
        sys.set_asyncgen_hooks(firstiter=None, finalizer=hooks.finalizer)
        try:
            await cm.__aenter__()
        finally:
            sys.set_asyncgen_hooks(*hooks)
        undo = _GcSafeQueue.install(loop) if _GcSafeQueue.applies(loop) else (lambda: None)
        users = _users[loop] = _Users(cm, undo)
    users.count += 1
    try:
        yield
    finally:
        users.count -= 1
        if users.count == 0:
            del _users[loop]
            try:
                await users.cm.__aexit__(None, None, None)
            finally:
                users.undo()


def stream_on(transport: asyncio.BaseTransport) -> Any:
    """A capnp ``AsyncIoStream`` on an asyncio transport that already carried other bytes
    (a TLS connection, after the token exchange ran on it).

    pycapnp makes its streams only while it opens or accepts the connection itself; its
    ``AsyncIoStream._connect`` is the protocol factory of ``create_server``, which hands
    the stream to a callback when the protocol is connected. Here it is connected to a
    transport that is open already: the transport switches to the new protocol, and
    bytes that arrive from now on are Cap'n Proto's. The caller makes sure none arrived
    before (the peer waits for the exchange to end before it sends any).
    """
    made: list[Any] = []
    protocol = capnp.AsyncIoStream._connect(made.append)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return made[0]
