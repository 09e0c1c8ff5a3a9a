"""A logos-p2p node as a real process of its own (``logos-p2p serve``), forked from the
tests' node zygote (:mod:`.zygote`) or started as ``python -m logos_p2p serve``."""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .zygote import Child, zygote


@dataclass
class NodeProcess:
    proc: subprocess.Popen[bytes] | Child  # a Child of the zygote unless it is turned off
    workdir: Path
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)
    rpc: str = ""
    token_file: str = ""  # TCP and TLS endpoints only
    tls_fingerprint: str = ""  # TLS endpoints only

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def addr(self) -> str:
        return self.addrs[0]

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # by PID; a node that just exited is let be
        self.proc.wait(timeout=10)

    def snapshot(self, timeout: float = 3.0) -> str:
        """Ask a live node for its state snapshot (SIGUSR1); the text, or "" if none came."""
        if self.proc.poll() is not None:
            return ""
        marker = "state snapshot (SIGUSR1)"
        before = self.log().count(marker)
        try:
            os.kill(self.proc.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the node writes its log; nothing to wait on but the file
            text = self.log()
            if text.count(marker) > before and "-- descriptors" in text.rpartition(marker)[2]:
                return marker + text.rpartition(marker)[2]
            time.sleep(0.02)
        return ""

    def log(self) -> str:
        return (self.workdir / "node.log").read_text(errors="replace")

    def rss(self) -> int:
        """The node's resident memory, in bytes."""
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def fds(self) -> int:
        """Descriptors the node holds open."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def start_node(
    workdir: Path, *args: str, rpc: str | None = None, timeout: float = 20.0, nofile: int | None = None
) -> NodeProcess:
    """Start a node on 127.0.0.1 with its RPC socket in ``workdir``; wait for its ready line.

    ``nofile``: the node's RLIMIT_NOFILE, soft and hard (as ``prlimit --nofile=N:N``).
    """
    return wait_ready(spawn_node(workdir, *args, rpc=rpc, nofile=nofile), timeout)


def spawn_node(workdir: Path, *args: str, rpc: str | None = None, nofile: int | None = None) -> NodeProcess:
    """:func:`start_node` without the wait: the caller does something else while the node
    starts, then calls :func:`wait_ready` (or kills it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rpc = rpc or f"unix:{workdir / 'node.sock'}"
    argv = [sys.executable, "-m", "logos_p2p", "serve", "--rpc", rpc, "--log-level", "debug", *args]
    if "--listen" not in args:
        argv += ["--listen", "/ip4/127.0.0.1/tcp/0"]
    with open(workdir / "node.log", "wb") as log:  # the node's stderr: its copy outlives ours
        forks = zygote()
        if forks is not None:
            return NodeProcess(forks.spawn(argv[3:], log, nofile), workdir)
        limit = None if nofile is None else partial(resource.setrlimit, resource.RLIMIT_NOFILE, (nofile, nofile))
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=limit)
    return NodeProcess(proc, workdir)


def wait_ready(node: NodeProcess, timeout: float = 20.0) -> NodeProcess:
    """Wait for a spawned node's ready line (killing it if none comes)."""
    proc = node.proc
    try:
        line = _read_line(proc, timeout)
        ready: dict[str, Any] = json.loads(line)
    except BaseException:
        node.kill()
        raise RuntimeError(f"node did not start:\n{node.log()[-3000:]}") from None
    node.peer_id, node.addrs, node.rpc = ready["peer_id"], ready["addrs"], ready["rpc"]
    node.token_file = ready.get("token_file", "")
    node.tls_fingerprint = ready.get("tls_fingerprint", "")
    return node


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TimeoutError("no ready line")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise EOFError("node exited")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()
