"""The node's py-libp2p boundary (server/_libp2p/), on two in-process hosts, per muxer.

One test per py-libp2p 0.8.1 gap the adapter closes.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.peer.id import ID
from libp2p.security.secure_session import SecureSession

from logos_p2p.errors import Cause, ConnectionLost, StreamReset
from logos_p2p.server import _libp2p

from .support.frames import FrameRecorder, stream_key
from .support.peer import open_peer

PROTO = "/adapter/1.0.0"


@pytest.fixture(params=["yamux", "mplex"])
async def pair(request):
    """(our stream, their stream) between two hosts speaking the given muxer."""
    async with open_peer(request.param) as a, open_peer(request.param) as b:
        incoming = b.serve(PROTO)
        ours = await a.open(b.addr, [PROTO])
        with trio.fail_after(5):
            theirs = await incoming.receive()
        yield ours, theirs, a, b


async def test_a_remote_reset_fails_a_pending_read_as_a_reset(pair):
    ours, theirs, *_ = pair
    result = []

    async def reader() -> None:
        try:
            result.append(await _libp2p.read(ours, 100))
        except StreamReset as exc:
            result.append(exc.cause)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await theirs.reset()
    assert result == [Cause.REMOTE_RESET]  # py-libp2p alone says StreamEOF here


async def test_a_write_after_a_remote_reset_is_a_reset_not_closed(pair):
    ours, theirs, *_ = pair
    await theirs.reset()
    with trio.fail_after(5), pytest.raises(StreamReset):
        while True:  # the reset reaches us some time after
            await _libp2p.write(ours, b"x" * 1000)
            await trio.sleep(0.01)


async def test_a_local_reset_wakes_a_pending_read(pair):
    ours, *_ = pair
    done = trio.Event()

    async def reader() -> None:
        with contextlib.suppress(StreamReset):
            await _libp2p.read(ours, 100)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await _libp2p.reset(ours)
        with trio.fail_after(2):
            await done.wait()


async def test_reads_do_not_block_writes_on_one_stream(pair):
    """mplex held its read lock while waiting for data: a write waited for the next inbound byte."""
    ours, theirs, *_ = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_libp2p.read, ours, 100)  # pending, nothing will arrive for a while
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(2):
            await _libp2p.write(ours, b"while a read waits")
        assert await _libp2p.read(theirs, 100) == b"while a read waits"
        await _libp2p.write(theirs, b"done")  # lets the pending read finish


async def test_a_lost_connection_fails_a_pending_read_as_connection_lost(pair):
    ours, _, a, b = pair
    result = []

    async def reader() -> None:
        try:
            await _libp2p.read(ours, 100)
        except StreamReset as exc:
            result.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await b.host.disconnect(ID.from_base58(a.peer_id))
    assert len(result) == 1 and isinstance(result[0], ConnectionLost)


async def test_a_clean_half_close_is_end_of_stream(pair):
    ours, theirs, *_ = pair
    await _libp2p.write(theirs, b"last")
    await _libp2p.close_write(theirs)
    assert await _libp2p.read(ours, 100) == b"last"
    assert await _libp2p.read(ours, 100) is None


async def _held(stream: Any, beyond: int = 0) -> int:
    with trio.fail_after(5):
        await _libp2p.wait_more(stream, beyond)
    return _libp2p.muxer_buffered(stream)


@contextlib.asynccontextmanager
async def recorded_yamux_pair(monkeypatch: pytest.MonkeyPatch) -> Any:
    """(recorder, a, b, our stream on a, theirs on b), the frames each side's muxer reads recorded."""
    recorder = FrameRecorder()
    recorder.install(monkeypatch)
    async with open_peer("yamux") as a, open_peer("yamux") as b:
        incoming = b.serve(PROTO)
        ours = await a.open(b.addr, [PROTO])
        with trio.fail_after(5):
            theirs = await incoming.receive()
        yield recorder, a, b, ours, theirs, incoming


