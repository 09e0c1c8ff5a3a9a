"""The node's one boundary to py-libp2p 0.8.1: host, identity, stream I/O, errors.

Everything else in the node talks to libp2p through this module, and every
libp2p, muxer or socket error is translated here into the logos-p2p family.

py-libp2p 0.8.1 gaps closed here (each one small and documented):

1. **A remote reset reads as end of stream.** yamux removes a reset stream
   from its table before the waiting reader wakes, so the pending ``read``
   raises ``StreamEOF``; but it records ``reset_received`` first, so
   :func:`end_cause` reads the truth after every ``StreamEOF`` (and the
   connection's ``event_shutting_down`` for a lost connection). mplex's
   ``_handle_reset`` closes the stream's message channel -- waking the
   reader -- *before* it sets ``event_reset``, so the reader cannot know;
   :func:`install_fixes` wraps it to set ``event_reset`` first (seen with
   js-libp2p's ``abort()`` over mplex: half the resets read as a clean end).
   When in doubt :func:`end_cause` reports a lost connection rather than a
   clean end: mistaking a truncated stream for a complete one would lose
   bytes silently.
2. **mplex is not full duplex.** ``MplexStream.read`` holds the stream's
   ``ReadWriteLock`` read side while it waits for data, so a ``write`` on the
   same stream waits for the next inbound message; a peer that reads and
   writes at once can hang. Reads and writes of an mplex stream touch no
   common state (the read side owns ``_buf`` and the inbound channel, the
   write side only sends frames), so :func:`install_fixes` gives each stream
   two independent locks: reads exclude reads, writes exclude writes.
3. **yamux writes give up after 5 s of zero send window.** ``YamuxStream.write``
   polls for a window update and raises ``MuxedStreamError`` after 5 s, which
   reads as a reset: a peer that pauses reading would break the stream.
   :func:`write` never hands yamux more than the current send window, so its
   timeout path is never taken; a slow reader only slows the writer.
4. **A stream dropped from yamux's table leaves its reader waiting forever.**
   ``Yamux._finalize_stream_locked`` (after a local reset, a reset or FIN
   from the peer, or a read that drained a closed stream) and the stale-stream
   sweeper drop the stream's wake-up event without setting it, so a reader
   already waiting on it never returns. Setting the event we saw before a
   reset was not enough: a reader woken by data between the two renews the
   event, waits on the new one, and the reset drops that (seen under a byte
   flood: streams refused for memory kept their pump tasks after the
   connection died). :func:`install_fixes` makes both set the events they
   drop; the reader then sees the stream gone. (Cancelling the reader instead
   is not safe: py-libp2p reads and writes are not cancel-safe, see
   ``_bridge``.)

5. **A cancelled write breaks the whole connection.** Noise numbers each
   message: ``write_msg`` encrypts (using up a nonce) and then awaits the
   socket write. Cancel a task there -- an open that times out, a nursery
   that ends because a read failed, a stream task stopped -- and the message
   is never sent or only partly sent, so the next one cannot be decrypted:
   the remote side fails "authentication of message" and drops the
   connection with every stream on it. Seen in the 10,000-stream soak as the
   peer's connection dying right after a module kill (its sender had been
   cancelled mid-write). :func:`install_fixes` shields each secure-channel
   write from cancellation, bounded by :data:`WRITE_STALL`: a write stuck
   that long closes the connection, which is broken for the remote anyway.

6. **Window updates for a stream the peer has finished.** A yamux read gives
   the peer its window back (``send_window_update``) even when the peer's
   FIN or RST has already arrived: the bytes it reads were sent before the
   FIN, and no more can come. Such a frame names a stream the peer may have
   forgotten: nim-libp2p before v1.13 answers "Unknown stream ID" with
   GoAway(ProtocolError) and drops the connection with every stream on it
   (seen in request/response use: the module half-closes, nim replies and
   sends FIN, the node reads the reply). :func:`install_fixes` makes
   ``send_window_update`` send nothing once the stream's receive side is
   closed or reset; :func:`credit` goes through it too.

7. **An mplex write goes on after a reset.** ``MplexStream.write`` cuts a
   write into 4076-byte frames and sends them all, checking for a reset only
   before the first: a 256 KiB write the peer reset half-way still sends
   dozens of frames for a stream the peer has dropped. :func:`write` hands
   mplex one frame at a time and stops at the reset.

Upstream: 1, 2, 4, 5, 6 and 7 are py-libp2p bugs worth reporting with these
descriptions; 3 is by design there ("yamux has no deadlines").
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import ipaddress
import logging
import math
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.identity_utils import load_identity, save_identity
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.exceptions import SwarmException
from libp2p.network.stream.exceptions import StreamClosed as Libp2pStreamClosed
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.network.stream.exceptions import StreamError as Libp2pStreamError
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable, MuxedStreamError
from libp2p.stream_muxer.mplex.constants import CHUNK_SIZE as MPLEX_CHUNK
from libp2p.stream_muxer.mplex.mplex import Mplex
from libp2p.stream_muxer.mplex.mplex_stream import MplexStream
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE as YAMUX_HEADER_SIZE
from libp2p.stream_muxer.yamux.yamux import MAX_MESSAGE_SIZE as YAMUX_MAX_MESSAGE
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from ..errors import (
    Cause,
    InvalidArgument,
    LimitExceeded,
    LogosP2PError,
    NegotiationFailed,
    PeerUnreachable,
    ProtocolNotSupported,
    StreamReset,
    Timeout,
    reset_error,
)
from . import _resources as res

log = logging.getLogger("logos_p2p.node")

# py-libp2p's NetStream; its INetStream ABC lacks muxed_stream/close_write, which we use.
INetStream = Any

# Remote I/O errors that mean "this stream is gone".
_STREAM_GONE = (
    Libp2pStreamError,
    MuxedStreamError,
    MuxedConnUnavailable,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


# -- fix 2: full-duplex mplex --------------------------------------------------------


class _DuplexLock:
    """Stands in for ``ReadWriteLock`` on mplex streams: independent locks."""

    __slots__ = ("_read", "_write")

    def __init__(self) -> None:
        self._read = trio.Lock()
        self._write = trio.Lock()

    def read_lock(self) -> trio.Lock:
        return self._read

    def write_lock(self) -> trio.Lock:
        return self._write


_fixes_installed = False


def install_fixes() -> None:
    """Patch mplex: reads do not block writes, and a reset is marked before the
    reader wakes (see the module docstring)."""
    global _fixes_installed
    if _fixes_installed:
        return
    original_init = MplexStream.__init__

    def init(self: MplexStream, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.rw_lock = _DuplexLock()  # type: ignore[assignment]

    original_handle_reset = Mplex._handle_reset

    async def handle_reset(self: Mplex, stream_id: Any) -> None:
        stream = self.streams.get(stream_id) if self.streams is not None else None
        if stream is not None and not stream.event_remote_closed.is_set():
            stream.event_reset.set()  # before the original wakes the reader
        await original_handle_reset(self, stream_id)

    MplexStream.__init__ = init  # type: ignore[method-assign]
    Mplex._handle_reset = handle_reset  # type: ignore[method-assign]
    SecureSession.write = _whole_write(SecureSession.write)  # type: ignore[method-assign]
    YamuxStream.send_window_update = _while_receiving(YamuxStream.send_window_update)  # type: ignore[method-assign]
    Yamux._finalize_stream_locked = _waking_its_reader(Yamux._finalize_stream_locked)  # type: ignore[method-assign]
    Yamux._sweep_stale_streams = _waking_dropped_readers(Yamux._sweep_stale_streams)  # type: ignore[method-assign]
    _install_gate_hooks()
    _fixes_installed = True


WRITE_STALL = 30.0  # seconds a shielded secure-channel write may take before the connection is closed


def _whole_write(original: Any) -> Any:
    """Fix 5: a secure-channel message is written whole or the connection is closed."""

    @functools.wraps(original)
    async def write(self: SecureSession, data: bytes) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(WRITE_STALL) as stall:
                await original(self, data)
            if stall.cancelled_caught:
                with contextlib.suppress(Exception):
                    await self.close()
                raise OSError(f"a secure-channel write stalled for {WRITE_STALL:g}s; connection closed")
        await trio.lowlevel.checkpoint_if_cancelled()

    return write


def _waking_its_reader(original: Any) -> Any:
    """Fix 4: finalizing a stream that leaves yamux's table wakes its reader."""

    @functools.wraps(original)
    def finalize(self: Yamux, stream: YamuxStream, *args: Any, **kwargs: Any) -> Any:
        event = self.stream_events.get(stream.stream_id)
        result = original(self, stream, *args, **kwargs)
        if event is not None and stream.stream_id not in self.stream_events:
            event.set()
        return result

    return finalize


