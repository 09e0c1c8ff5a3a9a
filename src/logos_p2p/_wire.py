"""What crosses the RPC connection besides the schema: error markers and varints.

Cap'n Proto carries a server-side failure as text. The node puts one marker,
``[logos-p2p:<kind>] message``, on the last line of that text; the client reads
the *last* marker back and rebuilds the typed error. :func:`error_to_marker`
and :func:`marker_to_error` are the two halves of that mapping and the only
place it lives.

Varints are unsigned LEB128, the framing of nim-libp2p's ``readLp``/``writeLp``.
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
        try:
            cause = e.Cause(cause_name)
        except ValueError:
            cause = e.Cause.PROTOCOL_ERROR
        return e.reset_error(cause, message)
    cls = _KINDS.get(kind)
    if cls is None:
        return e.RPCError(message or text)
    return cls(message)


class RemoteError(Exception):
    """Raised by node-side RPC methods; its text is exactly one marker."""

    def __init__(self, error: e.LogosP2PError) -> None:
        super().__init__(error_to_marker(error))
        self.error = error


# -- unsigned varints -------------------------------------------------------------

MAX_VARINT_LEN = 10  # 64-bit values


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint cannot encode a negative value")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(buf: bytes | bytearray | memoryview, start: int = 0) -> tuple[int, int] | None:
    """Decode a varint at ``buf[start:]``: ``(value, length)``, or None if incomplete.

    Raises ValueError for a varint longer than 10 bytes or a non-minimal one
    whose value overflows 64 bits.
    """
    value = 0
    shift = 0
    end = len(buf)
    for i in range(MAX_VARINT_LEN):
        pos = start + i
        if pos >= end:
            return None
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 64:
                raise ValueError("uvarint overflows 64 bits")
            return value, i + 1
        shift += 7
    raise ValueError("uvarint longer than 10 bytes")


def lp_frame(data: bytes) -> bytes:
    return encode_uvarint(len(data)) + data
