"""The handles that keep the resource manager's books (see :mod:`._resources`).

* :class:`Scope` -- one scope's limits and use;
* :class:`Grant` -- a count reserved in some scopes, released exactly once;
* :class:`MemoryAccount` -- the memory one user holds, charged as it changes;
* :class:`StreamSlot` -- one stream's place: transient until negotiated, then its
  protocol's and module's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from ..errors import LimitExceeded
from ._limits import _WHAT, MEMORY, NEGOTIATING, STREAM_COST, STREAMS, STREAMS_IN, STREAMS_OUT


class Keeper(Protocol):
    """What the handles ask of their resource manager."""

    live: int
    transient: Scope

    def grant(self, resource_: str, *scopes: Scope, amount: int = 1, system: bool = True) -> Grant: ...
    def memory_account(self, *scopes: Scope) -> MemoryAccount: ...
    def refused(self, scope: Scope, resource_: str, detail: str = "") -> None: ...
    def _take(self, scopes: list[Scope], resource_: str, amount: int) -> None: ...
    def _give_back(self, scopes: list[Scope], resource_: str, amount: int) -> None: ...
    def _forget_idle(self, scopes: Iterable[Scope]) -> None: ...


class Scope:
    """One scope's limits and use. ``memory`` has slots of its own: it is on the byte path."""

    __slots__ = ("kind", "limits", "mem_limit", "mem_used", "name", "refs", "used")

    def __init__(self, kind: str, name: str, limits: Mapping[str, int]) -> None:
        self.kind = kind
        self.name = name
        self.limits = {k: v for k, v in limits.items() if k != MEMORY}
        self.used: Counter[str] = Counter()
        self.mem_limit = limits.get(MEMORY, 1 << 62)
        self.mem_used = 0
        self.refs = 0  # grants and accounts holding this scope

    def __repr__(self) -> str:
        return f"<Scope {self.name}>"

    @property
    def idle(self) -> bool:
        return self.refs == 0 and self.mem_used == 0 and not +self.used

    def room(self, resource_: str, amount: int) -> bool:
        if resource_ == MEMORY:
            return self.mem_used + amount <= self.mem_limit
        limit = self.limits.get(resource_)
        return limit is None or self.used[resource_] + amount <= limit


class Grant:
    """A count reserved in some scopes; :meth:`release` gives it back, once."""

    __slots__ = ("_manager", "amount", "released", "resource", "scopes")

    def __init__(self, manager: Keeper, scopes: list[Scope], resource_: str, amount: int) -> None:
        self._manager = manager
        self.scopes = scopes
        self.resource = resource_
        self.amount = amount
        self.released = False

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Grant {self.amount} {self.resource} in {[s.name for s in self.scopes]} {state}>"

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._manager._give_back(self.scopes, self.resource, self.amount)
        self._manager.live -= 1

    def move(self, drop: Sequence[Scope] = (), add: Sequence[Scope] = ()) -> None:
        """Leave the scopes in ``drop`` and join those in ``add`` (raises LimitExceeded, changing nothing)."""
        if self.released:
            raise LimitExceeded("this reservation was already released")
        self._manager._take(list(add), self.resource, self.amount)
        keep = [s for s in self.scopes if s not in drop]
        self._manager._give_back([s for s in self.scopes if s in drop], self.resource, self.amount)
        self.scopes = keep + list(add)


def release_all(grants: Iterable[Grant]) -> None:
    for grant in grants:
        grant.release()