def _waking_dropped_readers(original: Any) -> Any:
    """Fix 4: the sweeper's dropping streams from a yamux connection's table wakes their readers."""

    @functools.wraps(original)
    def drop(self: Yamux, *args: Any, **kwargs: Any) -> Any:
        events = dict(self.stream_events)
        result = original(self, *args, **kwargs)
        for sid, event in events.items():
            if sid not in self.stream_events:
                event.set()
        return result

    return drop


def _while_receiving(original: Any) -> Any:
    """Fix 6: no window update once the peer's FIN or RST arrived (or the stream is gone)."""

    @functools.wraps(original)
    async def send_window_update(self: YamuxStream, increment: int, skip_lock: bool = False) -> None:
        if self.recv_closed or self.reset_received or self.closed:
            return
        await original(self, increment, skip_lock)

    return send_window_update


# -- the node's admission, inside py-libp2p ------------------------------------------------
#
# py-libp2p takes resources where the node cannot see them: it accepts and
# upgrades connections, accepts streams and negotiates their protocol, and its
# yamux buffers whatever a peer sends within the windows it granted. A Gate,
# installed on the node's host only (not on the test peers of the same
# process), has the node's resource manager decide at each of those points:
#
# * a connection is charged a descriptor and a place in the transient and
#   source scopes while it upgrades, then in its peer's scope until it closes;
# * an inbound stream is charged before its protocol is negotiated (a
#   StreamSlot, in the transient scope until the node's handler binds it to a
#   protocol and a module), and an exception in a protocol handler resets that
#   stream instead of ending the connection's (or the swarm's) nursery;
# * a yamux stream's receive window is capped at the limits' stream_window,
#   the bytes in its buffer are charged to the peer's memory as they arrive
#   and released as they are read, and a frame beyond the window the peer was
#   given (a protocol violation) or beyond the peer's share of the memory is
#   dropped and the stream reset.


class Refused(SwarmException):
    """A connection the resource manager refused (py-libp2p's own exception type, so the
    swarm treats it as a failed upgrade); ``error`` is the LimitExceeded."""

    def __init__(self, error: LimitExceeded) -> None:
        super().__init__(str(error))
        self.error = error


