"""The node's admission inside py-libp2p: the resource manager's :class:`Gate` hooked
into the swarm's upgrades, its stream handler and yamux's buffers and windows."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.exceptions import SwarmException
from libp2p.network.swarm import Swarm
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from ...errors import (
    LimitExceeded,
)
from .. import _resources as res
from ._books import _Books, _Buffers, _capped_autotune, _Streams
from ._fixes import install_fixes
from ._io import _wake_reader

log = logging.getLogger("logos_p2p.node")

# py-libp2p's NetStream; its INetStream ABC lacks muxed_stream/close_write, which we use.
INetStream = Any

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
    _install_gate_hooks()
    gate.swarm = host.get_network()
    gate.swarm._logos_gate = gate


def _gate_of(swarm: Any) -> Gate | None:
    return getattr(swarm, "_logos_gate", None)


def _endpoint_ip(conn: Any) -> str:
    try:
        endpoint = conn.get_remote_address()
    except Exception:
        endpoint = None
    return str(endpoint[0]) if endpoint else "unknown"


def _adopt_connection(gate: Gate, muxed: Any, grants: list[res.Grant]) -> None:
    """Book a connection until it closes: its grants, its muxer's memory (before it starts)."""
    peer = str(muxed.peer_id)
    books = _Books(gate, grants, gate.rm.memory_account(gate.rm.peer(peer)), peer)
    muxed._logos_books = books
    if isinstance(muxed, Yamux):  # not started yet: no frame has been read
        muxed.stream_buffers = _Buffers(muxed, books, gate)
        muxed.streams = _Streams()

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
            res.release_all(grants)
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
                res.release_all(grants)

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


_hooks_installed = False


def _install_gate_hooks() -> None:
    """Wrap py-libp2p's admission points, once per process (a gate-less swarm passes through)."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    Swarm.upgrade_inbound_raw_conn = _gated_upgrade(Swarm.upgrade_inbound_raw_conn, "inbound")  # type: ignore[method-assign]
    Swarm.upgrade_outbound_raw_conn = _gated_upgrade(Swarm.upgrade_outbound_raw_conn, "outbound")  # type: ignore[method-assign]
    Swarm.add_conn = _gated_add_conn(Swarm.add_conn)  # type: ignore[method-assign]
    SwarmConn._handle_muxed_stream = _gated_stream_handler(SwarmConn._handle_muxed_stream)  # type: ignore[method-assign]
    YamuxStream._apply_autotune_epoch = _capped_autotune(YamuxStream._apply_autotune_epoch)  # type: ignore[method-assign]
