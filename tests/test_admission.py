"""Admission, limit by limit: each flag of the resource manager, and the peers and modules
that break the rules (a peer ignoring its window, a greedy peer, a module without our
library on its data channel, a flood of silent RPC connections).

Each test reads the refusal back from ``status`` (by scope kind and resource) and checks
that the node kept serving and kept nothing afterwards.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

import pytest
import trio
import trio_asyncio
from libp2p.stream_muxer.yamux import yamux as yamux_module

from logos_p2p import _auth
from logos_p2p.client import connect
from logos_p2p.errors import LimitExceeded, StreamReset
from logos_p2p.server import _libp2p

from .conftest import eventually, node_status
from .support import peer as p
from .test_lifecycle import blackhole as blackhole  # the fixture
from .test_lifecycle import stranger

PROTO, ECHO = "/admit/1.0.0", "/echo/1.0.0"
KiB, MiB = 1024, 1024 * 1024


def refused(status: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(r["scope"], r["resource"]): r["count"] for r in status["refusals"]}


def use(status: dict[str, Any], scope: str, resource: str) -> tuple[int, int]:
    [row] = [r for r in status["limits"] if r["scope"] == scope and r["resource"] == resource]
    return row["used"], row["limit"]


async def refused_at_open(peer, node, protocols: list[str]) -> None:
    """The node resets the stream before (or as) it negotiates: the open fails, or the
    stream reads a reset."""
    try:
        stream = await peer.open(node.addr, protocols)
    except Exception as exc:
        assert "failed to open a stream" in str(exc) or "reset" in repr(exc).lower(), exc
        return
    with pytest.raises(StreamReset):
        await p.read_all(stream)


async def settled(node) -> dict[str, Any]:
    """The node's status once it holds no stream and runs no stream task."""
    out: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal out
        out = await node_status(node.rpc)
        return out["streams"] == 0 and out["tasks"] == 0

    await eventually(check, timeout=20)
    return out


# -- peers that break the rules -----------------------------------------------------------------


