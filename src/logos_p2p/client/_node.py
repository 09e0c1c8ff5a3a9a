"""Connecting to a node, registering protocols, opening streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace
from typing import Any, TypeVar, Unpack

from .. import _schema
from .._requests import timeout_to_ms, validate_protocol_ids
from ..errors import Cause, LogosP2PError, NodeShutdown, NodeUnavailable, StreamError
from . import _unary
from ._args import DEFAULT_OPEN_TIMEOUT, _answered, _texts, open_args
from ._capability import CapabilityTransport
from ._channel import Channel
from ._events import PeerEvents
from ._registration import RegisterOptions, Registration, _HandlerImpl
from ._stream import Stream, _Core
from ._translate import translate
from ._unary import RequestInfo as RequestInfo

log = logging.getLogger("logos_p2p.client")
schema = _schema.load()

Handler = Callable[[Stream], Awaitable[None]]
T = TypeVar("T")

DEFAULT_MAX_MESSAGE = 1024 * 1024  # request and reply size bound, as the node's default
RPC_TRAVERSAL_LIMIT_WORDS = 8 * 1024 * 1024


@dataclass(frozen=True)
class NodeInfo:
    peer_id: str
    addrs: list[str]
    version: str


@dataclass(frozen=True)
class PeerInfo:
    peer_id: str
    addrs: list[str]


class Node:
    """A connection to a logos-p2p node. Get one with :func:`connect`."""

    def __init__(self, client: Any, cap: Any, address: str, *, push: bool, uids: Collection[int] = ()) -> None:
        self._client = client
        self._cap = cap
        self.address = address
        self._push = push
        self._uids = uids  # whose process may serve its data channel
        self._channel: Channel | None = None
        self._closed = False
        self._shutting_down = False
        self._streams: weakref.WeakSet[_Core] = weakref.WeakSet()
        # weak: dropping a Registration releases its capability, which unregisters it
        self._registrations: weakref.WeakSet[Registration] = weakref.WeakSet()
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._watchers: list[asyncio.Future[Any]] = []
        self.disconnected = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Node {self.address}{' closed' if self._closed else ''}>"

    def _is_shutting_down(self) -> bool:
        return self._shutting_down

    def _check_open(self) -> None:
        if self._closed:
            if self._shutting_down:
                raise NodeShutdown("the node shut down")
            raise NodeUnavailable("this connection to the node is closed")

    @property
    def data_path(self) -> str:
        """How stream bytes move: "socket" (local data channel), "push" or "pull" (RPC)."""
        return "socket" if self._channel is not None else "push" if self._push else "pull"

    async def _start(self, name: str | None, sockets: str) -> None:
        """Start: ``sockets`` says whether streams go over a data channel ("socket" -- or
        fail, "auto" -- when the node offers one, "" -- never)."""
        wait_shutdown = asyncio.ensure_future(self._cap.waitShutdown())
        wait_shutdown.add_done_callback(self._on_shutdown_notice)
        disconnect = asyncio.ensure_future(self._client.on_disconnect())
        disconnect.add_done_callback(lambda _f: self._on_disconnect())
        self._watchers = [wait_shutdown, disconnect]
        if name:
            _texts([name], "name")
            with translate():
                await self._cap.setModuleName(moduleName=name)
        if sockets:
            try:
                with translate():
                    offer = await self._cap.dataChannel()
                self._channel = await Channel.connect(offer.path, bytes(offer.token), self._uids)
            except (LogosP2PError, OSError) as exc:
                if sockets == "socket":
                    raise NodeUnavailable(f"no data channel: {exc}") from exc
                log.debug("no data channel (%s); bytes go over RPC", exc)
                return
            self._channel.on_close = self._on_disconnect

    def _on_shutdown_notice(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._shutting_down = True

    def _on_disconnect(self) -> None:
        """The RPC connection ended: fail every stream, so no read or write hangs."""
        if self.disconnected.is_set():
            return
        self._closed = True
        if self._channel is not None:
            self._channel.close()
        cause = Cause.NODE_SHUTDOWN if self._shutting_down else Cause.MODULE_GONE
        message = "the node shut down" if self._shutting_down else "the RPC connection to the node broke"
        for core in list(self._streams):
            core.fail(cause, message)
        self.disconnected.set()

    # -- node operations -------------------------------------------------------------------

    async def info(self) -> NodeInfo:
        """The node's peer id, dialable addresses and version."""
        self._check_open()
        with translate(self._is_shutting_down):
            info = (await self._cap.info()).info
        return NodeInfo(info.peerId, list(info.addrs), info.version)

    async def connect_peer(self, addr: str, timeout: float | None = None) -> PeerInfo:
        """Connect to a peer at ``addr`` (a multiaddr ending in ``/p2p/<peer id>``)."""
        self._check_open()
        _texts([addr], "addr")
        with translate(self._is_shutting_down):
            peer = (await self._cap.connectPeer(addr=addr, timeoutMs=timeout_to_ms(timeout))).peer
        return PeerInfo(peer.peerId, list(peer.addrs))

    async def disconnect_peer(self, peer_id: str) -> None:
        self._check_open()
        _texts([peer_id], "peer_id")
        with translate(self._is_shutting_down):
            await self._cap.disconnectPeer(peerId=peer_id)

    async def peers(self) -> list[PeerInfo]:
        """Peers the node is connected to."""
        self._check_open()
        with translate(self._is_shutting_down):
            peers = (await self._cap.peers()).peers
        return [PeerInfo(p.peerId, list(p.addrs)) for p in peers]

    async def status(self) -> dict[str, Any]:
        """What the node holds: modules, registrations, streams, buffers, resets."""
        self._check_open()
        with translate(self._is_shutting_down):
            status = (await self._cap.status()).status
        out: dict[str, Any] = status.to_dict()
        out.setdefault("modules", [])
        out.setdefault("resets", [])
        for module in out["modules"]:
            module.setdefault("protocols", [])
        return out

    async def register(
        self,
        protocols: Sequence[str],
        handler: Handler,
        *,
        share: bool = False,
        accept_timeout: float | None = None,
    ) -> Registration:
        """Mount ``protocols`` on the node; ``handler(stream)`` runs for each inbound stream.

        The handler owns its stream: when it returns the stream is closed, when
        it raises the stream is reset.

        Keep the returned :class:`Registration`: like every capability, dropping
        it unregisters the protocols. Prefer :meth:`handle`, which holds it for
        the duration of a block.
        """
        self._check_open()
        protos = validate_protocol_ids(_texts(protocols, "protocols"))
        channel = self._channel
        options = {"share": share, "acceptTimeoutMs": timeout_to_ms(accept_timeout), "channel": channel is not None}
        with translate(self._is_shutting_down):
            answer = await self._cap.register(
                protocols=list(protos), handler=_HandlerImpl(self, handler), options=options
            )
        registration = Registration(self, answer.registration, protos, answer.id)
        self._registrations.add(registration)
        if channel is not None:
            channel.handlers[answer.id] = partial(self._on_channel_stream, handler)
            weakref.finalize(registration, channel.handlers.pop, answer.id, None)
        return registration

    @contextlib.asynccontextmanager
    async def handle(
        self, protocols: Sequence[str], handler: Handler, **options: Unpack[RegisterOptions]
    ) -> AsyncIterator[Registration]:
        """Serve ``protocols`` with ``handler`` while the block runs (``options`` as for
        :meth:`register`)."""
        registration = await self.register(protocols, handler, **options)
        try:
            yield registration
        finally:
            if not self._closed:
                with contextlib.suppress(NodeUnavailable):
                    await registration.unregister()

    async def serve(
        self,
        protocols: Sequence[str],
        fn: Callable[[bytes, RequestInfo], bytes | Awaitable[bytes]],
        *,
        max_size: int = DEFAULT_MAX_MESSAGE,
        timeout: float | None = None,
        share: bool = False,
    ) -> Registration:
        """Answer one request per stream: ``fn(request, info) -> reply`` (sync or async).

        The node reads one length-prefixed frame of at most ``max_size`` bytes, calls
        ``fn``, writes its reply as one frame and closes the stream (nim-libp2p's
        ``readLp``/``writeLp`` framing). A raising ``fn`` resets that stream only. The
        whole exchange must finish within ``timeout`` (None: the node's 30 s). A sync
        ``fn`` runs on the event loop: keep it short. Keep the Registration, as for
        :meth:`register`.
        """
        self._check_open()
        protos = validate_protocol_ids(_texts(protocols, "protocols"))
        with translate(self._is_shutting_down):
            answer = await _unary.serve(self._cap, protos, fn, max_size, timeout, share)
        registration = Registration(self, answer.registration, protos, answer.id)
        self._registrations.add(registration)
        return registration

    async def request(
        self,
        peer_id: str,
        protocols: Sequence[str],
        data: bytes | bytearray | memoryview,
        *,
        addrs: Sequence[str] | None = None,
        timeout: float = DEFAULT_OPEN_TIMEOUT,
        max_size: int = DEFAULT_MAX_MESSAGE,
        close_write: bool = True,
    ) -> bytes:
        """Send one request and return the reply, in one call to the node.

        Opens a stream to ``peer_id`` (dialing ``addrs`` if needed), writes ``data`` as
        one length-prefixed frame, half-closes (unless ``close_write`` is False: some
        peers, p2pd's stream pipe among them, end the stream at a half-close), reads one
        frame of at most ``max_size`` bytes and closes. ``timeout`` bounds it all.

        :raises PeerUnreachable, ProtocolNotSupported, NegotiationFailed: as :meth:`open_stream`.
        :raises Timeout: no whole reply within ``timeout``.
        :raises StreamReset: the peer reset the stream (``cause`` says more).
        :raises FrameTooLarge: the reply is longer than ``max_size``.
        :raises EndOfStream: the peer ended the stream before a whole reply.
        """
        self._check_open()
        with translate(self._is_shutting_down):
            return await _unary.request(self._cap, peer_id, protocols, data, addrs, timeout, max_size, close_write)

    def peer_events(self, queue_size: int = 256) -> PeerEvents:
        """The node's peer events, typed (:class:`PeerConnected`, :class:`PeerIdentified`,
        :class:`PeerDisconnected`, :class:`PeerEventsOverflowed`), in order.

        ``queue_size`` events wait in the node for a module that does not keep up; then
        they are dropped for one ``PeerEventsOverflowed``. Subscribed on ``async with``
        or at the first iteration; call :meth:`peers` after that for the peers already
        connected.
        """
        self._check_open()
        return PeerEvents(self._cap, queue_size, self._is_shutting_down, self.disconnected.wait)

    async def open_stream(
        self,
        peer_id: str,
        protocols: Sequence[str],
        addrs: Sequence[str] | None = None,
        timeout: float = DEFAULT_OPEN_TIMEOUT,
    ) -> Stream:
        """Open a stream to ``peer_id`` speaking the first of ``protocols`` it supports.

        :raises PeerUnreachable: no connection could be made.
        :raises ProtocolNotSupported: the peer speaks none of ``protocols``.
        :raises Timeout: not done within ``timeout`` seconds.
        """
        self._check_open()
        peer_id, protocols, addrs = open_args(peer_id, protocols, addrs)
        if self._channel is not None:
            return await self._open_on_channel(self._channel, peer_id, protocols, addrs, timeout)
        core = _Core()
        transport = CapabilityTransport(core, push=self._push, shutting_down=self._is_shutting_down)
        stream_args: dict[str, Any] = {
            "peerId": peer_id,
            "protocols": list(protocols),
            "addrs": list(addrs or ()),
            "timeoutMs": timeout_to_ms(timeout),
        }
        if transport.sink is not None:
            stream_args["sink"] = transport.sink
        with translate(self._is_shutting_down):
            answer = await _answered(self._cap.openStream(**stream_args), timeout)
        return self._track(Stream(transport.attach(answer.stream), core, answer.info), core)

    async def _open_on_channel(
        self, channel: Channel, peer_id: str, protocols: Sequence[str], addrs: Sequence[str] | None, timeout: float
    ) -> Stream:
        opening = channel.open(peer_id, list(protocols), list(addrs or ()), timeout_to_ms(timeout))
        sock, info = await _answered(opening, timeout)
        return self._adopt_socket(channel, sock, info)

    # -- streams and handlers ------------------------------------------------------------------

    def _adopt(self, cap: Any, info: Any) -> Stream:
        core = _Core()
        transport = CapabilityTransport(core, push=self._push, shutting_down=self._is_shutting_down)
        return self._track(Stream(transport.attach(cap), core, info), core)

    def _adopt_socket(self, channel: Channel, sock: socket.socket, info: dict[str, Any]) -> Stream:
        core = _Core()
        transport = channel.adopt(sock, core, info["id"])
        stream = self._track(Stream(transport, core, SimpleNamespace(**info)), core)
        weakref.finalize(stream, transport.dropped)
        return stream

    def _on_channel_stream(self, fn: Handler, sock: socket.socket, info: dict[str, Any]) -> None:
        if self._closed or self._channel is None:
            sock.close()  # the node resets it
            return
        self._spawn_handler(fn, self._adopt_socket(self._channel, sock, info))

    def _track(self, stream: Stream, core: _Core) -> Stream:
        self._streams.add(core)
        if self._closed:
            core.fail(Cause.NODE_SHUTDOWN if self._shutting_down else Cause.MODULE_GONE)
        return stream

    def _spawn_handler(self, fn: Handler, stream: Stream) -> None:
        task = asyncio.ensure_future(self._run_handler(fn, stream))
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    async def _run_handler(self, fn: Handler, stream: Stream) -> None:
        try:
            await fn(stream)
        except asyncio.CancelledError:
            await stream.reset()
            raise
        except (StreamError, NodeUnavailable) as exc:  # the stream broke under the handler
            log.debug("handler for %s ended with %s: %s", stream.protocol, type(exc).__name__, exc)
            await stream.reset()
            return
        except Exception:
            log.exception("handler for %s raised; resetting the stream", stream.protocol)
            await stream.reset()
            return
        try:
            await stream.close()
        except Exception as exc:  # the peer reset it meanwhile: nothing left to do
            log.debug("closing %r after its handler: %s", stream, exc)

    async def aclose(self) -> None:
        """Unregister, stop handlers, release every stream and close the connection."""
        if self._closed and self.disconnected.is_set() and not self._handler_tasks:
            self._close_rpc()
            return
        for registration in list(self._registrations):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(registration.unregister(), 1.0)
        tasks = list(self._handler_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self._closed = True
        self._close_rpc()

    def _close_rpc(self) -> None:
        for fut in self._watchers:
            fut.cancel()
        self._watchers = []
        with contextlib.suppress(Exception):
            self._client.close()
        if not self.disconnected.is_set():
            self._on_disconnect()
