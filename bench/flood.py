"""`make flood`: the hostile-network floods at full size, against logos-p2p and against p2pd.

Each target runs with RLIMIT_NOFILE at 1,024, a holder on /flood/1.0.0 that keeps every
stream and never reads, and an echo on /echo/1.0.0:

  logos   a logos-p2p node on its defaults; holder and echo are module processes
  p2pd    go-libp2p's daemon (hivemind==1.1.12, its own resource manager on its
          defaults); holder and echo are handlers on its control socket

Two floods, each from peers in processes of their own with identities of their own
(tests/support/flood_peer.py):

  streams  5 peers x 250 streams, 16 bytes each, held
  bytes    4 peers x 200 streams, 2 MiB written into each

Reported per flood and target: streams refused (and per second, until every stream was
opened or refused), the server's RSS growth (peak) against the memory budget, a
well-behaved peer's echo round trip on a stream held through the flood against the
same before it (ratio), whether it kept working, and the recovery time after the
flood peers are killed (until the server holds no flood stream: for logos its status,
for p2pd its descriptors back to where they were).

    python bench/flood.py [--quick] [--targets logos,p2pd] [--floods streams,bytes]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from _p2pd import echo_rtt, start_driver, stop_driver  # noqa: E402
from tests.support import peer as p  # noqa: E402
from tests.support.flood import start_flood  # noqa: E402
from tests.support.nodeproc import start_node  # noqa: E402

FLOOD, ECHO = "/flood/1.0.0", "/echo/1.0.0"
NOFILE = 1024
RTT_ECHOES = 200  # 32-byte echoes per round-trip figure
MiB = 1024 * 1024
BUDGET = 256 * MiB  # logos-p2p's default --memory-budget

FLOODS = {
    "full": {"streams": (5, 250, 16), "bytes": (4, 200, 2 * MiB)},
    "quick": {"streams": (5, 100, 16), "bytes": (4, 50, 2 * MiB)},
}


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


class Server:
    """One target: its address, the pid whose memory counts, how to tell it is idle."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.addr = ""
        self.pid = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.node: Any = None
        self.stops: list[Callable[[], None]] = []  # other ends, run after the processes

    async def held(self) -> tuple[int, int]:
        """What the server holds that a flood adds to: logos, its streams and stream tasks
        (status); p2pd, its descriptors (one per stream it pipes to a handler)."""
        if self.node is not None:
            from tests.conftest import node_status

            status = await node_status(self.node.rpc)
            return status["streams"], status["tasks"]
        return fds(self.pid), 0

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        if self.node is not None:
            self.node.kill()
        for stop in self.stops:
            stop()


