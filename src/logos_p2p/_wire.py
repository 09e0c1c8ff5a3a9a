"""What crosses the RPC connection besides the schema: error markers.

Cap'n Proto carries a server-side failure as text. The node puts one marker,
``[logos-p2p:<kind>] message``, on the last line of that text; the client reads
the *last* marker back and rebuilds the typed error. :func:`error_to_marker`
and :func:`marker_to_error` are the two halves of that mapping and the only
place it lives.

Kinds are spelled in camelCase, as the schema's ``Cause`` names are
(``streamReset:remoteReset``, ``invalidArgument``); the kebab-case of nodes before
0.2 (``stream-reset:remoteReset``, ``invalid-argument``) is still read. The node sends
a marker alone, never its traceback (:class:`RemoteError`), so a module in any
language reads one line.

Length-prefixed framing lives in :mod:`logos_p2p._frames`.
"""

from __future__ import annotations

import re

from . import errors as e

MARKER_RE = re.compile(r"\[logos-p2p:(?P<kind>[A-Za-z-]+)(?::(?P<cause>[A-Za-z]+))?\] ?(?P<message>[^\n]*)")

STREAM_RESET = "streamReset"  # followed by ":<Cause>"
INTERNAL = "internal"  # a failure of the node itself (its log has the details): RPCError

# kind -> error class, for kinds that carry no cause
_KINDS: dict[str, type[e.LogosP2PError]] = {
    "streamClosed": e.StreamClosed,
    "busy": e.Busy,
    "nodeShutdown": e.NodeShutdown,
    "protocolNotSupported": e.ProtocolNotSupported,
    "peerUnreachable": e.PeerUnreachable,
    "negotiationFailed": e.NegotiationFailed,
    "timeout": e.Timeout,
    "invalidArgument": e.InvalidArgument,
    "protocolInUse": e.ProtocolInUse,
    "limitExceeded": e.LimitExceeded,
    "frameTooLarge": e.FrameTooLarge,
    "endOfStream": e.EndOfStream,
}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


def _camel(kind: str) -> str:
    """A kind as it is spelled now (kebab-case, as older nodes sent it, made camelCase)."""
    head, *rest = kind.split("-")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def error_to_marker(exc: e.LogosP2PError) -> str:
    """The marker text for ``exc`` (the node side of the mapping)."""
    message = str(exc).replace("\n", " ")
    if isinstance(exc, e.NodeShutdown):
        return f"[logos-p2p:nodeShutdown] {message}"
    if isinstance(exc, e.StreamReset):
        return f"[logos-p2p:{STREAM_RESET}:{exc.cause.value}] {message}"
    for cls in type(exc).__mro__:
        kind = _KIND_OF.get(cls)
        if kind is not None:
            return f"[logos-p2p:{kind}] {message}"
    return f"[logos-p2p:{INTERNAL}] {message}"


def marker_to_error(text: str) -> e.LogosP2PError | None:
    """The typed error for the last marker in ``text``; None without one."""
    matches = list(MARKER_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    kind, cause_name, message = _camel(m["kind"]), m["cause"], m["message"].strip()
    if kind == STREAM_RESET:
        return e.reset_error(e.Cause.parse(cause_name), message)
    cls = _KINDS.get(kind)
    if cls is None:
        return e.RPCError(message or text)
    return cls(message)


class RemoteError(Exception):
    """Raised by node-side RPC methods; its text is exactly one marker, and it is all the
    module receives.

    pycapnp sends a failed server method's ``traceback.format_exception`` as the
    exception's description, which would show a remote module the node's files, code
    and Python version. This error has no traceback to format (``__traceback__`` reads
    None), so the description is one line: ``RemoteError: [logos-p2p:<kind>] message``.
    The node logs what it needs itself.
    """

    __module__ = "logos_p2p"  # the description's prefix: "logos_p2p.RemoteError: "

    def __init__(self, error: e.LogosP2PError) -> None:
        super().__init__(error_to_marker(error))
        self.error = error

    @property  # type: ignore[override]
    def __traceback__(self) -> None:
        return None

    @__traceback__.setter
    def __traceback__(self, _tb: object) -> None:
        pass


def last_line(exc: BaseException) -> str:
    """The last line of an error's text (where a marker, or the gist, is): for one-line logs
    and messages; the type's name when it has no text."""
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