class MemoryAccount:
    """The memory one user holds, charged to its scopes as it changes (see the module docstring)."""

    __slots__ = ("_manager", "closed", "scopes", "used")

    def __init__(self, manager: Keeper, scopes: list[Scope]) -> None:
        self._manager = manager
        self.scopes = scopes
        self.used = 0
        self.closed = False
        for scope in scopes:
            scope.refs += 1
        manager.live += 1

    def __repr__(self) -> str:
        return f"<MemoryAccount {self.used} in {[s.name for s in self.scopes]}>"

    def refusing(self, amount: int) -> Scope | None:
        """The first scope without room for ``amount`` more bytes, or None."""
        for scope in self.scopes:
            if scope.mem_used + amount > scope.mem_limit:
                return scope
        return None

    def _take(self, amount: int) -> Scope | None:
        """Charge ``amount`` bytes if every scope has room, else count and log the refusal
        and return the scope without room."""
        scope = self.refusing(amount)
        if scope is not None:
            self._manager.refused(scope, MEMORY, f"of {amount} bytes: over the limit of {scope.name}")
            return scope
        self.force(amount)
        return None

    def reserve(self, amount: int) -> bool:
        """Charge ``amount`` bytes if every scope has room (a refusal is counted and logged)."""
        return self._take(amount) is None

    def charge(self, amount: int) -> None:
        """:meth:`reserve`, raising LimitExceeded that names the scope without room."""
        scope = self._take(amount)
        if scope is not None:
            raise LimitExceeded(f"over the limit of {scope.name}: {scope.mem_limit} {_WHAT[MEMORY]}")

    def force(self, amount: int) -> None:
        """Charge bytes that are already in memory (moved, not new)."""
        if self.closed or not amount:
            return
        self.used += amount
        for scope in self.scopes:
            scope.mem_used += amount

    def release(self, amount: int) -> None:
        amount = min(amount, self.used)
        if amount <= 0:
            return
        self.used -= amount
        for scope in self.scopes:
            scope.mem_used -= amount

    def set(self, held: int) -> None:
        """Make the charge ``held`` bytes (what the user holds now)."""
        if held > self.used:
            self.force(held - self.used)
        elif held < self.used:
            self.release(self.used - held)

    def close(self) -> None:
        """Give everything back; later charges are ignored."""
        if self.closed:
            return
        self.release(self.used)
        self.closed = True
        self._manager.live -= 1
        for scope in self.scopes:
            scope.refs -= 1
        self._manager._forget_idle(self.scopes)


class StreamSlot:
    """What one stream holds: its place among the streams of the node, its peer and its
    protocol (by direction) and of its module (both directions together), its bookkeeping
    (:data:`STREAM_COST`), a place in the transient scope while it negotiates, and once it
    belongs to a module the account of the bytes the node holds for it.

    Created when the stream arrives (or before an open), :meth:`bind` gives it its
    protocol and module, :meth:`release` gives everything back, once.
    """

    __slots__ = ("_manager", "account", "cost", "count", "negotiating", "peer", "place")

    def __init__(self, manager: Keeper, direction: str, peer: Scope, module: Scope | None = None) -> None:
        self._manager = manager
        self.peer = peer
        self.account: MemoryAccount | None = None
        self.negotiating: Grant | None = None
        self.place: Grant | None = None
        self.count = manager.grant(STREAMS_IN if direction == "inbound" else STREAMS_OUT, peer)
        try:
            self.cost = manager.grant(MEMORY, peer, amount=STREAM_COST)
            if direction == "inbound":
                self.negotiating = manager.grant(NEGOTIATING, manager.transient, peer)
            if module is not None:
                self.bind(module=module)
        except LimitExceeded:
            self.release()
            raise

    def __repr__(self) -> str:
        return f"<StreamSlot {[s.name for s in self.count.scopes[1:]]}>"

    def negotiated(self) -> None:
        """The stream left the transient scope (it negotiated a protocol, or failed to)."""
        if self.negotiating is not None:
            self.negotiating.release()

    def bind(self, protocol: Scope | None = None, module: Scope | None = None) -> None:
        """Join its ``protocol`` and its ``module``: raises LimitExceeded, changing nothing."""
        joined: list[Grant] = []
        try:
            if protocol is not None:
                self.count.move(add=[protocol])
                joined.append(self.count)
            if module is not None:
                self.place = self._manager.grant(STREAMS, module, system=False)
                self.cost.move(add=[module])
        except LimitExceeded:
            if self.place is not None and module is not None and module in self.place.scopes:
                self.place.release()
                self.place = None
            if joined and protocol is not None:
                self.count.move(drop=[protocol])
            raise
        if module is not None:
            self.account = self._manager.memory_account(module, self.peer)

    @property
    def module(self) -> Scope | None:
        return self.place.scopes[0] if self.place is not None else None

    @property
    def released(self) -> bool:
        return self.count.released

    def release(self) -> None:
        for name in ("count", "cost", "negotiating", "place"):
            grant = getattr(self, name, None)
            if grant is not None:
                grant.release()
        if self.account is not None:
            self.account.close()