def _module(rpc: str, scenario: str) -> subprocess.Popen[bytes]:
    code = (
        "import asyncio, sys\n"
        "from logos_p2p.client import connect\n"
        "async def main():\n"
        f"    async with connect({rpc!r}, name={scenario!r}) as node:\n"
        "        async def hold(stream):\n"
        "            await asyncio.Event().wait()\n"
        "        async def echo(stream):\n"
        "            async for chunk in stream:\n"
        "                await stream.write(chunk)\n"
        f"        fn = hold if {scenario!r} == 'holder' else echo\n"
        f"        async with node.handle([{FLOOD!r} if fn is hold else {ECHO!r}], fn):\n"
        "            print('ready', flush=True)\n"
        "            await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def start_logos(workdir: Path) -> Server:
    server = Server("logos")
    server.node = start_node(workdir, "--log-level", "warning", nofile=NOFILE)
    server.addr, server.pid = server.node.addr, server.node.pid
    server.procs += [_module(server.node.rpc, "holder"), _module(server.node.rpc, "echo")]
    return server


def start_p2pd() -> Server:
    server = Server("p2pd")
    driver, ready = start_driver([("handle", FLOOD), ("handleEcho", ECHO)], preexec_fn=_limit_fds)
    server.stops.append(lambda: stop_driver(driver, ready))
    server.addr, server.pid = ready["addrs"][0], ready["daemonPid"]
    return server


async def fresh_echo(client: Any, server: Server) -> bool:
    """Whether a new stream opens and echoes within 10 s."""
    try:
        with trio.fail_after(10):
            fresh = await client.open(server.addr, [ECHO])
            await fresh.write(b"fresh")
            ok = await fresh.read(5) == b"fresh"
            await fresh.reset()
            return bool(ok)
    except Exception:
        return False


async def run_flood(server: Server, flood: str, size: str) -> dict[str, Any]:
    peers, streams, size_each = FLOODS[size][flood]
    async with p.open_peer() as client, trio.open_nursery() as nursery:
        probe = await client.open(server.addr, [ECHO])
        idle_us = await echo_rtt(probe, RTT_ECHOES)
        baseline, rss_before = await server.held(), rss(server.pid)
        peak = rss_before
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, rss(server.pid))
                await trio.sleep(0.02)

        nursery.start_soon(sample)
        started = trio.current_time()
        flooding = await start_flood(nursery, server.addr, FLOOD, peers=peers, streams=streams, size=size_each)
        during: list[float] = []
        echoing = True

        async def echo_during() -> None:  # the well-behaved peer, while the flood opens and writes
            while echoing:
                during.append(await echo_rtt(probe, 20))

        nursery.start_soon(echo_during)
        try:
            await flooding.settled(timeout=120)
            settled_after = trio.current_time() - started
            if size_each > 16:  # let the bytes pile up where they can
                with trio.move_on_after(5):
                    await trio.sleep_forever()
            echoing = False
            during_us = statistics.median(during) if during else await echo_rtt(probe, RTT_ECHOES)
            fresh_ok = await fresh_echo(client, server)  # a new stream during the flood
            opened, refused = flooding.total("opened"), flooding.total("refused")
            reset, accepted = flooding.total("reset"), flooding.total("bytes")
            alive = server.pid and os.path.exists(f"/proc/{server.pid}")  # noqa: ASYNC240
        finally:
            killed = trio.current_time()
            await flooding.wait_killed()
        with trio.move_on_after(60) as recovery:
            while (await server.held())[0] > baseline[0] + (4 if server.node is None else 0):  # noqa: ASYNC110
                await trio.sleep(0.05)  # the state lives in another process
        recovered = None if recovery.cancelled_caught else trio.current_time() - killed
        after_us = await echo_rtt(probe, RTT_ECHOES)
        sampling = False
    return {
        "target": server.name,
        "flood": flood,
        "streams_attempted": peers * streams,
        "opened": opened,
        "refused": refused,
        "reset_while_writing": reset,
        "refused_per_s": refused / settled_after if settled_after else 0.0,
        "bytes_accepted_mib": accepted / MiB,
        "rss_growth_mib": (peak - rss_before) / MiB,
        "rtt_idle_us": idle_us,
        "rtt_during_us": during_us,
        "rtt_after_us": after_us,
        "rtt_ratio": during_us / idle_us,
        "new_stream_during_flood": fresh_ok,
        "alive": bool(alive),
        "recovery_s": recovered,
    }


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| flood | target | held / refused | refused/s | RSS growth (MiB) | echo idle -> during (us) | ratio "
        "| new stream during | recovery (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        recovery = "never (60 s)" if r["recovery_s"] is None else f"{r['recovery_s']:.2f}"
        lines.append(
            f"| {r['flood']} | {r['target']} | {r['opened']} / {r['refused']} | {r['refused_per_s']:.0f} "
            f"| {r['rss_growth_mib']:.0f}{' (budget 256)' if r['target'] == 'logos' else ''} "
            f"| {r['rtt_idle_us']:.0f} -> {r['rtt_during_us']:.0f} | {r['rtt_ratio']:.2f} "
            f"| {'yes' if r['new_stream_during_flood'] else 'no'} | {recovery} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    size = "quick" if args.quick else "full"
    rows = []
    for flood in args.floods.split(","):
        for name in args.targets.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                server = start_logos(Path(tmp) / "node") if name == "logos" else start_p2pd()
                try:
                    row = await run_flood(server, flood, size)
                finally:
                    server.stop()
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"flood-{stamp}.json").write_text(json.dumps({"size": size, "rows": rows}, indent=2))
    print(report(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--targets", default="logos,p2pd")
    parser.add_argument("--floods", default="streams,bytes")
    trio.run(partial(main, parser.parse_args()))
