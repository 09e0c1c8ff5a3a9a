"""Connecting to a node: its address, the TCP token exchange, the RPC connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import capnp

from .. import _address, _auth, _schema
from .._kj import kj_loop
from ..errors import InvalidArgument, NodeUnavailable, Timeout
from ._node import RPC_TRAVERSAL_LIMIT_WORDS, Node

schema = _schema.load()


async def _open_tcp(host: str, port: int, token: bytes | None, timeout: float) -> Any:
    """A TCP connection that passed the node's token authentication, as a capnp stream."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, kind, proto, _name, addr in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await _auth.authenticate_to_node(sock, token, timeout)
            return await capnp.AsyncIoStream.create_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
    raise last or OSError(f"no address for {host}")


@contextlib.asynccontextmanager
async def connect(
    address: str | None = None,
    *,
    name: str | None = None,
    timeout: float = 10.0,
    data_path: str = "auto",
    token: str | bytes | None = None,
) -> AsyncIterator[Node]:
    """Connect to a node's RPC endpoint: ``unix:PATH`` or ``tcp:HOST:PORT``.

    Without ``address``: ``$LOGOS_P2P_RPC``, else the node's default socket.
    ``name`` labels this module in the node's status. Works on any asyncio
    loop, including trio-asyncio's.

    ``data_path`` says how stream bytes move: ``"socket"`` -- each stream a
    unix socket of its own, passed over a data channel beside the RPC
    connection (local nodes only; the fastest); ``"push"`` -- the node pushes
    inbound bytes to a capability of this module; ``"pull"`` -- this module
    asks with ``Stream.read``. ``"auto"`` (the default) takes ``"socket"``
    when the node offers it, else ``"push"``.

    A TCP endpoint needs the node's token (see ``logos_p2p._auth``): ``token``,
    else ``$LOGOS_P2P_TOKEN``, else the file ``$LOGOS_P2P_TOKEN_FILE``, else the
    default token file of a node on this machine. A refusal is
    :class:`AuthenticationFailed`.
    """
    if data_path not in ("auto", "socket", "push", "pull"):
        raise InvalidArgument("data_path must be 'auto', 'socket', 'push' or 'pull'")
    target = _address.parse(address) if address else _address.default_address()
    if target.kind == "tcp" and target.port == 0:
        raise InvalidArgument("connect needs a port other than 0")
    async with kj_loop():
        try:
            if target.kind == "unix":
                opening = capnp.AsyncIoStream.create_unix_connection(target.path)
            else:
                opening = _open_tcp(target.host, target.port, _auth.client_token(token), timeout)
            conn = await asyncio.wait_for(opening, timeout)
        except TimeoutError:
            raise Timeout(f"connecting to {target} took longer than {timeout:g}s") from None
        except OSError as exc:
            raise NodeUnavailable(f"no node at {target}: {exc}") from exc
        client = capnp.TwoPartyClient(conn, traversal_limit_in_words=RPC_TRAVERSAL_LIMIT_WORDS)
        cap = client.bootstrap().cast_as(schema.Node)
        node = Node(client, cap, str(target), push=data_path != "pull")
        sockets = data_path if data_path in ("auto", "socket") else ""
        if target.kind != "unix" and sockets == "auto":
            sockets = ""  # a data channel is for a node on this machine
        try:
            await node._start(name, sockets)
            yield node
        finally:
            await node.aclose()
            with contextlib.suppress(Exception):
                conn.close()
