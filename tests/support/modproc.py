"""Drive a module process (module_driver.py) from a trio test."""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import trio

from logos_p2p import errors

ROOT = Path(__file__).resolve().parents[2]


class ModuleError(Exception):
    """A scenario raised something outside the logos-p2p family."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name


def rebuild(type_name: str, message: str, cause: str | None) -> BaseException:
    cls = getattr(errors, type_name, None)
    if isinstance(cls, type) and issubclass(cls, errors.LogosP2PError):
        if issubclass(cls, errors.StreamReset):
            exc = errors.reset_error(errors.Cause(cause), message) if cause else cls(message)
            return exc if type(exc) is cls else cls(message, errors.Cause(cause))  # type: ignore[call-arg]
        if cls is errors.IncompleteRead:
            return cls(message)
        return cls(message)
    return ModuleError(type_name, message)


class RemoteStream:
    """A module-side stream, driven op by op from the test."""

    def __init__(self, module: ModuleProcess, key: str) -> None:
        self.module = module
        self.key = key

    def __getattr__(self, op: str) -> Any:
        async def call(*args: Any, timeout: float = 10) -> Any:
            return await self.module.call("stream_op", self.key, op, *args, timeout=timeout)

        return call

    async def attr(self, name: str) -> Any:
        return await self.module.call("stream_attr", self.key, name)


class ModuleProcess:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._ids = itertools.count()
        self._pending: dict[int, trio.MemorySendChannel[Any]] = {}
        self._events: defaultdict[str, list[Any]] = defaultdict(list)
        self._event_wakeup = trio.Event()
        self.exited = trio.Event()

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _reader(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        buf = b""
        try:
            while True:
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                    size = struct.unpack(">I", buf[:4])[0]
                    self._dispatch(pickle.loads(buf[4 : 4 + size]))
                    buf = buf[4 + size :]
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
        finally:
            self.exited.set()
            self._event_wakeup.set()
            for channel in self._pending.values():
                channel.send_nowait(("error", -1, "ModuleExited", "the module process exited", None))

    def _dispatch(self, message: Any) -> None:
        if message[0] == "event":
            self._events[message[1]].append(message[2])
            self._event_wakeup.set()
            self._event_wakeup = trio.Event()
            return
        channel = self._pending.pop(message[1], None)
        if channel is not None:
            channel.send_nowait(message)

    def _send(self, message: Any) -> None:
        data = pickle.dumps(message)
        self._outbox.send_nowait(struct.pack(">I", len(data)) + data)

    async def _writer(self, outbox: trio.MemoryReceiveChannel[bytes]) -> None:
        assert self.proc.stdin is not None
        async for frame in outbox:
            try:
                await self.proc.stdin.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    def start(self, name: str, *args: Any) -> Call:
        call_id = next(self._ids)
        send, receive = trio.open_memory_channel[Any](1)
        self._pending[call_id] = send
        self._send(("call", call_id, name, args))
        return Call(self, call_id, receive)

    async def call(self, name: str, *args: Any, timeout: float = 10) -> Any:
        return await self.start(name, *args).result(timeout)

    def signal(self, name: str, value: Any = None) -> None:
        self._send(("signal", name, value))

    def events_named(self, name: str) -> list[Any]:
        """The events called ``name`` that came and were not consumed yet."""
        return list(self._events[name])

    async def event(self, name: str, timeout: float = 10) -> Any:
        """The next unconsumed event called ``name``."""
        with trio.fail_after(timeout):
            while not self._events[name]:
                if self.exited.is_set():
                    raise ModuleError("ModuleExited", f"exited before event {name!r}")
                await self._event_wakeup.wait()
        return self._events[name].pop(0)

    def stream(self, key: str) -> RemoteStream:
        return RemoteStream(self, key)

    def kill(self) -> None:
        """SIGKILL, by PID."""
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)


class Call:
    def __init__(self, module: ModuleProcess, call_id: int, receive: trio.MemoryReceiveChannel[Any]) -> None:
        self.module = module
        self.id = call_id
        self._receive = receive

    def cancel(self) -> None:
        self.module._send(("cancel", self.id))

    async def result(self, timeout: float = 10) -> Any:
        with trio.fail_after(timeout):
            message = await self._receive.receive()
        if message[0] == "result":
            return message[2]
        raise rebuild(message[2], message[3], message[4])


async def start_module(
    nursery: trio.Nursery, rpc: str, data_path: str = "push", name: str = "test-module"
) -> ModuleProcess:
    argv = [sys.executable, "-m", "tests.support.module_driver", "--rpc", rpc, "--data-path", data_path, "--name", name]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, cwd=str(ROOT), env=env
    )
    module = ModuleProcess(proc)
    module._outbox, outbox = trio.open_memory_channel[bytes](1000)
    nursery.start_soon(module._writer, outbox)
    nursery.start_soon(module._reader)
    try:
        await module.event("ready", timeout=20)
    except BaseException:
        module.kill()
        raise
    return module
