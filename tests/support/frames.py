"""The muxer frames an in-process py-libp2p peer receives, as the node sent them.

Noise hides the frames on the TCP socket, so the recorder listens one layer
up, where the peer's muxer reads them (after decryption): every byte yamux
reads (its headers and bodies, in order, through ``read_exactly``) and every
message mplex reads (``Mplex.read_message``). Install it before the peer
connects, so that each connection is recorded from its first frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from libp2p.stream_muxer.mplex import mplex as mplex_module
from libp2p.stream_muxer.yamux import yamux as yamux_module

Y = yamux_module
YAMUX_TYPES = {Y.TYPE_DATA: "data", Y.TYPE_WINDOW_UPDATE: "window", Y.TYPE_PING: "ping", Y.TYPE_GO_AWAY: "goaway"}
YAMUX_FLAGS = {Y.FLAG_SYN: "syn", Y.FLAG_ACK: "ack", Y.FLAG_FIN: "fin", Y.FLAG_RST: "rst"}
# mplex header tags: the kind, and whether the sender opened the stream
MPLEX_TAGS = {
    0: ("new", True),
    1: ("data", False),
    2: ("data", True),
    3: ("close", False),
    4: ("close", True),
    5: ("reset", False),
    6: ("reset", True),
}


@dataclass(frozen=True)
class Frame:
    kind: str  # data, window, ping, goaway (yamux); new, data, close, reset (mplex)
    stream: Any  # (the receiving connection, yamux stream id or mplex (channel, the sender opened it))
    flags: frozenset[str]
    length: int  # payload bytes (yamux window update: the increment)

    @property
    def ends_stream(self) -> bool:
        """The sender's own FIN or RST (the only frames a finished stream may still get)."""
        return self.kind in ("close", "reset") or bool(self.flags & {"fin", "rst"})


def stream_key(net_stream: Any) -> Any:
    """How :attr:`Frame.stream` names the frames *from the other side* of this peer's stream."""
    conn = net_stream.muxed_conn
    sid = net_stream.muxed_stream.stream_id
    if isinstance(sid, int):
        return (id(conn.secured_conn), sid)
    return (id(conn), (sid.channel_id, not sid.is_initiator))


class _YamuxParser:
    def __init__(self, conn: int) -> None:
        self.conn = conn
        self.buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        self.buf += data
        while len(self.buf) >= Y.HEADER_SIZE:
            _version, typ, flags, sid, length = struct.unpack(Y.YAMUX_HEADER_FORMAT, self.buf[: Y.HEADER_SIZE])
            body = length if typ == Y.TYPE_DATA else 0
            if len(self.buf) < Y.HEADER_SIZE + body:
                return
            del self.buf[: Y.HEADER_SIZE + body]
            names = frozenset(name for bit, name in YAMUX_FLAGS.items() if flags & bit)
            yield Frame(YAMUX_TYPES.get(typ, str(typ)), (self.conn, sid), names, length)


class FrameRecorder:
    """Every frame the peer's muxers read, per connection, in arrival order."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._parsers: dict[int, _YamuxParser] = {}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        read_exactly = yamux_module.read_exactly
        read_message = mplex_module.Mplex.read_message

        async def recording_read_exactly(reader: Any, n: int, *args: Any, **kwargs: Any) -> bytes:
            data: bytes = await read_exactly(reader, n, *args, **kwargs)
            parser = self._parsers.setdefault(id(reader), _YamuxParser(id(reader)))
            self.frames += parser.feed(data)
            return data

        async def recording_read_message(conn: Any) -> tuple[int, int, bytes]:
            channel, flag, message = await read_message(conn)
            kind, sender_opened = MPLEX_TAGS.get(flag, (str(flag), False))
            self.frames.append(Frame(kind, (id(conn), (channel, sender_opened)), frozenset(), len(message)))
            return channel, flag, message

        monkeypatch.setattr(yamux_module, "read_exactly", recording_read_exactly)
        monkeypatch.setattr(mplex_module.Mplex, "read_message", recording_read_message)

    def mark(self) -> int:
        """A point in the record; :meth:`since` returns what came after it."""
        return len(self.frames)

    def since(self, mark: int, stream: Any) -> list[Frame]:
        return [f for f in self.frames[mark:] if f.stream == stream]

    def of(self, stream: Any) -> list[Frame]:
        return self.since(0, stream)
