"""The state of one bridged stream, as a sans-I/O state machine.

Theory of operation
-------------------
A libp2p stream carries two byte flows: *send* (this side to the peer) and
*recv* (the peer to this side). Each ends cleanly with a half-close (EOF), or
both end at once with a reset. This side may also *close* the whole stream,
after which it neither reads nor writes.

Four events move the state, whoever observes them (the node's libp2p pump, an
RPC from the module, the client library):

    SEND_EOF   this side half-closed its send flow (``close_write``)
    RECV_EOF   the peer's half-close arrived (end of stream)
    CLOSE      this side closed the stream (``close``)
    RESET      the stream was reset; a :class:`~logos_p2p.errors.Cause` says why

The table below is the whole behaviour. A transition that is not in it is
illegal and raises the error a user should see (closing a reset stream raises
the reset, half-closing a closed stream raises :class:`StreamClosed`).
Late events are absorbed where they no longer matter: a reset that arrives
after both flows ended cleanly changes nothing, and the first reset's cause
is kept.

Two queries tell an operation what to do in the current state:
:meth:`StreamState.check_read` (read, report end of stream, or raise) and
:meth:`StreamState.check_write` (write, or raise).

Nothing here does I/O or knows about trio, asyncio, capnp or libp2p; the node
and the client library each drive one instance per stream.
"""

from __future__ import annotations

import enum
from typing import Final

from .errors import Cause, StreamClosed, StreamReset, reset_error


class State(enum.Enum):
    OPEN = "open"  # both flows open
    SEND_CLOSED = "send-closed"  # we half-closed; still reading
    RECV_CLOSED = "recv-closed"  # the peer half-closed; still writing
    DONE = "done"  # both flows ended cleanly
    CLOSED = "closed"  # we closed the stream
    RESET = "reset"  # reset; see StreamState.cause


class Event(enum.Enum):
    SEND_EOF = "send-eof"
    RECV_EOF = "recv-eof"
    CLOSE = "close"
    RESET = "reset"


S, E = State, Event

TRANSITIONS: Final[dict[State, dict[Event, State]]] = {
    S.OPEN: {
        E.SEND_EOF: S.SEND_CLOSED,
        E.RECV_EOF: S.RECV_CLOSED,
        E.CLOSE: S.CLOSED,
        E.RESET: S.RESET,
    },
    S.SEND_CLOSED: {
        E.SEND_EOF: S.SEND_CLOSED,
        E.RECV_EOF: S.DONE,
        E.CLOSE: S.CLOSED,
        E.RESET: S.RESET,
    },
    S.RECV_CLOSED: {
        E.SEND_EOF: S.DONE,
        E.RECV_EOF: S.RECV_CLOSED,
        E.CLOSE: S.CLOSED,
        E.RESET: S.RESET,
    },
    S.DONE: {
        E.SEND_EOF: S.DONE,
        E.RECV_EOF: S.DONE,
        E.CLOSE: S.CLOSED,
        E.RESET: S.DONE,
    },
    S.CLOSED: {
        E.RECV_EOF: S.CLOSED,
        E.CLOSE: S.CLOSED,
        E.RESET: S.CLOSED,
    },
    S.RESET: {
        E.RECV_EOF: S.RESET,
        E.RESET: S.RESET,
    },
}

READABLE: Final = frozenset({S.OPEN, S.SEND_CLOSED})
AT_EOF: Final = frozenset({S.RECV_CLOSED, S.DONE})
WRITABLE: Final = frozenset({S.OPEN, S.RECV_CLOSED})
FINISHED: Final = frozenset({S.DONE, S.CLOSED, S.RESET})


class StreamState:
    """One stream's state; see the module docstring."""

    __slots__ = ("cause", "message", "state")

    def __init__(self) -> None:
        self.state = State.OPEN
        self.cause: Cause | None = None
        self.message = ""

    def __repr__(self) -> str:
        extra = f" cause={self.cause.value}" if self.cause else ""
        return f"<StreamState {self.state.value}{extra}>"

    def handle(self, event: Event, cause: Cause | None = None, message: str = "") -> State:
        """Apply ``event``; raise the user-facing error if it is illegal here."""
        new = TRANSITIONS[self.state].get(event)
        if new is None:
            raise self.error()
        if new is S.RESET and self.state is not S.RESET:
            if cause is None:
                raise ValueError("a reset needs a cause")
            self.cause = cause
            self.message = message
        self.state = new
        return new

    def reset(self, cause: Cause, message: str = "") -> bool:
        """Apply RESET; True if this call moved the stream into RESET."""
        before = self.state
        self.handle(E.RESET, cause, message)
        return before is not S.RESET and self.state is S.RESET

    def error(self) -> StreamClosed | StreamReset:
        """The error an operation that is not allowed in this state raises."""
        if self.state is S.RESET:
            assert self.cause is not None
            return reset_error(self.cause, self.message)
        if self.state is S.CLOSED:
            return StreamClosed("the stream is closed")
        return StreamClosed("the stream is closed for writing")

    def check_read(self) -> bool:
        """True: reading may proceed. False: end of stream. Raises otherwise."""
        if self.state in READABLE:
            return True
        if self.state in AT_EOF:
            return False
        raise self.error()

    def check_write(self) -> None:
        if self.state not in WRITABLE:
            raise self.error()

    @property
    def finished(self) -> bool:
        """No byte will flow any more (DONE, CLOSED or RESET)."""
        return self.state in FINISHED

    @property
    def is_reset(self) -> bool:
        return self.state is S.RESET
