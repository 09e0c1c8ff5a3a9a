"""The stream service: where every stream of the node is admitted, routed, adopted and ended.

It knows the libp2p host, the resource manager and the modules' sessions, and no
adapter: the RPC servers (:mod:`._rpc`) and the data channel (:mod:`._channel`) call it,
each registration carries the ``deliver`` callback of the data path that made it, and
each path gives the bridges of its streams their module side.

One inbound stream: the gate admitted it before negotiation (a StreamSlot);
:meth:`StreamService.on_inbound` picks its registration, binds the slot to the protocol
and the module, puts a :class:`~._bridge.Bridge` on the module's books and calls
``deliver``, where the data path gives the bridge its module side and starts it. One
outbound stream: :meth:`StreamService.open` checks the request, reserves, dials and
negotiates, binds and adopts it; the path that asked gives it its side and starts it
(:meth:`StreamService.open_aio` does both for a request made in asyncio).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from .._requests import peer_named, validate_open, validate_protocol_ids
from ..errors import Cause, LimitExceeded, NodeShutdown, ProtocolInUse
from . import _libp2p
from ._bridge import Bridge
from ._config import NodeConfig
from ._handoff import Loops
from ._resources import OPENS, Grant, ResourceManager, StreamSlot
from ._session import Deliver, ModuleSession, Registration

if TYPE_CHECKING:
    from libp2p.abc import IHost, INetStream

log = logging.getLogger("logos_p2p.node")


def _check_open(peer: str, protocols: list[str], addrs: list[str]) -> tuple[str, tuple[str, ...]]:
    """The peer and the protocol ids of an open request, checked with its addresses
    (InvalidArgument first: a bad request is no reason to count a refusal). ``peer`` may
    be "" when the addresses name it."""
    ids = validate_open(peer, protocols, addrs)
    peer = peer_named(peer, addrs)
    _libp2p.peer_id_of(peer)
    return peer, ids


class _Side(Protocol):
    bridge: Bridge


S = TypeVar("S", bound=_Side)


class Registry:
    """protocol id -> registrations serving it; mounts ids on the libp2p host."""

    def __init__(self, mount: Callable[[str], None], unmount: Callable[[str], None]) -> None:
        self._mount = mount
        self._unmount = unmount
        self._by_protocol: dict[str, list[Registration]] = {}
        self._turn: Counter[str] = Counter()

    def __len__(self) -> int:
        return len({r.id for regs in self._by_protocol.values() for r in regs})

    def add(self, reg: Registration) -> None:
        for proto in reg.protocols:
            others = self._by_protocol.get(proto, [])
            if others and not (reg.share and all(o.share for o in others)):
                owner = others[0].session
                raise ProtocolInUse(f"{proto} is registered by module {owner.id} ({owner.label})")
        for proto in reg.protocols:
            regs = self._by_protocol.setdefault(proto, [])
            if not regs:
                self._mount(proto)
            regs.append(reg)
        reg.session.registrations[reg.id] = reg

    def remove(self, reg: Registration) -> bool:
        if not reg.active:
            return False
        reg.removed()
        reg.session.registrations.pop(reg.id, None)
        for proto in reg.protocols:
            regs = self._by_protocol.get(proto)
            if regs is None:
                continue
            if reg in regs:
                regs.remove(reg)
            if not regs:
                del self._by_protocol[proto]
                self._turn.pop(proto, None)
                self._unmount(proto)
        return True

    def protocols(self) -> list[str]:
        return sorted(self._by_protocol)

    def pick(self, proto: str) -> Registration | None:
        """The registration that gets the next inbound stream (round-robin)."""
        regs = self._by_protocol.get(proto)
        if not regs:
            return None
        turn = self._turn[proto]
        self._turn[proto] = turn + 1
        return regs[turn % len(regs)]


class StreamService:
    def __init__(
        self,
        host: IHost,
        rm: ResourceManager,
        loops: Loops,
        config: NodeConfig,
        protocols_changed: Callable[[], None],
    ) -> None:
        self.host = host
        self.loops = loops
        self.rm = rm
        self.config = config
        self.limits = config.limits
        self.registry = Registry(self._mount, self._unmount)
        self.sessions: dict[int, ModuleSession] = {}
        self.resets: Counter[Cause] = Counter()
        self.streams_total = 0
        self.shutting_down = False
        self.working = 0  # hand-overs and opens in progress (the paths count theirs here)
        self._protocols_changed = protocols_changed

    # -- sessions ------------------------------------------------------------------------

    def new_session(self, label: str) -> ModuleSession:
        session = ModuleSession(label, self.count_reset)
        self.sessions[session.id] = session
        return session

    def end_session(self, session: ModuleSession, cause: Cause, message: str) -> None:
        """The module is gone (or the node stops): unmount and reset everything it had."""
        for reg in session.end(cause):
            self.registry.remove(reg)
        for bridge in list(session.bridges.values()):
            bridge.abandon(cause, message, linger=cause is not Cause.NODE_SHUTDOWN)

    def forget_session(self, session: ModuleSession) -> None:
        self.sessions.pop(session.id, None)

    def count_reset(self, cause: Cause) -> None:
        self.resets[cause] += 1

    @property
    def tasks(self) -> int:
        return self.working + sum(b.tasks for s in self.sessions.values() for b in s.bridges.values())

    def begin(self, session: ModuleSession, resource: str) -> Grant:
        """One more call of ``resource`` (opens, dials, polls) in progress for ``session``."""
        return self.rm.grant(resource, self.rm.module(session.id))

    # -- registrations ---------------------------------------------------------------------

    def register(self, session: ModuleSession, protocols: list[str], deliver: Deliver, *, share: bool) -> Registration:
        if self.shutting_down:
            raise NodeShutdown()
        ids = validate_protocol_ids(protocols)
        limit = self.config.max_registrations_per_module
        if len(session.registrations) >= limit:
            raise LimitExceeded(f"a module may hold {limit} registrations")
        reg = Registration(session, ids, deliver, share)
        self.registry.add(reg)
        log.info("module %s registered %s", session.id, list(ids))
        return reg

    def unregister(self, reg: Registration) -> None:
        if self.registry.remove(reg):
            log.info("module %s unregistered %s", reg.session.id, list(reg.protocols))

    def _mount(self, proto: str) -> None:
        self.host.set_stream_handler(proto, self.on_inbound)  # type: ignore[arg-type]
        self._protocols_changed()

    def _unmount(self, proto: str) -> None:
        self.host.remove_stream_handler(proto)  # type: ignore[arg-type]
        self._protocols_changed()

    # -- inbound -----------------------------------------------------------------------------

    async def on_inbound(self, net_stream: INetStream) -> None:
        """libp2p calls this (in trio) for every stream that negotiated a mounted id.

        The gate admitted the stream before negotiation (its StreamSlot); here it joins
        its protocol's and its module's scopes and goes to the module's data path, or is
        reset.
        """
        proto = str(net_stream.get_protocol())
        reg = None if self.shutting_down else self.registry.pick(proto)
        slot = _libp2p.stream_slot(net_stream)
        if reg is None or slot is None or reg.session.closed:
            await _libp2p.reset(net_stream)
            return
        slot.negotiated()
        try:
            slot.bind(protocol=self.rm.protocol(proto), module=self.rm.module(reg.session.id))
        except LimitExceeded:
            self.count_reset(Cause.LIMIT_EXCEEDED)
            await _libp2p.reset(net_stream)
            return
        bridge = await self._adopt(reg.session, net_stream, "inbound", slot, count=True)
        if bridge is not None:
            await reg.deliver(reg, bridge)

    async def _adopt(
        self, session: ModuleSession, net_stream: INetStream, direction: str, slot: StreamSlot, count: bool = False
    ) -> Bridge | None:
        """A bridge for a new stream, on its module's books (its side is the data path's to
        give); None -- the stream reset, the refusal counted if ``count`` (a peer's stream)
        -- if the module is closing."""
        if session.closed:
            slot.release()
            await _libp2p.reset(net_stream)
            if count:
                self.count_reset(Cause.LIMIT_EXCEEDED)
            return None
        bridge = Bridge(net_stream, direction, session, self.loops, self.limits, slot)
        session.bridges[bridge.info.id] = bridge
        self.streams_total += 1
        return bridge

    # -- outbound ------------------------------------------------------------------------------

    async def open_aio(
        self,
        session: ModuleSession,
        peer: str,
        protocols: list[str],
        addrs: list[str],
        timeout: float,
        make_side: Callable[[Bridge], S],
    ) -> S:
        """:meth:`open` for a request made in asyncio (an RPC): counted among the module's
        opens in progress (LimitExceeded), the bridge given its module side by ``make_side``
        and started. A stream opened for a caller that gave up meanwhile is reset.

        The request is checked before it is counted (InvalidArgument before LimitExceeded,
        as before the open moved here); :meth:`open` checks it again, a few string tests."""
        peer, _ids = _check_open(peer, protocols, addrs)
        grant = self.begin(session, OPENS)

        async def opened() -> S:
            return make_side(await self.open(session, peer, protocols, addrs, timeout))

        try:
            side = await self.loops.to_trio(
                opened,
                orphan=lambda s: s.bridge.abandon(Cause.CAPABILITY_DROPPED, "the module gave up opening the stream"),
            )
        finally:
            grant.release()
        side.bridge.start()
        return side

    async def open(
        self, session: ModuleSession, peer: str, protocols: list[str], addrs: list[str], timeout: float
    ) -> Bridge:
        """Open a stream for ``session`` (trio) to ``peer`` speaking one of ``protocols``:
        the request checked (InvalidArgument), reserved before dialing (LimitExceeded),
        bound to its protocol once negotiated, and adopted; the caller gives it its
        module side and starts it.

        The module's end or the node's shutdown cancels it: NodeShutdown.
        """
        peer, ids = _check_open(peer, protocols, addrs)
        if self.shutting_down or session.closed:
            raise NodeShutdown()
        slot = self.rm.stream("outbound", peer, self.rm.module(session.id))
        scope = trio.CancelScope()
        session.opening.add(scope)
        try:
            with scope:
                net_stream = await _libp2p.open_stream(self.host, peer, ids, addrs, timeout)
        except BaseException:
            slot.release()
            raise
        finally:
            session.opening.discard(scope)
        if scope.cancelled_caught:
            slot.release()
            raise NodeShutdown("the module is gone" if session.closed else "the node is shutting down")
        if session.closed or self.shutting_down:
            slot.release()
            await _libp2p.reset(net_stream)
            raise NodeShutdown("the module is gone" if session.closed else "the node is shutting down")
        try:
            slot.bind(protocol=self.rm.protocol(str(net_stream.get_protocol() or "")))
        except LimitExceeded:
            slot.release()
            await _libp2p.reset(net_stream)
            raise
        bridge = await self._adopt(session, net_stream, "outbound", slot)
        if bridge is None:
            raise LimitExceeded("the module's connection is closing")
        return bridge

    # -- idle streams ---------------------------------------------------------------------------

    async def expire_idle(self) -> None:
        """Reset streams that moved no byte either way for ``idle_timeout`` (checked four
        times per timeout, at most every 5 s). asyncio: nothing here needs trio."""
        timeout = self.limits.idle_timeout
        period = min(max(timeout / 4, 0.02), 5.0)
        while not self.shutting_down:
            await asyncio.sleep(period)
            cutoff = time.monotonic() - timeout
            for session in list(self.sessions.values()):
                for bridge in list(session.bridges.values()):
                    if bridge.last_active < cutoff and not bridge.state.is_reset:
                        bridge.reset(Cause.TIMEOUT, f"no data either way for {timeout:g} s (idle timeout)")

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        sessions = list(self.sessions.values())
        return {
            "modules": [s.status() for s in sessions],
            "streams": sum(len(s.bridges) for s in sessions),
            "registrations": sum(len(s.registrations) for s in sessions),
            "resets": [{"cause": c.value, "count": n} for c, n in sorted(self.resets.items(), key=_by_value)],
            "streamsTotal": self.streams_total,
        }


def _by_value(item: tuple[Cause, int]) -> str:
    return item[0].value
