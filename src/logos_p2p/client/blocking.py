"""A blocking twin of the asyncio client, for hosts without asyncio (Qt, a CLI, a test harness)::

    from logos_p2p.client.blocking import connect

    def echo(stream):                          # on a handler thread, once per inbound stream
        for chunk in stream:
            stream.write(chunk)                # returning closes the stream; raising resets it

    with connect(name="echo") as node, node.handle(["/echo/1.0.0"], echo):
        with node.open_stream(peer_id, ["/echo/1.0.0"], addrs=[addr]) as stream:
            stream.write(b"hello")
            stream.close_write()
            print(stream.read_all(timeout=10))

It is the asyncio client run for you, not a second implementation: the same methods and
contracts (lifecycle, cancel-safe reads, ``Busy``), the same ``logos_p2p.errors``.

**Threads.** Each :func:`connect` starts one thread running an asyncio loop with the asyncio
client on it (``node.loop``); a method hands its coroutine to that loop and blocks the
calling thread until it is done. Handlers, ``serve`` functions and ``on_peer_event``
callbacks run on the node's bounded pool of ``handler_threads`` threads: the node accepts
an inbound stream at once (its accept timeout is met), then its handler waits for a free
thread. Nodes share nothing: each has its own loop thread and pool.

**Thread-safety.** Any method may be called from any thread, at once, except from the
node's loop thread (``RuntimeError``: it would deadlock). As in asyncio, one thread may read
a stream while another writes it; two reading at once get ``Busy``.

**Timeouts.** Every call takes ``timeout`` (seconds; None: as long as it takes). When it
passes the coroutine is cancelled and :class:`~logos_p2p.errors.Timeout` raised -- unless it
finished meanwhile, then its result is returned: a read that times out loses no byte. A
write that times out may have sent a prefix: reset the stream. Where the asyncio call has
a timeout of its own (``open_stream``, ``connect_peer``, ``request``), ``timeout`` is that
one and the wait lasts a few seconds longer.

**Lifetimes, errors.** The asyncio objects live and die on the loop thread: a dropped
``Stream`` is reset, a dropped ``Registration`` unregisters, as in asyncio. Errors are
raised in the calling thread (a remote reset during a read: ``StreamReset``, in the reader).

**Closing.** ``close()`` (or leaving ``with``) unregisters, resets the streams still open,
and stops the loop thread and the handler threads, waiting up to ``timeout`` for handlers
still running. It is idempotent; afterwards every call raises ``NodeUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self, TypeVar, Unpack

from .._state import State
from ..errors import LogosP2PError, NodeUnavailable
from . import NodeInfo, PeerEvent, PeerInfo, RequestInfo
from ._args import DEFAULT_OPEN_TIMEOUT
from ._node import DEFAULT_MAX_MESSAGE
from ._registration import RegisterOptions
from ._stream import DEFAULT_MAX_LP
from ._threads import CALL, MARGIN, Bytes, Seconds, _closing, _Events, _Loop, _now

__all__ = ["Node", "PeerEvents", "Registration", "Stream", "Subscription", "connect"]


class Node:
    """A connection to a logos-p2p node, for threads; get one with :func:`connect`.

    ``address`` and ``data_path`` are the asyncio Node's; ``disconnected`` (a
    :class:`threading.Event`) is set once the connection to the node ends.
    """

    def __init__(self, address: str | None, timeout: float, handler_threads: int, kwargs: dict[str, Any]) -> None:
        self._l = _Loop(address, timeout, handler_threads, kwargs)
        self._run = self._l.run
        self.address, self.data_path, self.disconnected = self._l.address, self._l.data_path, self._l.disconnected

    def __repr__(self) -> str:
        return f"<blocking Node {self.address}{' closed' if self._l.closing else ''}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio client's loop, for coroutines of yours (``run_coroutine_threadsafe``)."""
        return self._l.loop

    def close(self, *, timeout: Seconds = 10.0) -> None:
        """Unregister, reset the streams still open, stop the loop thread and the handler
        threads; idempotent. Waits up to ``timeout`` for handlers still running (their calls
        now fail at once); one still running after that is logged and let be."""
        self._l.close(timeout)

    # -- the node's calls ----------------------------------------------------------------------

    def info(self, *, timeout: Seconds = CALL) -> NodeInfo:
        return self._run(lambda: self._l.anode.info(), timeout)

    def connect_peer(self, addr: str, timeout: Seconds = None) -> PeerInfo:
        """Dial ``addr`` (ending in ``/p2p/<peer id>``) within ``timeout`` (None: the node's)."""
        return self._run(lambda: self._l.anode.connect_peer(addr, timeout), _plus(timeout))

    def disconnect_peer(self, peer_id: str, *, timeout: Seconds = CALL) -> None:
        return self._run(lambda: self._l.anode.disconnect_peer(peer_id), timeout)

    def peers(self, *, timeout: Seconds = CALL) -> list[PeerInfo]:
        return self._run(lambda: self._l.anode.peers(), timeout)

    def status(self, *, timeout: Seconds = CALL) -> dict[str, Any]:
        return self._run(lambda: self._l.anode.status(), timeout)

    def register(
        self, protocols: Sequence[str], handler: Callable[[Stream], object], *, timeout: Seconds = CALL,
        **options: Unpack[RegisterOptions],
    ) -> Registration:  # fmt: skip
        """Mount ``protocols``: ``handler(stream)`` runs on a handler thread for each inbound
        stream; returning closes it, raising resets it (``options``: ``share``,
        ``accept_timeout``). Keep the Registration: dropping it unregisters."""

        async def on_stream(astream: Any) -> None:
            await self._l.in_pool(handler, Stream(self._l, astream))

        async def mount() -> Registration:
            return Registration(self._l, await self._l.anode.register(protocols, on_stream, **options))

        return self._run(mount, timeout)

    @contextlib.contextmanager
    def handle(
        self, protocols: Sequence[str], handler: Callable[[Stream], object], *, timeout: Seconds = CALL,
        **options: Unpack[RegisterOptions],
    ) -> Iterator[Registration]:  # fmt: skip
        """Serve ``protocols`` with ``handler`` while the block runs (as :meth:`register`)."""
        registration = self.register(protocols, handler, timeout=timeout, **options)
        try:
            yield registration
        finally:
            with contextlib.suppress(NodeUnavailable):
                registration.unregister(timeout=timeout)

    def open_stream(
        self, peer_id: str, protocols: Sequence[str], addrs: Sequence[str] | None = None,
        timeout: float = DEFAULT_OPEN_TIMEOUT,
    ) -> Stream:  # fmt: skip
        """A stream to ``peer_id`` in the first of ``protocols`` it speaks; raises as asyncio's."""

        async def opening() -> Stream:
            return Stream(self._l, await self._l.anode.open_stream(peer_id, protocols, addrs, timeout))

        return self._run(opening, _plus(timeout))

    def request(
        self, peer_id: str, protocols: Sequence[str], data: Bytes, *, addrs: Sequence[str] | None = None,
        timeout: float = DEFAULT_OPEN_TIMEOUT, max_size: int = DEFAULT_MAX_MESSAGE, close_write: bool = True,
    ) -> bytes:  # fmt: skip
        """Send one request and return the reply (as the asyncio ``request``)."""
        kw: dict[str, Any] = {"addrs": addrs, "timeout": timeout, "max_size": max_size, "close_write": close_write}
        return self._run(lambda: self._l.anode.request(peer_id, protocols, data, **kw), _plus(timeout))

    def serve(
        self, protocols: Sequence[str], fn: Callable[[bytes, RequestInfo], bytes], *,
        max_size: int = DEFAULT_MAX_MESSAGE, timeout: Seconds = None, share: bool = False,
    ) -> Registration:  # fmt: skip
        """Answer one request per stream: ``fn(request, info) -> reply`` runs on a handler
        thread, raising resets that stream; ``timeout`` bounds each exchange (as the asyncio
        ``serve``), mounting waits up to 30 s. Keep the Registration."""

        async def respond(request: bytes, info: RequestInfo) -> bytes:
            return await self._l.in_pool(fn, request, info)

        async def mount() -> Registration:
            areg = await self._l.anode.serve(protocols, respond, max_size=max_size, timeout=timeout, share=share)
            return Registration(self._l, areg)

        return self._run(mount, CALL)

    def peer_events(self, queue_size: int = 256, *, timeout: Seconds = CALL) -> PeerEvents:
        """The node's peer events from now on (subscribed when this returns): a blocking
        iterator. ``queue_size`` as for the asyncio ``peer_events``."""
        return self._run(lambda: self._subscribe(PeerEvents, queue_size, None), timeout)

    def on_peer_event(
        self, callback: Callable[[PeerEvent], object], queue_size: int = 256, *, timeout: Seconds = CALL
    ) -> Subscription:
        """Run ``callback(event)`` on a handler thread for each peer event, in order, one at a
        time (one that raises is logged). Keep the returned handle; ``close()`` it to stop."""
        return self._run(lambda: self._subscribe(Subscription, queue_size, callback), timeout)

    async def _subscribe(self, cls: type[_S], queue_size: int, callback: Callable[[PeerEvent], object] | None) -> _S:
        events = await self._l.anode.peer_events(queue_size).start()
        return cls(self._l, self._l.hold(_Events(self._l, events, callback)))


