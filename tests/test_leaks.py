"""Nothing leaks: with the node embedded here, count its objects after streams come and go."""

from __future__ import annotations

import gc

import pytest
import trio
from libp2p.peer.id import ID

from logos_p2p.errors import StreamReset
from logos_p2p.server import NodeConfig, NodeService
from logos_p2p.server._bridge import Bridge
from logos_p2p.server._capability_bridge import CapabilitySide
from logos_p2p.server._resources import MemoryAccount, StreamSlot
from logos_p2p.server._rpc import RegistrationImpl, StreamImpl
from logos_p2p.server._session import ModuleSession, Registration
from logos_p2p.server._socket_bridge import SocketSide

from .conftest import eventually
from .support import peer as p
from .support.nodeproc import NodeProcess


def holders(cls: type) -> list[str]:
    """Who refers to surviving ``cls`` objects (types and frames only: no repr of capnp objects)."""
    import types

    out = []
    for obj in gc.get_objects():
        if type(obj) is cls:
            for ref in gc.get_referrers(obj):
                if isinstance(ref, types.FrameType):
                    out.append(f"frame {ref.f_code.co_name}:{ref.f_lineno}")
                elif isinstance(ref, dict):
                    owners = [type(o).__name__ for o in gc.get_referrers(ref) if not isinstance(o, types.FrameType)]
                    out.append(f"dict of {owners[:3]}")
                elif isinstance(ref, list):
                    owners = [type(o).__name__ for o in gc.get_referrers(ref) if not isinstance(o, types.FrameType)]
                    out.append(f"list in {owners[:4]}")
                else:
                    out.append(type(ref).__name__)
    return out


def live(*types: type) -> dict[str, int]:
    gc.collect()
    counts = dict.fromkeys((t.__name__ for t in types), 0)
    for obj in gc.get_objects():
        for t in types:
            if type(obj) is t:
                counts[t.__name__] += 1
    return counts


@pytest.fixture
async def embedded(tmp_path, nursery):
    service = NodeService(NodeConfig(listen=["/ip4/127.0.0.1/tcp/0"], rpc=f"unix:{tmp_path / 'node.sock'}"))
    await nursery.start(service.run)
    handle = NodeProcess(proc=None, workdir=tmp_path)  # type: ignore[arg-type]
    handle.peer_id, handle.addrs, handle.rpc = service.peer_id, service.addrs, service.rpc_address
    yield service, handle
    await service.shutdown()


TYPES = (Bridge, CapabilitySide, SocketSide, StreamImpl, ModuleSession, Registration, RegistrationImpl)


async def test_streams_and_modules_leave_nothing_behind(embedded, peer, modules, data_path):
    service, node = embedded
    module = await modules(node)
    await module.call("register_echo", "e", ["/echo/1.0.0"])
    await module.call("register_failing", "f", ["/fail/1.0.0"])
    incoming = peer.serve("/sink/1.0.0")
    held_by_the_module = service.rm.live  # its connection's grants, its data channel's, its waitShutdown

    for i in range(60):
        echo = await peer.open(node.addr, ["/echo/1.0.0"])
        await echo.write(b"%d" % i)
        await echo.close_write()
        assert await p.read_all(echo) == b"%d" % i
    for _ in range(20):  # the peer resets midway
        s = await peer.open(node.addr, ["/echo/1.0.0"])
        await s.write(b"x")
        await s.reset()
    for _ in range(20):  # the handler raises
        s = await peer.open(node.addr, ["/fail/1.0.0"])
        await s.write(b"x")
        with pytest.raises(StreamReset):
            await p.read_all(s)
    for i in range(20):  # outbound, dropped by the module without closing
        await module.call("open_stream", f"o{i}", peer.peer_id, ["/sink/1.0.0"], [peer.addr], 10)
        with trio.fail_after(5):
            await incoming.receive()
        await module.call("drop", f"o{i}")
    await peer.host.disconnect(ID.from_base58(node.peer_id))

    async def idle() -> bool:  # left: the accept loop, the idle sweeper, one server per module connection
        aio_expected = 2 + len(service.sessions)
        return service.status()["streams"] == 0 and service.tasks == 0 and service.loops.aio_tasks == aio_expected

    await eventually(idle, timeout=10)
    assert service.streams.streams_total == 120
    # every stream's and connection's reservations came back, exactly
    assert service.rm.live == held_by_the_module
    assert service.rm.system.mem_used == 0
    channel = data_path == "socket"  # a data channel is one more descriptor
    assert dict(+service.rm.system.used) == {"modules": 1, "fds": 1 + channel, "polls": 1}
    expected = {
        "Bridge": 0,
        "CapabilitySide": 0,
        "SocketSide": 0,
        "StreamImpl": 0,
        "ModuleSession": 1,
        "Registration": 2,
        "RegistrationImpl": 2,
    }

    async def collected() -> bool:  # the module's capability releases may still be on their way
        return live(*TYPES) == expected

    try:
        await eventually(collected, timeout=5)
    except trio.TooSlowError:
        raise AssertionError(f"still alive: {live(*TYPES)}; Bridge held by {holders(Bridge)}") from None

    module.kill()  # and a dead module takes its session and registrations with it

    async def gone() -> bool:
        return not service.sessions and len(service.streams.registry) == 0 and service.loops.aio_tasks == 2

    await eventually(gone, timeout=5)
    assert service.rm.live == 0 and not +service.rm.system.used

    async def all_collected() -> bool:
        return live(*TYPES, StreamSlot, MemoryAccount) == dict.fromkeys(
            (t.__name__ for t in (*TYPES, StreamSlot, MemoryAccount)), 0
        )

    await eventually(all_collected, timeout=5)
    assert service.streams.registry.protocols() == []
