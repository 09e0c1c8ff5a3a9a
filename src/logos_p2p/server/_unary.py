"""One request, one reply: ``Node.request`` and ``Node.serve``, done inside the node.

Both run a bridged stream on the capability path whose module side the node drives
itself (a :class:`~._capability_bridge.CapabilitySide` with no capability handed out),
so a request/response stream is admitted, counted, limited, idle-timed and reset like
every other stream -- and costs the module one RPC instead of five. The framing is
nim-libp2p's ``writeLp``/``readLp`` (an unsigned varint length, then the bytes).

Requester (``request``): open, write the frame, half-close (unless told not to: some
peers, p2pd among them, end the whole stream at a half-close), read one frame, close.
Responder (``serve``): read one frame, ask the module, write the reply frame, close.
Neither waits for the other's half-close. Any failure resets the stream, with the
cause that fits; a failure on one stream never touches another.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from .._frames import encode_uvarint
from .._wire import last_line
from ..errors import Cause, EndOfStream, FrameTooLarge, InvalidArgument, LogosP2PError, StreamReset, Timeout
from ._capability_bridge import CapabilitySide

if TYPE_CHECKING:
    from ._bridge import Bridge
    from ._handoff import Loops
    from ._session import ModuleSession, Registration
    from ._streams import StreamService

log = logging.getLogger("logos_p2p.node")

DEFAULT_MAX_SIZE = 1024 * 1024
DEFAULT_SERVE_TIMEOUT = 30.0


def max_size_from(value: int, limit: int) -> int:
    """A request's or reply's size bound as it arrived (0: the default)."""
    if value > limit:
        raise InvalidArgument(f"maxSize is at most {limit}")
    return value or min(DEFAULT_MAX_SIZE, limit)


async def _write_frame(side: CapabilitySide, data: bytes) -> None:
    """``data`` as one length-prefixed frame, in writes the node's bound allows."""
    if len(data) > side.limits.max_frame:
        raise FrameTooLarge(f"a frame of {len(data)} bytes is over the node's {side.limits.max_frame}")
    await side.write_aio(encode_uvarint(len(data)))
    view = memoryview(data)
    step = side.limits.max_write
    for start in range(0, len(view), step):
        await side.write_aio(bytes(view[start : start + step]))


async def _read_frame(side: CapabilitySide, max_size: int, what: str) -> bytes:
    data, _next, eof = await side.read_lp_aio(max_size, 0)
    if eof:
        raise EndOfStream(f"the peer ended the stream before {what}")
    return data


def _reset_for(bridge: Bridge, exc: BaseException) -> None:
    """Reset a request/response stream after ``exc``, with the cause it names."""
    if bridge.state.is_reset:
        return
    if isinstance(exc, (TimeoutError, Timeout)):
        bridge.reset(Cause.TIMEOUT, "the request/response exchange timed out")
    elif isinstance(exc, FrameTooLarge):
        bridge.reset(Cause.LIMIT_EXCEEDED, str(exc))
    elif isinstance(exc, EndOfStream):
        bridge.reset(Cause.PROTOCOL_ERROR, str(exc))
    elif isinstance(exc, asyncio.CancelledError):
        bridge.reset(Cause.CAPABILITY_DROPPED, "the module gave up the request")
    else:
        bridge.reset(Cause.HANDLER_FAILED, f"the request/response exchange failed: {last_line(exc)}")


async def request(
    streams: StreamService,
    session: ModuleSession,
    peer: str,
    protocols: list[str],
    addrs: list[str],
    data: bytes,
    timeout: float,
    max_size: int,
    close_write: bool,
) -> tuple[bytes, str]:
    """``Node.request`` (asyncio): the reply and the protocol that was negotiated."""
    deadline = asyncio.get_running_loop().time() + timeout
    side = await streams.open_aio(session, peer, protocols, addrs, timeout, CapabilitySide)  # Timeout of its own
    bridge = side.bridge
    try:
        async with asyncio.timeout_at(deadline):
            await _write_frame(side, data)
            if close_write:
                side.close_write_soon()  # a failed half-close shows as a reset of the read
            reply = await _read_frame(side, max_size, "its reply")
            side.close_soon()  # the reply is here: the caller need not wait for the close
    except BaseException as exc:
        _reset_for(bridge, exc)
        if isinstance(exc, TimeoutError):
            raise Timeout(f"no reply from {peer} within {timeout:g}s") from None
        raise
    finally:
        bridge.abandon(Cause.CAPABILITY_DROPPED, "the request ended")  # a closed stream keeps its linger
    return reply, bridge.info.protocol


async def _unless_reset(side: CapabilitySide, call: Any) -> Any:
    """The answer to ``call``; if the stream is reset first (the requester gave up, the
    connection died), the call is cancelled -- the module stops working on it -- and the
    reset is raised.

    The peer has usually half-closed by then, so the bridge reads nothing more from
    libp2p: a trio task watches the wire meanwhile (``Bridge.unless_wire_ends``).
    """
    bridge = side.bridge
    answered = trio.Event()
    bridge.loops.spawn_trio(partial(bridge.unless_wire_ends, answered.wait))
    answer = asyncio.ensure_future(call)
    try:
        while not answer.done():
            if bridge.state.is_reset:
                raise bridge.state.error()
            waiting = side.rx_changed.future_aio()
            try:
                await asyncio.wait([answer, waiting], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
        return answer.result()
    finally:
        answered.set()
        answer.cancel()


class Serving:
    """What a ``serve`` registration needs to answer its streams."""

    def __init__(self, streams: StreamService, loops: Loops, responder: Any, max_size: int, timeout: float) -> None:
        self.streams = streams
        self.loops = loops
        self.responder = responder
        self.max_size = max_size
        self.timeout = timeout

    async def deliver(self, reg: Registration, bridge: Bridge) -> None:
        """``deliver`` of a serve registration (trio): start the stream, answer it in asyncio."""
        side = CapabilitySide(bridge)
        bridge.start()
        self.streams.working += 1
        self.loops.spawn_aio(self._answer(reg, side))

    async def _answer(self, reg: Registration, side: CapabilitySide) -> None:
        bridge = side.bridge
        try:
            async with asyncio.timeout(self.timeout):
                if not reg.active:
                    raise StreamReset("the protocol was unregistered", Cause.HANDLER_FAILED)
                request = await _read_frame(side, self.max_size, "a whole request")
                answer = await _unless_reset(side, self.responder.respond(request=request, info=bridge.info.to_capnp()))
                await _write_frame(side, bytes(answer.reply))
                side.close_soon()  # the writer sends the reply, then the half-close
        except (Exception, asyncio.CancelledError) as exc:
            if not isinstance(exc, LogosP2PError | TimeoutError | asyncio.CancelledError):
                log.debug("a responder for %s failed: %s", bridge.info.protocol, last_line(exc))
            _reset_for(bridge, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.streams.working -= 1
            bridge.abandon(Cause.HANDLER_FAILED, "the responder ended")  # a closed stream keeps its linger
