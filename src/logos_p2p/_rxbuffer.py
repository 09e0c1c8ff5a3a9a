"""A stream's received bytes, not yet consumed: one sans-I/O buffer for both sides.

The node's capability bridge and the module library's :class:`~logos_p2p.client.Stream`
read from it the same way, and frame it the same way: whoever feeds it (a libp2p read, a
push, a socket) and whoever waits on it (trio or asyncio) are the caller's business.

:meth:`RxBuffer.peek` and friends say what a read would return and how many bytes it
uses, without consuming: the node's pull path hands bytes out and drops them only when
the module acknowledges their position. ``take*`` consume at once. ``need`` is how many
bytes a framed reader waits for (a bound for whoever fills the buffer).
"""

from __future__ import annotations

from ._frames import decode_uvarint
from .errors import FrameTooLarge


class RxBuffer:
    __slots__ = ("base", "data", "need")

    def __init__(self) -> None:
        self.data = bytearray()
        self.base = 0  # stream offset of data[0]
        self.need = 0  # a framed reader waits for this many bytes buffered

    def __len__(self) -> int:
        return len(self.data)

    def __bool__(self) -> bool:
        return bool(self.data)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def consume(self, n: int) -> None:
        if n:
            del self.data[:n]
            self.base += n

    def clear(self) -> None:
        """Drop every byte (a close or a reset): offsets stay where the reader had them."""
        self.data.clear()

    # -- what a read would return, and how many bytes it uses ---------------------------

    def peek(self, max_bytes: int) -> tuple[bytes, int] | None:
        """Up to ``max_bytes`` bytes; None when empty."""
        if not self.data:
            return None
        n = min(len(self.data), max_bytes)
        return bytes(self.data[:n]), n

    def peek_exactly(self, n: int) -> tuple[bytes, int] | None:
        """Exactly ``n`` bytes; None (and ``need`` raised) until they are all here."""
        if len(self.data) < n:
            self.need = n
            return None
        return bytes(self.data[:n]), n

    def peek_frame(self, max_size: int) -> tuple[bytes, int] | None:
        """One length-prefixed frame's payload and its length with the prefix; None (and
        ``need`` raised once the length is known) until it is all here.

        :raises FrameTooLarge: the length is malformed or over ``max_size`` (nothing used).
        """
        try:
            head = decode_uvarint(self.data)
        except ValueError as exc:
            raise FrameTooLarge(f"malformed frame length: {exc}") from exc
        if head is None:
            return None
        length, head_len = head
        if length > max_size:
            raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {max_size}")
        total = head_len + length
        if len(self.data) < total:
            self.need = total
            return None
        return bytes(self.data[head_len:total]), total

    # -- consuming reads ------------------------------------------------------------------

    def take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes (``b""`` when empty)."""
        return self._taken(self.peek(max_bytes)) or b""

    def take_exactly(self, n: int) -> bytes | None:
        return self._taken(self.peek_exactly(n))

    def take_frame(self, max_size: int) -> bytes | None:
        return self._taken(self.peek_frame(max_size))

    def _taken(self, got: tuple[bytes, int] | None) -> bytes | None:
        """What a peek gave, consumed."""
        if got is None:
            return None
        self.consume(got[1])
        return got[0]
