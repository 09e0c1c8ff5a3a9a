"""Peer events out of py-libp2p: a peer connected, was identified, disconnected (and why).

py-libp2p tells a notifee about each *connection*; the node reports *peers*: connected
with the first connection to a peer, disconnected with the last. Two facts py-libp2p
does not keep are recorded by small wrappers (installed once, process-wide):

* **who closed a connection.** ``SwarmConn.close`` is called for every connection that
  ends; when it is called while the muxer is still running, something in this process
  decided to close it (a ``disconnectPeer``, a limit, shutdown): closed by us. When the
  muxer stopped first, the peer closed it, or it failed.
* **whether it failed.** A secure-channel read that raises anything but the peer's end
  of the TCP stream (a FIN, or a RST: go-libp2p hangs up with one) marks its connection
  broken (a decryption failure, a truncated message, a timeout), as does a write that
  stalled (fix 5 closes those).

Identify results come from ``update_peerstore_from_identify``, which py-libp2p calls
for identify and identify/push alike; the node wraps the name in the modules that call
it and finds the watcher by the peerstore that is updated. py-libp2p does not identify
a peer again when it reconnects (its peerstore remembers the protocols): the watcher
then repeats what the peer said last time, right after ``connected``.
"""

from __future__ import annotations

import errno
import functools
import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libp2p.host.basic_host as _basic_host
import libp2p.identity.identify_push.identify_push as _identify_push
from libp2p.abc import INetConn, INetwork, INotifee
from libp2p.io.exceptions import IncompleteReadError
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.security.secure_session import SecureSession
from multiaddr import Multiaddr

from ._io import _endpoint_maddr

log = logging.getLogger("logos_p2p.node")

REMEMBERED = 4096  # peers whose identify answer is kept for their reconnection

CLOSED_BY_US = "closedByUs"
CLOSED_BY_PEER = "closedByPeer"
ERROR = "error"


@dataclass(frozen=True)
class Connected:
    peer_id: str
    remote_addr: str
    direction: str  # "inbound" | "outbound"


@dataclass(frozen=True)
class Disconnected:
    peer_id: str
    reason: str  # CLOSED_BY_US | CLOSED_BY_PEER | ERROR


@dataclass(frozen=True)
class Identified:
    peer_id: str
    protocols: tuple[str, ...]
    agent_version: str
    protocol_version: str
    listen_addrs: tuple[str, ...]


PeerEvent = Connected | Disconnected | Identified
Publish = Callable[[PeerEvent], None]

# the peerstore of each watched host -> its watcher (identify results find it by this)
_watchers: weakref.WeakKeyDictionary[Any, PeerWatch] = weakref.WeakKeyDictionary()


def _clean_end(exc: BaseException) -> bool:
    """Whether a secure-channel read failed only because the peer ended the TCP stream:
    a FIN, or a RST (go-libp2p closes every connection with linger 0, so a RST is its
    normal hang-up). A truncated or undecryptable message, a timeout, anything else is
    a failure."""
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, IncompleteReadError):
            return chain.is_clean_close
        if isinstance(chain, OSError) and chain.errno is not None:
            return chain.errno == errno.ECONNRESET
        chain = chain.__cause__ or chain.__context__
    text = str(exc).lower()
    return "reset by" in text or "connection closed" in text or "eof" in text


def _reading(original: Any) -> Any:
    @functools.wraps(original)
    async def read(self: SecureSession, n: int | None = None) -> bytes:
        try:
            data: bytes = await original(self, n)
        except Exception as exc:
            if not _clean_end(exc):
                if not getattr(self, "_logos_broken", False):
                    log.debug("a secure-channel read failed: %r (chained %r)", exc, exc.__cause__ or exc.__context__)
                self._logos_broken = True  # type: ignore[attr-defined]
            raise
        return data

    return read


