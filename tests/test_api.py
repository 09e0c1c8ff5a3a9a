"""The rest of the public contract: node calls, registrations, the raw capability path."""

from __future__ import annotations

import gc
import subprocess
import sys
import zipfile
from typing import Any

import capnp
import pytest
import trio
import trio_asyncio

from logos_p2p import _schema, _wire
from logos_p2p._kj import kj_loop
from logos_p2p.client import NodeUnavailable, connect
from logos_p2p.errors import InvalidArgument, StreamReset

from .conftest import node_status
from .support import peer as p
from .support.modproc import ROOT


async def test_info_peers_connect_and_disconnect(node, peer, modules):
    module = await modules(node)
    info = await module.call("node_call", "info")
    assert info["peer_id"] == node.peer_id and info["addrs"] == node.addrs and info["version"]
    assert await module.call("node_call", "peers") == []
    connected = await module.call("node_call", "connect_peer", peer.addr)
    assert connected["peer_id"] == peer.peer_id
    [listed] = await module.call("node_call", "peers")
    assert listed["peer_id"] == peer.peer_id and listed["addrs"][0].startswith("/ip4/127.0.0.1/tcp/")
    await module.call("node_call", "disconnect_peer", peer.peer_id)
    assert await module.call("node_call", "peers") == []
    with pytest.raises(InvalidArgument):
        await module.call("node_call", "connect_peer", "/ip4/127.0.0.1/tcp/1")  # no /p2p/


async def test_a_protocol_belongs_to_one_module_unless_shared(node, peer, modules):
    first, second = await modules(node, name="first"), await modules(node, name="second")
    assert await first.call("register_expect_error", ["/solo/1"]) == "registered"
    assert await second.call("register_expect_error", ["/solo/1"]) == "ProtocolInUse"
    assert await second.call("register_expect_error", ["/solo/1"], True) == "ProtocolInUse"  # owner did not share

    assert await first.call("register_expect_error", ["/shared/1"], True) == "registered"
    assert await second.call("register_expect_error", ["/shared/1"], True) == "registered"
    served = []
    for _ in range(4):  # round-robin across the two modules
        stream = await peer.open(node.addr, ["/shared/1"])
        served.append(await p.read_all(stream))
    assert served == [b"served"] * 4
    status = await node_status(node.rpc)
    by_name = {m["name"]: m for m in status["modules"]}
    assert by_name["first"]["bytesOut"] == by_name["second"]["bytesOut"] == 12


@pytest.mark.parametrize(
    "protocols",
    [[], [""], ["no-slash"], ["/" + "x" * 600], ["/a\nb"], "/a-string-not-a-list"],
    ids=["none", "empty", "no-slash", "too-long", "newline", "string"],
)
async def test_invalid_protocol_ids_are_refused(node, modules, protocols):
    module = await modules(node)
    assert await module.call("register_expect_error", protocols) == "InvalidArgument"
    assert await module.call("register_expect_error", ["/fine/1"]) == "registered"  # still serving


async def test_a_handler_that_never_answers_is_reset_after_the_accept_timeout(node, peer, modules):
    module = await modules(node)
    await module.call("register_never_answers", ["/slow/1"], 0.5)
    stream = await peer.open(node.addr, ["/slow/1"])
    await module.event("offered")
    started = trio.current_time()
    with pytest.raises(StreamReset):
        await p.read_all(stream, timeout=3)
    assert 0.4 < trio.current_time() - started < 2
    resets = {r["cause"]: r["count"] for r in (await node_status(node.rpc))["resets"]}
    assert resets == {"timeout": 1}


async def test_the_client_runs_under_trio_asyncio(node, peer):
    """A trio module author's setup: the client on trio-asyncio, beside trio code."""
    peer.serve_echo("/echo/1.0.0")

    async def module() -> bytes:
        async with connect(node.rpc, name="trio-module") as n:
            stream = await n.open_stream(peer.peer_id, ["/echo/1.0.0"], addrs=[peer.addr], timeout=10)
            await stream.write(b"from trio")
            await stream.close_write()
            return await stream.read_all()

    async with trio_asyncio.open_loop():
        assert await trio_asyncio.aio_as_trio(module)() == b"from trio"


