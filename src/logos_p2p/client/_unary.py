"""Request/response, module side: ``Node.request`` and ``Node.serve`` as calls to the node
(which does the framing, the half-close and the close; see the schema)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import _schema
from .._requests import timeout_to_ms
from ..errors import InvalidArgument
from ._args import _answered, open_args

log = logging.getLogger("logos_p2p.client")
schema = _schema.load()

ServeFn = Callable[[bytes, "RequestInfo"], "bytes | Awaitable[bytes]"]


@dataclass(frozen=True)
class RequestInfo:
    """Who sent a request to a :meth:`Node.serve` function, and on which stream."""

    stream_id: int
    protocol: str
    remote_peer_id: str
    remote_addr: str


def _size(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 32:
        raise InvalidArgument(f"max_size must be a positive number of bytes, not {value!r}")
    return value


class _ResponderImpl(schema.Responder.Server):  # type: ignore[name-defined,misc]
    def __init__(self, fn: Callable[[bytes, RequestInfo], bytes | Awaitable[bytes]]) -> None:
        self._fn = fn

    async def respond(self, request: bytes, info: Any, **_: Any) -> bytes:
        about = RequestInfo(info.id, info.protocol, info.remotePeerId, info.remoteAddr)
        try:
            reply = self._fn(bytes(request), about)
            if inspect.isawaitable(reply):
                reply = await reply
            if not isinstance(reply, (bytes, bytearray, memoryview)):
                raise TypeError(f"a serve function must return bytes, not {type(reply).__name__}")
            return bytes(reply)
        except Exception:
            log.exception("the serve function for %s raised; the node resets that stream", about.protocol)
            raise


async def serve(
    cap: Any, protocols: tuple[str, ...], fn: ServeFn, max_size: int, timeout: float | None, share: bool
) -> Any:
    """The node's answer to ``serve`` (inside the caller's translate())."""
    options = {"share": share, "maxSize": _size(max_size), "timeoutMs": timeout_to_ms(timeout)}
    return await cap.serve(protocols=list(protocols), responder=_ResponderImpl(fn), options=options)


async def request(
    cap: Any,
    peer_id: str,
    protocols: Sequence[str],
    data: bytes | bytearray | memoryview,
    addrs: Sequence[str] | None,
    timeout: float,
    max_size: int,
    close_write: bool,
) -> bytes:
    """The reply to one request (inside the caller's translate())."""
    peer_id, protocols, addrs = open_args(peer_id, protocols, addrs)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"a request is bytes, not {type(data).__name__}")
    call = cap.request(
        peerId=peer_id,
        protocols=list(protocols),
        addrs=list(addrs),
        data=bytes(data),
        timeoutMs=timeout_to_ms(timeout),
        maxSize=_size(max_size),
        closeWrite=bool(close_write),
    )
    answer = await _answered(call, timeout)
    return bytes(answer.reply)
