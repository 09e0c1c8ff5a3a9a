"""One stream suite, run against inbound and outbound streams, on the push and pull paths.

The module side runs in its own process; the remote peer is a py-libp2p host here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from logos_p2p.errors import (
    Busy,
    Cause,
    EndOfStream,
    FrameTooLarge,
    IncompleteRead,
    StreamClosed,
    StreamReset,
)

from .conftest import eventually, node_status
from .support import peer as p
from .support.modproc import ModuleProcess, RemoteStream
from .support.scenarios import pattern

PROTO = "/test/1.0.0"


@dataclass
class Pair:
    peer: Any  # the peer's libp2p stream
    mod: RemoteStream  # the module's Stream, driven remotely
    module: ModuleProcess
    direction: str
    node: Any


@pytest.fixture
def data_path() -> str:
    """Each pair names its own data path (conftest's parametrised default would run every pair twice)."""
    return "push"


@pytest.fixture(
    params=["inbound-socket", "inbound-push", "inbound-pull", "outbound-socket", "outbound-push", "outbound-pull"]
)
async def pair(request, node, peer, modules) -> Pair:
    direction, path = request.param.split("-")
    module = await modules(node, data_path=path)
    if direction == "inbound":
        await module.call("register_holder", "h", [PROTO])
        peer_stream = await peer.open(node.addr, [PROTO])
        key = (await module.event("stream"))["key"]
    else:
        incoming = peer.serve(PROTO)
        await module.call("open_stream", "o", peer.peer_id, [PROTO], [peer.addr], 10)
        with trio.fail_after(10):
            peer_stream = await incoming.receive()
        key = "o"
    return Pair(peer_stream, module.stream(key), module, direction, node)


async def no_streams_left(pair: Pair) -> None:
    async def empty() -> bool:
        status = await node_status(pair.node.rpc)
        return status["streams"] == 0 and status["tasks"] == 0

    await eventually(empty, what="the node released every stream")


async def test_bytes_flow_both_ways(pair):
    await pair.peer.write(b"ping")
    assert await pair.mod.read_exactly(4) == b"ping"
    await pair.mod.write(b"pong!")
    assert await p.read_exactly(pair.peer, 5) == b"pong!"


async def test_properties(pair, peer):
    assert await pair.mod.attr("protocol") == PROTO
    assert await pair.mod.attr("direction") == pair.direction
    assert await pair.mod.attr("remote_peer_id") == peer.peer_id
    assert (await pair.mod.attr("remote_addr")).startswith("/ip4/127.0.0.1/tcp/")


async def test_remote_half_close_then_module_replies(pair):
    await pair.peer.write(b"request")
    await pair.peer.close_write()
    assert await pair.mod.read_all() == b"request"
    assert await pair.mod.read(100) == b""  # end of stream, again and again
    assert await pair.mod.read(100) == b""
    await pair.mod.write(b"reply")  # the module's side is still open
    await pair.mod.close()
    assert await p.read_all(pair.peer) == b"reply"
    await no_streams_left(pair)


async def test_module_half_close_then_peer_replies(pair):
    await pair.mod.write(b"request")
    await pair.mod.close_write()
    assert await p.read_all(pair.peer) == b"request"
    with pytest.raises(StreamClosed):
        await pair.mod.write(b"more")
    await pair.peer.write(b"reply")
    await pair.peer.close_write()
    assert await pair.mod.read_all() == b"reply"
    await no_streams_left(pair)


async def test_remote_reset_fails_the_pending_read_and_everything_after(pair):
    pending = pair.module.start("stream_op", pair.mod.key, "read", 100)
    await trio.sleep(0.1)  # let the read reach the node and wait there
    await pair.peer.reset()
    with pytest.raises(StreamReset) as info:
        await pending.result()
    assert info.value.cause is Cause.REMOTE_RESET
    with pytest.raises(StreamReset):
        await pair.mod.read(100)
    with pytest.raises(StreamReset):
        await pair.mod.write(b"x")
    await no_streams_left(pair)


async def test_remote_reset_is_neither_eof_nor_closed(pair):
    await pair.peer.write(b"partial")
    assert await pair.mod.read_exactly(7) == b"partial"
    await pair.peer.reset()
    with pytest.raises(StreamReset) as info:
        await pair.mod.read_all()
    assert not isinstance(info.value, StreamClosed | EndOfStream)


async def test_module_reset_reaches_the_peer(pair):
    await pair.mod.write(b"abc")
    assert await p.read_exactly(pair.peer, 3) == b"abc"
    await pair.mod.reset()
    with pytest.raises(StreamReset):
        await p.read_all(pair.peer)
    assert p.reset_recorded(pair.peer)
    with pytest.raises(StreamReset) as info:
        await pair.mod.write(b"x")
    assert info.value.cause is Cause.LOCAL_RESET
    await no_streams_left(pair)


# The client's handler owns an inbound stream (it closes it on return), so only outbound
# streams can be dropped through the client; test_lifecycle drops an inbound one via raw capnp.
@pytest.mark.parametrize("pair", ["outbound-push", "outbound-pull"], indirect=True)
async def test_dropping_the_stream_resets_it(pair):
    await pair.mod.write(b"abc")
    assert await p.read_exactly(pair.peer, 3) == b"abc"
    await pair.module.call("drop", pair.mod.key)
    with pytest.raises(StreamReset):
        await p.read_all(pair.peer)
    assert p.reset_recorded(pair.peer)
    await no_streams_left(pair)
    status = await node_status(pair.node.rpc)
    assert {"cause": "capabilityDropped", "count": 1} in status["resets"]


async def test_close_is_graceful_idempotent_and_final(pair):
    await pair.mod.write(b"last words")
    await pair.mod.close()
    await pair.mod.close()
    assert await p.read_all(pair.peer) == b"last words"
    with pytest.raises(StreamClosed):
        await pair.mod.read(1)
    with pytest.raises(StreamClosed):
        await pair.mod.write(b"x")
    await pair.peer.close_write()  # the node was draining the peer until now
    await no_streams_left(pair)


async def test_two_concurrent_reads_raise_busy(pair):
    assert await pair.module.call("two_reads", pair.mod.key) == ["pending", "Busy"]
    await pair.peer.write(b"x")  # the first read is unaffected
    assert await pair.mod.read(10) == b"x"
    assert Busy


async def test_a_read_that_times_out_loses_nothing(pair):
    assert await pair.module.call("read_with_timeout", pair.mod.key, 100, 0.2) == "timeout"
    await pair.peer.write(b"0123")
    assert await pair.module.call("cancelled_read_exactly", pair.mod.key, 10, 0.3) == "timeout"
    await pair.peer.write(b"456789")
    assert await pair.mod.read_exactly(10) == b"0123456789"


async def test_length_prefixed_frames_are_uvarint_framed(pair):
    await pair.mod.write_lp(b"hello")
    await pair.mod.write_lp(b"x" * 300)
    assert await p.read_exactly(pair.peer, 6) == b"\x05hello"
    assert await p.read_exactly(pair.peer, 302) == b"\xac\x02" + b"x" * 300
    await pair.peer.write(b"\x03abc\x00\xac\x02" + b"y" * 300)
    assert await pair.mod.read_lp(1000) == b"abc"
    assert await pair.mod.read_lp(1000) == b""
    assert await pair.mod.read_lp(1000) == b"y" * 300


async def test_frame_errors(pair):
    await pair.peer.write(b"\xac\x02")  # announces 300 bytes
    assert await pair.module.call("read_lp_error", pair.mod.key, 299) == "FrameTooLarge"
    await pair.peer.write(b"z" * 10)
    await pair.peer.close_write()
    with pytest.raises(IncompleteRead):
        await pair.mod.read_lp(300)
    with pytest.raises(EndOfStream):
        await pair.mod.read_lp(300)
    assert FrameTooLarge


async def test_one_mebibyte_each_way_intact(pair):
    data = pattern(1024 * 1024, seed=7)
    digest = await pair.module.call("write_pattern", pair.mod.key, len(data), 7, timeout=30)
    assert digest == hashlib.sha256(data).hexdigest()
    assert await p.read_exactly(pair.peer, len(data), timeout=30) == data

    reading = pair.module.start("read_into_hash", pair.mod.key)
    back = pattern(1024 * 1024, seed=8)
    for i in range(0, len(back), 65536):
        await pair.peer.write(back[i : i + 65536])
    await pair.peer.close_write()
    assert await reading.result(timeout=30) == (len(back), hashlib.sha256(back).hexdigest())


async def test_async_with_closes_on_normal_exit(pair):
    assert await pair.module.call("use_as_context_manager", pair.mod.key, False) == "exited"
    assert await p.read_all(pair.peer) == b"inside"


async def test_async_with_resets_on_exception(pair):
    assert await pair.module.call("use_as_context_manager", pair.mod.key, True) == "raised"
    with pytest.raises(StreamReset):
        await p.read_all(pair.peer)


@pytest.mark.parametrize("size", [256 * 1024 + 1, 1024 * 1024])
async def test_read_all_of_more_than_the_modules_buffer(pair, size):
    """read_all raises the buffer's bound past 256 KiB; the push path's parked sink must see it."""
    data = pattern(size, seed=21)
    reading = pair.module.start("stream_op", pair.mod.key, "read_all")
    await pair.peer.write(data)
    await pair.peer.close_write()
    assert await reading.result(timeout=30) == data