class Gate:
    """The node's resource manager as py-libp2p's hooks see it (see the comment above)."""

    def __init__(self, rm: res.ResourceManager, spawn: Any, reader_bound: int = 0) -> None:
        self.rm = rm
        self.spawn = spawn  # spawn(async_fn): run a trio task in the node's nursery
        self.reader_bound = reader_bound  # most a stream's reader (the bridge) holds beyond the muxer
        self.window = rm.limits.stream_window
        self.swarm: Any = None  # the swarm it gates (install_gate)
        self.handler_failures = 0
        self._last_failure_log = -math.inf

    def handler_failed(self, net_peer: str, exc: BaseException) -> None:
        """A protocol handler raised: that stream is reset; log at most once per 10 s."""
        self.handler_failures += 1
        now = trio.current_time()
        if now - self._last_failure_log >= res.LOG_INTERVAL:
            self._last_failure_log = now
            log.warning(
                "a stream from %s failed in its handler (%d so far), reset: %s: %s",
                net_peer,
                self.handler_failures,
                type(exc).__name__,
                exc,
            )


def install_gate(host: IHost, gate: Gate) -> None:
    """Have ``gate`` decide admission on ``host`` (see the comment above)."""
    install_fixes()
    gate.swarm = host.get_network()
    gate.swarm._logos_gate = gate


def _gate_of(swarm: Any) -> Gate | None:
    return getattr(swarm, "_logos_gate", None)


class _Books:
    """What one gated connection holds: its grants, and its muxer's buffered bytes."""

    __slots__ = ("gate", "grants", "memory", "peer")

    def __init__(self, gate: Gate, grants: list[res.Grant], memory: res.MemoryAccount, peer: str) -> None:
        self.gate = gate
        self.grants = grants
        self.memory = memory
        self.peer = peer

    def close(self) -> None:
        for grant in self.grants:
            grant.release()
        self.memory.close()


def _books(conn: Any) -> _Books | None:
    return getattr(conn, "_logos_books", None)


def _endpoint_ip(conn: Any) -> str:
    try:
        endpoint = conn.get_remote_address()
    except Exception:
        endpoint = None
    return str(endpoint[0]) if endpoint else "unknown"


def _release_all(grants: list[res.Grant]) -> None:
    for grant in grants:
        grant.release()


def _adopt_connection(gate: Gate, muxed: Any, grants: list[res.Grant]) -> None:
    """Book a connection until it closes: its grants, its muxer's memory (before it starts)."""
    peer = str(muxed.peer_id)
    books = _Books(gate, grants, gate.rm.memory_account(gate.rm.peer(peer)), peer)
    muxed._logos_books = books
    if isinstance(muxed, Yamux):  # not started yet: no frame has been read
        muxed.stream_buffers = _Buffers(muxed, books, gate)

    async def release_when_closed() -> None:
        try:
            await muxed.event_closed.wait()
        finally:
            books.close()

    gate.spawn(release_when_closed)


class _Upgrade:
    """The grants of the connection this task is upgrading, until ``add_conn`` adopts them."""

    __slots__ = ("adopted", "grants", "source")

    def __init__(self, grants: list[res.Grant], source: res.Scope | None) -> None:
        self.grants = grants
        self.source = source  # inbound: the source scope it is charged to while upgrading
        self.adopted = False


_upgrading: contextvars.ContextVar[_Upgrade | None] = contextvars.ContextVar("logos_p2p_upgrading", default=None)


def _gated_upgrade(original: Any, direction: str) -> Any:
    """Charge a descriptor and a connection before py-libp2p upgrades a raw connection."""

    @functools.wraps(original)
    async def upgrade(self: Swarm, raw_conn: Any, *args: Any, **kwargs: Any) -> Any:
        gate = _gate_of(self)
        if gate is None:
            return await original(self, raw_conn, *args, **kwargs)
        rm = gate.rm
        grants: list[res.Grant] = []
        source = None
        try:
            grants.append(rm.grant(res.FDS))
            if direction == "inbound":
                source = rm.source(_endpoint_ip(raw_conn))
                grants.append(rm.grant(res.CONNS_IN, rm.transient, source))
            else:
                grants.append(rm.grant(res.CONNS_OUT, rm.peer(str(args[0]))))
        except LimitExceeded as exc:
            _release_all(grants)
            with contextlib.suppress(Exception):
                await raw_conn.close()
            raise Refused(exc) from None
        upgrading = _Upgrade(grants, source)
        token = _upgrading.set(upgrading)
        try:
            return await original(self, raw_conn, *args, **kwargs)
        finally:
            _upgrading.reset(token)
            if not upgrading.adopted:
                _release_all(grants)

    return upgrade


def _gated_add_conn(original: Any) -> Any:
    """Admit an upgraded connection into its peer's scope, and book it, before it starts."""

    @functools.wraps(original)
    async def add_conn(self: Swarm, muxed_conn: Any, *args: Any, **kwargs: Any) -> Any:
        gate = _gate_of(self)
        upgrading = _upgrading.get()
        if gate is None or upgrading is None or upgrading.adopted:
            return await original(self, muxed_conn, *args, **kwargs)
        rm = gate.rm
        try:
            if upgrading.source is not None:  # inbound: now we know who it is
                upgrading.grants[1].move(drop=[rm.transient, upgrading.source], add=[rm.peer(str(muxed_conn.peer_id))])
        except LimitExceeded as exc:
            with contextlib.suppress(Exception):
                await muxed_conn.close()
            raise Refused(exc) from None
        upgrading.adopted = True
        _adopt_connection(gate, muxed_conn, upgrading.grants)
        return await original(self, muxed_conn, *args, **kwargs)

    return add_conn


