"""What one request may carry: the bounds both the node and the client library check.

The node checks every request it gets (a module may be written without this
library); the client checks the same bounds before it sends, so a module using
the library gets :class:`~logos_p2p.errors.InvalidArgument` at once instead of
a refusal from the node -- or, on the data channel, a datagram the node cannot
read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

from .errors import InvalidArgument

MAX_PROTOCOL_ID: Final = 512  # bytes; multistream-select frames are short lines
MAX_PROTOCOLS: Final = 64  # protocol ids in one register or open
MAX_DIAL_ADDRS: Final = 64  # addresses one open request may ask the node to dial
MAX_ADDR: Final = 1024  # bytes of one multiaddr
MAX_PEER_ID: Final = 128  # bytes of a peer id (base58 of a multihash: 46-52 in practice)
MAX_CHANNEL_MESSAGE: Final = 64 * 1024  # the largest data channel message the node accepts
MAX_PEER_EVENT_QUEUE: Final = 4096  # peer events the node holds for one subscriber
MAX_TIMEOUT_MS: Final = 24 * 3600 * 1000  # a timeout travels in milliseconds; 0 = the node's default


def timeout_to_ms(timeout: float | None) -> int:
    """A timeout in seconds (None: the node's default) as it travels."""
    if timeout is None:
        return 0
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise InvalidArgument(f"a timeout must be a positive number of seconds, not {timeout!r}")
    ms = max(1, round(timeout * 1000))
    if ms > MAX_TIMEOUT_MS:
        raise InvalidArgument(f"a timeout of {timeout:g} s is over {MAX_TIMEOUT_MS // 3_600_000} hours")
    return ms


def timeout_from_ms(ms: int, default: float) -> float:
    """A timeout as it arrived, in seconds (0: ``default``)."""
    if ms > MAX_TIMEOUT_MS:
        raise InvalidArgument(f"timeout over {MAX_TIMEOUT_MS} ms")
    return ms / 1000 if ms else default


def validate_protocol_ids(protocols: Iterable[str], max_count: int = MAX_PROTOCOLS) -> tuple[str, ...]:
    """Check and de-duplicate protocol ids; raise InvalidArgument."""
    out: list[str] = []
    for proto in protocols:
        if not isinstance(proto, str) or not proto:
            raise InvalidArgument("a protocol id must be a non-empty string")
        if not proto.startswith("/"):
            raise InvalidArgument(f"a protocol id must start with '/': {proto!r}")
        if len(proto.encode()) > MAX_PROTOCOL_ID:
            raise InvalidArgument(f"a protocol id must be at most {MAX_PROTOCOL_ID} bytes")
        if any(ch in proto for ch in "\n\r\0") or not proto.isprintable():
            raise InvalidArgument(f"a protocol id must be printable, on one line: {proto!r}")
        if proto not in out:
            out.append(proto)
        if len(out) > max_count:
            raise InvalidArgument(f"at most {max_count} protocol ids per call")
    if not out:
        raise InvalidArgument("at least one protocol id is needed")
    return tuple(out)


def validate_open(peer_id: str, protocols: Iterable[str], addrs: Iterable[str]) -> tuple[str, ...]:
    """The protocol ids of an open request, checked along with its peer id and addresses."""
    if len(peer_id.encode()) > MAX_PEER_ID:
        raise InvalidArgument(f"a peer id is at most {MAX_PEER_ID} bytes")
    ids = validate_protocol_ids(protocols)
    for count, addr in enumerate(addrs, 1):
        if count > MAX_DIAL_ADDRS:
            raise InvalidArgument(f"at most {MAX_DIAL_ADDRS} addresses")
        if len(addr.encode()) > MAX_ADDR:
            raise InvalidArgument(f"a multiaddr is at most {MAX_ADDR} bytes")
    return ids


def peer_named(peer_id: str, addrs: Iterable[str]) -> str:
    """The peer an open request is for: ``peer_id``, or when it is "" the peer its
    addresses name (each ending in ``/p2p/<peer id>``, all the same one)."""
    if peer_id:
        return peer_id
    named = {addr.rsplit("/p2p/", 1)[1] for addr in addrs if "/p2p/" in addr}
    if len(named) != 1:
        raise InvalidArgument(
            "a peer id is needed, or addresses that end in /p2p/<peer id>"
            if not named
            else f"the addresses name {len(named)} peers; give the peer id"
        )
    return named.pop()
