"""Limits and timeouts: each configurable (``logos-p2p serve --help``), each enforced with a
typed error, and the node keeps serving afterwards."""

from __future__ import annotations

from typing import Any

import capnp
import pytest
import trio

from logos_p2p import _schema, _wire
from logos_p2p._kj import kj_loop
from logos_p2p.client._translate import to_error
from logos_p2p.errors import Cause, LimitExceeded, NodeDisconnected, StreamReset, StreamTimeout

from .conftest import eventually, node_status, run_aio
from .support import peer as p
from .test_lifecycle import held_inbound, negotiation_failed, nothing_left

PROTO = "/limits/1.0.0"
MiB = 1024 * 1024


async def resets(node) -> dict[str, int]:
    return {r["cause"]: r["count"] for r in (await node_status(node.rpc))["resets"]}


# -- the idle timeout -------------------------------------------------------------------------------


async def test_an_idle_stream_is_reset_as_a_timeout_on_both_sides(node_factory, peer, modules):
    node = node_factory("--idle-timeout", "0.5")
    module = await modules(node)
    await module.call("register_holder", "h", [PROTO])
    stream, key = await held_inbound(node, peer, module, PROTO)
    started = trio.current_time()
    pending = module.start("stream_op", key, "read", 10)
    with pytest.raises(StreamTimeout) as info:
        await pending.result(timeout=3)
    elapsed = trio.current_time() - started
    assert info.value.cause is Cause.TIMEOUT
    assert 0.45 < elapsed < 0.5 * 1.25 + 0.3, elapsed  # checked 4 times per timeout
    with pytest.raises(StreamReset):
        await p.read_all(stream, timeout=1)
    assert p.reset_recorded(stream)
    await nothing_left(node, modules_expected=1, registrations=1)
    assert await resets(node) == {"timeout": 1}


async def test_a_stream_that_moves_bytes_outlives_the_idle_timeout(node_factory, peer, modules):
    node = node_factory("--idle-timeout", "0.5")
    module = await modules(node)
    await module.call("register_echo", "e", [PROTO])
    stream = await peer.open(node.addr, [PROTO])
    started = trio.current_time()
    sent = 0
    while trio.current_time() - started < 1.5:  # three idle timeouts, never idle for more than 0.1 s
        await stream.write(b"tick")
        assert await p.read_exactly(stream, 4) == b"tick"
        sent += 1
        await trio.sleep(0.1)  # pacing the traffic, not synchronising
    await stream.close_write()
    assert await p.read_all(stream) == b""
    assert sent >= 10
    assert await resets(node) == {}