def _gated_stream_handler(original: Any) -> Any:
    """Admit an inbound stream before py-libp2p negotiates it; contain its handler's errors."""

    @functools.wraps(original)
    async def handle(self: SwarmConn, muxed_stream: Any) -> None:
        gate = _gate_of(self.swarm)
        if gate is None:
            await original(self, muxed_stream)
            return
        peer = str(self.muxed_conn.peer_id)
        try:
            slot = gate.rm.stream("inbound", peer)
        except LimitExceeded:
            with contextlib.suppress(Exception):
                await muxed_stream.reset()
            _wake_reader(muxed_stream)
            return
        muxed_stream._logos_slot = slot
        try:
            await original(self, muxed_stream)
        except Exception as exc:
            gate.handler_failed(peer, exc)
            with contextlib.suppress(Exception):
                await muxed_stream.reset()
            _wake_reader(muxed_stream)
        finally:
            slot.negotiated()
            if slot.account is None:  # no module took it: nothing will hold it any more
                slot.release()

    return handle


def stream_slot(net_stream: INetStream) -> res.StreamSlot | None:
    """The slot the gate gave an inbound stream (None on an ungated host)."""
    return getattr(net_stream.muxed_stream, "_logos_slot", None)


def _refuse(gate: Gate, muxed: YamuxStream, cause: Cause, message: str) -> None:
    """Drop what a peer sent on ``muxed`` and reset the stream (from sync code)."""
    if getattr(muxed, "_logos_refused", None) is not None:
        return
    muxed._logos_refused = (cause, message)  # type: ignore[attr-defined]

    async def reset_it() -> None:
        await reset_muxed(muxed)

    gate.spawn(reset_it)


def refusal(net_stream: INetStream) -> tuple[Cause, str] | None:
    """Why the gate reset this stream, if it did."""
    return getattr(net_stream.muxed_stream, "_logos_refused", None)


class _Buffer(bytearray):
    """One yamux stream's receive buffer, whose bytes are charged to the peer's memory."""

    __slots__ = ("books", "conn", "gate", "sid")

    def __init__(self, conn: Yamux, sid: int, books: _Books, gate: Gate) -> None:
        super().__init__()
        self.conn = conn
        self.sid = sid
        self.books = books
        self.gate = gate

    def extend(self, data: Any) -> None:  # yamux's handle_incoming: before it lowers recv_window
        n = len(data)
        stream = self.conn.streams.get(self.sid)
        if stream is None or getattr(stream, "_logos_refused", None) is not None:
            return
        if n > stream.recv_window:
            _refuse(
                self.gate,
                stream,
                Cause.PROTOCOL_ERROR,
                f"the peer sent {n} bytes into a receive window of {stream.recv_window}",
            )
            return
        if not self.books.memory.reserve(n):
            _refuse(self.gate, stream, Cause.LIMIT_EXCEEDED, f"the peer {self.books.peer} holds its share of memory")
            return
        super().extend(data)

    def __delitem__(self, key: Any) -> None:
        before = len(self)
        super().__delitem__(key)
        self.books.memory.release(before - len(self))

    def clear(self) -> None:
        self.books.memory.release(len(self))
        super().clear()


class _Buffers(dict[int, bytearray]):
    """A yamux connection's buffer table: every buffer a :class:`_Buffer`, released when dropped."""

    def __init__(self, conn: Yamux, books: _Books, gate: Gate) -> None:
        super().__init__()
        self.conn = conn
        self.books = books
        self.gate = gate

    def __setitem__(self, sid: int, value: bytearray) -> None:
        buffer = _Buffer(self.conn, sid, self.books, self.gate)
        if value:
            buffer.extend(value)
        old = self.get(sid)
        if old is not None:
            old.clear()
        super().__setitem__(sid, buffer)

    def __delitem__(self, sid: int) -> None:
        self.pop(sid, None)

    def pop(self, sid: int, *default: Any) -> Any:
        buffer = super().pop(sid, *default)
        if buffer:
            self.books.memory.release(len(buffer))
        return buffer

    def clear(self) -> None:
        for buffer in self.values():
            self.books.memory.release(len(buffer))
        super().clear()


def _capped_autotune(original: Any) -> Any:
    """On a gated connection, a stream's receive window grows (yamux doubles it while the
    reader keeps up) no further than stream_window, and only while the peer's share of
    memory and the node's have room for the bigger window (as go-yamux asks its memory
    manager): a stream that reads fast gets a wide window, a flood gets none.

    Room means room for every window the connection's streams were granted and have
    not filled yet, besides what is buffered: a peer that sends no more than its windows
    allow is never reset for lack of memory the node promised it."""

    @functools.wraps(original)
    def apply(self: YamuxStream, buffered: int) -> int:
        books = _books(self.conn)
        if books is not None:
            growth = self.target_recv_window  # doubling adds as much again
            if self.target_recv_window + growth > books.gate.window or not _room_to_grow(self.conn, books, growth):
                self.epoch_start = trio.current_time()
                return 0
        result: int = original(self, buffered)
        return result

    return apply


def _promised(conn: Any, reader_bound: int) -> int:
    """Bytes a connection's streams may still send within the windows they were granted,
    and that their readers may take from the muxer and hold (which reopens the window)."""
    streams = getattr(conn, "streams", None)
    if not isinstance(streams, dict):
        return 0
    return sum(max(getattr(stream, "recv_window", 0), 0) + reader_bound for stream in list(streams.values()))


