"""The Cap'n Proto faces of the node: Node, Registration and Stream servers.

They are thin: each method checks its arguments, calls the node or a bridge,
and turns a logos-p2p error into a marker the client reads back
(:func:`remote_errors`, the node's outgoing error boundary).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import _schema
from .._wire import RemoteError
from ..errors import Cause, InvalidArgument, LogosP2PError
from ._bridge import Bridge
from ._registry import Registration
from ._resources import POLLS

if TYPE_CHECKING:
    from ._node import NodeService
    from ._registry import ModuleSession

log = logging.getLogger("logos_p2p.node")
rpc = _schema.load()

MAX_TIMEOUT_MS = 24 * 3600 * 1000


@contextlib.contextmanager
def remote_errors() -> Iterator[None]:
    """Raise logos-p2p errors as markers for the module; a call the module already
    cancelled ends cancelled instead (pycapnp reports anything else as an error)."""
    try:
        yield
    except LogosP2PError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError from None
        raise RemoteError(exc) from None


def timeout_from_ms(ms: int, default: float) -> float:
    if ms > MAX_TIMEOUT_MS:
        raise InvalidArgument(f"timeout over {MAX_TIMEOUT_MS} ms")
    return ms / 1000 if ms else default


class NodeImpl(rpc.Node.Server):  # type: ignore[name-defined,misc]
    """The bootstrap capability of one RPC connection."""

    def __init__(self, node: NodeService, session: ModuleSession) -> None:
        self._node = node
        self._session = session

    async def info(self, **_: Any) -> Any:
        return self._node.info()

    async def connectPeer(self, addr: str, timeoutMs: int, **_: Any) -> Any:
        with remote_errors():
            timeout = timeout_from_ms(timeoutMs, self._node.config.dial_timeout)
            return await self._node.guard(self._node.connect_peer(self._session, addr, timeout))

    async def disconnectPeer(self, peerId: str, **_: Any) -> None:
        with remote_errors():
            await self._node.guard(self._node.disconnect_peer(peerId))

    async def peers(self, **_: Any) -> Any:
        return self._node.peers()

    async def register(self, protocols: Any, handler: Any, options: Any, _context: Any, **_: Any) -> Any:
        with remote_errors():
            if not _context.params._has("handler"):
                raise InvalidArgument("register needs a handler")
            accept_ms = options.acceptTimeoutMs
            reg = self._node.register(
                self._session,
                list(protocols),
                handler,
                share=options.share,
                accept_timeout=timeout_from_ms(accept_ms, self._node.config.accept_timeout),
                channel=options.channel,
            )
            return RegistrationImpl(self._node, reg), reg.id

    async def openStream(
        self, peerId: str, protocols: Any, addrs: Any, timeoutMs: int, sink: Any, _context: Any, **_: Any
    ) -> Any:
        with remote_errors():
            timeout = timeout_from_ms(timeoutMs, self._node.config.open_timeout)
            bridge = await self._node.guard(
                self._node.open_stream(self._session, peerId, list(protocols), list(addrs), timeout)
            )
            try:
                impl = StreamImpl(bridge)
                if _context.params._has("sink"):
                    bridge.attach_sink(sink)
                return impl, bridge.info.to_capnp()
            except BaseException:
                bridge.abandon(Cause.CAPABILITY_DROPPED, "the module never received the stream")
                raise

    async def status(self, **_: Any) -> Any:
        return self._node.status()

    async def waitShutdown(self, **_: Any) -> None:
        with remote_errors():
            grant = self._node.begin(self._session, POLLS)
        try:
            await self._node.shutdown_started.wait()
        finally:
            grant.release()

    async def dataChannel(self, **_: Any) -> Any:
        with remote_errors():
            return self._node.offer_channel(self._session)

    async def setModuleName(self, moduleName: str, **_: Any) -> None:
        with remote_errors():
            if len(moduleName) > 256 or not moduleName.isprintable():
                raise InvalidArgument("a module name is at most 256 printable characters")
            self._session.name = moduleName


class RegistrationImpl(rpc.Registration.Server):  # type: ignore[name-defined,misc]
    def __init__(self, node: NodeService, reg: Registration) -> None:
        self._node = node
        self._reg = reg

    def __del__(self) -> None:
        # pycapnp runs this when the module drops the capability or disconnects.
        self._node.loops.soon(partial(self._node.unregister, self._reg))

    async def protocols(self, **_: Any) -> Any:
        return list(self._reg.protocols)

    async def unregister(self, **_: Any) -> None:
        self._node.unregister(self._reg)


class StreamImpl(rpc.Stream.Server):  # type: ignore[name-defined,misc]
    """A bridged stream as the module sees it. Dropping it unclosed resets the stream."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    def __del__(self) -> None:
        self._bridge.dropped()

    async def info(self, **_: Any) -> Any:
        return self._bridge.info.to_capnp()

    async def read(self, maxBytes: int, position: int, **_: Any) -> Any:
        with remote_errors():
            return await self._bridge.read_aio(maxBytes, position)

    async def readLp(self, maxSize: int, position: int, **_: Any) -> Any:
        with remote_errors():
            return await self._bridge.read_lp_aio(maxSize, position)

    async def write(self, data: bytes, **_: Any) -> None:
        with remote_errors():
            await self._bridge.write_aio(data)

    async def writeLp(self, data: bytes, **_: Any) -> None:
        with remote_errors():
            await self._bridge.write_lp_aio(data)

    async def closeWrite(self, **_: Any) -> None:
        with remote_errors():
            await self._bridge.close_write_aio()

    async def close(self, **_: Any) -> None:
        with remote_errors():
            await self._bridge.close_aio()

    async def reset(self, **_: Any) -> None:
        self._bridge.reset_aio()
