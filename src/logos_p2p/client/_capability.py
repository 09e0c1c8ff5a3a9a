"""The capability data path, module side: a stream as a ``Stream`` capability of the node's.

(The node side is :mod:`logos_p2p.server._capability_bridge`.) Inbound bytes reach the
stream's buffer one of two ways:

* push -- the node pushes to a ``ByteSink`` the module serves (:class:`_Sink`); the
  sink answers once the bytes fit the buffer, which is the backpressure;
* pull -- the module asks with ``Stream.read(maxBytes, position)``; the position cursor
  makes a cancelled read lose nothing.

Writes go through a bounded window of in-flight ``write`` calls (:class:`_Writer`).
The sink never references the :class:`~._stream.Stream`: when the module drops its
Stream without closing it, the capability is released and the node resets the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .. import _schema
from ..errors import Cause, LogosP2PError, StreamReset
from ._stream import Transport, Tuning, _Core
from ._translate import to_error, translate

schema = _schema.load()


class _Sink(schema.ByteSink.Server):  # type: ignore[name-defined,misc]
    """Receives the node's pushes. Holds only the core, never the Stream."""

    def __init__(self, core: _Core) -> None:
        self._core = core

    async def push(self, data: bytes, **_: Any) -> None:
        core = self._core
        core.feed(data)  # before any await: pushes stay in order
        while core.full():
            await core.wait()

    async def end(self, reason: Any, **_: Any) -> None:
        if reason.which() == "eof":
            if not self._core.state.is_reset:
                self._core.remote_eof()
        else:
            self._core.fail(Cause.parse(reason.reset), reason.message)


class _Pull:
    """Reads pulled with ``Stream.read``: the cursor is the stream offset of the next byte."""

    def __init__(self, cap: Any, shutting_down: Any) -> None:
        self._cap = cap
        self._position = 0
        self._shutting_down = shutting_down

    async def fill(self, core: _Core) -> None:
        try:
            with translate(self._shutting_down):
                answer = await self._cap.read(maxBytes=Tuning.pull_chunk, position=self._position)
        except StreamReset as exc:
            core.fail(exc.cause, str(exc))
            return
        if answer.next != self._position + len(answer.data):
            core.fail(Cause.PROTOCOL_ERROR, "the node answered a read out of position")
            return
        self._position = answer.next
        if answer.data:
            core.feed(answer.data)
        if answer.eof:
            core.remote_eof()

    def release(self) -> None:
        self._cap = None


class _Writer:
    """A bounded window of in-flight write calls; their failures surface on later calls."""

    def __init__(self, cap: Any, core: _Core, shutting_down: Any) -> None:
        self._cap = cap
        self._core = core
        self._shutting_down = shutting_down
        self._inflight = 0
        self._calls: set[asyncio.Future[Any]] = set()
        self.error: LogosP2PError | None = None
        self._room = asyncio.Event()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error
        self._core.state.check_write()

    async def write(self, view: memoryview) -> None:
        if not view:
            self._raise_if_failed()
            return
        while True:
            self._raise_if_failed()
            chunk = bytes(view[: Tuning.write_chunk])
            view = view[len(chunk) :]
            while self._inflight and self._inflight + len(chunk) > Tuning.write_window:
                self._room.clear()
                await self._room.wait()
                self._raise_if_failed()
            self._send(self._cap.write(data=chunk), len(chunk))
            if not view:
                return

    def _send(self, request: Any, size: int) -> None:
        fut = asyncio.ensure_future(request)
        self._inflight += size
        self._calls.add(fut)
        fut.add_done_callback(lambda f: self._done(f, size))

    def _done(self, fut: asyncio.Future[Any], size: int) -> None:
        self._inflight -= size
        self._calls.discard(fut)
        if not fut.cancelled() and fut.exception() is not None and self.error is None:
            error = to_error(fut.exception(), self._shutting_down())  # type: ignore[arg-type]
            self.error = error
            if isinstance(error, StreamReset):
                self._core.fail(error.cause, str(error))
        self._room.set()

    async def flush(self) -> None:
        """Wait for every write in flight; raise the first failure."""
        while self._calls:
            await asyncio.wait(list(self._calls))
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        for fut in list(self._calls):
            fut.cancel()
        self._cap = None


class CapabilityTransport(Transport):
    """The ``Stream`` capability: inbound bytes pushed to a sink or pulled; windowed writes.

    Made before the capability exists (an outbound push stream's sink goes with the
    open request), then attached to it (:meth:`attach`).
    """

    def __init__(self, core: _Core, *, push: bool, shutting_down: Any) -> None:
        self._core = core
        self._cap: Any = None
        self._shutting_down = shutting_down
        self.sink = _Sink(core) if push else None
        self._pull: _Pull | None = None
        self._writer: _Writer | None = None

    def attach(self, cap: Any) -> CapabilityTransport:
        self._cap = cap
        if self.sink is None:
            self._pull = _Pull(cap, self._shutting_down)
        self._writer = _Writer(cap, self._core, self._shutting_down)
        return self

    async def fill(self, core: _Core) -> None:
        if self._pull is not None:
            await self._pull.fill(core)
        else:
            await core.wait()

    async def write(self, data: memoryview) -> None:
        assert self._writer is not None
        await self._writer.write(data)

    async def flush(self) -> None:
        assert self._writer is not None
        await self._writer.flush()

    async def send_eof(self) -> None:
        with translate(self._shutting_down):
            await self._cap.closeWrite()

    async def close(self, writable: bool) -> None:
        with translate(self._shutting_down):
            await self._cap.close()

    async def reset(self) -> None:
        cap = self._cap
        if self._writer is not None:
            self._writer.cancel()
        if cap is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await cap.reset()

    def release(self) -> None:
        self._cap = None
        if self._writer is not None:
            self._writer.cancel()
        if self._pull is not None:
            self._pull.release()
