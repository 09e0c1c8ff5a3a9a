"""Peer events (``Node.subscribePeerEvents`` / ``node.peer_events()``), with modules in
their own processes and a real py-libp2p peer; the go and js peers' cells are in
test_interop.py."""

from __future__ import annotations

import pytest
from libp2p.peer.id import ID

from logos_p2p.errors import LimitExceeded

from .conftest import eventually, node_status
from .support.peer import open_peer


@pytest.fixture(params=["push"])
def data_path(request):
    """Events travel over RPC whatever the data path."""
    return request.param


async def next_event(module, key: str, kind: str | None = None) -> dict:
    event = await module.event(f"peer:{key}")
    if kind is not None:
        assert event["kind"] == kind, event
    return event


async def subscriptions(node) -> int:
    return int((await node_status(node.rpc))["subscriptions"])


async def test_connect_identify_and_disconnect_arrive_in_order(node, peer, modules):
    module = await modules(node)
    await module.call("subscribe", "e")
    assert await subscriptions(node) == 1
    # the peer dials the node
    await peer.connect(node.addr)
    connected = await next_event(module, "e", "PeerConnected")
    assert connected["peer_id"] == peer.peer_id
    assert connected["direction"] == "inbound"
    assert connected["remote_addr"].startswith("/ip4/127.0.0.1/tcp/")
    identified = await next_event(module, "e", "PeerIdentified")
    assert identified["peer_id"] == peer.peer_id
    assert "/ipfs/id/1.0.0" in identified["protocols"]
    assert identified["agent_version"].startswith("py-libp2p")
    assert peer.addr.split("/p2p/")[0] in identified["listen_addrs"]
    # the node hangs up: closed by us
    await module.call("node_call", "disconnect_peer", peer.peer_id)
    assert await next_event(module, "e", "PeerDisconnected") == {
        "kind": "PeerDisconnected",
        "peer_id": peer.peer_id,
        "reason": "closedByUs",
    }
    # the node dials the peer: outbound; then the peer hangs up: closed by the peer
    await module.call("node_call", "connect_peer", peer.addr)
    assert (await next_event(module, "e", "PeerConnected"))["direction"] == "outbound"
    await next_event(module, "e", "PeerIdentified")
    await peer.host.disconnect(ID.from_base58(node.peer_id))
    gone = await next_event(module, "e", "PeerDisconnected")
    assert (gone["peer_id"], gone["reason"]) == (peer.peer_id, "closedByPeer")


async def test_a_peer_killed_under_the_node_is_closed_by_the_peer_and_a_broken_one_an_error(node, modules):
    module = await modules(node)
    await module.call("subscribe", "e")
    async with open_peer() as other:
        await other.connect(node.addr)
        await next_event(module, "e", "PeerConnected")
        await next_event(module, "e", "PeerIdentified")
        # break the connection's encryption: the node's next read fails to decrypt
        [conn] = [c for conns in other.host.get_network().connections.values() for c in conns]
        await conn.muxed_conn.secured_conn.conn.read_writer.write_msg(b"\xff" * 32)  # not a Noise message
        gone = await next_event(module, "e", "PeerDisconnected")
        assert (gone["peer_id"], gone["reason"]) == (other.peer_id, "error")


async def test_every_subscriber_gets_every_event_and_an_ended_one_leaves_nothing(node, modules):
    first, second = await modules(node, name="first"), await modules(node, name="second")
    await first.call("subscribe", "a")
    await first.call("subscribe", "b")
    await second.call("subscribe", "c")
    assert await subscriptions(node) == 3
    async with open_peer() as other:
        await other.connect(node.addr)
        for module, key in ((first, "a"), (first, "b"), (second, "c")):
            assert (await next_event(module, key, "PeerConnected"))["peer_id"] == other.peer_id
        await first.call("unsubscribe", "a", "close")
        await first.call("unsubscribe", "b", "drop")

        async def two_gone() -> bool:
            return await subscriptions(node) == 1

        await eventually(two_gone, what="both of first's subscriptions ended")
        await other.host.disconnect(ID.from_base58(node.peer_id))
    # the second module still hears the peer leave; the first nothing more
    await next_event(second, "c", "PeerIdentified")
    await next_event(second, "c", "PeerDisconnected")
    after = [e["kind"] for key in ("peer:a", "peer:b") for e in first.events_named(key)]
    assert "PeerDisconnected" not in after, after  # (an identify may have crossed the unsubscribe)
    second.proc.kill()

    async def none_left() -> bool:
        return await subscriptions(node) == 0

    await eventually(none_left, what="a dead module's subscription ended")


async def test_a_subscriber_that_does_not_keep_up_gets_one_overflow_then_new_events(node, modules):
    module = await modules(node)
    await module.call("subscribe_idle", "e", 4)
    # 40 peers come and go: up to 120 events, beyond what the module takes without
    # iterating (its own queue of 64, 8 calls in flight) plus the node's queue of 4
    for _ in range(40):
        async with open_peer() as other:
            await other.connect(node.addr)
    events = await module.call("drain_events", "e", "PeerEventsOverflowed", 1, timeout=20)
    kinds = [e["kind"] for e in events]
    assert kinds.count("PeerEventsOverflowed") == 1
    assert len(kinds) < 40 * 3
    assert await subscriptions(node) == 1  # the subscriber is not dropped for being slow
    async with open_peer() as late:
        await late.connect(node.addr)
        events = await module.call("drain_events", "e", "PeerConnected", 1, late.peer_id, timeout=20)
    assert events[-1]["peer_id"] == late.peer_id
    assert "PeerEventsOverflowed" not in [e["kind"] for e in events]


async def test_a_peer_that_pushes_new_protocols_is_identified_again(node, peer, modules):
    from libp2p.identity.identify_push.identify_push import push_identify_to_peers

    module = await modules(node)
    await module.call("subscribe", "e")
    await peer.connect(node.addr)
    await next_event(module, "e", "PeerConnected")
    first = await next_event(module, "e", "PeerIdentified")
    assert "/late/1.0.0" not in first["protocols"]
    peer.serve_echo("/late/1.0.0")
    await push_identify_to_peers(peer.host)
    again = await next_event(module, "e", "PeerIdentified")
    assert again["peer_id"] == peer.peer_id and "/late/1.0.0" in again["protocols"]


async def test_a_module_holds_at_most_sixteen_subscriptions(node, modules):
    module = await modules(node)
    for i in range(16):
        await module.call("subscribe_idle", f"e{i}", 4)
    with pytest.raises(LimitExceeded):
        await module.call("subscribe_idle", "one-too-many", 4)
    assert await subscriptions(node) == 16
    other = await modules(node, name="other")  # another module is not held back by it
    await other.call("subscribe_idle", "e", 4)
    assert await subscriptions(node) == 17
