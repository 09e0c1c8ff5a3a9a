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
import fcntl
import logging
import secrets
import socket
import struct
import termios
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
import trio.lowlevel

from .. import _schema
from .._state import WRITABLE, Event, State
from .._wire import error_to_marker
from ..errors import Cause, InvalidArgument, LogosP2PError, NodeShutdown, StreamReset
from . import _libp2p
from ._bridge import _MODULE_KNOWS, Bridge, Limits, Owner
from ._handoff import Loops

if TYPE_CHECKING:
    from libp2p.abc import INetStream

    from ._node import NodeService
    from ._registry import ModuleSession, Registration

log = logging.getLogger("logos_p2p.node")
rpc = _schema.load()

MAX_DATA = 65536  # payload bytes in one 'D' frame
DATA, EOF, CLOSE = b"D", b"E", b"C"
HELLO_TIMEOUT = 10.0
MAX_CHANNEL_MESSAGE = 64 * 1024
TELL_TIMEOUT = 1.0  # a module that does not read its channel loses the news
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
        channel: DataChannel,
    ) -> None:
        super().__init__(net_stream, direction, owner, loops, limits)
        self.channel = channel
        self.sock: socket.socket | None = None  # the node's end
        self.module_closed = False  # 'C' arrived
        self._closing_socket = False

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
        """Create the stream's socket pair; return the module's end (the caller sends and closes it)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self.sock = ours
        return theirs

    def start(self) -> None:
        log.debug("%r: opened with %s (socket)", self, self.info.remote_peer_id)
        self.loops.spawn_trio(self._to_module)
        self.loops.spawn_trio(self._from_module)

    def attach_sink(self, sink: Any) -> None:  # pragma: no cover - not for socket streams
        raise InvalidArgument("a socket stream has no sink")

    # -- peer -> module ----------------------------------------------------------------

    async def _send(self, *parts: bytes) -> bool:
        try:
            await send_raw(self.sock, list(parts))
        except (OSError, trio.ClosedResourceError):
            return False  # the module closed its end; _from_module decides what that means
        return True

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
                    if delivering and self.state.state is not State.CLOSED:
                        await self._send(EOF)
                    self.eof_delivered = True
                    self._remote_eof()
                    return
                self.bytes_in += len(data)
                self.owner.account(self, bytes_in=len(data))
                if delivering and self.state.state is not State.CLOSED:
                    delivering = await self._send(DATA, data)
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
                    msg = await recv_raw(self.sock, MAX_DATA + 1)
                except (OSError, trio.ClosedResourceError):
                    msg = b""
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
                    try:
                        await _libp2p.write(self.net, memoryview(msg)[1:])
                    except StreamReset as exc:
                        self.reset(exc.cause, str(exc), from_wire=True)
                        return
                    finally:
                        self.tx_bytes = 0
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
        await self.channel.tell(_message(flushed=self.info.id))
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
        """Close the node's end, after telling the channel ``before`` (a reset) if given."""
        if self._closing_socket or self.sock is None:
            return
        self._closing_socket = True
        sock = self.sock

        async def close() -> None:
            if before is not None:
                await self.channel.tell(before)
            close_raw(sock)

        self.loops.spawn_trio(close)


# Raw non-blocking socket calls. trio's socket methods take two scheduler
# checkpoints per call even when the call succeeds at once; on the byte path
# that was the largest cost the node added. These wait only when they must.


async def send_raw(sock: socket.socket | None, parts: list[bytes], ancillary: Any = ()) -> None:
    if sock is None:
        raise trio.ClosedResourceError
    while True:
        try:
            sock.sendmsg(parts, ancillary)
            return
        except (BlockingIOError, InterruptedError):
            await trio.lowlevel.wait_writable(sock.fileno())


async def recv_raw(sock: socket.socket | None, size: int) -> bytes:
    if sock is None:
        raise trio.ClosedResourceError
    while True:
        try:
            return sock.recv(size)
        except (BlockingIOError, InterruptedError):
            await trio.lowlevel.wait_readable(sock.fileno())


def close_raw(sock: socket.socket) -> None:
    """Close ``sock``, waking its waiters (they raise ClosedResourceError)."""
    if sock.fileno() != -1:
        trio.lowlevel.notify_closing(sock.fileno())
    sock.close()


def _queued(fd: int, request: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0])


_message = _schema.channel_message


