"""The logos-p2p error family, shared by the client library and the node.

The types mirror what happened to a stream, like trio's and anyio's families:

* :class:`StreamClosed` -- *you* closed it (or its write side) and then used it;
* :class:`StreamReset` -- it *broke*: the remote peer, the connection, the node
  or a failure reset it. ``cause`` says which; the subclasses
  :class:`ConnectionLost`, :class:`StreamTimeout` and :class:`NodeShutdown`
  name the common causes;
* :class:`EndOfStream` -- the peer half-closed cleanly before the bytes a
  framed read needed (``read()`` itself returns ``b""`` at end of stream);
* :class:`Busy` -- two tasks used one direction of a stream at once.

Everything here is plain Python: no trio, asyncio, capnp or libp2p.
"""

from __future__ import annotations

import enum


class Cause(enum.Enum):
    """Why a stream was reset. Values are the schema's ``Cause`` names."""

    LOCAL_RESET = "localReset"
    REMOTE_RESET = "remoteReset"
    CONNECTION_LOST = "connectionLost"
    NODE_SHUTDOWN = "nodeShutdown"
    MODULE_GONE = "moduleGone"
    CAPABILITY_DROPPED = "capabilityDropped"
    HANDLER_FAILED = "handlerFailed"
    TIMEOUT = "timeout"
    LIMIT_EXCEEDED = "limitExceeded"
    PROTOCOL_ERROR = "protocolError"

    @classmethod
    def parse(cls, name: object) -> Cause:
        """The cause named ``name`` as it travels (markers, sinks, the data channel); a name
        this version does not know is a protocol error."""
        try:
            return cls(str(name))
        except ValueError:
            return cls.PROTOCOL_ERROR


class LogosP2PError(Exception):
    """Base of every error raised by logos-p2p."""


# -- streams -------------------------------------------------------------------


class StreamError(LogosP2PError):
    """Base of the errors a stream operation raises."""


class StreamClosed(StreamError):
    """The stream (or its write side) was closed by this side, then used."""


class StreamReset(StreamError):
    """The stream was reset; no byte will flow in either direction again.

    ``cause`` is a :class:`Cause`. The original error, when there is one, is
    chained as ``__cause__``.
    """

    def __init__(self, message: str = "", cause: Cause = Cause.REMOTE_RESET) -> None:
        super().__init__(message or f"stream reset ({cause.value})")
        self.cause = cause


class ConnectionLost(StreamReset):
    """The libp2p connection carrying the stream closed or broke."""

    def __init__(self, message: str = "", cause: Cause = Cause.CONNECTION_LOST) -> None:
        super().__init__(message or "connection to the peer lost", cause)


class StreamTimeout(StreamReset):
    """The stream was reset because a deadline passed: it sat idle longer than
    the node's idle timeout, or a handler did not accept it in time."""

    def __init__(self, message: str = "", cause: Cause = Cause.TIMEOUT) -> None:
        super().__init__(message or "the stream timed out", cause)


class NodeUnavailable(LogosP2PError):
    """The node cannot be reached, or the RPC connection to it broke."""


class AuthenticationFailed(NodeUnavailable):
    """The node's TCP endpoint refused this client: no token, or the wrong one."""


class NodeShutdown(StreamReset, NodeUnavailable):
    """The node is shutting down: its streams are reset and calls fail.

    It is a :class:`StreamReset` so that stream code catching resets handles a
    shutdown too, and a :class:`NodeUnavailable` for everything else.
    """

    def __init__(self, message: str = "", cause: Cause = Cause.NODE_SHUTDOWN) -> None:
        super().__init__(message or "the node is shutting down", cause)


class NodeDisconnected(StreamReset, NodeUnavailable):
    """The RPC connection to the node broke without a shutdown notice."""

    def __init__(self, message: str = "", cause: Cause = Cause.MODULE_GONE) -> None:
        super().__init__(message or "the RPC connection to the node broke", cause)


class EndOfStream(StreamError):
    """The peer half-closed before a framed read had all its bytes."""


class IncompleteRead(EndOfStream):
    """End of stream in the middle of ``read_exactly`` or a frame.

    ``partial`` holds the bytes that did arrive; they are no longer buffered.
    """

    def __init__(self, message: str, partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial


class Busy(StreamError):
    """Another task is already reading (or writing) this stream."""


class FrameTooLarge(StreamError):
    """A length-prefixed frame is longer than the ``max_size`` given.

    The frame is left unread; the stream is usually best reset.
    """


# -- opening streams, registering -------------------------------------------------


class OpenStreamError(LogosP2PError):
    """An outbound stream could not be opened."""


class ProtocolNotSupported(OpenStreamError):
    """The remote peer speaks none of the requested protocol ids."""


class PeerUnreachable(OpenStreamError):
    """No connection to the peer could be made."""


class NegotiationFailed(OpenStreamError):
    """Protocol negotiation broke off: the peer reset or closed the stream mid-way."""


class Timeout(LogosP2PError, TimeoutError):
    """An operation's own timeout expired (opening a stream, dialing...)."""


class InvalidArgument(LogosP2PError, ValueError):
    """A parameter is malformed: protocol id, peer id, multiaddr, size..."""


class ProtocolInUse(LogosP2PError):
    """Another module registered that protocol id without sharing it."""


class LimitExceeded(LogosP2PError):
    """A node or client limit (streams, registrations, sizes) was reached."""


class RPCError(LogosP2PError):
    """The node answered with a failure logos-p2p does not know how to type."""


def reset_error(cause: Cause, message: str = "") -> StreamReset:
    """The :class:`StreamReset` subclass that names ``cause`` best."""
    if cause is Cause.CONNECTION_LOST:
        return ConnectionLost(message)
    if cause is Cause.NODE_SHUTDOWN:
        return NodeShutdown(message)
    if cause is Cause.MODULE_GONE:
        return NodeDisconnected(message)
    if cause is Cause.TIMEOUT:
        return StreamTimeout(message)
    return StreamReset(message, cause)


__all__ = [
    "AuthenticationFailed",
    "Busy",
    "Cause",
    "ConnectionLost",
    "EndOfStream",
    "FrameTooLarge",
    "IncompleteRead",
    "InvalidArgument",
    "LimitExceeded",
    "LogosP2PError",
    "NegotiationFailed",
    "NodeDisconnected",
    "NodeShutdown",
    "NodeUnavailable",
    "OpenStreamError",
    "PeerUnreachable",
    "ProtocolInUse",
    "ProtocolNotSupported",
    "RPCError",
    "StreamClosed",
    "StreamError",
    "StreamReset",
    "StreamTimeout",
    "Timeout",
]
