"""The local data channel, node side: a module's streams as sockets of their own.

For a module on this machine the byte path bypasses RPC (see "The local data channel"
in the schema; the module side is :mod:`logos_p2p.client._channel`):

* :class:`~._channel_listener.ChannelListener` -- where modules connect their channels;
* :class:`DataChannel` -- announces inbound streams and answers opens, each with the
  stream's socket attached (``SCM_RIGHTS``, a :mod:`._socket_bridge`); carries resets
  and flush acknowledgements both ways, so a full stream socket never delays them.

An adapter like the RPC servers: streams are admitted, opened and ended by the stream
service (:mod:`._streams`).
"""

from __future__ import annotations

import array
import errno
import logging
import socket
import termios
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
import trio.lowlevel

from .. import _schema
from .._requests import MAX_CHANNEL_MESSAGE, timeout_from_ms
from .._wire import error_to_marker
from ..errors import Cause, InvalidArgument, LimitExceeded, LogosP2PError, NodeShutdown
from ._bridge import Bridge
from ._config import NodeConfig
from ._handoff import Loops
from ._resources import OPENS, Grant
from ._session import ModuleSession, Registration
from ._socket_bridge import SocketSide, close_raw, queued, recv_raw_into
from ._streams import StreamService

if TYPE_CHECKING:
    pass

log = logging.getLogger("logos_p2p.node")
schema = _schema.load()

MAX_DATAGRAM = 256 * 1024  # the largest it reads whole (to answer an oversize open instead of guessing)

_message = _schema.channel_message


SENT, FULL, SHORT, CLOSED = object(), object(), object(), object()  # what one send did
SHORT_RETRY = 0.01  # seconds before a send the kernel had no buffers for is tried again


class _Outgoing:
    """One message waiting in a channel's outbox."""

    __slots__ = ("after", "announces", "dropped", "fd", "message")

    def __init__(self, message: bytes, fd: socket.socket | None, after: Any, announces: int) -> None:
        self.message = message
        self.fd = fd
        self.after = after  # after(sent: bool), once
        self.announces = announces  # the stream an inbound announcement is about (0: none)
        self.dropped = False


