"""Fix 11: an inbound yamux stream's ACK goes out with the stream's first frame.

py-libp2p's yamux answers a peer's SYN with a frame of its own (a window update carrying
only the ACK flag), written by the connection's reader before it reads on: a Noise
message and a TCP send, and a message for the peer to decrypt. Every inbound stream on
the node sends a frame at once anyway (multistream-select's header), so the ACK is held
for it and both frames go in one message.

The ACK stays a frame of its own, not a flag on the next one: py-libp2p's yamux ignores
FIN and RST on a frame that carries ACK (go-yamux sets the flag on the first frame). A
stream that sends nothing before it leaves yamux's table sends no ACK, as py-libp2p does
for a stream reset on arrival.
"""

from __future__ import annotations

import functools
import struct
from typing import Any

from libp2p.stream_muxer.yamux.yamux import (
    FLAG_ACK,
    HEADER_SIZE,
    TYPE_WINDOW_UPDATE,
    YAMUX_HEADER_FORMAT,
    Yamux,
)

_ACK = struct.Struct(YAMUX_HEADER_FORMAT)
_SID = struct.Struct(">I")  # a yamux header's stream id, at offset 4
_SID_AT = 4


def _held_ack(data: bytes) -> int | None:
    """The stream id if ``data`` is a bare ACK (a window update of 0 with only the ACK flag)."""
    if len(data) != HEADER_SIZE:
        return None
    _version, typ, flags, sid, length = struct.unpack(YAMUX_HEADER_FORMAT, data)
    if typ == TYPE_WINDOW_UPDATE and flags == FLAG_ACK and length == 0:
        return int(sid)
    return None


def _write_with_ack(original: Any) -> Any:
    @functools.wraps(original)
    async def write_frame(self: Yamux, data: bytes) -> None:
        held: set[int] | None = getattr(self, "_logos_acks", None)
        if held is None:
            held = self._logos_acks = set()  # type: ignore[attr-defined]
        sid = _held_ack(data)
        if sid is not None and sid in self.streams:
            held.add(sid)
            return
        if held and len(data) >= HEADER_SIZE:
            sid = _SID.unpack_from(data, _SID_AT)[0]
            if sid in held:
                held.discard(sid)
                data = _ACK.pack(0, TYPE_WINDOW_UPDATE, FLAG_ACK, sid, 0) + data
        await original(self, data)

    return write_frame


def _forgetting_acks(original: Any) -> Any:
    """A stream leaving yamux's table drops its held ACK (its id may come again)."""

    @functools.wraps(original)
    def finalize(self: Yamux, stream: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, stream, *args, **kwargs)
        held = getattr(self, "_logos_acks", None)
        if held and stream.stream_id not in self.streams:
            held.discard(stream.stream_id)
        return result

    return finalize


def install() -> None:
    """Hold ACKs for the stream's first frame (process-wide, once: ``install_fixes``)."""
    Yamux._write_frame = _write_with_ack(Yamux._write_frame)  # type: ignore[method-assign]
    Yamux._finalize_stream_locked = _forgetting_acks(Yamux._finalize_stream_locked)  # type: ignore[method-assign]
