"""The RPC endpoint: where modules connect (asyncio side).

It binds the unix socket (and the data channel's beside it) or the TCP port, accepts
connections, charges each a descriptor and a module place before anything else (a TCP
or TLS one also a handshake until it proves the token, see :mod:`logos_p2p._auth` and
:mod:`logos_p2p._tls`), and serves each as a Cap'n Proto connection with a session of
its own. Refusals close the connection at once (counted, logged in bulk).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import capnp

from .. import _address, _auth, _kj, _private, _tls
from .._wire import last_line
from ..errors import AuthenticationFailed, Cause, LimitExceeded
from . import _certificate, _resources
from ._config import NodeConfig
from ._resources import Grant, release_all
from ._session import ModuleSession
from ._streams import StreamService

log = logging.getLogger("logos_p2p.node")

# bootstrap(session) -> the capability a new connection starts from
Bootstrap = Callable[[ModuleSession], Any]


class Endpoint:
    def __init__(
        self,
        config: NodeConfig,
        streams: StreamService,
        bootstrap: Bootstrap,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self.config = config
        self._spawn = spawn  # an asyncio task in the node's loops
        self.streams = streams
        self.rm = streams.rm
        self.bootstrap = bootstrap
        self.address = ""
        self.token_file = ""
        self.auth_failures = 0
        self.data_socket: tuple[socket.socket, str] | None = None  # a unix endpoint's data channel listener
        self._token: bytes | None = None  # a TCP or TLS endpoint's secret
        self._tls: ssl.SSLContext | None = None  # a TLS endpoint's
        self._client_certs: set[str] = set()  # fingerprints a TLS endpoint admits instead of the token
        self.tls_fingerprint = ""
        self._listener: socket.socket | None = None
        self._unix_path = ""
        self._accept_task: asyncio.Task[Any] | None = None
        self._connections: dict[int, tuple[Any, Any]] = {}

    def bind(self) -> None:
        address = _address.parse(self.config.rpc) if self.config.rpc else _address.default_address()
        if address.kind == "unix":
            sock = bind_unix(Path(address.path))
            self.address = str(address)
            data_path = address.path + ".data"
            self.data_socket = (bind_unix(Path(data_path), socket.SOCK_SEQPACKET), data_path)
            self._unix_path = address.path
        else:
            token_path = self.config.token_file or _auth.default_token_file()
            prepare_dir(token_path.parent)
            self._token = _auth.node_token(token_path)
            self.token_file = str(token_path)
            if address.kind == "tls":
                self._bind_tls()
            sock = socket.create_server((address.host, address.port), backlog=128, reuse_port=False)
            host, port = sock.getsockname()[:2]
            self.address = str(_address.Address(address.kind, host=host, port=port))
            if address.kind == "tcp":
                log.warning(
                    "the RPC endpoint %s is not encrypted: anyone on the path can read and change what "
                    "modules send and receive; use tls:HOST:PORT for modules on other machines",
                    self.address,
                )
        sock.setblocking(False)
        self._listener = sock

    def _bind_tls(self) -> None:
        config = self.config
        if config.tls_cert is not None:
            cert, key = config.tls_cert, config.tls_key or config.tls_cert
        else:
            state = config.identity.parent if config.identity is not None else _address.default_socket_dir()
            prepare_dir(state)
            cert, key = _certificate.self_signed(state)
        self._tls, self._client_certs = _tls.server_context(cert, key, config.tls_client_certs)
        self.tls_fingerprint = _tls.file_fingerprint(cert)

    def start(self) -> None:
        assert self._listener is not None
        self._accept_task = self._spawn(self._accept_loop(self._listener))

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        rm = self.rm
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as exc:
                if self.streams.shutting_down:
                    return
                rm.refused(rm.system, _resources.FDS, f"for an RPC connection: {exc}")
                await asyncio.sleep(0.1)
                continue
            grants: list[Grant] = []
            try:
                grants.append(rm.grant(_resources.FDS))
                grants.append(rm.grant(_resources.MODULES))
                if self._token is not None:
                    grants.append(rm.grant(_resources.HANDSHAKES, rm.source(str(peer[0]))))
            except LimitExceeded:
                release_all(grants)
                with contextlib.suppress(OSError):
                    conn.close()
                continue
            if self._token is None:
                self._spawn(self._serve_connection(conn, _peer_label(conn, peer), grants))
            else:
                self._spawn(self._authenticate(conn, _peer_label(conn, peer), self._token, grants))

    async def _authenticate(self, conn: socket.socket, label: str, token: bytes, grants: list[Grant]) -> None:
        """A TCP or TLS client proves it knows the token (or, on a TLS endpoint that asks for
        one, shows an admitted certificate) before it reaches any capability; the whole
        handshake has AUTH_TIMEOUT."""
        conn.setblocking(False)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(_auth.AUTH_TIMEOUT):
                if self._tls is None:
                    await _auth.authenticate_client(_auth.SocketWire(conn), token)
                    stream = None
                else:
                    stream, who = await self._tls_session(conn, token)
                    if who:
                        label += f" cert {who}"
        except (AuthenticationFailed, OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self.auth_failures += 1
            reason = "no answer in time" if isinstance(exc, TimeoutError) else last_line(exc)
            self.rm.refused(grants[-1].scopes[-1], "auth", f"from {label}: {reason}")
            release_all(grants)
            with contextlib.suppress(OSError):
                conn.close()
            return
        grants.pop().release()  # no longer a handshake: a module
        await self._serve_connection(conn, label, grants, stream)

    async def _tls_session(self, conn: socket.socket, token: bytes) -> tuple[Any, str]:
        """TLS on an accepted connection, the exchange inside it, then Cap'n Proto's stream
        on it; and the fingerprint of the client's certificate, if one is asked for."""
        loop = asyncio.get_running_loop()
        transport, wire = await loop.connect_accepted_socket(_auth.TransportWire, conn, ssl=self._tls)
        try:
            who = _tls.check_client(transport.get_extra_info("ssl_object"), self._client_certs)
            await _auth.authenticate_client(wire, None if self._client_certs else token)
            return _kj.stream_on(transport), who
        except BaseException:
            transport.abort()
            raise

    async def _serve_connection(self, conn: socket.socket, label: str, grants: list[Grant], stream: Any = None) -> None:
        """Serve one authenticated connection: ``stream`` is its capnp stream, if the
        handshake made one (TLS)."""
        session = self.streams.new_session(label)
        log.info("module %s connected (%s)", session.id, label)
        session.teardown_hooks.append(lambda cause: self._closed_elsewhere(session, cause))
        server = None
        try:
            if stream is None:
                stream = await capnp.AsyncIoStream.create_connection(sock=conn)
            server = capnp.TwoPartyServer(
                stream,
                bootstrap=self.bootstrap(session),
                traversal_limit_in_words=self.config.rpc_traversal_limit_words,
            )
            self._connections[session.id] = (server, stream)
            await server.on_disconnect()
        except Exception as exc:
            if not self.streams.shutting_down:
                log.info("module %s connection ended: %s", session.id, last_line(exc))
        finally:
            log.info("module %s disconnected", session.id)
            self._connections.pop(session.id, None)
            self.streams.end_session(session, Cause.MODULE_GONE, "the module disconnected")
            self.streams.forget_session(session)
            _close_quietly(server, stream)
            with contextlib.suppress(OSError):
                conn.close()
            release_all(grants)

    def _closed_elsewhere(self, session: ModuleSession, cause: Cause) -> None:
        """The session ended while its connection is up (its data channel closed): close it.
        At shutdown the connection stays for the last answers (:meth:`close_connections`)."""
        conn = self._connections.get(session.id)
        if conn is None or cause is Cause.NODE_SHUTDOWN:
            return

        async def close() -> None:
            _close_quietly(*conn)

        self._spawn(close())

    async def close_listener(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
        if self._listener is not None:
            self._listener.close()
        if self.data_socket is not None:
            self.data_socket[0].close()
        for path in (self._unix_path, self.data_socket[1] if self.data_socket else ""):
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    async def close_connections(self) -> None:
        for server, stream in list(self._connections.values()):
            _close_quietly(server, stream)


def _close_quietly(*parts: Any) -> None:
    for part in parts:
        if part is not None:
            with contextlib.suppress(Exception):
                part.close()


def _peer_label(conn: socket.socket, peer: Any) -> str:
    if conn.family == socket.AF_UNIX:
        try:
            pid, uid = _private.peer_credentials(conn)
            return f"pid {pid} uid {uid}"
        except OSError:
            return "unix"
    return f"{peer[0]}:{peer[1]}"


def bind_unix(path: Path, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A listening unix socket, mode 0600, in a directory no one else can tamper with.

    Its directory is checked as :func:`prepare_dir` says. A socket already there is taken over only if it is this
    user's and nobody answers on it (``ECONNREFUSED``, within a second).
    """
    prepare_dir(path.parent)
    if os.path.lexists(path):
        info = path.lstat()
        if not stat.S_ISSOCK(info.st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        if info.st_uid != os.getuid():
            raise PermissionError(f"{path} belongs to uid {info.st_uid}: refused (another user's node, or a trap)")
        _take_over_stale(path, kind)
    sock = socket.socket(socket.AF_UNIX, kind)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def prepare_dir(path: Path) -> None:
    """A directory the node keeps a socket, its token or its TLS key in: the default one
    must be this user's alone (made 0700 if missing); another must be a real directory
    (made 0700 if missing) of this user's or root's, and sticky if others may write in it."""
    if path == _address.default_socket_dir():
        _private.ensure_dir(path)
        return
    if not os.path.lexists(path):
        path.mkdir(mode=0o700, parents=True)
    _check_shared_dir(path)


def _check_shared_dir(path: Path) -> None:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"{path} is a symlink or not a directory: refused")
    if info.st_uid not in (os.getuid(), 0):
        raise PermissionError(f"{path} belongs to uid {info.st_uid}: refused")
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise PermissionError(f"others may replace files in {path} (mode {stat.S_IMODE(info.st_mode):o}): refused")


def _take_over_stale(path: Path, kind: int) -> None:
    probe = socket.socket(socket.AF_UNIX, kind)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()  # stale: nobody listens
        return
    except OSError as exc:
        raise OSError(f"{path} is in use or unreachable ({exc}): not taken over") from None
    finally:
        probe.close()
    raise OSError(f"another node is listening on {path}")
