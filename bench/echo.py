"""Echo benchmark: a module-handled stream against an in-process py-libp2p handler.

One client (a py-libp2p host, noise + yamux over loopback, in this process)
measures each path, alternating paths round by round:

  direct  -- a py-libp2p host echoing in-process (the limit for a Python node)
  logos   -- a logos-p2p node, echo handled by a module in another process

Metrics: median round trip of 32-byte echoes on one stream; echo throughput
with 64 KiB writes and a concurrent reader; stream-open rate (open, 1 byte,
half-close, read the echo). Reported as medians, min-max and ratios to
direct from the same run; written as JSON to bench/results/.

    python bench/echo.py [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import info_from_p2p_addr

HERE = Path(__file__).resolve().parent
PROTO = "/echo/1.0.0"


class Target:
    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []
        self.addr = ""

    def spawn(self, *argv: str) -> dict[str, Any]:
        proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{argv} did not start")
        return dict(json.loads(line))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def start_direct() -> Target:
    target = Target("direct")
    target.addr = target.spawn(str(HERE / "_targets.py"), "direct")["addr"]
    return target


def start_logos(workdir: Path) -> Target:
    target = Target("logos")
    rpc = f"unix:{workdir / 'node.sock'}"
    ready = target.spawn("-m", "logos_p2p", "serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--rpc", rpc)
    target.addr = ready["addrs"][0]
    target.spawn(str(HERE / "_targets.py"), "module", rpc)
    return target


async def read_exactly(stream: Any, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += await stream.read(n - len(out))
    return bytes(out)


async def round_trip(host: Any, peer_id: Any, count: int) -> float:
    stream = await host.new_stream(peer_id, [PROTO])
    payload = b"p" * 32
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await stream.write(payload)
        await read_exactly(stream, 32)
        times.append(time.perf_counter() - started)
    await stream.reset()
    return statistics.median(times) * 1e6  # microseconds


async def throughput(host: Any, peer_id: Any, total: int) -> float:
    stream = await host.new_stream(peer_id, [PROTO])
    block = os.urandom(65536)
    received = 0

    async def reader() -> None:
        nonlocal received
        while received < total:
            received += len(await stream.read(65536))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for _ in range(total // len(block)):
            await stream.write(block)
    elapsed = time.perf_counter() - started
    await stream.reset()
    return total / elapsed / 1e6  # MB/s


async def open_rate(host: Any, peer_id: Any, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        stream = await host.new_stream(peer_id, [PROTO])
        await stream.write(b"x")
        await stream.close_write()
        data = b""
        try:
            while len(data) < 1:
                data += await stream.read(1)
        except StreamEOF:
            pass
        await stream.close()
    return count / (time.perf_counter() - started)


async def measure(host: Any, target: Target, sizes: dict[str, int]) -> dict[str, float]:
    info = info_from_p2p_addr(multiaddr.Multiaddr(target.addr))
    await host.connect(info)
    result = {
        "rtt_us": await round_trip(host, info.peer_id, sizes["rtt"]),
        "throughput_mbps": await throughput(host, info.peer_id, sizes["bytes"]),
        "open_per_s": await open_rate(host, info.peer_id, sizes["opens"]),
    }
    await host.disconnect(info.peer_id)
    return result


def summarize(samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = {m: statistics.median(r[m] for r in samples["direct"]) for m in samples["direct"][0]}
    for path, rounds in samples.items():
        out[path] = {}
        for metric in rounds[0]:
            values = [r[metric] for r in rounds]
            median = statistics.median(values)
            out[path][metric] = {
                "median": round(median, 2),
                "min": round(min(values), 2),
                "max": round(max(values), 2),
                "ratio_to_direct": round(median / base[metric], 3),
            }
    return out


async def main(args: argparse.Namespace) -> None:
    logging.disable(logging.CRITICAL)
    sizes = (
        {"rtt": 200, "bytes": 8 << 20, "opens": 50} if args.quick else {"rtt": 1000, "bytes": 32 << 20, "opens": 200}
    )
    with tempfile.TemporaryDirectory() as tmp:
        targets = [start_direct(), start_logos(Path(tmp))]
        try:
            host = new_host()
            async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                samples: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
                for round_no in range(args.rounds):
                    for target in targets:  # alternate paths: A B A B ...
                        result = await measure(host, target, sizes)
                        samples[target.name].append(result)
                        print(
                            f"round {round_no + 1}/{args.rounds} {target.name:6} "
                            f"rtt {result['rtt_us']:7.0f} us  {result['throughput_mbps']:6.1f} MB/s  "
                            f"{result['open_per_s']:6.0f} opens/s",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            for target in targets:
                target.stop()
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "rounds": args.rounds,
        "sizes": sizes,
        "summary": summarize(samples),
        "samples": samples,
    }
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / f"echo-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for development")
    trio.run(main, parser.parse_args())
