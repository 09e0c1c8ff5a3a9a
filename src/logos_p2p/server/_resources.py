"""Admission: every stream, connection, buffer and descriptor the node takes is reserved here first.

Theory of operation
-------------------
The node is a bridge between two untrusted sides: anyone on the libp2p network
may dial it, and a module may be buggy or written without our library. Each
side can ask for more than the node has. As in go-libp2p's resource manager,
every use of a resource is charged, *before* it is taken, to a set of
**scopes**, and refused unless every scope has room:

    system                  the whole node
    transient               streams still negotiating, connections still upgrading
    peer:<id>               what one remote peer holds
    protocol:<id>           the streams of one protocol
    module:<n>              what one module holds: streams, buffers, calls in progress
    source:<ip>             connections and RPC handshakes from one address, before
                            anyone knows who is behind it

A charge names the system scope and the narrower scopes it belongs to, so one
peer, one protocol or one module can take only its *share* of the node, and
many of them together can never take more than the node. The module is the
second consumer of every budget: a stream is charged to its module as well as
to its peer.

Resources are counts (``streamsIn``, ``connsIn``, ``fds``, ``opens``...) and
``memory``: bytes of stream data held in the node -- the muxer's receive
buffers, the bridge's queues both ways, the data in flight to a module -- plus
a fixed :data:`STREAM_COST` per stream for its bookkeeping. Memory is charged
as buffers fill and released as they drain, so an idle stream costs only its
:data:`STREAM_COST`; a charge that may be refused is new data (a peer's bytes
arriving, a module's write), a charge that may not is data moving inside the
node.

Two kinds of handle keep the books:

* :class:`Grant` -- a count reserved in some scopes (one stream, one
  connection, one descriptor); released exactly once, whoever releases it;
  :meth:`Grant.move` re-homes it (a negotiated stream leaves the transient
  scope for its protocol and module);
* :class:`MemoryAccount` -- the memory one user (a connection's muxer
  buffers, one bridged stream) holds, charged to its scopes as it changes.

Every refusal is counted by scope kind and resource (``status``) and logged
at most once per scope kind and resource every :data:`LOG_INTERVAL` seconds,
with the number refused meanwhile: a flood never floods the log.

Nothing here does I/O or knows about trio, asyncio, capnp or libp2p.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..errors import LimitExceeded
from ._grants import Grant as Grant
from ._grants import MemoryAccount as MemoryAccount
from ._grants import Scope as Scope
from ._grants import StreamSlot as StreamSlot
from ._grants import release_all as release_all
from ._limits import _WHAT
from ._limits import CONNS_IN as CONNS_IN
from ._limits import CONNS_OUT as CONNS_OUT
from ._limits import DATA_SHARE as DATA_SHARE
from ._limits import DIALS as DIALS
from ._limits import FDS as FDS
from ._limits import HANDSHAKES as HANDSHAKES
from ._limits import LOG_INTERVAL as LOG_INTERVAL
from ._limits import MEMORY as MEMORY
from ._limits import MODULES as MODULES
from ._limits import NEGOTIATING as NEGOTIATING
from ._limits import OPENS as OPENS
from ._limits import POLLS as POLLS
from ._limits import RESOURCE_ERRNOS as RESOURCE_ERRNOS
from ._limits import STATUS_PEERS as STATUS_PEERS
from ._limits import STREAM_COST as STREAM_COST
from ._limits import STREAMS as STREAMS
from ._limits import STREAMS_IN as STREAMS_IN
from ._limits import STREAMS_OUT as STREAMS_OUT
from ._limits import KiB as KiB
from ._limits import MiB as MiB
from ._limits import ResourceLimits as ResourceLimits
from ._limits import _data as _data
from ._limits import derive_limits as derive_limits
from ._limits import descriptor_limit as descriptor_limit
from ._limits import open_descriptors as open_descriptors
from ._limits import resource_flags as resource_flags
from ._limits import tune_allocator as tune_allocator

log = logging.getLogger("logos_p2p.node")


# what one refusal refused, for the log
_NOUN = {
    STREAMS: "a stream",
    STREAMS_IN: "an inbound stream",
    STREAMS_OUT: "an outbound stream",
    CONNS_IN: "an inbound connection",
    CONNS_OUT: "an outbound connection",
    MEMORY: "data",
    FDS: "a descriptor",
    MODULES: "a module connection",
    HANDSHAKES: "an RPC handshake",
    OPENS: "a stream open",
    DIALS: "a dial",
    POLLS: "a waiting call",
    NEGOTIATING: "an inbound stream",
    "auth": "an RPC client",
    "channel": "a data channel message:",
    "outbox": "an inbound stream:",
}


# The resources each kind of scope bounds. The ResourceLimits field of one is its name
# without In/Out ("conns" spelled out), plus the kind's suffix: streamsIn of a peer
# scope is bounded by streams_per_peer.
_EACH_WAY = (STREAMS_IN, STREAMS_OUT, CONNS_IN, CONNS_OUT)
_BOUNDS = {
    "system": ("", (*_EACH_WAY, MEMORY, FDS, MODULES, HANDSHAKES, OPENS, DIALS, POLLS)),
    "peer": ("_per_peer", (*_EACH_WAY, MEMORY, NEGOTIATING)),
    "protocol": ("_per_protocol", (STREAMS_IN, STREAMS_OUT)),
    "module": ("_per_module", (STREAMS, MEMORY, OPENS, DIALS, POLLS)),
    "source": ("_per_ip", (CONNS_IN, HANDSHAKES)),
}


def _field(resource_: str, suffix: str) -> str:
    stem = resource_.removesuffix("In").removesuffix("Out")
    return ("connections" if stem == "conns" else stem) + suffix


class ResourceManager:
    """The only place that decides admission. See the module docstring."""

    def __init__(self, limits: ResourceLimits) -> None:
        self.limits = limits
        self.live = 0  # grants and accounts not yet released (0 when the node is idle)
        self.refusals: Counter[tuple[str, str]] = Counter()
        self._unlogged: Counter[tuple[str, str]] = Counter()
        self._last_log: dict[tuple[str, str], float] = {}
        self._last_detail: dict[tuple[str, str], str] = {}
        self._scopes: dict[str, Scope] = {}
        self.system = self._scope("system", "system")
        # streams still negotiating, and connections still upgrading
        self.transient = self._scopes["transient"] = Scope(
            "transient", "transient", {NEGOTIATING: limits.negotiating, CONNS_IN: limits.upgrading}
        )

    # -- scopes -------------------------------------------------------------------------

    def _scope(self, kind: str, name: str) -> Scope:
        """The scope ``name`` of ``kind``, made on first use (see _BOUNDS)."""
        scope = self._scopes.get(name)
        if scope is None:
            suffix, resources = _BOUNDS[kind]
            limits = {resource_: getattr(self.limits, _field(resource_, suffix)) for resource_ in resources}
            if MEMORY in limits:
                limits[MEMORY] = _data(limits[MEMORY])
            scope = self._scopes[name] = Scope(kind, name, limits)
        return scope

    def peer(self, peer_id: str) -> Scope:
        return self._scope("peer", f"peer:{peer_id}")

    def protocol(self, proto: str) -> Scope:
        return self._scope("protocol", f"protocol:{proto}")

    def module(self, module_id: int) -> Scope:
        return self._scope("module", f"module:{module_id}")

    def source(self, ip: str) -> Scope:
        return self._scope("source", f"source:{ip}")

    def _forget_idle(self, scopes: Iterable[Scope]) -> None:
        for scope in scopes:
            if scope.kind in ("peer", "protocol", "module", "source") and scope.idle:
                self._scopes.pop(scope.name, None)

    # -- reserving ------------------------------------------------------------------------

    def grant(self, resource_: str, *scopes: Scope, amount: int = 1, system: bool = True) -> Grant:
        """Reserve ``amount`` of ``resource_`` in the system scope (unless ``system`` is
        False) and ``scopes``, or raise :class:`LimitExceeded` naming the scope that had no
        room (counted, logged)."""
        chain = [self.system, *scopes] if system else list(scopes)
        self._take(chain, resource_, amount)
        self.live += 1
        return Grant(self, chain, resource_, amount)

    def try_grant(self, resource_: str, *scopes: Scope, amount: int = 1) -> Grant | None:
        """:meth:`grant`, but None instead of the exception (on the paths that just refuse)."""
        try:
            return self.grant(resource_, *scopes, amount=amount)
        except LimitExceeded:
            return None

    def _take(self, scopes: list[Scope], resource_: str, amount: int) -> None:
        for scope in scopes:
            if not scope.room(resource_, amount):
                limit = scope.mem_limit if resource_ == MEMORY else scope.limits[resource_]
                detail = f"over the limit of {scope.name}: {limit} {_WHAT.get(resource_, resource_)}"
                self.refused(scope, resource_, detail)
                raise LimitExceeded(detail)
        for scope in scopes:
            if resource_ == MEMORY:
                scope.mem_used += amount
            else:
                scope.used[resource_] += amount
            scope.refs += 1

    def _give_back(self, scopes: list[Scope], resource_: str, amount: int) -> None:
        for scope in scopes:
            if resource_ == MEMORY:
                scope.mem_used -= amount
            else:
                scope.used[resource_] -= amount
            scope.refs -= 1
        self._forget_idle(scopes)

    def stream(self, direction: str, peer_id: str, module: Scope | None = None) -> StreamSlot:
        """A place for one stream with ``peer_id`` (raises LimitExceeded)."""
        return StreamSlot(self, direction, self.peer(peer_id), module)

    def memory_account(self, *scopes: Scope) -> MemoryAccount:
        """A memory account charging ``scopes`` (narrowest first) and the system scope."""
        return MemoryAccount(self, [*scopes, self.system])

    # -- refusals -------------------------------------------------------------------------

    def refused(self, scope: Scope, resource_: str, detail: str = "") -> None:
        """Count a refusal; log one line per scope kind and resource per LOG_INTERVAL.

        ``detail`` completes "refused <what one refusal refused> ..." for the log.
        """
        key = (scope.kind, resource_)
        self.refusals[key] += 1
        self._unlogged[key] += 1
        self._last_detail[key] = detail or scope.name
        now = time.monotonic()
        if now - self._last_log.get(key, -LOG_INTERVAL) >= LOG_INTERVAL:
            self._flush_log(key, now)

    def _flush_log(self, key: tuple[str, str], now: float) -> None:
        count = self._unlogged.pop(key, 0)
        if not count:
            return
        self._last_log[key] = now
        kind, resource_ = key
        noun = _NOUN.get(resource_, resource_)
        detail = self._last_detail.get(key, kind)
        if count == 1:
            log.warning("refused %s %s", noun, detail)
        else:
            log.warning("refused %s %d times (%s scope), the last %s", noun, count, kind, detail)

    def flush_logs(self) -> None:
        """Log the refusals not yet logged (at shutdown, and from a periodic task)."""
        now = time.monotonic()
        for key in list(self._unlogged):
            if now - self._last_log.get(key, -LOG_INTERVAL) >= LOG_INTERVAL:
                self._flush_log(key, now)

    # -- what status shows -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        scopes = sorted(self._scopes.values(), key=_scope_order)
        busy = [s for s in scopes if s.kind in ("peer", "source")]
        busy.sort(key=lambda s: s.mem_used + sum(s.used.values()), reverse=True)
        shown = [s for s in scopes if s.kind not in ("peer", "source")] + busy[:STATUS_PEERS]
        for scope in shown:
            if scope.mem_limit < 1 << 62:
                rows.append({"scope": scope.name, "resource": MEMORY, "used": scope.mem_used, "limit": scope.mem_limit})
            for resource_, limit in scope.limits.items():
                rows.append({"scope": scope.name, "resource": resource_, "used": scope.used[resource_], "limit": limit})
        refusals = [
            {"scope": kind, "resource": resource_, "count": n} for (kind, resource_), n in sorted(self.refusals.items())
        ]
        return {"limits": rows, "refusals": refusals, "reservations": self.live}


_ORDER = {"system": 0, "transient": 1, "module": 2, "protocol": 3, "peer": 4, "source": 5}


def _scope_order(scope: Scope) -> tuple[int, str]:
    return _ORDER.get(scope.kind, 9), scope.name