class DataChannel:
    """One module's data channel (node side)."""

    def __init__(self, node: NodeService, session: ModuleSession, sock: socket.socket) -> None:
        self.node = node
        self.session = session
        self.sock = sock
        self.closed = False
        self._send_lock = trio.Lock()
        self._opening: set[trio.CancelScope] = set()  # opens in progress, for cancel_opens

    async def tell(self, message: bytes, fd: socket.socket | None = None) -> bool:
        """Send one message (with a socket attached); False if the channel is gone."""
        if self.closed:
            return False
        ancillary = []
        if fd is not None:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd.fileno()]))]
        if not self._send_lock.locked():  # nobody waits to send: try at once, no checkpoint
            try:
                self.sock.sendmsg([message], ancillary)
                return True
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                log.debug("module %s: channel send failed: %s", self.session.id, exc)
                return False
        with trio.move_on_after(TELL_TIMEOUT) as scope:
            async with self._send_lock:
                try:
                    await send_raw(self.sock, [message], ancillary)
                except (OSError, trio.ClosedResourceError) as exc:
                    log.debug("module %s: channel send failed: %s", self.session.id, exc)
                    return False
                return True
        if scope.cancelled_caught:
            log.warning("module %s does not read its data channel; closing it", self.session.id)
            self.close()
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.cancel_opens()
            close_raw(self.sock)

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

    async def deliver(self, reg: Registration, net_stream: INetStream) -> None:
        """Give an inbound stream to the module (trio, from the libp2p handler)."""
        bridge = SocketBridge(net_stream, "inbound", self.session, self.node.loops, self.node.limits, self)
        if await self.node.adopt_inbound(self.session, bridge):
            await self._hand_over(bridge, inbound={"registration": reg.id, "info": bridge.info.to_capnp()})

    async def _hand_over(self, bridge: SocketBridge, **header: Any) -> None:
        """Send the module its stream's socket with the message ``header``, then start the stream."""
        theirs = bridge.make_socket()
        try:
            sent = await self.tell(_message(**header), theirs)
        finally:
            theirs.close()
        if not sent:
            bridge.abandon(Cause.MODULE_GONE, "the module's data channel is closed", linger=False)
            return
        bridge.start()

    # -- from the module ------------------------------------------------------------------

    async def serve(self) -> None:
        """Read the module's messages until the channel closes (trio)."""
        try:
            while True:
                try:
                    data = await recv_raw(self.sock, MAX_CHANNEL_MESSAGE)
                except (OSError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                try:
                    self._dispatch(data)
                except Exception as exc:  # a malformed message: this module speaks nonsense
                    log.warning("module %s: bad data channel message (%s); closing it", self.session.id, exc)
                    return
        finally:
            self.close()

    def _dispatch(self, data: bytes) -> None:
        with rpc.ChannelMessage.from_bytes(data, traversal_limit_in_words=MAX_CHANNEL_MESSAGE // 8) as msg:
            which = msg.which()
            if which == "open":
                o = msg.open
                self.node._offers += 1
                request = (o.request, o.peerId, list(o.protocols), list(o.addrs), o.timeoutMs)
                self.node.loops.spawn_trio(lambda: self._open(*request))
            elif which == "reset":
                stream_id, cause_name = msg.reset.stream, str(msg.reset.cause)
                bridge = self.session.bridges.get(stream_id)
                if bridge is not None:
                    if cause_name == "capabilityDropped":
                        bridge.reset(Cause.CAPABILITY_DROPPED, "the module dropped the stream without closing it")
                    else:
                        bridge.reset(Cause.LOCAL_RESET, "reset by the module")
            else:
                raise ValueError(f"unexpected {which!r}")

    async def _open(self, request: int, peer: str, protocols: list[str], addrs: list[str], timeout_ms: int) -> None:
        try:
            try:
                bridge = await self._open_bridge(peer, protocols, addrs, timeout_ms)
            except LogosP2PError as exc:
                await self.tell(_message(openFailed={"request": request, "error": error_to_marker(exc)}))
                return
            await self._hand_over(bridge, opened={"request": request, "info": bridge.info.to_capnp()})
        finally:
            self.node._offers -= 1

    async def _open_bridge(self, peer: str, protocols: list[str], addrs: list[str], timeout_ms: int) -> SocketBridge:
        from ._rpc import timeout_from_ms

        if self.node.shutting_down or self.closed:
            raise NodeShutdown()
        ids = self.node.check_open(protocols, addrs)
        timeout = timeout_from_ms(timeout_ms, self.node.config.open_timeout)
        scope = trio.CancelScope()
        self._opening.add(scope)
        try:
            with scope:
                net_stream = await _libp2p.open_stream(self.node.host, peer, ids, addrs, timeout)
        finally:
            self._opening.discard(scope)
        if scope.cancelled_caught:
            raise NodeShutdown("the module's data channel closed" if self.closed else "the node is shutting down")
        bridge = SocketBridge(net_stream, "outbound", self.session, self.node.loops, self.node.limits, self)
        if self.closed or self.node.shutting_down:
            await _libp2p.reset(net_stream)
            raise NodeShutdown("the module's data channel closed")
        await self.node.adopt(self.session, bridge)
        return bridge


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
        while True:
            try:
                conn, _ = await self.listener.accept()
            except (OSError, trio.ClosedResourceError):
                if self.node.shutting_down or self.listener.fileno() == -1:
                    return
                log.warning("accepting a data channel failed")
                await trio.sleep(0.1)
                continue
            spawn(partial(self._hello, conn))

    async def _hello(self, conn: Any) -> None:
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
