"""The resource manager (server/_resources.py) on its own: no sockets, no loops."""

from __future__ import annotations

import logging

import pytest

from logos_p2p.errors import LimitExceeded
from logos_p2p.server import _resources as r
from logos_p2p.server._resources import MiB, ResourceLimits, ResourceManager, derive_limits


def manager(**kwargs: int) -> ResourceManager:
    base = {"streams": 10, "streams_per_peer": 3, "fds": 100}
    return ResourceManager(derive_limits(ResourceLimits(**{**base, **kwargs}), nofile=1024, in_use=10))


def test_a_grant_is_refused_by_the_first_full_scope_and_changes_nothing():
    rm = manager()
    peer = rm.peer("A")
    grants = [rm.grant(r.STREAMS_IN, peer) for _ in range(3)]
    with pytest.raises(LimitExceeded, match="peer:A: 3 inbound streams"):
        rm.grant(r.STREAMS_IN, peer)
    assert (rm.system.used[r.STREAMS_IN], peer.used[r.STREAMS_IN]) == (3, 3)  # the refusal took nothing
    assert rm.refusals == {("peer", r.STREAMS_IN): 1}
    other = rm.peer("B")  # one peer at its share leaves room for another
    assert rm.try_grant(r.STREAMS_IN, other) is not None
    for grant in grants:
        grant.release()
        grant.release()  # exactly once, whoever calls it
    assert peer.used[r.STREAMS_IN] == 0 and rm.system.used[r.STREAMS_IN] == 1


def test_the_system_scope_bounds_every_peer_together():
    rm = manager(streams_per_peer=8)
    held = [rm.grant(r.STREAMS_IN, rm.peer(f"P{i}")) for i in range(10)]
    with pytest.raises(LimitExceeded, match="system: 10 inbound streams"):
        rm.grant(r.STREAMS_IN, rm.peer("late"))
    assert rm.refusals == {("system", r.STREAMS_IN): 1}
    assert len(held) == 10


def test_live_counts_every_reservation_until_released():
    rm = manager()
    grant = rm.grant(r.FDS, amount=2)
    account = rm.memory_account(rm.peer("A"))
    assert rm.live == 2
    grant.release()
    account.close()
    account.close()
    assert rm.live == 0
    assert rm.system.used[r.FDS] == 0 and rm.system.mem_used == 0


def test_a_grant_moves_from_transient_to_its_protocol_and_module():
    rm = manager(streams_per_protocol=1)
    grant = rm.grant(r.NEGOTIATING, rm.transient, rm.peer("A"))
    grant.move(drop=[rm.transient, rm.peer("A")])
    assert rm.transient.used[r.NEGOTIATING] == 0
    stream = rm.grant(r.STREAMS_IN, rm.peer("A"), rm.protocol("/p"))
    second = rm.grant(r.STREAMS_IN, rm.peer("A"))
    with pytest.raises(LimitExceeded, match="protocol:/p"):
        second.move(add=[rm.protocol("/p"), rm.module(1)])
    assert rm.module(1).used[r.STREAMS_IN] == 0  # a refused move changes nothing
    assert second.scopes == [rm.system, rm.peer("A")]
    for g in (grant, stream, second):
        g.release()
    assert rm.status()["reservations"] == 0