def _closing(original: Any) -> Any:
    @functools.wraps(original)
    async def close(self: SwarmConn) -> None:
        muxed = self.muxed_conn
        ending = getattr(muxed, "event_shutting_down", None)
        if ending is not None and not ending.is_set() and not getattr(self, "_logos_ended", False):
            self._logos_closed_by_us = True  # type: ignore[attr-defined]
        self._logos_ended = True  # type: ignore[attr-defined]
        await original(self)

    return close


def _identifying(original: Any) -> Any:
    @functools.wraps(original)
    async def update(peerstore: Any, peer_id: Any, identify_msg: Any) -> None:
        await original(peerstore, peer_id, identify_msg)
        watch = _watchers.get(peerstore)
        if watch is not None:
            watch.identified(peer_id, identify_msg)

    return update


_installed = False


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    SecureSession.read = _reading(SecureSession.read)  # type: ignore[method-assign]
    SwarmConn.close = _closing(SwarmConn.close)  # type: ignore[method-assign]
    for module in (_basic_host, _identify_push):
        module.update_peerstore_from_identify = _identifying(module.update_peerstore_from_identify)  # type: ignore[attr-defined]


def _direction(conn: INetConn) -> str:
    value = getattr(conn, "direction", None)
    name = str(getattr(value, "name", value) or "").lower()
    if name in ("inbound", "outbound"):
        return name
    secured = getattr(conn.muxed_conn, "secured_conn", None)
    return "outbound" if getattr(secured, "is_initiator", False) else "inbound"


def _reason(conn: INetConn) -> str:
    if getattr(conn, "_logos_closed_by_us", False):
        return CLOSED_BY_US
    secured = getattr(conn.muxed_conn, "secured_conn", None)
    if getattr(secured, "_logos_broken", False):
        return ERROR
    return CLOSED_BY_PEER


def _addrs(values: Any) -> tuple[str, ...]:
    out = []
    for raw in values:
        try:
            out.append(str(Multiaddr(raw)))
        except Exception:  # a peer's malformed address is its own business
            continue
    return tuple(out)


class PeerWatch(INotifee):
    """Turns one host's connection notifications into per-peer events for ``publish``
    (called in trio, synchronously: it must not block)."""

    def __init__(self, host: Any, publish: Publish) -> None:
        _install()
        self._host = host
        self._publish = publish
        self._conns: dict[Any, set[int]] = {}  # peer -> ids of its open connections
        self._said: OrderedDict[Any, Identified] = OrderedDict()  # what peers said in identify, latest last
        self.closing = False  # the node is shutting down: every close is ours
        host.get_network().register_notifee(self)
        _watchers[host.get_peerstore()] = self

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        conns = self._conns.setdefault(peer, set())
        first = not conns
        conns.add(id(conn))
        if first:
            addr = _endpoint_maddr(getattr(conn.muxed_conn, "get_remote_address", None))
            self._publish(Connected(str(peer), addr, _direction(conn)))
            said = self._said.get(peer)
            skips = getattr(self._host, "_has_cached_protocols", None)  # py-libp2p will not identify it again
            if said is not None and skips is not None and skips(peer):
                self._publish(said)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        conns = self._conns.get(peer)
        if conns is None or id(conn) not in conns:
            return
        conns.discard(id(conn))
        if not conns:
            del self._conns[peer]
            reason = CLOSED_BY_US if self.closing else _reason(conn)
            self._publish(Disconnected(str(peer), reason))

    def identified(self, peer: Any, msg: Any) -> None:
        if peer not in self._conns:
            return  # identify finished after the peer left: stale
        said = Identified(
            str(peer), tuple(msg.protocols), msg.agent_version, msg.protocol_version, _addrs(msg.listen_addrs)
        )
        self._said[peer] = said
        self._said.move_to_end(peer)
        while len(self._said) > REMEMBERED:
            self._said.popitem(last=False)
        self._publish(said)

    async def opened_stream(self, network: INetwork, stream: Any) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: Any) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: Any) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: Any) -> None:
        return None
