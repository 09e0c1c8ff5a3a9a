"""The Cap'n Proto faces of the node: Node, Registration and Stream servers.

A thin adapter: each method checks its arguments, calls the stream service (streams,
registrations), the node's :class:`Control` (everything else) or a capability bridge,
and turns a logos-p2p error into a marker the client reads back (:func:`remote_errors`,
the node's outgoing error boundary). Inbound streams of its registrations reach the
module's Handler through :func:`_offer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from .. import _schema
from .._requests import timeout_from_ms
from .._wire import RemoteError, last_line
from ..errors import Cause, InvalidArgument, LogosP2PError, RPCError
from ._bridge import Bridge
from ._capability_bridge import CapabilitySide
from ._config import NodeConfig
from ._handoff import Calls, Loops
from ._peer_events import PeerEvents, SubscriptionImpl
from ._resources import POLLS
from ._session import Deliver, ModuleSession, Registration
from ._streams import StreamService
from ._unary import DEFAULT_SERVE_TIMEOUT, Serving, max_size_from, request

if TYPE_CHECKING:
    pass

log = logging.getLogger("logos_p2p.node")
schema = _schema.load()


class Control(Protocol):
    """What the RPC servers need of the node besides its streams."""

    config: NodeConfig
    loops: Loops
    calls: Calls
    streams: StreamService
    peer_events: PeerEvents
    shutdown_started: asyncio.Event

    def info(self) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...
    def peers(self) -> list[dict[str, Any]]: ...
    async def connect_peer(self, session: ModuleSession, addr: str, timeout: float) -> dict[str, Any]: ...
    async def disconnect_peer(self, peer_id: str) -> None: ...
    def offer_channel(self, session: ModuleSession) -> tuple[str, bytes]: ...


@contextlib.contextmanager
def remote_errors() -> Iterator[None]:
    """The node's outgoing error boundary: a logos-p2p error goes to the module as its
    marker; any other failure is logged here, with its traceback, and goes as
    ``internal`` (the module never sees the node's code); a call the module already
    cancelled ends cancelled instead."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, LogosP2PError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None
            raise RemoteError(exc) from None
        log.exception("an RPC call failed inside the node")
        raise RemoteError(RPCError(f"the node failed ({type(exc).__name__}); its log has the details")) from None


class NodeImpl(schema.Node.Server):  # type: ignore[name-defined,misc]
    """The bootstrap capability of one RPC connection."""

    def __init__(self, node: Control, session: ModuleSession) -> None:
        self._node = node
        self._streams = node.streams
        self._session = session

    async def info(self, **_: Any) -> Any:
        with remote_errors():
            return self._node.info()

    async def connectPeer(self, addr: str, timeoutMs: int, **_: Any) -> Any:
        with remote_errors():
            timeout = timeout_from_ms(timeoutMs, self._node.config.dial_timeout)
            return await self._node.calls.run(self._node.connect_peer(self._session, addr, timeout))

    async def disconnectPeer(self, peerId: str, **_: Any) -> None:
        with remote_errors():
            await self._node.calls.run(self._node.disconnect_peer(peerId))

    async def peers(self, **_: Any) -> Any:
        with remote_errors():
            return self._node.peers()

    async def register(self, protocols: Any, handler: Any, options: Any, _context: Any, **_: Any) -> Any:
        with remote_errors():
            if not _context.params._has("handler"):
                raise InvalidArgument("register needs a handler")
            accept_timeout = timeout_from_ms(options.acceptTimeoutMs, self._node.config.accept_timeout)
            deliver: Deliver = partial(_offer, self._node, handler, accept_timeout)
            if options.channel:
                if self._session.channel_deliver is None:
                    raise InvalidArgument("open the data channel before registering with channel=true")
                deliver = self._session.channel_deliver
            reg = self._streams.register(self._session, list(protocols), deliver, share=options.share)
            return RegistrationImpl(self._node, reg), reg.id

    async def openStream(
        self, peerId: str, protocols: Any, addrs: Any, timeoutMs: int, sink: Any, _context: Any, **_: Any
    ) -> Any:
        with remote_errors():
            timeout = timeout_from_ms(timeoutMs, self._node.config.open_timeout)
            make_side = partial(CapabilitySide, sink=sink if _context.params._has("sink") else None)
            open_it = self._streams.open_aio(self._session, peerId, list(protocols), list(addrs), timeout, make_side)
            side = await self._node.calls.run(open_it)
            try:
                return StreamImpl(side), side.bridge.info.to_capnp()
            except BaseException:
                side.bridge.abandon(Cause.CAPABILITY_DROPPED, "the module never received the stream")
                raise

    async def status(self, **_: Any) -> Any:
        with remote_errors():
            return self._node.status()

    async def waitShutdown(self, **_: Any) -> None:
        with remote_errors():
            grant = self._streams.begin(self._session, POLLS)
        try:
            await self._node.shutdown_started.wait()
        finally:
            grant.release()

    async def dataChannel(self, **_: Any) -> Any:
        with remote_errors():
            return self._node.offer_channel(self._session)

    async def subscribePeerEvents(self, subscriber: Any, queueSize: int, _context: Any, **_: Any) -> Any:
        with remote_errors():
            if not _context.params._has("subscriber"):
                raise InvalidArgument("subscribePeerEvents needs a subscriber")
            sub = self._node.peer_events.subscribe(self._session, subscriber, queueSize)
            return SubscriptionImpl(self._node.loops, sub)

    async def request(
        self,
        peerId: str,
        protocols: Any,
        addrs: Any,
        data: bytes,
        timeoutMs: int,
        maxSize: int,
        closeWrite: bool,
        **_: Any,
    ) -> Any:
        with remote_errors():
            timeout = timeout_from_ms(timeoutMs, self._node.config.open_timeout)
            max_size = max_size_from(maxSize, self._node.config.limits.max_frame)
            exchange = request(
                self._streams, self._session, peerId, list(protocols), list(addrs), bytes(data),
                timeout, max_size, closeWrite,
            )  # fmt: skip
            return await self._node.calls.run(exchange)

    async def serve(self, protocols: Any, responder: Any, options: Any, _context: Any, **_: Any) -> Any:
        with remote_errors():
            if not _context.params._has("responder"):
                raise InvalidArgument("serve needs a responder")
            limits = self._node.config.limits
            serving = Serving(
                self._streams,
                self._node.loops,
                responder,
                max_size_from(options.maxSize, limits.max_frame),
                timeout_from_ms(options.timeoutMs, DEFAULT_SERVE_TIMEOUT),
            )
            reg = self._streams.register(self._session, list(protocols), serving.deliver, share=options.share)
            return RegistrationImpl(self._node, reg), reg.id

    async def setModuleName(self, moduleName: str, **_: Any) -> None:
        with remote_errors():
            if len(moduleName) > 256 or not moduleName.isprintable():
                raise InvalidArgument("a module name is at most 256 printable characters")
            self._session.name = moduleName


class RegistrationImpl(schema.Registration.Server):  # type: ignore[name-defined,misc]
    def __init__(self, node: Control, reg: Registration) -> None:
        self._node = node
        self._reg = reg

    def __del__(self) -> None:
        # pycapnp runs this when the module drops the capability or disconnects.
        self._node.loops.soon(partial(self._node.streams.unregister, self._reg))

    async def protocols(self, **_: Any) -> Any:
        return list(self._reg.protocols)

    async def unregister(self, **_: Any) -> None:
        with remote_errors():
            self._node.streams.unregister(self._reg)


class StreamImpl(schema.Stream.Server):  # type: ignore[name-defined,misc]
    """A bridged stream as the module sees it. Dropping it unclosed resets the stream."""

    def __init__(self, side: CapabilitySide) -> None:
        self._side = side

    def __del__(self) -> None:
        self._side.bridge.dropped()

    async def info(self, **_: Any) -> Any:
        with remote_errors():
            return self._side.bridge.info.to_capnp()

    async def read(self, maxBytes: int, position: int, **_: Any) -> Any:
        with remote_errors():
            return await self._side.read_aio(maxBytes, position)

    async def readLp(self, maxSize: int, position: int, **_: Any) -> Any:
        with remote_errors():
            return await self._side.read_lp_aio(maxSize, position)

    async def write(self, data: bytes, **_: Any) -> None:
        with remote_errors():
            await self._side.write_aio(data)

    async def writeLp(self, data: bytes, **_: Any) -> None:
        with remote_errors():
            await self._side.write_lp_aio(data)

    async def closeWrite(self, **_: Any) -> None:
        with remote_errors():
            await self._side.close_write_aio()

    async def close(self, **_: Any) -> None:
        with remote_errors():
            await self._side.close_aio()

    async def reset(self, **_: Any) -> None:
        with remote_errors():
            self._side.reset_aio()


# -- inbound streams on the capability path ---------------------------------------------


async def _offer(node: Control, handler: Any, accept_timeout: float, reg: Registration, bridge: Bridge) -> None:
    """``deliver`` of a capability registration (trio): start the stream, then hand it to
    the module's Handler (asyncio)."""
    streams = node.streams
    side = CapabilitySide(bridge)
    bridge.start()
    streams.working += 1
    node.loops.spawn_aio(_handle(streams, handler, accept_timeout, reg, side))


async def _handle(
    streams: StreamService, handler: Any, accept_timeout: float, reg: Registration, side: CapabilitySide
) -> None:
    bridge = side.bridge
    try:
        if not reg.active:
            bridge.abandon(Cause.HANDLER_FAILED, "the protocol was unregistered", linger=False)
            return
        request = handler.handle(stream=StreamImpl(side), info=bridge.info.to_capnp())
        try:
            response = await asyncio.wait_for(request, accept_timeout)
        except TimeoutError:
            bridge.abandon(Cause.TIMEOUT, "the module did not accept the stream in time", linger=False)
            return
        except Exception as exc:
            bridge.abandon(Cause.HANDLER_FAILED, f"the module's handler failed: {last_line(exc)}", linger=False)
            return
        if response._has("sink"):
            side.attach_sink(response.sink)
    finally:
        streams.working -= 1
