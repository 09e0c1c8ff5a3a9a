"""Backpressure end to end: bounded buffers stop the fast side instead of growing."""

from __future__ import annotations

import hashlib

import pytest
import trio

from logos_p2p.server import Limits, _libp2p

from .conftest import eventually, node_status
from .support import peer as p
from .support.scenarios import pattern

PROTO = "/bp/1.0.0"
TOTAL = 32 * 1024 * 1024
LIMITS = Limits()
CLIENT_WINDOW = 512 * 1024  # logos_p2p.client._stream.Tuning.write_window


async def buffered(node) -> int:
    return sum(m["bufferedBytes"] for m in (await node_status(node.rpc))["modules"])


@pytest.mark.parametrize("data_path", ["socket", "push", "pull"])
async def test_a_module_that_stops_reading_blocks_the_remote_writer(node, peer, modules, data_path):
    module = await modules(node, data_path=data_path)
    await module.call("register_holder", "h", [PROTO])
    stream = await peer.open(node.addr, [PROTO])
    key = (await module.event("stream"))["key"]  # the module reads nothing yet

    data = pattern(TOTAL, seed=3)
    written = 0
    finished = trio.Event()

    async def writer() -> None:
        nonlocal written
        for i in range(0, TOTAL, 65536):
            await _libp2p.write(stream, data[i : i + 65536])
            written += 65536
        await stream.close_write()
        finished.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)

        async def stalled() -> bool:  # the peer's send window is spent and nobody is reading
            return stream.muxed_stream.send_window <= 0 and await buffered(node) >= LIMITS.rx_buffer

        await eventually(stalled, timeout=10)
        held = await buffered(node)
        # the node's own bound (rx buffer, a read chunk, pushes in flight) plus the muxer's window
        bound = LIMITS.rx_buffer + LIMITS.read_chunk + LIMITS.push_window + 16 * 1024 * 1024
        assert held <= bound, f"node holds {held} bytes for one stream"
        assert not finished.is_set() and written < TOTAL

        size, digest = await module.call("read_into_hash", key, timeout=60)
        assert finished.is_set()
    assert (size, digest) == (TOTAL, hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("data_path", ["socket", "push", "pull"])
async def test_a_module_writing_faster_than_the_peer_reads_is_slowed(node, peer, modules, data_path):
    module = await modules(node, data_path=data_path)
    incoming = peer.serve(PROTO)
    await module.call("open_stream", "o", peer.peer_id, [PROTO], [peer.addr], 10)
    with trio.fail_after(5):
        stream = await incoming.receive()
    writing = module.start("write_many", "o", 65536, TOTAL)  # the peer reads nothing yet

    # RPC paths: the node's write queue fills to its bound; socket path: the stream's socket
    # (whose kernel buffer is the bound) holds at least half of what it can
    threshold = LIMITS.tx_buffer if data_path != "socket" else 128 * 1024

    async def queue_full() -> bool:
        return await buffered(node) >= threshold

    await eventually(queue_full, timeout=10)
    progress = 0
    while True:  # take every progress report the module made; it is stalled by now
        with trio.move_on_after(0.3) as idle:
            progress = await module.event("progress", timeout=5)
        if idle.cancelled_caught:
            break
    muxed = stream.muxed_stream
    at_peer = len(muxed.conn.stream_buffers.get(muxed.stream_id) or b"")  # accepted, never read
    held = await buffered(node)
    assert held <= LIMITS.tx_buffer + LIMITS.write_batch + CLIENT_WINDOW, f"node holds {held} bytes"
    # everything the module wrote is at the peer, in the node's bounded queue, or in the client's window
    assert progress <= at_peer + held + CLIENT_WINDOW + 65536, (progress, at_peer, held)
    assert progress < TOTAL

    got = await p.read_exactly(stream, TOTAL, timeout=60)
    assert await writing.result(timeout=30) == TOTAL
    assert got == pattern(65536) * (TOTAL // 65536)
