"""The issue's first example, end to end, with every party in its own place."""

from .conftest import node_status
from .support import peer as p


async def test_inbound_echo_through_a_module(node, peer, modules):
    module = await modules(node)
    assert await module.call("register_echo", "e", ["/echo/1.0.0"]) == ["/echo/1.0.0"]
    stream = await peer.open(node.addr, ["/echo/1.0.0"])
    await stream.write(b"hello")
    await stream.close_write()
    assert await p.read_all(stream) == b"hello"


async def test_outbound_echo_to_a_peer(node, peer, modules, aio):
    peer.serve_echo("/echo/1.0.0")
    module = await modules(node)
    info = await module.call("open_stream", "s", peer.peer_id, ["/echo/1.0.0"], [peer.addr], 10)
    assert info == {"protocol": "/echo/1.0.0", "direction": "outbound", "remote_peer_id": peer.peer_id}
    s = module.stream("s")
    await s.write(b"hello")
    await s.close_write()
    assert await s.read_all() == b"hello"
    status = await node_status(node.rpc)
    assert status["peerId"] == node.peer_id
    [mod] = status["modules"]
    assert mod["name"] == "test-module" and mod["bytesOut"] == 5 and mod["bytesIn"] == 5
