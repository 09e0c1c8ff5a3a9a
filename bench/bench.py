"""`make bench`: a module-handled stream against an in-process handler and against p2pd.

One client -- py-libp2p hosts (noise + yamux over loopback) in this process --
measures three paths, alternating them round by round (A B C A B C ...):

  direct  a py-libp2p host echoing in-process (the limit for a Python node)
  logos   a logos-p2p node; echo handled by modules in other processes
  p2pd    go-libp2p's daemon (hivemind==1.1.12), echo handled by a Python
          process on its control socket (STREAM_HANDLER, balanced=false)
  push, tcp, tls   logos with its modules as a module on another machine runs: on
          the push path, over the unix socket, a tcp: and a tls: endpoint on loopback
  pull    logos with its Python modules on the pull data path (Stream.read over RPC)
  cpp     logos with C++ echo modules (examples/cpp-echo, the facade: pull mode, as
          `pull`), 20 processes sharing the protocol, built with CMake into
          .cache/bench-cpp; they do not serve /rr/1.0.0 (no request rate row)

Metrics per round:
  rtt_us            median round trip of 32-byte echoes on one stream
  throughput_mbps   echo throughput, 64 KiB writes, reader concurrent
  open_per_s        stream-open rate: open, 1 byte there and back, close
  idle_kib          server memory per idle stream, 1,000 streams held (RSS delta),
                    measured once per path on fresh processes before the rounds:
                    the node for logos, the host for direct, the daemon for p2pd
  conc_mbps         echo throughput over those 1,000 streams at once
                    (logos: 20 module processes share the protocol)
  req_per_s         request/response rate: open, one 32-byte length-prefixed request,
                    its reply, close. logos: the modules answer with Node.serve (one
                    RPC per request); direct and p2pd: their echo handler returns
                    the frame, which is the same bytes on the wire

  scale_kib         logos only, once, on a fresh node with 50 module processes: node RSS
                    growth per stream with 10,000 idle streams held (2,000 and 10 in
                    quick mode), the memory budget just big enough to admit them;
                    also the share of that budget used and the modules' growth

Reported as medians with min-max, ratios to direct and to p2pd from the same run, and
each target of TARGETS met or not; JSON and a PNG chart of the ratios go to bench/results/.

    python bench/bench.py [--quick] [--rounds N] [--paths direct,logos,p2pd] [--baseline DIR]

--baseline DIR adds the path "base": DIR's src/ (another commit's checkout) run the
same way as logos and measured in the same rounds, for before/after comparisons.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import multiaddr
import psutil
import trio
from _p2pd import echo_rtt, start_driver, stop_driver
from libp2p import new_host
from libp2p.peer.peerinfo import info_from_p2p_addr

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROTO = "/echo/1.0.0"
NODE_ARGS: list[str] = []  # --node-args
# metric: (label, better, goal as a ratio to direct, goal as a ratio to p2pd); "le": lower is
# better. A p2pd goal of 1.0 is "at least as good as p2pd"; idle_kib's goals are "below".
TARGETS = {
    "rtt_us": ("round trip", "le", 1.10, 1.0),
    "throughput_mbps": ("throughput", "ge", 0.90, 1.0),
    "open_per_s": ("open rate", "ge", 0.85, 1.0),
    "idle_kib": ("memory / idle stream", "le", None, 1.0),
    "conc_mbps": ("1,000-stream throughput", "ge", None, 1.0),
    "req_per_s": ("request/response rate", "ge", None, None),
    "scale_kib": ("memory / stream, 10,000 streams", "le", None, None),
}
RR = "/rr/1.0.0"  # what the logos modules serve with Node.serve

SIZES = {
    "full": {
        "rtt": 1000,
        "bytes": 32 << 20,
        "opens": 200,
        "streams": 1000,
        "conc_bytes": 32 << 20,
        "rounds": 5,
        "scale_streams": 10_000,
        "scale_modules": 50,
    },
    "quick": {
        "rtt": 200,
        "bytes": 8 << 20,
        "opens": 60,
        "streams": 200,
        "conc_bytes": 8 << 20,
        "rounds": 2,
        "scale_streams": 2_000,
        "scale_modules": 10,
    },
}


# -- targets: each path's server side, in its own processes --------------------------------------


class Target:
    def __init__(self, name: str) -> None:
        self.name = name
        self.rr: str | None = PROTO  # the protocol that answers a request (None: not offered)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.addr = ""
        self.rpc = ""  # logos: the node's RPC endpoint
        self.server_pid = 0  # whose memory counts
        self.stops: list[Callable[[], None]] = []  # other ends, run after the processes

    def spawn(
        self, argv: list[str], stdin: Any = subprocess.DEVNULL, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=stdin, env=env)
        self.procs.append(proc)
        return proc

    @staticmethod
    def line(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        assert proc.stdout is not None
        raw = proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"{proc.args!r} did not start")
        return dict(json.loads(raw))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        for stop in self.stops:
            stop()


def start_direct() -> Target:
    target = Target("direct")
    proc = target.spawn([sys.executable, str(HERE / "_targets.py"), "direct"])
    target.addr = target.line(proc)["addr"]
    target.server_pid = proc.pid
    return target


def cpp_echo_module() -> Path:
    """examples/cpp-echo's module, built (incrementally) into .cache/bench-cpp."""
    build = ROOT / ".cache" / "bench-cpp"
    for argv in (
        ["cmake", "-S", str(ROOT / "clients" / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", "cpp-echo-module"],
    ):
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return build / "examples" / "cpp-echo" / "cpp-echo-module"


def start_logos(
    workdir: Path,
    modules: int,
    name: str = "logos",
    source: Path | None = None,
    endpoint: str = "unix",
    data_path: str | None = None,
    cpp: Path | None = None,
    node_args: tuple[str, ...] = (),
) -> Target:
    """A node and its echo modules; ``source``: run another checkout's ``src/`` instead;
    ``endpoint``: ``unix`` (the modules take the data path they prefer: socket),
    ``unix-push`` (the push path, as a remote module), ``tcp`` or ``tls`` (on loopback,
    push: the way a module on another machine connects); ``data_path``: the Python
    modules' data path instead of the endpoint's; ``cpp``: the C++ echo module's binary,
    run instead of the Python modules."""
    target = Target(name)
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source / "src")
    rpc = f"unix:{workdir / (name + '.sock')}" if endpoint.startswith("unix") else f"{endpoint}:127.0.0.1:0"
    extra = ["--token-file", str(workdir / f"{name}.token")] if not endpoint.startswith("unix") else []
    node = target.spawn(
        [
            sys.executable,
            "-m",
            "logos_p2p",
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--rpc",
            rpc,
            "--log-level",
            "warning",
            *extra,
            *NODE_ARGS,
            *node_args,
        ],
        env=env,
    )
    ready = target.line(node)
    target.addr = ready["addrs"][0]
    target.server_pid = node.pid
    rpc = target.rpc = ready["rpc"]
    if "token_file" in ready:
        env["LOGOS_P2P_TOKEN_FILE"] = ready["token_file"]
    if "tls_fingerprint" in ready:
        env["LOGOS_P2P_FINGERPRINT"] = ready["tls_fingerprint"]
    if cpp is not None:
        for _ in range(modules):
            proc = target.spawn([str(cpp), rpc, PROTO, "--share", "--quiet"], env=env)
            assert proc.stdout is not None
            if not proc.stdout.readline().startswith(b"ready "):
                raise RuntimeError(f"{cpp} did not start")
        target.rr = None  # the C++ echo module does not serve
        return target
    path = data_path or ("auto" if endpoint == "unix" else "push")
    for _ in range(modules):
        ready = target.line(target.spawn([sys.executable, str(HERE / "_targets.py"), "module", rpc, path], env=env))
    target.rr = RR if ready.get("serves") else None  # an older checkout's client has no serve
    return target


def start_p2pd() -> Target:
    target = Target("p2pd")
    driver, ready = start_driver([("handleEcho", PROTO)])
    target.stops.append(lambda: stop_driver(driver, ready))
    target.addr, target.server_pid = ready["addrs"][0], ready["daemonPid"]
    return target


# -- measurements (the client side) ---------------------------------------------------------------


async def read_exactly(stream: Any, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += await stream.read(n - len(out))
    return bytes(out)


async def round_trip(host: Any, peer_id: Any, count: int) -> float:
    stream = await host.new_stream(peer_id, [PROTO])
    rtt = await echo_rtt(stream, count)
    await stream.reset()
    return rtt


async def echo_throughput(host: Any, peer_id: Any, total: int) -> float:
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
    return total / elapsed / 1e6


async def open_rate(host: Any, peer_id: Any, count: int) -> float:
    """Open, 1 byte there and back, close (no half-close first: p2pd's pipe turns one into a reset)."""
    started = time.perf_counter()
    for _ in range(count):
        stream = await host.new_stream(peer_id, [PROTO])
        await stream.write(b"x")
        await read_exactly(stream, 1)
        await stream.close()
    return count / (time.perf_counter() - started)


async def request_rate(host: Any, peer_id: Any, protocol: str, count: int) -> float:
    """Open, one length-prefixed request, read the one-frame reply, close (no half-close:
    p2pd's pipe would close the whole stream)."""
    request = bytes([32]) + b"r" * 32
    started = time.perf_counter()
    for _ in range(count):
        stream = await host.new_stream(peer_id, [protocol])
        await stream.write(request)
        reply = await read_exactly(stream, len(request))
        assert reply == request, reply
        await stream.close()
    return count / (time.perf_counter() - started)


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


async def hold_streams(hosts: list[Any], peer_id: Any, streams: int) -> list[Any]:
    """Open `streams` streams spread over the client hosts, each echoed once end to end."""
    opened: list[Any] = []
    per_host = streams // len(hosts)
    for host in hosts:
        for _ in range(per_host):
            stream = await host.new_stream(peer_id, [PROTO])
            await stream.write(b"!")
            await read_exactly(stream, 1)  # delivered all the way to the handler and back
            opened.append(stream)
    return opened


async def idle_memory(hosts: list[Any], peer_id: Any, streams: int, server_pid: int) -> float:
    """Server RSS growth per idle stream, on a fresh server (Python's RSS never shrinks back)."""
    for stream in await hold_streams(hosts, peer_id, 8):  # warm up: first-use allocations
        await stream.reset()
    await trio.sleep(0.5)
    before = rss(server_pid)
    opened = await hold_streams(hosts, peer_id, streams)
    await trio.sleep(0.5)  # let the server settle before reading its memory
    idle_kib = (rss(server_pid) - before) / len(opened) / 1024
    for stream in opened:
        await stream.reset()
    return idle_kib


async def concurrent(hosts: list[Any], peer_id: Any, streams: int, total: int) -> float:
    """Hold `streams` streams, then echo over all of them at once."""
    opened = await hold_streams(hosts, peer_id, streams)
    each = total // len(opened)
    block = os.urandom(each)

    async def one(stream: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.write, block)
            await read_exactly(stream, each)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for stream in opened:
            nursery.start_soon(one, stream)
    elapsed = time.perf_counter() - started
    for stream in opened:
        await stream.reset()
    return each * len(opened) / elapsed / 1e6


@contextlib.asynccontextmanager
async def client_hosts(count: int) -> AsyncIterator[list[Any]]:
    async with contextlib.AsyncExitStack() as stack:
        hosts = []
        for _ in range(count):
            host = new_host()
            await stack.enter_async_context(host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]))
            hosts.append(host)
        yield hosts


