"""Request/response (``Node.request`` / ``Node.serve``) between modules in their own
processes, and against a py-libp2p peer speaking nim-libp2p's framing by hand.

The go and js peers' cells are in test_interop.py."""

from __future__ import annotations

import pytest
import trio

from logos_p2p._frames import decode_uvarint, lp_frame
from logos_p2p.errors import (
    Cause,
    EndOfStream,
    FrameTooLarge,
    InvalidArgument,
    ProtocolNotSupported,
    StreamReset,
    Timeout,
)
from logos_p2p.server import _libp2p

from .conftest import eventually, node_status
from .support import peer as p
from .support.scenarios import pattern

PROTO = "/kv/1.0.0"


async def idle(node, modules: int) -> None:
    """No stream, task, stream slot or byte of memory left in use at ``node``."""

    async def check() -> bool:
        s = await node_status(node.rpc)
        held = [u for u in s["limits"] if u["used"] and u["resource"].startswith(("streams", "memory"))]
        return s["streams"] == 0 and s["tasks"] == 0 and not held and len(s["modules"]) == modules

    await eventually(check, timeout=5, what="the node holds nothing")


@pytest.fixture(params=["push"])
def data_path(request):
    """Request/response travels over RPC whatever the module's data path; one is enough
    here (test_requests_on_every_data_path covers the others)."""
    return request.param


async def test_a_module_asks_another_module_on_another_node(node_factory, modules):
    a, b = node_factory(), node_factory()
    server, client = await modules(a), await modules(b)
    assert await server.call("serve", "s", [PROTO]) == [PROTO]
    reply = await client.call("request", a.peer_id, [PROTO], b"hello", {"addrs": a.addrs[:1]})
    assert reply == b"re:hello"
    event = await server.event("request")
    assert event == {"data": b"hello", "peer": b.peer_id, "protocol": PROTO}
    replies = await client.call("requests", a.peer_id, [PROTO], 50, 10, timeout=30)
    assert replies == [b"re:%d" % i for i in range(50)]
    assert (await node_status(a.rpc))["streamsTotal"] == 51
    await idle(a, 1)
    await idle(b, 1)


async def two_nodes(node_factory, modules):
    a, b = node_factory(), node_factory()
    server, client = await modules(a), await modules(b)
    await server.call("serve", "s", [PROTO], 1000)
    return a, b, server, client


async def test_request_failures_are_typed_and_the_responder_keeps_serving(node_factory, modules):
    a, b, server, client = await two_nodes(node_factory, modules)
    first = {"addrs": a.addrs[:1]}
    with pytest.raises(ProtocolNotSupported):
        await client.call("request", a.peer_id, ["/nobody/1"], b"x", first)
    # the responder raises: that stream is reset, the next request is answered
    with pytest.raises(StreamReset) as info:
        await client.call("request", a.peer_id, [PROTO], b"boom")
    assert info.value.cause is Cause.REMOTE_RESET
    assert (await server.event("request"))["data"] == b"boom"
    assert await client.call("request", a.peer_id, [PROTO], b"again") == b"re:again"
    # a request over the responder's max_size (1000) never reaches it
    with pytest.raises(StreamReset):
        await client.call("request", a.peer_id, [PROTO], b"y" * 1001)
    # a reply over the requester's max_size
    with pytest.raises(FrameTooLarge):
        await client.call("request", a.peer_id, [PROTO], b"big:5000", {"max_size": 4999})
    assert await client.call("request", a.peer_id, [PROTO], b"big:5000", {"max_size": 5000}) == pattern(5000)
    with pytest.raises(InvalidArgument):
        await client.call("request", a.peer_id, [PROTO], b"x", {"max_size": 0})
    status = await node_status(a.rpc)
    resets = {r["cause"]: r["count"] for r in status["resets"]}
    assert resets == {"handlerFailed": 1, "limitExceeded": 1}, resets
    await idle(a, 1)
    await idle(b, 1)


async def test_a_request_that_times_out_is_reset_and_the_responder_call_cancelled(node_factory, modules):
    a, b, server, client = await two_nodes(node_factory, modules)
    with pytest.raises(Timeout):
        await client.call("request", a.peer_id, [PROTO], b"hang", {"addrs": a.addrs[:1], "timeout": 0.5})
    assert (await server.event("request"))["data"] == b"hang"
    # the reset reached the serving node, which stopped waiting for its module
    await idle(a, 1)
    await idle(b, 1)
    resets = {r["cause"]: r["count"] for r in (await node_status(b.rpc))["resets"]}
    assert resets == {"timeout": 1}


