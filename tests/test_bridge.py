"""The byte path on its own: a bridge and each module side against a libp2p stream in
one process (py-libp2p's yamux and mplex over a socket pair, tests/support/memwire.py).

No node, no RPC connection, no module process: the test is the module (it calls the
side's ``*_aio`` operations or speaks the socket frames) and the remote peer (it drives
the other end of the stream), and reads the bridge's books directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from logos_p2p._frames import CLOSE, DATA, EOF, MAX_DATA, lp_frame
from logos_p2p._state import State
from logos_p2p.errors import Cause, InvalidArgument, StreamReset
from logos_p2p.server import _libp2p
from logos_p2p.server._bridge import Bridge
from logos_p2p.server._capability_bridge import CapabilitySide
from logos_p2p.server._config import Limits
from logos_p2p.server._handoff import Loops, open_loops
from logos_p2p.server._resources import ResourceLimits, ResourceManager, derive_limits
from logos_p2p.server._socket_bridge import SocketSide

from .support.memwire import PROTOCOL, REMOTE, Wire, memory_wire

pytestmark = pytest.mark.parametrize("muxer", ["yamux", "mplex"])

KiB = 1024


@dataclass
class Books:
    """The bridge's owner (a module session in the node): what the bridge told it."""

    bytes_in: int = 0
    bytes_out: int = 0
    forgotten: list[Bridge] = field(default_factory=list)
    resets: list[Cause] = field(default_factory=list)

    def account(self, bridge: Bridge, bytes_in: int = 0, bytes_out: int = 0) -> None:
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def forget(self, bridge: Bridge) -> None:
        self.forgotten.append(bridge)

    def count_reset(self, cause: Cause) -> None:
        self.resets.append(cause)


class Link:
    """The socket side's data channel: what it was asked to tell the module."""

    def __init__(self, rm: ResourceManager) -> None:
        self.rm = rm
        self.resets: list[tuple[int, Cause]] = []
        self.flushed: list[int] = []

    def tell_reset(self, stream: int, cause: Cause, message: str, then: Callable[[bool], None]) -> bool:
        self.resets.append((stream, cause))
        then(True)
        return True

    def tell_flushed(self, stream: int) -> None:
        self.flushed.append(stream)

    async def drained(self) -> None:
        pass


@dataclass
class Case:
    loops: Loops
    wire: Wire
    rm: ResourceManager
    books: Books
    bridge: Bridge
    side: Any
    link: Link
    module: trio.socket.SocketType | None = None  # the module's end, on the socket path

    async def aio(self, fn: Callable[[], Any]) -> Any:
        return await self.loops.to_aio(fn)

    # the module, on the capability path (pull)
    async def read(self, position: int, max_bytes: int = 64 * KiB) -> tuple[bytes, int, bool]:
        result: tuple[bytes, int, bool] = await self.aio(lambda: self.side.read_aio(max_bytes, position))
        return result

    async def read_all(self) -> bytes:
        out, position = bytearray(), 0
        while True:
            data, position, eof = await self.read(position)
            out += data
            if eof:
                return bytes(out)

    # the module, on the socket path
    async def frame(self) -> bytes:
        assert self.module is not None
        return bytes(await self.module.recv(MAX_DATA + 2))

    async def socket_read_all(self) -> bytes:
        out = bytearray()
        while (msg := await self.frame())[:1] == DATA:
            out += msg[1:]
        assert msg == EOF
        return bytes(out)

    async def done(self) -> None:
        """The bridge left its module's books and gave back everything it held."""
        await trio.testing.wait_all_tasks_blocked()
        assert self.books.forgotten == [self.bridge]
        assert self.bridge.slot.released and self.bridge.tasks == 0
        assert self.rm.live == 0, self.rm.status()["reservations"]


