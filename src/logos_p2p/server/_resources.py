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

import ctypes
import errno
import logging
import os
import resource
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

from ..errors import LimitExceeded

log = logging.getLogger("logos_p2p.node")

KiB: Final = 1024
MiB: Final = 1024 * KiB

# what the kernel answers when it has no descriptor, buffer or memory left: that one
# stream or connection fails, never the node
RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
STREAM_COST: Final = 32 * KiB  # bookkeeping of one stream in the node (measured: 24 KiB socket, 40 KiB push)
# Of a memory budget (the most the node's RSS may grow), the share its buffers' bytes may
# take; the rest is what the interpreter spends around them: allocator slack, the copies
# in flight, the objects of each stream (RSS growth / bytes charged, at a full budget:
# 1.3x on the socket path, 1.4x on the push path; see tune_allocator).
DATA_SHARE: Final = (2, 3)
LOG_INTERVAL: Final = 10.0  # seconds between two log lines about one kind of refusal
STATUS_PEERS: Final = 16  # busiest peer/source scopes shown in status

# resource names, as status shows them
STREAMS, STREAMS_IN, STREAMS_OUT = "streams", "streamsIn", "streamsOut"
CONNS_IN, CONNS_OUT = "connsIn", "connsOut"
MEMORY, FDS = "memory", "fds"
MODULES, HANDSHAKES = "modules", "handshakes"
OPENS, DIALS, POLLS = "opens", "dials", "polls"
NEGOTIATING = "negotiating"

_WHAT = {
    STREAMS: "streams",
    STREAMS_IN: "inbound streams",
    STREAMS_OUT: "outbound streams",
    CONNS_IN: "inbound connections",
    CONNS_OUT: "outbound connections",
    MEMORY: "bytes of memory",
    FDS: "file descriptors",
    MODULES: "modules",
    HANDSHAKES: "RPC handshakes",
    OPENS: "stream opens in progress",
    DIALS: "dials in progress",
    POLLS: "waiting calls",
    NEGOTIATING: "streams negotiating",
}

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


def _limit(default: int, flag: str, help: str, unit: str = "N") -> Any:
    return field(default=default, metadata={"flag": flag, "help": help, "unit": unit})


@dataclass
class ResourceLimits:
    """Every limit the node enforces; each field is a ``logos-p2p serve`` flag (its metadata).

    0 means "derive it": :func:`derive_limits` fills those from the memory
    budget and the descriptors the process may open.
    """

    memory: int = _limit(256 * MiB, "--memory-budget", "how far the node's memory may grow for streams", "BYTES")
    memory_per_peer: int = _limit(0, "--memory-per-peer", "of it, one remote peer (default: an eighth)", "BYTES")
    memory_per_module: int = _limit(0, "--memory-per-module", "of it, one module (default: half)", "BYTES")
    stream_window: int = _limit(
        16 * MiB,
        "--stream-window",
        "most a peer may send on one stream before the node reads: yamux's window starts at 256 KiB "
        "and grows while the stream is read fast and memory has room",
        "BYTES",
    )
    streams: int = _limit(0, "--max-streams", "inbound, and outbound, streams (default: from memory and fds)")
    streams_per_peer: int = _limit(0, "--max-streams-per-peer", "each way, for one remote peer (default: an eighth)")
    streams_per_protocol: int = _limit(0, "--max-streams-per-protocol", "each way, for one protocol id")
    streams_per_module: int = _limit(4096, "--max-streams-per-module", "both ways together, for one module")
    negotiating: int = _limit(256, "--max-negotiating", "inbound streams still negotiating a protocol")
    negotiating_per_peer: int = _limit(128, "--max-negotiating-per-peer", "of them, from one peer")
    connections: int = _limit(256, "--max-connections", "libp2p connections, each way")
    connections_per_peer: int = _limit(4, "--max-connections-per-peer", "each way, with one peer")
    connections_per_ip: int = _limit(16, "--max-connections-per-ip", "inbound, still upgrading, from one address")
    upgrading: int = _limit(64, "--max-upgrading", "inbound connections still upgrading (security, muxer)")
    fds: int = _limit(0, "--max-fds", "descriptors for connections, streams, modules (default: RLIMIT_NOFILE)")
    fd_reserve: int = _limit(0, "--fd-reserve", "descriptors kept for everything else (default: 1/16, >= 32)")
    modules: int = _limit(256, "--max-modules", "RPC connections")
    handshakes: int = _limit(64, "--max-handshakes", "TCP RPC connections not yet authenticated")
    handshakes_per_ip: int = _limit(8, "--max-handshakes-per-ip", "of them, from one address")
    opens: int = _limit(1024, "--max-opens", "stream opens in progress")
    opens_per_module: int = _limit(128, "--max-opens-per-module", "of them, for one module")
    dials: int = _limit(128, "--max-dials", "connectPeer calls in progress")
    dials_per_module: int = _limit(16, "--max-dials-per-module", "of them, for one module")
    polls: int = _limit(4096, "--max-polls", "calls that wait for an event (waitShutdown)")
    polls_per_module: int = _limit(64, "--max-polls-per-module", "of them, for one module")

    def check(self) -> None:
        """Raise ValueError for a limit no node can run with."""
        for f in fields(self):
            value = getattr(self, f.name)
            flag = f.metadata["flag"]
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{flag} must be a non-negative integer")
            if value == 0 and f.default != 0:
                raise ValueError(f"{flag} must be positive (only derived limits take 0)")
        if self.memory < 4 * MiB:
            raise ValueError("the memory budget must be at least 4 MiB")
        if self.stream_window < 256 * KiB:
            raise ValueError("the stream window must be at least 256 KiB (yamux's initial window)")


