"""One libp2p stream bridged to one module.

A :class:`Bridge` is a full-duplex pipe with two bounded buffers:

* **inbound** (peer -> module): a trio *pump* task reads libp2p into ``rx``
  while ``rx`` is below its bound, so a module that stops reading stops the
  pump and the muxer's window stops the peer. The module takes the bytes by
  pulling (``read``/``readLp`` RPCs, with a position cursor so a lost answer
  loses nothing) or, when it gave a sink, an asyncio *pusher* sends them with
  a bounded window of unanswered ``push`` calls.
* **outbound** (module -> peer): ``write`` RPCs append to ``tx`` synchronously,
  in the order they arrive, and are answered once ``tx`` is below its bound; a
  trio *writer* task drains ``tx`` to libp2p, then sends the half-close.

The bridge never cancels its own libp2p calls: py-libp2p's writes are not
cancel-safe (a write cut while the socket waits for room leaves half a frame
on the connection every stream shares; a read cut while it sends a window
update loses the bytes it took). A reset wakes the pump and writer instead:
resetting the libp2p stream makes their pending call return or raise.

The stream's logical state is one :class:`~logos_p2p._state.StreamState`.
The *wire* (the libp2p stream) is released when both directions ended cleanly
or reset; the bridge leaves its module's books when the module can do nothing
more with it. :meth:`Bridge.reset` is the one abort path, whatever the cause.

Bridge methods named ``*_aio`` run in asyncio (RPC) code, the tasks in trio;
both only touch plain Python state and :class:`~._handoff.Wakeup`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .. import _wire
from .._state import WRITABLE, Event, State, StreamState
from ..errors import (
    Busy,
    Cause,
    EndOfStream,
    FrameTooLarge,
    InvalidArgument,
    LimitExceeded,
    StreamReset,
    reset_error,
)
from . import _libp2p
from ._handoff import Loops, Wakeup

if TYPE_CHECKING:
    from libp2p.abc import INetStream

    from ._resources import StreamSlot

log = logging.getLogger("logos_p2p.node")

_ids = itertools.count(1)


@dataclass
class Limits:
    """Per-stream bounds and timeouts (see ``NodeConfig`` for the CLI)."""

    rx_buffer: int = 256 * 1024  # bytes from the peer held for the module
    tx_buffer: int = 256 * 1024  # queued module writes before write() waits
    tx_hard_limit: int = 8 * 1024 * 1024  # queued bytes beyond which writes fail
    push_window: int = 256 * 1024  # pushed to the module's sink, not yet answered
    max_push: int = 256 * 1024  # bytes in one push
    read_chunk: int = 256 * 1024  # bytes asked of libp2p at a time
    max_read: int = 1024 * 1024  # largest answer to a pull read
    max_write: int = 1024 * 1024  # largest write/writeLp call (the client library sends 256 KiB)
    max_frame: int = 16 * 1024 * 1024  # largest readLp frame
    write_batch: int = 256 * 1024  # queued writes coalesced into one libp2p write
    close_linger: float = 10.0  # after close(): wait for the peer's half-close
    idle_timeout: float = 300.0  # no byte either way for this long: reset (0 = never), as nim-libp2p


@dataclass(frozen=True)
class StreamInfo:
    id: int
    protocol: str
    remote_peer_id: str
    remote_addr: str
    direction: str  # "inbound" | "outbound"

    def to_capnp(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "protocol": self.protocol,
            "remotePeerId": self.remote_peer_id,
            "remoteAddr": self.remote_addr,
            "direction": self.direction,
        }


class Owner(Protocol):
    """What a bridge reports to: its module's session."""

    def account(self, bridge: Bridge, bytes_in: int = 0, bytes_out: int = 0) -> None: ...
    def forget(self, bridge: Bridge) -> None: ...
    def count_reset(self, cause: Cause) -> None: ...