def test_the_client_imports_no_trio_and_no_libp2p():
    code = (
        "import sys, logos_p2p.client;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'trio', 'trio_asyncio', 'libp2p'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_connecting_to_nothing_is_node_unavailable(tmp_path):
    async def attempt() -> None:
        async with connect(f"unix:{tmp_path / 'absent.sock'}"):
            pass

    async with trio_asyncio.open_loop():
        with pytest.raises(NodeUnavailable):
            await trio_asyncio.aio_as_trio(attempt)()


async def test_the_raw_capability_path_pull_reads_and_frames(node, peer):
    """What a C++ module sees: Stream.read with a position cursor, readLp, writeLp."""
    rpc = _schema.load()
    offered: trio.MemorySendChannel[Any]
    offered, streams = trio.open_memory_channel(4)

    class Handler(rpc.Handler.Server):  # type: ignore[misc,name-defined]
        async def handle(self, stream: Any, info: Any, **_: Any) -> None:
            offered.send_nowait((stream, info.protocol, str(info.direction)))  # no sink: pull mode

    async def scenario(peer_stream: Any) -> None:
        async with kj_loop():
            await raw_module()

    async def raw_module() -> None:
        conn = await capnp.AsyncIoStream.create_unix_connection(node.rpc.removeprefix("unix:"))
        client = capnp.TwoPartyClient(conn)
        bootstrap = client.bootstrap().cast_as(rpc.Node)
        registration = (await bootstrap.register(protocols=["/raw/1"], handler=Handler(), options={})).registration
        peer_opened.set()  # sync trio call from asyncio: same thread
        stream, protocol, direction = await trio_asyncio.trio_as_aio(streams.receive)()
        assert (protocol, direction) == ("/raw/1", "inbound")
        await trio_asyncio.trio_as_aio(peer_stream_ready.wait)()

        first = await stream.read(maxBytes=4, position=0)
        assert (first.data, first.next, first.eof) == (b"\x05hel", 4, False)
        again = await stream.read(maxBytes=4, position=0)  # as if the answer had been lost
        assert (again.data, again.next) == (b"\x05hel", 4)
        with pytest.raises(capnp.KjException) as info:
            await stream.read(maxBytes=4, position=99)
        assert isinstance(_wire.marker_to_error(info.value.description), InvalidArgument)
        # all a module gets of a node failure is the marker line: no traceback, no node file
        description = info.value.description
        assert description.startswith("remote exception: message = logos_p2p.RemoteError: [logos-p2p:invalidArgument] ")
        assert "\n" not in description.strip() and "Traceback" not in description and ".py" not in description
        with pytest.raises(capnp.KjException) as info:  # readLp only from a frame boundary
            await stream.readLp(maxSize=100, position=2)
        assert isinstance(_wire.marker_to_error(info.value.description), InvalidArgument)
        frame = await stream.readLp(maxSize=100, position=0)
        assert (frame.data, frame.next, frame.eof) == (b"hello", 6, False)
        with pytest.raises(capnp.KjException) as info:  # position + len(data): the prefix forgotten
            await stream.readLp(maxSize=100, position=5)
        assert "not a frame boundary" in info.value.description
        await stream.writeLp(data=b"framed")
        await stream.write(data=b"raw")
        await stream.closeWrite()
        end = await stream.readLp(maxSize=100, position=6)
        assert (end.data, end.eof) == (b"", True)
        closing = stream.close()  # sent now; then the capability is released at once:
        del stream  # the close arrived first, so this is not a drop (no reset)
        gc.collect()
        await closing
        await registration.unregister()
        client.close()

    peer_opened, peer_stream_ready = trio.Event(), trio.Event()
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        holder: list[Any] = []

        async def open_when_registered() -> None:
            await peer_opened.wait()
            s = await peer.open(node.addr, ["/raw/1"])
            await s.write(b"\x05hello")
            await s.close_write()
            holder.append(s)
            peer_stream_ready.set()

        nursery.start_soon(open_when_registered)
        await trio_asyncio.aio_as_trio(scenario)(None)
    assert await p.read_all(holder[0]) == b"\x06framedraw"  # a reset would raise StreamReset here
    resets = (await node_status(node.rpc))["resets"]
    assert resets == [], resets


def test_the_wheel_ships_the_schema_and_its_types(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("logos_p2p-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "logos_p2p/schema/logos_p2p.capnp" in names
    assert "logos_p2p/client/__init__.py" in names and "logos_p2p/server/__init__.py" in names
    assert "logos_p2p/py.typed" in names  # a module author's type checker reads our annotations


def test_the_client_exports_the_whole_error_family_and_no_helpers():
    import logos_p2p.client as client
    from logos_p2p import errors

    exported = set(client.__all__)
    family = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, errors.LogosP2PError)}
    assert family | {"Cause"} <= exported
    assert "reset_error" not in exported and len(exported) == len(client.__all__)
    assert all(getattr(client, name) is getattr(errors, name) for name in family)


async def test_one_handler_serves_several_versions_and_each_stream_knows_its_own(node, peer, modules):
    module = await modules(node)
    await module.call("register_holder", "h", ["/chat/2.0.0", "/chat/1.0.0"])
    for wanted, negotiated in [
        (["/chat/2.0.0"], "/chat/2.0.0"),
        (["/chat/1.0.0"], "/chat/1.0.0"),
        (["/chat/3.0.0", "/chat/1.0.0"], "/chat/1.0.0"),
    ]:
        stream = await peer.open(node.addr, wanted)
        assert stream.get_protocol() == negotiated
        event = await module.event("stream")
        assert (event["protocol"], event["direction"]) == (negotiated, "inbound")
        assert event["remote_peer_id"] == peer.peer_id


@pytest.mark.parametrize("data_path", ["socket", "push"], indirect=True)  # the channel's open, and RPC's
async def test_an_open_may_name_its_peer_by_address_alone(node, peer, modules, data_path):
    module = await modules(node)
    peer.serve_echo("/by-addr/1")
    info = await module.call("open_stream", "s", "", ["/by-addr/1"], [peer.addr], 10)
    assert info["remote_peer_id"] == peer.peer_id
    with pytest.raises(InvalidArgument):  # nothing names the peer
        await module.call("open_stream", "t", "", ["/by-addr/1"], [peer.addr.split("/p2p/")[0]], 10)
    other = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDgu2n9emiyCQSAYpZesYE9GXedQRdziQiZ9GqcYucwVE"
    with pytest.raises(InvalidArgument):  # two peers named
        await module.call("open_stream", "u", "", ["/by-addr/1"], [peer.addr, other], 10)