def _room_to_grow(conn: Yamux, books: _Books, growth: int) -> bool:
    """Whether each of the peer's memory scopes holds ``growth`` more besides what is used
    and promised: the node-wide scope against every gated connection's open windows and
    readers, the others against the peer's own (what is held counts twice: room is only
    ever underestimated)."""
    muxed = [c.muxed_conn for cs in books.gate.swarm.connections.values() for c in cs]
    gated = [(c, b) for c in muxed if (b := _books(c)) is not None]
    bound = books.gate.reader_bound
    mine = sum(_promised(c, bound) for c, b in gated if b.peer == books.peer)
    everyone = sum(_promised(c, bound) for c, _ in gated)
    for scope in books.memory.scopes:
        promised = everyone if scope.kind == "system" else mine
        if scope.mem_used + promised + growth > scope.mem_limit:
            return False
    return True


def _install_gate_hooks() -> None:
    Swarm.upgrade_inbound_raw_conn = _gated_upgrade(Swarm.upgrade_inbound_raw_conn, "inbound")  # type: ignore[method-assign]
    Swarm.upgrade_outbound_raw_conn = _gated_upgrade(Swarm.upgrade_outbound_raw_conn, "outbound")  # type: ignore[method-assign]
    Swarm.add_conn = _gated_add_conn(Swarm.add_conn)  # type: ignore[method-assign]
    SwarmConn._handle_muxed_stream = _gated_stream_handler(SwarmConn._handle_muxed_stream)  # type: ignore[method-assign]
    YamuxStream._apply_autotune_epoch = _capped_autotune(YamuxStream._apply_autotune_epoch)  # type: ignore[method-assign]


# -- fix 1: the truth behind StreamEOF --------------------------------------------------


def _conn_down(net_stream: INetStream) -> bool:
    conn = getattr(net_stream, "muxed_conn", None)
    event = getattr(conn, "event_shutting_down", None)
    return bool(event is not None and event.is_set())


def _reset_seen(net_stream: INetStream) -> bool:
    muxed = net_stream.muxed_stream
    if isinstance(muxed, YamuxStream):
        return muxed.reset_received
    if isinstance(muxed, MplexStream):
        return muxed.event_reset.is_set()
    return False


def end_cause(net_stream: INetStream) -> Cause | None:
    """After ``StreamEOF`` (or :func:`wait_ended`): None for a clean end, else why the stream died."""
    refused = refusal(net_stream)
    if refused is not None:
        return refused[0]
    if _conn_down(net_stream):
        return Cause.CONNECTION_LOST
    if _reset_seen(net_stream):
        return Cause.REMOTE_RESET
    return None


def _gone(net_stream: INetStream, exc: BaseException) -> StreamReset:
    refused = refusal(net_stream)
    if refused is not None:
        error = reset_error(*refused)
    else:
        cause = Cause.CONNECTION_LOST if _conn_down(net_stream) else Cause.REMOTE_RESET
        error = reset_error(cause, f"{cause.value}: {exc}" if str(exc) else "")
    error.__cause__ = exc
    return error


class _translate:
    """libp2p errors as logos-p2p errors. The node only writes before its own
    half-close, so a "closed" stream under a write was closed underneath it:
    mplex marks a stream the peer reset as closed. That is a reset.

    A class rather than a generator: it wraps every read and write of the byte
    path, where ``contextlib.contextmanager`` costs measurable CPU.
    """

    __slots__ = ("net_stream",)

    def __init__(self, net_stream: INetStream) -> None:
        self.net_stream = net_stream

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, LogosP2PError):
            return
        if isinstance(exc, (Libp2pStreamClosed, *_STREAM_GONE)):
            raise _gone(self.net_stream, exc) from exc


# -- stream I/O ----------------------------------------------------------------------------


async def read(net_stream: INetStream, max_bytes: int) -> bytes | None:
    """Up to ``max_bytes`` bytes; None at a clean end of stream.

    Raises :class:`StreamReset` (or :class:`ConnectionLost`) when the stream died.
    """
    with _translate(net_stream):
        try:
            data: bytes = await net_stream.read(max_bytes)
        except StreamEOF as exc:
            cause = end_cause(net_stream)
            if cause is None:
                return None
            raise reset_error(cause) from exc
    if not data:  # some muxers return b"" at the end
        cause = end_cause(net_stream)
        if cause is None:
            return None
        raise reset_error(cause)
    return data


_WINDOW_POLL = (0.001, 0.02)  # first and longest wait for a yamux window update


async def write(net_stream: INetStream, data: bytes | memoryview) -> None:
    """Write all of ``data``; blocks while the peer's receive window is full."""
    muxed = net_stream.muxed_stream
    with _translate(net_stream):
        if isinstance(muxed, MplexStream):
            view = memoryview(data).cast("B")
            for start in range(0, len(view), MPLEX_CHUNK):  # fix 7: frame by frame, up to a reset
                if muxed.event_reset.is_set():
                    raise _gone(net_stream, MuxedStreamError("stream reset while writing"))
                await net_stream.write(bytes(view[start : start + MPLEX_CHUNK]))
            return
        if not isinstance(muxed, YamuxStream):
            await net_stream.write(bytes(data))
            return
        view = memoryview(data).cast("B")  # yamux slices it and copies once into the frame
        delay = _WINDOW_POLL[0]
        while view:
            window = muxed.send_window
            if window <= 0:
                if muxed.closed or muxed.send_closed or _conn_down(net_stream):
                    raise _gone(net_stream, MuxedStreamError("stream closed while waiting for send window"))
                await trio.sleep(delay)
                delay = min(delay * 2, _WINDOW_POLL[1])
                continue
            delay = _WINDOW_POLL[0]
            chunk, view = view[:window], view[window:]
            await net_stream.write(chunk)  # type: ignore[arg-type]  # yamux takes any buffer


