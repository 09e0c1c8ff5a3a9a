"""Two nodes on loopback: whois (and echo) on node A, asked through node B, and the reverse,
which fails: node B serves nothing.

    python examples/whois/demo.py

Prints what went where, shuts everything down, and exits 0 only if node A answered
who it is and node B's missing protocol was reported as such.
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
EXAMPLES = HERE.parent


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
            raise RuntimeError(f"{proc.args!r} exited early")
        return line.strip()

    def whois(rpc: str, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(HERE / "whois.py"), "--rpc", rpc, *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    ok = False
    with tempfile.TemporaryDirectory(prefix="logos-p2p-demo-") as tmp:
        try:
            nodes = {}
            for name in ("A", "B"):
                listen = ["--listen", "/ip4/127.0.0.1/tcp/0"]
                node = spawn("-m", "logos_p2p", "serve", *listen, "--rpc", f"unix:{Path(tmp) / name}.sock")
                nodes[name] = json.loads(first_line(node))
                say(f"node {name}: peer {nodes[name]['peer_id']}")
                say(f"        libp2p {nodes[name]['addrs'][0]}")
            a, b = nodes["A"], nodes["B"]

            server = spawn(str(HERE / "whois.py"), "--rpc", a["rpc"], "serve", "--name", "alice")
            say(f"whois module (pid {server.pid}) on node A: {first_line(server)}")
            echo = spawn(str(EXAMPLES / "echo" / "echo.py"), "--rpc", a["rpc"], "serve")
            say(f"echo module (pid {echo.pid}) on node A: {first_line(echo)}")

            say("node B asks node A who it is:")
            asked = whois(b["rpc"], "ask", a["addrs"][0], "--name", "bob")
            for line in asked.stdout.splitlines():
                say(f"  {line}")
            say(f"whois module on node A: {first_line(server)}")
            answered = asked.returncode == 0 and "name:      alice" in asked.stdout
            answered &= f"sees you:  {b['peer_id']}" in asked.stdout

            say("node A asks node B, where nobody serves whois:")
            refused = whois(a["rpc"], "ask", b["addrs"][0])
            for line in refused.stderr.splitlines():
                say(f"  {line}")
            say(f"  exit code {refused.returncode}")
            ok = answered and refused.returncode == 1 and "ProtocolNotSupported" in refused.stderr
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
    say("OK: node A said who it is; node B said it does not speak whois" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
