"""What crosses the RPC connection besides the schema: error markers.

Cap'n Proto carries a server-side failure as text. The node puts one marker,
``[logos-p2p:<kind>] message``, on the last line of that text; the client reads
the *last* marker back and rebuilds the typed error. :func:`error_to_marker`
and :func:`marker_to_error` are the two halves of that mapping and the only
place it lives.

Length-prefixed framing lives in :mod:`logos_p2p._frames`.
"""

from __future__ import annotations

import re

from . import errors as e

MARKER_RE = re.compile(r"\[logos-p2p:(?P<kind>[a-z-]+)(?::(?P<cause>[A-Za-z]+))?\] ?(?P<message>[^\n]*)")

# kind -> error class, for kinds that carry no cause
_KINDS: dict[str, type[e.LogosP2PError]] = {
    "stream-closed": e.StreamClosed,
    "busy": e.Busy,
    "node-shutdown": e.NodeShutdown,
    "protocol-not-supported": e.ProtocolNotSupported,
    "peer-unreachable": e.PeerUnreachable,
    "negotiation-failed": e.NegotiationFailed,
    "timeout": e.Timeout,
    "invalid-argument": e.InvalidArgument,
    "protocol-in-use": e.ProtocolInUse,
    "limit-exceeded": e.LimitExceeded,
    "frame-too-large": e.FrameTooLarge,
    "end-of-stream": e.EndOfStream,
}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


def error_to_marker(exc: e.LogosP2PError) -> str:
    """The marker text for ``exc`` (the node side of the mapping)."""
    message = str(exc).replace("\n", " ")
    if isinstance(exc, e.NodeShutdown):
        return f"[logos-p2p:node-shutdown] {message}"
    if isinstance(exc, e.StreamReset):
        return f"[logos-p2p:stream-reset:{exc.cause.value}] {message}"
    for cls in type(exc).__mro__:
        kind = _KIND_OF.get(cls)
        if kind is not None:
            return f"[logos-p2p:{kind}] {message}"
    return f"[logos-p2p:internal] {message}"


def marker_to_error(text: str) -> e.LogosP2PError | None:
    """The typed error for the last marker in ``text``; None without one."""
    matches = list(MARKER_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    kind, cause_name, message = m["kind"], m["cause"], m["message"].strip()
    if kind == "stream-reset":
        return e.reset_error(e.Cause.parse(cause_name), message)
    cls = _KINDS.get(kind)
    if cls is None:
        return e.RPCError(message or text)
    return cls(message)


class RemoteError(Exception):
    """Raised by node-side RPC methods; its text is exactly one marker."""

    def __init__(self, error: e.LogosP2PError) -> None:
        super().__init__(error_to_marker(error))
        self.error = error


def last_line(exc: BaseException) -> str:
    """The last line of an error's text (where a marker, or the gist, is): for one-line logs
    and messages; the type's name when it has no text."""
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
