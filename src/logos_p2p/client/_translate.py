"""The client's one boundary for errors coming from the RPC connection.

Everything the node raises arrives as ``capnp.KjException``: its own failures
carry a marker (see ``logos_p2p._wire``); a broken connection is DISCONNECTED.
:func:`translate` maps both onto the logos-p2p family, chaining the original.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import capnp

from .._wire import marker_to_error
from ..errors import LogosP2PError, NodeDisconnected, NodeShutdown, NodeUnavailable, RPCError


def to_error(exc: BaseException, shutting_down: bool = False) -> LogosP2PError:
    """The typed error for an RPC failure ``exc``."""
    if isinstance(exc, LogosP2PError):
        return exc
    if isinstance(exc, capnp.KjException):
        if exc.type == "DISCONNECTED":
            if shutting_down:
                return NodeShutdown("the node shut down")
            return NodeDisconnected("the RPC connection to the node broke")
        typed = marker_to_error(exc.description or str(exc))
        if typed is not None:
            return typed
        return RPCError(_last_line(exc.description or str(exc)))
    if isinstance(exc, (ConnectionError, EOFError)):
        if shutting_down:
            return NodeShutdown("the node shut down")
        return NodeDisconnected(f"the RPC connection to the node broke: {exc}")
    if isinstance(exc, OSError):
        return NodeUnavailable(f"cannot reach the node: {exc}")
    return RPCError(f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def translate(shutting_down: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Raise RPC failures inside the block as logos-p2p errors."""
    try:
        yield
    except LogosP2PError:
        raise
    except (capnp.KjException, OSError, EOFError) as exc:
        raise to_error(exc, shutting_down()) from exc


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text