@contextlib.asynccontextmanager
async def bridged(muxer: str, path: str, **limits: Any) -> AsyncIterator[Case]:
    """A bridge for one inbound stream, its side started: ``path`` is pull, push or socket."""
    with trio.fail_after(20):
        async with open_loops() as loops, memory_wire(muxer) as wire:
            rm = ResourceManager(derive_limits(ResourceLimits(), nofile=1024, in_use=10))
            slot = rm.stream("inbound", wire.peer_id, rm.module(1))
            slot.negotiated()
            slot.bind(protocol=rm.protocol(PROTOCOL))
            books, link = Books(), Link(rm)
            bridge = Bridge(wire.node, "inbound", books, loops, dataclasses.replace(Limits(), **limits), slot)
            case = Case(loops, wire, rm, books, bridge, None, link)
            if path == "socket":
                case.side = SocketSide(bridge, link)
                case.module = trio.socket.from_stdlib_socket(case.side.module_end.dup())
                case.side.module_end_gone()
            else:
                case.side = CapabilitySide(bridge)
            bridge.start()
            try:
                yield case
            finally:
                if case.module is not None:
                    case.module.close()


async def _into(out: list[Any], coro: Any) -> None:
    out.append(await coro)


def pattern(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest()
    return (block * (size // len(block) + 1))[:size]


async def _flood(c: Case, data: bytes, written: trio.Event) -> None:
    """The peer writes ``data`` (as fast as the stream takes it), then sets ``written``."""
    await _libp2p.write(c.wire.peer, data)
    written.set()


async def peer_read_all(wire: Wire) -> bytes:
    out = bytearray()
    while (data := await _libp2p.read(wire.peer, 64 * KiB)) is not None:
        out += data
    return bytes(out)


# -- what the bridge knows of its stream --------------------------------------------------------


async def test_the_bridge_describes_its_stream(muxer):
    async with bridged(muxer, "pull") as c:
        info = c.bridge.info
        assert (info.protocol, info.direction, info.remote_peer_id) == (PROTOCOL, "inbound", c.wire.peer_id)
        assert info.remote_addr == f"/ip4/{REMOTE[0]}/tcp/{REMOTE[1]}"
        assert c.bridge.state.state is State.OPEN


# -- the capability path, pull ------------------------------------------------------------------


async def test_pull_echo_both_half_closes_and_the_books(muxer):
    async with bridged(muxer, "pull") as c:
        request = pattern(300 * KiB, 1)
        await _libp2p.write(c.wire.peer, request)
        await _libp2p.close_write(c.wire.peer)
        got = await c.read_all()
        assert got == request
        reply: list[bytes] = []
        async with trio.open_nursery() as nursery:  # the peer reads as the module writes
            nursery.start_soon(lambda: _into(reply, peer_read_all(c.wire)))
            await c.aio(lambda: c.side.write_aio(got[::-1]))
            await c.aio(c.side.close_aio)
        assert reply == [request[::-1]]
        assert (c.books.bytes_in, c.books.bytes_out) == (len(request), len(request))
        assert c.books.resets == []
        assert c.bridge.state.state is State.CLOSED
        await c.done()


async def test_a_lost_answer_is_read_again_at_the_same_position(muxer):
    async with bridged(muxer, "pull") as c:
        await _libp2p.write(c.wire.peer, b"abcdef")
        first, after, _ = await c.read(0, max_bytes=4)
        assert (first, after) == (b"abcd", 4)
        again, after_again, _ = await c.read(0, max_bytes=4)  # the module never got the answer
        assert (again, after_again) == (b"abcd", 4)
        rest, end, _ = await c.read(4)
        assert (rest, end) == (b"ef", 6)
        with pytest.raises(InvalidArgument, match="outside"):
            await c.read(2)  # behind what the module acknowledged
        with pytest.raises(InvalidArgument, match="outside"):
            await c.read(9)  # beyond what it was given


async def test_read_lp_takes_frames_that_arrive_in_pieces(muxer):
    async with bridged(muxer, "pull") as c:
        frames = [b"", b"x", pattern(200 * KiB, 2), pattern(70_000, 3)]
        wire_bytes = b"".join(lp_frame(f) for f in frames)
        async with trio.open_nursery() as nursery:
            pieces = [wire_bytes[i : i + 4093] for i in range(0, len(wire_bytes), 4093)]

            async def send() -> None:
                for piece in pieces:
                    await _libp2p.write(c.wire.peer, piece)

            nursery.start_soon(send)
            got, position = [], 0
            for _ in frames:
                data, position, _eof = await c.aio(lambda p=position: c.side.read_lp_aio(1 << 20, p))
                got.append(data)
        assert got == frames
        assert position == len(wire_bytes)  # the cursor counts the length prefixes


async def test_a_module_that_stops_reading_stops_the_peer_with_a_bounded_buffer(muxer):
    bound = 64 * KiB
    async with bridged(muxer, "pull", rx_buffer=bound, read_chunk=16 * KiB) as c:
        data = pattern(2 * 1024 * KiB, 4)
        written = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_flood, c, data, written)
            while len(c.side.rx) < bound:
                await c.side.rx_changed.wait_trio()
            await trio.testing.wait_all_tasks_blocked()
            # the pump read one chunk past its bound at most, and then nothing: the rest is the
            # muxer's, which its window bounds (and the node's gate that window)
            assert bound <= len(c.side.rx) < bound + 16 * KiB
            assert c.books.bytes_in == len(c.side.rx)
            assert c.bridge.memory.used == c.side.held() == len(c.side.rx)
            assert c.bridge.buffered == len(c.side.rx) + _libp2p.muxer_buffered(c.wire.node)
            got = bytearray()
            position = 0
            while len(got) < len(data):
                chunk, position, _ = await c.read(position)
                got += chunk
            await written.wait()
        assert bytes(got) == data


async def test_a_peer_reset_fails_the_pending_read(muxer):
    async with bridged(muxer, "pull") as c:
        async with trio.open_nursery() as nursery:
            failed: list[BaseException] = []

            async def pending() -> None:
                try:
                    await c.read(0)
                except StreamReset as exc:
                    failed.append(exc)

            nursery.start_soon(pending)
            await trio.testing.wait_all_tasks_blocked()
            await _libp2p.reset(c.wire.peer)
        assert [type(e) for e in failed] == [StreamReset]
        assert failed[0].cause is Cause.REMOTE_RESET  # type: ignore[attr-defined]
        assert c.books.resets == [Cause.REMOTE_RESET]
        with pytest.raises(StreamReset):
            await c.aio(lambda: c.side.write_aio(b"late"))
        await c.done()


async def test_a_module_reset_reaches_the_peer_and_drops_what_was_queued(muxer):
    async with bridged(muxer, "pull") as c:
        await _libp2p.write(c.wire.peer, b"unread")
        await trio.testing.wait_all_tasks_blocked()
        c.side.reset_aio()
        with pytest.raises(StreamReset) as info:
            await peer_read_all(c.wire)
        assert info.value.cause is Cause.REMOTE_RESET
        assert len(c.side.rx) == 0 and c.bridge.memory.used == 0
        assert c.books.resets == [Cause.LOCAL_RESET]
        await c.done()


async def test_a_dropped_capability_is_a_reset_on_the_wire(muxer):
    async with bridged(muxer, "pull") as c:
        c.bridge.dropped()
        with pytest.raises(StreamReset):
            await peer_read_all(c.wire)
        assert c.books.resets == [Cause.CAPABILITY_DROPPED]
        await c.done()


async def test_the_connection_dying_under_a_full_buffer_resets_the_stream(muxer):
    """The pump reads nothing while the module does not read: it must still learn that the
    wire died, or the stream would live until the idle timeout."""
    async with bridged(muxer, "pull", rx_buffer=16 * KiB, read_chunk=16 * KiB) as c:
        await _libp2p.write(c.wire.peer, pattern(32 * KiB, 5))
        while len(c.side.rx) < 16 * KiB:
            await c.side.rx_changed.wait_trio()
        await c.wire.drop_connection()
        with pytest.raises(StreamReset) as info:
            await c.read_all()
        assert info.value.cause in (Cause.CONNECTION_LOST, Cause.REMOTE_RESET)
        assert c.books.resets == [info.value.cause]
        await c.done()


async def test_close_drops_what_the_module_left_unread_and_lingers_for_the_peer(muxer):
    async with bridged(muxer, "pull", close_linger=0.05) as c:
        await _libp2p.write(c.wire.peer, pattern(10 * KiB, 6))
        while len(c.side.rx) < 10 * KiB:
            await c.side.rx_changed.wait_trio()
        await c.aio(c.side.close_aio)
        assert len(c.side.rx) == 0 and c.bridge.memory.used == 0
        assert await peer_read_all(c.wire) == b""  # our half-close
        # the peer never half-closes: after the linger, the wire is reset (the module, which
        # closed, hears nothing more)
        while not c.bridge.wire_released:
            await c.bridge.wire_changed.wait_trio()
        assert c.bridge.wire_error is not None and c.bridge.wire_error.cause is Cause.TIMEOUT
        if muxer == "yamux":  # an mplex peer ignores a reset that follows the FIN
            await _libp2p.wait_ended(c.wire.peer)
            assert _libp2p.end_cause(c.wire.peer) is Cause.REMOTE_RESET
        assert c.books.resets == [] and c.bridge.state.state is State.CLOSED
        await c.done()


async def test_a_task_that_fails_resets_its_stream_and_not_the_node(muxer, monkeypatch):
    async def broken_read(net_stream: Any, max_bytes: int) -> bytes:
        raise RuntimeError("a bug in the byte path")

    monkeypatch.setattr(_libp2p, "read", broken_read)
    async with bridged(muxer, "pull") as c:
        await trio.testing.wait_all_tasks_blocked()
        assert c.books.resets == [Cause.PROTOCOL_ERROR]
        assert "internal error: RuntimeError" in (c.bridge.state.message or "")
        monkeypatch.undo()
        with pytest.raises(StreamReset):
            await peer_read_all(c.wire)
        await c.done()


# -- the capability path, push --------------------------------------------------------------


class Sink:
    """A module's ``ByteSink``: pushes arrive as asyncio calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.data = bytearray()
        self.pushes = 0
        self.ends: list[dict[str, Any]] = []
        self.ended = trio.Event()  # set from asyncio code, which trio-asyncio runs in trio
        self.fail_after = fail_after

    async def push(self, data: bytes) -> None:
        self.pushes += 1
        if self.fail_after is not None and self.pushes > self.fail_after:
            raise ConnectionError("the module is gone")
        self.data += data

    async def end(self, reason: dict[str, Any]) -> None:
        self.ends.append(reason)
        self.ended.set()


async def test_push_delivers_every_byte_in_order_then_the_end(muxer):
    async with bridged(muxer, "push") as c:
        sink = Sink()
        await c.aio(lambda: _attach(c, sink))
        data = pattern(1024 * KiB, 7)
        await _libp2p.write(c.wire.peer, data)
        await _libp2p.close_write(c.wire.peer)
        await sink.ended.wait()
        assert bytes(sink.data) == data
        assert sink.ends == [{"eof": None, "message": ""}]
        with pytest.raises(InvalidArgument, match="pushes to a sink"):
            await c.read(0)
        await c.aio(c.side.close_aio)
        assert await peer_read_all(c.wire) == b""
        await c.done()


async def test_a_sink_that_fails_resets_the_stream_as_module_gone(muxer):
    async with bridged(muxer, "push", max_push=16 * KiB) as c:
        sink = Sink(fail_after=2)
        await c.aio(lambda: _attach(c, sink))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_libp2p.write, c.wire.peer, pattern(256 * KiB, 8))
            while not c.books.resets:
                await c.bridge.wire_changed.wait_trio()
            nursery.cancel_scope.cancel()
        assert c.books.resets == [Cause.MODULE_GONE]
        assert sink.pushes >= 3 and 0 < len(sink.data) <= 2 * 16 * KiB  # the third one failed
        with pytest.raises(StreamReset):
            await peer_read_all(c.wire)
        await c.done()


async def _attach(c: Case, sink: Sink) -> None:
    c.side.attach_sink(sink)


# -- the socket path ----------------------------------------------------------------------------


async def test_socket_echo_both_half_closes_and_the_books(muxer):
    async with bridged(muxer, "socket") as c:
        assert c.module is not None
        request = pattern(300 * KiB, 9)
        received: list[bytes] = []
        async with trio.open_nursery() as nursery:  # the module reads as the peer writes (mplex
            nursery.start_soon(lambda: _into(received, c.socket_read_all()))  # resets a stream
            await _libp2p.write(c.wire.peer, request)  # whose reader stalls for 5 s)
            await _libp2p.close_write(c.wire.peer)
        [got] = received
        assert got == request
        replies: list[bytes] = []
        async with trio.open_nursery() as nursery:  # and the peer reads as the module writes
            nursery.start_soon(lambda: _into(replies, peer_read_all(c.wire)))
            for start in range(0, len(got), MAX_DATA):
                await c.module.send(DATA + got[start : start + MAX_DATA][::-1])
            await c.module.send(EOF)
        assert replies == [b"".join(got[s : s + MAX_DATA][::-1] for s in range(0, len(got), MAX_DATA))]
        await trio.testing.wait_all_tasks_blocked()
        assert c.link.flushed == [c.bridge.info.id]
        # both directions ended cleanly: the node lets go of the stream and its socket
        assert await c.module.recv(16) == b""
        await c.done()
        assert c.link.resets == [] and c.books.resets == []
        assert c.rm.system.used.get("fds", 0) == 0


async def test_a_close_frame_half_closes_and_the_peer_finishes(muxer):
    async with bridged(muxer, "socket") as c:
        assert c.module is not None
        await _libp2p.write(c.wire.peer, b"unread")
        await c.module.send(CLOSE)
        assert await peer_read_all(c.wire) == b""  # our half-close
        await _libp2p.close_write(c.wire.peer)  # within the linger: a clean end
        await c.done()
        assert c.books.resets == [] and c.bridge.wire_error is None
        assert c.bridge.state.state is State.CLOSED


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"X", "unknown frame b'X'"),
        (DATA + bytes(MAX_DATA + 1), "a frame over"),
    ],
)
async def test_a_bad_frame_from_the_module_is_a_protocol_error(muxer, frame, why):
    async with bridged(muxer, "socket") as c:
        assert c.module is not None
        await c.module.send(frame)
        with pytest.raises(StreamReset):
            await peer_read_all(c.wire)
        assert c.books.resets == [Cause.PROTOCOL_ERROR]
        assert why in (c.bridge.state.message or "")
        await c.done()


async def test_writing_after_the_half_close_is_a_protocol_error(muxer):
    async with bridged(muxer, "socket") as c:
        assert c.module is not None
        await c.module.send(EOF)
        await c.module.send(DATA + b"late")
        assert await peer_read_all(c.wire) == b""  # the half-close went out; then the reset
        await trio.testing.wait_all_tasks_blocked()
        assert c.books.resets == [Cause.PROTOCOL_ERROR]
        await c.done()


async def test_a_module_socket_closed_without_close_is_a_dropped_stream(muxer):
    async with bridged(muxer, "socket") as c:
        assert c.module is not None
        c.module.close()
        c.module = None
        with pytest.raises(StreamReset):
            await peer_read_all(c.wire)
        assert c.books.resets == [Cause.CAPABILITY_DROPPED]
        assert c.link.resets == []  # the module caused it: nothing to tell
        await c.done()


async def test_a_peer_reset_is_told_on_the_channel_before_the_socket_closes(muxer):
    async with bridged(muxer, "socket") as c:
        assert c.module is not None
        await _libp2p.reset(c.wire.peer)
        assert await c.module.recv(16) == b""  # the node closed its end ...
        assert c.link.resets == [(c.bridge.info.id, Cause.REMOTE_RESET)]  # ... after telling why
        assert c.books.resets == [Cause.REMOTE_RESET]
        await c.done()


async def test_a_module_that_stops_reading_its_socket_stops_the_bridge_reading(muxer):
    async with bridged(muxer, "socket") as c:
        assert c.module is not None
        data = pattern(4 * 1024 * KiB, 10)
        written = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_flood, c, data, written)
            await trio.testing.wait_all_tasks_blocked()
            # the bridge took from the muxer what the socket's kernel buffers hold and one
            # frame on its way; the rest waits in the muxer, within its window
            assert len(data) > c.books.bytes_in
            assert c.books.bytes_in <= _socket_buffers(c.module) + MAX_DATA
            assert c.bridge.memory.used == c.side.held() <= MAX_DATA
            got = bytearray()
            while len(got) < len(data):
                msg = await c.frame()
                assert msg[:1] == DATA
                got += msg[1:]
            await written.wait()
        assert bytes(got) == data


def _socket_buffers(sock: trio.socket.SocketType) -> int:
    """What the kernel may hold in both directions of a socket pair (a generous bound)."""
    with socket.socket(fileno=os.dup(sock.fileno())) as s:
        sizes = [s.getsockopt(socket.SOL_SOCKET, option) for option in (socket.SO_SNDBUF, socket.SO_RCVBUF)]
    return 2 * sum(sizes)
