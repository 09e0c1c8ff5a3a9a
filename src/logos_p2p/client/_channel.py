"""The local data channel, module side: streams as unix sockets of their own.

A module on the node's machine asks its RPC connection for a data channel
(``Node.dataChannel``) and connects a ``SOCK_SEQPACKET`` socket to it. From
then on inbound streams of its channel registrations, and the outbound
streams it opens, each arrive as a socket (``SCM_RIGHTS``), and their bytes
never touch RPC. The frames are described in the schema ("The local data
channel"); this module is the asyncio side of them:

* :class:`Channel` -- the module's channel: opens, inbound announcements,
  resets and flush acknowledgements, dispatched from a reader callback;
* :class:`SocketTransport` -- one stream's :class:`~._stream._Transport`:
  a reader callback feeds the stream's bounded buffer and pauses when it is
  full (the kernel buffers then fill, and the node stops reading the peer);
  writes are 'D' frames sent without copying.

Resets and the answers to half-closes come on the channel, never behind
data, so a stream whose buffer is full still learns at once that it was
reset, and a blocked writer is woken by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import socket
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import _schema
from .._requests import MAX_CHANNEL_MESSAGE
from .._state import State
from .._wire import marker_to_error
from ..errors import (
    Cause,
    InvalidArgument,
    LogosP2PError,
    NodeShutdown,
    RPCError,
    StreamClosed,
    StreamReset,
    reset_error,
)
from ._stream import _Core, _Transport

log = logging.getLogger("logos_p2p.client")
rpc = _schema.load()

MAX_DATA = 65536
DATA, EOF, CLOSE = b"D", b"E", b"C"
EOF_GRACE = 1.0  # a socket closed by the node: how long its reset may trail on the channel
_FD_SPACE = socket.CMSG_SPACE(4)


class SocketTransport(_Transport):
    """One stream's socket (module side)."""

    def __init__(self, channel: Channel, sock: socket.socket, core: _Core, stream_id: int) -> None:
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


_message = _schema.channel_message


class Channel:
    """The module's data channel."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.closed = False
        self.handlers: dict[int, Callable[[socket.socket, Any], None]] = {}
        self._streams: weakref.WeakValueDictionary[int, SocketTransport] = weakref.WeakValueDictionary()
        self._opens: dict[int, asyncio.Future[tuple[socket.socket, dict[str, Any]]]] = {}
        self._requests = itertools.count(1)
        self._out: deque[bytes] = deque()
        self.on_close: Callable[[], None] = lambda: None
        loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    async def connect(cls, path: str, token: bytes) -> Channel:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, path)
            await loop.sock_sendall(sock, _message(hello=token))
        except BaseException:
            sock.close()
            raise
        return cls(loop, sock)

    def adopt(self, sock: socket.socket, core: _Core, stream_id: int) -> SocketTransport:
        sock.setblocking(False)
        transport = SocketTransport(self, sock, core, stream_id)
        self._streams[stream_id] = transport
        return transport

    def forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    # -- to the node ---------------------------------------------------------------------

    def _send(self, message: bytes) -> None:
        if self.closed:
            return
        if self._out:
            self._out.append(message)
            return
        try:
            self.sock.send(message)
        except (BlockingIOError, InterruptedError):
            self._out.append(message)
            self.loop.add_writer(self.sock.fileno(), self._flush_out)
        except OSError:
            self.close()

    def _flush_out(self) -> None:
        while self._out:
            try:
                self.sock.send(self._out[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            self._out.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def send_reset(self, stream_id: int, cause: str) -> None:
        self._send(_message(reset={"stream": stream_id, "cause": cause, "message": ""}))

    async def open(
        self, peer_id: str, protocols: list[str], addrs: list[str], timeout_ms: int
    ) -> tuple[socket.socket, dict[str, Any]]:
        if self.closed:
            raise NodeShutdown("the data channel is closed")
        request = next(self._requests)
        message = _message(
            open={
                "request": request,
                "peerId": peer_id,
                "protocols": protocols,
                "addrs": addrs,
                "timeoutMs": timeout_ms,
            }
        )
        if len(message) > MAX_CHANNEL_MESSAGE:
            raise InvalidArgument(f"an open request of {len(message)} bytes is over the node's {MAX_CHANNEL_MESSAGE}")
        fut: asyncio.Future[tuple[socket.socket, dict[str, Any]]] = self.loop.create_future()
        self._opens[request] = fut
        self._send(message)
        try:
            return await fut
        finally:
            if self._opens.get(request) is fut:
                del self._opens[request]

    # -- from the node -------------------------------------------------------------------

    def _on_readable(self) -> None:
        while not self.closed:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        socket.close(fd)
                self.close()
                return
            sock = socket.socket(fileno=fds[0]) if fds else None
            try:
                self._dispatch(data, sock)
            except Exception:
                log.exception("a bad message on the data channel")
                if sock is not None:
                    sock.close()

    def _dispatch(self, data: bytes, sock: socket.socket | None) -> None:
        with rpc.ChannelMessage.from_bytes(data) as msg:
            which = msg.which()
            if which == "inbound":
                info = msg.inbound.info.to_dict()
                handler = self.handlers.get(msg.inbound.registration)
                if sock is None:
                    raise ValueError("an inbound stream without its socket")
                if handler is None:  # unregistered meanwhile: closing it resets the stream
                    sock.close()
                    return
                handler(sock, info)
            elif which == "opened":
                fut = self._opens.pop(msg.opened.request, None)
                if sock is None:
                    raise ValueError("an opened stream without its socket")
                if fut is None or fut.done():  # the caller gave up: closing it resets the stream
                    sock.close()
                    return
                fut.set_result((sock, msg.opened.info.to_dict()))
            elif which == "openFailed":
                fut = self._opens.pop(msg.openFailed.request, None)
                if fut is not None and not fut.done():
                    text = msg.openFailed.error
                    fut.set_exception(marker_to_error(text) or RPCError(text))
            elif which == "reset":
                transport = self._streams.get(msg.reset.stream)
                if transport is not None:
                    try:
                        cause = Cause(str(msg.reset.cause))
                    except ValueError:
                        cause = Cause.PROTOCOL_ERROR
                    transport.node_reset(cause, msg.reset.message)
            elif which == "flushed":
                transport = self._streams.get(msg.flushed)
                if transport is not None:
                    transport.node_flushed()
            else:
                raise ValueError(f"unexpected {which!r}")

    def close(self, error: LogosP2PError | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
            if self._out:
                self.loop.remove_writer(self.sock.fileno())
        self.sock.close()
        for fut in self._opens.values():
            if not fut.done():
                fut.set_exception(error or NodeShutdown("the data channel closed"))
        self._opens.clear()
        self.on_close()
