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

Because ``N`` is new on every connection, bytes recorded from one connection
prove nothing on another (no replay); step 3 tells the client it reached a
node that knows the token. The token authenticates, it does not encrypt: on
an untrusted network, carry the TCP endpoint inside WireGuard, SSH or TLS.

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

from ._address import default_socket_dir, owner_only
from .errors import AuthenticationFailed, InvalidArgument

MAGIC = b"LP2PAUTH"
VERSION = 1
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


# -- the two ends (asyncio, on a connected non-blocking socket) --------------------------------


async def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while len(buf) < size:
        chunk = await loop.sock_recv(sock, size - len(buf))
        if not chunk:
            raise ConnectionError("the connection closed during authentication")
        buf += chunk
    return bytes(buf)


async def authenticate_client(sock: socket.socket, token: bytes) -> None:
    """The node's side: return once the client proved it knows ``token``.

    Raises ``AuthenticationFailed`` (wrong proof, or not this protocol),
    ``ConnectionError`` or ``TimeoutError`` (silent client); the caller closes.
    """
    loop = asyncio.get_running_loop()
    node_nonce = secrets.token_bytes(NONCE)
    async with asyncio.timeout(AUTH_TIMEOUT):
        await loop.sock_sendall(sock, MAGIC + bytes([VERSION]) + node_nonce)
        answer = await _recv_exactly(sock, 2 * NONCE)
    client_nonce, proof = answer[:NONCE], answer[NONCE:]
    if not hmac.compare_digest(proof, client_proof(token, node_nonce, client_nonce)):
        raise AuthenticationFailed("wrong token proof")
    await loop.sock_sendall(sock, node_proof(token, node_nonce, client_nonce))


async def authenticate_to_node(sock: socket.socket, token: bytes | None, timeout: float = AUTH_TIMEOUT) -> None:
    """The client's side: prove ``token`` to the node and check its proof back."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            hello = await _recv_exactly(sock, HELLO_SIZE)
            if hello[: len(MAGIC)] != MAGIC or hello[len(MAGIC)] != VERSION:
                raise AuthenticationFailed("the endpoint does not speak logos-p2p token authentication")
            if token is None:
                raise AuthenticationFailed(
                    f"this node's TCP endpoint needs its token: pass token=..., or set ${TOKEN_ENV} "
                    f"or ${TOKEN_FILE_ENV}"
                )
            node_nonce = hello[len(MAGIC) + 1 :]
            client_nonce = secrets.token_bytes(NONCE)
            await loop.sock_sendall(sock, client_nonce + client_proof(token, node_nonce, client_nonce))
            answer = await _recv_exactly(sock, NONCE)
    except (ConnectionError, OSError) as exc:
        raise AuthenticationFailed(f"the node refused this client's token ({exc})") from None
    except TimeoutError:
        raise AuthenticationFailed("the node did not complete authentication in time") from None
    if not hmac.compare_digest(answer, node_proof(token, node_nonce, client_nonce)):
        raise AuthenticationFailed("the node's proof is wrong: it does not know this token")


# -- tokens on disk --------------------------------------------------------------------------


def default_token_file() -> Path:
    return default_socket_dir() / TOKEN_FILE_NAME


def node_token(path: Path) -> bytes:
    """The node's token from ``path``; a new random one is written (0600) if it is missing.

    An existing file readable by group or others is refused: the token would not be secret.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    if not owner_only(path):
        raise PermissionError(f"{path} must be owned by uid {os.getuid()} and readable by it alone (chmod 600)")
    return _token_bytes(path.read_text())


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
