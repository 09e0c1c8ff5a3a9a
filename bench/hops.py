"""How many file boundaries the node's code crosses to set up one stream.

    python bench/hops.py [--path socket|push|pull]

Runs a node embedded in this process and an echo module in another, then, with
``sys.setprofile``, follows the node's own calls while one inbound stream (a py-libp2p
peer here opens it) and one outbound stream (the module opens it to that peer) are set
up: from the node's libp2p stream handler, and from the node's open request handler,
to their return. A *hop* is control moving from one file of ``src/logos_p2p`` to
another, by a call or a return (calls into leaf services -- the state machine, wake-ups,
the resource manager, the libp2p boundary -- are not steps of the journey); the report
gives the hops and the files of the journey. Run it with another checkout's
``src/`` on ``PYTHONPATH`` to compare layouts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.peer.peerinfo import info_from_p2p_addr

PROTO = "/hops/1.0.0"
MODULE = r"""
import asyncio, json, sys
from logos_p2p.client import connect

async def main(rpc, path, peer_addr):
    async def echo(stream):
        async for chunk in stream:
            await stream.write(chunk)
    async with connect(rpc, data_path=path) as node, node.handle([sys.argv[4]], echo):
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        peer_id = peer_addr.rsplit("/p2p/", 1)[1]
        stream = await node.open_stream(peer_id, [sys.argv[4]], [peer_addr.rsplit("/p2p/", 1)[0]])
        await stream.write(b"x")
        await stream.close()
        print(json.dumps({"opened": True}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"""

INBOUND_ENTRIES = {"on_inbound", "_on_inbound"}  # the node's libp2p stream handler
OUTBOUND_ENTRIES = {"_open", "openStream", "open_stream", "opener", "open"}  # the open request, both loops


# leaf services every part may call (state machine, wake-ups, limits, the libp2p
# boundary...): a call into one is not a step of the stream's journey
LEAVES = (
    "_state.py",
    "_waiters.py",
    "_schema.py",
    "_requests.py",
    "_frames.py",
    "_rxbuffer.py",
    "_exclusive.py",
    "errors.py",
    "_wire.py",
    "server/_handoff.py",
    "_kj.py",  # the asyncio loop's own queue (every task start and callback passes it)
    "server/_resources.py",
    "server/_grants.py",
    "server/_limits.py",
    "server/_config.py",
    "server/_libp2p",
)


class Hops:
    """Where control is, file by file, while a frame named one of ``entries`` is on the
    stack: each call into, and each return to, a file of the stream's journey (leaf
    services left out) that is not the file control was in is one hop."""

    def __init__(self, src: str, entries: set[str]) -> None:
        self.src = src
        self.entries = entries
        self.events: list[tuple[str, int, str, str | None]] = []
        self.keep: list[FrameType] = []
        self.on = False

    def _ours(self, frame: FrameType | None) -> str | None:
        if frame is None:
            return None
        name = frame.f_code.co_filename
        if not name.startswith(self.src):
            return None
        rel = name[len(self.src) + 1 :]
        return None if rel.startswith(LEAVES) else rel

    def _inside(self, frame: FrameType | None) -> bool:
        while frame is not None:
            if frame.f_code.co_name in self.entries and self._ours(frame):
                return True
            frame = frame.f_back
        return False

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.on or event not in ("call", "return") or not self._inside(frame):
            return
        here = self._ours(frame)
        if here is None:
            return
        back = frame.f_back
        while back is not None and self._ours(back) is None:
            back = back.f_back
        self.events.append((event, id(frame), here, self._ours(back)))
        self.keep.append(frame)  # ids stay unique while the frames live

    @property
    def path(self) -> list[str]:
        """Control file by file. A coroutine's resumptions and suspensions are not calls
        and returns: only a frame's first call and its last return count."""
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for i, (event, fid, _here, _back) in enumerate(self.events):
            if event == "call":
                first.setdefault(fid, i)
            else:
                last[fid] = i
        out: list[str] = []
        for i, (event, fid, here, back) in enumerate(self.events):
            where = here if event == "call" and first[fid] == i else back if last.get(fid) == i else None
            if where is not None and (not out or out[-1] != where):
                out.append(where)
        return out

    @property
    def files(self) -> set[str]:
        return set(self.path)

    @property
    def hops(self) -> list[tuple[str, str]]:
        path = self.path
        return list(itertools.pairwise(path))


async def main(path: str) -> dict[str, Any]:
    from logos_p2p.server import NodeConfig, NodeService

    src = str(Path(sys.modules["logos_p2p"].__file__ or "").resolve().parent)  # noqa: ASYNC240 - once, at start
    tmp = tempfile.mkdtemp()
    rpc = f"unix:{tmp}/node.sock"
    service = NodeService(NodeConfig(listen=["/ip4/127.0.0.1/tcp/0"], rpc=rpc))
    out: dict[str, Any] = {"src": src, "path": path}
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        peer = new_host()
        async with peer.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):

            async def echo(stream: Any) -> None:
                data = await stream.read(1)
                await stream.write(data)
                await stream.close()

            peer.set_stream_handler(PROTO, echo)  # type: ignore[arg-type]
            peer_addr = f"{peer.get_addrs()[0]}"
            if "/p2p/" not in peer_addr:
                peer_addr += f"/p2p/{peer.get_id()}"
            module = subprocess.Popen(  # noqa: ASYNC220 - killed by its PID in the finally below
                [sys.executable, "-c", MODULE, rpc, path, peer_addr, PROTO],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ},
            )
            try:
                assert module.stdout is not None and module.stdin is not None
                await trio.to_thread.run_sync(module.stdout.readline)
                await peer.connect(info_from_p2p_addr(multiaddr.Multiaddr(service.addrs[0])))
                for direction, entries in (("inbound", INBOUND_ENTRIES), ("outbound", OUTBOUND_ENTRIES)):
                    hops = Hops(src, entries)
                    hops.on = True
                    sys.setprofile(hops.profile)
                    try:
                        if direction == "inbound":
                            stream = await peer.new_stream(peer_id=service.host.get_id(), protocol_ids=[PROTO])  # type: ignore[list-item]
                            await stream.write(b"x")
                            await stream.read(1)
                            await stream.close()
                        else:
                            module.stdin.write(b"\n")
                            module.stdin.flush()
                            await trio.to_thread.run_sync(module.stdout.readline)
                    finally:
                        sys.setprofile(None)
                    out[direction] = {"hops": len(hops.hops), "files": sorted(hops.files), "chain": hops.hops}
            finally:
                module.kill()
                module.wait()
        await service.shutdown()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default="socket", choices=["socket", "push", "pull"])
    parser.add_argument("--chain", action="store_true", help="print every hop")
    args = parser.parse_args()
    import logging

    logging.disable(logging.CRITICAL)
    result = trio.run(main, args.path)
    for direction in ("inbound", "outbound"):
        r = result[direction]
        print(f"{direction}: {r['hops']} hops across {len(r['files'])} files: {', '.join(r['files'])}")
        if args.chain:
            for caller, callee in r["chain"]:
                print(f"    {caller} -> {callee}")
    if not args.chain:
        print(json.dumps({d: result[d]["hops"] for d in ("inbound", "outbound")}))
