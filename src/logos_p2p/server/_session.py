"""A module as the node sees it: one RPC connection, what it registered, the streams it owns.

The node indexes *its own* objects here -- sessions, registrations, bridges -- never the
capnp server objects it hands to modules. Those are held only by pycapnp, so their
``__del__`` runs as soon as the module drops them or disconnects; that is how "drop =>
unregister / reset" works. A session is also ended explicitly when its connection (or
its data channel) ends: its teardown hooks run, then its registrations and streams go.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import Cause

if TYPE_CHECKING:
    import trio

    from ._bridge import Bridge

_session_ids = itertools.count(1)
_registration_ids = itertools.count(1)

# deliver(registration, bridge): give an inbound stream to the module (trio); the bridge
# is on the module's books and waits for its module side
Deliver = Callable[["Registration", "Bridge"], Awaitable[None]]


async def _gone(reg: Registration, bridge: Bridge) -> None:
    raise AssertionError("a stream routed to a removed registration")


@dataclass(eq=False)
class Registration:
    """Protocol ids a module handles, and how its inbound streams reach it (``deliver``:
    one per data path, given by the adapter that registered it)."""

    session: ModuleSession
    protocols: tuple[str, ...]
    deliver: Deliver
    share: bool
    id: int = field(default_factory=lambda: next(_registration_ids))
    active: bool = True

    def removed(self) -> None:
        self.active = False
        self.deliver = _gone  # lets go of what the adapter held (the module's Handler)


class ModuleSession:
    """One RPC connection: what the module registered and the streams it owns."""

    def __init__(self, label: str, count_reset: Callable[[Cause], None]) -> None:
        self.id = next(_session_ids)
        self.label = label  # where it connected from
        self.name = ""
        self.registrations: dict[int, Registration] = {}
        self.bridges: dict[int, Bridge] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed = False
        self.bad_messages = 0  # data channel messages that were dropped or refused
        self.channel_deliver: Deliver | None = None  # while its data channel is open: its inbound path
        self.teardown_hooks: list[Callable[[Cause], None]] = []  # run once, when it ends
        self.opening: set[trio.CancelScope] = set()  # opens in progress, cancelled when it ends
        self._count_reset = count_reset

    def __repr__(self) -> str:
        return f"<ModuleSession {self.id} {self.name or self.label}>"

    # the Books protocol of bridges
    def account(self, bridge: Bridge, bytes_in: int = 0, bytes_out: int = 0) -> None:
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        bridge.last_active = time.monotonic()

    def forget(self, bridge: Bridge) -> None:
        self.bridges.pop(bridge.info.id, None)

    def count_reset(self, cause: Cause) -> None:
        self._count_reset(cause)

    def end(self, cause: Cause) -> list[Registration]:
        """Mark the session ended and run its teardown hooks (once); the registrations it
        held, for the caller to remove."""
        first = not self.closed
        self.closed = True
        if first:
            hooks, self.teardown_hooks = self.teardown_hooks, []
            for hook in hooks:
                hook(cause)
            for scope in self.opening:
                scope.cancel()
        return list(self.registrations.values())

    def status(self) -> dict[str, Any]:
        inbound = sum(1 for b in self.bridges.values() if b.info.direction == "inbound")
        return {
            "id": self.id,
            "name": self.name or self.label,
            "protocols": sorted({p for r in self.registrations.values() for p in r.protocols}),
            "registrations": len(self.registrations),
            "inboundStreams": inbound,
            "outboundStreams": len(self.bridges) - inbound,
            "bytesIn": self.bytes_in,
            "bytesOut": self.bytes_out,
            "bufferedBytes": sum(b.buffered for b in self.bridges.values()),
            "badMessages": self.bad_messages,
        }
