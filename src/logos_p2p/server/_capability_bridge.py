"""The capability data path, node side: a bridge whose module holds a ``Stream`` capability.

(The module side is :mod:`logos_p2p.client._capability`.) Two bounded buffers:

* **inbound** (peer -> module): a trio *pump* task reads libp2p into ``rx`` while
  ``rx`` is below its bound, so a module that stops reading stops the pump and the
  muxer's window stops the peer. The module takes the bytes by pulling (``read`` /
  ``readLp`` RPCs, with a position cursor so a lost answer loses nothing) or, when it
  gave a sink, an asyncio *pusher* sends them with a bounded window of unanswered
  ``push`` calls.
* **outbound** (module -> peer): ``write`` RPCs append to ``tx`` synchronously, in the
  order they arrive, and are answered once ``tx`` is below its bound; a trio *writer*
  task drains ``tx`` to libp2p, then sends the half-close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from .._exclusive import Exclusive
from .._frames import lp_frame
from .._rxbuffer import RxBuffer
from .._state import Event, State
from ..errors import Cause, EndOfStream, InvalidArgument, LimitExceeded
from . import _libp2p
from ._bridge import MODULE_KNOWS, Bridge
from ._handoff import Wakeup

if TYPE_CHECKING:
    pass

log = logging.getLogger("logos_p2p.node")


class CapabilitySide:
    """The module side of a bridge on the capability path (it makes itself ``bridge.side``)."""

    def __init__(self, bridge: Bridge, sink: Any = None) -> None:
        """``sink``: the module's ByteSink, to push inbound bytes to (see :meth:`attach_sink`)."""
        self.bridge = bridge
        bridge.side = self
        self.tasks = (self._pump, self._writer)
        self.limits = bridge.limits
        self.loops = bridge.loops
        # inbound: peer -> module
        self.rx = RxBuffer()
        self.rx_delivered = 0  # pull mode: the furthest offset handed out
        self.rx_changed = Wakeup()
        self.reading = Exclusive("another read is pending on this stream")
        self.sink: Any = None
        self.push_inflight = 0
        # outbound: module -> peer
        self.tx: deque[bytes] = deque()
        self.tx_bytes = 0  # queued plus being written
        self.eof_wanted = False
        self.tx_changed = Wakeup()
        if sink is not None:
            self.attach_sink(sink)

    # -- the ModuleSide protocol -----------------------------------------------------

    def held(self) -> int:
        """A push in flight counts twice: the RPC system keeps its message until the module
        answers, beside the bytes the node still holds."""
        return len(self.rx) + 2 * self.push_inflight + self.tx_bytes

    def buffered(self) -> int:
        return len(self.rx) + self.tx_bytes + self.push_inflight

    def undelivered(self) -> bool:
        return bool(self.rx)

    def drop_inbound(self) -> None:
        self.rx.clear()

    def drop_outbound(self) -> None:
        self.tx.clear()
        self.tx_bytes = 0

    def on_reset(self, cause: Cause, message: str) -> None:
        if self.sink is not None and cause not in MODULE_KNOWS:
            self._tell_sink_end(cause, message)

    def detached(self) -> None:
        self.sink = None

    def wake(self) -> None:
        self.rx_changed.notify()
        self.tx_changed.notify()

    def _rx_held(self) -> int:
        """Inbound bytes the node holds for the module: buffered, and pushed but not answered
        (one bound for both: a module that stops answering stops the pump)."""
        return len(self.rx) + self.push_inflight

    # -- trio tasks ---------------------------------------------------------------------

    async def _pump(self) -> None:
        b, limits = self.bridge, self.limits
        while True:
            while b.state.state is not State.CLOSED and self._rx_held() >= max(limits.rx_buffer, self.rx.need):
                if b.wire_released or not await b.unless_wire_ends(self.rx_changed.wait_trio):
                    return
            if b.wire_released:
                return
            data = await _libp2p.read(b.net, limits.read_chunk)
            if data is None:
                b.remote_eof()
                return
            b.moved(bytes_in=len(data))
            if b.state.state is State.CLOSED:
                continue  # closed by the module: drain and drop
            self.rx.feed(data)
            b.meter()
            self.rx_changed.notify()

    async def _writer(self) -> None:
        b, limits = self.bridge, self.limits
        while True:
            while not self.tx and not self.eof_wanted and not b.wire_released:
                await self.tx_changed.wait_trio()
            if b.wire_released:
                return
            if not self.tx:
                await b.half_close()
                return
            batch = [self.tx.popleft()]
            size = len(batch[0])
            while self.tx and size + len(self.tx[0]) <= limits.write_batch:
                chunk = self.tx.popleft()
                batch.append(chunk)
                size += len(chunk)
            await _libp2p.write(b.net, batch[0] if len(batch) == 1 else b"".join(batch))
            self.tx_bytes -= size
            b.meter()
            b.moved(bytes_out=size)
            self.tx_changed.notify()

    # -- push mode (asyncio) --------------------------------------------------------------

    def attach_sink(self, sink: Any) -> None:
        """Push inbound bytes to ``sink`` from now on (instead of pull reads).

        The sink may arrive after the stream already ended (the handler's answer
        crossed a reset): then it only hears how it ended.
        """
        state = self.bridge.state
        if state.is_reset:
            assert state.cause is not None
            if state.cause not in MODULE_KNOWS:
                self._tell_sink_end(state.cause, state.message, sink)
            return
        self.sink = sink
        self.loops.spawn_aio(self._pusher())

    async def _pusher(self) -> None:
        b = self.bridge
        limits = self.limits
        b.tasks += 1
        try:
            while self.sink is not None:
                if b.state.state in (State.RESET, State.CLOSED):
                    return
                room = limits.push_window - self.push_inflight
                if self.rx and room > 0:
                    got = self.rx.peek(min(room, limits.max_push))
                    assert got is not None
                    data, n = got
                    self.rx.consume(n)
                    self.push_inflight += n
                    fut = asyncio.ensure_future(self.sink.push(data))
                    fut.add_done_callback(partial(self._push_done, n))
                    self.rx_changed.notify()
                    continue
                if b.rx_eof and not self.rx:
                    await self.sink.end(reason={"eof": None, "message": ""})
                    b.eof_told()
                    return
                await self.rx_changed.wait_aio()
        except Exception as exc:  # the sink is broken
            b.abandon(Cause.MODULE_GONE, f"pushing to the module failed: {exc}", linger=False)
        finally:
            b.tasks -= 1

    def _push_done(self, n: int, fut: asyncio.Future[Any]) -> None:
        b = self.bridge
        self.push_inflight -= n
        b.meter()
        failed = fut.cancelled() or fut.exception() is not None
        if failed and b.state.state not in (State.RESET, State.CLOSED):
            b.abandon(Cause.MODULE_GONE, "pushing to the module failed", linger=False)
        self.rx_changed.notify()

    def _tell_sink_end(self, cause: Cause, message: str, sink: Any = None) -> None:
        if sink is None:
            sink = self.sink

        async def tell() -> None:
            with contextlib.suppress(Exception):
                await sink.end(reason={"reset": cause.value, "message": message})

        self.loops.spawn_aio(tell())

    # -- module operations (asyncio, called by RPC methods) ---------------------------------

    def _ack(self, position: int) -> None:
        rx = self.rx
        if not rx.base <= position <= max(self.rx_delivered, rx.base):
            raise InvalidArgument(f"read position {position} is outside [{rx.base}, {self.rx_delivered}]")
        if position > rx.base:
            rx.consume(position - rx.base)
            self.bridge.meter()
            self.rx_changed.notify()

    async def read_aio(self, max_bytes: int, position: int) -> tuple[bytes, int, bool]:
        if not 0 < max_bytes <= self.limits.max_read:
            raise InvalidArgument(f"maxBytes must be in 1..{self.limits.max_read}")
        return await self._pull(position, partial(self.rx.peek, max_bytes))

    async def read_lp_aio(self, max_size: int, position: int) -> tuple[bytes, int, bool]:
        if not 0 <= max_size <= self.limits.max_frame:
            raise InvalidArgument(f"maxSize must be in 0..{self.limits.max_frame}")
        if position not in (self.rx.base, max(self.rx_delivered, self.rx.base)):
            # e.g. the last frame's position + len(data), forgetting its length prefix
            raise InvalidArgument(
                f"readLp position {position} is not a frame boundary: pass the last read's next "
                f"({max(self.rx_delivered, self.rx.base)}) or retry from {self.rx.base}"
            )
        try:
            return await self._pull(position, partial(self._frame, max_size), framed=True)
        finally:
            self.rx.need = 0

    def _frame(self, max_size: int) -> tuple[bytes, int] | None:
        need = self.rx.need
        got = self.rx.peek_frame(max_size)
        if self.rx.need > need:
            self.rx_changed.notify()  # the pump may read past its bound for this frame
        return got

    async def _pull(self, position: int, take: Any, framed: bool = False) -> tuple[bytes, int, bool]:
        if self.sink is not None:
            raise InvalidArgument("this stream pushes to a sink; read() is not available")
        b = self.bridge
        with self.reading:
            self._ack(position)
            while True:
                got = take()
                if got is not None:
                    data, used = got
                    self.rx_delivered = max(self.rx_delivered, position + used)
                    return data, position + used, False
                if not b.state.check_read():  # end of stream (raises if closed/reset)
                    if framed and self.rx:
                        raise EndOfStream("end of stream in the middle of a frame")
                    b.eof_told()
                    return b"", position, True
                await self.rx_changed.wait_aio()

    def _enqueue(self, data: bytes) -> None:
        b = self.bridge
        b.state.check_write()
        if len(data) > self.limits.max_write:
            raise LimitExceeded(f"a write of {len(data)} bytes is over the node's {self.limits.max_write}; split it")
        if self.tx_bytes + len(data) > self.limits.tx_hard_limit:
            raise LimitExceeded(
                f"more than {self.limits.tx_hard_limit} bytes queued; keep a window of writes in flight"
            )
        if data:
            b.memory.charge(len(data))  # LimitExceeded: the module's or the node's memory is full
            self.tx.append(data)
            self.tx_bytes += len(data)
            self.tx_changed.notify()

    async def write_aio(self, data: bytes) -> None:
        """Queue ``data`` (synchronously, so writes keep their order), then wait for room."""
        self._enqueue(data)
        while self.tx_bytes > self.limits.tx_buffer:
            if self.bridge.state.is_reset:
                raise self.bridge.state.error()
            await self.tx_changed.wait_aio()

    async def write_lp_aio(self, data: bytes) -> None:
        await self.write_aio(lp_frame(data))

    def close_write_soon(self) -> None:
        """Half-close after the queued writes, without waiting for it to be on the wire."""
        self.bridge.state.handle(Event.SEND_EOF)
        self.eof_wanted = True
        self.tx_changed.notify()

    async def close_write_aio(self) -> None:
        self.close_write_soon()
        await self._flushed()

    def close_soon(self) -> None:
        """Close (see ``Bridge.close``) without waiting for the half-close to be on the wire."""
        b = self.bridge
        if b.state.state is not State.CLOSED and b.close():
            self.eof_wanted = True
            self.tx_changed.notify()

    async def close_aio(self) -> None:
        self.close_soon()
        await self._flushed()

    async def _flushed(self) -> None:
        b = self.bridge
        while not (b.eof_sent or b.wire_released):
            await self.tx_changed.wait_aio()
        if b.wire_error is not None and not b.eof_sent:
            raise b.wire_error

    def reset_aio(self) -> None:
        self.bridge.reset(Cause.LOCAL_RESET, "reset by the module")
