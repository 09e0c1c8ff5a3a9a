"""Stream I/O through py-libp2p: read, write, half-close, reset, and what the byte path
asks of the muxer (buffered bytes, window credit, waiting for more, the end of the wire);
the truth behind ``StreamEOF`` (fix 1) and one-frame-at-a-time writes (fixes 3 and 7).
Every libp2p error is translated here into :class:`~logos_p2p.errors.StreamReset`."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
from typing import Any

import multiaddr
import trio
from libp2p.network.stream.exceptions import StreamClosed as Libp2pStreamClosed
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.mplex.constants import CHUNK_SIZE as MPLEX_CHUNK
from libp2p.stream_muxer.mplex.mplex_stream import MplexStream
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE as YAMUX_HEADER_SIZE
from libp2p.stream_muxer.yamux.yamux import MAX_MESSAGE_SIZE as YAMUX_MAX_MESSAGE
from libp2p.stream_muxer.yamux.yamux import YamuxStream

from ...errors import Cause, InvalidArgument, LogosP2PError, StreamReset, reset_error
from ._fixes import _STREAM_GONE

log = logging.getLogger("logos_p2p.node")

# py-libp2p's NetStream; its INetStream ABC lacks muxed_stream/close_write, which we use.
INetStream = Any

# -- fix 1: the truth behind StreamEOF --------------------------------------------------


def _conn_down(net_stream: INetStream) -> bool:
    conn = getattr(net_stream, "muxed_conn", None)
    event = getattr(conn, "event_shutting_down", None)
    return bool(event is not None and event.is_set())


def _reset_seen(net_stream: INetStream) -> bool:
    muxed = net_stream.muxed_stream
    if isinstance(muxed, YamuxStream):
        return muxed.reset_received
    if isinstance(muxed, MplexStream):
        return muxed.event_reset.is_set()
    return False


def end_cause(net_stream: INetStream) -> Cause | None:
    """After ``StreamEOF`` (or :func:`wait_ended`): None for a clean end, else why the stream died."""
    refused = refusal(net_stream)
    if refused is not None:
        return refused[0]
    if _conn_down(net_stream):
        return Cause.CONNECTION_LOST
    if _reset_seen(net_stream):
        return Cause.REMOTE_RESET
    return None


def _gone(net_stream: INetStream, exc: BaseException) -> StreamReset:
    refused = refusal(net_stream)
    if refused is not None:
        error = reset_error(*refused)
    else:
        cause = Cause.CONNECTION_LOST if _conn_down(net_stream) else Cause.REMOTE_RESET
        error = reset_error(cause, f"{cause.value}: {exc}" if str(exc) else "")
    error.__cause__ = exc
    return error


class _translate:
    """libp2p errors as logos-p2p errors. The node only writes before its own
    half-close, so a "closed" stream under a write was closed underneath it:
    mplex marks a stream the peer reset as closed. That is a reset.

    A class rather than a generator: it wraps every read and write of the byte
    path, where ``contextlib.contextmanager`` costs measurable CPU.
    """

    __slots__ = ("net_stream",)

    def __init__(self, net_stream: INetStream) -> None:
        self.net_stream = net_stream

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, LogosP2PError):
            return
        if isinstance(exc, (Libp2pStreamClosed, *_STREAM_GONE)):
            raise _gone(self.net_stream, exc) from exc


# -- stream I/O ----------------------------------------------------------------------------


async def read(net_stream: INetStream, max_bytes: int) -> bytes | None:
    """Up to ``max_bytes`` bytes; None at a clean end of stream.

    Raises :class:`StreamReset` (or :class:`ConnectionLost`) when the stream died.
    """
    with _translate(net_stream):
        try:
            data: bytes = await net_stream.read(max_bytes)
        except StreamEOF as exc:
            cause = end_cause(net_stream)
            if cause is None:
                return None
            raise reset_error(cause) from exc
    if not data:  # some muxers return b"" at the end
        cause = end_cause(net_stream)
        if cause is None:
            return None
        raise reset_error(cause)
    return data


_WINDOW_POLL = (0.001, 0.02)  # first and longest wait for a yamux window update


async def write(net_stream: INetStream, data: bytes | memoryview) -> None:
    """Write all of ``data``; blocks while the peer's receive window is full."""
    muxed = net_stream.muxed_stream
    with _translate(net_stream):
        if isinstance(muxed, MplexStream):
            view = memoryview(data).cast("B")
            for start in range(0, len(view), MPLEX_CHUNK):  # fix 7: frame by frame, up to a reset
                if muxed.event_reset.is_set():
                    raise _gone(net_stream, MuxedStreamError("stream reset while writing"))
                await net_stream.write(bytes(view[start : start + MPLEX_CHUNK]))
            return
        if not isinstance(muxed, YamuxStream):
            await net_stream.write(bytes(data))
            return
        view = memoryview(data).cast("B")  # yamux slices it and copies once into the frame
        delay = _WINDOW_POLL[0]
        while view:
            window = muxed.send_window
            if window <= 0:
                if muxed.closed or muxed.send_closed or _conn_down(net_stream):
                    raise _gone(net_stream, MuxedStreamError("stream closed while waiting for send window"))
                await trio.sleep(delay)
                delay = min(delay * 2, _WINDOW_POLL[1])
                continue
            delay = _WINDOW_POLL[0]
            chunk, view = view[:window], view[window:]
            await net_stream.write(chunk)  # type: ignore[arg-type]  # yamux takes any buffer


