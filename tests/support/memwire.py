"""One libp2p stream in one process: py-libp2p's own yamux or mplex over a socket pair,
no security, no host, no other process.

The node's end is what a bridge takes (a ``NetStream`` with its protocol set); the peer's
end is a ``NetStream`` the test drives as the remote peer would. Both muxers are the real
ones, with the node's fixes and gate hooks installed, so windows, half-closes and resets
behave as on the network.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.network.stream.net_stream import NetStream
from libp2p.peer.id import ID
from libp2p.stream_muxer.mplex.mplex import Mplex
from libp2p.stream_muxer.yamux.yamux import Yamux

from logos_p2p.server import _libp2p

PROTOCOL = "/memwire/1"
REMOTE = ("127.0.0.1", 4001)  # what the node's end reports as the peer's address


class MemoryConn:
    """The secured connection a muxer runs on: one end of a socket pair (its kernel buffers
    push back on a writer as a TCP connection's do)."""

    def __init__(self, stream: trio.abc.Stream, initiator: bool) -> None:
        self.stream = stream
        self.is_initiator = initiator

    async def read(self, n: int | None = None) -> bytes:
        try:
            return bytes(await self.stream.receive_some(n))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return b""

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close(self) -> None:
        await self.stream.aclose()

    def get_remote_address(self) -> tuple[str, int]:
        return REMOTE

    def get_transport_addresses(self) -> list[Any]:
        return []

    def get_connection_type(self) -> Any:
        return None


@dataclass
class Wire:
    node: NetStream  # the bridge's end
    peer: NetStream  # the remote peer's end
    node_conn: Any  # the node's muxer (Yamux or Mplex)
    peer_conn: Any
    peer_id: str  # the remote peer's id, as the node sees it

    async def drop_connection(self) -> None:
        """The connection under the stream dies (both muxers see it go)."""
        await self.node_conn.secured_conn.stream.aclose()


def _peer_id() -> ID:
    return ID.from_pubkey(create_new_key_pair().public_key)


@contextlib.asynccontextmanager
async def memory_wire(muxer: str = "yamux") -> AsyncIterator[Wire]:
    """One stream opened by the peer to the node, on a connection of its own."""
    _libp2p.install_fixes()
    kind = {"yamux": Yamux, "mplex": Mplex}[muxer]
    a, b = trio.socket.socketpair()
    node_stream, peer_stream = trio.SocketStream(a), trio.SocketStream(b)
    node_id, peer_id = _peer_id(), _peer_id()
    node_conn = kind(MemoryConn(node_stream, initiator=False), peer_id)
    peer_conn = kind(MemoryConn(peer_stream, initiator=True), node_id)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node_conn.start)
        nursery.start_soon(peer_conn.start)
        peer_muxed = await peer_conn.open_stream()
        peer = NetStream(peer_muxed, None, None)
        peer.set_protocol(PROTOCOL)  # type: ignore[arg-type]
        node = NetStream(await node_conn.accept_stream(), None, None)
        node.set_protocol(PROTOCOL)  # type: ignore[arg-type]
        try:
            yield Wire(node, peer, node_conn, peer_conn, str(peer_id))
        finally:
            with contextlib.suppress(Exception):
                await peer_conn.close()
            with contextlib.suppress(Exception):
                await node_conn.close()
            nursery.cancel_scope.cancel()
