"""A look inside a running node, for an operator: ``kill -USR1 <pid>``.

The node writes a snapshot to its log (level WARNING, logger
``logos_p2p.node.debug``) and keeps serving: every trio task with where it
waits, trio's run statistics, the asyncio tasks, the node's own accounting,
and on Linux the file descriptors trio's epoll watches beside those open.
A node that stops answering can so be examined without stopping it, as a Go
program answers SIGQUIT.

The handler is a plain Python signal handler: it runs on the node's thread
between two bytecodes, reads and never changes anything, and whatever it
cannot read it reports instead of failing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from . import _libp2p

if TYPE_CHECKING:
    from ._node import NodeService

log = logging.getLogger("logos_p2p.node.debug")


def install(node: NodeService) -> None:
    """Dump :func:`snapshot` to the log on SIGUSR1 (call from the thread running trio)."""

    def on_signal(signum: int, frame: Any) -> None:
        log.warning("state snapshot (SIGUSR1)\n%s", snapshot(node))

    signal.signal(signal.SIGUSR1, on_signal)


def snapshot(node: NodeService) -> str:
    parts = []
    for title, section in (
        ("trio tasks", _trio_tasks),
        ("trio", lambda: [repr(trio.lowlevel.current_statistics())]),
        ("asyncio loop", lambda: _loop_lines(node)),
        ("asyncio tasks", lambda: _asyncio_tasks(node)),
        ("node", lambda: _node_lines(node)),
        ("descriptors", _descriptors),
    ):
        try:
            lines = list(section())
        except Exception as exc:  # a snapshot must never hurt the node
            lines = [f"(unreadable: {type(exc).__name__}: {exc})"]
        parts.append(f"-- {title}\n" + "\n".join(lines))
    return "\n".join(parts)


def _where(coro: Any) -> str:
    """The innermost frames a coroutine chain is suspended in."""
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            frames.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return " > ".join(frames[-4:]) or "(running)"


def _trio_tasks() -> Iterator[str]:
    def walk(task: trio.lowlevel.Task, depth: int) -> Iterator[str]:
        yield f"{'  ' * depth}{task.name}: {_where(task.coro)}"
        for nursery in list(task.child_nurseries):
            for child in list(nursery.child_tasks):
                yield from walk(child, depth + 1)

    yield from walk(trio.lowlevel.current_root_task(), 0)


def _asyncio_tasks(node: NodeService) -> Iterator[str]:
    loop = node.loops.aio
    for task in list(asyncio.all_tasks(loop)):
        yield f"{task.get_name()}: {_where(task.get_coro())}"


def _loop_lines(node: NodeService) -> Iterator[str]:
    loop: Any = node.loops.aio
    yield f"running {loop.is_running()}, closed {loop.is_closed()}"
    queue = getattr(loop, "_q_recv", None)  # trio-asyncio's callback queue
    if queue is not None:
        yield f"callbacks queued: {queue.statistics()}"
    for key in list(loop._selector.get_map().values()):
        yield f"fd {key.fd} events {key.events}: {key.data}"


def _node_lines(node: NodeService) -> Iterator[str]:
    yield f"shutting down: {node.shutting_down}; tasks: {node.tasks}; asyncio tasks held: {node.loops.aio_tasks}"
    for session in list(node.sessions.values()):
        channel = "open" if session.channel_deliver is not None else "-"
        yield (
            f"module {session.id} ({session.name or session.label}): {len(session.registrations)} registrations, "
            f"{len(session.bridges)} streams, data channel {channel}"
        )
        for bridge in list(session.bridges.values()):
            yield f"  {bridge!r} tasks={bridge.tasks} buffered={bridge.buffered} wire: {_libp2p.describe(bridge.net)}"


def _descriptors() -> Iterator[str]:
    """Open fds and, for each epoll instance, what it watches (its ``ino`` is the file's inode in hex)."""
    if not sys.platform.startswith("linux"):
        yield "(Linux only)"
        return
    fds = Path("/proc/self/fd")
    for entry in sorted(fds.iterdir(), key=lambda p: int(p.name)):
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        yield f"{entry.name} {target}"
        if target == "anon_inode:[eventpoll]":
            info = (Path("/proc/self/fdinfo") / entry.name).read_text()
            yield from (f"    {line}" for line in info.splitlines() if line.startswith("tfd:"))