def resource_flags() -> list[tuple[str, str, str, int, str]]:
    """(field, flag, unit, default, help) of every limit, for the command line."""
    return [
        (f.name, f.metadata["flag"], f.metadata["unit"], f.default, f.metadata["help"])  # type: ignore[misc]
        for f in fields(ResourceLimits)
    ]


def descriptor_limit() -> int:
    """RLIMIT_NOFILE after raising the soft limit to the hard one (as far as the kernel allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            log.warning("could not raise the descriptor limit from %d to %d", soft, target)
    return int(soft) if soft != resource.RLIM_INFINITY else int(target)


def open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 16


def derive_limits(given: ResourceLimits, nofile: int, in_use: int) -> ResourceLimits:
    """Fill the derived limits (those left at 0) from the memory budget and the descriptors.

    Descriptors: ``nofile`` minus those open at start, minus a reserve for
    everything the node does not count (logs, DNS, epoll, a burst of accepts).
    Each libp2p connection takes one, each module two (RPC and data channel),
    each stream on the local data channel one. Streams take what connections
    and modules leave, within the memory budget (:data:`STREAM_COST` each),
    and one peer may hold an eighth: five greedy peers still leave room.
    """
    limits = replace(given)
    if not limits.fd_reserve:
        limits.fd_reserve = max(32, nofile // 16)
    if not limits.fds:
        limits.fds = max(nofile - in_use - limits.fd_reserve, 16)
    if not limits.memory_per_peer:
        limits.memory_per_peer = limits.memory // 8
    if not limits.memory_per_module:
        limits.memory_per_module = limits.memory // 2
    if not limits.streams:
        for_streams = limits.fds - 2 * limits.connections - 2 * min(limits.modules, 64)
        limits.streams = max(16, min(16384, limits.memory // (2 * STREAM_COST), for_streams))
    if not limits.streams_per_peer:
        limits.streams_per_peer = max(4, limits.streams // 8)
    if not limits.streams_per_protocol:
        limits.streams_per_protocol = limits.streams
    return limits


def _data(budget: int) -> int:
    """The bytes buffers may hold within a memory ``budget`` (see DATA_SHARE)."""
    return budget * DATA_SHARE[0] // DATA_SHARE[1]


def tune_allocator() -> None:
    """Give every block of 64 KiB or more (a yamux frame, a buffer) a mapping of its own,
    returned to the system when freed, so that the node's RSS follows what its buffers hold
    instead of the most they ever held. Without it a flood's churn of stream buffers
    fragments the heap: at a full 64 MiB budget, RSS grew by 141 MiB on the push path
    (57 MiB with it) and 85 MiB on the socket path (54 MiB)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * KiB)  # M_MMAP_THRESHOLD: blocks this large get their own mapping
        libc.mallopt(-1, 256 * KiB)  # M_TRIM_THRESHOLD: give back the heap's top beyond this
    except (OSError, AttributeError):  # not glibc
        pass


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

    def __init__(self, manager: ResourceManager, scopes: list[Scope], resource_: str, amount: int) -> None:
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