async def close_write(net_stream: INetStream) -> None:
    with _translate(net_stream):
        await net_stream.close_write()


async def reset(net_stream: INetStream) -> None:
    """Reset on the wire; never raises (the stream may be gone already).

    A pending ``read`` on the stream returns or raises afterwards (fix 4).
    """
    await reset_muxed(net_stream.muxed_stream, net_stream.reset)


async def reset_muxed(muxed: Any, reset_it: Any = None) -> None:
    """:func:`reset` for a muxed stream that has no NetStream (yet).

    What the peer sent and nobody read is dropped with it: yamux keeps a reset stream's
    buffer for a reader that will never come, until its sweeper runs a minute later.
    """
    waiting = _reader_event(muxed)
    with contextlib.suppress(Exception):
        await (reset_it or muxed.reset)()
    if waiting is not None:
        waiting.set()
    if isinstance(muxed, YamuxStream):
        buffer = muxed.conn.stream_buffers.get(muxed.stream_id)
        if buffer:
            buffer.clear()


def _reader_event(muxed: Any) -> trio.Event | None:
    if isinstance(muxed, YamuxStream):
        return muxed.conn.stream_events.get(muxed.stream_id)
    return None


def _wake_reader(muxed: Any) -> None:
    event = _reader_event(muxed)
    if event is not None:
        event.set()


async def release(net_stream: INetStream) -> None:
    """Drop a stream whose both directions ended; never raises."""
    with contextlib.suppress(Exception):
        await net_stream.close()


def muxer_buffered(net_stream: INetStream) -> int:
    """Bytes the muxer holds for this stream that nobody has read yet."""
    muxed = net_stream.muxed_stream
    if isinstance(muxed, YamuxStream):
        return len(muxed.conn.stream_buffers.get(muxed.stream_id) or b"")
    if isinstance(muxed, MplexStream):
        return len(muxed._buf)
    return 0


def take(net_stream: INetStream, max_bytes: int) -> bytes | None:
    """Up to ``max_bytes`` of what the muxer already holds for this stream, at
    once (no await); None when nothing can be taken this way (use :func:`read`).

    Unlike :func:`read` this does not give the peer its window back: the
    caller does that with :func:`credit` once the bytes are on their way. A
    yamux read sends its window update *before* it returns the data: a write
    to the connection the bytes would wait for, for nothing.
    """
    muxed = net_stream.muxed_stream
    if not isinstance(muxed, YamuxStream) or muxed.closed or muxed.reset_received:
        return None
    buffer = muxed.conn.stream_buffers.get(muxed.stream_id)
    if not buffer:
        return None
    if len(buffer) <= max_bytes:
        data = bytes(buffer)
        buffer.clear()
    else:
        data = bytes(memoryview(buffer)[:max_bytes])
        del buffer[:max_bytes]
    return data


async def credit(net_stream: INetStream, taken: int) -> None:
    """Give the peer back the window of ``taken`` bytes from :func:`take` (as yamux's read does);
    nothing once the peer has half-closed or reset (fix 6)."""
    muxed = net_stream.muxed_stream
    with _translate(net_stream):
        await muxed._auto_tune_and_send_window_update(bytes_read=taken)


# A py-libp2p yamux sender cuts every write into frames of at most this payload.
YAMUX_FULL_FRAME = YAMUX_MAX_MESSAGE - YAMUX_HEADER_SIZE


def mid_write(net_stream: INetStream) -> bool:
    """Whether the bytes the muxer holds for this stream end on a full yamux
    frame: the peer's write was cut there and its next frame is on the way."""
    held = muxer_buffered(net_stream)
    return held > 0 and held % YAMUX_FULL_FRAME == 0


async def wait_more(net_stream: INetStream, beyond: int = 0, seconds: float = math.inf) -> None:
    """Return once the muxer holds more than ``beyond`` unread bytes for this
    stream, the stream can no longer receive, or ``seconds`` passed.

    Takes nothing from the stream: a following :func:`read` gets it all (a
    read cannot be cancelled safely, see ``_bridge``; this wait can).
    """
    muxed = net_stream.muxed_stream
    if not isinstance(muxed, YamuxStream):
        return  # the read waits instead
    if seconds == math.inf:
        await _wait_more(muxed, beyond)
    else:
        with trio.move_on_after(seconds):
            await _wait_more(muxed, beyond)


