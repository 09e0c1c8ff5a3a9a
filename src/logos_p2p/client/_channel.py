"""The local data channel, module side: opens, inbound announcements, resets, flushes.

A module on the node's machine asks its RPC connection for a data channel
(``Node.dataChannel``) and connects a ``SOCK_SEQPACKET`` socket to it. From then on
inbound streams of its channel registrations, and the outbound streams it opens, each
arrive as a socket (``SCM_RIGHTS``, a :class:`~._socket.SocketTransport`), and their
bytes never touch RPC. The messages are described in the schema ("The local data
channel"); :class:`Channel` is their asyncio side, dispatched from a reader callback.
(The node side is :mod:`logos_p2p.server._channel`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import weakref
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from .. import _private, _schema
from .._requests import MAX_CHANNEL_MESSAGE
from .._wire import marker_to_error
from ..errors import Cause, InvalidArgument, LogosP2PError, NodeShutdown, RPCError
from ._socket import SocketTransport
from ._stream import _Core

log = logging.getLogger("logos_p2p.client")
schema = _schema.load()

_FD_SPACE = socket.CMSG_SPACE(4)


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
    async def connect(cls, path: str, token: bytes, uids: Collection[int]) -> Channel:
        """The channel at ``path``, once the process behind it runs as one of ``uids``."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, path)
            _private.check_peer(sock, path, uids)
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
        with schema.ChannelMessage.from_bytes(data) as msg:
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
                    transport.node_reset(Cause.parse(msg.reset.cause), msg.reset.message)
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
        on_close, self.on_close = self.on_close, lambda: None  # lets go of the Node (a cycle otherwise)
        on_close()
