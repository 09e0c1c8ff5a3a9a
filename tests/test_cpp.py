"""The C++ client (clients/cpp): its binaries, each a process of its own, against a node the
test started, with an in-process py-libp2p peer on the other side.

The CMake project is built once per session into a temporary directory (skipped, naming the
Debian packages, when Cap'n Proto's compiler or headers are missing). Three programs:

* ``cpp-echo-module`` (examples/cpp-echo): mounts /echo/1.0.0 through the facade, echoes
  every inbound stream on a thread of its own;
* ``cpp-echo-dial`` (examples/cpp-echo): dials a peer, writes, half-closes, reads it back;
* ``logos-p2p-facade-driver`` (tests/support/cpp): the C ABI, driven command by command over
  a line protocol; every command runs on a thread of its own, so calls overlap;
* ``logos-p2p-unary-check`` (tests/support/cpp): the asynchronous C++ API on one kj loop, no
  facade: Node.request, Node.serve, a dropped Stream.

When the ThreadSanitizer cell is selected, the driver is built a second time with
-DLOGOS_P2P_SANITIZE=thread, in the background from the end of the first build (niced), and
that cell runs the many-threads scenario against it (tests/support/cpp/tsan.supp says what
is suppressed and why).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from logos_p2p._frames import lp_frame
from logos_p2p.errors import StreamReset
from logos_p2p.server import _libp2p

from .conftest import eventually, node_status
from .support import peer as p
from .support.cpp_harness import (
    Binaries,
    CppError,
    Lines,
    echo_module,
    echo_through,
    peer_addr,
    read_frame,
    sha,
    tsan_driver,  # noqa: F401  (a fixture)
    tsan_env,
    two_reads,
)
from .support.interop import start_peer
from .support.nodeproc import wait_ready
from .support.peer import negotiation_failed, open_peer

MIB = 1024 * 1024
ECHO = "/echo/1.0.0"


async def resets(node: Any, cause: str) -> int:
    status = await node_status(node.rpc)
    return sum(r["count"] for r in status["resets"] if r["cause"] == cause)


# -- the cells -------------------------------------------------------------------------------------


def test_the_build_reports_its_time(cpp: Binaries) -> None:
    assert cpp.module.exists() and cpp.dial.exists() and cpp.driver.exists()
    print(f"clean CMake build of clients/cpp: {cpp.seconds:.1f} s")


async def test_the_echo_module_echoes_one_mebibyte_inbound(cpp, processes, node, peer) -> None:
    _, lines = await echo_module(cpp, processes, node)
    data = os.urandom(MIB)
    stream = await peer.open(node.addr, [ECHO])
    got = {"data": await echo_through(stream, data)}
    assert len(got["data"]) == MIB
    assert sha(got["data"]) == sha(data)
    assert await lines.line() == f"echoed {MIB} bytes"


async def test_the_echo_module_serves_eight_streams_at_once_one_thread_each(cpp, processes, node, peer) -> None:
    _, lines = await echo_module(cpp, processes, node)
    payloads = [os.urandom(128 * 1024 + i) for i in range(8)]
    back: dict[int, bytes] = {}

    async def one(i: int) -> None:
        stream = await peer.open(node.addr, [ECHO])
        await _libp2p.write(stream, payloads[i])
        await _libp2p.close_write(stream)
        back[i] = await p.read_all(stream, timeout=30)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(one, i)
    assert [sha(back[i]) for i in range(8)] == [sha(x) for x in payloads]
    echoed = sorted([await lines.line() for _ in range(8)])
    assert echoed == sorted(f"echoed {len(x)} bytes" for x in payloads)


async def test_the_dialer_echoes_through_a_py_libp2p_peer(cpp, processes, node, peer) -> None:
    peer.serve_echo(ECHO)
    message = "hello from c++ " * 1000
    proc = await processes(cpp.dial, node.rpc, peer_addr(peer), message)
    lines = Lines(proc)
    assert await lines.line() == f"got {len(message)} bytes: {message}"
    with trio.fail_after(10):
        assert await proc.wait() == 0


async def test_the_dialer_reports_a_peer_without_the_protocol(cpp, processes, node, peer) -> None:
    proc = await processes(cpp.dial, node.rpc, peer_addr(peer), "hi")
    line = await Lines(proc).line()
    assert line.startswith("error protocolNotSupported: "), line
    with trio.fail_after(10):
        assert await proc.wait() == 1


async def test_length_prefixed_frames_both_ways(driver, node, peer) -> None:
    proto = "/cpp/lp/1.0.0"
    await driver.call("mount", proto)
    stream = await peer.open(node.addr, [proto])
    sid = await driver.accept(proto)
    frames = [b"", b"a", os.urandom(300), os.urandom(70000)]
    await _libp2p.write(stream, b"".join(lp_frame(f) for f in frames))
    for frame in frames:
        [got] = await driver.call("readlp", sid, MIB, 5000)
        assert (bytes.fromhex(got) if got != "-" else b"") == frame
        await driver.call("writelp", sid, frame.hex() or "-", 5000)
    for frame in frames:
        assert await read_frame(stream) == frame

    await _libp2p.write(stream, lp_frame(b"x" * 100))
    with pytest.raises(CppError) as info:
        await driver.call("readlp", sid, 10, 5000)
    assert info.value.code == "frameTooLarge"
    [got] = await driver.call("readlp", sid, 1000, 5000)  # the frame stayed unread
    assert bytes.fromhex(got) == b"x" * 100

    await _libp2p.write(stream, b"\x05ab")  # a frame cut short by the half-close
    await _libp2p.close_write(stream)
    with pytest.raises(CppError) as info:
        await driver.call("readlp", sid, 1000, 5000)
    assert info.value.code == "endOfStream"
    await driver.call("close", sid, 5000)


async def test_a_timed_out_read_loses_nothing_and_two_reads_are_busy(driver, node, peer) -> None:
    proto = "/cpp/timeout/1.0.0"
    await driver.call("mount", proto)
    stream = await peer.open(node.addr, [proto])
    sid = await driver.accept(proto)
    with pytest.raises(CppError) as info:
        await driver.call("read", sid, 100, 200)
    assert info.value.code == "timeout"
    # two reads at once, from two driver threads: whichever reaches the loop second is busy
    async with two_reads(driver, sid) as outcomes:
        assert [code for code, _ in outcomes] == ["busy"]  # the other is pending: nothing to read yet
        await _libp2p.write(stream, b"abc")
    assert outcomes[1] == ("ok", [b"abc".hex()])  # the timed-out read lost nothing either
    await driver.call("closewrite", sid, 5000)
    assert await p.read_all(stream) == b""
    await _libp2p.close_write(stream)
    assert await driver.call("read", sid, 100, 5000) == ["-"]  # end of stream
    await driver.call("close", sid, 5000)


async def test_a_remote_reset_is_a_reset_not_an_end_of_stream(driver, node, peer) -> None:
    proto = "/cpp/reset/1.0.0"
    await driver.call("mount", proto)
    stream = await peer.open(node.addr, [proto])
    sid = await driver.accept(proto)
    await _libp2p.write(stream, b"x")
    assert await driver.call("read", sid, 100, 5000) == [b"x".hex()]
    blocked = driver.start("read", sid, 100, 0)
    await stream.reset()
    with pytest.raises(CppError) as info:
        await driver.result(blocked, timeout=5)
    assert (info.value.code, info.value.cause) == ("streamReset", "remoteReset")
    assert await driver.event() == ["streamReset", str(sid), "remoteReset"]
    for op in (("read", sid, 100, 5000), ("write", sid, "00", 5000)):  # it stays reset
        with pytest.raises(CppError) as info:
            await driver.call(*op)
        assert info.value.code == "streamReset"
    await driver.call("release", sid)


async def test_a_killed_module_resets_its_stream_within_a_second_and_is_unmounted(cpp, processes, node, peer) -> None:
    module, _ = await echo_module(cpp, processes, node)
    stream = await peer.open(node.addr, [ECHO])
    await _libp2p.write(stream, b"ping")
    assert await p.read_exactly(stream, 4) == b"ping"  # mid-stream: the module holds it
    started = trio.current_time()
    os.kill(module.pid, signal.SIGKILL)
    with pytest.raises(StreamReset):
        await p.read_all(stream, timeout=1)
    assert trio.current_time() - started < 1.0
    assert p.reset_recorded(stream)
    with pytest.raises(Exception) as info:
        await peer.open(node.addr, [ECHO])
    assert negotiation_failed(info.value), info.value


async def test_a_released_stream_is_reset_at_the_peer_both_directions(driver, node, peer) -> None:
    proto = "/cpp/drop/1.0.0"
    await driver.call("mount", proto)
    before = await resets(node, "capabilityDropped")
    inbound = await peer.open(node.addr, [proto])
    sid = await driver.accept(proto)
    await driver.call("release", sid)
    with pytest.raises(StreamReset):
        await p.read_all(inbound, timeout=2)
    assert p.reset_recorded(inbound)

    accepted = peer.serve(proto)
    [oid] = await driver.call("dial", peer.peer_id, proto, peer_addr(peer), 10000)
    with trio.fail_after(10):
        outbound = await accepted.receive()
    await driver.call("release", oid)
    with pytest.raises(StreamReset):
        await p.read_all(outbound, timeout=2)
    with pytest.raises(CppError) as info:  # the id is gone
        await driver.call("read", oid, 10, 1000)
    assert info.value.code == "invalidArgument"

    async def counted() -> bool:
        return await resets(node, "capabilityDropped") == before + 2

    await eventually(counted)


async def test_node_sigterm_reports_shutdown_and_returns_blocked_calls(driver, node, peer) -> None:
    proto = "/cpp/term/1.0.0"
    await driver.call("mount", proto)
    await peer.open(node.addr, [proto])
    sid = await driver.accept(proto)
    blocked_read = driver.start("read", sid, 100, 0)
    blocked_event = driver.start("event", 0)
    node.terminate()
    with pytest.raises(CppError) as info:
        await driver.result(blocked_read, timeout=10)
    assert info.value.code == "nodeShutdown", info.value
    events = [await driver.result(blocked_event, timeout=10)]
    while events[-1] != ["nodeShutdown"]:
        events.append(await driver.event())
    assert events in ([["nodeShutdown"]], [["streamReset", str(sid), "nodeShutdown"], ["nodeShutdown"]]), events
    with pytest.raises(CppError) as info:  # after the last event
        await driver.event(1000)
    assert info.value.code == "nodeShutdown"
    with pytest.raises(CppError) as info:
        await driver.call("mount", "/cpp/after/1.0.0")
    assert info.value.code == "nodeShutdown"
    assert node.proc.wait(timeout=10) == 0  # the node exits gracefully
    driver.start("quit")
    with trio.fail_after(10):
        assert await driver.proc.wait() == 0


async def test_the_facade_from_many_threads_at_once(driver, node, peer) -> None:
    await many_threads(driver, node, peer)


async def many_threads(driver: Any, node: Any, peer: Any) -> None:
    inbound_proto, outbound_proto = "/cpp/many-in/1.0.0", "/cpp/many-out/1.0.0"
    peer.serve_echo(outbound_proto)
    await driver.call("mount", inbound_proto)
    payloads = [os.urandom(16 * 1024 + i) for i in range(6)]
    streams: list[Any] = []
    async with trio.open_nursery() as nursery:  # six inbound streams, opened together

        async def open_one() -> None:
            streams.append(await peer.open(node.addr, [inbound_proto]))

        for _ in range(6):
            nursery.start_soon(open_one)
    ids = sorted([await driver.accept(inbound_proto) for _ in range(6)])
    assert ids == list(range(1, 7))
    info = {}
    for s in streams:  # match the driver's ids to the peer's streams by what they carry
        await _libp2p.write(s, payloads[streams.index(s)])
        await _libp2p.close_write(s)
    got: dict[int, bytes] = {}
    echoed: dict[int, bytes] = {}

    async def serve(sid: int) -> None:  # read all, echo it, half-close: on one driver thread each
        [hex_data] = await driver.call("readall", sid, 10000)
        got[sid] = bytes.fromhex(hex_data)
        await driver.call("write", sid, hex_data, 10000)
        await driver.call("closewrite", sid, 10000)

    async def dial(i: int) -> None:  # meanwhile, outbound streams through the peer's echo
        [oid] = await driver.call("dial", peer.peer_id, outbound_proto, peer_addr(peer), 10000)
        data = payloads[i]
        await driver.call("write", oid, data.hex(), 10000)
        await driver.call("closewrite", oid, 10000)
        [back] = await driver.call("readall", oid, 10000)
        echoed[i] = bytes.fromhex(back)
        await driver.call("close", oid, 10000)

    async with trio.open_nursery() as nursery:
        for sid in ids:
            nursery.start_soon(serve, sid)
        for i in range(4):
            nursery.start_soon(dial, i)
        for s in streams:

            async def back(s: Any = s) -> None:
                info[streams.index(s)] = await p.read_all(s)

            nursery.start_soon(back)
    assert sorted(sha(x) for x in got.values()) == sorted(sha(x) for x in payloads)
    assert [info[i] for i in range(6)] == payloads
    assert [echoed[i] for i in range(4)] == payloads[:4]
    for sid in ids:
        await driver.call("close", sid, 5000)

    async def idle() -> bool:
        return (await node_status(node.rpc))["streams"] == 0

    await eventually(idle)


# -- the asynchronous API, without the facade --------------------------------------------------------


async def test_request_and_serve_of_the_async_api(cpp, processes, node, peer) -> None:
    async def answer(stream: Any) -> None:
        question = await read_frame(stream)
        await _libp2p.write(stream, lp_frame(b"re: " + question))
        await _libp2p.close_write(stream)

    peer.host.set_stream_handler("/cpp/ask/1.0.0", answer)
    asking = await processes(cpp.unary, node.rpc, "request", peer_addr(peer), "/cpp/ask/1.0.0", "question")
    assert await Lines(asking).line() == "reply re: question"
    with trio.fail_after(10):
        assert await asking.wait() == 0

    serving = await processes(cpp.unary, node.rpc, "serve", "/cpp/answer/1.0.0")
    lines = Lines(serving)
    assert (await lines.line()).startswith("ready ")
    stream = await peer.open(node.addr, ["/cpp/answer/1.0.0"])
    await _libp2p.write(stream, lp_frame(b"q1"))
    assert await read_frame(stream) == b"answer to q1"
    assert await p.read_all(stream) == b""  # then the node closes it
    assert await lines.line() == f"served q1 from {peer.peer_id}"
    failing = await peer.open(node.addr, ["/cpp/answer/1.0.0"])
    await _libp2p.write(failing, lp_frame(b"fail"))
    with pytest.raises(StreamReset):  # the responder failed: that stream is reset
        await p.read_all(failing, timeout=5)
    assert await lines.line() == f"served fail from {peer.peer_id}"


async def test_a_dropped_stream_of_the_async_api_is_reset_at_the_peer(cpp, processes, node, peer) -> None:
    accepted = peer.serve("/cpp/dropped/1.0.0")
    before = await resets(node, "capabilityDropped")
    proc = await processes(cpp.unary, node.rpc, "drop", peer_addr(peer), "/cpp/dropped/1.0.0")
    assert await Lines(proc).line() == "dropped"
    with trio.fail_after(10):
        stream = await accepted.receive()
    with pytest.raises(StreamReset):
        await p.read_all(stream, timeout=2)

    async def counted() -> bool:
        return await resets(node, "capabilityDropped") == before + 1

    await eventually(counted)


# -- peer events and request through the facade and its C ABI ------------------------------------------


async def subscriptions(node: Any) -> int:
    return int((await node_status(node.rpc))["subscriptions"])


async def test_peer_events_through_the_c_abi_connect_identify_and_a_hang_up(driver, node, peer) -> None:
    await driver.call("subscribe", 0)
    with pytest.raises(CppError) as info:  # once per facade
        await driver.call("subscribe", 0)
    assert info.value.code == "invalidArgument"
    assert await subscriptions(node) == 1
    await peer.connect(node.addr)
    connected = await driver.event()
    assert connected[:2] == ["peerConnected", peer.peer_id] and connected[3] == "inbound", connected
    assert connected[2].startswith("/ip4/127.0.0.1/tcp/"), connected
    assert await driver.event() == ["peerIdentified", peer.peer_id]
    await peer.host.disconnect(ID.from_base58(node.peer_id))
    assert await driver.event() == ["peerDisconnected", peer.peer_id, "closedByPeer"]
    peer.serve_echo("/cpp/events/1.0.0")  # the node dials the peer: outbound
    [sid] = await driver.call("dial", peer.peer_id, "/cpp/events/1.0.0", peer_addr(peer), 10000)
    connected = await driver.event()
    assert connected[:2] == ["peerConnected", peer.peer_id] and connected[3] == "outbound", connected
    assert await driver.event() == ["peerIdentified", peer.peer_id]
    await driver.call("reset", sid)
    await driver.call("unsubscribe")
    with pytest.raises(CppError) as info:
        await driver.call("unsubscribe")
    assert info.value.code == "invalidArgument"

    async def unsubscribed() -> bool:
        return await subscriptions(node) == 0

    await eventually(unsubscribed)


async def test_a_facade_request_returns_exactly_the_peers_one_frame_reply(driver, node, peer) -> None:
    questions: list[bytes] = []

    async def answer(stream: Any) -> None:  # nim-libp2p's framing, by hand
        question = await read_frame(stream)
        questions.append(question)
        reply = b"big" * 100 if question == b"too big" else b"re: " + question
        await _libp2p.write(stream, lp_frame(reply))
        await _libp2p.close_write(stream)

    peer.host.set_stream_handler("/cpp/ask/1.0.0", answer)
    request = os.urandom(5000)
    [reply] = await driver.call("request", peer.peer_id, "/cpp/ask/1.0.0", peer_addr(peer), request.hex(), 10000, 0)
    assert bytes.fromhex(reply) == b"re: " + request
    assert questions == [request]
    with pytest.raises(CppError) as info:  # a reply over maxSize
        await driver.call("request", peer.peer_id, "/cpp/ask/1.0.0", peer_addr(peer), b"too big".hex(), 10000, 100)
    assert info.value.code == "frameTooLarge"
    with pytest.raises(CppError) as info:
        await driver.call("request", peer.peer_id, "/cpp/nobody/1.0.0", peer_addr(peer), "00", 10000, 0)
    assert info.value.code == "protocolNotSupported"
    assert questions == [request, b"too big"]

    async def idle() -> bool:
        return (await node_status(node.rpc))["streams"] == 0

    await eventually(idle)


async def test_echo_modules_that_share_the_protocol_split_the_streams(cpp, processes, node, peer, tmp_path) -> None:
    modules = []
    for _ in range(2):
        proc = await processes(cpp.module, node.rpc, ECHO, "--share")
        lines = Lines(proc)
        assert await lines.line() == f"ready {node.peer_id}"
        modules.append(lines)
    alone = await processes(cpp.module, node.rpc, ECHO)  # not sharing: refused
    with pytest.raises(EOFError):  # no "ready": it exits
        await Lines(alone).line()
    with trio.fail_after(10):
        assert await alone.wait() == 1
    assert "cpp-echo-module: protocolInUse: " in (tmp_path / "proc2.log").read_text()  # its stderr
    for i in range(4):  # round-robin: two each
        stream = await peer.open(node.addr, [ECHO])
        await _libp2p.write(stream, b"%d" % i)
        await _libp2p.close_write(stream)
        assert await p.read_all(stream) == b"%d" % i
    assert [await modules[0].line(), await modules[0].line()] == ["echoed 1 bytes"] * 2
    assert [await modules[1].line(), await modules[1].line()] == ["echoed 1 bytes"] * 2


# -- interop: the C++ module's length-prefixed frames against go-libp2p and js-libp2p -------------------


@pytest.mark.parametrize("kind", ["go", "js"])
async def test_length_prefixed_frames_against_the_real_peers_own_framing(
    kind, driver_factory, node_factory, nursery
) -> None:
    proto = "/cpp/interop/1.0.0"
    spawned = node_factory("--muxer", "yamux", wait=False)
    remote = await start_peer(nursery, kind, "yamux")
    try:
        node = wait_ready(spawned)
        driver = await driver_factory(node)
        await driver.call("mount", proto)
        opened = await remote.call("open", key="s", addr=node.addr, protocols=[proto])
        assert opened["protocol"] == proto
        event = await driver.event()
        assert event[:3] == ["protocolStream", event[1], proto] and event[3] == remote.peer_id, event
        sid = int(event[1])
        frames = [b"hello", b"\x00" * 300, b"\xff" * 20000, b""]  # (the go driver reads lines of < 64 KiB)
        assert await remote.write_lp("s", frames) > 0  # the peer's own encoder
        for frame in frames:
            [got] = await driver.call("readlp", sid, 100000, 10000)
            assert (b"" if got == "-" else bytes.fromhex(got)) == frame
        back = [b"alpha", b"b" * 200, b"c" * 20000, os.urandom(70000)]
        for frame in back:
            await driver.call("writelp", sid, frame.hex(), 10000)
        assert await remote.read_lp("s", len(back)) == back  # the peer's own decoder
        await driver.call("reset", sid)
    finally:
        remote.kill()
        await remote.proc.wait()


# -- tcp: endpoints, with the token exchange -----------------------------------------------------


async def test_a_tcp_endpoint_with_the_token_and_without_it(cpp, processes, node_factory, peer) -> None:
    node = node_factory(rpc="tcp:127.0.0.1:0")
    assert node.rpc.startswith("tcp:127.0.0.1:") and node.token_file
    proc = await processes(cpp.module, node.rpc, env={"LOGOS_P2P_TOKEN_FILE": node.token_file})
    assert await Lines(proc).line() == f"ready {node.peer_id}"
    stream = await peer.open(node.addr, [ECHO])
    await _libp2p.write(stream, b"over tcp")
    await _libp2p.close_write(stream)
    assert await p.read_all(stream) == b"over tcp"

    wrong = await processes(cpp.driver, node.rpc, env={"LOGOS_P2P_TOKEN": "not-the-token-0123456789"})
    line = await Lines(wrong).line()
    assert line.startswith("failed authenticationFailed "), line
    with trio.fail_after(10):
        assert await wrong.wait() == 1

    async def refused_once() -> bool:
        return (await node_status(node.rpc))["authFailures"] == 1

    await eventually(refused_once)


# -- the facade: freed while in use, serve, share, the node's peers and status, bounded events -------


async def test_freeing_the_facade_returns_blocked_calls_then_resets_its_streams(driver, node, peer) -> None:
    proto, served = "/cpp/free/1.0.0", "/cpp/free-served/1.0.0"
    await driver.call("mount", proto)
    await driver.call("serve", served, 0, 0, 0)
    stream = await peer.open(node.addr, [proto])
    sid = await driver.accept(proto)
    asking = await peer.open(node.addr, [served])
    await _libp2p.write(asking, lp_frame(b"hold"))
    assert (await driver.note()).startswith(f"served {b'hold'.hex()} {peer.peer_id} ")
    assert await driver.note() == "holding"  # a responder is running, on a facade thread
    blocked_event = driver.start("event", 0)
    async with two_reads(driver, sid, timeout=30) as outcomes:
        assert [code for code, _ in outcomes] == ["busy"]  # so the other read is blocked inside
        started = trio.current_time()
        freeing = driver.start("free")
        with pytest.raises(CppError) as info:
            await driver.result(blocked_event, timeout=5)
        # Nothing proves the event call got inside nextEvent before the free (the read and
        # the responder are proven inside); if it came late the driver refused it itself,
        # since using a freed handle is the caller's bug. Either way it returned.
        late = (info.value.code, str(info.value).endswith("the facade was freed"))
        assert (info.value.code, info.value.cause) == ("nodeDisconnected", "moduleGone") or late == (
            "invalidArgument",
            True,
        ), info.value
    assert outcomes[1] == ("nodeDisconnected", "moduleGone")
    assert trio.current_time() - started < 2.0  # promptly, not after some timeout
    # the held responder, let go by the free, calls the facade: the calls fail, nothing crashes
    assert await driver.note() == "after-free nodeDisconnected"
    assert await driver.result(freeing, timeout=10) == []
    with pytest.raises(StreamReset):  # the facade reset the stream it held
        await p.read_all(stream, timeout=5)
    assert p.reset_recorded(stream)
    with pytest.raises(StreamReset):  # and the request it was answering
        await p.read_all(asking, timeout=5)
    with pytest.raises(CppError) as info:  # the driver refuses commands on a freed handle
        await driver.call("mount", "/cpp/after/1.0.0")
    assert info.value.message == "the facade was freed"
    driver.start("quit")
    with trio.fail_after(10):
        assert await driver.proc.wait() == 0

    async def gone() -> bool:
        status = await node_status(node.rpc)
        return (status["streams"], status["registrations"], status["modules"]) == (0, 0, [])

    await eventually(gone)


async def test_a_served_protocol_answers_on_responder_threads_and_a_failing_responder_resets(
    driver, node, peer
) -> None:
    proto = "/cpp/serve/1.0.0"
    await driver.call("serve", proto, 0, 0, 0)
    with pytest.raises(CppError) as info:  # served is mounted
        await driver.call("mount", proto)
    assert info.value.code == "protocolInUse"
    request = os.urandom(3000)
    stream = await peer.open(node.addr, [proto])
    await _libp2p.write(stream, lp_frame(request))
    assert await read_frame(stream) == b"re: " + request
    assert await p.read_all(stream) == b""  # then the node closes it
    # the responder got the request and the peer's id, and could call the facade itself
    assert await driver.note() == f"served {request.hex()} {peer.peer_id} {node.peer_id}"

    held = await peer.open(node.addr, [proto])  # a responder that blocks holds up only itself
    await _libp2p.write(held, lp_frame(b"hold"))
    assert (await driver.note()).startswith(f"served {b'hold'.hex()} ")
    assert await driver.note() == "holding"
    other = await peer.open(node.addr, [proto])
    await _libp2p.write(other, lp_frame(b"other"))
    assert await read_frame(other) == b"re: other"
    assert (await driver.note()).startswith(f"served {b'other'.hex()} ")
    await driver.call("unhold")
    assert await read_frame(held) == b"re: hold"

    before = await resets(node, "handlerFailed")
    failing = await peer.open(node.addr, [proto])
    await _libp2p.write(failing, lp_frame(b"fail"))
    with pytest.raises(StreamReset):  # the responder returned nonzero: that stream is reset
        await p.read_all(failing, timeout=5)
    assert (await driver.note()).startswith(f"served {b'fail'.hex()} ")

    async def counted() -> bool:
        return await resets(node, "handlerFailed") == before + 1

    await eventually(counted)
    await driver.call("unserve", proto)
    with pytest.raises(CppError) as info:
        await driver.call("unserve", proto)
    assert info.value.code == "invalidArgument"
    with pytest.raises(Exception) as exc:
        await peer.open(node.addr, [proto])
    assert negotiation_failed(exc.value), exc.value


async def test_two_facades_share_a_protocol_through_the_c_abi(driver_factory, node, peer) -> None:
    proto = "/cpp/shared/1.0.0"
    sharing = [await driver_factory(node), await driver_factory(node)]
    for d in sharing:
        await d.call("mountshared", proto)
    alone = await driver_factory(node)
    with pytest.raises(CppError) as info:  # not sharing: refused
        await alone.call("mount", proto)
    assert info.value.code == "protocolInUse"
    payloads = [b"stream %d " % i + os.urandom(100) for i in range(4)]
    streams = []
    for data in payloads:
        stream = await peer.open(node.addr, [proto])
        await _libp2p.write(stream, data)
        await _libp2p.close_write(stream)
        streams.append(stream)
    got: list[list[bytes]] = []
    for d in sharing:  # round-robin: two each
        ids = [await d.accept(proto), await d.accept(proto)]
        mine = []
        for sid in ids:
            [hex_data] = await d.call("readall", sid, 10000)
            mine.append(bytes.fromhex(hex_data))
            await d.call("write", sid, hex_data, 10000)
            await d.call("close", sid, 10000)
        got.append(mine)
    assert [len(mine) for mine in got] == [2, 2]
    assert sorted(got[0] + got[1]) == sorted(payloads)
    for stream, data in zip(streams, payloads, strict=True):
        assert await p.read_all(stream) == data


def status_modules(status: dict[str, str]) -> dict[str, list[str]]:
    return {k.removeprefix("module."): v.split(",") for k, v in status.items() if k.startswith("module.")}


async def test_the_facade_connects_lists_and_disconnects_peers_and_reads_the_status(driver, node, peer) -> None:
    assert await driver.call("peers") == []
    [peer_id] = await driver.call("connectpeer", peer_addr(peer), 10000)
    assert peer_id == peer.peer_id
    [listed] = await driver.call("peers")
    who, _, addrs = listed.partition("=")
    assert who == peer.peer_id
    assert peer.addr.split("/p2p/")[0] in addrs.split(","), listed
    await driver.call("disconnectpeer", peer.peer_id)

    async def dropped() -> bool:
        return await driver.call("peers") == []

    await eventually(dropped)
    nobody = ID.from_pubkey(create_new_key_pair().public_key)
    with pytest.raises(CppError) as info:  # nothing listens there
        await driver.call("connectpeer", f"/ip4/127.0.0.1/tcp/1/p2p/{nobody}", 5000)
    assert info.value.code == "peerUnreachable", info.value

    proto = "/cpp/status/1.0.0"
    await driver.call("mount", proto)
    await peer.open(node.addr, [proto])
    sid = await driver.accept(proto)
    await driver.call("subscribe", 0)
    ours, theirs = await driver.status(), await node_status(node.rpc)
    assert ours["peerId"] == node.peer_id
    assert (ours["streams"], ours["registrations"], ours["subscriptions"]) == ("1", "1", "1")
    for key in ("streams", "registrations", "streamsTotal", "subscriptions", "authFailures"):
        assert int(ours[key]) == theirs[key], key
    assert status_modules(ours) == {"cpp-driver": ["1", "1", "0", proto]}  # the probe is left out
    before = int(ours.get("reset.localReset", "0"))
    assert before == await resets(node, "localReset")
    await driver.call("reset", sid)

    async def counted() -> bool:
        status = await driver.status()
        return int(status.get("reset.localReset", "0")) == before + 1 and status["streams"] == "0"

    await eventually(counted)
    assert int((await driver.status())["streamsTotal"]) == (await node_status(node.rpc))["streamsTotal"]


async def test_a_facade_that_stops_reading_peer_events_holds_a_bounded_queue(driver, node) -> None:
    await driver.call("subscribe", 2)
    async with contextlib.AsyncExitStack() as stack:
        # 20 peers connect (40 events: connected, identified) while the driver reads none: the
        # facade keeps at most 2 for it, then one overflowed event in place of what it dropped.
        # (They stay connected: py-libp2p would leave their connections to time out.)
        for _ in range(20):
            other = await stack.enter_async_context(open_peer())
            await other.connect(node.addr)
        events = [await driver.event()]
        assert events[0] == ["overflowed"], events
        late = await stack.enter_async_context(open_peer())

        async def read_on() -> None:  # reading again, the late peer's events come through
            while events[-1] != ["peerIdentified", late.peer_id]:
                events.append(await driver.event())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_on)
            await late.connect(node.addr)
    kinds = [e[0] for e in events]
    assert kinds.count("overflowed") == 1, events
    assert set(kinds[1:]) <= {"peerConnected", "peerIdentified"}, events
    assert ["peerConnected", late.peer_id] in [e[:2] for e in events], events
    assert len(events) < 10, events  # not the 40 the node sent: those were dropped
    assert await subscriptions(node) == 1  # nobody was unsubscribed for being slow


def vm_size_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1])
    raise AssertionError("no VmSize")


async def test_the_echo_module_reaps_the_thread_of_each_finished_stream(cpp, processes, node, peer) -> None:
    module, lines = await echo_module(cpp, processes, node)

    async def one(data: bytes) -> None:
        stream = await peer.open(node.addr, [ECHO])
        await _libp2p.write(stream, data)
        await _libp2p.close_write(stream)
        assert await p.read_all(stream) == data
        assert await lines.line() == f"echoed {len(data)} bytes"

    for _ in range(4):  # warm up: malloc's per-thread arenas (64 MiB of address space each)
        await one(b"warm up")
    before = vm_size_kib(module.pid)
    for i in range(64):  # one after the other: each stream's thread has finished before the next
        await one(b"%d" % i)
    grown = vm_size_kib(module.pid) - before
    # a finished thread left unjoined keeps its 8 MiB stack: 64 of them would be 512 MiB (the
    # margin is for an arena or two more)
    print(f"VmSize grew by {grown} KiB over 64 streams")
    assert grown < 192 * 1024, grown


# -- ThreadSanitizer -------------------------------------------------------------------------------------


async def test_the_many_threads_cell_is_clean_under_thread_sanitizer(
    tsan_driver,  # noqa: F811  (the fixture imported above)
    driver_factory,
    node,
    peer,
    tmp_path,
) -> None:
    log = tmp_path / "tsan"
    driver = await driver_factory(node, tsan_driver, tsan_env(log))
    await many_threads(driver, node, peer)
    driver.start("quit")
    with trio.fail_after(20):
        code = await driver.proc.wait()
    reports = "".join(f.read_text() for f in tmp_path.glob("tsan.*"))
    assert "WARNING: ThreadSanitizer" not in reports, reports[:20000]
    assert code == 0, reports[:2000]
