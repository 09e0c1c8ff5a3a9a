"""The socket data path, module side: a stream as a unix socket of its own.

(The node side is :mod:`logos_p2p.server._socket_bridge`.) A reader callback feeds the
stream's bounded buffer and pauses when it is full (the kernel buffers then fill, and the
node stops reading the peer); writes are DATA frames sent without copying. Resets and
the answers to half-closes come on the module's data channel (:mod:`._channel`), never
behind data, so a stream whose buffer is full still learns at once that it was reset,
and a blocked writer is woken by it.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Protocol

from .._frames import CLOSE, DATA, EOF, MAX_DATA
from .._state import State
from ..errors import Cause, StreamClosed, StreamReset, reset_error
from ._stream import Transport, _Core

EOF_GRACE = 1.0  # a socket closed by the node: how long its reset may trail on the channel


class ChannelLink(Protocol):
    """What a socket stream needs of its module's data channel."""

    loop: asyncio.AbstractEventLoop

    def send_reset(self, stream_id: int, cause: str) -> None: ...
    def forget(self, stream_id: int) -> None: ...


class SocketTransport(Transport):
    """One stream's socket (module side)."""

    def __init__(self, channel: ChannelLink, sock: socket.socket, core: _Core, stream_id: int) -> None:
        self._channel = channel
        self._loop = channel.loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._core = core
        self.id = stream_id
        self._paused = False
        self._closed_by_node = False
        self._flushed = 0  # flush acknowledgements received
        self._asked = 0  # half-closes sent that the node will acknowledge
        self._writable_waiter: asyncio.Future[None] | None = None
        self._watching_writable = False
        self._error: StreamReset | None = None  # how the node said the stream ended
        self._loop.add_reader(self._fd, self._on_readable)

    # -- inbound ------------------------------------------------------------------------

    def _on_readable(self) -> None:
        core = self._core
        sock = self._sock
        if sock is None:
            return
        while True:
            if core.full():
                self._loop.remove_reader(self._fd)
                self._paused = True
                return
            try:
                msg = sock.recv(MAX_DATA + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg = b""
            if not msg:
                self._node_closed()
                return
            kind = msg[:1]
            if kind == DATA:
                core.feed(msg[1:])
            elif kind == EOF:
                if not core.state.is_reset:
                    core.remote_eof()
            else:
                core.fail(Cause.PROTOCOL_ERROR, f"unknown frame {kind!r} from the node")
                self._stop_reading()
                return

    def _stop_reading(self) -> None:
        if self._sock is not None and not self._paused:
            self._loop.remove_reader(self._fd)
        self._paused = True

    def _node_closed(self) -> None:
        """The node closed its end: normal once both flows ended, else its reset is on the way."""
        self._stop_reading()
        self._closed_by_node = True
        if not self._core.state.finished:
            self._loop.call_later(EOF_GRACE, self._lost)
        self._wake_writer()

    def _lost(self) -> None:
        if self._error is None and not self._core.state.finished:
            self.node_reset(Cause.PROTOCOL_ERROR, "the node closed the stream's socket")

    def node_reset(self, cause: Cause, message: str) -> None:
        if self._error is None:
            self._error = reset_error(cause, message)
        self._core.fail(cause, message)
        self._wake_writer()

    def node_flushed(self) -> None:
        self._flushed += 1
        self._core.wake()

    async def fill(self, core: _Core) -> None:
        if self._paused and self._sock is not None and not self._closed_by_node and not core.full():
            self._paused = False
            self._loop.add_reader(self._fd, self._on_readable)
        await core.wait()

    # -- outbound -----------------------------------------------------------------------

    async def _send(self, *parts: bytes | memoryview) -> None:
        while True:
            if parts[0] == DATA:
                self._core.state.check_write()
            else:
                self._check_alive()
            sock = self._sock
            if sock is None:
                raise StreamClosed("the stream is closed")
            try:
                sock.sendmsg(parts)
                return
            except (BlockingIOError, InterruptedError):
                await self._wait_writable(sock)
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
                if parts[0] != DATA and self._core.state.state is State.CLOSED and self._asked == self._flushed:
                    return  # both flows had ended: the node let the stream go already
                await self._await_verdict()

    def _check_alive(self) -> None:
        if self._error is not None:
            raise self._error
        if self._core.state.is_reset:
            raise self._core.state.error()

    async def _wait_writable(self, sock: socket.socket) -> None:
        fut = self._loop.create_future()
        self._writable_waiter = fut
        self._loop.add_writer(sock.fileno(), self._wake_writer)
        self._watching_writable = True
        try:
            await fut
        finally:
            self._writable_waiter = None
            self._unwatch_writable()

    def _unwatch_writable(self) -> None:
        if self._watching_writable:
            self._watching_writable = False
            self._loop.remove_writer(self._fd)

    def _wake_writer(self) -> None:
        fut = self._writable_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _await_verdict(self) -> None:
        """The node closed the socket under a write: wait for its reset (bounded)."""
        self._node_closed()
        if self._error is None:
            self._loop.call_later(EOF_GRACE, self._lost)
        while self._error is None:
            await self._core.wait()
        raise self._error

    async def write(self, data: memoryview) -> None:
        if not data:
            self._core.state.check_write()
            return
        for start in range(0, len(data), MAX_DATA):
            await self._send(DATA, data[start : start + MAX_DATA])

    async def flush(self) -> None:
        self._check_alive()

    async def _acknowledged(self) -> None:
        core = self._core
        while self._flushed < self._asked:
            if self._error is not None:
                raise self._error
            if core.state.is_reset:
                raise core.state.error()
            await core.wait()

    async def send_eof(self) -> None:
        self._asked += 1
        await self._send(EOF)
        await self._acknowledged()

    async def close(self, writable: bool) -> None:
        if writable:
            self._asked += 1
        await self._send(CLOSE)
        await self._acknowledged()

    async def reset(self) -> None:
        if self._sock is not None and not self._closed_by_node:
            self._channel.send_reset(self.id, "localReset")
        self.release()

    def release(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if not self._paused:
            self._loop.remove_reader(self._fd)
        self._paused = True
        self._unwatch_writable()
        self._wake_writer()
        self._channel.forget(self.id)
        sock.close()

    def dropped(self) -> None:
        """The Stream was garbage collected unclosed: reset it (safe in a finalizer)."""
        if self._sock is None:
            return
        if not self._core.state.finished:
            self._channel.send_reset(self.id, "capabilityDropped")
        self.release()
