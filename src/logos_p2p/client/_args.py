"""The arguments of the client's calls, checked before they travel, and the grace given
to the node's answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from .._requests import validate_open
from ..errors import InvalidArgument, Timeout

T = TypeVar("T")

DEFAULT_OPEN_TIMEOUT = 30.0


def _texts(values: Sequence[str] | None, what: str) -> list[str]:
    """A list of strings that can travel as Cap'n Proto Text (UTF-8), or InvalidArgument."""
    if isinstance(values, (str, bytes)):
        raise InvalidArgument(f"{what} must be a list, not a single {type(values).__name__}")
    out = list(values or ())
    for value in out:
        if not isinstance(value, str):
            raise InvalidArgument(f"{what} must be strings, not {type(value).__name__}")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidArgument(f"{what} must be valid UTF-8: {value!r}") from None
    return out


OPEN_ANSWER_GRACE = 5.0  # beyond an open's own timeout, how long the node may take to answer


async def _answered(opening: Awaitable[T], timeout: float) -> T:
    """The node's answer to an open; Timeout if it does not come soon after ``timeout``."""
    try:
        return await asyncio.wait_for(opening, timeout + OPEN_ANSWER_GRACE)
    except TimeoutError:
        raise Timeout(f"the node did not answer an open within {timeout + OPEN_ANSWER_GRACE:g}s") from None


def open_args(peer_id: str, protocols: Sequence[str], addrs: Sequence[str] | None) -> tuple[str, list[str], list[str]]:
    """An open's (or a request's) peer, protocols and addresses, checked against the node's
    bounds before they travel."""
    protocols = _texts(protocols, "protocols")
    addrs = _texts(addrs, "addrs")
    [peer_id] = _texts([peer_id], "peer_id")
    validate_open(peer_id, protocols, addrs)
    return peer_id, protocols, addrs