def _plus(timeout: Seconds) -> Seconds:
    return None if timeout is None else timeout + MARGIN


class _Wrapper:
    """Holds an asyncio object by token in ``engine``; it dies with the wrapper, on the loop."""

    def __init__(self, engine: _Loop, token: int) -> None:
        self._l, self._token = engine, token
        weakref.finalize(self, engine.release, token).atexit = False

    def _call(self, name: str, *args: Any, timeout: Seconds) -> Any:
        return self._l.run(lambda: getattr(self._held(), name)(*args), timeout)

    def _held(self) -> Any:  # on the loop thread
        if (obj := self._l.held.get(self._token)) is None:
            raise NodeUnavailable(f"{self!r} was closed")
        return obj


class Registration(_Wrapper):
    """Protocol ids mounted for a node (see :meth:`Node.register`)."""

    def __init__(self, engine: _Loop, areg: Any) -> None:  # made on the loop thread
        super().__init__(engine, engine.hold(areg))
        self.protocols: tuple[str, ...] = areg.protocols
        self.id: int = areg.id

    def __repr__(self) -> str:
        return f"<blocking Registration {list(self.protocols)}>"

    def unregister(self, *, timeout: Seconds = CALL) -> None:
        """Unmount the protocol ids (idempotent). Streams already open keep working."""
        self._call("unregister", timeout=timeout)


