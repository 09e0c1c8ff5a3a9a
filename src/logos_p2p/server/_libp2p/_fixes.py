"""py-libp2p 0.8.1's gaps the node closes by patching it (see the package docstring for
each): mplex full duplex and resets marked first (2, 1), shielded secure-channel writes
(5), readers woken when yamux drops their stream (4) or renews their event (8), no
window update for a finished stream (6), window updates at half a window (9), raw TCP
calls (10, in ``_tcp``), the ACK on a stream's first frame (11, in ``_frames``), stream
notifications without a task per listener (12).
:func:`install_fixes` installs them, once, process-wide."""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

import trio
from libp2p.network.stream.exceptions import StreamError as Libp2pStreamError
from libp2p.network.swarm import Swarm
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable, MuxedStreamError
from libp2p.stream_muxer.mplex.mplex import Mplex
from libp2p.stream_muxer.mplex.mplex_stream import MplexStream
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from . import _frames, _tcp

log = logging.getLogger("logos_p2p.node")

# py-libp2p's NetStream; its INetStream ABC lacks muxed_stream/close_write, which we use.
INetStream = Any


# Remote I/O errors that mean "this stream is gone".
_STREAM_GONE = (
    Libp2pStreamError,
    MuxedStreamError,
    MuxedConnUnavailable,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


# -- fix 2: full-duplex mplex --------------------------------------------------------


class _DuplexLock:
    """Stands in for ``ReadWriteLock`` on mplex streams: independent locks."""

    __slots__ = ("_read", "_write")

    def __init__(self) -> None:
        self._read = trio.Lock()
        self._write = trio.Lock()

    def read_lock(self) -> trio.Lock:
        return self._read

    def write_lock(self) -> trio.Lock:
        return self._write


_fixes_installed = False


def install_fixes() -> None:
    """Patch py-libp2p with every fix above (see the module docstring), once."""
    global _fixes_installed
    if _fixes_installed:
        return
    original_init = MplexStream.__init__

    def init(self: MplexStream, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.rw_lock = _DuplexLock()  # type: ignore[assignment]

    original_handle_reset = Mplex._handle_reset

    async def handle_reset(self: Mplex, stream_id: Any) -> None:
        stream = self.streams.get(stream_id) if self.streams is not None else None
        if stream is not None and not stream.event_remote_closed.is_set():
            stream.event_reset.set()  # before the original wakes the reader
        await original_handle_reset(self, stream_id)

    original_yamux_init = Yamux.__init__

    def yamux_init(self: Yamux, *args: Any, **kwargs: Any) -> None:
        original_yamux_init(self, *args, **kwargs)
        self.stream_events = _WakingEvents(self.stream_events)

    Yamux.__init__ = yamux_init  # type: ignore[method-assign]
    MplexStream.__init__ = init  # type: ignore[method-assign]
    Mplex._handle_reset = handle_reset  # type: ignore[method-assign]
    SecureSession.write = _whole_write(SecureSession.write)  # type: ignore[method-assign]
    YamuxStream.send_window_update = _while_receiving(YamuxStream.send_window_update)  # type: ignore[method-assign]
    YamuxStream._auto_tune_and_send_window_update = _update_at_half_window  # type: ignore[method-assign]
    _tcp.install()
    _frames.install()
    Swarm._notify = _stream_events_inline(Swarm._notify)  # type: ignore[method-assign]
    Yamux._finalize_stream_locked = _waking_its_reader(Yamux._finalize_stream_locked)  # type: ignore[method-assign]
    Yamux._sweep_stale_streams = _waking_dropped_readers(Yamux._sweep_stale_streams)  # type: ignore[method-assign]
    _fixes_installed = True


WRITE_STALL = 30.0  # seconds a shielded secure-channel write may take before the connection is closed


def _whole_write(original: Any) -> Any:
    """Fix 5: a secure-channel message is written whole or the connection is closed."""

    @functools.wraps(original)
    async def write(self: SecureSession, data: bytes) -> None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + WRITE_STALL) as stall:
            await original(self, data)
        if stall.cancelled_caught:
            with trio.CancelScope(shield=True):
                self._logos_broken = True  # type: ignore[attr-defined]  # a failed connection (_peers)
                with contextlib.suppress(Exception):
                    await self.close()
                raise OSError(f"a secure-channel write stalled for {WRITE_STALL:g}s; connection closed")
        await trio.lowlevel.checkpoint_if_cancelled()

    return write


class _WakingEvents(dict[int, trio.Event]):
    """Fix 8: a yamux connection's wake-up events; replacing one sets it first."""

    __slots__ = ()

    def __setitem__(self, sid: int, event: trio.Event) -> None:
        old = self.get(sid)
        super().__setitem__(sid, event)
        if old is not None and old is not event:
            old.set()


def _waking_its_reader(original: Any) -> Any:
    """Fix 4: finalizing a stream that leaves yamux's table wakes its reader."""

    @functools.wraps(original)
    def finalize(self: Yamux, stream: YamuxStream, *args: Any, **kwargs: Any) -> Any:
        event = self.stream_events.get(stream.stream_id)
        result = original(self, stream, *args, **kwargs)
        if event is not None and stream.stream_id not in self.stream_events:
            event.set()
        return result

    return finalize


def _waking_dropped_readers(original: Any) -> Any:
    """Fix 4: the sweeper's dropping streams from a yamux connection's table wakes their readers."""

    @functools.wraps(original)
    def drop(self: Yamux, *args: Any, **kwargs: Any) -> Any:
        events = dict(self.stream_events)
        result = original(self, *args, **kwargs)
        for sid, event in events.items():
            if sid not in self.stream_events:
                event.set()
        return result

    return drop


def _while_receiving(original: Any) -> Any:
    """Fix 6: no window update once the peer's FIN or RST arrived (or the stream is gone)."""

    @functools.wraps(original)
    async def send_window_update(self: YamuxStream, increment: int, skip_lock: bool = False) -> None:
        if self.recv_closed or self.reset_received or self.closed:
            return
        await original(self, increment, skip_lock)

    return send_window_update


# The first read of a stream doubles its window this many times (256 KiB -> 1 MiB), as
# py-libp2p's per-read updates did within the first few reads, so a peer may still write
# a MiB before the module reads (the gate may refuse each doubling).
EARLY_DOUBLINGS = 2


async def _update_at_half_window(self: YamuxStream, *, bytes_read: int = 0) -> None:
    """Fix 9: give the peer its window back once half of it was read (go-yamux's rule),
    not after every read; the first read grows the window at once.

    ``bytes_read`` is only a hint here: what was read and not yet given back is the
    shortfall of what the peer may send (window plus unread bytes) against the target."""
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        target = self.target_recv_window
        shortfall = target - (self.recv_window + buffered)
        first = not getattr(self, "_logos_grown", False)
        if not first and shortfall < target // 2:
            return
        self._logos_grown = True  # type: ignore[attr-defined]
        increment = max(shortfall, 0)
        self.recv_window += increment
        for _ in range(EARLY_DOUBLINGS if first else 1):
            increment += self._apply_autotune_epoch(buffered)  # grows the target (and the window) or not
    if increment > 0:
        await self.send_window_update(increment, skip_lock=True)


_STREAM_EVENTS = frozenset({"opened_stream", "closed_stream"})


def _stream_events_inline(original: Any) -> Any:
    """Fix 12: a stream's opened/closed notifications call the listeners in turn, inline
    (as go-libp2p does), not in a nursery with a task for each: two nurseries and six
    tasks per stream on the node, whose listeners (py-libp2p's tag store and identify,
    the node's peer watch) do nothing for streams. A listener that raises is logged,
    as py-libp2p does."""

    @functools.wraps(original)
    async def notify(self: Swarm, method: str, *args: Any) -> None:
        if method not in _STREAM_EVENTS:
            await original(self, method, *args)
            return
        for notifee in list(self.notifees):
            try:
                await getattr(notifee, method)(self, *args)
            except Exception:
                log.exception("a libp2p listener's %s.%s raised", type(notifee).__name__, method)

    return notify