class Bridge:
    def __init__(
        self,
        net_stream: INetStream,
        direction: str,
        owner: Owner,
        loops: Loops,
        limits: Limits,
        slot: StreamSlot,
    ) -> None:
        self.net = net_stream
        self.owner = owner
        self.loops = loops
        self.limits = limits
        # the stream's place in the resource manager, and the bytes the bridge holds
        self.slot = slot
        assert slot.account is not None, "a bridged stream belongs to a module"
        self.memory = slot.account
        self.info = StreamInfo(
            id=next(_ids),
            protocol=str(net_stream.get_protocol() or ""),
            remote_peer_id=_libp2p.remote_peer_id(net_stream),
            remote_addr=_libp2p.remote_addr(net_stream),
            direction=direction,
        )
        self.state = StreamState()
        # inbound: peer -> module
        self.rx = bytearray()
        self.rx_base = 0  # stream offset of rx[0]
        self.rx_delivered = 0  # pull mode: the furthest offset handed out
        self.rx_need = 0  # a pending readLp needs this many bytes buffered
        self.rx_eof = False  # the peer's half-close was read from libp2p
        self.eof_delivered = False  # the module was told about it
        self.rx_changed = Wakeup()
        self.reading = False
        self.sink: Any = None
        self.push_inflight = 0
        # outbound: module -> peer
        self.tx: deque[bytes] = deque()
        self.tx_bytes = 0  # queued plus being written
        self.eof_wanted = False
        self.eof_sent = False
        self.tx_changed = Wakeup()
        self.passing = 0  # bytes on their way through the node outside rx and tx (socket streams)
        # the wire and the books
        self.wire_error: StreamReset | None = None
        self.wire_released = False
        self.detached = False
        self.tasks = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_active = time.monotonic()  # the last byte either way (ModuleSession.account)

    def __repr__(self) -> str:
        i = self.info
        return f"<Bridge #{i.id} {i.direction} {i.protocol} {self.state!r}>"

    def _rx_held(self) -> int:
        """Inbound bytes the node holds for the module: buffered, and pushed but not answered
        (one bound for both: a module that stops answering stops the pump)."""
        return len(self.rx) + self.push_inflight

    def _meter(self) -> None:
        """Charge what the bridge holds now to the stream's memory account.

        A push in flight counts twice: the RPC system keeps its message until the
        module answers, beside the bytes the node still holds.
        """
        self.memory.set(len(self.rx) + 2 * self.push_inflight + self.tx_bytes + self.passing)

    @property
    def buffered(self) -> int:
        """Bytes of this stream held in the node, including the muxer's receive buffer."""
        muxer = 0 if self.wire_released else _libp2p.muxer_buffered(self.net)
        return len(self.rx) + self.tx_bytes + self.push_inflight + muxer

    # -- start ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the pump and writer (from trio or asyncio code)."""
        log.debug("%r: opened with %s", self, self.info.remote_peer_id)
        self.loops.spawn_trio(self._pump)
        self.loops.spawn_trio(self._writer)

    def attach_sink(self, sink: Any) -> None:
        """Push inbound bytes to ``sink`` from now on (instead of pull reads).

        The sink may arrive after the stream already ended (the handler's answer
        crossed a reset): then it only hears how it ended.
        """
        if self.state.is_reset:
            assert self.state.cause is not None
            if self.state.cause not in _MODULE_KNOWS:
                self._tell_sink_end(self.state.cause, self.state.message, sink)
            return
        self.sink = sink
        self.loops.spawn_aio(self._pusher())

    # -- trio tasks ------------------------------------------------------------------

    @contextlib.contextmanager
    def _task(self) -> Iterator[None]:
        """Run one of the bridge's tasks: counted, and never able to stop the node.

        An unexpected error resets this stream (and is logged) instead of
        escaping into the node's nursery, which would end every stream.
        """
        self.tasks += 1
        try:
            yield
        except Exception as exc:
            log.exception("%r: a stream task failed", self)
            self.reset(Cause.PROTOCOL_ERROR, f"internal error: {type(exc).__name__}")
        finally:
            self.tasks -= 1

    async def _unless_wire_ends(self, wait: Callable[[], Awaitable[Any]]) -> bool:
        """Run ``wait`` (for room in a full buffer); False if the wire ended abortively first.

        While its buffers are full a bridge reads nothing from libp2p, so nothing else
        would tell it that the peer reset the stream or the connection died: the stream
        and its tasks would live until the module read again, or the idle timeout.
        """
        ended = False

        async def watch(scope: trio.CancelScope) -> None:
            nonlocal ended
            await _libp2p.wait_ended(self.net)
            ended = True
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            await wait()
            nursery.cancel_scope.cancel()
        return not ended

    def _wire_ended(self) -> None:
        """The wire ended under a waiting bridge (see :meth:`_unless_wire_ends`)."""
        cause = _libp2p.end_cause(self.net) or Cause.CONNECTION_LOST
        self.reset(cause, f"{cause.value} while the module was not reading", from_wire=True)

    async def _pump(self) -> None:
        if self.wire_released or self.state.is_reset:
            return
        limits = self.limits
        with self._task():
            while True:
                while self.state.state is not State.CLOSED and self._rx_held() >= max(limits.rx_buffer, self.rx_need):
                    if self.wire_released:
                        return
                    if not await self._unless_wire_ends(self.rx_changed.wait_trio):
                        self._wire_ended()
                        return
                if self.wire_released:
                    return
                try:
                    data = await _libp2p.read(self.net, limits.read_chunk)
                except StreamReset as exc:
                    self.reset(exc.cause, str(exc), from_wire=True)
                    return
                if data is None:
                    self._remote_eof()
                    return
                self.bytes_in += len(data)
                self.owner.account(self, bytes_in=len(data))
                if self.state.state is State.CLOSED:
                    continue  # closed by the module: drain and drop
                self.rx += data
                self._meter()
                self.rx_changed.notify()

    async def _linger(self) -> None:
        """After close(): give the peer close_linger to half-close, then reset."""
        with self._task(), trio.move_on_after(self.limits.close_linger):
            while not self.wire_released:
                await self.rx_changed.wait_trio()
            return
        self.reset(Cause.TIMEOUT, "the peer did not finish after close")

    def _remote_eof(self) -> None:
        log.debug("%r: the peer half-closed", self)
        self.rx_eof = True
        self.state.handle(Event.RECV_EOF)
        self.rx_changed.notify()
        self._check_wire()

    async def _writer(self) -> None:
        if self.wire_released or self.state.is_reset:
            return
        limits = self.limits
        with self._task():
            while True:
                while not self.tx and not self.eof_wanted and not self.wire_released:
                    await self.tx_changed.wait_trio()
                if self.wire_released:
                    return
                if self.tx:
                    batch = [self.tx.popleft()]
                    size = len(batch[0])
                    while self.tx and size + len(self.tx[0]) <= limits.write_batch:
                        chunk = self.tx.popleft()
                        batch.append(chunk)
                        size += len(chunk)
                    try:
                        await _libp2p.write(self.net, batch[0] if len(batch) == 1 else b"".join(batch))
                    except StreamReset as exc:
                        self.reset(exc.cause, str(exc), from_wire=True)
                        return
                    self.tx_bytes -= size
                    self._meter()
                    self.bytes_out += size
                    self.owner.account(self, bytes_out=size)
                    self.tx_changed.notify()
                    continue
                try:
                    await _libp2p.close_write(self.net)
                except StreamReset as exc:
                    self.reset(exc.cause, str(exc), from_wire=True)
                    return
                self.eof_sent = True
                self.tx_changed.notify()
                self._check_wire()
                return

    def _check_wire(self) -> None:
        """Release the libp2p stream once both directions ended cleanly."""
        if self.eof_sent and self.rx_eof and not self.wire_released:
            self.wire_released = True
            self.loops.spawn_trio(partial(_libp2p.release, self.net))
            self.rx_changed.notify()
            self.tx_changed.notify()
        self._maybe_detach()

    # -- the one abort path -------------------------------------------------------------

    def reset(self, cause: Cause, message: str = "", *, from_wire: bool = False) -> None:
        """Reset the stream (any context but ``__del__``; see :meth:`dropped`).

        The module-facing state moves to RESET unless both directions already
        ended; the wire is reset unless it was already released. Buffered bytes
        are dropped: a reset is abortive.
        """
        moved = self.state.reset(cause, message)
        log.debug("%r: reset (%s%s) %s", self, cause.value, ", from the wire" if from_wire else "", message)
        if self.wire_error is None and not self.wire_released:
            self.wire_error = reset_error(cause, message)
        if moved:
            self.owner.count_reset(cause)
            self._tell_module_reset(cause, message)
        if self.state.is_reset:
            self.rx.clear()
        self.tx.clear()
        self.tx_bytes = 0
        self._meter()
        if not self.wire_released:
            self.wire_released = True
            self.loops.spawn_trio(partial(_libp2p.reset, self.net))
        self.rx_changed.notify()
        self.tx_changed.notify()
        self._maybe_detach()

    def dropped(self) -> None:
        """The module released its Stream capability. Safe to call from ``__del__``."""
        self.loops.soon(
            partial(self.abandon, Cause.CAPABILITY_DROPPED, "the module dropped the stream without closing it")
        )

    def abandon(self, cause: Cause, message: str = "", *, linger: bool = True) -> None:
        """The module can take nothing more from this stream.

        What it left unread is dropped. A stream it had not finished is reset;
        one it closed keeps its close-linger (unless ``linger`` is False, as at
        node shutdown) and one whose both directions ended is simply let go.
        """
        self.rx.clear()
        self._meter()
        self.eof_delivered = True
        state = self.state.state
        if linger and (state is State.CLOSED or (state is State.DONE and self.eof_sent)):
            self._maybe_detach()
            return
        self.reset(cause, message)

    def _maybe_detach(self) -> None:
        if self.detached or not self.wire_released:
            return
        state = self.state.state
        if state is State.DONE and (self.rx or not self.eof_delivered):
            return  # the module may still read what the peer sent
        if state not in (State.DONE, State.CLOSED, State.RESET):
            return
        self.detached = True
        self.sink = None
        self.owner.forget(self)
        self._on_detach()
        self.slot.release()
        log.debug("%r: done", self)

    def _tell_module_reset(self, cause: Cause, message: str) -> None:
        """Let the module know why its stream was reset (unless it caused it)."""
        if self.sink is not None and cause not in _MODULE_KNOWS:
            self._tell_sink_end(cause, message)

    def _on_detach(self) -> None:
        """The module and the wire are done with this stream."""

    # -- push mode (asyncio) --------------------------------------------------------------

    async def _pusher(self) -> None:
        limits = self.limits
        self.tasks += 1
        try:
            while self.sink is not None:
                state = self.state.state
                if state in (State.RESET, State.CLOSED):
                    return
                room = limits.push_window - self.push_inflight
                if self.rx and room > 0:
                    n = min(len(self.rx), room, limits.max_push)
                    data = bytes(self.rx[:n])
                    del self.rx[:n]
                    self.rx_base += n
                    self.push_inflight += n
                    fut = asyncio.ensure_future(self.sink.push(data))
                    fut.add_done_callback(partial(self._push_done, n))
                    self.rx_changed.notify()
                    continue
                if self.rx_eof and not self.rx:
                    await self.sink.end(reason={"eof": None, "message": ""})
                    self.eof_delivered = True
                    self._maybe_detach()
                    return
                await self.rx_changed.wait_aio()
        except Exception as exc:  # the sink is broken
            self.abandon(Cause.MODULE_GONE, f"pushing to the module failed: {exc}", linger=False)
        finally:
            self.tasks -= 1

    def _push_done(self, n: int, fut: asyncio.Future[Any]) -> None:
        self.push_inflight -= n
        self._meter()
        failed = fut.cancelled() or fut.exception() is not None
        if failed and self.state.state not in (State.RESET, State.CLOSED):
            self.abandon(Cause.MODULE_GONE, "pushing to the module failed", linger=False)
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
        if not self.rx_base <= position <= max(self.rx_delivered, self.rx_base):
            raise InvalidArgument(f"read position {position} is outside [{self.rx_base}, {self.rx_delivered}]")
        drop = position - self.rx_base
        if drop:
            del self.rx[:drop]
            self.rx_base = position
            self._meter()
            self.rx_changed.notify()

    async def read_aio(self, max_bytes: int, position: int) -> tuple[bytes, int, bool]:
        if not 0 < max_bytes <= self.limits.max_read:
            raise InvalidArgument(f"maxBytes must be in 1..{self.limits.max_read}")
        return await self._pull(position, partial(self._take_bytes, max_bytes))

    async def read_lp_aio(self, max_size: int, position: int) -> tuple[bytes, int, bool]:
        if not 0 <= max_size <= self.limits.max_frame:
            raise InvalidArgument(f"maxSize must be in 0..{self.limits.max_frame}")
        try:
            return await self._pull(position, partial(self._take_frame, max_size), framed=True)
        finally:
            self.rx_need = 0

    def _take_bytes(self, max_bytes: int) -> tuple[bytes, int] | None:
        if not self.rx:
            return None
        n = min(len(self.rx), max_bytes)
        return bytes(self.rx[:n]), n

    def _take_frame(self, max_size: int) -> tuple[bytes, int] | None:
        try:
            head = _wire.decode_uvarint(self.rx)
        except ValueError as exc:
            raise FrameTooLarge(f"bad frame length: {exc}") from exc
        if head is None:
            return None
        length, head_len = head
        if length > max_size:
            raise FrameTooLarge(f"frame of {length} bytes exceeds maxSize {max_size}")
        total = head_len + length
        if len(self.rx) < total:
            self.rx_need = total
            self.rx_changed.notify()
            return None
        return bytes(self.rx[head_len:total]), total

    async def _pull(self, position: int, take: Any, framed: bool = False) -> tuple[bytes, int, bool]:
        if self.sink is not None:
            raise InvalidArgument("this stream pushes to a sink; read() is not available")
        if self.reading:
            raise Busy("another read is pending on this stream")
        self.reading = True
        try:
            self._ack(position)
            while True:
                got = take()
                if got is not None:
                    data, used = got
                    self.rx_delivered = max(self.rx_delivered, position + used)
                    return data, position + used, False
                if not self.state.check_read():  # end of stream (raises if closed/reset)
                    if framed and self.rx:
                        raise EndOfStream("end of stream in the middle of a frame")
                    self.eof_delivered = True
                    self._maybe_detach()
                    return b"", position, True
                await self.rx_changed.wait_aio()
        finally:
            self.reading = False

    def _enqueue(self, data: bytes) -> None:
        self.state.check_write()
        if len(data) > self.limits.max_write:
            raise LimitExceeded(f"a write of {len(data)} bytes is over the node's {self.limits.max_write}; split it")
        if self.tx_bytes + len(data) > self.limits.tx_hard_limit:
            raise LimitExceeded(
                f"more than {self.limits.tx_hard_limit} bytes queued; keep a window of writes in flight"
            )
        if data:
            self.memory.charge(len(data))  # LimitExceeded: the module's or the node's memory is full
            self.tx.append(data)
            self.tx_bytes += len(data)
            self.tx_changed.notify()

    async def write_aio(self, data: bytes) -> None:
        """Queue ``data`` (synchronously, so writes keep their order), then wait for room."""
        self._enqueue(data)
        while self.tx_bytes > self.limits.tx_buffer:
            if self.state.is_reset:
                raise self.state.error()
            await self.tx_changed.wait_aio()

    async def write_lp_aio(self, data: bytes) -> None:
        await self.write_aio(_wire.lp_frame(data))

    async def close_write_aio(self) -> None:
        self.state.handle(Event.SEND_EOF)
        self.eof_wanted = True
        self.tx_changed.notify()
        await self._flushed()

    async def close_aio(self) -> None:
        if self.state.state is State.CLOSED:
            await self._flushed()
            return
        writable = self.state.state in WRITABLE
        self.state.handle(Event.CLOSE)
        self.rx.clear()
        self._meter()
        self.rx_changed.notify()
        if writable:
            self.eof_wanted = True
            self.tx_changed.notify()
        if not self.rx_eof:
            self.loops.spawn_trio(self._linger)
        self._maybe_detach()
        await self._flushed()

    async def _flushed(self) -> None:
        while not (self.eof_sent or self.wire_released):
            await self.tx_changed.wait_aio()
        if self.wire_error is not None and not self.eof_sent:
            raise self.wire_error

    def reset_aio(self) -> None:
        self.reset(Cause.LOCAL_RESET, "reset by the module")


# resets the module caused or cannot hear about: no point telling its sink
_MODULE_KNOWS = frozenset({Cause.LOCAL_RESET, Cause.CAPABILITY_DROPPED, Cause.MODULE_GONE})
