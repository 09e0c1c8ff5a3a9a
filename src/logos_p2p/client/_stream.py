"""The module's side of a bridged stream: the public :class:`Stream`.

A :class:`Stream` reads from a local buffer (its :class:`_Core`, whose bytes are a
:class:`~logos_p2p._rxbuffer.RxBuffer`) and writes through its :class:`Transport`.
*How* bytes move between the buffer and the node is the data path's transport:

* :class:`~._capability.CapabilityTransport` -- the ``Stream`` capability, push or
  pull, over RPC, for any module;
* :class:`~._socket.SocketTransport` -- a unix socket of its own, for modules on the
  node's machine.

Either way a read that is cancelled or times out leaves every byte in the buffer for
the next read. Framing (``read_exactly``, ``read_lp``) happens here, on the buffer,
for every path.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .._exclusive import Exclusive
from .._frames import lp_frame
from .._rxbuffer import RxBuffer
from .._state import WRITABLE, Event, State, StreamState
from .._waiters import AioWaiters
from ..errors import Cause, EndOfStream, IncompleteRead, InvalidArgument, LimitExceeded

log = logging.getLogger("logos_p2p.client")

DEFAULT_MAX_LP = 1024 * 1024


def _bytes_view(data: Any) -> memoryview:
    if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"write takes bytes, bytearray or memoryview, not {type(data).__name__}")
    return memoryview(data).cast("B")


class Tuning:
    """Client-side bounds (per stream)."""

    rx_buffer = 256 * 1024  # inbound bytes held before the sink stops answering
    write_chunk = 256 * 1024  # bytes per write call
    write_window = 512 * 1024  # bytes in unanswered write calls
    pull_chunk = 256 * 1024  # bytes asked per pull read
    read_all_limit = 64 * 1024 * 1024  # read_all() default bound


class _Core:
    """State plus inbound buffer of one stream; shared by the Stream and its transport."""

    __slots__ = ("__weakref__", "_waiters", "limit", "rx", "state")

    def __init__(self, limit: int = Tuning.rx_buffer) -> None:
        self.state = StreamState()
        self.rx = RxBuffer()
        self.limit = limit
        self._waiters = AioWaiters()

    @property
    def need(self) -> int:
        return self.rx.need

    @need.setter
    def need(self, n: int) -> None:
        """A reader needs ``n`` bytes buffered. Raising the bound wakes whoever waits
        for room (a parked push), or the buffer stays full below what the reader waits for."""
        parked = n > self.rx.need and len(self.rx) >= self.limit
        self.rx.need = n
        if parked:
            self.wake()

    def wake(self) -> None:
        self._waiters.notify()

    async def wait(self) -> None:
        await self._waiters.wait()

    def feed(self, data: bytes) -> None:
        if self.state.state in (State.OPEN, State.SEND_CLOSED):
            self.rx.feed(data)
            self.wake()

    def remote_eof(self) -> None:
        self.state.handle(Event.RECV_EOF)
        self.wake()

    def fail(self, cause: Cause, message: str = "") -> None:
        self.state.reset(cause, message)
        if self.state.is_reset:
            self.rx.clear()
        self.wake()

    def take(self, n: int) -> bytes:
        data = self.rx.take(n)
        self.wake()
        return data

    def full(self) -> bool:
        return len(self.rx) >= max(self.limit, self.rx.need) and self.state.state in (State.OPEN, State.SEND_CLOSED)


class Transport:
    """How one stream's bytes move between this module and the node.

    The :class:`Stream` keeps the state and the inbound buffer (the core);
    a transport fills the buffer and carries writes, half-closes, closes and
    resets: one per data path (see the module's docstring).
    """

    sink: Any = None

    async def fill(self, core: _Core) -> None:
        """Wait until the core changed (more bytes, end of stream, reset)."""
        raise NotImplementedError

    async def write(self, data: memoryview) -> None:
        raise NotImplementedError

    async def flush(self) -> None:
        """Wait for every write in flight; raise the first failure."""
        raise NotImplementedError

    async def send_eof(self) -> None:
        """Half-close on the wire (after :meth:`flush`); return once it is sent."""
        raise NotImplementedError

    async def close(self, writable: bool) -> None:
        """Close the stream (after :meth:`flush`); ``writable``: the send flow was still open."""
        raise NotImplementedError

    async def reset(self) -> None:
        """Reset the stream on the wire. Never raises."""
        raise NotImplementedError

    def release(self) -> None:
        """The stream is finished here: let the node free everything."""
        raise NotImplementedError


class Stream:
    """A libp2p stream handled by this module (inbound or outbound).

    Reads come from a local buffer, so a read that is cancelled or times out
    loses nothing: the next read returns the bytes. ``write`` returns once the
    data is in flight within a bounded window; a failure of an earlier write
    is raised by a later ``write``, ``close_write`` or ``close``.

    One task may read while another writes; two concurrent reads (or writes)
    raise :class:`~logos_p2p.errors.Busy`.

    ``async with stream:`` closes it on normal exit and resets it on an
    exception. A stream dropped without being closed is reset by the node.
    """

    def __init__(self, transport: Transport, core: _Core, info: Any) -> None:
        self._core = core
        self._t = transport
        self._reading = Exclusive("another task is reading this stream")
        self._writing = Exclusive("another task is writing this stream")
        self._released = False
        self.id: int = info.id
        self.protocol: str = info.protocol
        self.remote_peer_id: str = info.remotePeerId
        self.remote_addr: str = info.remoteAddr
        self.direction: str = str(info.direction)

    def __repr__(self) -> str:
        return f"<Stream #{self.id} {self.direction} {self.protocol} {self.remote_peer_id[-8:]} {self._core.state!r}>"

    @property
    def state(self) -> State:
        return self._core.state.state

    @property
    def sink(self) -> Any:
        """The push sink to give the node (None on the pull path)."""
        return self._t.sink

    # -- reading ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive_read(self) -> Iterator[None]:
        with self._reading:
            try:
                yield
            finally:
                self._core.need = 0

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` bytes as soon as any are available; ``b""`` at end of stream.

        :raises StreamReset: the stream was reset (ConnectionLost, NodeShutdown...).
        :raises StreamClosed: this side closed the stream.
        :raises Busy: another task is reading.
        """
        if max_bytes <= 0:
            raise InvalidArgument("max_bytes must be positive")
        core = self._core
        with self._exclusive_read():
            while not core.rx:
                if not core.state.check_read():
                    return b""
                await self._t.fill(core)
            core.state.check_read()  # a local close or reset wins over buffered bytes
            return core.take(max_bytes)

    async def read_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes. :raises IncompleteRead: the peer half-closed first."""
        if n < 0:
            raise InvalidArgument("n must not be negative")
        core = self._core
        with self._exclusive_read():
            while len(core.rx) < n:
                if not core.state.check_read():
                    partial = core.take(len(core.rx))
                    raise IncompleteRead(f"end of stream after {len(partial)} of {n} bytes", partial)
                core.need = n
                await self._t.fill(core)
            core.state.check_read()
            return core.take(n)

    async def read_all(self, max_bytes: int | None = None) -> bytes:
        """Everything until the peer half-closes.

        :raises LimitExceeded: more than ``max_bytes`` (default 64 MiB) arrived;
            nothing is consumed, so the bytes can still be read in parts.
        """
        limit = Tuning.read_all_limit if max_bytes is None else max_bytes
        core = self._core
        with self._exclusive_read():
            while core.state.check_read():
                if len(core.rx) > limit:
                    raise LimitExceeded(f"more than {limit} bytes before end of stream")
                core.need = len(core.rx) + 1
                await self._t.fill(core)
            if len(core.rx) > limit:
                raise LimitExceeded(f"more than {limit} bytes before end of stream")
            return core.take(len(core.rx))

    async def read_lp(self, max_size: int = DEFAULT_MAX_LP) -> bytes:
        """One unsigned-varint length-prefixed frame (as nim-libp2p's ``readLp``).

        :raises FrameTooLarge: the frame is longer than ``max_size`` (left unread).
        :raises EndOfStream: the peer half-closed before the frame's first byte.
        :raises IncompleteRead: the peer half-closed inside the frame.
        """
        if max_size < 0:
            raise InvalidArgument("max_size must not be negative")
        core = self._core
        with self._exclusive_read():
            while True:
                need = core.need
                got = core.rx.peek_frame(max_size)  # FrameTooLarge: left unread
                if got is not None:
                    core.state.check_read()
                    core.take(got[1])
                    return got[0]
                if core.rx.need > need:  # the frame's length is known: a push parked below
                    core.wake()  # the new bound may go on
                if not core.state.check_read():
                    if core.rx:
                        partial = core.take(len(core.rx))
                        raise IncompleteRead("end of stream inside a length-prefixed frame", partial)
                    raise EndOfStream("end of stream before a length-prefixed frame")
                await self._t.fill(core)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read()
        if not data:
            raise StopAsyncIteration
        return data

    # -- writing -----------------------------------------------------------------------------

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``. Returns once it is in flight; blocks while the window is full.

        If cancelled, a prefix of ``data`` may have been sent: reset the stream.
        """
        view = _bytes_view(data)
        with self._writing:
            await self._t.write(view)

    async def write_lp(self, data: bytes | bytearray | memoryview) -> None:
        """Send one unsigned-varint length-prefixed frame (as nim-libp2p's ``writeLp``)."""
        await self.write(lp_frame(_bytes_view(data)))

    async def close_write(self) -> None:
        """Half-close: flush writes, then the peer reads end of stream. Reading goes on.

        A second call does nothing (as trio's ``send_eof``).
        """
        with self._writing:
            if self._core.state.state in (State.SEND_CLOSED, State.DONE):
                return
            await self._t.flush()
            self._core.state.handle(Event.SEND_EOF)
            self._core.wake()
            await self._t.send_eof()

    async def close(self) -> None:
        """Close both directions gracefully (idempotent).

        Flushes writes and half-closes; the node discards what the peer still
        sends. Raises if the stream was reset before everything was sent.
        """
        core = self._core
        if core.state.state is State.CLOSED:
            return
        try:
            await self._t.flush()
            writable = core.state.state in WRITABLE
            core.state.handle(Event.CLOSE)
            core.rx.clear()
            core.wake()
            await self._t.close(writable)
        except BaseException:
            if not core.state.finished:
                core.fail(Cause.LOCAL_RESET, "closing failed")
            await self._t.reset()
            raise
        finally:
            self._release()

    async def reset(self) -> None:
        """Abort the stream: the peer sees a reset. Never raises."""
        self._core.fail(Cause.LOCAL_RESET, "reset by this module")
        await self._t.reset()
        self._release()

    def _release(self) -> None:
        """Let go of the transport: the node may free everything."""
        self._released = True
        self._t.release()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.reset()

    def __del__(self) -> None:
        if not self._released and not self._core.state.finished:
            warnings.warn(f"{self!r} was garbage collected unclosed; the node resets it", ResourceWarning, stacklevel=1)
