"""Where modules connect their data channels (node side).

A ``SOCK_SEQPACKET`` listener beside the unix RPC socket. A connection becomes a module's
:class:`~._channel.DataChannel` once its first datagram is a token the module got from
``Node.dataChannel`` on its RPC connection; anything else is closed. The channel's end
ends the module's session: a module whose channel broke is gone as a whole.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
from functools import partial
from typing import Any

import trio

from .. import _schema
from ..errors import Cause, InvalidArgument
from ._channel import DataChannel
from ._config import NodeConfig
from ._handoff import Loops
from ._resources import FDS, Grant
from ._session import ModuleSession
from ._streams import StreamService

log = logging.getLogger("logos_p2p.node")
schema = _schema.load()

HELLO_TIMEOUT = 10.0


class ChannelListener:
    """The ``SOCK_SEQPACKET`` listener for data channels; tokens come from ``Node.dataChannel``."""

    def __init__(
        self, streams: StreamService, loops: Loops, config: NodeConfig, sock: socket.socket, path: str
    ) -> None:
        self.streams = streams
        self.loops = loops
        self.config = config
        self.listener = trio.socket.from_stdlib_socket(sock)
        self.path = path
        self._tokens: dict[bytes, ModuleSession] = {}
        self._channels: set[DataChannel] = set()

    def offer(self, session: ModuleSession) -> bytes:
        if session.channel_deliver is not None or any(s is session for s in self._tokens.values()):
            raise InvalidArgument("this connection already has a data channel")
        token = secrets.token_bytes(32)
        self._tokens[token] = session
        session.teardown_hooks.append(lambda _cause: self._forget(session))
        return token

    def _forget(self, session: ModuleSession) -> None:
        for token, s in list(self._tokens.items()):
            if s is session:
                del self._tokens[token]

    async def serve(self) -> None:
        rm = self.streams.rm
        while True:
            try:
                conn, _ = await self.listener.accept()
            except (OSError, trio.ClosedResourceError) as exc:
                if self.streams.shutting_down or self.listener.fileno() == -1:
                    return
                rm.refused(rm.system, FDS, f"for a data channel: {exc}")
                await trio.sleep(0.1)
                continue
            grant = rm.try_grant(FDS)
            if grant is None:
                conn.close()
                continue
            self.loops.spawn_trio(partial(self._hello, conn, grant))

    async def _hello(self, conn: Any, grant: Grant) -> None:
        try:
            await self._hello_and_serve(conn)
        finally:
            grant.release()

    async def _hello_and_serve(self, conn: Any) -> None:
        session = None
        with trio.move_on_after(HELLO_TIMEOUT):
            with contextlib.suppress(OSError, trio.ClosedResourceError):
                data = await conn.recv(1024)
                with (
                    contextlib.suppress(Exception),
                    schema.ChannelMessage.from_bytes(data, traversal_limit_in_words=128) as msg,
                ):
                    if msg.which() == "hello":
                        session = self._tokens.pop(bytes(msg.hello), None)
        if session is None or session.closed:
            conn.close()
            return
        raw = socket.socket(fileno=conn.detach())
        raw.setblocking(False)
        channel = DataChannel(self.streams, self.loops, self.config, session, raw)
        session.channel_deliver = channel.deliver
        # at shutdown the channel stays up for the last answers (close_channels ends it)
        session.teardown_hooks.append(lambda cause: None if cause is Cause.NODE_SHUTDOWN else channel.close())
        self._channels.add(channel)
        log.info("module %s: data channel open", session.id)
        try:
            await channel.serve()
        finally:
            self._channels.discard(channel)
        log.info("module %s: data channel closed", session.id)
        self.streams.end_session(session, Cause.MODULE_GONE, "the module's data channel closed")

    def close(self) -> None:
        self.listener.close()

    def close_channels(self) -> None:
        for channel in list(self._channels):
            channel.close()
