"""The p2pd target of the benches: go-libp2p's daemon driven by tests/interop/go_peer.py,
and the echo round trip both benches measure on one stream."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GO_DIR = ROOT / ".cache" / "interop" / "go"


def start_driver(
    handlers: list[tuple[str, str]], preexec_fn: Callable[[], None] | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start p2pd with its driver, give it ``handlers`` ((op, protocol): ``handle`` holds
    streams, ``handleEcho`` echoes), and keep draining the driver's reports. Returns the
    driver and its ready line; the caller ends both with ``stop_driver``."""
    if not (GO_DIR / "p2pd").exists():
        raise SystemExit("p2pd is not installed: run `make peers`")
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "interop" / "go_peer.py"), str(GO_DIR / "p2pd"), str(GO_DIR), "yamux"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=preexec_fn,  # the daemon inherits what it sets
    )
    assert driver.stdin is not None and driver.stdout is not None
    ready: dict[str, Any] = {}
    try:
        ready = json.loads(driver.stdout.readline())
        for i, (op, proto) in enumerate(handlers, 1):
            driver.stdin.write(json.dumps({"id": i, "op": op, "protocol": proto}).encode() + b"\n")
            driver.stdin.flush()
            reply = json.loads(driver.stdout.readline())
            if "error" in reply:
                raise RuntimeError(f"p2pd {op}: {reply}")
    except BaseException:
        stop_driver(driver, ready)
        raise
    # the driver reports every stream on stdout: keep draining it, or it stalls on a full pipe
    threading.Thread(target=_discard, args=(driver.stdout,), daemon=True).start()
    return driver, ready


def stop_driver(driver: subprocess.Popen[bytes], ready: dict[str, Any]) -> None:
    """SIGKILL the daemon and its driver by PID, and remove the daemon's directory."""
    for pid in (ready.get("daemonPid"), driver.pid):
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    driver.wait()
    if ready.get("daemonDir"):
        shutil.rmtree(ready["daemonDir"], ignore_errors=True)


def _discard(pipe: Any) -> None:
    while pipe.read(65536):
        pass


async def echo_rtt(stream: Any, count: int) -> float:
    """Median round trip (µs) of 32-byte echoes on ``stream``."""
    payload = b"p" * 32
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await stream.write(payload)
        got = b""
        while len(got) < 32:
            got += await stream.read(32 - len(got))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6
