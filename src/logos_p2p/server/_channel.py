"""The local data channel: a module's streams as unix sockets of their own (trio side).

For a module on this machine the byte path bypasses RPC entirely (see "The
local data channel" in the schema). Measured on the RPC paths, each call
costs the node ~0.3 ms of CPU on trio-asyncio; here a stream's bytes go from
libp2p to a ``SOCK_SEQPACKET`` socket and back in trio, with no asyncio, no
capnp and no per-stream RPC:

* :class:`ChannelListener` -- a ``SOCK_SEQPACKET`` listener beside the unix RPC
  socket. A connection becomes a module's :class:`DataChannel` once its first
  datagram is a token the module got from ``Node.dataChannel`` on its RPC
  connection; anything else is closed.
* :class:`DataChannel` -- announces inbound streams and answers opens, each
  with the stream's socket attached (``SCM_RIGHTS``); carries resets and flush
  acknowledgements both ways, so a full stream socket never delays them.
* :class:`SocketBridge` -- a :class:`~._bridge.Bridge` whose module side is a
  socket: one task moves libp2p reads into 'D' frames, another moves the
  module's frames to libp2p. The socket's kernel buffers are the bounded
  per-stream buffer; a module that stops reading stops the first task, which
  stops reading libp2p, whose window stops the peer.

The lifecycle stays the bridge's: :class:`~._state.StreamState`, resets,
linger and accounting are inherited unchanged.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import secrets
import socket
import struct
import termios
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
import trio.lowlevel

from .. import _schema
from .._requests import MAX_CHANNEL_MESSAGE
from .._state import WRITABLE, Event, State
from .._wire import error_to_marker
from ..errors import Cause, InvalidArgument, LimitExceeded, LogosP2PError, NodeShutdown, StreamReset
from . import _libp2p
from ._bridge import _MODULE_KNOWS, Bridge, Limits, Owner
from ._handoff import Loops
from ._resources import FDS, RESOURCE_ERRNOS, Grant, StreamSlot

if TYPE_CHECKING:
    from libp2p.abc import INetStream

    from ._node import NodeService
    from ._registry import ModuleSession, Registration

log = logging.getLogger("logos_p2p.node")
rpc = _schema.load()

MAX_DATA = 65536  # payload bytes in one 'D' frame
DATA, EOF, CLOSE = b"D", b"E", b"C"
HELLO_TIMEOUT = 10.0
MAX_DATAGRAM = 256 * 1024  # the largest it reads whole (to answer an oversize open instead of guessing)
REST_OF_WRITE = 0.0003  # seconds to wait for the rest of a write cut at a full yamux frame


class SocketBridge(Bridge):
    """A bridged stream whose module side is a ``SOCK_SEQPACKET`` socket."""

    def __init__(
        self,
        net_stream: INetStream,
        direction: str,
        owner: Owner,
        loops: Loops,
        limits: Limits,
        slot: StreamSlot,
        channel: DataChannel,
    ) -> None:
        super().__init__(net_stream, direction, owner, loops, limits, slot)
        self.channel = channel
        self.sock: socket.socket | None = None  # the node's end
        self.module_closed = False  # 'C' arrived
        self._closing_socket = False
        self._fds: list[Grant] = []  # the descriptors of its two ends

    @property
    def buffered(self) -> int:
        """Bytes of this stream held in the node: the muxer's, and both queues of its socket."""
        held = super().buffered
        sock = self.sock
        if sock is not None and not self._closing_socket:
            with contextlib.suppress(OSError):
                held += _queued(sock.fileno(), termios.TIOCOUTQ) + _queued(sock.fileno(), termios.FIONREAD)
        return held

    def make_socket(self) -> socket.socket:
        """Create the stream's socket pair; return the module's end (the caller sends it,
        then closes it with :meth:`module_end_gone`).

        Both ends are descriptors of the node's until the module's end is sent: each is
        reserved first, and a kernel that has none left fails this stream only.
        :raises LimitExceeded: no descriptor for it.
        """
        rm = self.channel.rm
        self._fds = [rm.grant(FDS), rm.grant(FDS)]
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:
            for grant in self._fds:
                grant.release()
            raise out_of_descriptors(exc) from exc
        ours.setblocking(False)
        self.sock = ours
        return theirs

    def module_end_gone(self, theirs: socket.socket) -> None:
        """The module's end was sent (or will never be): it is not the node's any more."""
        theirs.close()
        if len(self._fds) == 2:
            self._fds.pop().release()

    def start(self) -> None:
        log.debug("%r: opened with %s (socket)", self, self.info.remote_peer_id)
        self.loops.spawn_trio(self._to_module)
        self.loops.spawn_trio(self._from_module)

    def attach_sink(self, sink: Any) -> None:  # pragma: no cover - not for socket streams
        raise InvalidArgument("a socket stream has no sink")

    # -- peer -> module ----------------------------------------------------------------

    async def _send(self, *parts: bytes) -> bool | None:
        """Send one frame to the module: True; False if the module closed its end
        (``_from_module`` decides what that means); None if the wire ended abortively
        while the socket was full (the caller resets the stream)."""
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
                if not await self._unless_wire_ends(partial(trio.lowlevel.wait_writable, sock.fileno())):
                    return None
            except (OSError, trio.ClosedResourceError):
                return False

    async def _to_module(self) -> None:
        if self.wire_released or self.state.is_reset:
            return
        delivering = True
        with self._task():
            while not self.wire_released:
                await _libp2p.wait_more(self.net)
                if _libp2p.mid_write(self.net):
                    # a 64 KiB write from a py-libp2p peer arrives as a full frame and then
                    # a 12-byte one: forwarded as they come, every write would cost the node
                    # and the module two messages, two reads and two muxer writes
                    await _libp2p.wait_more(self.net, _libp2p.muxer_buffered(self.net), REST_OF_WRITE)
                # bytes already held go to the module first, the peer's window after
                data = _libp2p.take(self.net, MAX_DATA)
                taken = data is not None
                if not taken:
                    try:
                        data = await _libp2p.read(self.net, MAX_DATA)
                    except StreamReset as exc:
                        self.reset(exc.cause, str(exc), from_wire=True)
                        return
                if data is None:
                    if delivering and self.state.state is not State.CLOSED and await self._send(EOF) is None:
                        self._wire_ended()
                        return
                    self.eof_delivered = True
                    self._remote_eof()
                    return
                self.bytes_in += len(data)
                self.owner.account(self, bytes_in=len(data))
                if delivering and self.state.state is not State.CLOSED:
                    self.passing = len(data)
                    self._meter()
                    sent = await self._send(DATA, data)
                    self.passing = 0
                    self._meter()
                    if sent is None:
                        self._wire_ended()
                        return
                    delivering = sent
                if taken:
                    try:
                        await _libp2p.credit(self.net, len(data))
                    except StreamReset as exc:
                        self.reset(exc.cause, str(exc), from_wire=True)
                        return

    # -- module -> peer ----------------------------------------------------------------

    async def _from_module(self) -> None:
        if self.wire_released or self.state.is_reset:
            return
        with self._task():
            while True:
                try:
                    msg = await recv_raw(self.sock, MAX_DATA + 2)
                except (OSError, trio.ClosedResourceError):
                    msg = b""
                if len(msg) > MAX_DATA + 1:  # the kernel cut it to our buffer: it was longer
                    self.reset(Cause.PROTOCOL_ERROR, f"the module sent a frame over {MAX_DATA + 1} bytes")
                    return
                if not msg:
                    # a module that resets sends the reset on the channel before it closes
                    # the socket: take it first, so that the cause is the module's
                    await self.channel.drained()
                    if not (self.module_closed or self.state.finished):
                        self.reset(Cause.CAPABILITY_DROPPED, "the module closed the stream without closing it")
                    return
                kind = msg[:1]
                if kind == DATA:
                    if self.state.state not in WRITABLE:
                        self.reset(Cause.PROTOCOL_ERROR, f"the module wrote in state {self.state.state.value}")
                        return
                    self.tx_bytes = len(msg) - 1  # held by the node while libp2p takes it
                    self._meter()
                    try:
                        await _libp2p.write(self.net, memoryview(msg)[1:])
                    except StreamReset as exc:
                        self.reset(exc.cause, str(exc), from_wire=True)
                        return
                    finally:
                        self.tx_bytes = 0
                        self._meter()
                    self.bytes_out += len(msg) - 1
                    self.owner.account(self, bytes_out=len(msg) - 1)
                elif kind == EOF:
                    if self.state.state not in WRITABLE:
                        self.reset(Cause.PROTOCOL_ERROR, "the module half-closed twice")
                        return
                    self.state.handle(Event.SEND_EOF)
                    if not await self._half_close():
                        return
                elif kind == CLOSE:
                    self.module_closed = True
                    if self.state.is_reset:
                        return
                    writable = self.state.state in WRITABLE
                    self.state.handle(Event.CLOSE)
                    if writable and not await self._half_close():
                        return
                    if not self.rx_eof:
                        self.loops.spawn_trio(self._linger)
                    self._maybe_detach()
                    return
                else:
                    self.reset(Cause.PROTOCOL_ERROR, f"unknown frame {kind!r} from the module")
                    return

    async def _half_close(self) -> bool:
        try:
            await _libp2p.close_write(self.net)
        except StreamReset as exc:
            self.reset(exc.cause, str(exc), from_wire=True)
            return False
        self.eof_sent = True
        self.channel.send(_message(flushed=self.info.id))
        self._check_wire()
        return True

    # -- the end ----------------------------------------------------------------------

    def _tell_module_reset(self, cause: Cause, message: str) -> None:
        if cause in _MODULE_KNOWS:
            self._close_socket()
            return
        reset = _message(reset={"stream": self.info.id, "cause": cause.value, "message": message[:1024]})
        self._close_socket(before=reset)

    def _on_detach(self) -> None:
        self._close_socket()

    def _close_socket(self, before: bytes | None = None) -> None:
        """Close the node's end, once the channel sent ``before`` (a reset) if given: the
        module reads the reset before it sees its socket close."""
        if self._closing_socket or self.sock is None:
            return
        self._closing_socket = True
        sock = self.sock
        fds = self._fds

        def close(_sent: bool = True) -> None:
            close_raw(sock)
            for grant in fds:
                grant.release()

        if before is None or not self.channel.send(before, after=close, stream=self.info.id, reset=True):
            close()