async def close_write(net_stream: INetStream) -> None:
    with _translate(net_stream):
        await net_stream.close_write()


async def reset(net_stream: INetStream) -> None:
    """Reset on the wire; never raises (the stream may be gone already).

    A pending ``read`` on the stream returns or raises afterwards (fix 4).
    """
    await reset_muxed(net_stream.muxed_stream, net_stream.reset)


async def reset_muxed(muxed: Any, reset_it: Any = None) -> None:
    """:func:`reset` for a muxed stream that has no NetStream (yet).

    What the peer sent and nobody read is dropped with it: yamux keeps a reset stream's
    buffer for a reader that will never come, until its sweeper runs a minute later.
    """
    waiting = _reader_event(muxed)
    with contextlib.suppress(Exception):
        await (reset_it or muxed.reset)()
    if waiting is not None:
        waiting.set()
    if isinstance(muxed, YamuxStream):
        buffer = muxed.conn.stream_buffers.get(muxed.stream_id)
        if buffer:
            buffer.clear()


def _reader_event(muxed: Any) -> trio.Event | None:
    if isinstance(muxed, YamuxStream):
        return muxed.conn.stream_events.get(muxed.stream_id)
    return None


def _wake_reader(muxed: Any) -> None:
    event = _reader_event(muxed)
    if event is not None:
        event.set()


async def release(net_stream: INetStream) -> None:
    """Drop a stream whose both directions ended; never raises."""
    with contextlib.suppress(Exception):
        await net_stream.close()


def muxer_buffered(net_stream: INetStream) -> int:
    """Bytes the muxer holds for this stream that nobody has read yet."""
    muxed = net_stream.muxed_stream
    if isinstance(muxed, YamuxStream):
        return len(muxed.conn.stream_buffers.get(muxed.stream_id) or b"")
    if isinstance(muxed, MplexStream):
        return len(muxed._buf)
    return 0


def take(net_stream: INetStream, max_bytes: int) -> bytes | None:
    """Up to ``max_bytes`` of what the muxer already holds for this stream, at
    once (no await); None when nothing can be taken this way (use :func:`read`).

    Unlike :func:`read` this does not give the peer its window back: the
    caller does that with :func:`credit` once the bytes are on their way. A
    yamux read sends its window update *before* it returns the data -- about
    80 us on this machine that the bytes would wait for nothing.
    """
    muxed = net_stream.muxed_stream
    if not isinstance(muxed, YamuxStream) or muxed.closed or muxed.reset_received:
        return None
    buffer = muxed.conn.stream_buffers.get(muxed.stream_id)
    if not buffer:
        return None
    if len(buffer) <= max_bytes:
        data = bytes(buffer)
        buffer.clear()
    else:
        data = bytes(memoryview(buffer)[:max_bytes])
        del buffer[:max_bytes]
    return data


async def credit(net_stream: INetStream, taken: int) -> None:
    """Give the peer back the window of ``taken`` bytes from :func:`take` (as yamux's read does);
    nothing once the peer has half-closed or reset (fix 6)."""
    muxed = net_stream.muxed_stream
    with _translate(net_stream):
        await muxed._auto_tune_and_send_window_update(bytes_read=taken)


# A py-libp2p yamux sender cuts every write into frames of at most this payload.
YAMUX_FULL_FRAME = YAMUX_MAX_MESSAGE - YAMUX_HEADER_SIZE


def mid_write(net_stream: INetStream) -> bool:
    """Whether the bytes the muxer holds for this stream end on a full yamux
    frame: the peer's write was cut there and its next frame is on the way."""
    held = muxer_buffered(net_stream)
    return held > 0 and held % YAMUX_FULL_FRAME == 0


async def wait_more(net_stream: INetStream, beyond: int = 0, seconds: float = math.inf) -> None:
    """Return once the muxer holds more than ``beyond`` unread bytes for this
    stream, the stream can no longer receive, or ``seconds`` passed.

    Takes nothing from the stream: a following :func:`read` gets it all (a
    read cannot be cancelled safely, see ``_bridge``; this wait can).
    """
    muxed = net_stream.muxed_stream
    if not isinstance(muxed, YamuxStream):
        return  # the read waits instead
    if seconds == math.inf:
        await _wait_more(muxed, beyond)
    else:
        with trio.move_on_after(seconds):
            await _wait_more(muxed, beyond)


async def _wait_more(muxed: YamuxStream, beyond: int) -> None:
    conn, sid = muxed.conn, muxed.stream_id
    while True:
        event, buffer = conn.stream_events.get(sid), conn.stream_buffers.get(sid)
        if event is None or buffer is None or len(buffer) > beyond:
            return
        if muxed.recv_closed or muxed.reset_received or muxed.closed or conn.event_shutting_down.is_set():
            return
        if event.is_set():  # an earlier wake-up, already seen: renew it, as yamux's read does
            event = conn.stream_events[sid] = trio.Event()
        await event.wait()