async def test_take_hands_over_held_bytes_and_credit_gives_the_window_back(pair):
    """The byte path forwards what the muxer holds before it sends the window update."""
    ours, theirs, *_ = pair
    await _libp2p.write(theirs, b"abc" * 1000)
    if not isinstance(ours.muxed_stream, _libp2p.YamuxStream):
        assert _libp2p.take(ours, 100) is None  # mplex: the read path does it all
        assert await _libp2p.read(ours, 3000) == b"abc" * 1000
        return
    assert await _held(ours) == 3000
    receiver = ours.muxed_stream
    window = receiver.recv_window
    assert _libp2p.take(ours, 1000) == b"abc" * 333 + b"a"
    assert _libp2p.take(ours, 5000) == b"bc" + b"abc" * 666
    assert _libp2p.take(ours, 5000) is None
    assert receiver.recv_window == window  # nothing given back yet
    await _libp2p.credit(ours, 3000)
    assert receiver.recv_window == window  # owed: the window comes back once half of it was read (fix 9)
    half = receiver.target_recv_window // 2
    await _libp2p.write(theirs, b"x" * half)
    taken = 0
    while taken < half:
        await _held(ours)
        taken += len(_libp2p.take(ours, 65536) or b"")
        await _libp2p.credit(ours, taken)
    assert receiver.recv_window > window  # given back, the 3000 owed with it


async def test_wait_more_returns_at_end_of_stream_and_at_a_reset(pair):
    ours, theirs, *_ = pair
    await _libp2p.close_write(theirs)
    assert await _held(ours) == 0
    assert await _libp2p.read(ours, 10) is None
    await theirs.reset()
    assert await _held(theirs) == 0  # returns (nothing will come), takes nothing


async def test_wait_more_gives_up_after_its_bound(pair):
    ours, *_ = pair
    started = trio.current_time()
    with trio.fail_after(5):
        await _libp2p.wait_more(ours, 0, 0.05)
    if isinstance(ours.muxed_stream, _libp2p.YamuxStream):
        assert trio.current_time() - started >= 0.05
    assert _libp2p.muxer_buffered(ours) == 0


async def test_a_64_kib_write_cut_at_a_full_frame_is_taken_whole(pair):
    """py-libp2p's yamux sends 64 KiB as a full frame and a 12-byte one; the byte path
    waits for the second while the first ends on a full frame, then moves both at once."""
    ours, theirs, *_ = pair
    if not isinstance(ours.muxed_stream, _libp2p.YamuxStream):
        pytest.skip("the cut is yamux's")
    block = bytes(range(256)) * 256
    await _libp2p.write(theirs, block)
    held = await _held(ours)
    assert _libp2p.mid_write(ours) == (held == _libp2p.YAMUX_FULL_FRAME)
    if _libp2p.mid_write(ours):
        held = await _held(ours, held)
    assert held == len(block) and not _libp2p.mid_write(ours)
    assert _libp2p.take(ours, 65536) == block


@pytest.mark.slow
async def test_a_writer_outlasts_a_reader_paused_for_more_than_five_seconds(pair):
    """py-libp2p's yamux write raised after 5 s of zero window, which read as a reset."""
    ours, theirs, *_ = pair
    if not isinstance(ours.muxed_stream, _libp2p.YamuxStream):
        pytest.skip("mplex has no window")
    payload = b"w" * (8 * 1024 * 1024)  # more than the receive window the reader grants
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_libp2p.write, ours, payload)
        await trio.sleep(6)  # the reader pauses: the writer must wait, not fail
        got = 0
        with trio.fail_after(20):
            while got < len(payload):
                got += len(await _libp2p.read(theirs, 1 << 20) or b"")
    assert got == len(payload)


class _HalfWayWrite:
    """A secure session whose write is suspended half-way (nonce used, bytes not all out)."""

    def __init__(self) -> None:
        self.finish = trio.Event()
        self.started = trio.Event()
        self.written: list[bytes] = []
        self.closed = False

    async def write(self, data: bytes) -> None:
        self.started.set()
        await self.finish.wait()
        self.written.append(data)

    async def close(self) -> None:
        self.closed = True


