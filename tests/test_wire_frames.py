"""What the node puts on the wire for a stream the peer has finished, frame by frame.

A peer that half-closed or reset a stream may forget it; a frame for it afterwards can
cost the whole connection (nim-libp2p before v1.13 answers a window update for a stream
it finished with GoAway). The in-process py-libp2p peer records every muxer frame it
reads (``support/frames.py``); a module in its own process reads slower than the peer
writes, so the node is still reading the peer's bytes when the FIN or RST arrives.

A *barrier* orders the record: the peer opens a stream for a protocol nobody serves and
waits for the node's refusal. The node reads the peer's frames in order, so by the time
the refusal arrives it had processed the FIN or RST, and any frame it decided on before
that (a legitimate window update in flight) has been read by the peer too.
"""

from __future__ import annotations

import hashlib

import pytest
import trio

from logos_p2p.errors import ProtocolNotSupported, StreamReset
from logos_p2p.server import _libp2p

from .support import peer as p
from .support.frames import FrameRecorder, stream_key
from .support.scenarios import pattern

PROTO = "/frames/1.0.0"
REPLY = 1024 * 1024


@pytest.fixture(params=["yamux", "mplex"])
async def recording_peer(request, monkeypatch):
    recorder = FrameRecorder()
    recorder.install(monkeypatch)  # before the peer's first connection
    async with p.open_peer(request.param) as peer:
        yield peer, recorder


async def barrier(peer, node) -> None:
    """Return once the peer has read every frame the node sent before it processed
    everything the peer sent so far."""
    with pytest.raises(ProtocolNotSupported):
        await _libp2p.open_stream(peer.host, node.peer_id, ["/barrier/nobody-serves-this"], [node.addr], 10)


async def open_pair(direction, node, peer, module):
    if direction == "outbound":
        incoming = peer.serve(PROTO)
        await module.call("open_stream", "s", peer.peer_id, [PROTO], [peer.addr], 10)
        with trio.fail_after(10):
            theirs = await incoming.receive()
        return theirs, "s"
    await module.call("register_holder", "h", [PROTO])
    theirs = await peer.open(node.addr, [PROTO])
    key = (await module.event("stream"))["key"]
    return theirs, key


def not_ending(frames):
    """Frames other than the node's own FIN or RST."""
    return [f for f in frames if not f.ends_stream]


@pytest.mark.parametrize("data_path", ["socket", "push", "pull"])
@pytest.mark.parametrize("direction", ["outbound", "inbound"])
async def test_no_window_update_after_the_peers_half_close(node, recording_peer, modules, data_path, direction):
    peer, recorder = recording_peer
    module = await modules(node, data_path=data_path)
    theirs, key = await open_pair(direction, node, peer, module)
    stream = module.stream(key)

    reading = module.start("read_slowly", key, 65536, 0.004)
    reply = pattern(REPLY, seed=11)
    await _libp2p.write(theirs, reply)
    await _libp2p.close_write(theirs)
    await barrier(peer, node)
    mark = recorder.mark()
    assert await reading.result(timeout=60) == (REPLY, hashlib.sha256(reply).hexdigest())
    await stream.write(b"answer")  # the module's side is still open: data after the FIN is fine
    await stream.close()
    assert await p.read_all(theirs) == b"answer"
    await barrier(peer, node)

    late = recorder.since(mark, stream_key(theirs))
    assert [f.kind for f in late if f.kind not in ("data", "close") and not f.ends_stream] == []
    assert sum(f.length for f in late if f.kind == "data") == len(b"answer")


@pytest.mark.parametrize("data_path", ["socket", "push", "pull"])
@pytest.mark.parametrize("direction", ["outbound", "inbound"])
async def test_nothing_after_the_peers_reset(node, recording_peer, modules, data_path, direction):
    peer, recorder = recording_peer
    module = await modules(node, data_path=data_path)
    theirs, key = await open_pair(direction, node, peer, module)

    reading = module.start("read_slowly", key, 65536, 0.004)
    writing = module.start("conform_reset_mid_write", key, 12)  # writes until the stream fails
    await _libp2p.write(theirs, pattern(REPLY, seed=13))
    assert len(await p.read_exactly(theirs, 65536)) == 65536  # the module is mid-write
    await theirs.reset()
    await barrier(peer, node)
    mark = recorder.mark()
    with pytest.raises(StreamReset):
        await reading.result(timeout=30)
    assert await writing.result(timeout=30) == "StreamReset:remoteReset"
    await barrier(peer, node)

    assert recorder.since(mark, stream_key(theirs)) == []
    assert not_ending(recorder.since(mark, stream_key(theirs))) == []
