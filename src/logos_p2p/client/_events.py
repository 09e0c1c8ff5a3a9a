"""Peer events, module side: typed events and the subscription that yields them.

The node pushes ``PeerEvents.event`` calls; each is answered once the event is in this
side's bounded queue, so a module that stops iterating stops the node's window, and the
node's own bounded queue then overflows into one :class:`PeerEventsOverflowed`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import _schema
from .._requests import MAX_PEER_EVENT_QUEUE
from ..errors import InvalidArgument, NodeUnavailable
from ._translate import translate

schema = _schema.load()

LOCAL_QUEUE = 64  # events taken from the node, not yet iterated


@dataclass(frozen=True)
class PeerConnected:
    """The node has its first connection to ``peer_id``."""

    peer_id: str
    remote_addr: str  # multiaddr of that connection's remote end
    direction: str  # "inbound": the peer dialed the node; "outbound": the node dialed it


@dataclass(frozen=True)
class PeerDisconnected:
    """The node's last connection to ``peer_id`` closed."""

    peer_id: str
    reason: str  # "closedByUs", "closedByPeer" or "error"


@dataclass(frozen=True)
class PeerIdentified:
    """Identify with ``peer_id`` completed (again after the peer pushes a change)."""

    peer_id: str
    protocols: tuple[str, ...]
    agent_version: str
    protocol_version: str
    listen_addrs: tuple[str, ...]


@dataclass(frozen=True)
class PeerEventsOverflowed:
    """Events were dropped because this module fell behind: call ``Node.peers()`` again.
    The events after this one describe changes after the overflow."""


PeerEvent = PeerConnected | PeerDisconnected | PeerIdentified | PeerEventsOverflowed


def from_capnp(event: Any) -> PeerEvent:
    which = event.which()
    if which == "connected":
        c = event.connected
        return PeerConnected(event.peerId, c.remoteAddr, str(c.direction))
    if which == "disconnected":
        return PeerDisconnected(event.peerId, str(event.disconnected))
    if which == "identified":
        i = event.identified
        return PeerIdentified(event.peerId, tuple(i.protocols), i.agentVersion, i.protocolVersion, tuple(i.listenAddrs))
    return PeerEventsOverflowed()


class _Subscriber(schema.PeerEvents.Server):  # type: ignore[name-defined,misc]
    def __init__(self, queue: asyncio.Queue[PeerEvent]) -> None:
        self._queue = queue

    async def event(self, event: Any, **_: Any) -> None:
        await self._queue.put(from_capnp(event))


class PeerEvents:
    """``async for event in node.peer_events():`` -- or, to be subscribed before doing
    anything else, ``async with node.peer_events() as events:`` then ``async for``.

    Leaving the block, :meth:`aclose` or dropping it unsubscribes.
    """

    def __init__(
        self, cap: Any, queue_size: int, shutting_down: Callable[[], bool], disconnected: Callable[[], Awaitable[Any]]
    ) -> None:
        if not isinstance(queue_size, int) or not 0 < queue_size <= MAX_PEER_EVENT_QUEUE:
            raise InvalidArgument(f"queue_size must be in 1..{MAX_PEER_EVENT_QUEUE}")
        self._node_cap = cap
        self._size = queue_size
        self._shutting_down = shutting_down
        self._disconnected = disconnected
        self._queue: asyncio.Queue[PeerEvent] = asyncio.Queue(LOCAL_QUEUE)
        self._subscription: Any = None
        self._closed = False

    async def start(self) -> PeerEvents:
        """Subscribe now (iterating does it too, if it was not done)."""
        if self._closed:
            raise NodeUnavailable("these peer events were closed")
        if self._subscription is None:
            with translate(self._shutting_down):
                answer = await self._node_cap.subscribePeerEvents(
                    subscriber=_Subscriber(self._queue), queueSize=self._size
                )
            self._subscription = answer.subscription
        return self

    async def __aenter__(self) -> PeerEvents:
        return await self.start()

    async def __aexit__(self, *_: Any) -> None:
        await self.aclose()

    def __aiter__(self) -> PeerEvents:
        return self

    async def __anext__(self) -> PeerEvent:
        await self.start()
        if self._queue.empty():
            got = asyncio.ensure_future(self._queue.get())
            gone = asyncio.ensure_future(self._disconnected())
            try:
                await asyncio.wait([got, gone], return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not got.done():
                    got.cancel()
            if not got.done() or got.cancelled():
                self._subscription = None
                self._closed = True
                raise StopAsyncIteration
            return got.result()
        return self._queue.get_nowait()

    async def get(self, timeout: float | None = None) -> PeerEvent:
        """The next event; :class:`TimeoutError` if none comes within ``timeout``;
        :class:`StopAsyncIteration` once the connection to the node ended."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def aclose(self) -> None:
        """Unsubscribe (idempotent)."""
        sub, self._subscription = self._subscription, None
        self._closed = True
        if sub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.cancel(), 1.0)
