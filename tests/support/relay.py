"""A TCP relay on 127.0.0.1 for the security tests: it records, terminates TLS, or cuts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import trio


async def start_relay(
    nursery: trio.Nursery,
    connect_out: Callable[[], Awaitable[trio.abc.Stream]],
    *,
    accept: Callable[[trio.SocketStream], Awaitable[trio.abc.Stream]] | None = None,
    sent: bytearray | None = None,
    received: bytearray | None = None,
    cut: trio.Event | None = None,
    ended: trio.Event | None = None,
) -> int:
    """Relay each connection to ``connect_out``; returns the relay's port.

    ``accept`` wraps the client's side first (a TLS server of the relay's own); ``sent``
    and ``received`` record what the client sent and got (as the relay saw it); ``cut``
    set closes every connection it carries; ``ended`` is set when one ends.
    """

    async def handle(client: trio.SocketStream) -> None:
        inbound: trio.abc.Stream = client
        try:
            if accept is not None:
                inbound = await accept(client)
            outbound = await connect_out()
        except (trio.BrokenResourceError, OSError):
            await client.aclose()
            return
        try:
            async with inbound, outbound, trio.open_nursery() as pumps:
                pumps.start_soon(_pump, inbound, outbound, sent, pumps.cancel_scope)
                pumps.start_soon(_pump, outbound, inbound, received, pumps.cancel_scope)
                if cut is not None:
                    pumps.start_soon(_cut_on, cut, pumps.cancel_scope)
        finally:
            if ended is not None:
                ended.set()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def _pump(
    source: trio.abc.Stream, sink: trio.abc.Stream, record: bytearray | None, done: trio.CancelScope
) -> None:
    try:
        while data := await source.receive_some(65536):
            if record is not None:
                record += data
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        done.cancel()


async def _cut_on(cut: trio.Event, scope: trio.CancelScope) -> None:
    await cut.wait()
    scope.cancel()