async def wait_ended(net_stream: INetStream) -> None:
    """Return once the stream was reset or its connection went down; never at a clean end.

    Takes nothing from the stream, and can be cancelled: a bridge whose buffers are
    full (its module does not read) waits for room *and* this, or nothing would tell
    it that the wire under it died.
    """
    muxed = net_stream.muxed_stream
    if isinstance(muxed, YamuxStream):
        conn, sid = muxed.conn, muxed.stream_id
        while not (muxed.reset_received or conn.event_shutting_down.is_set() or refusal(net_stream)):
            event = conn.stream_events.get(sid)
            if event is None:  # gone from the muxer's table
                if end_cause(net_stream) is not None:
                    return
                await trio.sleep_forever()
            if event.is_set():  # an earlier wake-up, already seen: renew it, as yamux's read does
                event = conn.stream_events[sid] = trio.Event()
            await event.wait()
    elif isinstance(muxed, MplexStream):
        await muxed.event_reset.wait()
    else:  # pragma: no cover - the node speaks yamux and mplex only
        await trio.sleep_forever()


def describe(net_stream: INetStream) -> str:
    """The muxer's view of a stream, for the state snapshot."""
    muxed = net_stream.muxed_stream
    conn = getattr(muxed, "muxed_conn", None) or getattr(muxed, "conn", None)
    down = "down" if _conn_down(net_stream) else "up"
    refused = refusal(net_stream)
    if isinstance(muxed, YamuxStream):
        c = muxed.conn
        sid = muxed.stream_id
        flags = [n for n in ("closed", "send_closed", "recv_closed", "reset_received") if getattr(muxed, n)]
        event = c.stream_events.get(sid)
        waking = "none" if event is None else "set" if event.is_set() else "unset"
        return (
            f"yamux #{sid} {'+'.join(flags) or 'open'} conn {down} known={sid in c.streams} "
            f"held={len(c.stream_buffers.get(sid) or b'')} event={waking}"
            f" windows send={muxed.send_window} recv={muxed.recv_window}{f' refused={refused}' if refused else ''}"
        )
    if isinstance(muxed, MplexStream):
        flags = [n for n in ("event_local_closed", "event_remote_closed", "event_reset") if getattr(muxed, n).is_set()]
        return f"mplex {muxed.stream_id} {'+'.join(flags) or 'open'} conn {down}"
    return f"{type(muxed).__name__} conn {down} {conn!r}"


def remote_peer_id(net_stream: INetStream) -> str:
    return str(net_stream.muxed_conn.peer_id)


def _endpoint_maddr(getter: Any) -> str:
    """``/ip4/HOST/tcp/PORT`` for a ``get_remote_address`` method; "" if unknown."""
    try:
        endpoint = getter()
    except Exception:
        endpoint = None
    if not endpoint:
        return ""
    host, port = endpoint[0], endpoint[1]
    try:
        family = "ip6" if ipaddress.ip_address(host).version == 6 else "ip4"
    except ValueError:
        family = "dns"
    return f"/{family}/{host}/tcp/{port}"


def remote_addr(net_stream: INetStream) -> str:
    return _endpoint_maddr(net_stream.get_remote_address)


def peer_id_of(text: str) -> ID:
    """A peer id: base58 of a multihash (identity or sha2-256), as libp2p makes them."""
    try:
        peer = ID.from_base58(text)
    except Exception as exc:
        raise InvalidArgument(f"not a peer id: {text!r}") from exc
    raw = peer.to_bytes()
    if len(raw) < 3 or raw[0] not in (0x00, 0x12) or raw[1] != len(raw) - 2:
        raise InvalidArgument(f"not a peer id (not a multihash): {text!r}")
    return peer


def parse_peer_addr(text: str) -> PeerInfo:
    """A multiaddr that ends in /p2p/<peer id>."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(text))
    except Exception as exc:
        raise InvalidArgument(f"expected a multiaddr ending in /p2p/<peer id>, got {text!r}") from exc


def parse_addr(text: str) -> multiaddr.Multiaddr:
    try:
        return multiaddr.Multiaddr(text)
    except Exception as exc:
        raise InvalidArgument(f"not a multiaddr: {text!r}") from exc


# -- host ----------------------------------------------------------------------------------------


def load_or_create_identity(path: Path | None) -> KeyPair:
    """The node's key pair: loaded from ``path``, created there (0600) on first run."""
    if path is None:
        return create_new_key_pair()
    if path.exists():
        return load_identity(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key_pair = create_new_key_pair()
    save_identity(key_pair, path)
    os.chmod(path, 0o600)
    return key_pair


def build_host(
    key_pair: KeyPair, listen: Sequence[str], muxer: str | None = None, limits: res.ResourceLimits | None = None
) -> IHost:
    """A py-libp2p host with its default secure channels and muxers (yamux first).

    With ``limits``, py-libp2p's own connection caps are set above the node's (the
    Gate decides), and it keeps no minimum of connections of its own to dial.
    """
    install_fixes()
    listen_addrs = [parse_addr(a) for a in listen]
    kwargs: dict[str, Any] = {"key_pair": key_pair, "listen_addrs": listen_addrs}
    if muxer:
        kwargs["muxer_preference"] = muxer.upper()
    if limits is not None:
        kwargs["connection_config"] = ConnectionConfig(
            max_connections=2 * limits.connections + 1,
            max_connections_per_peer=2 * limits.connections_per_peer + 1,
            min_connections=0,
            low_watermark=0,
            high_watermark=2 * limits.connections + 1,
        )
    return new_host(**kwargs)


@contextlib.asynccontextmanager
async def run_host(host: IHost, listen: Sequence[str]) -> AsyncIterator[None]:
    async with host.run([parse_addr(a) for a in listen]):
        yield


def advertised_addrs(host: IHost) -> list[str]:
    """Dialable addresses: wildcard listen addresses expand to interface addresses."""
    peer = str(host.get_id())
    out: list[str] = []
    for addr in host.get_transport_addrs():
        text = str(addr)
        parts = text.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6") and parts[2] in ("0.0.0.0", "::"):
            for ip in _interface_ips(parts[1]):
                out.append("/".join([*parts[:2], ip, *parts[3:]]) + f"/p2p/{peer}")
        else:
            out.append(f"{text}/p2p/{peer}")
    return out


def _interface_ips(family: str) -> list[str]:
    try:
        import ifaddr
    except ImportError:  # pragma: no cover - ifaddr comes with py-libp2p
        return ["127.0.0.1"] if family == "ip4" else ["::1"]
    ips: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if family == "ip4" and isinstance(ip.ip, str):
                ips.append(ip.ip)
            elif family == "ip6" and isinstance(ip.ip, tuple) and not ip.ip[0].startswith("fe80"):
                ips.append(ip.ip[0])
    return ips or (["127.0.0.1"] if family == "ip4" else ["::1"])


def _limit_in(exc: BaseException) -> LimitExceeded | None:
    """The node's own refusal (or the kernel's lack of descriptors) behind a dial error."""
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, Refused):
            return chain.error
        if isinstance(chain, OSError) and chain.errno in res.RESOURCE_ERRNOS:
            return LimitExceeded(f"the system has no resources for another connection: {chain.strerror}")
        chain = chain.__cause__ or chain.__context__
    return None