async def test_a_peer_writing_past_its_window_is_reset_and_costs_nothing(node, peer, modules):
    """yamux: 256 KiB the node granted, then 32 MiB more in raw frames that ignore the window."""
    module = await modules(node, name="holder")
    await module.call("register_hold_all", "h", [PROTO])
    peer.serve_echo(ECHO)
    stream = await peer.open(node.addr, [PROTO])
    muxed = stream.muxed_stream
    assert isinstance(muxed, yamux_module.YamuxStream)
    rss_before = node.rss()
    chunk = b"v" * (64 * KiB - 12)
    header = struct.pack(yamux_module.YAMUX_HEADER_FORMAT, 0, yamux_module.TYPE_DATA, 0, muxed.stream_id, len(chunk))
    with trio.fail_after(20):
        for _ in range(32 * MiB // len(chunk)):
            await muxed.conn._write_frame(header + chunk)  # past send_window, on purpose
    with pytest.raises(StreamReset):
        await p.read_all(stream)
    assert p.reset_recorded(stream)
    status = await settled(node)
    assert {"cause": "protocolError", "count": 1} in status["resets"]
    assert node.rss() - rss_before < 8 * MiB  # not the 32 MiB it sent
    assert use(status, "system", "memory")[0] == 0
    # the connection lives on: the same peer opens another stream
    second = await peer.open(node.addr, [PROTO])
    await second.reset()


async def test_one_greedy_peer_cannot_take_a_modules_whole_stream_quota(node_factory, modules):
    node = node_factory("--max-streams-per-peer", "6", "--max-streams-per-module", "10")
    module = await modules(node, name="holder")
    await module.call("register_hold_all", "h", [PROTO])
    async with p.open_peer() as greedy, p.open_peer() as modest, p.open_peer() as third:
        held = [await greedy.open(node.addr, [PROTO]) for _ in range(6)]
        await refused_at_open(greedy, node, [PROTO])  # over its share
        held += [await modest.open(node.addr, [PROTO]) for _ in range(4)]  # room left for another peer
        await refused_at_open(third, node, [PROTO])  # the module's own quota holds all of them
        status = await node_status(node.rpc)
        assert status["streams"] == 10
        counts = refused(status)
        assert counts[("peer", "streamsIn")] == 1 and counts[("module", "streams")] == 1
        for stream in held:
            await stream.reset()
    await settled(node)


async def raw_streams(peer, node, n: int) -> None:
    """Open ``n`` yamux streams that never say a byte of multistream-select."""
    await peer.connect(node.addr)
    conn = peer.host.get_network().connections[_libp2p.peer_id_of(node.peer_id)][0].muxed_conn
    for _ in range(n):
        await conn.open_stream()


async def test_streams_negotiating_are_bounded_per_peer_and_in_total(node_factory, modules):
    """Streams that never finish multistream-select hold a transient place until the
    negotiation times out; a peer may hold only so many, all peers together too."""
    node = node_factory("--max-negotiating-per-peer", "4", "--max-negotiating", "6")
    module = await modules(node, name="holder")
    await module.call("register_hold_all", "h", [PROTO])
    async with p.open_peer() as silent, p.open_peer() as second, p.open_peer() as other:
        await raw_streams(silent, node, 8)

        async def refusals_are(kind: str, n: int) -> Any:
            async def check() -> bool:
                return refused(await node_status(node.rpc)).get((kind, "negotiating"), 0) == n

            return check

        await eventually(await refusals_are("peer", 4))  # four of the eight over the peer's share
        await raw_streams(second, node, 4)
        await eventually(await refusals_are("transient", 2))  # two over the node's
        assert use(await node_status(node.rpc), "transient", "negotiating")[0] == 6
        await silent.host.disconnect(_libp2p.peer_id_of(node.peer_id))
        await eventually(lambda: _negotiating(node, 2))  # the second peer's two are left
        stream = await other.open(node.addr, [PROTO])  # there is room again
        await stream.reset()


async def _negotiating(node, n: int) -> bool:
    return use(await node_status(node.rpc), "transient", "negotiating")[0] == n


@pytest.mark.parametrize(("per_ip", "upgrading", "scope"), [(3, 5, "source"), (16, 3, "transient")])
async def test_connections_upgrading_are_bounded_per_address_and_in_total(node_factory, per_ip, upgrading, scope):
    """Raw TCP connections that never start a handshake: a source address may hold so many,
    all of them together too."""
    node = node_factory("--max-connections-per-ip", str(per_ip), "--max-upgrading", str(upgrading))
    host, port = node.addr.split("/")[2], int(node.addr.split("/")[4])
    socks = [socket.create_connection((host, port)) for _ in range(6)]
    try:

        async def counted() -> bool:
            return refused(await node_status(node.rpc)).get((scope, "connsIn"), 0) == 3

        await eventually(counted)
        assert use(await node_status(node.rpc), "transient", "connsIn")[0] == 3
    finally:
        for sock in socks:
            sock.close()
    async with p.open_peer() as peer:  # the address may connect once the silent ones are gone
        await eventually(lambda: _transient_empty(node))
        await peer.connect(node.addr)


async def _transient_empty(node) -> bool:
    return use(await node_status(node.rpc), "transient", "connsIn")[0] == 0


async def test_connections_of_one_peer_are_bounded(node_factory):
    """Hosts sharing one identity are one peer with several connections."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    node = node_factory("--max-connections-per-peer", "2")
    identity = create_new_key_pair()
    async with (
        p.open_peer(key_pair=identity) as a,
        p.open_peer(key_pair=identity) as b,
        p.open_peer(key_pair=identity) as c,
    ):
        await a.connect(node.addr)
        await b.connect(node.addr)
        with contextlib.suppress(Exception):  # its side of the upgrade may finish before the node closes it
            await c.connect(node.addr)
        status = await node_status(node.rpc)
        assert use(status, f"peer:{a.peer_id}", "connsIn") == (2, 2)
        assert refused(status)[("peer", "connsIn")] == 1


async def test_connections_in_total(node_factory):
    node = node_factory("--max-connections", "2")
    async with p.open_peer() as a, p.open_peer() as b, p.open_peer() as c:
        await a.connect(node.addr)
        await b.connect(node.addr)
        with contextlib.suppress(Exception):  # refused before or after its side of the upgrade
            await c.connect(node.addr)
        status = await node_status(node.rpc)
        assert use(status, "system", "connsIn") == (2, 2)
        assert refused(status)[("system", "connsIn")] >= 1  # py-libp2p dials again


# -- a module without our library, on its data channel ---------------------------------------------


@pytest.mark.parametrize("data_path", ["socket"])
async def test_an_oversize_datagram_resets_that_stream_only(node, peer, modules, data_path):
    module = await modules(node)
    await module.call("register_holder", "h", [PROTO])
    bad = await peer.open(node.addr, [PROTO])
    bad_key = (await module.event("stream"))["key"]
    good = await peer.open(node.addr, [PROTO])
    good_key = (await module.event("stream"))["key"]
    assert await module.call("raw_datagram", bad_key, 70 * KiB) == "StreamReset:protocolError"
    with pytest.raises(StreamReset):
        await p.read_all(bad)
    await module.stream(good_key).write(b"still here")  # the module's other stream is untouched
    assert await p.read_exactly(good, 10) == b"still here"
    status = await node_status(node.rpc)
    assert {"cause": "protocolError", "count": 1} in status["resets"]


@pytest.mark.parametrize("data_path", ["socket"])
async def test_garbage_and_bad_opens_on_the_data_channel_leave_the_session_up(node, peer, modules, data_path):
    module = await modules(node)
    peer.serve_echo(ECHO)
    assert await module.call("channel_garbage", [b"\x00" * 8, b"nonsense", b"\xff" * 100_000]) == 3
    fields = {"peerId": peer.peer_id, "addrs": [peer.addr], "timeoutMs": 5000}
    assert await module.call("raw_open", {**fields, "protocols": ["no-slash"]}) == "InvalidArgument"
    assert await module.call("raw_open", {**fields, "protocols": [f"/p{i}" for i in range(100)]}) == "InvalidArgument"
    huge = ["/" + "x" * 500 for _ in range(150)]  # ~75 KiB: over the channel's 64 KiB
    assert await module.call("raw_open", {**fields, "protocols": huge}) == "LimitExceeded"
    assert await module.call("raw_open", {**fields, "protocols": [ECHO]}) == "opened"
    [mod] = (await node_status(node.rpc))["modules"]
    assert mod["badMessages"] == 4  # three unreadable datagrams and the oversize open
    # and the library checks the same bounds before it sends
    with pytest.raises(Exception, match=r"InvalidArgument|at most 64"):
        await module.call("open_stream", "x", peer.peer_id, [f"/p{i}" for i in range(100)], [peer.addr], 5)


@pytest.mark.parametrize("data_path", ["socket"])
async def test_a_module_not_reading_its_channel_keeps_it_and_new_streams_wait_or_are_refused(
    node_factory, peer, modules, data_path
):
    node = node_factory("--channel-outbox", "4")
    module = await modules(node)
    await module.call("register_hold_all", "h", [PROTO])
    await module.call("pause_channel")
    opened, refused_streams = 0, 0
    streams = []
    for _ in range(300):  # more than the kernel queues (~200 small datagrams) and the outbox (4) hold
        try:
            streams.append(await peer.open(node.addr, [PROTO], timeout=5))
            opened += 1
        except Exception:
            refused_streams += 1
    status = await node_status(node.rpc)
    assert refused(status).get(("module", "outbox"), 0) >= 1
    await module.call("resume_channel")  # the channel was never closed
    [mod] = (await node_status(node.rpc))["modules"]
    assert mod["protocols"] == [PROTO]

    async def delivered() -> bool:
        [m] = (await node_status(node.rpc))["modules"]
        return m["inboundStreams"] == len([s for s in streams if not p.reset_recorded(s)])

    await eventually(delivered)
    peer.serve_echo(ECHO)
    await module.call("open_stream", "after", peer.peer_id, [ECHO], [peer.addr], 5)  # the channel works


# -- the RPC endpoint -------------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "per_ip", "scope"), [(12, 6, "source"), (6, 32, "system")])
async def test_a_flood_of_silent_rpc_connections_is_capped_and_logged_in_bulk(node_factory, total, per_ip, scope):
    node = node_factory("--max-handshakes", str(total), "--max-handshakes-per-ip", str(per_ip), rpc="tcp:127.0.0.1:0")
    host, port = node.rpc.split(":")[1], int(node.rpc.split(":")[2])
    fds_before = node.fds()
    silent = [socket.create_connection((host, port)) for _ in range(200)]
    try:
        hellos = 0
        with trio.fail_after(10):
            for sock in silent:
                sock.setblocking(False)
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                hellos += len(data) == _auth.HELLO_SIZE
        assert hellos == 6  # the share of the address (or of the node); the rest were closed at once
        assert node.fds() <= fds_before + 6 + 2
    finally:
        for sock in silent:
            sock.close()
    status = await _status_over_tcp(node)
    assert refused(status)[(scope, "handshakes")] == 194
    lines = [ln for ln in node.log().splitlines() if "WARNING logos_p2p.node: refused" in ln]
    assert 1 <= len(lines) <= 3, lines


async def _status_over_tcp(node) -> dict[str, Any]:
    from pathlib import Path

    from .conftest import run_aio

    token = Path(node.token_file).read_text()  # noqa: ASYNC240 - a small local file

    async def ask() -> dict[str, Any]:
        async with connect(node.rpc, token=token, name="probe") as n:
            return await n.status()

    return await eventually_value(lambda: run_aio(ask))


async def eventually_value(fn: Any, timeout: float = 15) -> Any:
    with trio.fail_after(timeout):
        while True:
            try:
                return await fn()
            except Exception:  # handshakes still held by the closing flood
                await trio.sleep(0.05)


@pytest.mark.parametrize("data_path", ["socket"])  # counted at the RPC endpoint, before any data path
async def test_modules_are_bounded(node_factory, modules, data_path):
    node = node_factory("--max-modules", "2")
    await modules(node, name="one")
    await modules(node, name="two")
    with pytest.raises(Exception, match=r"ModuleExited|exited"):  # closed before it could say anything
        await modules(node, name="three")


# -- calls in progress, per module and in total -------------------------------------------------------


@pytest.mark.parametrize("data_path", ["socket", "push"])  # the channel's open and the RPC's (pull's too)
async def test_opens_dials_and_waits_in_progress_are_bounded_per_module(node_factory, modules, blackhole, data_path):
    node = node_factory("--max-opens-per-module", "3", "--max-dials-per-module", "2", "--max-polls-per-module", "4")
    module = await modules(node)
    target = stranger()
    opens = await module.call("many_calls", "open", 8, target, [PROTO], [blackhole], 30)
    assert opens == {"LimitExceeded": 5, "pending": 3}
    dials = await module.call("many_calls", "dial", 6, f"{blackhole}/p2p/{target}", 30)
    assert dials == {"LimitExceeded": 4, "pending": 2}
    waits = await module.call("many_calls", "wait", 10)
    assert waits["LimitExceeded"] >= 6  # its own waitShutdown counts too
    counts = refused(await node_status(node.rpc))
    assert counts[("module", "opens")] == 5 and counts[("module", "dials")] == 4
    assert counts[("module", "polls")] >= 6


@pytest.mark.parametrize("data_path", ["socket", "push"])  # the channel's open and the RPC's (pull's too)
async def test_calls_in_progress_are_bounded_for_all_modules_together(node_factory, modules, blackhole, data_path):
    node = node_factory("--max-opens", "4", "--max-opens-per-module", "3")
    a, b = await modules(node, name="a"), await modules(node, name="b")
    target = stranger()
    first = a.start("many_calls", "open", 3, target, [PROTO], [blackhole], 30)

    async def three_opening() -> bool:
        return use(await node_status(node.rpc), "system", "opens")[0] == 3

    await eventually(three_opening)
    assert await b.call("many_calls", "open", 3, target, [PROTO], [blackhole], 30) == {
        "LimitExceeded": 2,
        "pending": 1,
    }
    assert await first.result() == {"pending": 3}
    assert refused(await node_status(node.rpc))[("system", "opens")] == 2


@pytest.mark.parametrize("data_path", ["socket"])  # connectPeer and waitShutdown: RPC calls on every path
async def test_dials_and_waits_in_progress_are_bounded_for_all_modules_together(
    node_factory, modules, blackhole, data_path
):
    node = node_factory("--max-dials", "3", "--max-polls", "5")
    a, b = await modules(node, name="a"), await modules(node, name="b")  # each holds one waitShutdown
    await a.call("set_hold", 10)
    await b.call("set_hold", 3)  # its refusals must come back within its hold, on a loaded machine too
    first = a.start("many_calls", "dial", 2, f"{blackhole}/p2p/{stranger()}", 30)

    async def two_dialing() -> bool:
        return use(await node_status(node.rpc), "system", "dials")[0] == 2

    await eventually(two_dialing)
    assert (await b.call("many_calls", "dial", 2, f"{blackhole}/p2p/{stranger()}", 30))["LimitExceeded"] == 1
    waits = await b.call("many_calls", "wait", 4)
    assert waits == {"LimitExceeded": 1, "pending": 3}  # 5 in all, and each module holds one of its own
    counts = refused(await node_status(node.rpc))
    assert counts[("system", "dials")] == 1 and counts[("system", "polls")] == 1
    assert await first.result(timeout=20) == {"pending": 2}


# -- memory, streams, descriptors ----------------------------------------------------------------------


@pytest.mark.parametrize("data_path", ["push"])
async def test_a_modules_writes_are_bounded_by_its_memory_share(node_factory, peer, modules, data_path):
    node = node_factory("--memory-per-module", "600000")  # 400,000 bytes of it for buffers
    module = await modules(node)
    incoming = peer.serve(PROTO)
    await module.call("open_stream", "w", peer.peer_id, [PROTO], [peer.addr], 10)
    with trio.fail_after(10):
        stream = await incoming.receive()  # the peer reads nothing: the module's writes queue in the node
    outcome = await module.call("write_expect_error", "w", 4 * MiB, timeout=30)
    assert outcome.startswith("LimitExceeded") and "module:" in outcome, outcome
    assert refused(await node_status(node.rpc))[("module", "memory")] >= 1
    await stream.reset()


async def test_a_peers_bytes_past_its_memory_share_reset_its_streams(node_factory, modules):
    node = node_factory("--memory-per-peer", str(3 * MiB))  # 2 MiB of it for bytes
    module = await modules(node, name="holder")  # never reads
    await module.call("register_hold_all", "h", [PROTO])
    async with p.open_peer() as greedy, p.open_peer() as modest:
        streams = [await greedy.open(node.addr, [PROTO]) for _ in range(16)]
        outcome = {"written": 0, "reset": 0}

        async def fill(stream: Any) -> None:  # within its windows: the peer breaks no rule
            try:
                await _libp2p.write(stream, b"g" * MiB)  # more than the module's buffers take
                outcome["written"] += 1
            except StreamReset:
                outcome["reset"] += 1

        with trio.move_on_after(5):
            async with trio.open_nursery() as nursery:
                for stream in streams:
                    nursery.start_soon(fill, stream)

        async def share_full() -> bool:
            return refused(await node_status(node.rpc)).get(("peer", "memory"), 0) >= 1

        await eventually(share_full)
        status = await node_status(node.rpc)
        assert use(status, f"peer:{greedy.peer_id}", "memory")[0] <= 2 * MiB
        second = await modest.open(node.addr, [PROTO])  # another peer's share is its own
        await _libp2p.write(second, b"m" * (256 * KiB))
        await second.reset()
        for stream in streams:
            await stream.reset()


async def test_the_descriptor_reserve_is_kept_back(node_factory):
    default = await node_status(node_factory(nofile=1024).rpc)
    reserved = await node_status(node_factory("--fd-reserve", "200", nofile=1024).rpc)
    given = use(default, "system", "fds")[1] - use(reserved, "system", "fds")[1]
    assert abs(given - (200 - 64)) <= 2  # the default reserve at 1,024: 1/16 = 64 (give or take a log file)


async def test_streams_per_protocol_and_in_total(node_factory, modules):
    node = node_factory("--max-streams-per-protocol", "3", "--max-streams", "5", "--max-streams-per-peer", "10")
    module = await modules(node, name="holder")
    await module.call("register_hold_all", "h", [PROTO, "/admit/2.0.0"])
    async with p.open_peer() as peer:
        held = [await peer.open(node.addr, [PROTO]) for _ in range(3)]
        await refused_at_open(peer, node, [PROTO])  # the protocol's share
        held += [await peer.open(node.addr, ["/admit/2.0.0"]) for _ in range(2)]
        await refused_at_open(peer, node, ["/admit/2.0.0"])  # the node's
        counts = refused(await node_status(node.rpc))
        assert counts[("protocol", "streamsIn")] == 1 and counts[("system", "streamsIn")] == 1
        for stream in held:
            await stream.reset()


@pytest.mark.parametrize("data_path", ["socket"])
async def test_socket_streams_are_bounded_by_descriptors(node_factory, modules, data_path):
    """Each stream on the data channel is a descriptor of the node's; --max-fds bounds them."""
    node = node_factory("--max-fds", "16", "--max-streams", "100", "--max-streams-per-peer", "100")
    module = await modules(node, name="holder")
    await module.call("register_hold_all", "h", [PROTO])
    # a status connection held from the start: once the streams took every descriptor the
    # node has, a new connection would be refused too
    async with (
        trio_asyncio.open_loop(),
        p.open_peer() as peer,
        trio_asyncio.aio_as_trio(connect(node.rpc, name="probe")) as probe,
    ):
        held = []
        for _ in range(20):  # opened, then reset once the node finds no descriptor for it
            with contextlib.suppress(Exception):
                held.append(await peer.open(node.addr, [PROTO], timeout=5))
        status = await trio_asyncio.aio_as_trio(probe.status)()
        used, limit = use(status, "system", "fds")
        assert limit == 16 and used <= 16
        assert refused(status).get(("system", "fds"), 0) >= 1
        assert 3 <= status["streams"] < 16  # each held stream is one of the 16
        assert node.fds() < 40
        for stream in held:
            await stream.reset()
    await settled(node)


async def test_the_stream_window_caps_what_a_peer_may_send_unread(node_factory, modules):
    """A peer never gets more window than --stream-window on one stream, however long it runs."""
    node = node_factory("--stream-window", str(256 * KiB))
    module = await modules(node, name="holder")
    await module.call("register_hold_all", "h", [PROTO])
    async with p.open_peer() as peer:
        stream = await peer.open(node.addr, [PROTO])
        muxed = stream.muxed_stream
        sent = 0
        block = b"w" * (16 * KiB)
        with trio.move_on_after(3):
            while True:
                await _libp2p.write(stream, block)  # the module never reads: this stalls
                sent += len(block)
                assert muxed.send_window <= 256 * KiB
        # what the node accepted: the window, and what its bridge and the module's socket hold
        assert sent < 2 * MiB, sent
        await stream.reset()


def test_limit_flags_are_refused_when_nonsense(tmp_path):
    from .test_cli import run_cli

    for bad in (["--memory-budget", "1000"], ["--stream-window", "1000"], ["--max-streams-per-peer", "-1"]):
        result = run_cli("serve", "--rpc", f"unix:{tmp_path / 's'}", "--listen", "/ip4/127.0.0.1/tcp/0", *bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (bad, result.stderr)


def test_every_limit_is_a_flag_in_help_and_in_the_readme():
    from pathlib import Path

    from logos_p2p.server._resources import resource_flags

    from .test_cli import run_cli

    help_text = run_cli("serve", "--help").stdout
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for _name, flag, *_ in resource_flags():
        assert flag in help_text, flag
        assert f"`{flag}`" in readme, flag
    assert "`--channel-outbox`" in readme
    assert LimitExceeded  # the family the refusals come back in


async def test_a_stream_read_fast_gets_a_wider_window(node_factory, modules):
    """yamux doubles the window of a stream its reader keeps up with, up to --stream-window;
    a peer writing into an echo module sees more than the initial 256 KiB of send window."""
    node = node_factory("--stream-window", str(4 * MiB))
    module = await modules(node, name="echo")
    await module.call("register_echo", "e", [ECHO])
    async with p.open_peer() as peer:
        stream = await peer.open(node.addr, [ECHO])
        muxed = stream.muxed_stream
        widest = 0
        block = b"g" * (64 * KiB)

        echoed = b""

        async def drain() -> None:
            nonlocal echoed
            echoed = await p.read_all(stream, timeout=60)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            for _ in range(512):  # 32 MiB
                await _libp2p.write(stream, block)
                widest = max(widest, muxed.send_window)
            await _libp2p.close_write(stream)
        assert echoed == block * 512
        # py-libp2p may credit reads it batched on top of the window: by less than 256 KiB
        assert 256 * KiB < widest < 4 * MiB + 256 * KiB, widest
    await settled(node)
