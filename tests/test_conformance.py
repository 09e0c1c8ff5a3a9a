"""Stream conformance: one matrix every stream kind must pass, cell by cell.

Like trio's ``check_half_closeable_stream``: each *kind* of stream -- inbound and
outbound, on the socket, push and pull data paths -- runs every cell, so a missing
cell is a missing test id, not a gap nobody sees. The module side runs in a module
process with only ``logos_p2p.client``; the remote side is a py-libp2p peer. One node,
one peer and three module processes serve the whole matrix (``support/harness.py``);
after every cell the node must hold no stream and run no stream task.

Sizes cross every bound inside the node and the client: 1 B, a 64 KiB data-channel
frame +-1, the 256 KiB buffers + 1, 1 MiB, 4 MiB.

* read: each read method of ``Stream`` against a peer that writes all at once, in
  4093-byte pieces, and slower than the module reads; the peer half-closes, the module
  checks end of stream twice and then answers (the rest, after a half-close);
* write: ``write`` and ``write_lp``, whole or in pieces, and to a peer reading slowly;
  the module half-closes, the peer answers;
* half-close: each side half-closes first, then the other sends 1 MiB;
* reset: the peer resets while the module waits in each read method, and while it
  writes; the module resets while the peer writes, and while it writes itself;
* cancel: one call of each read method cancelled while it waits, with part of the
  data buffered: nothing is lost.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import trio

from logos_p2p import _frames
from logos_p2p.errors import StreamReset
from logos_p2p.server import _libp2p

from .support import peer as p
from .support.harness import KINDS, Harness, Pair, peer_write, start_harness
from .support.scenarios import pattern

KiB, MiB = 1024, 1024 * 1024
SIZES = [1, 64 * KiB - 1, 64 * KiB + 1, 256 * KiB + 1, MiB, 4 * MiB]
READS = ["read", "read_exactly", "read_all", "read_lp", "aiter"]
PEER_WRITES = ["whole", "pieces", "slow"]
WRITES = ["write", "write_lp"]
MODULE_WRITES = ["whole", "pieces", "to-a-slow-reader"]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Any:
    h = start_harness(tmp_path_factory.mktemp("conformance"))
    try:
        yield h
    finally:
        h.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frame(data: bytes) -> bytes:
    return _frames.encode_uvarint(len(data)) + data


def run_cell(harness: Harness, kind: str, cell: Any, *args: Any) -> None:
    """Open a stream of ``kind``, run ``cell`` on it, and check the node let everything go."""

    async def one(h: Harness) -> None:
        pair = await h.open(kind)
        try:
            await cell(pair, *args)
        except BaseException:
            with trio.move_on_after(5):
                await h.finish(pair)
            raise
        if kind.startswith("inbound"):
            pair.module.signal(f"release:{pair.key}")
        await h.nothing_left()

    harness.run(one, timeout=90)


async def peer_read_all(stream: Any, slow: bool = False) -> bytes:
    out = bytearray()
    while (data := await p.read(stream, 16 * KiB if slow else 256 * KiB)) is not None:
        out += data
        if slow:
            await trio.sleep(0.001)
    return bytes(out)


# -- read ----------------------------------------------------------------------------------------


async def read_cell(pair: Pair, method: str, size: int, how: str) -> None:
    data = pattern(size, seed=size % 251)
    reading = pair.module.start("conform_read", pair.key, method, size)
    await peer_write(pair.peer, frame(data) if method == "read_lp" else data, how)
    await pair.peer.close_write()
    answer = await peer_read_all(pair.peer)
    assert await reading.result(timeout=60) == (size, sha(data), "eof")
    assert answer == f"{size} {sha(data)}".encode()


@pytest.mark.parametrize("how", PEER_WRITES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method", READS)
@pytest.mark.parametrize("kind", KINDS)
def test_read(harness, kind, method, size, how):
    run_cell(harness, kind, read_cell, method, size, how)


# -- write ---------------------------------------------------------------------------------------


async def write_cell(pair: Pair, method: str, size: int, how: str) -> None:
    seed = size % 241
    data = pattern(size, seed)
    pieces = [data[i : i + 4093] for i in range(0, size, 4093)] if how == "pieces" else [data]
    expected = b"".join(frame(piece) for piece in pieces) if method == "write_lp" else data
    writing = pair.module.start("conform_write", pair.key, method, size, how, seed)
    got = await peer_read_all(pair.peer, slow=how == "to-a-slow-reader")
    assert (len(got), sha(got)) == (len(expected), sha(expected))
    answer = f"got {len(got)}".encode()
    await _libp2p.write(pair.peer, answer)
    await pair.peer.close_write()
    assert await writing.result(timeout=60) == answer


@pytest.mark.parametrize("how", MODULE_WRITES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("kind", KINDS)
def test_write(harness, kind, method, size, how):
    run_cell(harness, kind, write_cell, method, size, how)


# -- half-close, then the rest -----------------------------------------------------------------------


async def peer_half_closes_first(pair: Pair) -> None:
    replying = pair.module.start("conform_reply", pair.key, MiB, 5)
    await _libp2p.write(pair.peer, b"request")
    await pair.peer.close_write()
    assert await p.read_exactly(pair.peer, MiB, timeout=30) == pattern(MiB, 5)
    assert await p.read(pair.peer) is None
    assert await replying.result(timeout=30) == b"request"


async def module_half_closes_first(pair: Pair) -> None:
    writing = pair.module.start("conform_write", pair.key, "write", 7, "whole", 6)
    assert await peer_read_all(pair.peer) == pattern(7, 6)
    await _libp2p.write(pair.peer, pattern(MiB, 4))
    await pair.peer.close_write()
    assert sha(await writing.result(timeout=30)) == sha(pattern(MiB, 4))


@pytest.mark.parametrize("first", ["peer", "module"])
@pytest.mark.parametrize("kind", KINDS)
def test_half_close_then_the_rest(harness, kind, first):
    run_cell(harness, kind, peer_half_closes_first if first == "peer" else module_half_closes_first)


# -- reset ------------------------------------------------------------------------------------------


async def peer_resets_mid_read(pair: Pair, method: str) -> None:
    reading = pair.module.start("conform_reset_mid_read", pair.key, method, MiB)
    await pair.module.event("reading")
    partial = pattern(1000, 9)
    await _libp2p.write(pair.peer, frame(pattern(MiB, 9))[:1003] if method == "read_lp" else partial)
    await pair.peer.reset()
    # the pending read, a later read, a write and close: each raises the peer's reset
    assert await reading.result(timeout=30) == ["StreamReset:remoteReset"] * 4


async def peer_resets_mid_write(pair: Pair) -> None:
    writing = pair.module.start("conform_reset_mid_write", pair.key, 8)
    await pair.module.event("writing")
    assert await p.read_exactly(pair.peer, 64 * KiB) == pattern(64 * KiB, 8)
    await pair.peer.reset()
    assert await writing.result(timeout=30) == "StreamReset:remoteReset"


async def module_resets_mid_peer_write(pair: Pair) -> None:
    outcome: list[str] = []

    async def write() -> None:
        try:
            await _libp2p.write(pair.peer, pattern(4 * MiB, 3))  # more than the node and module hold
            outcome.append("written")
        except StreamReset:
            outcome.append("reset")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        assert await pair.module.call("conform_module_resets", pair.key, 64 * KiB, False, 0, timeout=30) == "reset"
    assert outcome == ["reset"]
    with pytest.raises(StreamReset):
        await p.read(pair.peer)
    assert p.reset_recorded(pair.peer)


async def module_resets_mid_own_write(pair: Pair) -> None:
    data = pattern(4 * MiB, 2)
    resetting = pair.module.start("conform_module_resets", pair.key, 100_000, True, 2)
    got = bytearray()
    with pytest.raises(StreamReset):
        while (chunk := await p.read(pair.peer)) is not None:
            got += chunk
    assert bytes(got) == data[: len(got)]  # an intact prefix, then the reset
    assert p.reset_recorded(pair.peer)
    assert await resetting.result(timeout=30) == "reset"


@pytest.mark.parametrize("method", READS)
@pytest.mark.parametrize("kind", KINDS)
def test_peer_resets_mid_read(harness, kind, method):
    run_cell(harness, kind, peer_resets_mid_read, method)


@pytest.mark.parametrize(
    "cell", [peer_resets_mid_write, module_resets_mid_peer_write, module_resets_mid_own_write], ids=lambda c: c.__name__
)
@pytest.mark.parametrize("kind", KINDS)
def test_reset_mid_write(harness, kind, cell):
    run_cell(harness, kind, cell)


# -- cancellation ----------------------------------------------------------------------------------------


async def cancel_cell(pair: Pair, method: str, size: int) -> None:
    data = pattern(size, 10)
    wire = frame(data) if method == "read_lp" else data
    partial = 0 if method in ("read", "aiter") else len(wire) // 3  # read returns what is there
    calling = pair.module.start("conform_cancel", pair.key, method, size, 0.15)
    await pair.module.event("reading")
    await _libp2p.write(pair.peer, wire[:partial])
    await pair.module.event("cancelled")
    await _libp2p.write(pair.peer, wire[partial:])
    await pair.peer.close_write()
    assert await calling.result(timeout=30) == ("timeout", size, sha(data))
    assert await peer_read_all(pair.peer) == b""


@pytest.mark.parametrize("size", [3000, MiB])
@pytest.mark.parametrize("method", READS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_cancelled_read_loses_nothing(harness, kind, method, size):
    run_cell(harness, kind, cancel_cell, method, size)
