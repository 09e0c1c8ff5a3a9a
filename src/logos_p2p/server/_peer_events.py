"""Peer events pushed to the modules that subscribed (``Node.subscribePeerEvents``).

:class:`PeerEvents` takes the events of the libp2p host (:class:`~._libp2p.PeerWatch`,
in trio) over to asyncio and fans them out. Each :class:`Subscriber` holds what its
module has not taken yet in a bounded queue and sends it with a small window of
unanswered ``PeerEvents.event`` calls (pycapnp delivers calls on one capability in
order, so the window keeps the order). A full queue is emptied and replaced by one
``overflowed`` event: a slow module costs the node ``queue_size`` events at most.
A subscriber ends when the module cancels or drops its Subscription, when an event
call fails, or when its session ends; nothing of it is left in the node.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import _schema
from .._requests import MAX_PEER_EVENT_QUEUE
from ..errors import InvalidArgument, LimitExceeded
from . import _libp2p

if TYPE_CHECKING:
    from ._handoff import Loops
    from ._session import ModuleSession

log = logging.getLogger("logos_p2p.node")
schema = _schema.load()

DEFAULT_QUEUE = 256
WINDOW = 8  # event calls in flight per subscriber
MAX_PER_MODULE = 16
_OVERFLOWED: dict[str, Any] = {"peerId": "", "overflowed": None}


def to_capnp(event: _libp2p.PeerEvent) -> dict[str, Any]:
    if isinstance(event, _libp2p.Connected):
        return {"peerId": event.peer_id, "connected": {"remoteAddr": event.remote_addr, "direction": event.direction}}
    if isinstance(event, _libp2p.Disconnected):
        return {"peerId": event.peer_id, "disconnected": event.reason}
    return {
        "peerId": event.peer_id,
        "identified": {
            "protocols": list(event.protocols),
            "agentVersion": event.agent_version,
            "protocolVersion": event.protocol_version,
            "listenAddrs": list(event.listen_addrs),
        },
    }


class Subscriber:
    """One module's subscription: its queue, its window, its capability."""

    def __init__(self, hub: PeerEvents, session: ModuleSession, cap: Any, queue_size: int) -> None:
        self.hub = hub
        self.session = session
        self.cap: Any = cap
        self.size = queue_size
        self.queue: deque[dict[str, Any]] = deque()
        self.inflight = 0
        self.overflows = 0

    @property
    def active(self) -> bool:
        return self.cap is not None

    def offer(self, event: dict[str, Any]) -> None:
        if len(self.queue) >= self.size:
            self.queue.clear()
            self.queue.append(_OVERFLOWED)
            self.overflows += 1
        else:
            self.queue.append(event)
        self._send()

    def _send(self) -> None:
        while self.cap is not None and self.queue and self.inflight < WINDOW:
            event = self.queue.popleft()
            self.inflight += 1
            fut = asyncio.ensure_future(self.cap.event(event=event))
            fut.add_done_callback(self._answered)

    def _answered(self, fut: asyncio.Future[Any]) -> None:
        self.inflight -= 1
        if fut.cancelled() or fut.exception() is not None:
            if self.cap is not None:
                log.debug("peer events: %r stopped taking events: %s", self.session, fut.exception())
            self.end()
            return
        self._send()

    def end(self) -> None:
        """Unsubscribe (idempotent): nothing is sent any more, the queue is let go."""
        if self.cap is None:
            return
        self.cap = None
        self.queue.clear()
        self.hub.subscribers.discard(self)
        subs = self.hub.by_session.get(self.session.id)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self.hub.by_session[self.session.id]


class PeerEvents:
    """The node's peer events and who gets them."""

    def __init__(self, loops: Loops) -> None:
        self.loops = loops
        self.subscribers: set[Subscriber] = set()
        self.by_session: dict[int, set[Subscriber]] = {}
        self._hooked: set[int] = set()  # sessions whose teardown ends their subscribers
        self.watch: _libp2p.PeerWatch | None = None

    def watch_host(self, host: Any) -> None:
        self.watch = _libp2p.PeerWatch(host, self._from_trio)

    def _from_trio(self, event: _libp2p.PeerEvent) -> None:
        self.loops.aio.call_soon(self.publish, event)

    def publish(self, event: _libp2p.PeerEvent) -> None:
        if not self.subscribers:
            return
        message = to_capnp(event)
        for sub in list(self.subscribers):
            sub.offer(message)

    def subscribe(self, session: ModuleSession, cap: Any, queue_size: int) -> Subscriber:
        if queue_size > MAX_PEER_EVENT_QUEUE:
            raise InvalidArgument(f"queueSize is at most {MAX_PEER_EVENT_QUEUE}")
        subs = self.by_session.setdefault(session.id, set())
        if len(subs) >= MAX_PER_MODULE:
            raise LimitExceeded(f"a module may hold at most {MAX_PER_MODULE} peer event subscriptions")
        sub = Subscriber(self, session, cap, queue_size or DEFAULT_QUEUE)
        subs.add(sub)
        self.subscribers.add(sub)
        if session.id not in self._hooked:
            self._hooked.add(session.id)
            session.teardown_hooks.append(partial(self._session_ended, session))
        return sub

    def _session_ended(self, session: ModuleSession, _cause: Any) -> None:
        self._hooked.discard(session.id)
        for sub in list(self.by_session.get(session.id, ())):
            sub.end()

    def closing(self) -> None:
        """The node is shutting down: every connection closed from now on is closed by us."""
        if self.watch is not None:
            self.watch.closing = True


class SubscriptionImpl(schema.Subscription.Server):  # type: ignore[name-defined,misc]
    """The module's handle on a subscription: cancelling or dropping it unsubscribes."""

    def __init__(self, loops: Loops, sub: Subscriber) -> None:
        self._loops = loops
        self._sub = sub

    def __del__(self) -> None:
        # pycapnp runs this when the module drops the capability or disconnects
        self._loops.soon(self._sub.end)

    async def cancel(self, **_: Any) -> None:
        self._sub.end()
