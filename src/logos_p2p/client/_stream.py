"""The module's side of a bridged stream.

A :class:`Stream` reads from a local buffer (:class:`_Core`) and writes through
a bounded window of in-flight ``write`` calls. *How* inbound bytes reach the
buffer is a data path behind one small interface (:class:`_Path`):

* :class:`_PushPath` -- the node pushes to a ``ByteSink`` the module serves;
  the sink answers once the bytes fit the buffer, which is the backpressure;
* :class:`_PullPath` -- the module asks with ``Stream.read(maxBytes, position)``;
  the position cursor makes a cancelled read lose nothing.

Either way a read that is cancelled or times out leaves every byte in the
buffer for the next read. Framing (``read_exactly``, ``read_lp``) happens
here, on the buffer, for both paths.

The buffer and the push sink never reference the :class:`Stream`: when the
module drops its Stream without closing it, the capability is released and
the node resets the libp2p stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .. import _schema, _wire
from .._state import WRITABLE, Event, State, StreamState
from .._waiters import AioWaiters
from ..errors import (
    Busy,
    Cause,
    EndOfStream,
    FrameTooLarge,
    IncompleteRead,
    InvalidArgument,
    LimitExceeded,
    LogosP2PError,
    StreamReset,
)
from ._translate import to_error, translate

log = logging.getLogger("logos_p2p.client")
rpc = _schema.load()

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
    """State plus inbound buffer of one stream; shared by the Stream and its sink."""

    __slots__ = ("__weakref__", "_need", "_waiters", "buf", "limit", "state")

    def __init__(self, limit: int) -> None:
        self.state = StreamState()
        self.buf = bytearray()
        self._need = 0  # a framed reader needs this many bytes buffered
        self.limit = limit
        self._waiters = AioWaiters()

    @property
    def need(self) -> int:
        return self._need

    @need.setter
    def need(self, n: int) -> None:
        """A reader needs ``n`` bytes buffered. Raising the bound wakes whoever waits
        for room (a parked push), or the buffer stays full below what the reader waits for."""
        parked = n > self._need and len(self.buf) >= self.limit
        self._need = n
        if parked:
            self.wake()

    def wake(self) -> None:
        self._waiters.notify()

    async def wait(self) -> None:
        await self._waiters.wait()

    def feed(self, data: bytes) -> None:
        if self.state.state in (State.OPEN, State.SEND_CLOSED):
            self.buf += data
            self.wake()

    def remote_eof(self) -> None:
        self.state.handle(Event.RECV_EOF)
        self.wake()

    def fail(self, cause: Cause, message: str = "") -> None:
        self.state.reset(cause, message)
        if self.state.is_reset:
            self.buf.clear()
        self.wake()

    def take(self, n: int) -> bytes:
        data = bytes(self.buf[:n])
        del self.buf[:n]
        self.wake()
        return data

    def full(self) -> bool:
        return len(self.buf) >= max(self.limit, self._need) and self.state.state in (State.OPEN, State.SEND_CLOSED)


class _Sink(rpc.ByteSink.Server):  # type: ignore[name-defined,misc]
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
            try:
                cause = Cause(reason.reset)
            except ValueError:
                cause = Cause.PROTOCOL_ERROR
            self._core.fail(cause, reason.message)


class _Transport:
    """How one stream's bytes move between this module and the node.

    The :class:`Stream` keeps the state and the inbound buffer (the core);
    a transport fills the buffer and carries writes, half-closes, closes and
    resets. Two exist: :class:`_CapabilityTransport` (the ``Stream``
    capability: push or pull, over RPC, for any module) and
    :class:`~._channel.SocketTransport` (a unix socket of its own, for modules
    on the node's machine).
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


class _PushPath:
    def __init__(self, core: _Core) -> None:
        self.sink = _Sink(core)

    async def fill(self, core: _Core) -> None:
        await core.wait()


class _PullPath:
    sink = None

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


class _CapabilityTransport(_Transport):
    """The ``Stream`` capability: inbound bytes pushed to a sink or pulled; windowed writes."""

    def __init__(self, cap: Any, core: _Core, *, push: bool, shutting_down: Any) -> None:
        self._cap: Any = cap
        self._shutting_down = shutting_down
        self._path: _PushPath | _PullPath = _PushPath(core) if push else _PullPath(cap, shutting_down)
        self.sink = self._path.sink
        self._writer = _Writer(cap, core, shutting_down)

    async def fill(self, core: _Core) -> None:
        await self._path.fill(core)

    async def write(self, data: memoryview) -> None:
        await self._writer.write(data)

    async def flush(self) -> None:
        await self._writer.flush()

    async def send_eof(self) -> None:
        with translate(self._shutting_down):
            await self._cap.closeWrite()

    async def close(self, writable: bool) -> None:
        with translate(self._shutting_down):
            await self._cap.close()

    async def reset(self) -> None:
        cap = self._cap
        self._writer.cancel()
        if cap is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await cap.reset()

    def release(self) -> None:
        self._cap = None
        self._writer.cancel()
        if isinstance(self._path, _PullPath):
            self._path.release()


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

    def __init__(self, transport: _Transport, core: _Core, info: Any) -> None:
        self._core = core
        self._t = transport
        self._reading = False
        self._writing = False
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
        if self._reading:
            raise Busy("another task is reading this stream")
        self._reading = True
        try:
            yield
        finally:
            self._reading = False
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
            while not core.buf:
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
            while len(core.buf) < n:
                if not core.state.check_read():
                    partial = core.take(len(core.buf))
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
                if len(core.buf) > limit:
                    raise LimitExceeded(f"more than {limit} bytes before end of stream")
                core.need = len(core.buf) + 1
                await self._t.fill(core)
            if len(core.buf) > limit:
                raise LimitExceeded(f"more than {limit} bytes before end of stream")
            return core.take(len(core.buf))

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
                try:
                    head = _wire.decode_uvarint(core.buf)
                except ValueError as exc:
                    raise FrameTooLarge(f"malformed frame length: {exc}") from exc
                if head is not None:
                    length, head_len = head
                    if length > max_size:
                        raise FrameTooLarge(f"frame of {length} bytes exceeds max_size {max_size}")
                    if len(core.buf) >= head_len + length:
                        core.state.check_read()
                        core.take(head_len)
                        return core.take(length)
                    core.need = head_len + length
                if not core.state.check_read():
                    if core.buf:
                        partial = core.take(len(core.buf))
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

    @contextlib.contextmanager
    def _exclusive_write(self) -> Iterator[None]:
        if self._writing:
            raise Busy("another task is writing this stream")
        self._writing = True
        try:
            yield
        finally:
            self._writing = False

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``. Returns once it is in flight; blocks while the window is full.

        If cancelled, a prefix of ``data`` may have been sent: reset the stream.
        """
        view = _bytes_view(data)
        with self._exclusive_write():
            await self._t.write(view)

    async def write_lp(self, data: bytes | bytearray | memoryview) -> None:
        """Send one unsigned-varint length-prefixed frame (as nim-libp2p's ``writeLp``)."""
        view = _bytes_view(data)
        frame = _wire.encode_uvarint(len(view)) + bytes(view)
        await self.write(frame)

    async def close_write(self) -> None:
        """Half-close: flush writes, then the peer reads end of stream. Reading goes on.

        A second call does nothing (as trio's ``send_eof``).
        """
        with self._exclusive_write():
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
            core.buf.clear()
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
