"""Drive a real go-libp2p (p2pd) or js-libp2p peer process from a trio test.

Both drivers (tests/interop/go_peer.py, tests/interop/js/peer.mjs) speak the
same JSON lines, so a test does not care which one it talks to.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]
GO_DIR = ROOT / ".cache" / "interop" / "go"
JS_DIR = ROOT / "tests" / "interop" / "js"


class PeerError(Exception):
    """What the peer's own libp2p raised, by name (StreamResetError, DaemonError...)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class InteropPeer:
    def __init__(self, kind: str, muxer: str, proc: trio.Process) -> None:
        self.kind = kind
        self.muxer = muxer
        self.proc = proc
        self.peer_id = ""
        self.addrs: list[str] = []
        self.daemon_pid: int | None = None  # p2pd, for go
        self.daemon_dir: str | None = None  # p2pd's control socket and log, for go
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[Any]] = {}
        self._events: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self._wakeup = trio.Event()
        self._stdin_lock = trio.Lock()
        self.exited = trio.Event()

    def __repr__(self) -> str:
        return f"<{self.kind}-libp2p peer {self.peer_id[-6:]} {self.muxer}>"

    @property
    def addr(self) -> str:
        return self.addrs[0]

    async def _reader(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        try:
            async for chunk in self.proc.stdout:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._dispatch(json.loads(line))
        finally:
            self.exited.set()
            self._wakeup.set()
            for channel in self._pending.values():
                channel.send_nowait({"error": {"name": "PeerExited", "message": "the peer process exited"}})

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "event" in message:
            self._events[message["event"]].append(message)
            self._wakeup.set()
            self._wakeup = trio.Event()
        else:
            channel = self._pending.pop(message["id"], None)
            if channel is not None:
                channel.send_nowait(message)

    async def call(self, op: str, timeout: float = 20, **args: Any) -> Any:
        call_id = next(self._ids)
        send, receive = trio.open_memory_channel[Any](1)
        self._pending[call_id] = send
        assert self.proc.stdin is not None
        async with self._stdin_lock:  # commands may be sent from several tasks at once
            await self.proc.stdin.send_all((json.dumps({"id": call_id, "op": op, **args}) + "\n").encode())
        with trio.fail_after(timeout):
            reply = await receive.receive()
        if "error" in reply:
            raise PeerError(reply["error"]["name"], reply["error"]["message"])
        return reply["ok"]

    async def event(self, name: str, timeout: float = 20) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while not self._events[name]:
                if self.exited.is_set():
                    raise PeerError("PeerExited", f"exited before event {name!r}")
                await self._wakeup.wait()
        return self._events[name].pop(0)

    # conveniences over the shared ops
    async def write(self, key: str, data: bytes) -> None:
        await self.call("write", key=key, data=base64.b64encode(data).decode())

    async def read_exactly(self, key: str, n: int) -> bytes:
        return base64.b64decode(await self.call("readExactly", key=key, n=n))

    async def read_all(self, key: str, timeout: float = 20) -> bytes:
        return base64.b64decode(await self.call("readAll", key=key, timeout=timeout))

    async def read_lp(self, key: str, count: int) -> list[bytes]:
        return [base64.b64decode(f) for f in await self.call("readLp", key=key, count=count)]

    async def write_lp(self, key: str, frames: list[bytes]) -> int:
        return int(await self.call("writeLp", key=key, frames=[base64.b64encode(f).decode() for f in frames]))

    def kill(self) -> None:
        """SIGKILL the driver and, for go, its p2pd, each by PID; then remove p2pd's directory
        (its control socket and log), which the killed driver cannot."""
        for pid in (self.daemon_pid, self.proc.pid if self.proc.returncode is None else None):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.daemon_dir is not None:
            shutil.rmtree(self.daemon_dir, ignore_errors=True)


async def start_peer(nursery: trio.Nursery, kind: str, muxer: str = "yamux") -> InteropPeer:
    if kind == "go":
        argv = [
            sys.executable,
            str(ROOT / "tests" / "interop" / "go_peer.py"),
            str(GO_DIR / "p2pd"),
            str(GO_DIR),
            muxer,
        ]
        if not (GO_DIR / "p2pd").exists():
            raise RuntimeError("p2pd is not installed: run `make test` (tests/interop/setup_peers.py)")
    else:
        muxers = [muxer] + [m for m in ("yamux", "mplex") if m != muxer]
        argv = ["node", str(JS_DIR / "peer.mjs"), *muxers]
        if not (JS_DIR / "node_modules").exists():
            raise RuntimeError("js-libp2p is not installed: run `make test` (tests/interop/setup_peers.py)")
    proc = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(ROOT))
    peer = InteropPeer(kind, muxer, proc)
    nursery.start_soon(peer._reader)
    try:
        ready = await peer.event("ready", timeout=30)
    except BaseException:
        peer.kill()
        raise
    peer.peer_id, peer.addrs = ready["peerId"], ready["addrs"]
    peer.daemon_pid = ready.get("daemonPid")
    peer.daemon_dir = ready.get("daemonDir")
    return peer
