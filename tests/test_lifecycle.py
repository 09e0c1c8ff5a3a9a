"""The lifecycle table of the core issue, row by row, each module in its own process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from logos_p2p.errors import (
    Cause,
    ConnectionLost,
    InvalidArgument,
    NodeDisconnected,
    NodeShutdown,
    PeerUnreachable,
    ProtocolNotSupported,
    StreamReset,
    Timeout,
)
from logos_p2p.server import _libp2p

from .conftest import eventually, node_status
from .support import peer as p
from .support.modproc import ROOT, ModuleError
from .support.peer import negotiation_failed
from .support.scenarios import pattern

PROTO = "/life/1.0.0"


async def nothing_left(node, modules_expected: int = 0, registrations: int = 0) -> None:
    """No stream, task or buffer left on the node; only the modules and registrations expected."""
    seen = {}

    async def check() -> bool:
        s = await node_status(node.rpc)
        seen.update(s)
        buffered = sum(m["bufferedBytes"] for m in s["modules"])
        return (len(s["modules"]), s["registrations"], s["streams"], s["tasks"], buffered) == (
            modules_expected,
            registrations,
            0,
            0,
            0,
        )

    try:
        await eventually(check, timeout=5)
    except trio.TooSlowError:
        raise AssertionError(f"the node still holds: {seen}") from None


async def held_inbound(node, peer, module, proto: str = PROTO):
    """A peer-opened stream whose module handler holds it; (peer stream, module key)."""
    stream = await peer.open(node.addr, [proto])
    return stream, (await module.event("stream"))["key"]


async def held_both_ways(node, peer, module):
    """One stream each way, held by a holder module: (inbound peer stream, its module key,
    outbound peer stream, whose module key is "o")."""
    await module.call("register_holder", "h", [PROTO])
    inbound, key = await held_inbound(node, peer, module)
    incoming = peer.serve("/out/1.0.0")
    await module.call("open_stream", "o", peer.peer_id, ["/out/1.0.0"], [peer.addr], 10)
    with trio.fail_after(5):
        outbound = await incoming.receive()
    return inbound, key, outbound


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel does) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"/ip4/127.0.0.1/tcp/{sock.getsockname()[1]}"
    finally:
        sock.close()


def stranger() -> str:
    return str(ID.from_pubkey(create_new_key_pair().public_key))


# -- a dropped Stream capability ----------------------------------------------------------------------


async def test_a_dropped_inbound_stream_capability_is_reset(node, peer, modules):
    module = await modules(node)
    await module.call("register_raw_dropper", [PROTO])
    await p.reset_while_opening(peer, node.addr, [PROTO])
    await module.event("dropped")
    await nothing_left(node, modules_expected=1, registrations=1)
    resets = {r["cause"]: r["count"] for r in (await node_status(node.rpc))["resets"]}
    assert resets == {"capabilityDropped": 1}


# (a dropped outbound stream: test_streams.py::test_dropping_the_stream_resets_it)


# -- the module dies, or its RPC connection breaks --------------------------------------------------


async def test_a_killed_module_loses_its_registrations_and_its_streams_are_reset(node, peer, modules):
    module = await modules(node)
    inbound, _, outbound = await held_both_ways(node, peer, module)

    started = trio.current_time()
    module.kill()
    for stream in (inbound, outbound):
        with pytest.raises(StreamReset):
            await p.read_all(stream, timeout=1)
        assert p.reset_recorded(stream)
    assert trio.current_time() - started < 1.0

    with pytest.raises(Exception) as info:
        await peer.open(node.addr, [PROTO])
    assert negotiation_failed(info.value)
    await nothing_left(node)


async def test_a_module_killed_while_opening_a_stream_leaves_no_task(node, modules, blackhole):
    """An open in progress (to a peer that never answers, 30 s timeout) stops with its module."""
    module = await modules(node)
    module.start("pending_open", "x", stranger(), blackhole, 30)

    async def opening() -> bool:
        return (await node_status(node.rpc))["tasks"] == 1

    await eventually(opening)
    module.kill()
    await nothing_left(node)


async def test_a_module_killed_mid_read_and_mid_write_resets_both_streams_within_a_second(node, peer, modules):
    """SIGKILL while the module is inside a read (the peer is sending to it) and inside a
    write (it is sending to the peer): both peers see a reset within 1 s, what did arrive
    is an intact prefix of what was sent, and the node keeps nothing for the module."""
    mib = 1024 * 1024
    module = await modules(node)
    inbound, key, outbound = await held_both_ways(node, peer, module)

    block = pattern(65536)
    received = bytearray()
    ended: dict[str, tuple[BaseException, float]] = {}

    async def peer_sends() -> None:  # feeds the module's read until the stream dies
        with contextlib.suppress(Exception):
            while True:
                await inbound.write(block)

    async def peer_watches_inbound() -> None:
        try:
            await p.read_all(inbound, timeout=30)
        except Exception as exc:
            ended["inbound"] = (exc, trio.current_time())

    async def peer_receives() -> None:  # drains the module's writes
        try:
            with trio.fail_after(30):
                while (data := await _libp2p.read(outbound, 65536)) is not None:
                    received.extend(data)
        except Exception as exc:
            ended["outbound"] = (exc, trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer_sends)
        async with trio.open_nursery() as watchers:  # each ends on the reset (or its own timeout)
            watchers.start_soon(peer_watches_inbound)
            watchers.start_soon(peer_receives)
            reading = module.start("read_reporting", key, mib)
            writing = module.start("write_many", "o", 65536, 1024 * mib)
            assert await module.event("reading") >= mib
            while await module.event("progress") < mib:
                pass
            started = trio.current_time()
            module.kill()
        nursery.cancel_scope.cancel()

    for side in ("inbound", "outbound"):
        exc, when = ended[side]
        assert isinstance(exc, StreamReset), f"{side}: {exc!r}"
        assert when - started < 1.0, f"{side}: the reset took {when - started:.2f}s"
    assert p.reset_recorded(inbound) and p.reset_recorded(outbound)
    assert 0 < len(received) < 1024 * mib
    assert received == (block * (len(received) // len(block) + 1))[: len(received)]
    for call in (reading, writing):
        with pytest.raises(ModuleError) as died:
            await call.result(timeout=5)
        assert died.value.type_name == "ModuleExited"
    await nothing_left(node)


async def test_a_cut_rpc_connection_is_a_dead_module_on_both_sides(node, peer, modules):
    module = await modules(node)
    await module.call("register_holder", "h", [PROTO])
    inbound, key = await held_inbound(node, peer, module)
    pending = module.start("stream_op", key, "read", 10)
    await trio.testing.wait_all_tasks_blocked()

    assert await module.call("cut_rpc") >= 1
    with pytest.raises(NodeDisconnected):
        await pending.result()
    with pytest.raises(NodeDisconnected):
        await module.stream(key).write(b"x")
    with pytest.raises(StreamReset):
        await p.read_all(inbound, timeout=1)
    with pytest.raises(Exception) as info:
        await peer.open(node.addr, [PROTO])
    assert negotiation_failed(info.value)
    await nothing_left(node)


# -- unregistering ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["unregister", "drop_registration", "leave_handle_block"])
async def test_unregistering_unmounts_but_open_streams_keep_working(node, peer, modules, how):
    module = await modules(node)
    if how == "leave_handle_block":
        block = module.start("handle_block", "h", [PROTO])
        await module.event("registered")
    else:
        await module.call("register_holder", "h", [PROTO])
    stream, key = await held_inbound(node, peer, module)

    if how == "leave_handle_block":
        module.signal("leave:h")
        assert await block.result() == "left"
    else:
        await module.call(how, "h")

    async def unmounted() -> bool:
        return (await node_status(node.rpc))["registrations"] == 0

    await eventually(unmounted)
    with pytest.raises(Exception) as info:
        await peer.open(node.addr, [PROTO])
    assert negotiation_failed(info.value)

    await stream.write(b"still")  # the open stream is unaffected, both ways
    assert await module.stream(key).read_exactly(5) == b"still"
    await module.stream(key).write(b"here")
    assert await p.read_exactly(stream, 4) == b"here"
    module.signal(f"release:{key}")  # the handler returns: the stream closes cleanly
    await stream.close_write()
    assert await p.read_all(stream) == b""
    await nothing_left(node, modules_expected=1)


# -- the remote peer resets or half-closes (more in test_streams.py) --------------------------------


async def test_a_remote_reset_fails_a_pending_write(node, peer, modules):
    module = await modules(node)
    incoming = peer.serve("/sink/1.0.0")  # the peer never reads
    await module.call("open_stream", "o", peer.peer_id, ["/sink/1.0.0"], [peer.addr], 10)
    with trio.fail_after(5):
        stream = await incoming.receive()
    writing = module.start("write_many", "o", 65536, 64 * 1024 * 1024)
    await module.event("progress")
    await stream.reset()
    with pytest.raises(StreamReset) as info:
        await writing.result(timeout=5)
    assert info.value.cause is Cause.REMOTE_RESET
    with pytest.raises(StreamReset):
        await module.stream("o").write(b"x")
    await nothing_left(node, modules_expected=1)


# -- the libp2p connection is lost ------------------------------------------------------------------------


async def test_a_lost_connection_reaches_a_pending_read_within_a_second(node, peer, modules):
    module = await modules(node)
    await module.call("register_holder", "h", [PROTO])
    _, key = await held_inbound(node, peer, module)
    pending = module.start("stream_op", key, "read", 10)
    await trio.testing.wait_all_tasks_blocked()
    started = trio.current_time()
    await peer.host.disconnect(ID.from_base58(node.peer_id))
    with pytest.raises(ConnectionLost) as info:
        await pending.result(timeout=2)
    assert trio.current_time() - started < 1.0
    assert info.value.cause is Cause.CONNECTION_LOST
    await nothing_left(node, modules_expected=1, registrations=1)


async def test_a_killed_peer_process_is_a_lost_connection(node, modules):
    module = await modules(node)
    await module.call("register_holder", "h", [PROTO])
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(ROOT / "tests/support/peer_proc.py"), node.addr, PROTO],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        with trio.fail_after(20):
            assert (await proc.stdout.receive_some(100)).strip() == b"open"
        key = (await module.event("stream"))["key"]
        assert await module.stream(key).read_exactly(5) == b"hello"
        pending = module.start("stream_op", key, "read", 10)
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        os.kill(proc.pid, signal.SIGKILL)
        with pytest.raises(ConnectionLost):
            await pending.result(timeout=2)
        assert trio.current_time() - started < 1.0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    await nothing_left(node, modules_expected=1, registrations=1)


# -- the handler raises -------------------------------------------------------------------------------------


async def test_a_handler_that_raises_resets_its_stream_and_the_node_keeps_serving(node, peer, modules):
    module = await modules(node)
    await module.call("register_failing", "f", [PROTO])
    await module.call("register_echo", "e", ["/echo/1.0.0"])
    for _ in range(3):
        stream = await peer.open(node.addr, [PROTO])
        await stream.write(b"x")
        with pytest.raises(StreamReset):
            await p.read_all(stream)
    echo = await peer.open(node.addr, ["/echo/1.0.0"])
    await echo.write(b"alive")
    await echo.close_write()
    assert await p.read_all(echo) == b"alive"
    resets = {r["cause"]: r["count"] for r in (await node_status(node.rpc))["resets"]}
    assert resets == {"localReset": 3}


# -- the node shuts down ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_node_shutdown_fails_pending_calls_resets_streams_and_exits_fast(node, peer, modules, blackhole, sig):
    module = await modules(node)
    await module.call("register_holder", "h", [PROTO])
    inbound, key = await held_inbound(node, peer, module)
    reading = module.start("stream_op", key, "read", 10)
    opening = module.start("pending_open", "x", stranger(), blackhole, 30)
    await module.event("opening")
    await trio.testing.wait_all_tasks_blocked()

    started = trio.current_time()
    os.kill(node.pid, sig)
    with pytest.raises(NodeShutdown):
        await reading.result(timeout=3)
    with pytest.raises(NodeShutdown):
        await opening.result(timeout=3)
    with pytest.raises(StreamReset):
        await p.read_all(inbound, timeout=3)
    code = await trio.to_thread.run_sync(node.proc.wait, 5)
    elapsed = trio.current_time() - started
    assert code == 0
    assert elapsed < 2.0, f"the node took {elapsed:.2f}s to exit"
    with pytest.raises(NodeShutdown):
        await module.call("node_call", "info")


# -- opening a stream fails --------------------------------------------------------------------------------


async def test_open_stream_failures_are_typed_and_timely(node, peer, modules, blackhole):
    module = await modules(node)
    peer.serve_echo("/echo/1.0.0")

    with pytest.raises(ProtocolNotSupported):
        await module.call("open_stream", "a", peer.peer_id, ["/nope/1.0.0", "/nor/this"], [peer.addr], 10)

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    started = trio.current_time()
    with pytest.raises(PeerUnreachable):
        await module.call("open_stream", "b", stranger(), ["/echo/1.0.0"], [f"/ip4/127.0.0.1/tcp/{port}"], 10)
    assert trio.current_time() - started < 5

    started = trio.current_time()
    with pytest.raises(Timeout):
        await module.call("open_stream", "c", stranger(), ["/echo/1.0.0"], [blackhole], 1.0)
    assert 0.9 < trio.current_time() - started < 3

    with pytest.raises(PeerUnreachable):
        await module.call("open_stream", "d", stranger(), ["/echo/1.0.0"], [], 5)
    with pytest.raises(InvalidArgument):
        await module.call("open_stream", "e", "not-a-peer-id", ["/echo/1.0.0"], [], 5)
    with pytest.raises(InvalidArgument):
        await module.call("open_stream", "f", peer.peer_id, ["no-slash"], [peer.addr], 5)
    with pytest.raises(InvalidArgument):  # an address that names another peer
        await module.call("open_stream", "h", stranger(), ["/echo/1.0.0"], [peer.addr], 5)

    # and the node still opens streams afterwards
    await module.call("open_stream", "g", peer.peer_id, ["/echo/1.0.0"], [peer.addr], 10)
    assert (await node_status(node.rpc))["streams"] == 1


async def test_a_reset_before_the_handler_answers_still_reaches_the_module(node, peer, modules):
    """The handler's answer (carrying its sink) crosses the reset: the sink must hear it."""
    module = await modules(node)
    await module.call("register_late_answer", [PROTO])
    stream = await peer.open(node.addr, [PROTO])
    await module.event("offered")
    await stream.reset()

    async def reset_seen() -> bool:
        return any(r["cause"] == "remoteReset" for r in (await node_status(node.rpc))["resets"])

    await eventually(reset_seen)
    module.signal("answer")
    assert await module.event("end") == "remoteReset"
