"""`make demo`: two nodes on loopback, the echo module on one, a ping through the other.

Prints what went where, shuts everything down, and exits 0 only if the
echoed bytes match.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def main() -> int:
    procs: list[subprocess.Popen[str]] = []

    def spawn(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        return proc

    def first_line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{proc.args} exited early")
        return line.strip()

    with tempfile.TemporaryDirectory(prefix="logos-p2p-demo-") as tmp:
        try:
            nodes = {}
            for name in ("A", "B"):
                node = spawn(
                    "-m",
                    "logos_p2p",
                    "serve",
                    "--listen",
                    "/ip4/127.0.0.1/tcp/0",
                    "--rpc",
                    f"unix:{Path(tmp) / name}.sock",
                )
                nodes[name] = json.loads(first_line(node))
                say(f"node {name}: peer {nodes[name]['peer_id']}")
                say(f"        libp2p {nodes[name]['addrs'][0]}")
                say(f"        modules connect to {nodes[name]['rpc']}")

            echo = spawn(str(HERE / "echo.py"), "--rpc", nodes["A"]["rpc"], "serve")
            say(f"echo module (pid {echo.pid}) on node A: {first_line(echo)}")

            say("ping module on node B opens /echo/1.0.0 on node A:")
            ping = subprocess.run(
                [
                    sys.executable,
                    str(HERE / "echo.py"),
                    "--rpc",
                    nodes["B"]["rpc"],
                    "ping",
                    nodes["A"]["addrs"][0],
                    "--message",
                    "hello from node B",
                    "--count",
                    "3",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            for line in ping.stdout.splitlines():
                say(f"  {line}")
            for _ in ping.stdout.splitlines():  # the echo module logs each stream before closing it
                say(f"echo module on node A: {first_line(echo)}")
            ok = ping.returncode == 0
        finally:
            say("shutting down")
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
    say("OK: every echo matched" if ok else "FAILED: the echo did not match")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
