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
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import capnp


class _Users:
    __slots__ = ("cm", "count")

    def __init__(self, cm: AbstractAsyncContextManager[None]) -> None:
        self.cm = cm
        self.count = 0


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
        users = _users[loop] = _Users(cm)
    users.count += 1
    try:
        yield
    finally:
        users.count -= 1
        if users.count == 0:
            del _users[loop]
            await users.cm.__aexit__(None, None, None)