async def measure(target: Target, sizes: dict[str, int], step: Callable[[str], None]) -> dict[str, float]:
    info = info_from_p2p_addr(multiaddr.Multiaddr(target.addr))
    result: dict[str, float] = {}
    async with client_hosts(4) as hosts:
        for host in hosts:
            await host.connect(info)
        main = hosts[0]
        with bounded(step, f"{target.name} round trip"):
            result["rtt_us"] = await round_trip(main, info.peer_id, sizes["rtt"])
        with bounded(step, f"{target.name} throughput"):
            result["throughput_mbps"] = await echo_throughput(main, info.peer_id, sizes["bytes"])
        with bounded(step, f"{target.name} open rate"):
            result["open_per_s"] = await open_rate(main, info.peer_id, sizes["opens"])
        if target.rr is not None:
            with bounded(step, f"{target.name} request rate"):
                result["req_per_s"] = await request_rate(main, info.peer_id, target.rr, sizes["opens"])
        with bounded(step, f"{target.name} {sizes['streams']} streams"):
            result["conc_mbps"] = await concurrent(hosts, info.peer_id, sizes["streams"], sizes["conc_bytes"])
    return result


async def measure_memory(target: Target, streams: int, step: Callable[[str], None]) -> float:
    info = info_from_p2p_addr(multiaddr.Multiaddr(target.addr))
    async with client_hosts(4) as hosts:
        for host in hosts:
            await host.connect(info)
        with bounded(step, f"{target.name} memory"):
            return await idle_memory(hosts, info.peer_id, streams, target.server_pid)