class MemoryAccount:
    """The memory one user holds, charged to its scopes as it changes (see the module docstring)."""

    __slots__ = ("_manager", "closed", "scopes", "used")

    def __init__(self, manager: ResourceManager, scopes: list[Scope]) -> None:
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

    def reserve(self, amount: int) -> bool:
        """Charge ``amount`` bytes if every scope has room; count and log a refusal."""
        scope = self.refusing(amount)
        if scope is not None:
            self._manager.refused(scope, MEMORY, f"of {amount} bytes: over the limit of {scope.name}")
            return False
        self.force(amount)
        return True

    def charge(self, amount: int) -> None:
        """:meth:`reserve`, raising LimitExceeded that names the scope without room."""
        scope = self.refusing(amount)
        if scope is not None:
            self._manager.refused(scope, MEMORY, f"of {amount} bytes: over the limit of {scope.name}")
            raise LimitExceeded(f"over the limit of {scope.name}: {scope.mem_limit} {_WHAT[MEMORY]}")
        self.force(amount)

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

    def __init__(self, manager: ResourceManager, direction: str, peer: Scope, module: Scope | None = None) -> None:
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
        lim = limits
        self.system = self._scope(
            "system",
            "system",
            {
                STREAMS_IN: lim.streams,
                STREAMS_OUT: lim.streams,
                CONNS_IN: lim.connections,
                CONNS_OUT: lim.connections,
                MEMORY: _data(lim.memory),
                FDS: lim.fds,
                MODULES: lim.modules,
                HANDSHAKES: lim.handshakes,
                OPENS: lim.opens,
                DIALS: lim.dials,
                POLLS: lim.polls,
            },
        )
        self.transient = self._scope("transient", "transient", {NEGOTIATING: lim.negotiating, CONNS_IN: lim.upgrading})

    # -- scopes -------------------------------------------------------------------------

    def _scope(self, kind: str, name: str, limits: Mapping[str, int]) -> Scope:
        scope = self._scopes.get(name)
        if scope is None:
            scope = self._scopes[name] = Scope(kind, name, limits)
        return scope

    def peer(self, peer_id: str) -> Scope:
        lim = self.limits
        return self._scope(
            "peer",
            f"peer:{peer_id}",
            {
                STREAMS_IN: lim.streams_per_peer,
                STREAMS_OUT: lim.streams_per_peer,
                CONNS_IN: lim.connections_per_peer,
                CONNS_OUT: lim.connections_per_peer,
                MEMORY: _data(lim.memory_per_peer),
                NEGOTIATING: lim.negotiating_per_peer,
            },
        )

    def protocol(self, proto: str) -> Scope:
        n = self.limits.streams_per_protocol
        return self._scope("protocol", f"protocol:{proto}", {STREAMS_IN: n, STREAMS_OUT: n})

    def module(self, module_id: int) -> Scope:
        lim = self.limits
        return self._scope(
            "module",
            f"module:{module_id}",
            {
                STREAMS: lim.streams_per_module,
                MEMORY: _data(lim.memory_per_module),
                OPENS: lim.opens_per_module,
                DIALS: lim.dials_per_module,
                POLLS: lim.polls_per_module,
            },
        )

    def source(self, ip: str) -> Scope:
        lim = self.limits
        return self._scope(
            "source", f"source:{ip}", {CONNS_IN: lim.connections_per_ip, HANDSHAKES: lim.handshakes_per_ip}
        )

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
