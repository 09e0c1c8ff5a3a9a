"""Token authentication of TCP RPC connections, before any Cap'n Proto byte.

A unix endpoint is guarded by the file system (a 0600 socket in a 0700
directory). A TCP endpoint may be reached by anyone on the network, so before
the node serves its bootstrap ``Node`` capability both ends prove they know
the operator's secret token, without sending it, on fresh nonces:

1. node -> client, 41 bytes: ``b"LP2PAUTH"``, version ``0x01``, 32-byte node nonce ``N``;
2. client -> node, 64 bytes: 32-byte client nonce ``C``,
   ``HMAC-SHA256(token, b"logos-p2p client" + N + C)``;
3. node -> client, 32 bytes: ``HMAC-SHA256(token, b"logos-p2p node" + N + C)``;
   then Cap'n Proto RPC starts. On a wrong proof the node closes the
   connection instead; a client that does not answer within
   :data:`AUTH_TIMEOUT` seconds is cut.

Inside TLS (``tls:`` endpoints, see :mod:`logos_p2p._tls`) the same exchange runs on
the TLS connection; a node that admits clients by certificate sends version ``0x02``
in step 1 instead and nothing more: the certificate was the proof. A client accepts
version 2 only inside TLS.

Because ``N`` is new on every connection, bytes recorded from one connection
prove nothing on another (no replay); step 3 tells the client it reached a
node that knows the token. The token authenticates, it does not encrypt: on
an untrusted network use a ``tls:`` endpoint.

``token`` is the token file's text, stripped, as UTF-8. Plain Python: no
trio, libp2p or capnp here (the client imports it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import socket
from pathlib import Path
from typing import Protocol

from . import _private
from ._address import default_socket_dir
from .errors import AuthenticationFailed, InvalidArgument

MAGIC = b"LP2PAUTH"
VERSION = 1
BY_CERTIFICATE = 2  # the hello of a node that admitted the client by its TLS certificate
NONCE = 32
AUTH_TIMEOUT = 5.0  # seconds a client has to prove itself
TOKEN_ENV = "LOGOS_P2P_TOKEN"
TOKEN_FILE_ENV = "LOGOS_P2P_TOKEN_FILE"
TOKEN_FILE_NAME = "rpc-token"
HELLO_SIZE = len(MAGIC) + 1 + NONCE


def _proof(token: bytes, role: bytes, node_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(token, b"logos-p2p " + role + node_nonce + client_nonce, hashlib.sha256).digest()


def client_proof(token: bytes, node_nonce: bytes, client_nonce: bytes) -> bytes:
    return _proof(token, b"client", node_nonce, client_nonce)


def node_proof(token: bytes, node_nonce: bytes, client_nonce: bytes) -> bytes:
    return _proof(token, b"node", node_nonce, client_nonce)


# -- the two ends (asyncio) ---------------------------------------------------------------------


class Wire(Protocol):
    """What the exchange needs of a connection."""

    async def recv_exactly(self, size: int) -> bytes: ...
    async def send(self, data: bytes) -> None: ...
    def early(self) -> bool:
        """Whether the other end already sent bytes beyond its part of the exchange."""


class SocketWire:
    """A connected non-blocking socket (``tcp:``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def recv_exactly(self, size: int) -> bytes:
        loop = asyncio.get_running_loop()
        buf = bytearray()
        while len(buf) < size:
            chunk = await loop.sock_recv(self.sock, size - len(buf))
            if not chunk:
                raise ConnectionError("the connection closed during authentication")
            buf += chunk
        return bytes(buf)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    def early(self) -> bool:
        return False  # what is in the kernel is Cap'n Proto's (tcp: has no record of it)


class TransportWire(asyncio.Protocol):
    """The protocol of an asyncio transport (``tls:``) while the exchange runs on it;
    then the transport goes to Cap'n Proto (``_kj.stream_on``). ``pending`` is what
    arrived beyond the exchange: a peer that sends before the exchange ended is refused."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = bytearray()
        self._ended: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.pending += data
        self._wake()

    def eof_received(self) -> bool:
        self._ended = ConnectionError("the connection closed during authentication")
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = exc or ConnectionError("the connection closed during authentication")
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def recv_exactly(self, size: int) -> bytes:
        while len(self.pending) < size:
            if self._ended is not None:
                raise ConnectionError(str(self._ended))
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self.pending[:size])
        del self.pending[:size]
        return data

    async def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("the connection closed during authentication")
        self.transport.write(data)  # a few dozen bytes: the transport's buffer takes them

    def early(self) -> bool:
        return bool(self.pending)


async def authenticate_client(wire: Wire, token: bytes | None) -> None:
    """The node's side: return once the client proved it knows ``token`` (None: the
    client's certificate already did, inside TLS: say so, version 2).

    Raises ``AuthenticationFailed`` (wrong proof, or not this protocol) or
    ``ConnectionError``; the caller bounds it (AUTH_TIMEOUT) and closes.
    """
    node_nonce = secrets.token_bytes(NONCE)
    if token is None:
        await wire.send(MAGIC + bytes([BY_CERTIFICATE]) + node_nonce)
        if wire.early():  # sent before it had the hello
            raise AuthenticationFailed("the client sent before the exchange ended")
        return
    await wire.send(MAGIC + bytes([VERSION]) + node_nonce)
    answer = await wire.recv_exactly(2 * NONCE)
    client_nonce, proof = answer[:NONCE], answer[NONCE:]
    if not hmac.compare_digest(proof, client_proof(token, node_nonce, client_nonce)):
        raise AuthenticationFailed("wrong token proof")
    if wire.early():
        raise AuthenticationFailed("the client sent before the exchange ended")
    await wire.send(node_proof(token, node_nonce, client_nonce))


async def authenticate_to_node(
    wire: Wire, token: bytes | None, timeout: float = AUTH_TIMEOUT, *, in_tls: bool = False
) -> None:
    """The client's side: prove ``token`` to the node and check its proof back."""
    hello = b""
    try:
        async with asyncio.timeout(timeout):
            hello = await wire.recv_exactly(HELLO_SIZE)
            if hello[: len(MAGIC)] != MAGIC or hello[len(MAGIC)] not in (VERSION, BY_CERTIFICATE):
                raise AuthenticationFailed("the endpoint does not speak logos-p2p token authentication")
            if hello[len(MAGIC)] == BY_CERTIFICATE:
                if not in_tls:
                    raise AuthenticationFailed("the endpoint skips the token outside TLS: refused")
                if wire.early():
                    raise AuthenticationFailed("the node sent before the exchange ended")
                return  # the node admitted this client by its certificate
            if token is None:
                raise AuthenticationFailed(
                    f"this node's endpoint needs its token: pass token=..., or set ${TOKEN_ENV} or ${TOKEN_FILE_ENV}"
                )
            node_nonce = hello[len(MAGIC) + 1 :]
            client_nonce = secrets.token_bytes(NONCE)
            await wire.send(client_nonce + client_proof(token, node_nonce, client_nonce))
            answer = await wire.recv_exactly(NONCE)
    except TimeoutError:
        raise AuthenticationFailed(
            "the node did not complete authentication in time"
            if hello or in_tls
            else "no logos-p2p hello from the endpoint in time (if the node serves tls:, connect with tls:HOST:PORT)"
        ) from None
    except OSError as exc:  # ConnectionError among them; TimeoutError is one too, so it comes first
        raise AuthenticationFailed(f"the node refused this client's token ({exc})") from None
    if not hmac.compare_digest(answer, node_proof(token, node_nonce, client_nonce)):
        raise AuthenticationFailed("the node's proof is wrong: it does not know this token")
    if wire.early():
        raise AuthenticationFailed("the node sent before the exchange ended")


# -- tokens on disk --------------------------------------------------------------------------


def default_token_file() -> Path:
    return default_socket_dir() / TOKEN_FILE_NAME


def node_token(path: Path) -> bytes:
    """The node's token from ``path``; a new random one is written (0600) if it is missing.

    A file others can read, or a symlink, is refused: the token would not be secret.
    """
    _private.create(path, (secrets.token_hex(32) + "\n").encode())
    return _token_bytes(_private.read(path).decode())


def client_token(token: str | bytes | None) -> bytes | None:
    """The token a client proves: given, else ``$LOGOS_P2P_TOKEN``, ``$LOGOS_P2P_TOKEN_FILE``,
    or this user's default token file (a node on this machine); None if none."""
    if token is not None:
        return _token_bytes(token.decode() if isinstance(token, bytes) else token)
    env = os.environ.get(TOKEN_ENV)
    if env:
        return _token_bytes(env)
    path = os.environ.get(TOKEN_FILE_ENV)
    candidate = Path(path) if path else default_token_file()
    try:
        return _token_bytes(candidate.read_text())
    except FileNotFoundError:
        if path:
            raise InvalidArgument(f"${TOKEN_FILE_ENV} names a missing file: {path}") from None
        return None


def _token_bytes(text: str) -> bytes:
    token = text.strip()
    if len(token) < 16:
        raise InvalidArgument("a token must be at least 16 characters")
    return token.encode()