def test_idle_timeout_zero_turns_it_off_and_bad_values_are_refused(tmp_path):
    from .test_cli import run_cli

    for bad in (["--idle-timeout", "-1"], ["--max-stream-buffer", "1000"], ["--max-streams-per-module", "0"]):
        result = run_cli("serve", "--rpc", f"unix:{tmp_path / 's'}", "--listen", "/ip4/127.0.0.1/tcp/0", *bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr, bad


# -- streams and registrations per module ---------------------------------------------------------------


async def test_streams_per_module_are_capped_both_ways(node_factory, peer, modules):
    node = node_factory("--max-streams-per-module", "3")
    module = await modules(node)
    await module.call("register_holder", "h", [PROTO])
    held = [await held_inbound(node, peer, module, PROTO) for _ in range(2)]
    peer.serve_echo("/echo/1.0.0")
    await module.call("open_stream", "o1", peer.peer_id, ["/echo/1.0.0"], [peer.addr], 10)
    with pytest.raises(LimitExceeded, match=r"module:\d+: 3 streams"):  # a fourth, outbound
        await module.call("open_stream", "o2", peer.peer_id, ["/echo/1.0.0"], [peer.addr], 10)
    await p.reset_while_opening(peer, node.addr, [PROTO])  # a fourth, inbound
    assert await resets(node) == {"limitExceeded": 1}
    [mod] = (await node_status(node.rpc))["modules"]
    assert (mod["inboundStreams"], mod["outboundStreams"]) == (2, 1)

    module.signal(f"release:{held[0][1]}")  # one ends: room for a new one
    await held[0][0].close_write()
    assert await p.read_all(held[0][0]) == b""

    async def two_left() -> bool:
        return (await node_status(node.rpc))["streams"] == 2

    await eventually(two_left)
    await module.call("open_stream", "o3", peer.peer_id, ["/echo/1.0.0"], [peer.addr], 10)


async def test_registrations_per_module_are_capped(node_factory, peer, modules):
    node = node_factory("--max-registrations-per-module", "5")
    module = await modules(node)
    counts = await module.call("register_many", "/many", 8)
    assert counts == {"ok": 5, "LimitExceeded": 3}
    other = await modules(node, name="other")  # the cap is per module
    assert await other.call("register_many", "/other", 5) == {"ok": 5}
    assert (await node_status(node.rpc))["registrations"] == 10


@pytest.mark.parametrize("data_path", ["socket"])  # registering does not depend on the data path
async def test_ten_thousand_registrations_from_one_module(node, peer, modules):
    module = await modules(node)
    counts = await module.call("register_many", "/flood", 10_000, timeout=120)
    assert counts == {"ok": 1024, "LimitExceeded": 10_000 - 1024}  # the default cap
    with pytest.raises(LimitExceeded):
        await module.call("register_echo", "e", ["/still/1.0.0"])
    # the node keeps serving: another module registers and echoes
    other = await modules(node, name="other")
    await other.call("register_echo", "e", ["/echo/1.0.0"])
    stream = await peer.open(node.addr, ["/echo/1.0.0"])
    await stream.write(b"alive")
    await stream.close_write()
    assert await p.read_all(stream) == b"alive"
    with pytest.raises(Exception) as info:
        await peer.open(node.addr, ["/flood/9999"])
    assert negotiation_failed(info.value)
    assert await module.call("unregister_all") == 1024
    await nothing_left(node, modules_expected=2, registrations=1)


# -- bytes: queued per stream, and per RPC message ----------------------------------------------------


async def raw_outbound(node, peer, fn) -> Any:
    """Run ``fn(stream capability)`` on a raw outbound stream to ``peer``'s never-reading sink
    (as a C++ module would: no client library, no flow control of its own)."""
    rpc = _schema.load()
    peer.serve("/sink/1.0.0")

    async def scenario() -> Any:
        async with kj_loop():
            conn = await capnp.AsyncIoStream.create_unix_connection(node.rpc.removeprefix("unix:"))
            client = capnp.TwoPartyClient(conn)
            try:
                bootstrap = client.bootstrap().cast_as(rpc.Node)
                opened = await bootstrap.openStream(
                    peerId=peer.peer_id, protocols=["/sink/1.0.0"], addrs=[peer.addr], timeoutMs=10_000
                )
                return await fn(opened.stream)
            finally:
                client.close()

    return await run_aio(scenario)


def typed(exc: BaseException) -> type:
    if isinstance(exc, capnp.KjException):
        error = _wire.marker_to_error(exc.description)
        return type(error) if error is not None else type(exc)
    return type(exc)


WRITES = 120


async def test_writes_beyond_the_stream_buffer_fail_with_limit_exceeded(node_factory, peer):
    node = node_factory("--max-stream-buffer", str(MiB))

    async def flood(stream: Any) -> list[type]:
        import asyncio

        block = b"x" * (256 * 1024)
        calls = [asyncio.ensure_future(stream.write(data=block)) for _ in range(WRITES)]  # 30 MiB
        with pytest.raises(capnp.KjException) as last:  # the node queues in order: the last one is over
            await asyncio.wait_for(calls[-1], 10)
        assert typed(last.value) is LimitExceeded
        await stream.reset()  # writes still waiting for room end with the reset
        done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        return [typed(r) if isinstance(r, BaseException) else type(None) for r in done]

    outcomes = await raw_outbound(node, peer, flood)
    # writes fit while what the peer's side absorbs plus the node's 1 MiB has room; the rest fail
    refused = outcomes.count(LimitExceeded)
    assert 4 <= WRITES - refused < WRITES - 40, outcomes
    assert set(outcomes) <= {type(None), StreamReset, LimitExceeded}
    status = await node_status(node.rpc)
    assert status["streams"] == 0 and all(m["bufferedBytes"] == 0 for m in status["modules"])


async def test_a_write_over_max_write_is_refused_and_the_stream_lives_on(node_factory, peer):
    node = node_factory("--max-write", str(MiB))

    async def big_then_small(stream: Any) -> tuple[type, type]:
        try:
            await stream.write(data=b"x" * (MiB + 1))
            first: type = type(None)
        except capnp.KjException as exc:
            first = typed(exc)
        await stream.write(data=b"small")  # the same stream, still writable
        await stream.close()
        return first, type(None)

    assert await raw_outbound(node, peer, big_then_small) == (LimitExceeded, type(None))


async def test_an_rpc_message_over_the_limit_cuts_that_module_only(node_factory, peer, modules):
    """Cap'n Proto refuses a message over its traversal limit by dropping the connection:
    the module sees NodeDisconnected, its streams are reset, the node serves everyone else."""
    node = node_factory("--max-rpc-message", str(MiB), "--max-write", str(MiB // 2))
    module = await modules(node)
    await module.call("register_echo", "e", ["/echo/1.0.0"])

    async def too_big(stream: Any) -> type:
        try:
            await stream.write(data=b"x" * (2 * MiB))
        except Exception as exc:
            return typed(to_error(exc))
        return type(None)

    assert await raw_outbound(node, peer, too_big) is NodeDisconnected
    stream = await peer.open(node.addr, ["/echo/1.0.0"])  # the node still serves the other module
    await stream.write(b"x" * 300_000)  # the client library's writes stay under any allowed limit
    await stream.close_write()
    assert await p.read_all(stream) == b"x" * 300_000
    await nothing_left(node, modules_expected=1, registrations=1)
