"""An in-process py-libp2p peer for tests (trio).

Reads go through the node's libp2p adapter, so a remote reset is reported as
StreamReset rather than py-libp2p 0.8.1's StreamEOF; tests that assert on a
reset also check the muxer's own record (:func:`reset_recorded`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr

from logos_p2p.server import _libp2p

logging.getLogger("libp2p").setLevel(logging.CRITICAL)


class Peer:
    def __init__(self, host: Any) -> None:
        self.host = host
        self.peer_id = str(host.get_id())
        self.addr = str(host.get_addrs()[0])
        self._incoming: dict[str, trio.MemorySendChannel[Any]] = {}

    async def connect(self, addr: str) -> None:
        with trio.fail_after(10):
            await self.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))

    async def open(self, addr: str, protocols: list[str], timeout: float = 10) -> Any:
        """Connect to ``addr`` (with /p2p/) and open a stream; raises libp2p's errors."""
        await self.connect(addr)
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        with trio.fail_after(timeout):
            return await self.host.new_stream(info.peer_id, protocols)

    def serve(self, protocol: str, buffer: int = 16) -> trio.MemoryReceiveChannel[Any]:
        """Accept ``protocol``; inbound streams arrive on the returned channel."""
        send, receive = trio.open_memory_channel[Any](buffer)

        async def handler(stream: Any) -> None:
            await send.send(stream)

        self.host.set_stream_handler(protocol, handler)
        return receive

    def serve_echo(self, protocol: str) -> None:
        async def echo(stream: Any) -> None:
            with contextlib.suppress(Exception):
                while (data := await _libp2p.read(stream, 65536)) is not None:
                    await _libp2p.write(stream, data)
                await _libp2p.close_write(stream)

        self.host.set_stream_handler(protocol, echo)


async def read(stream: Any, n: int = 65536) -> bytes | None:
    """None at end of stream; raises StreamReset/ConnectionLost."""
    return await _libp2p.read(stream, n)


async def read_all(stream: Any, timeout: float = 10) -> bytes:
    out = bytearray()
    with trio.fail_after(timeout):
        while (data := await _libp2p.read(stream, 65536)) is not None:
            out += data
    return bytes(out)


async def read_exactly(stream: Any, n: int, timeout: float = 10) -> bytes:
    out = bytearray()
    with trio.fail_after(timeout):
        while len(out) < n:
            data = await _libp2p.read(stream, n - len(out))
            if data is None:
                raise EOFError(f"end of stream after {len(out)} of {n} bytes")
            out += data
    return bytes(out)


async def reset_while_opening(peer: Peer, addr: str, protocols: list[str], timeout: float = 10) -> None:
    """Open a stream the node will reset at once and check that it was reset.

    The reset may come before py-libp2p's peer has read the node's protocol
    answer: its yamux drops buffered data once a reset arrives, so ``open``
    then fails with the muxer's reset in its chain; otherwise the first read
    raises StreamReset and the muxer records the reset. Both are the reset.
    """
    try:
        stream = await peer.open(addr, protocols, timeout)
    except Exception as exc:
        chain: BaseException | None = exc
        while chain is not None and type(chain).__name__ not in ("StreamReset", "MuxedStreamReset"):
            chain = chain.__cause__
        assert chain is not None, f"not a reset: {exc!r}"
        return
    try:
        await read_all(stream, timeout)
    except Exception as exc:
        assert type(exc).__name__ == "StreamReset", f"not a reset: {exc!r}"
    else:
        raise AssertionError("the stream ended cleanly; a reset was expected")
    assert reset_recorded(stream)


def negotiation_failed(exc: BaseException) -> bool:
    """Whether an open failed in protocol negotiation (py-libp2p's MultiselectClientError
    somewhere in the chain)."""
    chain: BaseException | None = exc
    while chain is not None:
        if type(chain).__name__ == "MultiselectClientError":
            return True
        chain = chain.__cause__
    return False


def reset_recorded(stream: Any) -> bool:
    """The muxer's own record that the peer reset this stream."""
    muxed = stream.muxed_stream
    flag = getattr(muxed, "reset_received", None)
    if flag is not None:
        return bool(flag)
    return bool(muxed.event_reset.is_set())


@contextlib.asynccontextmanager
async def open_peer(muxer: str | None = None, key_pair: Any = None) -> AsyncIterator[Peer]:
    """A py-libp2p host on 127.0.0.1; ``key_pair``: its identity (hosts sharing one are one
    peer with several connections)."""
    _libp2p.install_fixes()
    kwargs: dict[str, Any] = {"key_pair": key_pair or create_new_key_pair()}
    if muxer:
        kwargs["muxer_preference"] = muxer.upper()
    host = new_host(**kwargs)
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        yield Peer(host)
