"""A module asking a peer: ``Node.request`` against the same exchange done with a Stream.

    python bench/requests.py [--count N] [--rounds R] [--path socket|push|pull]

Starts the in-process py-libp2p echo host of ``bench.py`` (``_targets.py direct``: its
echo returns a length-prefixed request as the same frame), a logos-p2p node and one
module. The module alternates, round by round, ``count`` sequential requests of 32
bytes made two ways:

  request   ``await node.request(peer, [proto], data, close_write=False)``: one RPC
  stream    open_stream, write_lp, read_lp, close: what a module writes without it

and prints each way's rate (median over rounds, min-max) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "/echo/1.0.0"

MODULE = r"""
import asyncio, json, sys, time
from logos_p2p.client import connect

async def main(rpc, path, peer_id, addr, count, rounds):
    data = b"q" * 32
    async with connect(rpc, name="bench-requests", data_path=path) as node:
        await node.connect_peer(addr)

        async def by_request():
            assert await node.request(peer_id, ["/echo/1.0.0"], data, close_write=False) == data

        async def by_stream():
            stream = await node.open_stream(peer_id, ["/echo/1.0.0"])
            await stream.write_lp(data)
            assert await stream.read_lp() == data
            await stream.close()

        rates = {"request": [], "stream": []}
        for _ in range(rounds):
            for name, one in (("request", by_request), ("stream", by_stream)):
                started = time.perf_counter()
                for _ in range(count):
                    await one()
                rates[name].append(count / (time.perf_counter() - started))
        print(json.dumps(rates), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])))
"""


def main(args: argparse.Namespace) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            direct = subprocess.Popen(
                [sys.executable, str(HERE / "_targets.py"), "direct"], stdout=subprocess.PIPE, start_new_session=True
            )
            procs.append(direct)
            assert direct.stdout is not None
            addr = json.loads(direct.stdout.readline())["addr"]
            rpc = f"unix:{Path(tmp) / 'node.sock'}"
            node = subprocess.Popen(
                [sys.executable, "-m", "logos_p2p", "serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--rpc", rpc,
                 "--log-level", "warning"],
                stdout=subprocess.PIPE,
                start_new_session=True,
            )  # fmt: skip
            procs.append(node)
            assert node.stdout is not None
            json.loads(node.stdout.readline())
            peer_id = addr.rsplit("/p2p/", 1)[1]
            module = subprocess.run(
                [sys.executable, "-c", MODULE, rpc, args.path, peer_id, addr, str(args.count), str(args.rounds)],
                capture_output=True,
                check=True,
                timeout=600,
            )
    finally:
        for proc in procs:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    rates = json.loads(module.stdout)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"module asking a py-libp2p echo peer, {args.count} sequential 32-byte requests, {args.rounds} rounds,")
    print(f"data path {args.path}:")
    for name, values in rates.items():
        print(f"  {name:8} {medians[name]:7.1f}/s  [{min(values):.1f}-{max(values):.1f}]")
    print(f"  request / stream: {medians['request'] / medians['stream']:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--path", default="socket", choices=["socket", "push", "pull"])
    main(parser.parse_args())
