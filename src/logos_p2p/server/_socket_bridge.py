"""The socket data path, node side: a bridge whose module end is a socket of its own.

(The module side is :mod:`logos_p2p.client._socket`.) For a module on this machine the
byte path bypasses RPC entirely: a stream's bytes go from libp2p to a ``SOCK_SEQPACKET``
socket and back in trio, with no asyncio, no capnp and no per-stream RPC. One task
moves libp2p reads into DATA frames, another moves the module's frames to libp2p. The
socket's kernel buffers are the bounded per-stream buffer: a module that stops reading
stops the first task, which stops reading libp2p, whose window stops the peer.

The socket reaches the module on its data channel (:mod:`._channel`), which also
carries the stream's reset and the acknowledgement of its half-close.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol, TypeVar

import trio
import trio.lowlevel

from .._frames import CLOSE, DATA, EOF, MAX_DATA
from .._state import Event, State
from ..errors import Cause, LimitExceeded
from . import _libp2p
from ._bridge import MODULE_KNOWS, Bridge
from ._resources import FDS, RESOURCE_ERRNOS, Grant, ResourceManager, release_all

if TYPE_CHECKING:
    pass

log = logging.getLogger("logos_p2p.node")

A = TypeVar("A")
R = TypeVar("R")

REST_OF_WRITE = 0.0003  # seconds to wait for the rest of a write cut at a full yamux frame


class ChannelLink(Protocol):
    """What a socket stream needs of its module's data channel."""

    rm: ResourceManager

    def tell_reset(self, stream: int, cause: Cause, message: str, then: Callable[[bool], None]) -> bool:
        """Queue the stream's reset for the module; ``then(sent)`` once it is out (or
        dropped); False if the channel is closed (``then`` is not called)."""

    def tell_flushed(self, stream: int) -> None:
        """The stream's half-close went out on the wire."""

    async def drained(self) -> None:
        """Return once the module's channel messages so far are dispatched."""