async def _wait_more(muxed: YamuxStream, beyond: int) -> None:
    conn, sid = muxed.conn, muxed.stream_id
    while True:
        event, buffer = conn.stream_events.get(sid), conn.stream_buffers.get(sid)
        if event is None or buffer is None or len(buffer) > beyond:
            return
        if muxed.recv_closed or muxed.reset_received or muxed.closed or conn.event_shutting_down.is_set():
            return
        if event.is_set():  # an earlier wake-up, already seen: renew it, as yamux's read does
            event = conn.stream_events[sid] = trio.Event()
        await event.wait()


async def wait_ended(net_stream: INetStream) -> None:
    """Return once the stream was reset or its connection went down; never at a clean end.

    Takes nothing from the stream, and can be cancelled: a bridge whose buffers are
    full (its module does not read) waits for room *and* this, or nothing would tell
    it that the wire under it died.
    """
    muxed = net_stream.muxed_stream
    if isinstance(muxed, YamuxStream):
        conn, sid = muxed.conn, muxed.stream_id
        while not (muxed.reset_received or conn.event_shutting_down.is_set() or refusal(net_stream)):
            event = conn.stream_events.get(sid)
            if event is None:  # gone from the muxer's table: nothing will set its event again
                if end_cause(net_stream) is not None:
                    return
                await conn.event_shutting_down.wait()  # only the connection's end is left to see
                return
            if event.is_set():  # an earlier wake-up, already seen: renew it, as yamux's read does
                event = conn.stream_events[sid] = trio.Event()
            await event.wait()
    elif isinstance(muxed, MplexStream):
        await muxed.event_reset.wait()
    else:  # pragma: no cover - the node speaks yamux and mplex only
        await trio.sleep_forever()


def describe(net_stream: INetStream) -> str:
    """The muxer's view of a stream, for the state snapshot."""
    muxed = net_stream.muxed_stream
    conn = getattr(muxed, "muxed_conn", None) or getattr(muxed, "conn", None)
    down = "down" if _conn_down(net_stream) else "up"
    refused = refusal(net_stream)
    if isinstance(muxed, YamuxStream):
        c = muxed.conn
        sid = muxed.stream_id
        flags = [n for n in ("closed", "send_closed", "recv_closed", "reset_received") if getattr(muxed, n)]
        event = c.stream_events.get(sid)
        waking = "none" if event is None else "set" if event.is_set() else "unset"
        return (
            f"yamux #{sid} {'+'.join(flags) or 'open'} conn {down} known={sid in c.streams} "
            f"held={len(c.stream_buffers.get(sid) or b'')} event={waking}"
            f" windows send={muxed.send_window} recv={muxed.recv_window}{f' refused={refused}' if refused else ''}"
        )
    if isinstance(muxed, MplexStream):
        flags = [n for n in ("event_local_closed", "event_remote_closed", "event_reset") if getattr(muxed, n).is_set()]
        return f"mplex {muxed.stream_id} {'+'.join(flags) or 'open'} conn {down}"
    return f"{type(muxed).__name__} conn {down} {conn!r}"


def remote_peer_id(net_stream: INetStream) -> str:
    return str(net_stream.muxed_conn.peer_id)


def _endpoint_maddr(getter: Any) -> str:
    """``/ip4/HOST/tcp/PORT`` for a ``get_remote_address`` method; "" if unknown."""
    try:
        endpoint = getter()
    except Exception:
        endpoint = None
    if not endpoint:
        return ""
    host, port = endpoint[0], endpoint[1]
    try:
        family = "ip6" if ipaddress.ip_address(host).version == 6 else "ip4"
    except ValueError:
        family = "dns"
    return f"/{family}/{host}/tcp/{port}"


def remote_addr(net_stream: INetStream) -> str:
    return _endpoint_maddr(net_stream.get_remote_address)


def peer_id_of(text: str) -> ID:
    """A peer id: base58 of a multihash (identity or sha2-256), as libp2p makes them."""
    try:
        peer = ID.from_base58(text)
    except Exception as exc:
        raise InvalidArgument(f"not a peer id: {text!r}") from exc
    raw = peer.to_bytes()
    if len(raw) < 3 or raw[0] not in (0x00, 0x12) or raw[1] != len(raw) - 2:
        raise InvalidArgument(f"not a peer id (not a multihash): {text!r}")
    return peer


def parse_peer_addr(text: str) -> PeerInfo:
    """A multiaddr that ends in /p2p/<peer id>."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(text))
    except Exception as exc:
        raise InvalidArgument(f"expected a multiaddr ending in /p2p/<peer id>, got {text!r}") from exc


def parse_addr(text: str) -> multiaddr.Multiaddr:
    try:
        return multiaddr.Multiaddr(text)
    except Exception as exc:
        raise InvalidArgument(f"not a multiaddr: {text!r}") from exc


def refusal(net_stream: INetStream) -> tuple[Cause, str] | None:
    """Why the gate reset this stream, if it did."""
    return getattr(net_stream.muxed_stream, "_logos_refused", None)
