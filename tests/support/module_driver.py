"""A module process for tests: connects to a node, then runs scenario functions on command.

Frames on stdin/stdout: 4-byte big-endian length + pickle.
  test -> module: ("call", id, name, args), ("cancel", id), ("signal", name, value)
  module -> test: ("result", id, value), ("error", id, type, message, cause), ("event", name, value)
Only asyncio and logos_p2p.client are used here, like a real module.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import struct
import sys
import traceback
from typing import Any

from logos_p2p.client import StreamReset, connect

from . import scenarios


class Context:
    def __init__(self, node: Any, out: Any) -> None:
        self.node = node
        self.streams: dict[str, Any] = {}
        self.registrations: dict[str, Any] = {}
        self.raise_on_release: dict[str, bool] = {}
        self.tasks: dict[str, asyncio.Task[Any]] = {}  # scenario tasks that outlive their call
        self._out = out
        self._signals: dict[str, asyncio.Future[Any]] = {}

    def emit(self, name: str, value: Any = None) -> None:
        send(self._out, ("event", name, value))

    def _future(self, name: str) -> asyncio.Future[Any]:
        if name not in self._signals:
            self._signals[name] = asyncio.get_running_loop().create_future()
        return self._signals[name]

    def signal(self, name: str, value: Any) -> None:
        fut = self._future(name)
        if not fut.done():
            fut.set_result(value)

    async def wait(self, name: str) -> Any:
        return await asyncio.shield(self._future(name))


def send(out: Any, message: Any) -> None:
    data = pickle.dumps(message)
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0)
    try:
        async with connect(args.rpc, name=args.name, data_path=args.data_path) as node:
            ctx = Context(node, out)
            ctx.emit("ready", os.getpid())
            await serve(ctx, reader)
    except Exception as exc:
        send(out, ("event", "failed", f"{type(exc).__name__}: {exc}"))
        raise


async def serve(ctx: Context, reader: asyncio.StreamReader) -> None:
    calls: dict[int, asyncio.Task[Any]] = {}
    while True:
        try:
            head = await reader.readexactly(4)
        except asyncio.IncompleteReadError:
            return
        message = pickle.loads(await reader.readexactly(struct.unpack(">I", head)[0]))
        kind = message[0]
        if kind == "call":
            _, call_id, name, call_args = message
            calls[call_id] = asyncio.ensure_future(invoke(ctx, call_id, name, call_args))
        elif kind == "cancel":
            task = calls.get(message[1])
            if task is not None:
                task.cancel()
        elif kind == "signal":
            ctx.signal(message[1], message[2])


async def invoke(ctx: Context, call_id: int, name: str, args: tuple[Any, ...]) -> None:
    try:
        result = await getattr(scenarios, name)(ctx, *args)
    except asyncio.CancelledError:
        send(ctx._out, ("error", call_id, "CancelledError", "cancelled", None))
    except Exception as exc:
        cause = exc.cause.value if isinstance(exc, StreamReset) else None
        detail = str(exc) or traceback.format_exc(limit=3)
        send(ctx._out, ("error", call_id, type(exc).__name__, detail, cause))
    else:
        send(ctx._out, ("result", call_id, result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpc", required=True)
    parser.add_argument("--name", default="test-module")
    parser.add_argument("--data-path", default="push", choices=["auto", "socket", "push", "pull"])
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