async def test_a_cancelled_secure_channel_write_still_goes_out_whole():
    """Fix 5: cancelling the writer must not cut a Noise message (the remote would fail to
    decrypt every later one and drop the connection)."""
    session = _HalfWayWrite()
    write = _libp2p._whole_write(_HalfWayWrite.write)
    outcome = []

    async def writer(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await write(session, b"frame")
            outcome.append("returned")
        outcome.append("cancelled" if scope.cancelled_caught else "not cancelled")

    async with trio.open_nursery() as nursery:
        scope = await nursery.start(writer)
        await session.started.wait()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == [] and session.written == []  # still writing, though cancelled
        session.finish.set()
    assert session.written == [b"frame"] and outcome == ["cancelled"] and not session.closed


async def test_a_secure_channel_write_stuck_past_the_bound_closes_the_connection(autojump_clock, monkeypatch):
    monkeypatch.setattr(_libp2p._fixes, "WRITE_STALL", 5.0)
    session = _HalfWayWrite()  # never finishes
    write = _libp2p._whole_write(_HalfWayWrite.write)
    started = trio.current_time()
    with pytest.raises(OSError, match="stalled"):
        await write(session, b"frame")
    assert trio.current_time() - started == pytest.approx(5.0) and session.closed


@pytest.mark.parametrize("how", ["read", "take-and-credit"])
async def test_no_window_update_once_the_peer_has_finished(monkeypatch, how):
    """Fix 6: the bytes read after the peer's FIN give no window back (nim-libp2p < 1.13 answers
    a window update for a stream it has finished with GoAway, dropping the whole connection).
    Both ways the node reads: py-libp2p's read, and take + credit."""
    async with recorded_yamux_pair(monkeypatch) as (recorder, a, b, ours, theirs, incoming):
        reply = bytes(range(256)) * 800  # 200 KiB: within the first window, over yamux's update threshold
        await _libp2p.write(theirs, reply)
        await _libp2p.close_write(theirs)
        with trio.fail_after(5):
            while not ours.muxed_stream.recv_closed:
                await _libp2p.wait_more(ours, _libp2p.muxer_buffered(ours))
        mark = recorder.mark()
        got = bytearray()
        if how == "read":
            while (data := await _libp2p.read(ours, 65536)) is not None:
                got += data
        else:
            while (data := _libp2p.take(ours, 65536)) is not None:
                got += data
                await _libp2p.credit(ours, len(data))
            assert await _libp2p.read(ours, 10) is None
        assert bytes(got) == reply
        # a barrier: b has read everything a sent before this new stream's SYN
        await a.open(b.addr, [PROTO])
        with trio.fail_after(5):
            await incoming.receive()
        assert any("syn" in f.flags for f in recorder.of(stream_key(theirs)))  # the record sees this stream
        assert recorder.since(mark, stream_key(theirs)) == []


def test_the_gate_hooks_wrap_py_libp2p_once_however_many_nodes_run():
    """Every node in a process installs the gate; its hooks must wrap py-libp2p once: twice
    would charge each upgrading connection and each negotiating stream twice."""
    from libp2p.network.connection.swarm_connection import SwarmConn
    from libp2p.network.swarm import Swarm

    from logos_p2p.server._libp2p import _gate

    def depth(fn: Any) -> int:
        n = 0
        while hasattr(fn, "__wrapped__"):
            fn, n = fn.__wrapped__, n + 1
        return n

    _gate._install_gate_hooks()
    _gate._install_gate_hooks()
    hooked = (
        Swarm.upgrade_inbound_raw_conn,
        Swarm.upgrade_outbound_raw_conn,
        Swarm.add_conn,
        SwarmConn._handle_muxed_stream,
        _libp2p.YamuxStream._apply_autotune_epoch,
    )
    assert [depth(fn) for fn in hooked] == [1, 1, 1, 1, 1]


async def test_a_reset_reaches_a_watcher_whose_wake_up_event_a_reader_replaced():
    """Fix 8: yamux's read replaces the stream's wake-up event after waking; a watcher
    waiting on the old one (wait_ended) still sees the reset that comes next."""
    async with open_peer("yamux") as a, open_peer("yamux") as b:
        incoming = b.serve(PROTO)
        ours = await a.open(b.addr, [PROTO])
        with trio.fail_after(5):
            theirs = await incoming.receive()
        muxed = ours.muxed_stream
        ended = trio.Event()

        async def watch() -> None:
            await _libp2p.wait_ended(ours)
            ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await trio.testing.wait_all_tasks_blocked()
            muxed.conn.stream_events[muxed.stream_id] = trio.Event()  # as YamuxStream.read does
            await theirs.reset()
            with trio.fail_after(5):
                await ended.wait()
        assert muxed.reset_received


async def test_window_updates_go_at_half_a_window_and_the_first_read_grows_it(monkeypatch):
    """Fix 9: reading a stream in small pieces gives the window back once half of it was
    read, not after each read (py-libp2p sent an update per read: a Noise message and a TCP
    send each); the first read doubles the window twice, so the peer may still write most
    of a MiB before anyone reads."""
    _libp2p.install_fixes()
    async with recorded_yamux_pair(monkeypatch) as (recorder, _, _, ours, theirs, _):
        mark = recorder.mark()
        for i in range(100):
            await _libp2p.write(theirs, bytes([i]) * 100)
            assert await _libp2p.read(ours, 100) == bytes([i]) * 100
        updates = [f for f in recorder.since(mark, stream_key(theirs)) if f.kind == "window"]
        assert len(updates) <= 1  # the first read's (and none after): 10,000 bytes of a 1 MiB window
        assert ours.muxed_stream.target_recv_window == 1024 * 1024
        with trio.fail_after(5):
            await _libp2p.write(theirs, b"m" * (1024 * 1024 - 20_000))  # nobody reads: the window holds it
        got = bytearray()
        while len(got) < 1024 * 1024 - 20_000:
            got += await _libp2p.read(ours, 65536) or b""
        assert bytes(got) == b"m" * (1024 * 1024 - 20_000)


def test_a_gated_connection_keeps_the_sum_of_the_windows_it_granted():
    """The room to grow a window is counted per connection (a sum kept as streams come, grow
    and go), not by visiting every stream: at 10,000 streams that visit was 64% of the node's
    time while streams opened."""
    from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE

    from logos_p2p.server._libp2p._books import _promised, _Streams

    class Stream:
        def __init__(self, target: int) -> None:
            self.target_recv_window = target

    class Conn:
        streams = _Streams()

    table = Conn.streams
    table[1] = Stream(DEFAULT_WINDOW_SIZE)
    table[3] = Stream(4 * DEFAULT_WINDOW_SIZE)
    table[5] = Stream(2 * DEFAULT_WINDOW_SIZE)
    assert table.granted == 4 * DEFAULT_WINDOW_SIZE
    assert _promised(Conn, 1000) == 3 * (DEFAULT_WINDOW_SIZE + 1000) + 4 * DEFAULT_WINDOW_SIZE
    del table[3]
    assert table.granted == DEFAULT_WINDOW_SIZE
    table[5] = Stream(DEFAULT_WINDOW_SIZE)  # replaced
    assert table.granted == 0
    table[7] = Stream(8 * DEFAULT_WINDOW_SIZE)
    assert table.pop(7).target_recv_window == 8 * DEFAULT_WINDOW_SIZE and table.pop(7, None) is None
    assert table.granted == 0 and len(table) == 2
    table.clear()
    assert table.granted == 0 and _promised(Conn, 1000) == 0


async def test_raw_tcp_calls_keep_py_libp2p_s_stream_semantics():
    """Fix 10: the node's TCP reads and writes skip trio's socket stream (and its
    checkpoints) but keep what py-libp2p's callers rely on: every byte, each write whole
    and in order under concurrent writers, b"" at end of stream and once closed here, and
    a peer's reset as ConnectionClosedError."""
    import socket

    from libp2p.io.exceptions import ConnectionClosedError
    from libp2p.io.trio import TrioTCPStream

    _libp2p.install_fixes()
    a, b = trio.socket.socketpair()
    ours, theirs = TrioTCPStream(trio.SocketStream(a)), TrioTCPStream(trio.SocketStream(b))
    chunks = [bytes([i]) * 700_000 for i in range(4)]  # each more than the socket buffers hold
    got = bytearray()

    async def reader() -> None:
        while len(got) < sum(map(len, chunks)):
            got.extend(await theirs.read(65536))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for chunk in chunks:
            nursery.start_soon(ours.write, chunk)
    runs = [bytes(got[i : i + 700_000]) for i in range(0, len(got), 700_000)]
    assert sorted(runs) == sorted(chunks)  # each write whole, none interleaved
    assert await theirs.read(0) == b""

    await ours.close()
    assert await theirs.read(10) == b""  # the peer's end of stream
    assert await ours.read(10) == b""  # closed here
    await ours.write(b"dropped")  # closed here: nothing, as py-libp2p's

    c, d = trio.socket.socketpair()
    mine = TrioTCPStream(trio.SocketStream(c))
    d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await mine.write(b"unread")  # d never reads it: closing d resets
    d.close()
    with pytest.raises(ConnectionClosedError):
        for _ in range(3):
            await mine.write(b"x" * 65536)


async def test_an_inbound_stream_s_ack_goes_out_with_its_first_frame(monkeypatch):
    """Fix 11: the accepting side holds the stream's ACK (py-libp2p wrote it at once: a
    Noise message and a TCP send per stream) and writes it in one message with the
    stream's first frame (multistream-select's header): still a frame of its own, first."""
    _libp2p.install_fixes()
    messages: list[bytes] = []
    original = SecureSession.write

    async def recording_write(self: Any, data: bytes) -> None:
        messages.append(bytes(data))
        await original(self, data)

    monkeypatch.setattr(SecureSession, "write", recording_write)
    async with recorded_yamux_pair(monkeypatch) as (recorder, _, _, ours, theirs, _):
        await _libp2p.write(theirs, b"hello")
        assert await _libp2p.read(ours, 5) == b"hello"
        frames = recorder.of(stream_key(ours))
        assert (frames[0].kind, frames[0].flags) == ("window", {"ack"}) and frames[1].kind == "data", frames
        assert sum("ack" in f.flags for f in frames) == 1
        sid = theirs.muxed_stream.stream_id
        ack = struct.pack("!BBHII", 0, 1, 2, sid, 0)  # window update, ACK, this stream, 0
        assert not any(m == ack for m in messages)  # never a message of its own
        assert sum(m.startswith(ack) and len(m) > len(ack) for m in messages) == 1


async def test_a_held_ack_goes_out_before_whatever_frame_the_stream_sends_first():
    """Fix 11, frame by frame: a bare ACK for a stream in the table is held; that stream's
    next frame (here an RST: py-libp2p ignores RST on a frame flagged ACK) goes out behind
    it in one write; other streams' frames and an ACK for a stream not in the table go out
    as they are; a stream leaving the table forgets its held ACK."""
    from libp2p.stream_muxer.yamux import yamux as y

    from logos_p2p.server._libp2p import _frames

    sent: list[bytes] = []

    async def original(self: Any, data: bytes) -> None:
        sent.append(data)

    def finalize(self: Any, stream: Any, fully_closed: bool = False) -> None:
        self.streams.pop(stream.stream_id, None)

    write_frame = _frames._write_with_ack(original)
    forget = _frames._forgetting_acks(finalize)

    def frame(typ: int, flags: int, sid: int, length: int = 0) -> bytes:
        return struct.pack(y.YAMUX_HEADER_FORMAT, 0, typ, flags, sid, length)

    class Conn:
        streams: dict[int, Any] = {2: None, 4: None, 6: None}

    class Stream:
        def __init__(self, sid: int) -> None:
            self.stream_id = sid

    conn = Conn()
    for sid in (2, 4, 6):
        await write_frame(conn, frame(y.TYPE_WINDOW_UPDATE, y.FLAG_ACK, sid))
    await write_frame(conn, frame(y.TYPE_WINDOW_UPDATE, y.FLAG_ACK, 8))  # not in the table
    assert sent == [frame(y.TYPE_WINDOW_UPDATE, y.FLAG_ACK, 8)]
    await write_frame(conn, frame(y.TYPE_WINDOW_UPDATE, y.FLAG_RST, 2))
    await write_frame(conn, frame(y.TYPE_DATA, 0, 4, 3) + b"abc")
    await write_frame(conn, frame(y.TYPE_DATA, 0, 4, 3) + b"def")  # held once only
    ack = y.FLAG_ACK
    assert sent[1:] == [
        frame(y.TYPE_WINDOW_UPDATE, ack, 2) + frame(y.TYPE_WINDOW_UPDATE, y.FLAG_RST, 2),
        frame(y.TYPE_WINDOW_UPDATE, ack, 4) + frame(y.TYPE_DATA, 0, 4, 3) + b"abc",
        frame(y.TYPE_DATA, 0, 4, 3) + b"def",
    ]
    forget(conn, Stream(6), fully_closed=True)
    assert conn._logos_acks == set()  # type: ignore[attr-defined]


async def test_stream_notifications_call_each_listener_inline(caplog):
    """Fix 12: opened/closed-stream notifications call the listeners in turn in the
    notifying task (py-libp2p started a nursery and a task per listener for each); one
    that raises is logged and the others are still called."""
    _libp2p.install_fixes()
    calls: list[tuple[str, str, str]] = []

    class Listener:
        def __init__(self, name: str, fails: bool = False) -> None:
            self.name, self.fails = name, fails

        def __getattr__(self, method: str) -> Any:
            async def call(network: Any, *args: Any) -> None:
                calls.append((self.name, method, trio.lowlevel.current_task().name))
                if self.fails:
                    raise RuntimeError("listener failed")

            return call

    async with open_peer("yamux") as a, open_peer("yamux") as b:
        incoming = b.serve(PROTO)
        for listener in (Listener("first", fails=True), Listener("second")):
            b.host.get_network().register_notifee(listener)
        ours = await a.open(b.addr, [PROTO])
        with trio.fail_after(5):
            theirs = await incoming.receive()
        await _libp2p.reset(ours)
        await _libp2p.reset(theirs)
    opened = [(name, task) for name, method, task in calls if method == "opened_stream"]
    closed = [name for name, method, _ in calls if method == "closed_stream"]
    names = [name for name, _ in opened]
    assert names and names == ["first", "second"] * (len(names) // 2) and closed[:2] == ["first", "second"]
    assert all("_call" not in task for _, task in opened)  # no task of its own
    assert "Listener.opened_stream raised" in caplog.text