class DataChannel:
    """One module's data channel (node side).

    What the node tells the module goes through one ordered **outbox**. A message
    goes out at once when the socket has room; otherwise it waits, and one task sends
    the queue as the module reads. The outbox is bounded where the node offers
    something new: an inbound stream announced while :attr:`outbox_limit`
    announcements wait is refused (and reset at the peer). Answers to the module's
    own requests, resets and flush acknowledgements always queue: each is bounded by
    the module's opens and streams. A reset for a stream whose announcement has not
    gone out yet replaces both: the module never hears of the stream.

    The module's messages are untrusted: a datagram that does not parse is counted
    and dropped, an open request that is malformed or too large is answered with
    ``openFailed``; none of them ends the module's session.
    """

    def __init__(
        self, streams: StreamService, loops: Loops, config: NodeConfig, session: ModuleSession, sock: socket.socket
    ) -> None:
        self.streams = streams
        self.loops = loops
        self.config = config
        self.rm = streams.rm
        self.session = session
        self.sock = sock
        self.closed = False
        self.outbox_limit = config.channel_outbox
        self._outbox: deque[_Outgoing] = deque()
        self._announced: dict[int, _Outgoing] = {}  # stream id -> its announcement, still queued
        self._announcing = 0  # announcements in the outbox
        self._sending = False  # the task that empties the outbox runs
        self._recv_buffer = bytearray(MAX_DATAGRAM + 1)

    # -- to the module ------------------------------------------------------------------

    def send(
        self,
        message: bytes,
        fd: socket.socket | None = None,
        *,
        after: Any = None,
        stream: int = 0,
        announce: bool = False,
        reset: bool = False,
    ) -> bool:
        """Send or queue ``message`` (with ``fd`` attached); True if it will go out.

        False (and ``after`` is not called): the channel is closed, or ``announce`` and
        the outbox holds its limit of announcements. Otherwise ``after(sent)`` runs once
        the message is out (True), or dropped because the channel closed or a reset
        replaced it (False).
        """
        if self.closed:
            return False
        if reset and stream in self._announced:  # the module never heard of this stream
            pending = self._announced.pop(stream)
            pending.dropped = True
            self._announcing -= 1
            _finish(pending, sent=False)
            if after is not None:
                after(False)
            return True
        if announce and self._announcing >= self.outbox_limit:
            self.rm.refused(self.rm.module(self.session.id), "outbox", f"module {self.session.id}'s outbox is full")
            return False
        item = _Outgoing(message, fd, after, stream if announce else 0)
        if not self._outbox:
            outcome = self._send_now(item)
            if outcome is SENT:
                return True
            if self.closed or (outcome is SHORT and announce):  # gone, or no room for one more stream
                return False
        self._outbox.append(item)
        if announce:
            self._announced[stream] = item
            self._announcing += 1
        if not self._sending:
            self._sending = True
            self.loops.spawn_trio(self._send_queued)
        return True

    def _send_now(self, item: _Outgoing) -> object:
        """Try to send ``item`` without waiting: SENT, FULL (the socket has no room), SHORT
        (the kernel has no buffers, or too many descriptors in flight), or CLOSED."""
        ancillary = []
        if item.fd is not None:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [item.fd.fileno()]))]
        try:
            self.sock.sendmsg([item.message], ancillary)
        except (BlockingIOError, InterruptedError):
            return FULL
        except OSError as exc:
            if exc.errno in (errno.ENOBUFS, errno.ENOMEM, errno.ETOOMANYREFS):
                return SHORT
            log.debug("module %s: channel send failed: %s", self.session.id, exc)
            self.close()
            return CLOSED
        _finish(item, sent=True)
        return SENT

    async def _send_queued(self) -> None:
        try:
            while self._outbox and not self.closed:
                item = self._outbox[0]
                outcome = SENT if item.dropped else self._send_now(item)
                if outcome is CLOSED:
                    return
                if outcome is SHORT:  # writable, but not now: retry shortly
                    await trio.sleep(SHORT_RETRY)
                    continue
                if outcome is FULL:
                    try:
                        await trio.lowlevel.wait_writable(self.sock.fileno())
                    except (OSError, trio.ClosedResourceError):
                        self.close()
                        return
                    continue
                self._outbox.popleft()
                if item.announces and not item.dropped:
                    self._announced.pop(item.announces, None)
                    self._announcing -= 1
        finally:
            self._sending = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.session.channel_deliver = None
        close_raw(self.sock)
        outbox, self._outbox = self._outbox, deque()
        self._announced.clear()
        self._announcing = 0
        for item in outbox:
            if not item.dropped:
                _finish(item, sent=False)

    async def drained(self) -> None:
        """Return once the module's messages that arrived so far are dispatched (bounded)."""
        for _ in range(50):
            if self.closed:
                return
            try:
                if not queued(self.sock.fileno(), termios.FIONREAD):
                    return
            except OSError:
                return
            await trio.lowlevel.checkpoint()

    # -- inbound ----------------------------------------------------------------------

    async def deliver(self, reg: Registration, bridge: Bridge) -> None:
        """``deliver`` of a channel registration (trio): give an inbound stream to the module."""
        self._hand_over(bridge, announce=True, inbound={"registration": reg.id, "info": bridge.info.to_capnp()})

    # -- the ChannelLink of its streams ------------------------------------------------

    def tell_reset(self, stream: int, cause: Cause, message: str, then: Callable[[bool], None]) -> bool:
        reset = _message(reset={"stream": stream, "cause": cause.value, "message": message[:1024]})
        return self.send(reset, after=then, stream=stream, reset=True)

    def tell_flushed(self, stream: int) -> None:
        self.send(_message(flushed=stream))

    def _hand_over(self, bridge: Bridge, announce: bool = False, **header: Any) -> None:
        """Give the stream its socket, send the module its end with the message ``header``,
        then start the stream."""
        if self.closed:
            bridge.abandon(Cause.MODULE_GONE, "the module's data channel is closed", linger=False)
            return
        try:
            side = SocketSide(bridge, self)
        except LimitExceeded as exc:  # counted and logged where it was refused
            bridge.abandon(Cause.LIMIT_EXCEEDED, str(exc), linger=False)
            return
        going = self.send(
            _message(**header),
            side.module_end,
            after=lambda _sent: side.module_end_gone(),
            stream=bridge.info.id,
            announce=announce,
        )
        if not going:
            side.module_end_gone()
            if self.closed:
                bridge.abandon(Cause.MODULE_GONE, "the module's data channel is closed", linger=False)
            else:  # its outbox is full (counted and logged in send)
                bridge.abandon(Cause.LIMIT_EXCEEDED, "the module does not read its data channel", linger=False)
            return
        bridge.start()

    # -- from the module ------------------------------------------------------------------

    async def serve(self) -> None:
        """Read the module's messages until the channel closes (trio)."""
        buffer = self._recv_buffer
        try:
            while True:
                try:
                    n = await recv_raw_into(self.sock, buffer)
                except (OSError, trio.ClosedResourceError):
                    return
                if not n:
                    return
                self._dispatch(bytes(memoryview(buffer)[:n]), truncated=n > MAX_DATAGRAM)
        finally:
            self.close()

    def _dispatch(self, data: bytes, truncated: bool = False) -> None:
        """One message from the module. Nothing it sends ends the session (see the class)."""
        if truncated:
            self._bad("a datagram over %d bytes", MAX_DATAGRAM)
            return
        try:
            with schema.ChannelMessage.from_bytes(data, traversal_limit_in_words=MAX_DATAGRAM // 8) as msg:
                which = msg.which()
                if which == "open":
                    self._open_request(msg.open, len(data))
                elif which == "reset":
                    self._reset_request(msg.reset)
                else:
                    self._bad("an unexpected %r", which)
        except Exception as exc:  # not a ChannelMessage at all
            self._bad("an unreadable message (%s)", f"{type(exc).__name__}: {exc}")

    def _bad(self, what: str, *args: Any) -> None:
        self.session.bad_messages += 1
        self.rm.refused(self.rm.module(self.session.id), "channel", f"module {self.session.id} sent {what % args}")

    def _open_request(self, o: Any, size: int) -> None:
        request = o.request
        try:
            if size > MAX_CHANNEL_MESSAGE:
                raise LimitExceeded(f"an open request of {size} bytes is over {MAX_CHANNEL_MESSAGE}")
            try:
                args = (str(o.peerId), [str(p) for p in o.protocols], [str(a) for a in o.addrs], int(o.timeoutMs))
            except Exception as exc:
                raise InvalidArgument(f"malformed open request: {exc}") from None
            grant = self.streams.begin(self.session, OPENS)  # LimitExceeded: too many opens in progress
        except LogosP2PError as exc:
            self._bad("a refused open (%s)", exc)
            self.send(_message(openFailed={"request": request, "error": error_to_marker(exc)}))
            return
        self.streams.working += 1
        self.loops.spawn_trio(partial(self._open, grant, request, *args))

    def _reset_request(self, r: Any) -> None:
        stream_id, cause_name = r.stream, str(r.cause)
        bridge = self.session.bridges.get(stream_id)
        if bridge is not None:
            if cause_name == "capabilityDropped":
                bridge.reset(Cause.CAPABILITY_DROPPED, "the module dropped the stream without closing it")
            else:
                bridge.reset(Cause.LOCAL_RESET, "reset by the module")

    async def _open(
        self, grant: Grant, request: int, peer: str, protocols: list[str], addrs: list[str], timeout_ms: int
    ) -> None:
        try:
            try:
                if self.closed or self.streams.shutting_down:
                    raise NodeShutdown()
                timeout = timeout_from_ms(timeout_ms, self.config.open_timeout)
                bridge = await self.streams.open(self.session, peer, protocols, addrs, timeout)
            except LogosP2PError as exc:
                self.send(_message(openFailed={"request": request, "error": error_to_marker(exc)}))
                return
            self._hand_over(bridge, opened={"request": request, "info": bridge.info.to_capnp()})
        finally:
            grant.release()
            self.streams.working -= 1


def _finish(item: _Outgoing, sent: bool) -> None:
    after, item.after = item.after, None
    if after is not None:
        after(sent)
