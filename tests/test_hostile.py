"""A hostile network: floods of streams and bytes against a node on its defaults.

The node runs with RLIMIT_NOFILE at 1,024 (a common default); each hostile peer is a
process of its own with an identity of its own (``support/flood_peer.py``); the modules
are processes using only the client library. While and after each flood, a well-behaved
peer's echo through a well-behaved module must succeed, the node must stay within its
limits, ``status`` must show the refusals by scope, and afterwards nothing may be left.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest
import trio

from logos_p2p.server import _libp2p

from .conftest import eventually, node_status
from .support import peer as p
from .support.flood import start_flood

FLOOD, ECHO = "/flood/1.0.0", "/echo/1.0.0"
NOFILE = 1024
MiB = 1024 * 1024


@pytest.fixture
async def floods(nursery):
    started = []

    async def make(*args: Any, **kwargs: Any) -> Any:
        flood = await start_flood(nursery, *args, **kwargs)
        started.append(flood)
        return flood

    try:
        yield make
    finally:
        for flood in started:
            await flood.wait_killed()


async def echo_once(peer, node, size: int = 32) -> float:
    """One stream, ``size`` bytes there and back; the round trip in seconds."""
    stream = await peer.open(node.addr, [ECHO])
    started = trio.current_time()
    await _libp2p.write(stream, b"e" * size)
    assert await p.read_exactly(stream, size) == b"e" * size
    elapsed = trio.current_time() - started
    await stream.close_write()
    assert await p.read_all(stream) == b""
    return elapsed


async def echo_rtt(peer, node, rounds: int = 20) -> float:
    return statistics.median([await echo_once(peer, node) for _ in range(rounds)])


def refusals(status: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(r["scope"], r["resource"]): r["count"] for r in status["refusals"]}


def use(status: dict[str, Any], scope: str, resource: str) -> tuple[int, int]:
    [row] = [r for r in status["limits"] if r["scope"] == scope and r["resource"] == resource]
    return row["used"], row["limit"]


async def idle(node) -> dict[str, Any]:
    """Wait until the node holds no stream and runs no stream task; its status then."""
    status: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal status
        status = await node_status(node.rpc)
        return status["streams"] == 0 and status["tasks"] == 0

    try:
        await eventually(check, timeout=30, what="the node let every stream go")
    except trio.TooSlowError:
        raise AssertionError(
            f"the node still holds {status['streams']} streams, {status['tasks']} tasks: {status}"
        ) from None
    return status


async def well_behaved_modules(node, modules) -> None:
    echo = await modules(node, name="echo")
    await echo.call("register_echo", "e", [ECHO])


async def echo_throughout(peer, node, results: list[float], stop: trio.Event, done: trio.Event) -> None:
    """Echo once every 50 ms until ``stop``; every round trip must succeed."""
    try:
        while not stop.is_set():
            results.append(await echo_once(peer, node))
            with trio.move_on_after(0.05):
                await stop.wait()
    finally:
        done.set()


@pytest.mark.parametrize("data_path", ["socket", "push"])  # push and pull take a stream in alike
async def test_a_stream_flood_is_refused_and_the_node_serves_on(
    node_factory, peer, modules, floods, nursery, data_path
):
    """Five peers open 250 streams each to a module that holds them (the node at 1,024
    descriptors died of EMFILE here before)."""
    node = node_factory(nofile=NOFILE)
    holder = await modules(node, name="holder")
    await holder.call("register_hold_all", "h", [FLOOD])
    await well_behaved_modules(node, modules)
    rtt_idle = await echo_rtt(peer, node)
    baseline = await idle(node)
    fds_before = node.fds()

    during: list[float] = []
    stop, echoed = trio.Event(), trio.Event()
    nursery.start_soon(echo_throughout, peer, node, during, stop, echoed)
    flood = await floods(node.addr, FLOOD, peers=5, streams=250, size=16)
    await flood.settled()
    rtt_flood = await echo_rtt(peer, node)
    stop.set()
    await echoed.wait()

    assert node.proc.poll() is None
    status = await node_status(node.rpc)
    opened, refused = flood.total("opened"), flood.total("refused")
    assert opened + refused == 1250 and refused > 0 and opened > 0
    assert status["streams"] == opened  # every stream a peer holds, the node holds; no more
    assert sum(refusals(status).values()) >= refused
    per_peer = status_limit(status, "streamsIn")
    assert all(p.state["opened"] <= per_peer for p in flood.peers)
    assert node.fds() < NOFILE
    assert len(during) >= 2  # echoes went on while the flood opened its streams

    await flood.wait_killed()
    after = await idle(node)
    assert after["reservations"] == baseline["reservations"]
    assert node.fds() <= fds_before + 2
    assert 1 <= len(refusal_lines(node)) <= 8, refusal_lines(node)  # not one line per refused stream
    rtt_after = await echo_rtt(peer, node)
    print(
        f"\nstream flood: {opened} held, {refused} refused; echo {rtt_idle * 1e3:.2f} ms idle, "
        f"{rtt_flood * 1e3:.2f} ms during, {rtt_after * 1e3:.2f} ms after; fds {fds_before} -> {node.fds()}"
    )


def refusal_lines(node) -> list[str]:
    """The node's log lines about refusals: one per scope kind and resource per 10 s, at most."""
    return [line for line in node.log().splitlines() if "WARNING logos_p2p.node: refused" in line]