class SocketSide:
    """The module side of a bridge on the socket path (it makes itself ``bridge.side``)."""

    def __init__(self, bridge: Bridge, channel: ChannelLink) -> None:
        """Create the stream's socket pair: ``module_end`` is for the channel to send, then
        to close with :meth:`module_end_gone`.

        Both ends are descriptors of the node's until the module's end is sent: each is
        reserved first, and a kernel that has none left fails this stream only.
        :raises LimitExceeded: no descriptor for it.
        """
        self.bridge = bridge
        self.channel = channel
        self.module_closed = False  # CLOSE arrived
        self.passing = 0  # bytes on their way to the module
        self.writing = 0  # bytes from the module that libp2p is taking
        self._closing_socket = False
        self.tasks = (self._to_module, self._from_module)
        rm = channel.rm
        self._fds: list[Grant] = [rm.grant(FDS)]  # the descriptors of its two ends
        try:
            self._fds.append(rm.grant(FDS))
            ours, self.module_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except (LimitExceeded, OSError) as exc:
            release_all(self._fds)
            if isinstance(exc, OSError):
                raise out_of_descriptors(exc) from exc
            raise
        ours.setblocking(False)
        self.sock: socket.socket | None = ours  # the node's end
        bridge.side = self

    # -- the ModuleSide protocol -----------------------------------------------------

    def held(self) -> int:
        return self.passing + self.writing

    def buffered(self) -> int:
        """Both queues of its socket, and what is on its way."""
        held = self.held()
        sock = self.sock
        if sock is not None and not self._closing_socket:
            with contextlib.suppress(OSError):
                held += queued(sock.fileno(), termios.TIOCOUTQ) + queued(sock.fileno(), termios.FIONREAD)
        return held

    def undelivered(self) -> bool:
        return False

    def drop_inbound(self) -> None:
        pass  # what the module did not read is in the socket, and goes with it

    def drop_outbound(self) -> None:
        pass

    def on_reset(self, cause: Cause, message: str) -> None:
        self._close_socket(told=None if cause in MODULE_KNOWS else (cause, message))

    def detached(self) -> None:
        self._close_socket()

    def wake(self) -> None:
        pass  # its tasks wait on the socket and the wire, which a reset closes

    # -- the socket ------------------------------------------------------------------

    def module_end_gone(self) -> None:
        """The module's end was sent (or will never be): it is not the node's any more."""
        self.module_end.close()
        if len(self._fds) == 2:
            self._fds.pop().release()

    def _close_socket(self, told: tuple[Cause, str] | None = None) -> None:
        """Close the node's end, once the channel sent the reset ``told`` if given: the
        module reads the reset before it sees its socket close."""
        if self._closing_socket or self.sock is None:
            return
        self._closing_socket = True
        sock = self.sock
        fds = self._fds

        def close(_sent: bool = True) -> None:
            close_raw(sock)
            release_all(fds)

        if told is None or not self.channel.tell_reset(self.bridge.info.id, *told, then=close):
            close()

    # -- peer -> module ----------------------------------------------------------------

    async def _send(self, *parts: bytes) -> bool | None:
        """Send one frame to the module: True; False if the module closed its end
        (``_from_module`` decides what that means); None if the wire ended abortively
        while the socket was full (the stream is reset)."""
        sock = self.sock
        if sock is None:
            return False
        while True:
            try:
                sock.sendmsg(parts)
                return True
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return False
            try:
                if not await self.bridge.unless_wire_ends(partial(trio.lowlevel.wait_writable, sock.fileno())):
                    return None
            except (OSError, trio.ClosedResourceError):
                return False

    async def _to_module(self) -> None:
        b = self.bridge
        delivering = True
        while not b.wire_released:
            await _libp2p.wait_more(b.net)
            if _libp2p.mid_write(b.net):
                # a 64 KiB write from a py-libp2p peer arrives as a full frame and then
                # a 12-byte one: forwarded as they come, every write would cost the node
                # and the module two messages, two reads and two muxer writes
                await _libp2p.wait_more(b.net, _libp2p.muxer_buffered(b.net), REST_OF_WRITE)
            # bytes already held go to the module first, the peer's window after
            data = _libp2p.take(b.net, MAX_DATA)
            taken = data is not None
            if not taken:
                data = await _libp2p.read(b.net, MAX_DATA)
            if data is None:
                if delivering and b.state.state is not State.CLOSED and await self._send(EOF) is None:
                    return
                b.eof_delivered = True
                b.remote_eof()
                return
            b.moved(bytes_in=len(data))
            if delivering and b.state.state is not State.CLOSED:
                self.passing = len(data)
                b.meter()
                sent = await self._send(DATA, data)
                self.passing = 0
                b.meter()
                if sent is None:
                    return
                delivering = sent
            if taken:
                await _libp2p.credit(b.net, len(data))

    # -- module -> peer ----------------------------------------------------------------

    async def _from_module(self) -> None:
        b = self.bridge
        while True:
            try:
                msg = await recv_raw(self.sock, MAX_DATA + 2)
            except (OSError, trio.ClosedResourceError):
                msg = b""
            if len(msg) > MAX_DATA + 1:  # the kernel cut it to our buffer: it was longer
                b.reset(Cause.PROTOCOL_ERROR, f"the module sent a frame over {MAX_DATA + 1} bytes")
                return
            if not msg:
                # a module that resets sends the reset on the channel before it closes
                # the socket: take it first, so that the cause is the module's
                await self.channel.drained()
                if not (self.module_closed or b.state.finished):
                    b.reset(Cause.CAPABILITY_DROPPED, "the module closed the stream without closing it")
                return
            kind = msg[:1]
            if kind == DATA:
                if not b.can_write():
                    b.reset(Cause.PROTOCOL_ERROR, f"the module wrote in state {b.state.state.value}")
                    return
                self.writing = len(msg) - 1  # held by the node while libp2p takes it
                b.meter()
                try:
                    await _libp2p.write(b.net, memoryview(msg)[1:])
                finally:
                    self.writing = 0
                    b.meter()
                b.moved(bytes_out=len(msg) - 1)
            elif kind == EOF:
                if not b.can_write():
                    b.reset(Cause.PROTOCOL_ERROR, "the module half-closed twice")
                    return
                b.state.handle(Event.SEND_EOF)
                await self._half_close()
            elif kind == CLOSE:
                self.module_closed = True
                if b.state.is_reset:
                    return
                if b.close():
                    await self._half_close()
                return
            else:
                b.reset(Cause.PROTOCOL_ERROR, f"unknown frame {kind!r} from the module")
                return

    async def _half_close(self) -> None:
        await self.bridge.half_close(sent=lambda: self.channel.tell_flushed(self.bridge.info.id))


# Raw non-blocking socket calls. trio's socket methods take two scheduler
# checkpoints per call even when the call succeeds at once; on the byte path
# that was the largest cost the node added. These wait only when they must.


async def recv_raw(sock: socket.socket | None, size: int) -> bytes:
    return await _when_readable(sock, socket.socket.recv, size)


async def recv_raw_into(sock: socket.socket | None, buffer: bytearray) -> int:
    return await _when_readable(sock, socket.socket.recv_into, buffer)


async def _when_readable(sock: socket.socket | None, call: Callable[[socket.socket, A], R], arg: A) -> R:
    """``call(sock, arg)``, waiting for the socket to be readable only when it would block."""
    if sock is None:
        raise trio.ClosedResourceError
    while True:
        try:
            return call(sock, arg)
        except (BlockingIOError, InterruptedError):
            await trio.lowlevel.wait_readable(sock.fileno())


def out_of_descriptors(exc: OSError) -> LimitExceeded | OSError:
    """The kernel's "no more descriptors / buffers / memory" as LimitExceeded; anything else as is."""
    if exc.errno in RESOURCE_ERRNOS:
        return LimitExceeded(f"the system has no resources for another socket: {exc.strerror}")
    return exc


def close_raw(sock: socket.socket) -> None:
    """Close ``sock``, waking its waiters (they raise ClosedResourceError)."""
    if sock.fileno() != -1:
        trio.lowlevel.notify_closing(sock.fileno())
    sock.close()


def queued(fd: int, request: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0])
