"""One libp2p stream joined to one module: the wire, the state and the books of a bridge.

A :class:`Bridge` is what every data path shares. It holds the libp2p stream (the
*wire*), the stream's one :class:`~logos_p2p._state.StreamState`, its place in the
resource manager, and its module's books; it decides when the wire is released and
when the stream leaves its module's books, and :meth:`Bridge.reset` is the one abort
path, whatever the cause. How bytes reach the module and come back is its
:class:`ModuleSide`, one per data path:

* :class:`~._capability_bridge.CapabilitySide` -- the ``Stream`` capability (the module
  pulls with ``read``, or the node pushes to its ``ByteSink``; writes are RPC calls);
* :class:`~._socket_bridge.SocketSide` -- a socket of the stream's own on the module's
  data channel.

The bridge never cancels its own libp2p calls: py-libp2p's writes are not cancel-safe
(a write cut while the socket waits for room leaves half a frame on the connection every
stream shares; a read cut while it sends a window update loses the bytes it took). A
reset wakes the side's tasks instead: resetting the libp2p stream makes their pending
call return or raise.

Methods named ``*_aio`` run in asyncio (RPC) code, the tasks in trio; both only touch
plain Python state and wake-ups (:class:`~._handoff.Wakeup`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .._state import WRITABLE, Event, State, StreamState
from ..errors import Cause, StreamReset, reset_error
from . import _libp2p
from ._config import Limits, StreamInfo
from ._handoff import Loops, Wakeup

if TYPE_CHECKING:
    from libp2p.abc import INetStream

    from ._resources import StreamSlot

log = logging.getLogger("logos_p2p.node")

_ids = itertools.count(1)

# resets the module caused or cannot hear about: no point telling it
MODULE_KNOWS = frozenset({Cause.LOCAL_RESET, Cause.CAPABILITY_DROPPED, Cause.MODULE_GONE})


class Books(Protocol):
    """The books a bridge keeps its stream on: its module's session."""

    def account(self, bridge: Bridge, bytes_in: int = 0, bytes_out: int = 0) -> None: ...
    def forget(self, bridge: Bridge) -> None: ...
    def count_reset(self, cause: Cause) -> None: ...


class ModuleSide(Protocol):
    """The module's half of a bridge: how its bytes reach the module and come back."""

    @property
    def tasks(self) -> Sequence[Callable[[], Awaitable[None]]]:
        """What moves its bytes: :meth:`Bridge.start` runs each as a stream task."""

    def held(self) -> int:
        """Bytes the side holds in the node now, as charged to the stream's memory."""

    def buffered(self) -> int:
        """Bytes of the stream the side holds, for ``status``."""

    def undelivered(self) -> bool:
        """Whether the module may still read something (bytes, or the end of stream)."""

    def drop_inbound(self) -> None:
        """The module will read nothing more: drop what it left unread."""

    def drop_outbound(self) -> None:
        """The stream was reset: drop what the module wrote and the wire never took."""

    def on_reset(self, cause: Cause, message: str) -> None:
        """The stream was reset: let the module know why, unless it caused it (MODULE_KNOWS)."""

    def detached(self) -> None:
        """The wire and the module are done: free what the side holds."""

    def wake(self) -> None:
        """Something changed (the wire ended, a reset): wake whoever waits on the side."""


