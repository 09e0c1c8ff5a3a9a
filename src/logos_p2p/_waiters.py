"""Wake every waiting asyncio task at once; each re-checks its own condition.

Shared by the client's stream buffer and the node's cross-loop Wakeup.
Cancelling one waiter never disturbs another (each has its own future).
"""

from __future__ import annotations

import asyncio
import contextlib


class AioWaiters:
    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] = []

    def notify(self) -> None:
        if self._futures:
            futures, self._futures = self._futures, []
            for fut in futures:
                if not fut.done():
                    fut.set_result(None)

    def future(self) -> asyncio.Future[None]:
        """A future the next :meth:`notify` completes, registered now (for asyncio.wait
        beside other things; cancel it when done with it)."""
        fut = asyncio.get_running_loop().create_future()
        self._futures.append(fut)
        return fut

    async def wait(self) -> None:
        fut = self.future()
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._futures.remove(fut)
