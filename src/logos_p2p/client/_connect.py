"""Connecting to a node: its address, the checks of who answers (the process behind a unix
socket; TLS and the token exchange), the RPC connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import capnp

from .. import _address, _auth, _kj, _private, _schema, _tls
from .._kj import kj_loop
from ..errors import AuthenticationFailed, InvalidArgument, NodeUnavailable, Timeout
from ._node import RPC_TRAVERSAL_LIMIT_WORDS, Node

schema = _schema.load()


@dataclass(frozen=True)
class _Trust:
    """How a client checks the node: its token; on tls:, the pinned certificate or a CA,
    and its own certificate for a node that admits clients by theirs; on unix:, whose
    process may listen."""

    token: bytes | None
    pin: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    uids: frozenset[int] = frozenset()


async def _tcp_socket(host: str, port: int) -> socket.socket:
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
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise last or OSError(f"no address for {host}")


async def _open(target: _address.Address, trust: _Trust, timeout: float) -> Any:
    """A connection to the node that passed every check, as a capnp stream."""
    if target.kind == "unix":
        return await _open_unix(target.path, trust)
    # a client that could not verify the node does not connect at all
    ctx = _tls.client_context(trust.pin, trust.ca, trust.cert, trust.key) if target.kind == "tls" else None
    sock = await _tcp_socket(target.host, target.port)
    try:
        if ctx is None:
            # no hello at all in most of the time: say so before the caller's timeout does
            await _auth.authenticate_to_node(_auth.SocketWire(sock), trust.token, timeout * 0.8)
            return await capnp.AsyncIoStream.create_connection(sock=sock)
        return await _open_tls(sock, ctx, target.host, trust, timeout)
    except BaseException:
        sock.close()
        raise


async def _open_unix(path: str, trust: _Trust) -> Any:
    """A unix connection, once the process behind it is one this client trusts."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
        _private.check_peer(sock, path, trust.uids)
        return await capnp.AsyncIoStream.create_unix_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


async def _open_tls(sock: socket.socket, ctx: ssl.SSLContext, host: str, trust: _Trust, timeout: float) -> Any:
    """TLS 1.3 on a TCP connection, the node's certificate checked, the token exchange
    inside it, then Cap'n Proto's stream on the same connection."""
    loop = asyncio.get_running_loop()
    try:
        transport, wire = await loop.create_connection(
            _auth.TransportWire,
            sock=sock,
            ssl=ctx,
            server_hostname=host if trust.pin is None else "",  # pinned: the fingerprint is the check
            ssl_handshake_timeout=timeout,
        )
    except ssl.SSLCertVerificationError as exc:
        raise AuthenticationFailed(f"the node's certificate did not verify: {exc.verify_message}") from None
    except ssl.SSLError as exc:
        raise AuthenticationFailed(f"TLS with the node failed ({exc.reason or exc}): is it a tls: endpoint?") from None
    try:
        _tls.check_node(transport.get_extra_info("ssl_object"), trust.pin)
        await _auth.authenticate_to_node(wire, trust.token, timeout, in_tls=True)
        return _kj.stream_on(transport)
    except BaseException:
        transport.abort()
        raise


@contextlib.asynccontextmanager
async def connect(
    address: str | None = None,
    *,
    name: str | None = None,
    timeout: float = 10.0,
    data_path: str = "auto",
    token: str | bytes | None = None,
    fingerprint: str | None = None,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    node_uid: int | None = None,
) -> AsyncIterator[Node]:
    """Connect to a node's RPC endpoint: ``unix:PATH``, ``tls:HOST:PORT`` or ``tcp:HOST:PORT``.

    Without ``address``: ``$LOGOS_P2P_RPC``, else the node's default socket.
    ``name`` labels this module in the node's status. Works on any asyncio
    loop, including trio-asyncio's.

    ``data_path`` says how stream bytes move: ``"socket"`` -- each stream a
    unix socket of its own, passed over a data channel beside the RPC
    connection (local nodes only; the fastest); ``"push"`` -- the node pushes
    inbound bytes to a capability of this module; ``"pull"`` -- this module
    asks with ``Stream.read``. ``"auto"`` (the default) takes ``"socket"``
    when the node offers it, else ``"push"``.

    A TLS or TCP endpoint needs the node's token (see ``logos_p2p._auth``):
    ``token``, else ``$LOGOS_P2P_TOKEN``, else the file ``$LOGOS_P2P_TOKEN_FILE``,
    else the default token file of a node on this machine. A TLS endpoint also
    needs the node's certificate: pinned, ``fingerprint="sha256:..."`` (else
    ``$LOGOS_P2P_FINGERPRINT``; ``logos-p2p info`` on the node prints it), or
    checked with its hostname against ``tls_ca`` (else ``$LOGOS_P2P_TLS_CA``).
    ``tls_cert``/``tls_key``: this client's certificate, for a node that admits
    clients by certificate. Over ``tcp:`` everything after the token exchange
    travels in the clear: use ``tls:`` across any network you do not control.

    On a unix socket the process behind it must run as this user or root (or
    ``node_uid``, else ``$LOGOS_P2P_NODE_UID``). Any refusal is
    :class:`AuthenticationFailed`, saying why.
    """
    if data_path not in ("auto", "socket", "push", "pull"):
        raise InvalidArgument("data_path must be 'auto', 'socket', 'push' or 'pull'")
    target = _address.parse(address) if address else _address.default_address()
    if target.kind != "unix" and target.port == 0:
        raise InvalidArgument("connect needs a port other than 0")
    trust = _Trust(
        token=_auth.client_token(token) if target.kind != "unix" else None,
        pin=_tls.client_pin(fingerprint) if target.kind == "tls" else None,
        ca=_tls.client_ca(tls_ca) if target.kind == "tls" else None,
        cert=Path(tls_cert) if tls_cert is not None else None,
        key=Path(tls_key) if tls_key is not None else None,
        uids=frozenset(_private.trusted_uids(node_uid)),
    )
    async with kj_loop():
        try:
            conn = await asyncio.wait_for(_open(target, trust, timeout), timeout)
        except TimeoutError:
            raise Timeout(f"connecting to {target} took longer than {timeout:g}s") from None
        except OSError as exc:
            raise NodeUnavailable(f"no node at {target}: {exc}") from exc
        client = capnp.TwoPartyClient(conn, traversal_limit_in_words=RPC_TRAVERSAL_LIMIT_WORDS)
        cap = client.bootstrap().cast_as(schema.Node)
        node = Node(client, cap, str(target), push=data_path != "pull", uids=trust.uids)
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