def status_limit(status: dict[str, Any], resource: str) -> int:
    """The per-peer limit of ``resource`` (from any peer scope status shows)."""
    return next(r["limit"] for r in status["limits"] if r["scope"].startswith("peer:") and r["resource"] == resource)


@pytest.mark.parametrize("data_path", ["socket", "push"])
async def test_a_byte_flood_to_a_module_that_never_reads_stays_within_the_memory_budget(
    node_factory, peer, modules, floods, nursery, data_path
):
    """Four peers open 100 streams each and write 2 MiB into each, to a module that never
    reads: the node's RSS grows by less than its memory budget, and the writers stall."""
    budget = 64 * MiB
    node = node_factory("--memory-budget", str(budget), nofile=NOFILE)
    holder = await modules(node, data_path=data_path, name="holder")
    await holder.call("register_hold_all", "h", [FLOOD])
    await well_behaved_modules(node, modules)
    await echo_rtt(peer, node)
    baseline = await idle(node)
    rss_before = node.rss()

    peak = rss_before
    stop = trio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, node.rss())
            with trio.move_on_after(0.02):
                await stop.wait()

    nursery.start_soon(sample)
    during: list[float] = []
    echoed = trio.Event()
    nursery.start_soon(echo_throughout, peer, node, during, stop, echoed)
    flood = await floods(node.addr, FLOOD, peers=4, streams=100, size=2 * MiB)
    await flood.settled()

    async def stalled() -> bool:  # every stream refused, reset, or held back by the node
        status = await node_status(node.rpc)
        return use(status, "system", "memory")[0] > budget // 4 or flood.total("reset") > 0

    await eventually(stalled, timeout=30)
    rtt_flood = await echo_rtt(peer, node)
    stop.set()
    await echoed.wait()

    accepted = flood.total("bytes")
    # the writers stall: a stream's window grows while the node reads it, only while memory has room
    assert flood.total("written") < flood.total("opened") and accepted < 400 * 2 * MiB
    status = await node_status(node.rpc)
    for p_ in flood.peers:  # and no peer holds more than its share
        used_by_peer = [r["used"] for r in status["limits"] if r["scope"] == f"peer:{p_.state['peer']}"]
        assert all(u <= budget // 8 * 2 // 3 + 64 * 1024 for u in used_by_peer[:1]), used_by_peer
    used, limit = use(status, "system", "memory")
    assert limit == budget * 2 // 3 and used <= limit  # the share of the budget buffers may take
    assert peak - rss_before < budget, f"RSS grew by {(peak - rss_before) / MiB:.0f} MiB"
    assert len(during) >= 2
    assert 1 <= len(refusal_lines(node)) <= 8, refusal_lines(node)

    await flood.wait_killed()
    after = await idle(node)
    assert after["reservations"] == baseline["reservations"]
    assert use(after, "system", "memory")[0] == use(baseline, "system", "memory")[0]
    await echo_rtt(peer, node)
    print(
        f"\nbyte flood ({data_path}): {accepted / MiB:.0f} MiB accepted, node RSS +{(peak - rss_before) / MiB:.0f} MiB"
        f" (budget {budget // MiB} MiB), refused {refusals(status)}, echo during {rtt_flood * 1e3:.2f} ms"
    )
