"""Drive hostile peers (``flood_peer.py``, one process and one identity each) from a trio test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import trio

from .modproc import ROOT


class FloodPeer:
    """One flood peer process; ``state`` is its latest report (see flood_peer.py)."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.state: dict[str, Any] = {}
        self.changed = trio.Event()
        self.exited = False

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        try:
            while chunk := await self.proc.stdout.receive_some(65536):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self.state = json.loads(line)
                    self.changed.set()
                    self.changed = trio.Event()
        finally:
            self.exited = True
            self.changed.set()

    def kill(self) -> None:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)


class Flood:
    def __init__(self, peers: list[FloodPeer], streams: int) -> None:
        self.peers = peers
        self.streams = streams

    def total(self, name: str) -> int:
        return sum(p.state.get(name, 0) for p in self.peers)

    async def until(self, check: Any, timeout: float = 60) -> None:
        """Wait until ``check(flood)`` holds (each peer reports every change of its counters)."""
        with trio.fail_after(timeout):
            while not check(self):
                if any(p.exited for p in self.peers):
                    raise RuntimeError("a flood peer exited")
                async with trio.open_nursery() as nursery:
                    for p in self.peers:
                        nursery.start_soon(_wait_and_cancel, p.changed, nursery.cancel_scope)

    async def settled(self, timeout: float = 60) -> None:
        """Every stream of every peer was opened or refused."""
        await self.until(
            lambda f: all(p.state.get("opened", 0) + p.state.get("refused", 0) == f.streams for p in f.peers), timeout
        )

    def kill(self) -> None:
        for p in self.peers:
            p.kill()

    async def wait_killed(self) -> None:
        for p in self.peers:
            p.kill()
            with trio.move_on_after(5):
                await p.proc.wait()


async def _wait_and_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def start_flood(
    nursery: trio.Nursery, addr: str, protocol: str, peers: int, streams: int, size: int = 0, muxer: str | None = None
) -> Flood:
    started = []
    for _ in range(peers):
        argv = [sys.executable, "-m", "tests.support.flood_peer", addr, protocol, "--streams", str(streams)]
        argv += ["--bytes", str(size)] + (["--muxer", muxer] if muxer else [])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=None, cwd=str(ROOT), env=env)
        peer = FloodPeer(proc)
        started.append(peer)
        nursery.start_soon(peer._read)
    return Flood(started, streams)