def test_memory_is_charged_as_it_fills_and_refused_past_a_share():
    rm = manager(memory=64 * MiB, memory_per_peer=3 * MiB // 2)  # two thirds for the bytes: 1 MiB
    peer = rm.peer("A")
    account = rm.memory_account(peer)
    assert account.reserve(MiB)
    assert not account.reserve(1)  # the peer's share is full
    assert rm.refusals == {("peer", r.MEMORY): 1}
    account.force(10)  # bytes already in memory (moved inside the node) are counted anyway
    assert (account.used, peer.mem_used, rm.system.mem_used) == (MiB + 10, MiB + 10, MiB + 10)
    account.set(100)
    assert peer.mem_used == 100
    account.release(1000)  # never below zero
    assert account.used == 0
    account.close()
    account.force(5)  # after close: ignored
    assert rm.system.mem_used == 0


def test_idle_peer_scopes_are_forgotten():
    rm = manager()
    for i in range(1000):
        rm.grant(r.STREAMS_IN, rm.peer(f"P{i}")).release() if i % 2 else rm.memory_account(rm.peer(f"P{i}")).close()
    assert [row["scope"] for row in rm.status()["limits"] if row["scope"].startswith("peer:")] == []


def test_refusals_are_logged_once_per_kind_per_interval(caplog, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(r.time, "monotonic", lambda: now[0])
    rm = manager()
    peer = rm.peer("A")
    for _ in range(3):
        rm.grant(r.STREAMS_IN, peer)
    with caplog.at_level(logging.WARNING, logger="logos_p2p.node"):
        for _ in range(500):
            assert rm.try_grant(r.STREAMS_IN, peer) is None
        now[0] += r.LOG_INTERVAL
        rm.flush_logs()
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0] == "refused an inbound stream over the limit of peer:A: 3 inbound streams"
    assert lines[1] == (
        "refused an inbound stream 499 times (peer scope), the last over the limit of peer:A: 3 inbound streams"
    )
    assert rm.refusals[("peer", r.STREAMS_IN)] == 500


def test_limits_derive_from_descriptors_and_memory():
    small = derive_limits(ResourceLimits(), nofile=1024, in_use=20)
    assert small.fd_reserve == 64 and small.fds == 1024 - 20 - 64
    assert small.streams == small.fds - 2 * small.connections - 2 * 64
    assert small.streams_per_peer == small.streams // 8
    assert small.memory_per_peer == 32 * MiB and small.memory_per_module == 128 * MiB
    big = derive_limits(ResourceLimits(), nofile=1 << 20, in_use=20)
    assert big.streams == 256 * MiB // (2 * r.STREAM_COST)  # then memory bounds them
    given = derive_limits(ResourceLimits(streams=7, fds=50), nofile=1024, in_use=20)
    assert (given.streams, given.fds) == (7, 50)


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="memory budget"):
        ResourceLimits(memory=1024).check()
    with pytest.raises(ValueError, match="stream window"):
        ResourceLimits(stream_window=1000).check()


def test_status_shows_each_scope_against_its_limit():
    rm = manager()
    grant = rm.grant(r.STREAMS_IN, rm.peer("A"), rm.module(3))
    rows = {(row["scope"], row["resource"]): (row["used"], row["limit"]) for row in rm.status()["limits"]}
    assert rows[("system", r.STREAMS_IN)] == (1, 10)
    assert rows[("peer:A", r.STREAMS_IN)] == (1, 3)
    assert rows[("module:3", r.STREAMS)] == (0, 4096)
    assert rows[("system", r.MEMORY)] == (0, 256 * MiB * 2 // 3)  # the bytes' share of the budget
    grant.release()


def test_a_stream_slot_negotiates_binds_and_gives_everything_back():
    rm = manager(memory=64 * MiB, memory_per_module=r.STREAM_COST * 3 // 2, streams_per_module=2)
    slot = rm.stream("inbound", "A")
    assert rm.transient.used[r.NEGOTIATING] == 1 and rm.peer("A").mem_used == r.STREAM_COST
    assert slot.account is None  # no module yet: nothing buffered for one
    slot.negotiated()
    slot.bind(rm.protocol("/p"), rm.module(1))
    assert rm.transient.used[r.NEGOTIATING] == 0
    assert rm.module(1).used[r.STREAMS] == 1 and rm.module(1).mem_used == r.STREAM_COST
    assert rm.protocol("/p").used[r.STREAMS_IN] == 1
    assert slot.account is not None and slot.account.scopes == [rm.module(1), rm.peer("A"), rm.system]
    second = rm.stream("inbound", "B")
    with pytest.raises(LimitExceeded, match="module:1"):  # its bookkeeping does not fit the module's memory
        second.bind(rm.protocol("/p"), rm.module(1))
    assert rm.protocol("/p").used[r.STREAMS_IN] == 1  # the refused bind took nothing
    assert rm.module(1).used[r.STREAMS] == 1
    second.release()
    slot.account.force(1000)
    slot.release()
    slot.release()
    assert rm.live == 0 and rm.system.mem_used == 0 and not +rm.system.used


def test_a_modules_streams_count_both_directions_together():
    rm = manager(streams_per_module=2)
    module = rm.module(7)
    a = rm.stream("inbound", "A")
    a.bind(rm.protocol("/p"), module)
    b = rm.stream("outbound", "B", module)
    with pytest.raises(LimitExceeded, match="module:7: 2 streams"):
        rm.stream("outbound", "C", module)
    c = rm.stream("inbound", "C")
    with pytest.raises(LimitExceeded, match="module:7: 2 streams"):
        c.bind(rm.protocol("/p"), module)
    for slot in (a, b, c):
        slot.release()
    assert rm.live == 0