async def test_the_serving_module_killed_mid_request_is_a_reset_and_its_protocol_unmounted(node_factory, modules):
    a, _b, server, client = await two_nodes(node_factory, modules)
    pending = client.start("request", a.peer_id, [PROTO], b"hang", {"addrs": a.addrs[:1]})
    await server.event("request")
    server.proc.kill()
    with pytest.raises(StreamReset):
        await pending.result(10)
    with pytest.raises(ProtocolNotSupported):
        await client.call("request", a.peer_id, [PROTO], b"x")
    await idle(a, 0)


async def test_a_requesting_module_killed_mid_request_leaves_nothing(node_factory, modules):
    a, b, server, client = await two_nodes(node_factory, modules)
    client.start("request", a.peer_id, [PROTO], b"hang", {"addrs": a.addrs[:1]})
    await server.event("request")
    client.proc.kill()
    await idle(b, 0)
    await idle(a, 1)  # the reset reached the serving node too
    assert await server.call("node_call", "status") is not None


@pytest.mark.parametrize("data_path", ["socket", "push", "pull"], indirect=True)
async def test_requests_on_every_data_path(node_factory, modules, data_path):
    a, _b, _server, client = await two_nodes(node_factory, modules)
    assert await client.call("request", a.peer_id, [PROTO], b"", {"addrs": a.addrs[:1]}) == b"re:"
    assert await client.call("request", a.peer_id, [PROTO], b"p" * 999) == b"re:" + b"p" * 999


# -- a peer that speaks the framing itself (nim-libp2p's readLp / writeLp, by hand) ---------------


async def read_frame(stream) -> bytes:
    buf = b""
    while (head := decode_uvarint(buf)) is None or len(buf) < sum(head):
        chunk = await p.read(stream)
        if chunk is None:
            raise EOFError(buf)
        buf += chunk
    length, used = head
    return buf[used : used + length]


@pytest.mark.parametrize("half_close", [True, False], ids=["half-closed", "not-half-closed"])
async def test_a_peer_asks_a_module(node, peer, modules, half_close):
    server = await modules(node)
    await server.call("serve", "s", [PROTO])
    stream = await peer.open(node.addr, [PROTO])
    await _libp2p.write(stream, lp_frame(b"whois"))
    if half_close:
        await _libp2p.close_write(stream)
    with trio.fail_after(10):
        assert await read_frame(stream) == b"re:whois"
        assert await p.read(stream) is None  # then the module's side closed it
    event = await server.event("request")
    assert event["peer"] == peer.peer_id


async def test_a_module_asks_a_peer(node, peer, modules):
    client = await modules(node)
    seen = []

    async def answer(stream) -> None:
        request = await read_frame(stream)
        seen.append((request, await p.read(stream)))  # the requester half-closed
        await _libp2p.write(stream, lp_frame(b"peer says " + request))
        await _libp2p.close_write(stream)

    peer.host.set_stream_handler(PROTO, answer)
    reply = await client.call("request", peer.peer_id, [PROTO], b"hi", {"addrs": [peer.addr]})
    assert reply == b"peer says hi"
    assert seen == [(b"hi", None)]

    # a peer that closes before a whole reply: EndOfStream
    async def truncated(stream) -> None:
        await read_frame(stream)
        await _libp2p.write(stream, b"\x05abc")
        await _libp2p.close_write(stream)

    peer.host.set_stream_handler("/truncated/1", truncated)
    with pytest.raises(EndOfStream):
        await client.call("request", peer.peer_id, ["/truncated/1"], b"hi")
    await idle(node, 1)


# -- a requester that misbehaves ------------------------------------------------------------------


async def test_silent_and_malformed_requests_are_reset_and_the_responder_keeps_serving(node, peer, modules):
    server = await modules(node)
    await server.call("serve", "s", [PROTO], 1000, 0.5)
    silent = await peer.open(node.addr, [PROTO])  # opens, never sends its request
    garbage = await peer.open(node.addr, [PROTO])
    await _libp2p.write(garbage, b"\xff" * 11)  # a varint longer than 10 bytes
    with trio.fail_after(10):
        with pytest.raises(StreamReset):
            await p.read(garbage)
        with pytest.raises(StreamReset):
            await p.read(silent)  # the serve timeout (0.5 s) passed
    good = await peer.open(node.addr, [PROTO])
    await _libp2p.write(good, lp_frame(b"still there?"))
    with trio.fail_after(10):
        assert await read_frame(good) == b"re:still there?"
    await _libp2p.close_write(good)  # else the node's close lingers for our half-close
    resets = {r["cause"]: r["count"] for r in (await node_status(node.rpc))["resets"]}
    assert resets == {"timeout": 1, "limitExceeded": 1}, resets
    assert server.events_named("request") == [{"data": b"still there?", "peer": peer.peer_id, "protocol": PROTO}]
    await idle(node, 1)