class Bridge:
    def __init__(
        self,
        net_stream: INetStream,
        direction: str,
        books: Books,
        loops: Loops,
        limits: Limits,
        slot: StreamSlot,
    ) -> None:
        self.net = net_stream
        self.books = books
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
        self.side: ModuleSide = _NO_SIDE
        self.rx_eof = False  # the peer's half-close was read from libp2p
        self.eof_delivered = False  # the module was told about it
        self.eof_sent = False  # our half-close went out on the wire
        self.wire_error: StreamReset | None = None
        self.wire_released = False
        self.wire_changed = Wakeup()  # the wire was released or reset
        self.detached = False
        self.tasks = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_active = time.monotonic()  # the last byte either way (ModuleSession.account)

    def __repr__(self) -> str:
        i = self.info
        return f"<Bridge #{i.id} {i.direction} {i.protocol} {self.state!r}>"

    def meter(self) -> None:
        """Charge what the side holds now to the stream's memory account."""
        self.memory.set(self.side.held())

    @property
    def buffered(self) -> int:
        """Bytes of this stream held in the node, including the muxer's receive buffer."""
        muxer = 0 if self.wire_released else _libp2p.muxer_buffered(self.net)
        return self.side.buffered() + muxer

    def start(self) -> None:
        """Start the side's tasks (from trio or asyncio code)."""
        log.debug("%r: opened with %s", self, self.info.remote_peer_id)
        for body in self.side.tasks:
            self.spawn(body)

    def moved(self, bytes_in: int = 0, bytes_out: int = 0) -> None:
        """Bytes went through (for status and the idle timeout)."""
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        self.books.account(self, bytes_in, bytes_out)

    # -- the side's tasks ----------------------------------------------------------------

    def spawn(self, body: Callable[[], Awaitable[Any]]) -> None:
        """Start one of the side's tasks (trio), unless the stream already ended."""

        async def run() -> None:
            if self.wire_released or self.state.is_reset:
                return
            with self.task():
                await body()

        self.loops.spawn_trio(run)

    @contextlib.contextmanager
    def task(self) -> Iterator[None]:
        """Run one of the stream's tasks: counted, and never able to stop the node.

        A reset on the wire under it resets the stream (:meth:`reset`, ``from_wire``); an
        unexpected error resets this stream too (and is logged) instead of escaping into
        the node's nursery, which would end every stream.
        """
        self.tasks += 1
        try:
            yield
        except StreamReset as exc:
            self.reset(exc.cause, str(exc), from_wire=True)
        except Exception as exc:
            log.exception("%r: a stream task failed", self)
            self.reset(Cause.PROTOCOL_ERROR, f"internal error: {type(exc).__name__}")
        finally:
            self.tasks -= 1

    async def unless_wire_ends(self, wait: Callable[[], Awaitable[Any]]) -> bool:
        """Run ``wait`` (for room in a full buffer); False if the wire ended abortively first
        (and then the stream is reset).

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
        if ended:
            cause = _libp2p.end_cause(self.net) or Cause.CONNECTION_LOST
            self.reset(cause, f"{cause.value} while the module was not reading", from_wire=True)
        return not ended

    async def _linger(self) -> None:
        """After close(): give the peer close_linger to half-close, then reset."""
        with self.task(), trio.move_on_after(self.limits.close_linger):
            while not self.wire_released:
                await self.wire_changed.wait_trio()
            return
        self.reset(Cause.TIMEOUT, "the peer did not finish after close")

    # -- how the stream moves on -------------------------------------------------------------

    def remote_eof(self) -> None:
        """The peer half-closed (read from libp2p)."""
        log.debug("%r: the peer half-closed", self)
        self.rx_eof = True
        self.state.handle(Event.RECV_EOF)
        self.side.wake()
        self._check_wire()

    def can_write(self) -> bool:
        return self.state.state in WRITABLE

    async def half_close(self, sent: Callable[[], Any] | None = None) -> None:
        """Send our half-close on the wire (StreamReset escapes to :meth:`task`); ``sent``
        runs once it is out, before the wire may be released."""
        await _libp2p.close_write(self.net)
        self.eof_sent = True
        if sent is not None:
            sent()
        self.side.wake()
        self._check_wire()

    def close(self) -> bool:
        """The module closed the stream; True if the wire still needs our half-close.

        What the module left unread is dropped; the peer gets ``close_linger`` to finish.
        """
        writable = self.can_write()
        self.state.handle(Event.CLOSE)
        self.side.drop_inbound()
        self.meter()
        self.side.wake()
        if not self.rx_eof:
            self.loops.spawn_trio(self._linger)
        self.maybe_detach()
        return writable

    def eof_told(self) -> None:
        """The module was told about the end of stream."""
        self.eof_delivered = True
        self.maybe_detach()

    def _check_wire(self) -> None:
        """Release the libp2p stream once both directions ended cleanly."""
        if self.eof_sent and self.rx_eof and not self.wire_released:
            self.wire_released = True
            self.loops.spawn_trio(partial(_libp2p.release, self.net))
            self.wire_changed.notify()
            self.side.wake()
        self.maybe_detach()

    # -- the one abort path -----------------------------------------------------------------

    def reset(self, cause: Cause, message: str = "", *, from_wire: bool = False) -> None:
        """Reset the stream (any context but ``__del__``; see :meth:`dropped`).

        The module-facing state moves to RESET unless both directions already ended;
        the wire is reset unless it was already released. Buffered bytes are dropped:
        a reset is abortive.
        """
        moved = self.state.reset(cause, message)
        log.debug("%r: reset (%s%s) %s", self, cause.value, ", from the wire" if from_wire else "", message)
        if self.wire_error is None and not self.wire_released:
            self.wire_error = reset_error(cause, message)
        if moved:
            self.books.count_reset(cause)
            self.side.on_reset(cause, message)
        if self.state.is_reset:
            self.side.drop_inbound()
        self.side.drop_outbound()
        self.meter()
        if not self.wire_released:
            self.wire_released = True
            self.loops.spawn_trio(partial(_libp2p.reset, self.net))
        self.wire_changed.notify()
        self.side.wake()
        self.maybe_detach()

    def dropped(self) -> None:
        """The module released its end of the stream. Safe to call from ``__del__``."""
        self.loops.soon(
            partial(self.abandon, Cause.CAPABILITY_DROPPED, "the module dropped the stream without closing it")
        )

    def abandon(self, cause: Cause, message: str = "", *, linger: bool = True) -> None:
        """The module can take nothing more from this stream.

        What it left unread is dropped. A stream it had not finished is reset; one it
        closed keeps its close-linger (unless ``linger`` is False, as at node shutdown)
        and one whose both directions ended is simply let go.
        """
        self.side.drop_inbound()
        self.meter()
        self.eof_delivered = True
        state = self.state.state
        if linger and (state is State.CLOSED or (state is State.DONE and self.eof_sent)):
            self.maybe_detach()
            return
        self.reset(cause, message)

    def maybe_detach(self) -> None:
        """Leave the module's books once neither the wire nor the module can do more."""
        if self.detached or not self.wire_released:
            return
        state = self.state.state
        if state is State.DONE and (self.side.undelivered() or not self.eof_delivered):
            return  # the module may still read what the peer sent
        if state not in (State.DONE, State.CLOSED, State.RESET):
            return
        self.detached = True
        self.books.forget(self)
        self.side.detached()
        self.slot.release()
        log.debug("%r: done", self)


class _NoSide:
    """The side of a bridge before its data path gives it one."""

    tasks: Sequence[Callable[[], Awaitable[None]]] = ()

    def held(self) -> int:
        return 0

    def buffered(self) -> int:
        return 0

    def undelivered(self) -> bool:
        return False

    def drop_inbound(self) -> None:
        pass

    def drop_outbound(self) -> None:
        pass

    def on_reset(self, cause: Cause, message: str) -> None:
        pass

    def detached(self) -> None:
        pass

    def wake(self) -> None:
        pass


_NO_SIDE = _NoSide()
