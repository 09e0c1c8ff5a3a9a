"""Soak: many streams across several module processes, with about 10% faults injected.

Faults: the module resets the stream (``R``), the peer resets it mid-stream, a module
process is SIGKILLed, a module's RPC connection is cut (the last two are replaced by a
fresh module). Every stream not touched by a fault must echo its bytes intact
(sha256 both ends); afterwards the node holds no stream, task or buffer, only the
live modules' registrations. ``make test`` runs a small soak; ``make soak`` the full
10,000 streams (``SOAK_STREAMS``), which also reports the node's RSS growth from warm-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter

import psutil
import pytest
import trio

from logos_p2p.errors import StreamReset

from .conftest import node_status
from .support import peer as p
from .test_lifecycle import nothing_left

PROTO = "/soak/1.0.0"
STREAMS = int(os.environ.get("SOAK_STREAMS", "300"))
MODULES = 4
CONCURRENCY = 16


def payload(i: int) -> bytes:
    rng = random.Random(i)
    return rng.randbytes(rng.randint(1, 64 * 1024))


@pytest.mark.parametrize("data_path", ["socket", "push"])
async def test_soak(node, peer, modules, nursery):
    pool = []
    for _ in range(MODULES):
        module = await modules(node)
        await module.call("register_soak", "s", [PROTO])
        pool.append(module)
    outcome: Counter[str] = Counter()
    injected: Counter[str] = Counter()  # module kills and RPC cuts
    broken: list[str] = []
    epoch = [0]  # bumped before and after each module kill or cut (odd: one is under way)
    rss: dict[str, int] = {}
    node_proc = psutil.Process(node.pid)

    async def replace(index: int, how: str) -> None:
        module = pool[index]
        epoch[0] += 1
        if how == "kill":
            module.kill()
        else:
            await module.call("cut_rpc")
        fresh = await modules(node)
        await fresh.call("register_soak", "s", [PROTO])
        pool[index] = fresh
        injected[how] += 1
        epoch[0] += 1

    async def one(i: int) -> None:
        kind = "echo"
        if i % 20 == 3:
            kind = "module reset"
        elif i % 20 == 13:
            kind = "peer reset"
        data = payload(i)
        started_epoch = epoch[0]
        try:
            stream = await peer.open(node.addr, [PROTO])
            if kind == "module reset":
                await stream.write(b"R" + data[:50])
                with pytest.raises(StreamReset):
                    await p.read_all(stream, timeout=10)
            elif kind == "peer reset":
                await stream.write(b"E" + data[: len(data) // 2])
                await stream.reset()
            else:
                await stream.write(b"E")
                async with trio.open_nursery() as n:
                    n.start_soon(_send, stream, data)
                    back = await p.read_all(stream, timeout=20)
                if hashlib.sha256(back).digest() != hashlib.sha256(data).digest():
                    broken.append(f"stream {i}: {len(back)} bytes back of {len(data)}, different")
            outcome[kind] += 1
        except Exception as exc:
            if epoch[0] != started_epoch or started_epoch % 2:
                outcome["reset by a module fault"] += 1  # its module was killed or cut meanwhile
            else:
                broken.append(f"stream {i} ({kind}): {type(exc).__name__}: {exc}")

    async def worker(indices: list[int], halfway: trio.Event) -> None:
        for n, i in enumerate(indices):
            if n == len(indices) // 2:
                halfway.set()
            await one(i)

    async def fault_midway(halfway: trio.Event, index: int, how: str) -> None:
        await halfway.wait()  # streams are in flight on every module
        await replace(index, how)

    started = trio.current_time()
    with trio.fail_after(60 + STREAMS * 0.2):
        for block in range(0, STREAMS, 100):
            if "warm" not in rss and block >= STREAMS // 10:
                rss["warm"] = node_proc.memory_info().rss
            async with trio.open_nursery() as n:
                count = min(100, STREAMS - block)
                halfway = trio.Event()
                for w in range(CONCURRENCY):
                    n.start_soon(worker, list(range(block + w, block + count, CONCURRENCY)), halfway)
                if block // 100 % 2 == 1:  # every other block: kill or cut a module mid-traffic
                    how = "kill" if block // 100 % 4 == 1 else "cut"
                    n.start_soon(fault_midway, halfway, (block // 100) % MODULES, how)
    elapsed = trio.current_time() - started
    rss["end"] = node_proc.memory_info().rss

    assert broken == [], "\n".join(broken[:20])
    await nothing_left(node, modules_expected=MODULES, registrations=MODULES)
    status = await node_status(node.rpc)
    faults = sum(n for k, n in outcome.items() if k != "echo")
    report = {
        "streams": STREAMS,
        "seconds": round(elapsed, 1),
        "outcomes": dict(outcome),
        "module faults": dict(injected),
        "fault share": round(faults / STREAMS, 3),
        "node resets by cause": {r["cause"]: r["count"] for r in status["resets"]},
        "node RSS MiB warm/end": [round(rss.get("warm", 0) / 2**20, 1), round(rss["end"] / 2**20, 1)],
    }
    print("soak:", json.dumps(report))
    assert sum(outcome.values()) == STREAMS
    assert injected["kill"] >= 1 and injected["cut"] >= (1 if STREAMS > 400 else 0)
    assert 0.08 <= faults / STREAMS <= 0.2
    assert outcome["echo"] >= STREAMS * 0.7
    if STREAMS >= 5000:  # the full soak: memory settles
        growth = rss["end"] / rss["warm"] - 1
        assert growth < 0.10, f"node RSS grew {growth:.1%} from warm-up"


async def _send(stream, data: bytes) -> None:
    for offset in range(0, len(data), 16384):
        await stream.write(data[offset : offset + 16384])
    await stream.close_write()