class Stream(_Wrapper):
    """A libp2p stream for threads: the asyncio :class:`~logos_p2p.client.Stream`'s methods,
    blocking, each with ``timeout`` (None, the default: as long as it takes).

    ``with stream:`` closes it, or resets it on an exception; ``for chunk in stream:`` reads
    until the peer half-closes. ``reset`` raises no logos-p2p error.
    """

    def __init__(self, engine: _Loop, astream: Any) -> None:  # made on the loop thread
        super().__init__(engine, engine.hold(astream))
        self.id: int = astream.id
        self.protocol: str = astream.protocol
        self.remote_peer_id: str = astream.remote_peer_id
        self.remote_addr: str = astream.remote_addr
        self.direction: str = astream.direction

    def __repr__(self) -> str:
        return f"<blocking Stream #{self.id} {self.direction} {self.protocol} {self.remote_peer_id[-8:]}>"

    @property
    def state(self) -> State:
        return self._l.run(lambda: _now(lambda: self._held().state), CALL)  # type: ignore[no-any-return]

    def read(self, max_bytes: int = 65536, *, timeout: Seconds = None) -> bytes:
        return bytes(self._call("read", max_bytes, timeout=timeout))

    def read_exactly(self, n: int, *, timeout: Seconds = None) -> bytes:
        return bytes(self._call("read_exactly", n, timeout=timeout))

    def read_all(self, max_bytes: int | None = None, *, timeout: Seconds = None) -> bytes:
        return bytes(self._call("read_all", max_bytes, timeout=timeout))

    def read_lp(self, max_size: int = DEFAULT_MAX_LP, *, timeout: Seconds = None) -> bytes:
        return bytes(self._call("read_lp", max_size, timeout=timeout))

    def write(self, data: Bytes, *, timeout: Seconds = None) -> None:
        self._call("write", data, timeout=timeout)

    def write_lp(self, data: Bytes, *, timeout: Seconds = None) -> None:
        self._call("write_lp", data, timeout=timeout)

    def close_write(self, *, timeout: Seconds = None) -> None:
        self._call("close_write", timeout=timeout)

    def close(self, *, timeout: Seconds = None) -> None:
        self._call("close", timeout=timeout)

    def reset(self, *, timeout: Seconds = CALL) -> None:
        with contextlib.suppress(LogosP2PError):
            self._call("reset", timeout=timeout)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if data := self.read():
            return data
        raise StopIteration

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close() if exc_type is None else self.reset()


class Subscription(_Wrapper):
    """What :meth:`Node.on_peer_event` returns: ``close()`` (or leaving ``with``, or dropping
    it) stops the callbacks; one already running finishes on its thread."""

    def close(self, *, timeout: Seconds = CALL) -> None:
        """Unsubscribe (idempotent)."""
        held, token = self._l.held, self._token
        with contextlib.suppress(NodeUnavailable):
            self._l.run(lambda: _closing(held.pop(token, None)), timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


_S = TypeVar("_S", bound=Subscription)


class PeerEvents(Subscription):
    """``for event in node.peer_events():`` blocks for each event, ``get(timeout=)`` too; the
    events end with the connection to the node. ``close()``, leaving ``with`` or dropping it
    unsubscribes."""

    def get(self, timeout: Seconds = None) -> PeerEvent:
        """The next event; ``Timeout`` if none comes in time; ``StopIteration`` at the end."""
        if (event := self._call("get", timeout=timeout)) is _Events.END:
            raise StopIteration
        return event  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[PeerEvent]:
        return self

    def __next__(self) -> PeerEvent:
        return self.get()


def connect(address: str | None = None, *, timeout: float = 10.0, handler_threads: int = 8, **kwargs: Any) -> Node:
    """Connect to a node as :func:`logos_p2p.client.connect` does (its other keyword arguments
    -- ``name``, ``data_path``, ``token``, ``fingerprint``, ``tls_*`` ... -- pass through), on
    a loop thread of the node's own; handlers run on at most ``handler_threads`` threads.

    Returns the connected :class:`Node`: close it, or use it as a context manager.
    """
    return Node(address, timeout, handler_threads, kwargs)