STREAMS_PER_HOST = 250  # a py-libp2p connection opens at most 256 streams at once (yamux's backlog)


def scale_hosts(streams: int) -> int:
    """Client peers for the scale row: at most STREAMS_PER_HOST streams each, and at least
    ten, because the node admits an eighth of its streams per peer."""
    return max(10, -(-streams // STREAMS_PER_HOST))


def scale_budget(streams: int) -> int:
    """The smallest memory budget (bytes) whose derived stream limit admits ``streams``
    (the node admits budget / (2 x STREAM_COST) streams: `derive_limits`), in whole MiB,
    and 16 MiB more."""
    from logos_p2p.server._limits import STREAM_COST, MiB

    return -(-streams * 2 * STREAM_COST // MiB) * MiB + 16 * MiB


async def measure_scale(workdir: Path, streams: int, modules: int, step: Callable[[str], None]) -> dict[str, float]:
    """``streams`` idle streams across ``modules`` module processes on a fresh node whose
    memory budget is just big enough to admit them: the node's RSS growth per stream, the
    share of the budget it took, the modules' growth per stream, and the node's count."""
    budget = scale_budget(streams)
    target = start_logos(workdir, modules, "scale", node_args=("--memory-budget", str(budget)))
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(target.addr))
        module_pids = [p.pid for p in target.procs[1:]]
        async with client_hosts(scale_hosts(streams)) as hosts:
            for host in hosts:
                await host.connect(info)
            with bounded(step, f"scale: {streams} streams, {modules} modules", seconds=600):
                for stream in await hold_streams(hosts, info.peer_id, 8 * len(hosts)):  # warm up
                    await stream.reset()
                await trio.sleep(0.5)
                before = rss(target.server_pid)
                before_modules = sum(rss(pid) for pid in module_pids)
                opened: list[Any] = []

                async def per_host(host: Any) -> None:
                    opened.extend(await hold_streams([host], info.peer_id, streams // len(hosts)))

                async with trio.open_nursery() as nursery:
                    for host in hosts:
                        nursery.start_soon(per_host, host)
                await trio.sleep(0.5)
                growth = rss(target.server_pid) - before
                growth_modules = sum(rss(pid) for pid in module_pids) - before_modules
                status = await node_status(target.rpc)
                for stream in opened:
                    await stream.reset()
        return {
            "scale_kib": growth / len(opened) / 1024,
            "scale_budget_share": growth / budget,
            "scale_module_kib": growth_modules / len(opened) / 1024,
            "scale_node_streams": float(status["streams"]),
        }
    finally:
        target.stop()


def leaf_error(exc: BaseException) -> str:
    """The first exception inside (nested) exception groups, as ``Type: message``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


async def node_status(rpc: str) -> dict[str, Any]:
    """The node's status, from `logos-p2p status` (its JSON)."""
    out = await trio.run_process(
        [sys.executable, "-m", "logos_p2p", "status", "--rpc", rpc], capture_stdout=True, check=True
    )
    return dict(json.loads(out.stdout))


@contextlib.contextmanager
def bounded(step: Callable[[str], None], what: str, seconds: float = 180.0) -> Iterator[None]:
    """A step that hangs is a failure of the path under test, reported as such."""
    step(what)
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise SystemExit(f"\n{what}: no progress in {seconds:g}s") from None


# -- reporting --------------------------------------------------------------------------------------


def summarize(samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians, min-max, and the ratio of each median to direct's ("ratio") and to p2pd's
    ("vs_p2pd") from the same run."""
    base, p2pd = {}, {}
    if "direct" in samples:
        base = {m: statistics.median(r[m] for r in samples["direct"]) for m in samples["direct"][0]}
    if "p2pd" in samples:
        p2pd = {m: statistics.median(r[m] for r in samples["p2pd"]) for m in samples["p2pd"][0]}
    out: dict[str, Any] = {}
    for path, rounds in samples.items():
        out[path] = {}
        for metric in rounds[0]:
            values = [r[metric] for r in rounds]
            median = statistics.median(values)
            entry = {"median": round(median, 2), "min": round(min(values), 2), "max": round(max(values), 2)}
            if base.get(metric):
                entry["ratio"] = round(median / base[metric], 3)
            if p2pd.get(metric) and path != "p2pd":
                entry["vs_p2pd"] = round(median / p2pd[metric], 3)
            out[path][metric] = entry
    return out


def table(summary: dict[str, Any]) -> str:
    """Medians [min-max] with (ratio to direct, ratio to p2pd), then each target met or not."""
    lines = ["| metric | " + " | ".join(summary) + " |", "|---|" + "---|" * len(summary)]
    for metric, (label, *_) in TARGETS.items():
        cells = []
        for path in summary:
            e = summary[path].get(metric)
            if e is None:
                cells.append("")
                continue
            ratios = [f"{e['ratio']:.2f}x direct"] if "ratio" in e and path != "direct" else []
            ratios += [f"{e['vs_p2pd']:.2f}x p2pd"] if "vs_p2pd" in e else []
            extra = f" ({', '.join(ratios)})" if ratios else ""
            cells.append(f"{e['median']:.1f}{extra} [{e['min']:.1f}-{e['max']:.1f}]")
        if any(cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    verdicts = targets_met(summary)
    if verdicts:
        lines += ["", "| target (logos) | measured | met |", "|---|---|---|"]
        lines += [f"| {what} | {value} | {'yes' if ok else '**no**'} |" for what, value, ok in verdicts]
    return "\n".join(lines)


def targets_met(summary: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Each of TARGETS' goals for the logos path: (what, measured ratio, met)."""
    out: list[tuple[str, str, bool]] = []
    logos = summary.get("logos", {})
    for metric, (label, better, to_direct, to_p2pd) in TARGETS.items():
        e = logos.get(metric)
        if e is None:
            continue
        for key, goal, whom in (("ratio", to_direct, "direct"), ("vs_p2pd", to_p2pd, "p2pd")):
            if goal is None or key not in e:
                continue
            ok = e[key] <= goal if better == "le" else e[key] >= goal
            sign = "<=" if better == "le" else ">="
            if metric in ("throughput_mbps", "idle_kib") and whom == "p2pd":  # "still ahead of p2pd"
                ok = e[key] < goal if better == "le" else e[key] > goal
                sign = "<" if better == "le" else ">"
            out.append((f"{label} {sign} {goal:g}x {whom}", f"{e[key]:.2f}x", ok))
    return out


def chart(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("throughput_mbps", "rtt_us", "open_per_s", "conc_mbps") if "direct" in summary]
    paths = [p for p in summary if p != "direct"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(len(paths), 1)
    for i, p in enumerate(paths):
        ratios = [summary[p][m].get("ratio", 0) for m in metrics]
        bars = ax.bar([x + i * width for x in range(len(metrics))], ratios, width, label=p)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    for x, m in enumerate(metrics):
        goal = TARGETS[m][2]  # the goal against direct
        if goal:
            ax.hlines(goal, x - width / 2, x + width * (len(paths) - 0.5), colors="k", linestyles="dashed", linewidth=1)
    ax.axhline(1.0, color="grey", linewidth=0.5)
    ax.set_xticks([x + width * (len(paths) - 1) / 2 for x in range(len(metrics))])
    ax.set_xticklabels([TARGETS[m][0] + (" (lower is better)" if TARGETS[m][1] == "le" else "") for m in metrics])
    ax.set_ylabel("ratio to direct (same run)")
    ax.set_title("logos-p2p and p2pd against an in-process py-libp2p handler (dashed: targets)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()

    def __call__(self, what: str) -> None:
        self.done += 1
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.monotonic() - self.started
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {elapsed:5.0f}s {what:<30}")
        sys.stderr.flush()


async def main(args: argparse.Namespace) -> None:
    logging.disable(logging.CRITICAL)
    sizes = dict(SIZES["quick" if args.quick else "full"])
    rounds = args.rounds or sizes["rounds"]
    paths = args.paths.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        starters: dict[str, Callable[[], Target]] = {
            "direct": start_direct,
            "logos": lambda: start_logos(Path(tmp), 20),
            "push": lambda: start_logos(Path(tmp), 20, "push", endpoint="unix-push"),
            "tcp": lambda: start_logos(Path(tmp), 20, "tcp", endpoint="tcp"),
            "tls": lambda: start_logos(Path(tmp), 20, "tls", endpoint="tls"),
            "pull": lambda: start_logos(Path(tmp), 20, "pull", data_path="pull"),
            "p2pd": start_p2pd,
        }
        if "cpp" in paths:
            module = cpp_echo_module()
            starters["cpp"] = lambda: start_logos(Path(tmp), 20, "cpp", cpp=module)
        if args.baseline:  # another checkout's node and modules, alternating with this one's
            starters["base"] = lambda: start_logos(Path(tmp), 20, "base", Path(args.baseline).resolve())
            if "base" not in paths:
                paths.insert(paths.index("logos") + 1 if "logos" in paths else len(paths), "base")
        scaled = "logos" in paths and not args.no_scale
        progress = Progress((rounds * 5 + 1) * len(paths) + scaled)
        memory: dict[str, float] = {}
        for path in paths:  # memory first, each on fresh server processes
            target = starters[path]()
            try:
                memory[path] = await measure_memory(target, sizes["streams"], progress)
            finally:
                target.stop()
        scale: dict[str, float] = {}
        scale_failure = ""
        if scaled:
            try:
                scale = await measure_scale(Path(tmp), sizes["scale_streams"], sizes["scale_modules"], progress)
            except Exception as exc:  # a row that fails is reported, the others still run
                scale_failure = leaf_error(exc)
        targets = [starters[p]() for p in paths]
        samples: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
        try:
            for _ in range(rounds):
                for target in targets:  # A B C A B C ...
                    samples[target.name].append(await measure(target, sizes, progress))
        finally:
            for target in targets:
                target.stop()
    for path, kib in memory.items():
        for sample in samples[path]:
            sample["idle_kib"] = kib
    for sample in samples.get("logos", []) if scale else []:
        sample["scale_kib"] = scale["scale_kib"]
    sys.stderr.write("\n")
    summary = summarize(samples)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "mode": "quick" if args.quick else "full",
        "rounds": rounds,
        "sizes": sizes,
        "cpus": os.cpu_count(),
        "summary": summary,
        "samples": samples,
        "scale": scale or {"failed": scale_failure},
    }
    (results / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2))
    if "direct" in summary and len(summary) > 1:
        chart(summary, results / f"bench-{stamp}.png")
    print(table(summary))
    if scale_failure:
        where = f"{sizes['scale_streams']} streams across {sizes['scale_modules']} modules"
        print(f"\nscale: {where} FAILED: {scale_failure}")
    if scale:
        print(
            f"\nscale: {scale['scale_node_streams']:.0f} streams held across {sizes['scale_modules']} modules; "
            f"node {scale['scale_kib']:.1f} KiB per stream ({100 * scale['scale_budget_share']:.0f}% of its "
            f"{scale_budget(sizes['scale_streams']) >> 20} MiB budget), modules {scale['scale_module_kib']:.1f} KiB"
        )
    print(f"\nwritten: bench/results/bench-{stamp}.json" + (" and .png" if len(summary) > 1 else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds: under a minute")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default: 5 full, 2 quick)")
    parser.add_argument(
        "--paths",
        default="direct,logos,p2pd",
        help="of direct, logos, p2pd, and the remote-module rows: push (unix socket, push path), "
        "tcp and tls (loopback, push path); `make bench` runs them all; pull (Python modules on "
        "the pull path) and cpp (C++ echo modules, pull path): C++ vs Python on the same path",
    )
    parser.add_argument(
        "--node-args", default="", help="more arguments for the logos-p2p node, e.g. '--stream-window 1048576'"
    )
    parser.add_argument(
        "--baseline",
        default="",
        help="a checkout (e.g. `git worktree add /tmp/base HEAD~3`) whose node runs as path 'base', "
        "alternating with this one's: before/after in one run",
    )
    parser.add_argument("--no-scale", action="store_true", help="skip the scale row (10,000 streams, 50 modules)")
    parsed = parser.parse_args()
    NODE_ARGS.extend(parsed.node_args.split())
    trio.run(main, parsed)
