"""The node: a py-libp2p host, a Cap'n Proto RPC endpoint, and the bridges between.

:class:`NodeService` runs in trio. It opens the asyncio side first (so that
libp2p's handler tasks can reach it), then the libp2p host, then the RPC
listener. Each RPC connection is a :class:`~._registry.ModuleSession` with its
own bootstrap :class:`~._rpc.NodeImpl`.

Shutdown (:meth:`NodeService.shutdown`) is bounded: tell modules
(``waitShutdown`` returns), fail pending control calls with NodeShutdown,
reset every stream on the wire and to its module, unmount every protocol,
let the replies flush, close the RPC connections, then stop libp2p.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import capnp
import trio
from libp2p.abc import INetStream

from .. import __version__, _address, _auth
from .._requests import validate_open, validate_protocol_ids
from ..errors import (
    AuthenticationFailed,
    Cause,
    InvalidArgument,
    LimitExceeded,
    NodeShutdown,
)
from . import _libp2p, _resources
from ._bridge import Bridge, Limits
from ._channel import ChannelListener, DataChannel, SocketBridge
from ._handoff import Loops, open_loops
from ._registry import ModuleSession, Registration, Registry
from ._resources import (
    Grant,
    ResourceLimits,
    ResourceManager,
    StreamSlot,
    derive_limits,
    descriptor_limit,
    open_descriptors,
)
from ._rpc import NodeImpl, StreamImpl

log = logging.getLogger("logos_p2p.node")
T = TypeVar("T")


@dataclass
class NodeConfig:
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/4001"])
    rpc: str = ""  # "" = the default unix socket
    token_file: Path | None = None  # TCP RPC only; default: <default socket dir>/rpc-token
    identity: Path | None = None
    muxer: str | None = None  # "yamux" or "mplex" first; default: yamux
    accept_timeout: float = 10.0  # Handler.handle must answer within this
    open_timeout: float = 30.0  # openStream default
    dial_timeout: float = 30.0  # connectPeer default
    max_registrations_per_module: int = 1024
    rpc_traversal_limit_words: int = 8 * 1024 * 1024  # 64 MiB per RPC message
    shutdown_grace: float = 1.5  # seconds for the whole graceful part of shutdown
    channel_outbox: int = 256  # stream announcements that may wait for a module reading its data channel
    limits: Limits = field(default_factory=Limits)
    resources: ResourceLimits = field(default_factory=ResourceLimits)


class NodeService:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.registry = Registry(self._mount, self._unmount)
        self.sessions: dict[int, ModuleSession] = {}
        self.resets: Counter[Cause] = Counter()
        self.streams_total = 0
        self.shutting_down = False
        self.shutdown_started = asyncio.Event()
        self.rpc_address = ""
        self.peer_id = ""
        self.addrs: list[str] = []
        self._stop = trio.Event()
        self._guarded: set[asyncio.Task[Any]] = set()
        self._connections: dict[int, tuple[Any, Any]] = {}
        self._listener: socket.socket | None = None
        self._channels: ChannelListener | None = None
        self._accept_task: asyncio.Task[Any] | None = None
        self._offers = 0
        self._token: bytes | None = None  # a TCP endpoint's secret (see _auth)
        self.token_file = ""
        self.auth_failures = 0
        self._identify_dirty = False
        self._identify_pushing = False
        self.loops: Loops
        config.resources.check()
        self.rm = ResourceManager(derive_limits(config.resources, descriptor_limit(), open_descriptors()))

    # -- running ---------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`shutdown`; ``task_status.started(self)`` once ready."""
        _resources.tune_allocator()
        key_pair = _libp2p.load_or_create_identity(self.config.identity)
        self.host = _libp2p.build_host(key_pair, self.config.listen, self.config.muxer, self.rm.limits)
        self.peer_id = str(self.host.get_id())
        async with open_loops() as loops:
            self.loops = loops
            reader_bound = self.limits.rx_buffer + self.limits.push_window  # a bridge's inbound bytes
            _libp2p.install_gate(self.host, _libp2p.Gate(self.rm, loops.spawn_trio, reader_bound))
            log.info("limits: %s", _limits_line(self.rm.limits))
            loops.spawn_trio(self._flush_refusal_logs)
            async with _libp2p.run_host(self.host, self.config.listen):
                self.addrs = _libp2p.advertised_addrs(self.host)
                self.rpc_address = await loops.to_aio(self._start_rpc)
                log.info("node %s ready; rpc %s; libp2p %s", self.peer_id, self.rpc_address, self.addrs)
                if self.limits.idle_timeout > 0:
                    loops.spawn_aio(self._expire_idle())
                task_status.started(self)
                await self._stop.wait()
                with trio.move_on_after(0.3):
                    await self.host.close()

    def ready_line(self) -> dict[str, Any]:
        line = {"peer_id": self.peer_id, "addrs": self.addrs, "rpc": self.rpc_address}
        if self.token_file:
            line["token_file"] = self.token_file
        return line

    async def shutdown(self) -> None:
        """Graceful, bounded shutdown (trio). Idempotent."""
        if self.shutting_down:
            await self._stop.wait()
            return
        self.shutting_down = True
        log.info("shutting down")
        with trio.move_on_after(self.config.shutdown_grace) as grace:
            await self.loops.to_aio(self._close_rpc_listener)
            self.shutdown_started.set()
            for task in list(self._guarded):
                task.cancel()
            for session in list(self.sessions.values()):
                session.teardown(self.registry, Cause.NODE_SHUTDOWN, "the node is shutting down")
            # Wait for the stream tasks to end and the failed calls to answer. Their
            # counters live in many objects; a short poll, bounded by the grace above.
            while self.tasks:  # noqa: ASYNC110 - counts the guarded calls too
                await trio.sleep(0.01)
            await trio.sleep(0.05)  # a few KJ turns to write the last replies
            await self.loops.to_aio(self._close_connections)
        if grace.cancelled_caught:
            log.warning(
                "shutdown: %gs grace over with %d tasks still running (streams %s, calls %s)",
                self.config.shutdown_grace,
                self.tasks,
                [b for s in self.sessions.values() for b in s.bridges.values() if b.tasks],
                [t.get_coro() for t in self._guarded],
            )
        self._stop.set()

    async def _expire_idle(self) -> None:
        """Reset streams that moved no byte either way for ``idle_timeout`` (checked
        four times per timeout, at most every 5 s).

        It runs on the asyncio side: nothing here needs trio. (As a trio task it
        seemed to make the node stop answering now and then; the real cause was
        trio-asyncio's queue re-entered by garbage collection, see _kj._GcSafeQueue.)
        """
        timeout = self.limits.idle_timeout
        period = min(max(timeout / 4, 0.02), 5.0)
        while not self.shutting_down:
            await asyncio.sleep(period)
            cutoff = time.monotonic() - timeout
            for session in list(self.sessions.values()):
                for bridge in list(session.bridges.values()):
                    if bridge.last_active < cutoff and not bridge.state.is_reset:
                        bridge.reset(Cause.TIMEOUT, f"no data either way for {timeout:g} s (idle timeout)")

    async def _flush_refusal_logs(self) -> None:
        """Log refusals the last flood left unlogged (one line per kind per interval)."""
        while not self.shutting_down:
            await trio.sleep(_resources.LOG_INTERVAL)
            self.rm.flush_logs()

    # -- accounting --------------------------------------------------------------------------

    @property
    def tasks(self) -> int:
        """Tasks serving streams and calls right now (bridge pumps, writers, pushers, offers,
        opens and dials in progress)."""
        streams = sum(b.tasks for s in self.sessions.values() for b in s.bridges.values())
        opens = sum(s.channel.opens for s in self.sessions.values() if s.channel is not None)
        return self._offers + len(self._guarded) + streams + opens

    def _count_reset(self, cause: Cause) -> None:
        self.resets[cause] += 1

    def info(self) -> dict[str, Any]:
        return {"peerId": self.peer_id, "addrs": self.addrs, "version": __version__}

    def status(self) -> dict[str, Any]:
        sessions = list(self.sessions.values())
        return {
            "peerId": self.peer_id,
            "modules": [s.status() for s in sessions],
            "streams": sum(len(s.bridges) for s in sessions),
            "registrations": sum(len(s.registrations) for s in sessions),
            "resets": [{"cause": c.value, "count": n} for c, n in sorted(self.resets.items(), key=_by_value)],
            "streamsTotal": self.streams_total,
            "tasks": self.tasks,
            "authFailures": self.auth_failures,
            **self.rm.status(),
        }

    def peers(self) -> list[dict[str, Any]]:
        return [{"peerId": p, "addrs": a} for p, a in _libp2p.connected_peers(self.host)]

    # -- control operations (asyncio side) ------------------------------------------------------

    async def guard(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a control operation; at shutdown it fails with NodeShutdown."""
        if self.shutting_down:
            coro.close()
            raise NodeShutdown()
        task = asyncio.current_task()
        assert task is not None
        self._guarded.add(task)
        try:
            return await coro
        except asyncio.CancelledError:
            if self.shutting_down:
                task.uncancel()  # this cancellation is handled: it becomes NodeShutdown
                raise NodeShutdown() from None
            raise
        finally:
            self._guarded.discard(task)

    def begin(self, session: ModuleSession, resource: str) -> Grant:
        """One more call of ``resource`` (opens, dials, polls) in progress for ``session``."""
        return self.rm.grant(resource, self.rm.module(session.id))

    def begin_open(self, session: ModuleSession) -> Grant:
        return self.begin(session, _resources.OPENS)

    async def connect_peer(self, session: ModuleSession, addr: str, timeout: float) -> dict[str, Any]:
        grant = self.begin(session, _resources.DIALS)
        try:
            info = await self.loops.to_trio(partial(_libp2p.connect, self.host, addr, timeout))
        finally:
            grant.release()
        peer = str(info.peer_id)
        addrs = dict(_libp2p.connected_peers(self.host)).get(peer, [])
        return {"peerId": peer, "addrs": addrs}

    async def disconnect_peer(self, peer_id: str) -> None:
        await self.loops.to_trio(partial(_libp2p.disconnect, self.host, peer_id))

    def register(
        self,
        session: ModuleSession,
        protocols: list[str],
        handler: Any,
        *,
        share: bool,
        accept_timeout: float,
        channel: bool = False,
    ) -> Registration:
        if self.shutting_down:
            raise NodeShutdown()
        ids = validate_protocol_ids(protocols)
        if channel and session.channel is None:
            raise InvalidArgument("open the data channel before registering with channel=true")
        if len(session.registrations) >= self.config.max_registrations_per_module:
            raise LimitExceeded(f"a module may hold {self.config.max_registrations_per_module} registrations")
        reg = Registration(session, ids, handler, share, accept_timeout, channel)
        self.registry.add(reg)
        log.info("module %s registered %s", session.id, list(ids))
        return reg

    def unregister(self, reg: Registration) -> None:
        if reg.active:
            self.registry.remove(reg)
            log.info("module %s unregistered %s", reg.session.id, list(reg.protocols))

    def _mount(self, proto: str) -> None:
        self.host.set_stream_handler(proto, self._on_inbound)  # type: ignore[arg-type]
        self._protocols_changed()

    def _unmount(self, proto: str) -> None:
        self.host.remove_stream_handler(proto)  # type: ignore[arg-type]
        self._protocols_changed()

    def _protocols_changed(self) -> None:
        """Push identify to connected peers; a burst of changes costs one push (plus one)."""
        self._identify_dirty = True
        if not self._identify_pushing and not self.shutting_down:
            self._identify_pushing = True
            self.loops.spawn_trio(self._push_identify)

    async def _push_identify(self) -> None:
        try:
            while self._identify_dirty and not self.shutting_down:
                self._identify_dirty = False
                with trio.move_on_after(5):
                    await _libp2p.push_identify(self.host)
        finally:
            self._identify_pushing = False

    async def open_stream(
        self, session: ModuleSession, peer: str, protocols: list[str], addrs: list[str], timeout: float
    ) -> Bridge:
        ids = self.check_open(peer, protocols, addrs)
        grant = self.begin_open(session)
        try:
            slot = self.outbound_slot(session, peer)
        except BaseException:
            grant.release()
            raise

        async def opener() -> Bridge:
            try:
                net_stream = await _libp2p.open_stream(self.host, peer, ids, addrs, timeout)
            except BaseException:
                slot.release()
                raise
            bridge = await self.bind_outbound(slot, net_stream, session)
            bridge.start()
            return bridge

        try:
            return await self.loops.to_trio(
                opener, orphan=lambda b: b.abandon(Cause.CAPABILITY_DROPPED, "the module gave up opening the stream")
            )
        finally:
            grant.release()

    def outbound_slot(self, session: ModuleSession, peer: str) -> StreamSlot:
        """A place for a stream ``session`` opens to ``peer`` (before dialing: LimitExceeded)."""
        _libp2p.peer_id_of(peer)  # InvalidArgument first: a bad id is no reason to count a refusal
        return self.rm.stream("outbound", peer, self.rm.module(session.id))

    async def bind_outbound(
        self, slot: StreamSlot, net_stream: INetStream, session: ModuleSession, channel: DataChannel | None = None
    ) -> Bridge:
        """An opened stream joins its protocol's scope and its module's books (or is reset)."""
        try:
            slot.bind(protocol=self.rm.protocol(str(net_stream.get_protocol() or "")))
        except LimitExceeded:
            slot.release()
            await _libp2p.reset(net_stream)
            raise
        if channel is not None:
            bridge: Bridge = SocketBridge(net_stream, "outbound", session, self.loops, self.limits, slot, channel)
        else:
            bridge = Bridge(net_stream, "outbound", session, self.loops, self.limits, slot)
        await self.adopt(session, bridge)
        return bridge

    @staticmethod
    def check_open(peer: str, protocols: list[str], addrs: list[str]) -> tuple[str, ...]:
        """The protocol ids of an open request, checked along with its peer id and addresses."""
        return validate_open(peer, protocols, addrs)

    async def adopt(self, session: ModuleSession, bridge: Bridge) -> None:
        """Put a new stream on its module's books, or reset it and raise LimitExceeded."""
        try:
            session.adopt(bridge)
        except LimitExceeded:
            bridge.slot.release()
            await _libp2p.reset(bridge.net)
            raise
        self.streams_total += 1

    async def adopt_inbound(self, session: ModuleSession, bridge: Bridge) -> bool:
        """:meth:`adopt` for a stream a peer opened: a refusal is counted."""
        try:
            await self.adopt(session, bridge)
        except LimitExceeded:
            self._count_reset(Cause.LIMIT_EXCEEDED)
            return False
        return True

    # -- inbound streams ------------------------------------------------------------------------

    async def _on_inbound(self, net_stream: INetStream) -> None:
        """libp2p calls this (in trio) for every stream that negotiated a mounted id.

        The gate admitted the stream before negotiation (its StreamSlot); here it joins
        its protocol's and its module's scopes, or is reset.
        """
        proto = str(net_stream.get_protocol())
        reg = None if self.shutting_down else self.registry.pick(proto)
        slot = _libp2p.stream_slot(net_stream)
        channel = reg.session.channel if reg is not None and reg.channel else None
        if reg is None or slot is None or (reg.channel and (channel is None or channel.closed)):
            await _libp2p.reset(net_stream)
            return
        slot.negotiated()
        try:
            slot.bind(protocol=self.rm.protocol(proto), module=self.rm.module(reg.session.id))
        except LimitExceeded:
            self._count_reset(Cause.LIMIT_EXCEEDED)
            await _libp2p.reset(net_stream)
            return
        if channel is not None:
            await channel.deliver(reg, net_stream, slot)
            return
        bridge = Bridge(net_stream, "inbound", reg.session, self.loops, self.limits, slot)
        if not await self.adopt_inbound(reg.session, bridge):
            return
        bridge.start()
        self._offers += 1
        self.loops.spawn_aio(self._offer(reg, bridge))

    async def _offer(self, reg: Registration, bridge: Bridge) -> None:
        """Hand an inbound stream to the module's Handler (asyncio)."""
        try:
            handler = reg.handler
            if handler is None:
                bridge.abandon(Cause.HANDLER_FAILED, "the protocol was unregistered", linger=False)
                return
            request = handler.handle(stream=StreamImpl(bridge), info=bridge.info.to_capnp())
            try:
                response = await asyncio.wait_for(request, reg.accept_timeout)
            except TimeoutError:
                bridge.abandon(Cause.TIMEOUT, "the module did not accept the stream in time", linger=False)
                return
            except Exception as exc:
                bridge.abandon(Cause.HANDLER_FAILED, f"the module's handler failed: {_first_line(exc)}", linger=False)
                return
            if response._has("sink"):
                bridge.attach_sink(response.sink)
        finally:
            self._offers -= 1

    # -- the RPC endpoint (asyncio side) ------------------------------------------------------------

    async def _start_rpc(self) -> str:
        address = _address.parse(self.config.rpc) if self.config.rpc else _address.default_address()
        if address.kind == "unix":
            sock = _bind_unix(Path(address.path))
            where = str(address)
            data_path = address.path + ".data"
            data_sock = _bind_unix(Path(data_path), socket.SOCK_SEQPACKET)
            self._channels = ChannelListener(self, data_sock, data_path)
            channels = self._channels
            self.loops.spawn_trio(lambda: channels.serve(self.loops.spawn_trio))
        else:
            token_path = self.config.token_file or _auth.default_token_file()
            if not token_path.parent.exists():
                token_path.parent.mkdir(mode=0o700, parents=True)
            self._token = _auth.node_token(token_path)
            self.token_file = str(token_path)
            sock = socket.create_server((address.host, address.port), backlog=128, reuse_port=False)
            host, port = sock.getsockname()[:2]
            where = str(_address.Address("tcp", host=host, port=port))
        sock.setblocking(False)
        self._listener = sock
        self._unix_path = address.path if address.kind == "unix" else ""
        self._accept_task = self.loops.spawn_aio(self._accept_loop(sock))
        return where

    def offer_channel(self, session: ModuleSession) -> tuple[str, bytes]:
        """A data channel token for ``session`` (``Node.dataChannel``)."""
        if self._channels is None:
            raise InvalidArgument("this node offers data channels only on a unix RPC endpoint")
        if self.shutting_down:
            raise NodeShutdown()
        return self._channels.path, self._channels.offer(session)

    def end_session(self, session: ModuleSession) -> None:
        """The module's data channel closed: the module is gone (or broken) as a whole."""
        if session.closed:
            return
        session.teardown(self.registry, Cause.MODULE_GONE, "the module's data channel closed")
        conn = self._connections.get(session.id)
        if conn is not None:

            async def close() -> None:
                for part in conn:
                    with contextlib.suppress(Exception):
                        part.close()

            self.loops.spawn_aio(close())

    async def _accept_loop(self, sock: socket.socket) -> None:
        """Accept module connections. Each is charged a descriptor and a module place before
        anything else; a TCP one also a handshake in its source address's scope until it
        proves the token. Refusals close the connection at once (counted, logged in bulk)."""
        loop = asyncio.get_running_loop()
        rm = self.rm
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as exc:
                if self.shutting_down:
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
                _release(grants)
                with contextlib.suppress(OSError):
                    conn.close()
                continue
            if self._token is None:
                self.loops.spawn_aio(self._serve_connection(conn, _peer_label(conn, peer), grants))
            else:
                self.loops.spawn_aio(self._authenticate(conn, _peer_label(conn, peer), self._token, grants))

    async def _authenticate(self, conn: socket.socket, label: str, token: bytes, grants: list[Grant]) -> None:
        """A TCP client proves it knows the token before it reaches any capability."""
        conn.setblocking(False)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await _auth.authenticate_client(conn, token)
        except (AuthenticationFailed, OSError, TimeoutError) as exc:
            self.auth_failures += 1
            reason = "no answer in time" if isinstance(exc, TimeoutError) else _first_line(exc)
            self.rm.refused(grants[-1].scopes[-1], "auth", f"from {label}: {reason}")
            _release(grants)
            with contextlib.suppress(OSError):
                conn.close()
            return
        grants.pop().release()  # no longer a handshake: a module
        await self._serve_connection(conn, label, grants)

    async def _serve_connection(self, conn: socket.socket, label: str, grants: list[Grant]) -> None:
        session = ModuleSession(label, self._count_reset)
        self.sessions[session.id] = session
        log.info("module %s connected (%s)", session.id, label)
        server = stream = None
        try:
            stream = await capnp.AsyncIoStream.create_connection(sock=conn)
            server = capnp.TwoPartyServer(
                stream,
                bootstrap=NodeImpl(self, session),
                traversal_limit_in_words=self.config.rpc_traversal_limit_words,
            )
            self._connections[session.id] = (server, stream)
            await server.on_disconnect()
        except Exception as exc:
            if not self.shutting_down:
                log.info("module %s connection ended: %s", session.id, _first_line(exc))
        finally:
            log.info("module %s disconnected", session.id)
            if self._channels is not None:
                self._channels.forget(session)
            session.teardown(self.registry, Cause.MODULE_GONE, "the module disconnected")
            self.sessions.pop(session.id, None)
            self._connections.pop(session.id, None)
            if server is not None:
                with contextlib.suppress(Exception):
                    server.close()
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
            with contextlib.suppress(OSError):
                conn.close()
            _release(grants)

    async def _close_rpc_listener(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
        if self._listener is not None:
            self._listener.close()
        if self._channels is not None:
            self._channels.close()
        for path in (self._unix_path, self._channels.path if self._channels else ""):
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    async def _close_connections(self) -> None:
        for session in list(self.sessions.values()):
            if session.channel is not None:
                session.channel.close()
        for server, stream in list(self._connections.values()):
            with contextlib.suppress(Exception):
                server.close()
            with contextlib.suppress(Exception):
                stream.close()


def _release(grants: list[Grant]) -> None:
    for grant in grants:
        grant.release()


def _limits_line(limits: ResourceLimits) -> str:
    return ", ".join(f"{f.name}={getattr(limits, f.name)}" for f in fields(limits))


def _by_value(item: tuple[Cause, int]) -> str:
    return item[0].value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _peer_label(conn: socket.socket, peer: Any) -> str:
    if conn.family == socket.AF_UNIX:
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            return f"pid {pid} uid {uid}"
        except OSError:
            return "unix"
    return f"{peer[0]}:{peer[1]}"


def _bind_unix(path: Path, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A listening unix socket, mode 0600, in a directory only this user can enter."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True)
    if parent == _address.default_socket_dir() and not _address.owner_only(parent):
        raise PermissionError(f"{parent} must be owned by uid {os.getuid()} with mode 0700")
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, kind)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: nobody listens
        else:
            raise OSError(f"another node is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, kind)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock
