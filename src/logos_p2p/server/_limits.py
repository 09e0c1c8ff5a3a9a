"""The node's limits: what each is, its flag, and the defaults derived from the machine.

:class:`ResourceLimits` is every limit of the resource manager (:mod:`._resources`),
each with its ``logos-p2p serve`` flag (:func:`resource_flags` makes the CLI from it);
:func:`derive_limits` fills what was left at 0 from the descriptors the process may
open and the memory budget. Nothing here does I/O beyond asking the kernel its limits.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import resource
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

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

# what each resource counts, for messages
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
