"""A hostile libp2p peer in its own process: many streams, many bytes, no reading.

    python -m tests.support.flood_peer ADDR PROTOCOL --streams N [--bytes B] [--muxer yamux|mplex]

Connects to ADDR (a multiaddr ending in /p2p/ID) with a fresh identity, opens N streams
of PROTOCOL at once and writes B bytes into each (64 KiB writes), never reading. Prints
one JSON line per change of its counters (at most every 50 ms), then keeps every stream
open until it is killed:

    {"peer": ID, "opened": n, "refused": n, "written": n, "reset": n, "bytes": n, "done": bool}

``refused``: the open failed (negotiation refused or the stream reset before it was
ready); ``reset``: an open stream was reset while writing; ``written``: all B bytes went
out; ``done``: every stream is refused, reset, or written (a writer the node holds back
is none of these and stays pending).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr

from logos_p2p.errors import StreamReset
from logos_p2p.server import _libp2p

CHUNK = 64 * 1024


class Counters:
    def __init__(self, peer: str, streams: int) -> None:
        self.peer = peer
        self.streams = streams
        self.opened = self.refused = self.written = self.reset = self.bytes = 0
        self.changed = trio.Event()

    def bump(self, name: str, n: int = 1) -> None:
        setattr(self, name, getattr(self, name) + n)
        self.changed.set()

    def line(self) -> str:
        done = self.refused + self.reset + self.written == self.streams
        fields = {k: getattr(self, k) for k in ("opened", "refused", "written", "reset", "bytes")}
        return json.dumps({"peer": self.peer, **fields, "done": done})


async def flood(counters: Counters, host: Any, peer_id: Any, protocol: str, size: int) -> None:
    try:
        stream = await host.new_stream(peer_id, [protocol])
    except Exception:
        counters.bump("refused")
        return
    counters.bump("opened")
    block = b"f" * CHUNK
    sent = 0
    try:
        while sent < size:
            n = min(CHUNK, size - sent)
            await _libp2p.write(stream, block[:n])
            sent += n
            counters.bump("bytes", n)
    except StreamReset:
        counters.bump("reset")
        return
    counters.bump("written")
    await trio.sleep_forever()  # hold the stream open


async def report(counters: Counters) -> None:
    last = ""
    while True:
        await counters.changed.wait()
        counters.changed = trio.Event()
        line = counters.line()
        if line != last:
            print(line, flush=True)
            last = line
        await trio.sleep(0.05)


async def main(args: argparse.Namespace) -> None:
    logging.disable(logging.CRITICAL)
    _libp2p.install_fixes()
    kwargs: dict[str, Any] = {"key_pair": create_new_key_pair()}
    if args.muxer:
        kwargs["muxer_preference"] = args.muxer.upper()
    host = new_host(**kwargs)
    info = info_from_p2p_addr(multiaddr.Multiaddr(args.addr))
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        counters = Counters(str(host.get_id()), args.streams)
        await host.connect(info)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report, counters)
            counters.changed.set()
            for _ in range(args.streams):
                nursery.start_soon(flood, counters, host, info.peer_id, args.protocol, args.bytes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("addr")
    parser.add_argument("protocol")
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--muxer", choices=["yamux", "mplex"])
    try:
        trio.run(main, parser.parse_args())
    except KeyboardInterrupt:
        sys.exit(130)
