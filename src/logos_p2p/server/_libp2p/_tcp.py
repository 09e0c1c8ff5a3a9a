"""Fix 10: the node's TCP connections read and write with raw non-blocking calls.

py-libp2p's ``TrioTCPStream`` takes a trio lock and goes through trio's socket stream
for every read and write: each costs scheduler checkpoints even when the call succeeds
at once, and a Noise message is two reads (its length, then its body) and one write.
These do the call directly and wait (for the socket, or for the lock another reader or
writer holds) only when they must; errors and end of stream read as py-libp2p's do.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import trio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.io.trio import TrioTCPStream

A = TypeVar("A")
R = TypeVar("R")

RECEIVE_SIZE = 65536  # trio's default for receive_some(None)


async def _holding(lock: trio.Lock, call: Coroutine[Any, Any, R]) -> R:
    """``call`` run under ``lock``, taken at once when free (no checkpoint), or waited for
    behind the reader or writer that holds it."""
    try:
        if lock.locked():
            async with lock:
                return await call
        await trio.lowlevel.checkpoint_if_cancelled()
        lock.acquire_nowait()
    except BaseException:
        call.close()  # cancelled before it ran: no "never awaited" warning
        raise
    try:
        return await call
    finally:
        lock.release()


def _broken(error: OSError) -> ConnectionClosedError:
    return ConnectionClosedError(f"TCP connection reset by remote peer: {error}", transport="tcp")


async def read(self: TrioTCPStream, n: int | None = None) -> bytes:
    """Up to ``n`` bytes (65,536 if None), waiting only when none are there; b"" at end
    of stream or once closed here (as py-libp2p's read)."""
    if n == 0:
        return b""
    size = RECEIVE_SIZE if n is None else n
    return await _holding(self.read_lock, _receive(self.stream.socket, size))


async def _receive(sock: Any, size: int) -> bytes:
    data = await _unblocked(sock, os.read, size, trio.lowlevel.wait_readable)
    return b"" if data is None else data


async def _unblocked(
    sock: Any, call: Callable[[int, A], R], arg: A, wait: Callable[[int], Awaitable[None]]
) -> R | None:
    """``call(fd, arg)`` on the socket's descriptor, after ``wait(fd)`` each time it would
    block; None once the socket is closed here. A failure is the peer's reset."""
    while True:
        fd = sock.fileno()
        if fd == -1:
            return None
        try:
            return call(fd, arg)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as error:
            raise _broken(error) from error
        try:
            await wait(fd)
        except trio.ClosedResourceError:
            return None


async def write(self: TrioTCPStream, data: bytes) -> None:
    """All of ``data``, waiting only when the socket is full or another write is under
    way; nothing once closed here (as py-libp2p's write)."""
    await _holding(self.write_lock, _send_all(self.stream.socket, memoryview(data)))


async def _send_all(sock: Any, view: memoryview) -> None:
    while view:
        sent = await _unblocked(sock, os.write, view, trio.lowlevel.wait_writable)
        if sent is None:
            return
        view = view[sent:]


def install() -> None:
    """Replace ``TrioTCPStream``'s read and write (process-wide, once: ``install_fixes``)."""
    TrioTCPStream.read = read  # type: ignore[method-assign]
    TrioTCPStream.write = write  # type: ignore[method-assign]