async def connect(host: IHost, addr: str, timeout: float) -> PeerInfo:
    info = parse_peer_addr(addr)
    if info.peer_id == host.get_id():
        raise InvalidArgument("cannot connect to the node itself")
    try:
        with trio.fail_after(timeout):
            await host.connect(info)
    except trio.TooSlowError as exc:
        raise Timeout(f"dialing {addr} took longer than {timeout:g}s") from exc
    except (SwarmException, *_STREAM_GONE) as exc:
        limit = _limit_in(exc)
        if limit is not None:
            raise limit from exc
        raise PeerUnreachable(f"cannot connect to {addr}: {exc}") from exc
    return info


async def open_stream(
    host: IHost, peer: str, protocols: Sequence[str], addrs: Sequence[str], timeout: float
) -> INetStream:
    """A negotiated outbound stream; raises PeerUnreachable, ProtocolNotSupported or Timeout."""
    peer_id = peer_id_of(peer)
    if peer_id == host.get_id():
        raise InvalidArgument("cannot open a stream to the node itself")
    if addrs:
        host.get_peerstore().add_addrs(peer_id, [_transport_part(a, peer_id) for a in addrs], 600)
    try:
        with trio.fail_after(timeout):
            return await host.new_stream(peer_id, [TProtocol(p) for p in protocols])
    except trio.TooSlowError as exc:
        raise Timeout(f"opening {list(protocols)} on {peer} took longer than {timeout:g}s") from exc
    except Exception as exc:
        chain: BaseException | None = exc
        while chain is not None:
            if isinstance(chain, MultiselectClientError):
                # py-libp2p says "protocols not supported" only when every id got "na"
                text = str(chain)
                if "not supported" in text:
                    raise ProtocolNotSupported(f"{peer} supports none of {list(protocols)}") from exc
                if "timed out" in text:
                    raise Timeout(f"{peer} did not finish negotiating {list(protocols)}") from exc
                raise NegotiationFailed(f"negotiating {list(protocols)} with {peer} broke off: {text}") from exc
            chain = chain.__cause__
        limit = _limit_in(exc)
        if limit is not None:
            raise limit from exc
        if isinstance(exc, (SwarmException, *_STREAM_GONE)):
            raise PeerUnreachable(f"cannot reach {peer}: {exc}") from exc
        raise


def _transport_part(text: str, peer_id: ID) -> multiaddr.Multiaddr:
    """``addr`` without a trailing ``/p2p/<id>``, which must then name ``peer_id``."""
    addr = parse_addr(text)
    if "/p2p/" in text:
        info = parse_peer_addr(text)
        if info.peer_id != peer_id:
            raise InvalidArgument(f"{text} names another peer than {peer_id}")
        addr = info.addrs[0]
    return addr


def connected_peers(host: IHost) -> list[tuple[str, list[str]]]:
    out = []
    network = host.get_network()
    for peer_id, conns in list(network.connections.items()):
        addrs = [_endpoint_maddr(getattr(conn.muxed_conn, "get_remote_address", None)) for conn in conns]
        out.append((str(peer_id), [a for a in addrs if a]))
    return out


async def push_identify(host: IHost) -> None:
    """Tell connected peers our current protocols (identify/push), so they stop
    assuming a protocol we unmounted (go-libp2p negotiates lazily when it
    believes a peer supports a protocol)."""
    from libp2p.identity.identify_push.identify_push import push_identify_to_peers

    with contextlib.suppress(Exception):
        await push_identify_to_peers(host)


async def disconnect(host: IHost, peer: str) -> None:
    await host.disconnect(peer_id_of(peer))


def quiet_libp2p_logs(level: int) -> None:
    """py-libp2p logs expected events (a refused protocol) as errors; keep them below ours."""
    logging.getLogger("libp2p").setLevel(max(level, logging.CRITICAL) if level > logging.DEBUG else level)