# Raw non-blocking socket calls. trio's socket methods take two scheduler
# checkpoints per call even when the call succeeds at once; on the byte path
# that was the largest cost the node added. These wait only when they must.


async def recv_raw(sock: socket.socket | None, size: int) -> bytes:
    if sock is None:
        raise trio.ClosedResourceError
    while True:
        try:
            return sock.recv(size)
        except (BlockingIOError, InterruptedError):
            await trio.lowlevel.wait_readable(sock.fileno())


async def recv_raw_into(sock: socket.socket | None, buffer: bytearray) -> int:
    if sock is None:
        raise trio.ClosedResourceError
    while True:
        try:
            return sock.recv_into(buffer)
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


def _queued(fd: int, request: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0])


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

    def __init__(self, node: NodeService, session: ModuleSession, sock: socket.socket) -> None:
        self.node = node
        self.rm = node.rm
        self.session = session
        self.sock = sock
        self.closed = False
        self.outbox_limit = node.config.channel_outbox
        self._outbox: deque[_Outgoing] = deque()
        self._announced: dict[int, _Outgoing] = {}  # stream id -> its announcement, still queued
        self._announcing = 0  # announcements in the outbox
        self._sending = False  # the task that empties the outbox runs
        self._recv_buffer = bytearray(MAX_DATAGRAM + 1)
        self._opening: set[trio.CancelScope] = set()  # opens in progress, for cancel_opens
        self.opens = 0  # open requests being served (tasks, for status)

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
            self.node.loops.spawn_trio(self._send_queued)
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
        self.cancel_opens()
        close_raw(self.sock)
        outbox, self._outbox = self._outbox, deque()
        self._announced.clear()
        self._announcing = 0
        for item in outbox:
            if not item.dropped:
                _finish(item, sent=False)

    def cancel_opens(self) -> None:
        """Stop the opens in progress (the module is gone or the node stops): each ends
        with NodeShutdown instead of holding a task until its own timeout."""
        for scope in self._opening:
            scope.cancel()

    async def drained(self) -> None:
        """Return once the module's messages that arrived so far are dispatched (bounded)."""
        for _ in range(50):
            if self.closed:
                return
            try:
                if not _queued(self.sock.fileno(), termios.FIONREAD):
                    return
            except OSError:
                return
            await trio.lowlevel.checkpoint()

    # -- inbound ----------------------------------------------------------------------

    async def deliver(self, reg: Registration, net_stream: INetStream, slot: StreamSlot) -> None:
        """Give an inbound stream to the module (trio, from the libp2p handler)."""
        bridge = SocketBridge(net_stream, "inbound", self.session, self.node.loops, self.node.limits, slot, self)
        if await self.node.adopt_inbound(self.session, bridge):
            self._hand_over(bridge, announce=True, inbound={"registration": reg.id, "info": bridge.info.to_capnp()})

    def _hand_over(self, bridge: SocketBridge, announce: bool = False, **header: Any) -> None:
        """Send the module its stream's socket with the message ``header``, then start the stream."""
        try:
            theirs = bridge.make_socket()
        except LimitExceeded as exc:  # counted and logged where it was refused
            bridge.abandon(Cause.LIMIT_EXCEEDED, str(exc), linger=False)
            return
        queued = self.send(
            _message(**header),
            theirs,
            after=lambda _sent: bridge.module_end_gone(theirs),
            stream=bridge.info.id,
            announce=announce,
        )
        if not queued:
            bridge.module_end_gone(theirs)
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
            with rpc.ChannelMessage.from_bytes(data, traversal_limit_in_words=MAX_DATAGRAM // 8) as msg:
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
            grant = self.node.begin_open(self.session)  # LimitExceeded: too many opens in progress
        except LogosP2PError as exc:
            self._bad("a refused open (%s)", exc)
            self.send(_message(openFailed={"request": request, "error": error_to_marker(exc)}))
            return
        self.opens += 1
        self.node.loops.spawn_trio(partial(self._open, grant, request, *args))

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
                bridge = await self._open_bridge(peer, protocols, addrs, timeout_ms)
            except LogosP2PError as exc:
                self.send(_message(openFailed={"request": request, "error": error_to_marker(exc)}))
                return
            self._hand_over(bridge, opened={"request": request, "info": bridge.info.to_capnp()})
        finally:
            grant.release()
            self.opens -= 1

    async def _open_bridge(self, peer: str, protocols: list[str], addrs: list[str], timeout_ms: int) -> SocketBridge:
        from ._rpc import timeout_from_ms

        if self.node.shutting_down or self.closed:
            raise NodeShutdown()
        ids = self.node.check_open(peer, protocols, addrs)
        timeout = timeout_from_ms(timeout_ms, self.node.config.open_timeout)
        slot = self.node.outbound_slot(self.session, peer)
        scope = trio.CancelScope()
        self._opening.add(scope)
        try:
            with scope:
                net_stream = await _libp2p.open_stream(self.node.host, peer, ids, addrs, timeout)
        except BaseException:
            slot.release()
            raise
        finally:
            self._opening.discard(scope)
        if scope.cancelled_caught:
            slot.release()
            raise NodeShutdown("the module's data channel closed" if self.closed else "the node is shutting down")
        if self.closed or self.node.shutting_down:
            slot.release()
            await _libp2p.reset(net_stream)
            raise NodeShutdown("the module's data channel closed")
        bridge = await self.node.bind_outbound(slot, net_stream, self.session, self)
        return bridge  # type: ignore[return-value]


def _finish(item: _Outgoing, sent: bool) -> None:
    after, item.after = item.after, None
    if after is not None:
        after(sent)


class ChannelListener:
    """The ``SOCK_SEQPACKET`` listener for data channels; tokens come from ``Node.dataChannel``."""

    def __init__(self, node: NodeService, sock: socket.socket, path: str) -> None:
        self.node = node
        self.listener = trio.socket.from_stdlib_socket(sock)
        self.path = path
        self._tokens: dict[bytes, ModuleSession] = {}

    def offer(self, session: ModuleSession) -> bytes:
        if session.channel is not None or any(s is session for s in self._tokens.values()):
            raise InvalidArgument("this connection already has a data channel")
        token = secrets.token_bytes(32)
        self._tokens[token] = session
        return token

    def forget(self, session: ModuleSession) -> None:
        for token, s in list(self._tokens.items()):
            if s is session:
                del self._tokens[token]

    async def serve(self, spawn: Callable[[Callable[[], Any]], None]) -> None:
        rm = self.node.rm
        while True:
            try:
                conn, _ = await self.listener.accept()
            except (OSError, trio.ClosedResourceError) as exc:
                if self.node.shutting_down or self.listener.fileno() == -1:
                    return
                rm.refused(rm.system, FDS, f"for a data channel: {exc}")
                await trio.sleep(0.1)
                continue
            grant = rm.try_grant(FDS)
            if grant is None:
                conn.close()
                continue
            spawn(partial(self._hello, conn, grant))

    async def _hello(self, conn: Any, grant: Grant) -> None:
        try:
            await self._hello_and_serve(conn)
        finally:
            grant.release()

    async def _hello_and_serve(self, conn: Any) -> None:
        session = None
        with trio.move_on_after(HELLO_TIMEOUT):
            with contextlib.suppress(OSError, trio.ClosedResourceError):
                data = await conn.recv(1024)
                with (
                    contextlib.suppress(Exception),
                    rpc.ChannelMessage.from_bytes(data, traversal_limit_in_words=128) as msg,
                ):
                    if msg.which() == "hello":
                        session = self._tokens.pop(bytes(msg.hello), None)
        if session is None or session.closed:
            conn.close()
            return
        raw = socket.socket(fileno=conn.detach())
        raw.setblocking(False)
        channel = DataChannel(self.node, session, raw)
        session.channel = channel
        log.info("module %s: data channel open", session.id)
        await channel.serve()
        log.info("module %s: data channel closed", session.id)
        self.node.end_session(session)

    def close(self) -> None:
        self.listener.close()
