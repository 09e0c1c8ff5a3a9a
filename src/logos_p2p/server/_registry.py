"""Modules (one per RPC connection) and the protocol ids they registered.

The node indexes *its own* objects here -- sessions, registration entries,
bridges -- never the capnp server objects it hands to modules. Those are held
only by pycapnp, so their ``__del__`` runs as soon as the module drops them
or disconnects; that is how "drop => unregister / reset" works. A session is
also torn down explicitly when its connection ends.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._requests import validate_protocol_ids as validate_protocol_ids
from ..errors import Cause, LimitExceeded, ProtocolInUse
from ._bridge import Bridge

if TYPE_CHECKING:
    from ._channel import DataChannel

log = logging.getLogger("logos_p2p.node")

_session_ids = itertools.count(1)
_registration_ids = itertools.count(1)


@dataclass(eq=False)
class Registration:
    session: ModuleSession
    protocols: tuple[str, ...]
    handler: Any  # the module's Handler capability
    share: bool
    accept_timeout: float
    channel: bool = False  # inbound streams go over the module's data channel
    id: int = field(default_factory=lambda: next(_registration_ids))
    active: bool = True


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

    def remove(self, reg: Registration) -> None:
        if not reg.active:
            return
        reg.active = False
        reg.handler = None
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

    def pick(self, proto: str) -> Registration | None:
        """The registration that gets the next inbound stream (round-robin)."""
        regs = self._by_protocol.get(proto)
        if not regs:
            return None
        turn = self._turn[proto]
        self._turn[proto] = turn + 1
        return regs[turn % len(regs)]

    def protocols(self) -> list[str]:
        return sorted(self._by_protocol)


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
        self.channel: DataChannel | None = None
        self.bad_messages = 0  # data channel messages that were dropped or refused
        self._count_reset = count_reset

    def __repr__(self) -> str:
        return f"<ModuleSession {self.id} {self.name or self.label}>"

    # the Owner protocol of bridges
    def account(self, bridge: Bridge, bytes_in: int = 0, bytes_out: int = 0) -> None:
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        bridge.last_active = time.monotonic()

    def forget(self, bridge: Bridge) -> None:
        self.bridges.pop(bridge.info.id, None)

    def count_reset(self, cause: Cause) -> None:
        self._count_reset(cause)

    def adopt(self, bridge: Bridge) -> None:
        """Book a stream the resource manager admitted (its slot is bound to this module)."""
        if self.closed:
            raise LimitExceeded("the module's connection is closing")
        self.bridges[bridge.info.id] = bridge

    def teardown(self, registry: Registry, cause: Cause, message: str) -> None:
        """The module is gone (or the node stops): unmount and reset everything it had."""
        self.closed = True
        if self.channel is not None:
            if cause is Cause.NODE_SHUTDOWN:  # the channel stays up for the last answers
                self.channel.cancel_opens()
            else:
                self.channel.close()
        for reg in list(self.registrations.values()):
            registry.remove(reg)
        for bridge in list(self.bridges.values()):
            bridge.abandon(cause, message, linger=cause is not Cause.NODE_SHUTDOWN)

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
