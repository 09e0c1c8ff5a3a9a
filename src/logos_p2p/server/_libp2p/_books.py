"""What a gated yamux connection holds, charged to its peer's memory: the bytes in its
streams' buffers (:class:`_Buffers`) and the windows it granted them (:class:`_Streams`,
grown by :func:`_capped_autotune` only while memory has room). The gate (``_gate``)
installs them on the connections it admits."""

from __future__ import annotations

import functools
from typing import Any, Protocol

import trio
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE as YAMUX_WINDOW
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from ...errors import Cause
from .. import _resources as res
from ._io import reset_muxed


class GateView(Protocol):
    """What the books use of the node's Gate (``_gate.Gate``)."""

    window: int  # most one stream's receive window may grow to
    reader_bound: int  # most a stream's reader holds beyond the muxer
    swarm: Any

    def spawn(self, async_fn: Any) -> None: ...


class _Books:
    """What one gated connection holds: its grants, and its muxer's buffered bytes."""

    __slots__ = ("gate", "grants", "memory", "peer")

    def __init__(self, gate: GateView, grants: list[res.Grant], memory: res.MemoryAccount, peer: str) -> None:
        self.gate = gate
        self.grants = grants
        self.memory = memory
        self.peer = peer

    def close(self) -> None:
        res.release_all(self.grants)
        self.memory.close()


def _books(conn: Any) -> _Books | None:
    return getattr(conn, "_logos_books", None)


def _refuse(gate: GateView, muxed: YamuxStream, cause: Cause, message: str) -> None:
    """Drop what a peer sent on ``muxed`` and reset the stream (from sync code)."""
    if getattr(muxed, "_logos_refused", None) is not None:
        return
    muxed._logos_refused = (cause, message)  # type: ignore[attr-defined]

    async def reset_it() -> None:
        await reset_muxed(muxed)

    gate.spawn(reset_it)


class _Buffer(bytearray):
    """One yamux stream's receive buffer, whose bytes are charged to the peer's memory."""

    __slots__ = ("books", "conn", "gate", "sid")

    def __init__(self, conn: Yamux, sid: int, books: _Books, gate: GateView) -> None:
        super().__init__()
        self.conn = conn
        self.sid = sid
        self.books = books
        self.gate = gate

    def extend(self, data: Any) -> None:  # yamux's handle_incoming: before it lowers recv_window
        n = len(data)
        stream = self.conn.streams.get(self.sid)
        if stream is None or getattr(stream, "_logos_refused", None) is not None:
            return
        if n > stream.recv_window:
            _refuse(
                self.gate,
                stream,
                Cause.PROTOCOL_ERROR,
                f"the peer sent {n} bytes into a receive window of {stream.recv_window}",
            )
            return
        if not self.books.memory.reserve(n):
            _refuse(self.gate, stream, Cause.LIMIT_EXCEEDED, f"the peer {self.books.peer} holds its share of memory")
            return
        super().extend(data)

    def __delitem__(self, key: Any) -> None:
        before = len(self)
        super().__delitem__(key)
        self.books.memory.release(before - len(self))

    def clear(self) -> None:
        self.books.memory.release(len(self))
        super().clear()


class _Buffers(dict[int, bytearray]):
    """A yamux connection's buffer table: every buffer a :class:`_Buffer`, released when dropped."""

    def __init__(self, conn: Yamux, books: _Books, gate: GateView) -> None:
        super().__init__()
        self.conn = conn
        self.books = books
        self.gate = gate

    def __setitem__(self, sid: int, value: bytearray) -> None:
        buffer = _Buffer(self.conn, sid, self.books, self.gate)
        if value:
            buffer.extend(value)
        old = self.get(sid)
        if old is not None:
            old.clear()
        super().__setitem__(sid, buffer)

    def __delitem__(self, sid: int) -> None:
        self.pop(sid, None)

    def pop(self, sid: int, *default: Any) -> Any:
        buffer = super().pop(sid, *default)
        if buffer:
            self.books.memory.release(len(buffer))
        return buffer

    def clear(self) -> None:
        for buffer in self.values():
            self.books.memory.release(len(buffer))
        super().clear()


def _capped_autotune(original: Any) -> Any:
    """On a gated connection, a stream's receive window grows (yamux doubles it while the
    reader keeps up) no further than stream_window, and only while the peer's share of
    memory and the node's have room for the bigger window (as go-yamux asks its memory
    manager): a stream that reads fast gets a wide window, a flood gets none.

    Room means room for every window the streams were granted, whole, besides what is
    buffered: a peer that sends no more than its windows allow is never reset for lack of
    memory the node promised it. Yamux decides whether to grow (most calls do not); the
    room is counted only when it does, and a growth without room is taken back."""

    @functools.wraps(original)
    def apply(self: YamuxStream, buffered: int) -> int:
        books = _books(self.conn)
        if books is None:
            return int(original(self, buffered))
        target = self.target_recv_window
        if target * 2 > books.gate.window:  # doubling adds as much again
            self.epoch_start = trio.current_time()
            return 0
        extra = int(original(self, buffered))
        growth = self.target_recv_window - target
        if growth <= 0:
            return extra
        if not _room_to_grow(books, growth):
            self.target_recv_window = target
            self.recv_window -= extra
            return 0
        streams = self.conn.streams
        if isinstance(streams, _Streams) and streams.get(self.stream_id) is self:
            streams.granted += growth
        return extra

    return apply


class _Streams(dict[int, YamuxStream]):
    """A gated yamux connection's stream table, keeping the sum of the windows its streams
    were granted beyond yamux's initial one (``granted``), so the room to grow is counted
    per connection, not per stream."""

    def __init__(self) -> None:
        super().__init__()
        self.granted = 0

    @staticmethod
    def _grown(stream: YamuxStream) -> int:
        return max(stream.target_recv_window - YAMUX_WINDOW, 0)

    def __setitem__(self, sid: int, stream: YamuxStream) -> None:
        if sid in self:
            self.granted -= self._grown(self[sid])
        super().__setitem__(sid, stream)
        self.granted += self._grown(stream)

    def __delitem__(self, sid: int) -> None:
        self.granted -= self._grown(self[sid])
        super().__delitem__(sid)

    def pop(self, sid: int, *default: Any) -> Any:
        if sid in self:
            self.granted -= self._grown(self[sid])
        return super().pop(sid, *default)

    def clear(self) -> None:
        super().clear()
        self.granted = 0


def _promised(conn: Any, reader_bound: int) -> int:
    """Bytes a connection's streams may hold within the windows they were granted, and
    that their readers may take from the muxer and hold (which reopens the window)."""
    streams = getattr(conn, "streams", None)
    if not isinstance(streams, _Streams):
        return 0
    return len(streams) * (YAMUX_WINDOW + reader_bound) + streams.granted


def _room_to_grow(books: _Books, growth: int) -> bool:
    """Whether each of the peer's memory scopes holds ``growth`` more besides what is used
    and promised: the node-wide scope against every gated connection's windows and
    readers, the others against the peer's own (what is held counts twice: room is only
    ever underestimated)."""
    muxed = [c.muxed_conn for cs in books.gate.swarm.connections.values() for c in cs]
    gated = [(c, b) for c in muxed if (b := _books(c)) is not None]
    bound = books.gate.reader_bound
    mine = sum(_promised(c, bound) for c, b in gated if b.peer == books.peer)
    everyone = sum(_promised(c, bound) for c, _ in gated)
    for scope in books.memory.scopes:
        promised = everyone if scope.kind == "system" else mine
        if scope.mem_used + promised + growth > scope.mem_limit:
            return False
    return True
