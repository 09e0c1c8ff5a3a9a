"""The bytes of a stream's framing, one definition for the node and the module library.

* Length-prefixed frames: an unsigned LEB128 varint, then that many bytes (the
  framing of nim-libp2p's ``readLp``/``writeLp``).
* The local data channel's frames on a stream's own socket (see "The local data
  channel" in the schema): one ``SOCK_SEQPACKET`` message is one frame, its first
  byte the kind.
"""

from __future__ import annotations

from typing import Final

MAX_VARINT_LEN: Final = 10  # 64-bit values

# data channel stream frames
DATA: Final = b"D"  # followed by 1..MAX_DATA bytes of the stream
EOF: Final = b"E"  # half-close
CLOSE: Final = b"C"  # close (module -> node only)
MAX_DATA: Final = 65536  # payload bytes in one DATA frame


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint cannot encode a negative value")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(buf: bytes | bytearray | memoryview, start: int = 0) -> tuple[int, int] | None:
    """Decode a varint at ``buf[start:]``: ``(value, length)``, or None if incomplete.

    Raises ValueError for a varint longer than 10 bytes or a non-minimal one
    whose value overflows 64 bits.
    """
    value = 0
    shift = 0
    end = len(buf)
    for i in range(MAX_VARINT_LEN):
        pos = start + i
        if pos >= end:
            return None
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 64:
                raise ValueError("uvarint overflows 64 bits")
            return value, i + 1
        shift += 7
    raise ValueError("uvarint longer than 10 bytes")


def lp_frame(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as one length-prefixed frame."""
    return encode_uvarint(len(data)) + bytes(data)
